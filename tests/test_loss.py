"""Node death never produces silently wrong data; sessions keep dead and stale peers out.

The scenario of the issue that found it: a page written 1 by a node that then left (its pages went
home), then written 2 by a second node that was SIGKILLed whole: a third node must not read 0 (or
1) as if nothing happened. By default the page is lost and every access to it fails loudly.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.cluster import ClusterProcessError, Directory, NodeProcess

pytestmark = pytest.mark.timeout(90)

ARRAY = "loss.x"
#: int64 slots per page
SLOTS = 512
#: the directory notices a silent node after dsm.liveness.NODE_TIMEOUT_S (5 s); with slack for a
#: loaded 2-core machine
NOTICE_DEADLINE_S = 20.0
#: how a fenced or cut-off node's workload ends: SIGBUS from its agent, or SIGKILL from its
#: watchdog when the agent, having stopped, is gone first
STOPPED_LOUDLY = (-signal.SIGBUS, -signal.SIGKILL)


def _kill_whole_node(node: NodeProcess) -> None:
    """SIGKILL the node: its agent (a session of its own), then the workload and its watchdog."""
    agent_pid = node.run("", "node._agent_proc.pid")
    os.kill(agent_pid, signal.SIGKILL)
    os.killpg(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)


def _write_then_die(directory_endpoint: str, tmp_path) -> None:
    """Node a writes 1 and leaves (its page goes home); node b writes 2 and is SIGKILLed."""
    a = NodeProcess(directory_endpoint, "a", tmp_path)
    a.run(f"x = node.array({ARRAY!r}, (4 * {SLOTS},), np.int64); x[:] = 1")
    a.close()
    b = NodeProcess(directory_endpoint, "b", tmp_path)
    try:
        b.run(f"x = node.array({ARRAY!r}, (4 * {SLOTS},), np.int64); x[:] = 2")
    finally:
        _kill_whole_node(b)


def test_a_page_whose_owner_was_killed_fails_loudly_instead_of_reading_zeros(directory, tmp_path):
    _write_then_die(directory.endpoint, tmp_path)
    reader = NodeProcess(directory.endpoint, "c", tmp_path)
    try:
        with pytest.raises(ClusterProcessError):
            reader.run(f"x = node.array({ARRAY!r}, (4 * {SLOTS},), np.int64)", "int(x[SLOTS])"
                       .replace("SLOTS", str(SLOTS)))
        assert reader.proc.wait(10) == -signal.SIGBUS
        log = reader.log_path.read_text()
        # where the user looks: the faulting node's output names the array, the pages, the node
        assert "LOST" in log and repr(ARRAY) in log and "died with node b" in log, log
        assert "pages 1-" in log, log
    finally:
        reader.kill()
    assert "LOST" in directory.log_path.read_text()


def test_lost_pages_are_listed_and_stay_lost_until_the_program_forgets_them(directory, tmp_path):
    _write_then_die(directory.endpoint, tmp_path)
    d = NodeProcess(directory.endpoint, "d", tmp_path)
    try:
        d.run(f"x = node.array({ARRAY!r}, (4 * {SLOTS},), np.int64)")
        # the directory learns of b's death when it asks b for the pages (or after the timeout)
        d.send("pid = os.fork()\n"
               "if pid == 0:\n    int(x[0])\n    os._exit(0)\n"
               "_, status = os.waitpid(pid, 0)\n", "os.WIFSIGNALED(status) and os.WTERMSIG(status)")
        assert d.wait(NOTICE_DEADLINE_S) == signal.SIGBUS  # a forked child touching it dies
        lost = d.run("", "{k: [list(r) for r in v] for k, v in node.lost().items()}")
        assert lost == {ARRAY: [[0, 4 * SLOTS * 8, "b"]]}, lost
        forgotten = d.run("", f"[list(r) for r in node.forget_lost({ARRAY!r})]")
        assert forgotten == [[0, 4 * SLOTS * 8, "b"]]
        assert d.run("", "node.lost()") == {}
        assert d.run("", "int(x.sum())") == 0  # zeros now, because the program said so
        d.run("x[:] = 7")
        assert d.run("", "int(x.sum())") == 7 * 4 * SLOTS
    finally:
        d.kill()


def test_last_copy_mode_falls_back_to_the_last_home_copy_and_logs_it(tmp_path):
    # the last copy is the directory's: only the relay manager keeps one
    directory = Directory(tmp_path, extra=["--on-loss", "last-copy", "--manager", "relay"])
    try:
        _write_then_die(directory.endpoint, tmp_path)
        c = NodeProcess(directory.endpoint, "c", tmp_path)
        try:
            value = c.run(f"x = node.array({ARRAY!r}, (4 * {SLOTS},), np.int64)",
                          "int(x.sum())", timeout_s=NOTICE_DEADLINE_S)
            assert value == 1 * 4 * SLOTS  # a's value, the last home copy: b's writes are lost
        finally:
            c.kill()
    finally:
        directory.kill()
    log = directory.log_path.read_text()
    assert "fall back to their last home copy" in log and "node b" in log, log


def test_a_second_live_node_with_the_same_name_is_refused_naming_the_clash(directory, tmp_path):
    first = NodeProcess(directory.endpoint, "twin", tmp_path)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "dsm", "run", "--directory", directory.endpoint,
             "--node", "twin", "--", "true"],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode != 0
        assert "'twin' is in use by a live node" in result.stdout + result.stderr, result
        # the first one is unharmed
        assert first.run("x = node.array('twin.x', (8,), np.int64); x[:] = 3", "int(x.sum())") == 24
    finally:
        first.kill()


def test_an_agent_restarted_under_the_same_name_starts_clean(directory, tmp_path):
    old = NodeProcess(directory.endpoint, "phoenix", tmp_path)
    old.run("x = node.array('phoenix.x', (8,), np.int64); x[:] = 5")
    _kill_whole_node(old)
    new = NodeProcess(directory.endpoint, "phoenix", tmp_path)  # accepted at once, not refused
    try:
        new.run("x = node.array('phoenix.x', (8,), np.int64)")
        # the old incarnation's page is lost; the new incarnation does not pretend to own it
        assert new.run("", "{k: [list(r) for r in v] for k, v in node.lost().items()}") == {
            "phoenix.x": [[0, 64, "phoenix"]]}
        assert "restarted" in directory.log_path.read_text()
    finally:
        new.kill()


def test_a_restarted_directory_does_not_serve_the_agents_of_its_predecessor(tmp_path):
    first = Directory(tmp_path, transport="ipc")
    node = NodeProcess(first.endpoint, "old", tmp_path)
    second = None
    try:
        node.run("x = node.array('epoch.x', (8,), np.int64); x[:] = 1")
        first.kill()
        second = Directory(tmp_path, transport="ipc", name="directory-2")
        # the agent's heartbeats reach the new directory, which has no session for it: fenced
        # killed loudly: by its agent (SIGBUS), or by its watchdog once the agent has stopped
        assert node.proc.wait(NOTICE_DEADLINE_S) in STOPPED_LOUDLY
        log = node.log_path.read_text()
        assert "refuses this node" in log and "earlier directory" in log, log
    finally:
        node.kill()
        if second is not None:
            second.kill()


def test_a_lock_held_by_a_node_whose_agent_is_killed_passes_on_marked_broken(directory, tmp_path):
    a = NodeProcess(directory.endpoint, "a", tmp_path)
    b = NodeProcess(directory.endpoint, "b", tmp_path)
    try:
        a.run("lk = node.lock('held'); lk.acquire(); y = node.array('mine', (512,), np.int64); "
              "y[:] = 9")
        b.run("z = node.array('theirs', (512,), np.int64); z[:] = 4")
        b.send("lk = node.lock('held'); lk.acquire()", "lk.previous_holder_died")
        os.kill(a.run("", "node._agent_proc.pid"), signal.SIGKILL)
        t0 = time.monotonic()
        assert b.wait(NOTICE_DEADLINE_S) is True
        assert time.monotonic() - t0 < NOTICE_DEADLINE_S
        # the other nodes carry on: b's own pages and new arrays work, a's owned pages are lost
        assert b.run("lk.release(); z += 1", "int(z.sum())") == 5 * 512
        assert b.run("w = node.array('after', (512,), np.int64); w[:] = 2", "int(w.sum())") == 1024
        assert b.run("", "sorted(node.lost())") == ["mine"]
    finally:
        a.kill()
        b.kill()


def test_a_node_declared_dead_is_fenced_and_stops_loudly(directory, tmp_path):
    node = NodeProcess(directory.endpoint, "sleeper", tmp_path)
    try:
        node.run("x = node.array('fence.x', (8,), np.int64); x[:] = 1")
        agent_pid = node.run("", "node._agent_proc.pid")
        # the agent falls silent long enough to be declared dead, then wakes up
        os.kill(agent_pid, signal.SIGSTOP)
        deadline = time.monotonic() + NOTICE_DEADLINE_S
        while "sleeper declared dead" not in directory.log_path.read_text():
            assert time.monotonic() < deadline, "the directory never declared the node dead"
            time.sleep(0.1)
        os.kill(agent_pid, signal.SIGCONT)
        assert node.proc.wait(NOTICE_DEADLINE_S) in STOPPED_LOUDLY
        log = node.log_path.read_text()
        # fenced (the directory's answer came first) or cut off (its own deadline did): loudly
        assert ("refuses this node" in log and "declared dead" in log) or "cut off" in log, log
    finally:
        node.kill()


# the mute node below speaks the protocol of a directory that asks a page's holder for it (a
# Fetch): the relay and central managers' (the distributed one's shards run the central one).
# The dynamic manager's owners are asked node to node, not by the directory
@pytest.mark.parametrize("manager", ["relay", "central"])
def test_a_node_that_leaves_a_fetch_unanswered_is_declared_dead_not_waited_for(directory, tmp_path):
    """A peer that keeps its heartbeats going but never answers a Fetch: the page must not stay
    busy forever. The directory declares it dead at the transaction's deadline."""
    import zmq

    from dsm import protocol as p
    from dsm.liveness import HEARTBEAT_INTERVAL_S

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, p.identity("mute", 1))
    sock.connect(directory.endpoint)
    reader = None

    def answer(expected):
        assert sock.poll(10_000), f"no {expected.__name__} from the directory"
        msg, _ = p.decode(sock.recv_multipart(), 4096, p.Direction.TO_NODE)
        assert isinstance(msg, expected), msg
        return msg

    try:
        sock.send_multipart(p.encode(p.Hello("mute", os.getpid(), 1)))
        answer(p.Welcome)
        sock.send_multipart(p.encode(p.Alloc(1, "mute.x", 4096, {"shape": [512], "dtype": "<i8"})))
        page = answer(p.Allocated).offset // 4096
        sock.send_multipart(p.encode(p.Acquire(page, 1, True, False)))
        answer(p.Grant)
        reader = NodeProcess(directory.endpoint, "reader", tmp_path)
        reader.send("x = node.array('mute.x', (512,), np.int64)", "int(x[0])")
        deadline = time.monotonic() + NOTICE_DEADLINE_S
        while reader.proc.poll() is None:  # stay alive for the directory, answer no Fetch
            assert time.monotonic() < deadline, "the reader is still waiting for the page"
            sock.send_multipart(p.encode(p.Heartbeat()))
            while sock.poll(int(HEARTBEAT_INTERVAL_S * 1000)):
                sock.recv_multipart()
        assert reader.proc.returncode == -signal.SIGBUS
        assert "died with node mute" in reader.log_path.read_text()
        log = directory.log_path.read_text()
        assert "unanswered for over" in log
        # the line says which transaction: the reader's read, from mute, waiting for mute
        assert re.search(r"\(a read of pages \d+\+1 by reader, from mute[^;]*; waiting for "
                         r"[^)]*\bmute\b", log), log[-2000:]
    finally:
        sock.close()
        if reader is not None:
            reader.kill()
