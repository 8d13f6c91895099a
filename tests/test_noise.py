"""What ``dsm`` says besides its output, said once: the warning that a cluster runs open (once per
process, once per ``dsm launch`` job, in ``dsm doctor``'s words), and nothing at all, no
traceback, when the reader of its output goes away (``dsm trace FILE | head``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dsm import keys
from dsm.doctor.checks import check_keys
from tests.cluster import environment_without_manager_defaults

pytestmark = pytest.mark.timeout(120)

#: the words of the warning, whoever says it
OPEN = "runs OPEN"
#: how long a job, a demo or a command here may take
RUN_TIMEOUT_S = 90

#: a program of every rank of a launched job: it attaches (its node agent serves its peer
#: endpoint, open) and meets the others
MEET = """
import dsm

node = dsm.attach()
node.barrier("noise.met", node.size).wait()
print(f"rank {node.rank} met")
node.close()
"""


def _open_env() -> dict[str, str]:
    """This environment without keys, and without a launcher's word that it said so."""
    env = environment_without_manager_defaults()
    for name in (keys.KEYS_ENV, keys.OPEN_ANNOUNCED_ENV, "DSM_AGENT_SOCKET"):
        env.pop(name, None)
    return env


def test_dsm_launch_says_once_for_the_job_that_it_runs_open(tmp_path):
    program = tmp_path / "program.py"
    program.write_text(MEET)
    done = subprocess.run([sys.executable, "-m", "dsm", "launch", "-n", "2", "--", sys.executable,
                           str(program)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env=_open_env(), cwd=tmp_path)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert sorted(line for line in done.stdout.splitlines() if " met" in line) == \
        ["[rank 0] rank 0 met", "[rank 1] rank 1 met"], done.stdout
    output = done.stdout + done.stderr
    # the launcher's, untagged; the ranks' node agents do not repeat it
    assert output.count(OPEN) == 1, output
    warning = next(line for line in output.splitlines() if OPEN in line)
    assert not warning.startswith("[rank"), warning
    assert keys.OPEN_MEANS in warning, warning


def test_a_launched_job_with_keys_says_nothing_of_running_open(tmp_path):
    subprocess.run([sys.executable, "-m", "dsm", "keygen", str(tmp_path / "keys")], check=True,
                   capture_output=True, timeout=RUN_TIMEOUT_S)
    program = tmp_path / "program.py"
    program.write_text(MEET)
    done = subprocess.run([sys.executable, "-m", "dsm", "launch", "-n", "2", "--keys",
                           str(tmp_path / "keys"), "--", sys.executable, str(program)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env=_open_env(), cwd=tmp_path)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert OPEN not in done.stdout + done.stderr


def test_a_process_warns_once_and_not_at_all_under_a_launcher_that_did():
    says_twice = ("import logging; from dsm import keys; logging.basicConfig(); "
                  "keys.warn_open('the directory at tcp://x:1'); keys.warn_open('node n')")
    once = subprocess.run([sys.executable, "-c", says_twice], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env=_open_env())
    assert once.returncode == 0, once.stderr
    assert once.stderr.count(OPEN) == 1 and "the directory at tcp://x:1 runs OPEN" in once.stderr
    quiet = subprocess.run([sys.executable, "-c", says_twice], capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_S,
                           env={**_open_env(), keys.OPEN_ANNOUNCED_ENV: "1"})
    assert quiet.returncode == 0, quiet.stderr
    assert OPEN not in quiet.stderr, quiet.stderr


def test_the_doctor_reports_an_open_cluster_in_the_warnings_words():
    row = check_keys(None, None)
    assert row.ok
    assert f"{keys.KEYS_ENV} is not set: the cluster {OPEN}" in row.detail
    assert keys.OPEN_MEANS in row.detail


@pytest.mark.timeout(180)
def test_dsm_trace_into_a_pipe_closed_after_one_line_exits_quietly(tmp_path):
    traces = tmp_path / "traces"
    demo = subprocess.run([sys.executable, "-m", "dsm", "demo", "--nodes", "2", "--size", "24",
                           "--rounds", "6", "--trace", str(traces)], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S,
                          env={**_open_env(), "TMPDIR": str(tmp_path)})
    assert demo.returncode == 0, demo.stdout + demo.stderr
    command = [sys.executable, "-m", "dsm", "trace", "--messages",
               *sorted(str(p) for p in traces.iterdir())]
    # more than a pipe holds (64 KiB): the writer is still writing when the reader goes
    whole = subprocess.run(command, capture_output=True, timeout=RUN_TIMEOUT_S)
    assert whole.returncode == 0 and len(whole.stdout) > 2 * 65536, len(whole.stdout)
    stderr = tmp_path / "stderr"
    with open(stderr, "w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err)
        try:
            first = proc.stdout.readline()
            proc.stdout.close()  # as `head -1` does
            status = proc.wait(RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert first.strip(), first
    said = stderr.read_text()
    assert "Traceback" not in said and "BrokenPipeError" not in said, said
    assert said == "", said
    # as a shell reports a writer that SIGPIPE ended (128 + 13), what `yes | head -1` leaves
    assert status == 141, (status, said)
