"""Leaving cleanly on loopback: ``dsm run`` and ``dsm-node`` given SIGTERM (what
``docker stop`` sends), or a terminal's Ctrl-C (SIGINT to the whole foreground process group),
stop the workload first, then hand every owned page back to the directory, with its contents;
a node that comes after reads them. The status is 0, but for ``dsm run`` interrupted by SIGINT:
its program's own, since the program unwinds as it would alone (``tests/test_run.py``). A node
killed instead leaves no agent behind."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dsm.agent.launch import AGENT_STOP_TIMEOUT_S
from dsm.commands.run import COMMAND_STOP_TIMEOUT_S
from dsm.watchdog import process_stats

pytestmark = pytest.mark.timeout(90)

WRITER = (
    "import time, numpy as np, dsm\n"
    "node = dsm.attach()\n"
    "a = node.array('leave.x', (8, 512), np.int64)\n"
    "a[:] = np.arange(8 * 512).reshape(8, 512) * 3 + 1\n"
    "print('written', flush=True)\n"
    "time.sleep(120)\n"
)


def _dsm_run(directory, node: str, log_path, *python_args: str) -> subprocess.Popen:
    """`dsm run` of a Python program (``python_args``) as node ``node``, in a session of its
    own, its stderr into ``log_path``, its stdout a pipe."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dsm", "run", "--directory", directory.endpoint,
             "--node", node, "--", sys.executable, *python_args],
            stdout=subprocess.PIPE, stderr=log, start_new_session=True,
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
    proc = _dsm_run(directory, "leaver", log_path, "-c", WRITER)
    _leave_and_check(proc, make_node, log_path)


#: writes, then, interrupted, writes once more as it unwinds and exits with a status of its own
UNWINDING_WRITER = (
    "import time, numpy as np, dsm\n"
    "node = dsm.attach()\n"
    "a = node.array('leave.x', (8, 512), np.int64)\n"
    "a[:] = np.arange(8 * 512).reshape(8, 512) * 3 + 1\n"
    "try:\n"
    "    print('written', flush=True)\n"
    "    time.sleep(120)\n"
    "except KeyboardInterrupt:\n"
    "    a[0] = -7\n"
    "    raise SystemExit(3)\n"
)


def test_dsm_run_hands_pages_back_on_sigint_after_the_program_unwound(directory, make_node,
                                                                     tmp_path):
    """Ctrl-C (here a SIGINT to `dsm run`, which passes it on): the program unwinds, writing
    on the way out, then the node leaves with every page, those writes included, and `dsm run`
    exits with the program's own status."""
    log_path = tmp_path / "leaver.log"
    proc = _dsm_run(directory, "leaver", log_path, "-c", UNWINDING_WRITER)
    try:
        _wait_for(proc, "written", 30)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 3, log_path.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "left the cluster on SIGINT: every page handed back" in log_path.read_text()
    want = np.arange(8 * 512).reshape(8, 512) * 3 + 1
    want[0] = -7
    got = make_node("reader").run("a = node.array('leave.x', (8, 512), np.int64)", "a.tolist()")
    assert got == want.tolist()


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_node_program_hands_pages_back_when_asked_to_leave(directory, make_node, tmp_path, how):
    log_path = tmp_path / "leaver.log"
    env = {**os.environ, "DSM_DIRECTORY": directory.endpoint, "DSM_NODES": "2",
           "DSM_NODE": "leaver", "DSM_WORKLOAD": "gather",
           "DSM_WORKLOAD_ARGS": "--pages 8 --wait-timeout 60"}
    env.pop("DSM_AGENT_SOCKET", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dsm.programs.node"], stdout=subprocess.PIPE,
                                stderr=log, env=env, start_new_session=True)
    try:
        _wait_for(proc, "wrote its block", 30)
        _ask_to_leave(proc, how)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    signame = "SIGTERM" if how == "sigterm" else "SIGINT"
    assert f"left the cluster on {signame}" in log_path.read_text()
    # rank 0 wrote its block of gather run 2x0 and left: its pages are in the directory
    reader = make_node("reader")
    ok = reader.run(
        "from dsm.workloads.gather import pattern\n"
        "w = 8 * node.layout.page_size // 8\n"
        "d = node.array('gather.2x0.data', (2, w), np.int64)\n",
        "bool((d[0] == pattern(0, w)).all())")
    assert ok is True


