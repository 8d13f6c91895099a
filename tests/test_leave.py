"""Leaving cleanly on loopback: ``dsm run`` and ``python -m nodes.node`` given SIGTERM (what
``docker stop`` sends) hand every owned page back to the directory, with its contents, and exit 0;
a node that comes after reads them."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(90)

WRITER = (
    "import time, numpy as np, dsm\n"
    "node = dsm.attach()\n"
    "a = node.array('leave.x', (8, 512), np.int64)\n"
    "a[:] = np.arange(8 * 512).reshape(8, 512) * 3 + 1\n"
    "print('written', flush=True)\n"
    "time.sleep(120)\n"
)


def _wait_for(proc: subprocess.Popen, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    buf = ""
    while text not in buf:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
        if not ready:
            raise AssertionError(f"no {text!r} within {timeout_s} s (got {buf!r})")
        chunk = os.read(proc.stdout.fileno(), 4096).decode()
        if not chunk:
            raise AssertionError(f"exited with {proc.wait()} before {text!r} (got {buf!r})")
        buf += chunk


def _leave_and_check(proc: subprocess.Popen, make_node, log_path) -> None:
    try:
        _wait_for(proc, "written", 30)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "left the cluster on SIGTERM" in log_path.read_text()
    reader = make_node("reader")
    got = reader.run("a = node.array('leave.x', (8, 512), np.int64)",
                     "bool((a == np.arange(8 * 512).reshape(8, 512) * 3 + 1).all())")
    assert got is True


def test_dsm_run_hands_pages_back_on_sigterm(directory, make_node, tmp_path):
    log_path = tmp_path / "leaver.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dsm", "run", "--directory", directory.endpoint,
             "--node", "leaver", "--", sys.executable, "-c", WRITER],
            stdout=subprocess.PIPE, stderr=log, start_new_session=True,
        )
    _leave_and_check(proc, make_node, log_path)


def test_node_program_hands_pages_back_on_sigterm(directory, make_node, tmp_path):
    log_path = tmp_path / "leaver.log"
    env = {**os.environ, "DSM_DIRECTORY": directory.endpoint, "DSM_NODES": "2",
           "DSM_NODE": "leaver", "DSM_WORKLOAD": "gather",
           "DSM_WORKLOAD_ARGS": "--pages 8 --wait-timeout 60"}
    env.pop("DSM_AGENT_SOCKET", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nodes.node"], stdout=subprocess.PIPE,
                                stderr=log, env=env, start_new_session=True)
    try:
        _wait_for(proc, "wrote its block", 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "left the cluster on SIGTERM" in log_path.read_text()
    # rank 0 wrote its block of gather run 2x0 and left: its pages are in the directory
    reader = make_node("reader")
    ok = reader.run(
        "from nodes.gather import pattern\n"
        "w = 8 * node.layout.page_size // 8\n"
        "d = node.array('gather.2x0.data', (2, w), np.int64)\n",
        "bool((d[0] == pattern(0, w)).all())")
    assert ok is True


CYCLER = (
    "import numpy as np, dsm\n"
    "for i in range(150):\n"
    "    node = dsm.attach()\n"
    "    a = node.array('cycle.x', (64, 512), np.int64)\n"
    "    a[:, 0] += 1\n"
    "    node.close()\n"
    "print('cycled', flush=True)\n"
)


def test_process_detaching_while_its_pages_are_fetched(directory, make_node, tmp_path):
    """A process unmaps the region (detaches) while another node fetches the pages it wrote:
    the agent's write protection then finds the range gone (ENOENT), which must not kill it."""
    other = make_node("other")
    other.run("a = node.array('cycle.x', (64, 512), np.int64)\nimport time")
    log_path = tmp_path / "cycler.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dsm", "run", "--directory", directory.endpoint,
             "--node", "cycler", "--", sys.executable, "-c", CYCLER],
            stdout=subprocess.PIPE, stderr=log, start_new_session=True,
        )
    try:
        other.send("t = time.monotonic()\nwhile time.monotonic() - t < 8:\n    a[:, 1] += 1\n")
        assert proc.wait(60) == 0, log_path.read_text()[-3000:]
        assert b"cycled" in proc.stdout.read()
        other.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
