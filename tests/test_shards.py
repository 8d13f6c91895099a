"""The distributed manager (IVY's fixed distributed manager: ``dsm/directory/shard/``) with real
processes: a directory of K shards on this host (``--manager distributed --shards K``), nodes
that route every page message to its page's shard (``dsm/agent/links.py``).

The coherence workloads of tests/test_coherence.py run here against 2 and 4 shards (their arrays
start on shard 1's stripe: the first node allocates a stripe-long pad, so their pages are served
by a shard while their locks and barriers are the coordinator's), and the random histories of
tests/test_random_coherence.py over pages one stripe apart, one or more on every shard.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np  # noqa: F401  (the imported tests' snippets name it on the nodes, not here)
import pytest
import zmq

from dsm import protocol as p
from dsm.core.shards import STRIPE_PAGES, shard_of
from dsm.directory.shard import HELLO_HOLD_S
from dsm.directory.sessions import new_random_id
from tests.cluster import (ClusterProcessError, Directory, NodeProcess, dump_logs,
                           environment_without_manager_defaults)
from tests.test_coherence import (  # noqa: F401  (collected here, against the shards)
    test_a_process_attaching_late_cannot_write_a_read_copy_silently,
    test_concurrent_writers_on_one_page_lose_no_write,
    test_false_sharing_loses_no_write,
    test_read_sharing_then_one_write_invalidates_every_copy,
)
from tests.test_random_coherence import WRITE_FRACTIONS, check_random_histories

pytestmark = pytest.mark.timeout(120)

#: int64 slots per page
SLOTS = 512
PAGE = 4096
#: the pages of the random histories, one stripe and a page apart: page k on shard k mod K
STRIDE_PAGES = STRIPE_PAGES + 1
#: a node's death is noticed after dsm.liveness.NODE_TIMEOUT_S (5 s); with slack for a loaded
#: 2-core machine
NOTICE_DEADLINE_S = 20.0
#: how a cut-off or fenced node's workload ends: SIGBUS from its agent, or SIGKILL from its
#: watchdog when the agent, having stopped, is gone first
STOPPED_LOUDLY = (-signal.SIGBUS, -signal.SIGKILL)
ANSWER_TIMEOUT_MS = 10_000


@pytest.fixture(params=[2, 4], ids=lambda k: f"{k}-shards")
def shards(request):
    return request.param


#: the shard counts of a test whose run waits out the deadlines (a death, a silence): 4 shards
#: in .ci/slow-check only (the suite's 15 minutes)
SHARDS_WAITING_OUT_DEADLINES = pytest.mark.parametrize(
    "shards", [2, pytest.param(4, marks=pytest.mark.slow)], ids=lambda k: f"{k}-shards")


@pytest.fixture
def directory(tmp_path, shards):
    d = Directory(tmp_path, shards=shards)
    yield d
    d.kill()


@pytest.fixture
def make_node(tmp_path, directory):
    nodes = []

    def make(name):
        node = NodeProcess(directory.endpoint, name, tmp_path)
        if not nodes:  # the arrays of the test come after a stripe: on shard 1
            node.run(f"node.array('pad', ({STRIPE_PAGES * SLOTS},), np.int64)")
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


# --- talking to the shards without an agent -------------------------------------------------------
class RawNode:
    """A DEALER per shard that speaks the node protocol by hand (no agent, no memory)."""

    def __init__(self, coordinator: str, name: str):
        self.incarnation = new_random_id()  # a session ended fences its identity for good
        self.hello = p.Hello(name, os.getpid(), self.incarnation)
        self.sockets = [self._connect(coordinator)]
        welcome = self.ask(0, self.hello, p.Welcome)
        self.endpoints = welcome.shards
        for endpoint in welcome.shards[1:]:
            self.sockets.append(self._connect(endpoint))
            self.ask(len(self.sockets) - 1, self.hello, p.Welcome)

    def _connect(self, endpoint: str) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, p.identity(self.hello.node, self.incarnation))
        sock.connect(endpoint)
        return sock

    def ask(self, shard: int, msg: p.Message, expected: type) -> p.Message:
        sock = self.sockets[shard]
        sock.send_multipart(p.encode(msg))
        while True:
            assert sock.poll(ANSWER_TIMEOUT_MS), f"shard {shard} did not answer {msg}"
            answer, _ = p.decode(sock.recv_multipart(), PAGE, p.Direction.TO_NODE)
            if not isinstance(answer, p.Heartbeat):
                break
        assert isinstance(answer, expected), answer
        return answer

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(0)


def stats_report(endpoint: str) -> p.StatsReport:
    """What ``dsm top`` is told (StatsQuery needs no session)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(p.encode(p.StatsQuery(1)))
        assert sock.poll(ANSWER_TIMEOUT_MS), f"{endpoint} did not answer a StatsQuery"
        report, _ = p.decode(sock.recv_multipart(), PAGE, p.Direction.TO_NODE)
    finally:
        sock.close(0)
    assert isinstance(report, p.StatsReport), report
    return report