#: how many times the cycler attaches, increments and detaches
CYCLES = 150
CYCLER = (
    "import numpy as np, dsm\n"
    f"for i in range({CYCLES}):\n"
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
    proc = _dsm_run(directory, "cycler", log_path, "-c", CYCLER)
    try:
        other.send("t = time.monotonic()\nrounds = 0\n"
                   "while time.monotonic() - t < 8:\n    a[:, 1] += 1\n    rounds += 1\n")
        assert proc.wait(60) == 0, log_path.read_text()[-3000:]
        assert b"cycled" in proc.stdout.read()
        other.wait(30)
        # every increment landed: the cycler's, handed back at each detach, and the other's
        rounds = other.run("", "rounds")
        assert other.run("", "a[:, 0].tolist()") == [CYCLES] * 64
        assert other.run("", "a[:, 1].tolist()") == [rounds] * 64
        assert make_node("reader").run("b = node.array('cycle.x', (64, 512), np.int64)",
                                       "b[:, :2].tolist()") == [[CYCLES, rounds]] * 64
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- a leave while the workload writes ------------------------------------------------------------
#: pages of counters, one int64 counter at the start of each
COUNTER_PAGES = 64
#: the workload prints the counters at least this often
REPORT_INTERVAL_S = 0.1
#: asked to stop, the workload goes on incrementing this long (as one finishing its step before
#: it saves its result would): a leave that does not wait for it loses those writes, or blocks it
FINISH_S = 1.0
#: ... as long as the test lasts
LONG_FINISH_S = 60.0
#: reports to see before the leave is asked for
REPORTS_BEFORE_LEAVE = 3
COUNTERS = (
    "import signal, sys, time, numpy as np, dsm\n"
    "pages, report_s, finish_s = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])\n"
    "node = dsm.attach()\n"
    "c = node.array('leave.counters', (pages, node.layout.page_size // 8), np.int64)[:, 0]\n"
    "stop = []\n"
    "for s in (signal.SIGTERM, signal.SIGINT):\n"
    "    signal.signal(s, lambda signum, frame: stop.append(signum))\n"
    "def rounds_until(done):\n"
    "    last = time.monotonic()\n"
    "    while not done():\n"
    "        for i in range(pages):\n"
    "            c[i] += 1\n"
    "        if time.monotonic() - last >= report_s:\n"
    "            print('values', *c.tolist(), flush=True)\n"
    "            last = time.monotonic()\n"
    "rounds_until(lambda: stop)\n"
    "print('stopping', flush=True)\n"
    "end = time.monotonic() + finish_s\n"
    "rounds_until(lambda: time.monotonic() >= end)\n"
    "print('final', *c.tolist(), flush=True)\n"
)


def _reports(text: str) -> list[tuple[str, list[int]]]:
    out = []
    for line in text.splitlines():
        kind, *values = line.split()
        out.append((kind, [int(v) for v in values]))
    return out


def _ask_to_leave(proc: subprocess.Popen, how: str) -> None:
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)  # what `docker stop` and `kill` do
    else:  # what a terminal's Ctrl-C does: SIGINT to every process of the foreground group
        os.killpg(proc.pid, signal.SIGINT)


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_a_leave_while_the_workload_writes_loses_no_write(directory, make_node, tmp_path, how):
    """The workload is stopped before the pages are given back, and is let finish: every
    value it reported, the last one included, is what the next node reads."""
    log_path = tmp_path / "leaver.log"
    proc = _dsm_run(directory, "leaver", log_path, "-c", COUNTERS, str(COUNTER_PAGES),
                    str(REPORT_INTERVAL_S), str(FINISH_S))
    try:
        for _ in range(REPORTS_BEFORE_LEAVE):
            _wait_for(proc, "\n", 30)
        _ask_to_leave(proc, how)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    signame = "SIGTERM" if how == "sigterm" else "SIGINT"
    assert f"left the cluster on {signame}" in log_path.read_text()
    reports = _reports(out.decode())
    assert reports and reports[-1][0] == "final", (
        f"the workload was not let finish: its last report is {reports[-1:]} "
        f"(see its log: {log_path.read_text()[-2000:]})")
    last = reports[-1][1]
    assert len(last) == COUNTER_PAGES and min(last) > 0, last
    reader = make_node("reader")
    got = reader.run(
        f"c = node.array('leave.counters', ({COUNTER_PAGES}, node.layout.page_size // 8), "
        "np.int64)[:, 0]", "c.tolist()")
    lost = [(i, want, have) for i, (want, have) in enumerate(zip(last, got)) if have < want]
    assert not lost, f"(counter, reported, read) that went back: {lost}"


