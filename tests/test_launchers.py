"""Rank and size from HPC launchers (Slurm, Open MPI, PMI), with the environments set as those
launchers set them: ``dsm.launchers`` alone, ``dsm run`` passing them to its command and to
``node.rank``/``node.size``, ``dsm-node`` taking them instead of a ticket, and
``scripts/slurm-job.sh`` run with stand-ins for ``srun`` and ``scontrol`` that start the tasks as
Slurm does (one process per task, ``SLURM_PROCID`` 0..N-1)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dsm.errors import ConfigError
from dsm.launchers import Placement, placement, workload_env
from dsm.workloads.common import RESULT_PREFIX
from tests.cluster import Directory

ROOT = Path(__file__).resolve().parents[1]
#: how long a small cluster run of these tests may take
RUN_TIMEOUT_S = 90

#: what each launcher puts in a task's environment (the variables dsm reads, and some it does
#: not, which must not confuse it), for task 1 of 3
SLURM = {"SLURM_PROCID": "1", "SLURM_NTASKS": "3", "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0",
         "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "cn[01-03]"}
OPENMPI = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "3",
           "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_MCA_ess_base_jobid": "3141",
           "OMPI_UNIVERSE_SIZE": "8"}
PMI = {"PMI_RANK": "1", "PMI_SIZE": "3", "PMI_FD": "7"}
LAUNCHER_VARS = ("SLURM_", "OMPI_", "PMI_", "DSM_")


def _clean(env: dict | None = None) -> dict:
    """This environment without any launcher's or dsm's variables, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_VARS)}
    return {**base, **(env or {})}


# --- the variables ---------------------------------------------------------------------------------
@pytest.mark.timeout(10)
@pytest.mark.parametrize("env, want", [
    (SLURM, Placement("slurm", 1, 3, "4242.0")),
    (OPENMPI, Placement("openmpi", 1, 3, "3141")),
    (PMI, Placement("pmi", 1, 3, None)),
    # srun of an MPI program sets Slurm's and PMI's, which agree: Slurm's win
    ({**PMI, **SLURM}, Placement("slurm", 1, 3, "4242.0")),
    # DSM_NODES set: the launchers are not read
    ({**SLURM, "DSM_NODES": "2", "DSM_RANK": "0"}, Placement("dsm", 0, 2)),
    ({**SLURM, "DSM_NODES": "2"}, Placement("dsm", None, 2)),
    ({}, None),
    ({"SLURM_PROCID": "0"}, None),  # a rank without a size is no launcher (an srun step's env?)
])
def test_placement(env, want):
    assert placement(env) == want


@pytest.mark.timeout(10)
@pytest.mark.parametrize("env, message", [
    ({"SLURM_PROCID": "one", "SLURM_NTASKS": "3"}, r"\$SLURM_PROCID must be a whole number"),
    ({"PMI_RANK": "0", "PMI_SIZE": "0"}, r"\$PMI_SIZE must be at least 1"),
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "3"},
     r"\$OMPI_COMM_WORLD_RANK is 3, outside 0..2"),
    ({"DSM_NODES": "x"}, r"\$DSM_NODES must be a whole number"),
])
def test_placement_errors_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        placement(env)


@pytest.mark.timeout(10)
def test_what_dsm_run_passes_on():
    assert workload_env(placement(SLURM)) == {"DSM_RANK": "1", "DSM_NODES": "3",
                                              "DSM_RUN": "slurm-4242.0"}
    assert workload_env(placement(PMI)) == {"DSM_RANK": "1", "DSM_NODES": "3"}
    assert workload_env(None) == {}


# --- dsm run under each launcher -------------------------------------------------------------------
PROBE = textwrap.dedent("""
    import json, os, dsm
    with dsm.attach() as node:
        print("PROBE " + json.dumps({"rank": node.rank, "size": node.size,
                                      "env": {k: os.environ.get(k) for k in
                                              ("DSM_RANK", "DSM_NODES", "DSM_RUN")}}))
""")


def _probe(tmp_path: Path, endpoint: str, env: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "dsm", "run", "--directory", endpoint, "--",
         sys.executable, "-c", PROBE],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path,
        env=_clean({**env, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}))
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("PROBE "))
    return json.loads(line[len("PROBE "):])


@pytest.fixture
def directory(tmp_path):
    d = Directory(tmp_path)
    yield d
    d.kill()


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_dsm_run_passes_each_launcher_s_rank_and_size_to_the_workload(tmp_path, directory):
    got = _probe(tmp_path, directory.endpoint, SLURM)
    assert got == {"rank": 1, "size": 3,
                   "env": {"DSM_RANK": "1", "DSM_NODES": "3", "DSM_RUN": "slurm-4242.0"}}
    got = _probe(tmp_path, directory.endpoint, OPENMPI)
    assert (got["rank"], got["size"], got["env"]["DSM_RUN"]) == (1, 3, "openmpi-3141")
    got = _probe(tmp_path, directory.endpoint, PMI)
    assert (got["rank"], got["size"], got["env"]["DSM_RUN"]) == (1, 3, None)
    # outside a launcher: no rank, no size
    got = _probe(tmp_path, directory.endpoint, {})
    assert got == {"rank": None, "size": None,
                   "env": {"DSM_RANK": None, "DSM_NODES": None, "DSM_RUN": None}}