def shard_counters(endpoints: list[str]) -> list[dict]:
    """Each shard's page counters, asked of it directly."""
    return [stats_report(endpoint).directory for endpoint in endpoints]


def shard_endpoints(coordinator: str) -> list[str]:
    probe = RawNode(coordinator, "probe")
    try:
        return probe.endpoints
    finally:
        probe.ask(0, p.Bye(), p.Bye)
        for shard in range(1, len(probe.sockets)):
            probe.ask(shard, p.Bye(), p.Bye)
        probe.close()


# --- coherence against the shards -----------------------------------------------------------------
@pytest.mark.parametrize("write_fraction", WRITE_FRACTIONS.values(), ids=WRITE_FRACTIONS.keys())
def test_every_words_history_is_linearizable_with_pages_on_every_shard(
        write_fraction, make_node, directory, tmp_path, shards):
    nodes = [make_node(f"n{i}") for i in range(3)]
    before = shard_counters(shard_endpoints(directory.endpoint))
    check_random_histories(nodes, tmp_path, write_fraction, pages=2 * shards,
                           page_stride=STRIDE_PAGES)
    after = shard_counters(shard_endpoints(directory.endpoint))
    # every shard served its pages: none was bypassed
    grants = [a["grants"] - b["grants"] for a, b in zip(after, before)]
    assert len(grants) == shards and all(g > 0 for g in grants), grants


def test_runs_handed_back_and_scanned_across_stripes_stop_at_stripe_ends(make_node, directory,
                                                                         shards):
    a = make_node("a")
    pages = shards * STRIPE_PAGES
    a.run(f"x = node.array('scan', ({pages * SLOTS},), np.int64); x[:] = np.arange({pages * SLOTS})")
    # a owns every page: leaving, it writes them back in runs cut at stripe ends, each run to
    # its shard (a run sent whole to one shard would be refused, and its pages lost)
    a.close()
    b = make_node("b")
    total = b.run(f"x = node.array('scan', ({pages * SLOTS},), np.int64)", "int(x.sum())")
    assert total == pages * SLOTS * (pages * SLOTS - 1) // 2
    stats = b.run("", "node.stats()")["counters"]
    # read-ahead still batches (far fewer requests than pages), each batch within one stripe
    assert stats["pages_in"] >= pages and stats["requests"] < pages // 8, stats
    log = directory.log_path.read_text()
    assert "bad request" not in log and "LOST" not in log, log[-3000:]
    # dsm top's map, from the coordinator, puts every shard's stripes together
    arrays = {a[0]: a for a in stats_report(directory.endpoint).arrays}
    assert arrays["scan"][3] == [[pages, "shared", ["b"]]], arrays["scan"]