def test_after_ctrl_c_the_watchdog_still_kills_the_workload_if_its_agent_dies(directory, tmp_path):
    """Ctrl-C reaches the workload's watchdog too (it is in the workload's group): it must not
    stop it, or a workload still finishing would hang on its next fault once the agent died."""
    log_path = tmp_path / "orphan.log"
    proc = _dsm_run(directory, "orphan", log_path, "-c", COUNTERS, str(COUNTER_PAGES),
                    str(REPORT_INTERVAL_S), str(LONG_FINISH_S))
    try:
        _wait_for(proc, "values", 30)
        (workload,) = [pid for pid in _children(proc.pid) if _children(pid)]  # it has a watchdog
        (agent,) = [pid for pid in _children(proc.pid) if pid != workload]
        _ask_to_leave(proc, "ctrl-c")
        _wait_for(proc, "stopping", 30)  # the whole group had the SIGINT: the workload saw it
        os.kill(agent, signal.SIGKILL)
        _wait_exit(workload, AGENT_EXIT_TIMEOUT_S, "the workload whose agent died")
        proc.wait(AGENT_STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "dsm watchdog: the node agent" in log_path.read_text()


# --- stopping the command -------------------------------------------------------------------------
STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ignoring SIGTERM', flush=True)\n"
    "time.sleep(120)\n"
)


def test_a_command_that_ignores_sigterm_is_killed_after_the_stop_timeout(directory, tmp_path):
    """The leave is asked for while `dsm run` waits for the command without a deadline: the
    deadline starts then, and SIGKILL ends the command when it passes."""
    log_path = tmp_path / "stubborn.log"
    proc = _dsm_run(directory, "stubborn", log_path, "-c", STUBBORN)
    try:
        _wait_for(proc, "ignoring SIGTERM", 30)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(COMMAND_STOP_TIMEOUT_S + AGENT_STOP_TIMEOUT_S) == 0
        took = time.monotonic() - t0
        assert COMMAND_STOP_TIMEOUT_S <= took < COMMAND_STOP_TIMEOUT_S + STOP_SLACK_S, took
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "left the cluster on SIGTERM" in log_path.read_text()


# --- a node killed leaves no agent behind ---------------------------------------------------------
#: how long an agent may take to notice that the process it belongs to died
AGENT_EXIT_TIMEOUT_S = 5.0
#: how much later than its stop timeout `dsm run` may exit
STOP_SLACK_S = 5.0


def _wait_exit(pid: int, timeout_s: float, what: str) -> None:
    """Until ``pid`` (not necessarily a child of ours) exits: its pidfd becomes readable."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout_s)
        assert ready, f"{what} (pid {pid}) still runs {timeout_s} s after it should have exited"
    finally:
        os.close(pidfd)


def _children(pid: int) -> list[int]:
    return [child for child, fields in process_stats() if int(fields[1]) == pid]


def test_agent_and_workload_exit_when_dsm_run_alone_is_killed(directory, tmp_path):
    log_path = tmp_path / "killed.log"
    proc = _dsm_run(directory, "killed", log_path, "-c", WRITER)
    helpers: dict[int, int] = {}  # pid -> pidfd: killed in teardown without a pid reused meanwhile
    try:
        _wait_for(proc, "written", 30)
        helpers = {pid: os.pidfd_open(pid) for pid in _children(proc.pid)}
        assert len(helpers) == 2, f"expected the agent and the workload, got {list(helpers)}"
        proc.kill()  # dsm run alone, not its process group
        proc.wait()
        for pid in helpers:
            _wait_exit(pid, AGENT_EXIT_TIMEOUT_S, "a child of the killed dsm run")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pidfd in helpers.values():
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(pidfd)
    assert "exited without stopping it" in log_path.read_text()


def test_agent_exits_when_its_node_session_is_killed(directory, make_node):
    """What tests/cluster.py does to kill a node: SIGKILL to the worker's session."""
    node = make_node("victim")
    agent_pid = node.run("", "node._agent_proc.pid")
    node.kill()
    _wait_exit(agent_pid, AGENT_EXIT_TIMEOUT_S, "the agent of the killed node")


def test_give_back_write_protects_owned_pages_before_reading_them():
    """A local writer must be stopped before an owned page is read to be handed back: a write
    between the read and the hole punch would be lost. The node core orders it so; the pages
    are punched (their contents kept for the send) before they are sent."""
    from dsm.core.readahead import ReadAhead
    from dsm.core import actions as act
    from dsm.core.node import NodeCore
    from dsm.core.states import PageState
    from dsm.libc import PAGE_SIZE

    core = NodeCore("unit", 8, PAGE_SIZE, ReadAhead(4))
    core.state.update({0: PageState.EXCLUSIVE, 1: PageState.EXCLUSIVE, 2: PageState.EXCLUSIVE,
                       5: PageState.SHARED})
    out = core.give_back(list(range(8)))
    kinds = [(type(a).__name__, type(a.message).__name__ if isinstance(a, act.Send) else None)
             for a in out]
    assert kinds == [("Protect", None), ("Punch", None), ("Send", "Writeback"),
                     ("Punch", None), ("Send", "Drop")]
    assert (out[0].first, out[0].count) == (0, 3) and out[2].pages == (0, 3) and out[1].keep
    assert core.state == {}
