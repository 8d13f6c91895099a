"""``dsm launch -n N -- COMMAND``: N nodes of a program of one's own, each with its rank, its
output tagged with it, a job that fails as a whole when one rank fails, and nothing left
behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import environment_without_manager_defaults

pytestmark = pytest.mark.timeout(120)

#: how long a launched job may take
LAUNCH_TIMEOUT_S = 90

README = Path(__file__).resolve().parents[1] / "README.md"
#: the README's example for `dsm launch`: every rank writes its slot, then reads them all
EXAMPLE_MARK = "<!-- the launch example: tests/test_launch.py runs it -->\n```python\n"
SUM_OF_RANKS = README.read_text().split(EXAMPLE_MARK, 1)[1].split("```", 1)[0]

#: rank 1 fails before the barrier the others wait at
ONE_RANK_FAILS = """
import sys
import dsm

node = dsm.attach()
if node.rank == 1:
    sys.exit(3)
node.barrier("launch.never", node.size).wait()
"""


def _launch(tmp_path, program: str, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "program.py"
    path.write_text(program)
    return subprocess.run([sys.executable, "-m", "dsm", "launch", *args, "--", sys.executable,
                           str(path)], capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
                          env=environment_without_manager_defaults(), cwd=tmp_path)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_every_rank_runs_the_program_with_its_rank_and_the_jobs_size(tmp_path):
    done = _launch(tmp_path, SUM_OF_RANKS, "-n", "3")
    assert done.returncode == 0, done.stderr
    lines = sorted(line for line in done.stdout.splitlines() if " reads " in line)
    # every rank tagged as mpiexec --tag-output does, each seeing every rank's write
    assert lines == [f"[rank {r}] rank {r} of 3 reads 6" for r in range(3)], done.stdout
    # the directory it started for the job, and every node, are gone with it
    assert _processes_mentioning(str(tmp_path / "program.py")) == []


def test_a_failing_rank_fails_the_job_and_the_others_are_stopped(tmp_path):
    done = _launch(tmp_path, ONE_RANK_FAILS, "-n", "3", "--manager", "relay")
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert re.search(r"dsm launch: rank 1 exited with status 3; asking the other ranks to leave",
                     done.stderr), done.stderr
    assert _processes_mentioning(str(tmp_path / "program.py")) == []


def test_no_command_and_a_bad_count_are_one_line_each(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dsm", "launch", "-n", "2"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.strip() == (
        "dsm launch: no command given (dsm launch -n N -- COMMAND...)")
    done = subprocess.run([sys.executable, "-m", "dsm", "launch", "-n", "0", "--", "true"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "-n must be at least 1, got 0" in done.stderr


#: every rank says it is up, then waits; interrupted, it unwinds and exits with a status of its own
WAITS = """
import time
import dsm

node = dsm.attach()
try:
    print("up", flush=True)
    time.sleep(600)
except KeyboardInterrupt:
    print("unwound", flush=True)
    raise SystemExit(3)
"""


def test_ctrl_c_passes_sigint_to_every_rank_which_leaves_and_exits_130(tmp_path):
    """Each rank's program gets SIGINT once (through its dsm run) and unwinds; each node then
    hands its pages back; the job's status is 130, whatever the ranks exited with."""
    path = tmp_path / "program.py"
    path.write_text(WAITS)
    proc = subprocess.Popen([sys.executable, "-m", "dsm", "launch", "-n", "2", "--",
                             sys.executable, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=environment_without_manager_defaults())
    try:
        up = 0
        while up < 2:  # every rank attached (the pipe closes if launch dies: readline is "")
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            up += line.strip().endswith("] up")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(LAUNCH_TIMEOUT_S) == 130
        out, err = proc.stdout.read(), proc.stderr.read()
        assert sorted(line for line in out.splitlines() if "unwound" in line) == [
            f"[rank {r}] unwound" for r in range(2)], (out, err)
        assert err.count("left the cluster on SIGINT: every page handed back") == 2, err
        assert "SIGTERM" not in err, err
        assert _processes_mentioning(str(path)) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


#: rank 1 dies of a signal, as a program with a bad pointer would
ONE_RANK_CRASHES = """
import os
import signal
import dsm

node = dsm.attach()
if node.rank == 1:
    os.kill(os.getpid(), signal.SIGSEGV)
node.barrier("launch.crash", node.size).wait()
"""


def test_a_rank_killed_by_a_signal_is_named_by_dsm_run_and_dsm_launch(tmp_path):
    done = _launch(tmp_path, ONE_RANK_CRASHES, "-n", "2")
    assert done.returncode == 128 + signal.SIGSEGV, (done.stdout, done.stderr)
    assert "[rank 1] dsm run: " in done.stderr and "was killed by SIGSEGV (status 139)" in \
        done.stderr, done.stderr
    assert "dsm launch: rank 1 killed by SIGSEGV (status 139)" in done.stderr, done.stderr


#: beside the program: a module of the user's own, which it imports
HELPER = "GREETING = 'hello from helper'\n"
#: a program that imports both dsm and its helper
WITH_HELPER = """
import dsm
import helper

node = dsm.attach()
print(f"rank {node.rank} of {node.size}: {helper.GREETING}", flush=True)
node.close()
"""


@pytest.mark.parametrize("stray", ["empty", "checkout"])
def test_a_folder_named_dsm_in_the_working_directory_does_not_shadow_the_package(tmp_path,
                                                                                  stray):
    """Run from the parent directory of a folder named dsm (an empty one, or a checkout named
    dsm, with no __init__.py at its top): `python prog.py` puts that directory first on
    sys.path, and the folder must not be imported as `dsm` (a namespace package without
    `attach`) by any process of the job, while the module beside the program still is."""
    folder = tmp_path / "dsm"
    folder.mkdir()
    if stray == "checkout":
        (folder / "README.md").write_text("a checkout named dsm\n")
        (folder / "dsm").mkdir()
        (folder / "tests").mkdir()
    (tmp_path / "helper.py").write_text(HELPER)
    done = _launch(tmp_path, WITH_HELPER, "-n", "2")
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = sorted(line for line in done.stdout.splitlines() if "helper" in line)
    assert lines == [f"[rank {r}] rank {r} of 2: hello from helper" for r in range(2)], \
        (done.stdout, done.stderr)