# --- failures ---------------------------------------------------------------------------------------
def _kill_whole_node(node: NodeProcess) -> None:
    agent_pid = node.run("", "node._agent_proc.pid")
    os.kill(agent_pid, signal.SIGKILL)
    os.killpg(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)


def _wait_for_log(directory: Directory, predicate, what: str) -> str:
    deadline = time.monotonic() + NOTICE_DEADLINE_S
    while True:
        log = directory.log_path.read_text()
        if predicate(log):
            return log
        assert time.monotonic() < deadline, f"{what} never happened:\n{log[-3000:]}"
        time.sleep(0.2)


@SHARDS_WAITING_OUT_DEADLINES
def test_a_killed_node_is_declared_dead_by_every_shard_and_its_pages_are_lost_on_each(
        directory, tmp_path, shards):
    array = "shards.loss"
    shape = f"({shards * STRIPE_PAGES * SLOTS},)"
    b = NodeProcess(directory.endpoint, "b", tmp_path)
    try:  # one page on each shard's stripe, owned by b
        b.run(f"x = node.array({array!r}, {shape}, np.int64)\n"
              f"for k in range({shards}): x[k * {STRIPE_PAGES * SLOTS}] = k + 1\n")
    finally:
        _kill_whole_node(b)
    log = _wait_for_log(directory, lambda log: all(
        any(f"[shard {i}/{shards}]" in line and "node b declared dead" in line
            for line in log.splitlines()) for i in range(shards)),
        "every shard declaring node b dead")
    for i in range(shards):  # each shard lost b's page of its stripe
        assert any(f"[shard {i}/{shards}]" in line and "LOST" in line and repr(array) in line
                   for line in log.splitlines()), (i, log[-3000:])
    c = NodeProcess(directory.endpoint, "c", tmp_path)
    try:
        c.run(f"x = node.array({array!r}, {shape}, np.int64)")
        # the coordinator gathers every shard's lost pages
        lost = c.run("", "{k: [list(r) for r in v] for k, v in node.lost().items()}")
        assert lost == {array: [[k * STRIPE_PAGES * PAGE, (k * STRIPE_PAGES + 1) * PAGE, "b"]
                                for k in range(shards)]}, lost
        for k in range(shards):  # a forked child touching the lost page of any shard dies loudly
            c.send("pid = os.fork()\n"
                   f"if pid == 0:\n    int(x[{k * STRIPE_PAGES * SLOTS}])\n    os._exit(0)\n"
                   "_, status = os.waitpid(pid, 0)\n",
                   "os.WIFSIGNALED(status) and os.WTERMSIG(status)")
            assert c.wait(NOTICE_DEADLINE_S) == signal.SIGBUS, k
        assert "died with node b" in c.log_path.read_text()
        forgotten = c.run("", f"[list(r) for r in node.forget_lost({array!r})]")
        assert len(forgotten) == shards
        assert c.run("", "node.lost()") == {}
        assert c.run("", "int(x.sum())") == 0  # zeros on every shard, as the program said
        c.run("x[:] = 3")
        assert c.run("", "int(x.sum())") == 3 * shards * STRIPE_PAGES * SLOTS
    finally:
        c.kill()


