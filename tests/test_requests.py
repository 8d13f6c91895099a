"""Requests of a workload to its agent never cross: an answer that comes after its request timed
out is not taken for the next request's, and a timed lock acquire has a deadline of its own in
the workload. Through the real processes: a directory or an agent is SIGSTOPped for a moment."""

from __future__ import annotations

import os
import signal
import time

import pytest

from dsm.sync import LOCK_ANSWER_MARGIN_S

pytestmark = pytest.mark.timeout(60)

#: the deadline of the request that is made to time out (the directory is stopped meanwhile)
SHORT_TIMEOUT_S = 0.3
#: how long a process may take to show as stopped after SIGSTOP
STOP_SEEN_TIMEOUT_S = 5.0
STOP_POLL_S = 0.005
#: a timed acquire's own timeout, while its agent is stopped
LOCK_TIMEOUT_S = 0.2
#: how much later than its deadline the workload may report the acquire's failure
REPORT_SLACK_S = 5.0


def wait_until_stopped(pid: int) -> None:
    """Until /proc says the process is stopped (SIGSTOP takes effect asynchronously)."""
    deadline = time.monotonic() + STOP_SEEN_TIMEOUT_S
    while True:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[-1].split()[0]
        if state in ("T", "t"):
            return
        assert time.monotonic() < deadline, \
            f"pid {pid} not stopped {STOP_SEEN_TIMEOUT_S} s after SIGSTOP (its state: {state})"
        time.sleep(STOP_POLL_S)


def offset_of(node, name: str, words: int) -> int:
    return node.run(f"x = node.array({name!r}, ({words},), np.int64)",
                    "node.address_of(x) - node.base")


def test_a_late_answer_is_not_taken_for_the_next_requests(directory, make_node):
    late, other = make_node("late"), make_node("other")
    a_words, b_words = 3 * 512, 512
    directory.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until_stopped(directory.proc.pid)
        # the allocation of late.a waits in the stopped directory past its deadline
        outcome = late.run(
            "meta = {'shape': [%d], 'dtype': np.dtype(np.int64).str}\n"
            "try:\n"
            "    node._request(dsm.local.AllocRequest, name='late.a', nbytes=%d, meta=meta,\n"
            "                  timeout_s=%r)\n"
            "    outcome = 'answered'\n"
            "except dsm.DsmError as exc:\n"
            "    outcome = type(exc).__name__\n" % (a_words, a_words * 8, SHORT_TIMEOUT_S),
            "outcome")
    finally:
        directory.proc.send_signal(signal.SIGCONT)
    assert outcome == "NoAnswer"
    # the directory now answers late.a's allocation (late), then late.b's: late.b must get its own
    b_offset = offset_of(late, "late.b", b_words)
    assert b_offset == offset_of(other, "late.b", b_words)
    assert b_offset != offset_of(other, "late.a", a_words)
    # and so must every later request
    assert offset_of(late, "late.a", a_words) == offset_of(other, "late.a", a_words)


def test_a_timed_acquire_that_nobody_answers_raises_after_its_margin(make_node):
    node = make_node("a")
    agent_pid = node.run("", "node._agent_proc.pid")
    os.kill(agent_pid, signal.SIGSTOP)
    try:
        wait_until_stopped(agent_pid)
        node.send(
            "import time\n"
            "t0 = time.monotonic()\n"
            "try:\n"
            f"    node.lock('quiet').acquire(timeout={LOCK_TIMEOUT_S})\n"
            "    outcome = 'returned'\n"
            "except dsm.DsmError as exc:\n"
            "    outcome = f'{type(exc).__name__}: {exc}'\n"
            "took = time.monotonic() - t0\n",
            "[outcome, took]")
        outcome, took = node.wait(LOCK_TIMEOUT_S + LOCK_ANSWER_MARGIN_S + REPORT_SLACK_S)
    finally:
        os.kill(agent_pid, signal.SIGCONT)
    assert outcome.startswith("LockUnanswered: lock 'quiet'"), outcome
    assert "whether this thread holds the lock is unknown" in outcome, outcome
    assert took >= LOCK_TIMEOUT_S + LOCK_ANSWER_MARGIN_S
    # the agent, running again, has the directory grant the request (the lock is free): that
    # late answer is dropped, and the next request gets its own, which shows the late grant
    holder, waiting = node.run("", "node.lock('quiet').status()")
    assert holder.startswith("a:") and waiting == []
