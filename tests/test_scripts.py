"""scripts/: a local cluster on loopback started and torn down by the scripts (the namespace-host
variant is in test_netns_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script(name: str, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("DSM_AGENT_SOCKET", None)
    return subprocess.run([str(SCRIPTS / name), *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(120)
def test_local_cluster_runs_a_workload_and_tears_down(tmp_path):
    state = tmp_path / "local"
    try:
        done = script("local-cluster-up", "-n", "2", "-s", str(state), "--wait")
    finally:
        script("cluster-down", "-s", str(state))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("node-")]
    assert len(lines) == 2 and all("MATCH numpy" in ln for ln in lines), done.stdout
    assert not list(state.glob("*.pid"))


@pytest.mark.timeout(120)
def test_local_cluster_down_makes_the_nodes_leave(tmp_path):
    state = tmp_path / "local"
    up = script("local-cluster-up", "-n", "2", "-w", "stream", "-s", str(state),
                "--", "--rounds", "20000")
    pids = [int(p.read_text()) for p in state.glob("*.pid")]
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        deadline = time.monotonic() + 30
        while not all("started" in (state / f"node-{k}.log").read_text() for k in (1, 2)):
            assert time.monotonic() < deadline, "the nodes did not start"
            time.sleep(0.1)
        assert script("cluster-down", "-s", str(state)).returncode == 0
        for k in (1, 2):
            assert "left the cluster on SIGTERM" in (state / f"node-{k}.log").read_text()
        assert not any(_alive(pid) for pid in pids)
    finally:
        script("cluster-down", "-s", str(state))
        for pid in pids:
            try:
                os.killpg(pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