@SHARDS_WAITING_OUT_DEADLINES
def test_a_node_any_shard_declares_dead_is_fenced_by_all(directory, tmp_path, shards):
    """A peer that keeps heartbeating every shard but leaves one shard's Fetch unanswered: that
    shard declares it dead, and the coordinator makes every other shard fence it too."""
    mute = RawNode(directory.endpoint, "mute")
    reader = None
    try:
        last = shards - 1  # the page is on the last shard's stripe
        alloc = mute.ask(0, p.Alloc(1, "mute.x", last * STRIPE_PAGES * PAGE + PAGE,
                                    {"shape": [(last * STRIPE_PAGES + 1) * SLOTS],
                                     "dtype": "<i8"}), p.Allocated)
        page = alloc.offset // PAGE + last * STRIPE_PAGES
        assert shard_of(page, shards) == last
        mute.ask(last, p.Acquire(page, 1, True, False), p.Grant)
        reader = NodeProcess(directory.endpoint, "reader", tmp_path)
        reader.send(f"x = node.array('mute.x', ({(last * STRIPE_PAGES + 1) * SLOTS},), np.int64)",
                    f"int(x[{last * STRIPE_PAGES * SLOTS}])")
        deadline = time.monotonic() + NOTICE_DEADLINE_S
        fenced = set()
        while len(fenced) < shards:  # heartbeats to every shard; never answer the Fetch
            assert time.monotonic() < deadline, f"fenced by shards {sorted(fenced)} only"
            for shard, sock in enumerate(mute.sockets):
                sock.send_multipart(p.encode(p.Heartbeat()))
                while sock.poll(100):
                    msg, _ = p.decode(sock.recv_multipart(), PAGE, p.Direction.TO_NODE)
                    if isinstance(msg, p.Fenced):
                        assert "declared dead" in msg.reason, msg
                        fenced.add(shard)
        assert reader.proc.wait(NOTICE_DEADLINE_S) == -signal.SIGBUS
        assert "died with node mute" in reader.log_path.read_text()
        log = directory.log_path.read_text()
        assert f"[shard {last}/{shards}]" in log and "unanswered for over" in log
        assert f"shard {last} declared it dead" in log  # the coordinator heard it from there
    finally:
        mute.close()
        if reader is not None:
            reader.kill()


def test_a_page_message_to_the_wrong_shard_gets_an_error_naming_the_right_one(directory, shards):
    raw = RawNode(directory.endpoint, "raw")
    try:
        assert len(raw.endpoints) == shards
        error = raw.ask(0, p.Acquire(STRIPE_PAGES, 1, False, False), p.Error)
        assert (f"Acquire of page {STRIPE_PAGES} sent to shard 0 of {shards}, but page "
                f"{STRIPE_PAGES} is managed by shard 1") in error.message, error
        error = raw.ask(1, p.Acquire(0, 1, False, False), p.Error)
        assert "is managed by shard 0" in error.message, error
        error = raw.ask(0, p.Acquire(STRIPE_PAGES - 2, 4, False, False), p.Error)
        assert f"pages {STRIPE_PAGES - 2}..{STRIPE_PAGES + 1}" in error.message
        assert "crosses into shard 1's stripe" in error.message, error
        error = raw.ask(1, p.Writeback(0, 1, p.Payload.ZERO), p.Error)
        assert "is managed by shard 0" in error.message, error
        error = raw.ask(1, p.Discard([1, STRIPE_PAGES]), p.Error)
        assert "names page 1, which shard 0 manages" in error.message, error
        error = raw.ask(1, p.Alloc(3, "x", 8, {}), p.Error)
        assert "only the coordinator (shard 0) serves it" in error.message, error
        # asked of the right shard, the same requests are served
        grant = raw.ask(1, p.Acquire(STRIPE_PAGES, 1, False, False), p.Grant)
        assert grant.page == STRIPE_PAGES and grant.count == 1
        grant = raw.ask(0, p.Acquire(STRIPE_PAGES - 2, 2, False, False), p.Grant)
        assert (grant.page, grant.count) == (STRIPE_PAGES - 2, 2)
    finally:
        raw.close()