@pytest.mark.timeout(30)
def test_dsm_run_refuses_a_launcher_variable_that_is_not_a_number(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dsm", "run", "--directory", "tcp://127.0.0.1:9",
                           "--", "true"], capture_output=True, text=True, timeout=20,
                          env=_clean({"PMI_RANK": "first", "PMI_SIZE": "2",
                                      "PYTHONPATH": str(ROOT)}))
    assert done.returncode == 2
    assert "$PMI_RANK must be a whole number, got 'first'" in done.stderr


# --- whole jobs ------------------------------------------------------------------------------------
def _result_lines(stdout: str) -> list[dict]:
    """Every result object in ``stdout``. The tasks of a job share one output, so a line of one
    task may run on into another's text (writes of parallel processes interleave): read each
    object where its prefix starts, up to where the JSON ends."""
    decoder = json.JSONDecoder()
    results, at = [], stdout.find(RESULT_PREFIX)
    while at >= 0:
        obj, _ = decoder.raw_decode(stdout, at + len(RESULT_PREFIX))
        results.append(obj)
        at = stdout.find(RESULT_PREFIX, at + len(RESULT_PREFIX))
    return results


def _start_tasks(tmp_path: Path, argv: list[str], envs: list[dict]) -> list[subprocess.Popen]:
    procs = []
    for k, env in enumerate(envs):
        procs.append(subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=open(tmp_path / f"task{k}.log", "w"), text=True,
            cwd=tmp_path, start_new_session=True,
            env=_clean({**env, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)})))
    return procs


def _finish(procs: list[subprocess.Popen], timeout_s: float) -> list[tuple[int, str]]:
    out = []
    try:
        for proc in procs:
            stdout, _ = proc.communicate(timeout=timeout_s)
            out.append((proc.returncode, stdout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return out


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_dsm_node_takes_the_rank_from_open_mpi_without_dsm_nodes(tmp_path, directory):
    # mpirun -np 2 dsm-node: the ranks are Open MPI's, the run is named after its job
    envs = [{"OMPI_COMM_WORLD_RANK": str(k), "OMPI_COMM_WORLD_SIZE": "2",
             "OMPI_MCA_ess_base_jobid": "77", "DSM_DIRECTORY": directory.endpoint,
             "DSM_WORKLOAD": "counter", "DSM_WORKLOAD_ARGS": "--size 20 --iterations 1",
             "DSM_NODE": f"mpi-{k}"} for k in (1, 0)]
    outputs = _finish(_start_tasks(tmp_path, [sys.executable, "-m", "dsm.programs.node"], envs),
                      RUN_TIMEOUT_S)
    for (code, stdout), env in zip(outputs, envs):
        assert code == 0, stdout
        rank = int(env["OMPI_COMM_WORLD_RANK"])
        assert f"as rank {rank} (from openmpi) of 2 (run openmpi-77)" in stdout, stdout
        (result,) = _result_lines(stdout)
        assert result["match"] and result["rank"] == rank and result["nodes"] == 2


FAKE_SRUN = """#!/usr/bin/env bash
# srun as it starts a step: one process per task, SLURM_PROCID 0..N-1, SLURM_STEP_ID set
while [ "${1:-}" != "${1#-}" ]; do shift; done   # its options
pids=()
for ((k = 0; k < SLURM_NTASKS; k++)); do
    SLURM_PROCID=$k SLURM_STEP_ID=0 SLURM_LOCALID=$k "$@" &
    pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
# scontrol show hostnames LIST: this one host
[ "$1 $2" = "show hostnames" ] && echo localhost
"""


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_slurm_batch_script_runs_a_workload_on_every_task(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    # `dsm` and `python3` as this interpreter runs them: scripts that exec it by the path it was
    # started by, not symlinks to it (a venv's interpreter linked from outside the venv finds no
    # pyvenv.cfg beside it and runs as the base interpreter, without the venv's packages)
    python = shlex.quote(sys.executable)
    for name, args in (("dsm", " -m dsm"), ("python3", "")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {python}{args} "$@"\n')
        (bin_dir / name).chmod(0o755)
    port = _free_port()
    env = {"SLURM_JOB_ID": "99", "SLURM_NTASKS": "3", "SLURM_JOB_NODELIST": "localhost",
           "DSM_PORT": str(port), "DSM_REGION_SIZE": "64MiB",
           "DSM_WORKLOAD_ARGS": "--size 64 --iterations 3",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    (proc,) = _start_tasks(tmp_path, ["bash", str(ROOT / "scripts" / "slurm-job.sh")], [env])
    ((code, stdout),) = _finish([proc], RUN_TIMEOUT_S)
    log = (tmp_path / "task0.log").read_text()
    assert code == 0, stdout + log
    assert f"slurm-job: directory on tcp://localhost:{port}; 3 tasks run jacobi" in stdout
    results = _result_lines(stdout)
    assert sorted(r["rank"] for r in results) == [0, 1, 2], stdout
    assert all(r["match"] and r["nodes"] == 3 and r["run"] == "jacobi.slurm-99.0"
               for r in results), stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
