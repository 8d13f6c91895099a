"""A real Open MPI: ``mpirun -np 3`` starts the nodes, which take their ranks from it
(``dsm/launchers.py``): ``dsm run`` under mpirun (the README's form), ``dsm-node`` under mpirun,
and the mpi4py example (``examples/mpi_shared_array.py``: messages by MPI, a large array by dsm).
Skipped, with the reason, without ``mpirun`` (Debian: ``apt-get install openmpi-bin
libopenmpi-dev``) or, for the example, without mpi4py (the ``test`` extra)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import Directory
from tests.test_launchers import _clean, _result_lines

ROOT = Path(__file__).resolve().parents[1]
RANKS = 3
#: how long one mpirun of 3 small nodes may take (about 5 s here)
RUN_TIMEOUT_S = 90

MPIRUN = shutil.which("mpirun")
pytestmark = [
    pytest.mark.timeout(RUN_TIMEOUT_S + 30),
    pytest.mark.skipif(MPIRUN is None, reason="no mpirun here (Debian: apt-get install "
                                              "openmpi-bin libopenmpi-dev)"),
]


@pytest.fixture
def directory(tmp_path):
    d = Directory(tmp_path, region_bytes=256 << 20)
    yield d
    d.kill()


def mpirun(tmp_path: Path, argv: list[str], env: dict | None = None) -> tuple[int, str]:
    """``mpirun --oversubscribe -np 3 ARGV...`` (3 ranks on this 2-core host), in a session of its
    own, killed with everything it started if it outlives RUN_TIMEOUT_S; its status and output."""
    cmd = [MPIRUN, "--oversubscribe", "-np", str(RANKS)]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    proc = subprocess.Popen(
        [*cmd, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        start_new_session=True,
        env=_clean({**(env or {}), "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT),
                    # no component that needs what a container lacks (InfiniBand, ptrace of a
                    # sibling for single-copy shared memory): shared memory and TCP on loopback
                    "OMPI_MCA_btl": "self,vader,tcp",
                    "OMPI_MCA_btl_vader_single_copy_mechanism": "none"}))
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"$ {' '.join([*cmd, *argv])}\n{out}")
    return proc.returncode, out


def test_mpirun_dsm_run_gives_each_rank_open_mpi_s_rank(tmp_path, directory):
    code, out = mpirun(tmp_path, [sys.executable, "-m", "dsm", "run", "--directory",
                                  directory.endpoint, "--", sys.executable, "-m",
                                  "dsm.workloads.jacobi", "--size", "64", "--iterations", "3"])
    assert code == 0, out
    results = _result_lines(out)
    assert sorted(r["rank"] for r in results) == list(range(RANKS)), out
    assert all(r["match"] and r["nodes"] == RANKS for r in results), out
    # the run is named after Open MPI's job, the same in every rank
    runs = {r["run"] for r in results}
    assert len(runs) == 1 and runs.pop().startswith("jacobi.openmpi-"), out


def test_mpirun_dsm_node_takes_the_rank_without_a_ticket(tmp_path, directory):
    code, out = mpirun(tmp_path, [sys.executable, "-m", "dsm.programs.node"],
                       {"DSM_DIRECTORY": directory.endpoint, "DSM_WORKLOAD": "counter",
                        "DSM_WORKLOAD_ARGS": "--size 20 --iterations 1"})
    assert code == 0, out
    for rank in range(RANKS):
        assert f"as rank {rank} (from openmpi) of {RANKS}" in out, out
    results = _result_lines(out)
    assert sorted(r["rank"] for r in results) == list(range(RANKS)), out
    assert all(r["match"] for r in results), out


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None,
                    reason="no mpi4py here (pip install -e '.[test]' brings it)")
def test_the_mpi4py_example_shares_an_array_and_talks_by_mpi(tmp_path, directory):
    code, out = mpirun(tmp_path, [sys.executable, "-m", "dsm", "run", "--directory",
                                  directory.endpoint, "--", sys.executable,
                                  str(ROOT / "examples" / "mpi_shared_array.py")])
    assert code == 0, out
    for rank in range(RANKS):
        assert f"mpi example: rank {rank} of {RANKS} " in out, out
    assert out.count("MATCH numpy") == RANKS and "MISMATCH" not in out, out