@SHARDS_WAITING_OUT_DEADLINES
def test_a_node_is_cut_off_when_any_shard_falls_silent(directory, tmp_path, shards):
    node = NodeProcess(directory.endpoint, "n", tmp_path)
    silent = directory.shard_pids()[-1]  # the last shard
    try:
        node.run(f"x = node.array('cut', ({shards * STRIPE_PAGES * SLOTS},), np.int64); x[0] = 1")
        os.kill(silent, signal.SIGSTOP)
        t0 = time.monotonic()
        # the node hears its coordinator, but not that shard: it stops, loudly, before the
        # shard would have declared it dead
        assert node.proc.wait(NOTICE_DEADLINE_S) in STOPPED_LOUDLY
        assert time.monotonic() - t0 < NOTICE_DEADLINE_S
        assert "has not answered for" in node.log_path.read_text()
        # and the coordinator gives up a manager that lost a shard
        assert directory.proc.wait(NOTICE_DEADLINE_S) == 3
        assert "has been silent for" in directory.log_path.read_text()
    finally:
        try:
            os.kill(silent, signal.SIGCONT)
        except ProcessLookupError:  # the coordinator stopped it
            pass
        node.kill()


# --- shards started one by one, as on several hosts ---------------------------------------------
class Shard:
    def __init__(self, tmp_path, name: str, args: list[str]):
        self.log_path = tmp_path / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dsm", "--log-level", "INFO", "directory", *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True,
            env=environment_without_manager_defaults())

    def first_line(self, timeout_s: float = 20.0) -> str:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        assert ready, f"no line within {timeout_s} s:\n{self.log_path.read_text()}"
        return self.proc.stdout.readline()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def test_shards_started_apart_join_their_coordinator_which_holds_hellos_until_then(tmp_path):
    coordinator_ep = f"ipc://{tmp_path}/coordinator.ipc"
    coordinator = Shard(tmp_path, "coordinator", [
        "--listen", coordinator_ep, "--shard", "0", "--of", "3", "--region-size", "64MiB"])
    shards: list[Shard] = []
    early = node = None
    try:
        _wait_for_file_text(tmp_path / "coordinator.log", "still waiting for shard(s) 1, 2")
        shards.append(Shard(tmp_path, "shard-a", [
            "--listen", f"ipc://{tmp_path}/a.ipc", "--shard", "auto", "--coordinator",
            coordinator_ep]))
        _wait_for_file_text(tmp_path / "coordinator.log", "shard 1 of 3 joined")
        # a node's Hello while shard 2 is missing is not answered yet
        early = zmq.Context.instance().socket(zmq.DEALER)
        early.setsockopt(zmq.LINGER, 0)
        early.setsockopt(zmq.IDENTITY, p.identity("early", 1))
        early.connect(coordinator_ep)
        early.send_multipart(p.encode(p.Hello("early", os.getpid(), 1)))
        _wait_for_file_text(tmp_path / "coordinator.log", "waits for its Welcome")
        assert not early.poll(500)
        # held until shortly before an agent gives up, then answered with the reason
        assert early.poll(int((HELLO_HOLD_S + 2) * 1000))
        refusal, _ = p.decode(early.recv_multipart(), PAGE, p.Direction.TO_NODE)
        assert isinstance(refusal, p.Error), refusal
        assert "waits for shard(s) 2 to join" in refusal.message, refusal
        assert "--scale manager=2" in refusal.message, refusal
        shards.append(Shard(tmp_path, "shard-b", [
            "--listen", f"ipc://{tmp_path}/b.ipc", "--shard", "2", "--of", "3",
            "--coordinator", coordinator_ep]))
        assert coordinator.first_line().startswith("directory listening on ")
        assert shards[1].first_line().startswith("shard 2 of 3 listening on ")
        early.send_multipart(p.encode(p.Hello("early", os.getpid(), 1)))  # once more
        assert early.poll(ANSWER_TIMEOUT_MS)
        welcome, _ = p.decode(early.recv_multipart(), PAGE, p.Direction.TO_NODE)
        assert isinstance(welcome, p.Welcome) and len(welcome.shards) == 3, welcome
        node = NodeProcess(coordinator_ep, "n", tmp_path)
        assert node.run(f"x = node.array('apart', ({3 * STRIPE_PAGES * SLOTS},), np.int64); "
                        "x[::%d] = 1" % SLOTS, "int(x.sum())") == 3 * STRIPE_PAGES
        # a fourth shard finds no free place, and says so
        extra = subprocess.run(
            [sys.executable, "-m", "dsm", "directory", "--listen", f"ipc://{tmp_path}/c.ipc",
             "--shard", "auto", "--coordinator", coordinator_ep],
            capture_output=True, text=True, timeout=30, env=environment_without_manager_defaults())
        assert extra.returncode == 2
        assert "there is no free shard" in extra.stdout + extra.stderr, extra
        # a shard that disagrees on the count is refused too
        wrong = subprocess.run(
            [sys.executable, "-m", "dsm", "directory", "--listen", f"ipc://{tmp_path}/d.ipc",
             "--shard", "1", "--of", "4", "--coordinator", coordinator_ep],
            capture_output=True, text=True, timeout=30)
        assert wrong.returncode == 2 and "manages 3 shards" in wrong.stdout + wrong.stderr
    except BaseException:
        print(dump_logs(tmp_path))
        raise
    finally:
        if early is not None:
            early.close(0)
        if node is not None:
            node.close()
        for s in shards:
            s.kill()
        coordinator.kill()


def _wait_for_file_text(path, text: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.1)


def test_shards_serve_with_the_clusters_keys(tmp_path):
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "dsm", "keygen", str(keys)], check=True, timeout=30,
                   capture_output=True)
    directory = Directory(tmp_path, shards=2, extra=["--keys", str(keys)])
    node = None
    try:
        env = {**os.environ, "DSM_KEYS": str(keys)}
        node = NodeProcess(directory.endpoint, "keyed", tmp_path, env=env)
        assert node.run(f"x = node.array('keyed', ({2 * STRIPE_PAGES * SLOTS},), np.int64); "
                        "x[::%d] = 2" % SLOTS, "int(x.sum())") == 2 * 2 * STRIPE_PAGES
        # a node without the keys is not served by any shard
        with pytest.raises(ClusterProcessError):
            NodeProcess(directory.endpoint, "open", tmp_path,
                        env={k: v for k, v in os.environ.items() if k != "DSM_KEYS"})
    finally:
        if node is not None:
            node.kill()
        directory.kill()


# --- many nodes ------------------------------------------------------------------------------------
#: the many-nodes test: nodes, each one actor (no fork), a few pages on every shard
MANY_NODES = 32
MANY_SHARDS = 4
MANY_OPS = 100
#: nodes started at once
START_WAVE = 4


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_32_nodes_against_4_shards_keep_every_words_history_linearizable(tmp_path):
    directory = Directory(tmp_path, shards=MANY_SHARDS)
    nodes: list[NodeProcess] = []
    try:
        t0 = time.monotonic()
        # in waves that start side by side: 32 Python agents starting at once on 2 cores
        # would miss an agent's start deadline (dsm.agent.launch.AGENT_START_TIMEOUT_S)
        for first in range(0, MANY_NODES, START_WAVE):
            wave = [NodeProcess(directory.endpoint, f"n{i:02d}", tmp_path, wait=False)
                    for i in range(first, min(first + START_WAVE, MANY_NODES))]
            nodes += wave
            for n in wave:
                n.wait_attached(60)
        started_s = time.monotonic() - t0
        check_random_histories(nodes, tmp_path, 0.3, procs_per_node=1, pages=2 * MANY_SHARDS,
                               page_stride=STRIDE_PAGES, ops=MANY_OPS, think_s=0.002,
                               timeout_s=90, min_request_fraction=0.05)
        counters = shard_counters(shard_endpoints(directory.endpoint))
        assert all(c["grants"] > 0 for c in counters), counters
        print(f"{MANY_NODES} nodes started in {started_s:.1f} s; total "
              f"{time.monotonic() - t0:.1f} s")
    finally:
        for n in nodes:
            n.kill()
        directory.kill()
