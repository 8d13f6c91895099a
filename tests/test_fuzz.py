"""End-to-end fuzzing: random and mutated frames sent to a live directory (from many ZeroMQ
identities, some of which said Hello so that the per-message handlers are reached), to a live
agent from the directory's side (a proxy between it and the real directory injects them), and to
an agent's Unix socket (garbage, truncated and oversized messages, descriptors where none belong,
peers that leave at once or before their answer). Afterwards every service is alive, has logged
no failure, and real nodes write and read data correctly through it."""

from __future__ import annotations

import os
import random
import select
import socket
import subprocess
import sys
import threading
import time

import msgpack
import pytest
import zmq

from dsm import local
from dsm import protocol as p
from dsm.reliability import has_session, strip
from tests.nemesis import bind_front
from dsm.logthrottle import LOG_INTERVAL_S, MAX_LINES_PER_INTERVAL
from tests.cluster import START_TIMEOUT_S, NodeProcess
from tests.fuzzing import FrameFuzzer, LocalFuzzer

pytestmark = pytest.mark.timeout(90)

SEED = 20260110
PAGE = 4096
#: the cluster fixture's region (tests.cluster.Directory) in pages
REGION_PAGES = (64 << 20) // PAGE
#: fuzzed messages that pass validation name only these pages: never those of the real check,
#: whose arrays are allocated from the region's start
FUZZ_PAGES = range(REGION_PAGES // 2, REGION_PAGES)
FRAMES_TO_DIRECTORY = 12_000
FRAMES_TO_AGENT = 10_000
LOCAL_MESSAGES = 3_000
IDENTITIES = 32
#: how many identities say Hello (the others are fenced at once)
SESSIONS = 20
#: a fuzzing identity's session is kept alive with a heartbeat every this many frames
HEARTBEAT_EVERY_FRAMES = 2_000
#: frames sent before the answers queued at the fuzzing sockets are read
DRAIN_EVERY_FRAMES = 256
ANSWER_TIMEOUT_S = 10.0
#: how long the agent may take to close what dropped clients left behind
FD_SETTLE_TIMEOUT_S = 10.0
FD_POLL_S = 0.05
#: a hostile client's answer must not take longer than this (the agent never blocks on one)
CLIENT_ANSWER_TIMEOUT_S = 5.0
#: check values: words of the arrays written and read through the fuzzed services
CHECK_WORDS = 3 * PAGE // 8
#: lines a service may write about a flood: its rate limit over the run, the joins, some slack
LOG_SLACK_LINES = 200


def _dealer(ctx: zmq.Context, endpoint: str, identity: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.SNDTIMEO, int(ANSWER_TIMEOUT_S * 1000))
    sock.connect(endpoint)
    return sock


def _answer(sock: zmq.Socket, what: str) -> p.Message:
    assert sock.poll(int(ANSWER_TIMEOUT_S * 1000)), f"no {what} within {ANSWER_TIMEOUT_S} s"
    msg, _ = p.decode(sock.recv_multipart(), PAGE, p.Direction.TO_NODE)
    return msg


def _drain(sock: zmq.Socket) -> int:
    n = 0
    while sock.poll(0):
        sock.recv_multipart()
        n += 1
    return n


def _barrier(sock: zmq.Socket, marker: str) -> None:
    """Wait until the directory has handled everything ``sock`` sent: a header it cannot read
    (an unknown type ``marker``) is answered with an Error naming it, in order."""
    sock.send_multipart([msgpack.packb([marker])])
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while True:
        left_ms = int((deadline - time.monotonic()) * 1000)
        assert left_ms > 0 and sock.poll(left_ms), f"the directory did not answer {marker}"
        msg, _ = p.decode(sock.recv_multipart(), PAGE, p.Direction.TO_NODE)
        if isinstance(msg, p.Error) and marker in msg.message:
            return


def _validly_outside_fuzz_pages(frames: list[bytes], to: p.Direction) -> bool:
    """Whether frames decode to a valid message that names pages the check uses (or Fenced,
    which stops an agent as it should): those are not sent."""
    try:
        msg, _ = p.decode(frames, PAGE, to)
    except p.ProtocolError:
        return False
    if isinstance(msg, p.Fenced):
        return True
    pages = list(getattr(msg, "pages", [])) + [getattr(msg, "page", FUZZ_PAGES.start)]
    return any(q < FUZZ_PAGES.start for q in pages)


def _assert_log_is_quiet(log_path, elapsed_s: float, what: str) -> None:
    text = log_path.read_text()
    assert "Traceback" not in text and "failed to handle" not in text, text[-4000:]
    complaints = sum(1 for line in text.splitlines()
                     if "WARNING" in line or "ERROR" in line)
    allowed = MAX_LINES_PER_INTERVAL * (elapsed_s / LOG_INTERVAL_S + 2) + LOG_SLACK_LINES
    assert complaints <= allowed, f"{what} wrote {complaints} warning lines (allowed {allowed})"


def _check_data_through(writer, reader, name: str) -> None:
    """``writer`` fills array ``name``, ``reader`` reads it all and adds one to every word, the
    writer reads that back."""
    writer.run(f"x = node.array({name!r}, ({CHECK_WORDS},), np.int64); x[:] = np.arange({CHECK_WORDS})")
    total = reader.run(f"y = node.array({name!r}, ({CHECK_WORDS},), np.int64); y += 1",
                       "int(y.sum())")
    assert total == CHECK_WORDS * (CHECK_WORDS - 1) // 2 + CHECK_WORDS
    assert writer.run("", "bool((x == np.arange(1, %d)).all())" % (CHECK_WORDS + 1)) is True


# --- the directory -------------------------------------------------------------------------------
# (raw clients with no peer endpoint, which the dynamic manager refuses at their Hello: the suite
# under $DSM_MANAGER=dynamic still runs this against the default manager)
@pytest.mark.parametrize("manager", ["central"])
def test_the_directory_survives_fuzzing_from_many_identities(directory, make_node, capsys):
    ctx = zmq.Context.instance()
    rng = random.Random(SEED)
    socks, fuzzers, sessions = [], [], []
    try:
        for i in range(IDENTITIES):
            sock = _dealer(ctx, directory.endpoint, p.identity(f"fuzz-{i}", i))
            socks.append(sock)
            # a session that said Bye is over for good (its identity fenced): those that said
            # Hello never say it validly, so that their messages go on reaching the handlers
            fuzzers.append(FrameFuzzer(rng, PAGE, p.Direction.TO_DIRECTORY, REGION_PAGES,
                                       FUZZ_PAGES, node=f"fuzz-{i}",
                                       exclude=(p.Bye,) if i < SESSIONS else ()))
            if i < SESSIONS:
                sock.send_multipart(p.encode(p.Hello(f"fuzz-{i}", os.getpid(), i)))
                assert isinstance(_answer(sock, "Welcome"), p.Welcome)
                sessions.append(sock)
        t0 = time.monotonic()
        sent = answers = skipped = 0
        while sent < FRAMES_TO_DIRECTORY:
            i = rng.randrange(IDENTITIES)
            frames = fuzzers[i].frames()
            if _validly_outside_fuzz_pages(frames, p.Direction.TO_DIRECTORY):
                skipped += 1
                continue
            socks[i].send_multipart(frames)
            sent += 1
            if sent % DRAIN_EVERY_FRAMES == 0:
                answers += sum(_drain(s) for s in socks)
            if sent % HEARTBEAT_EVERY_FRAMES == 0:
                for s in sessions:
                    s.send_multipart(p.encode(p.Heartbeat()))
        for i, sock in enumerate(socks):
            _barrier(sock, f"barrier-{i}")
        elapsed = time.monotonic() - t0
        with capsys.disabled():
            kinds = {}
            for f in fuzzers:
                for k, n in f.counts.items():
                    kinds[k] = kinds.get(k, 0) + n
            print(f"\ndirectory fuzz: {sent} frames from {IDENTITIES} identities in "
                  f"{elapsed:.1f} s ({sent / elapsed:.0f} frames/s; {answers} answers read "
                  f"early, {skipped} valid ones naming checked pages not sent); kinds {kinds}")
        assert directory.proc.poll() is None, "the directory died"
    finally:
        for sock in socks:
            sock.close()
    # a fresh peer is served, and real nodes write and read through the fuzzed directory
    probe = _dealer(ctx, directory.endpoint, p.identity("probe", 1))
    try:
        probe.send_multipart(p.encode(p.Hello("probe", os.getpid(), 1)))
        assert isinstance(_answer(probe, "Welcome"), p.Welcome)
    finally:
        probe.close()
    a, b = make_node("checker-a"), make_node("checker-b")
    _check_data_through(a, b, "checked.directory")
    assert directory.proc.poll() is None
    _assert_log_is_quiet(directory.log_path, elapsed, "the directory")


# --- an agent, from the directory's side ------------------------------------------------------
class FuzzingProxy(threading.Thread):
    """Stands between an agent and the real directory: forwards everything both ways, and
    injects ``frames`` fuzzed frames into what the agent receives. When they are all sent it
    sends a Fetch of ``MARKER_TXN`` and waits for the agent's Fetched: then the agent has
    handled everything before it."""

    MARKER_TXN = 2**60
    POLL_MS = 20
    INJECT_PER_ROUND = 64

    def __init__(self, directory: str, fuzzer: FrameFuzzer, frames: int):
        super().__init__(daemon=True)
        self.ctx = zmq.Context.instance()
        self.front, self.endpoint = bind_front(self.ctx)
        self.directory = directory
        self.fuzzer = fuzzer
        self.frames = frames
        self.injected = self.skipped = 0
        self.agent: bytes | None = None
        self.done = threading.Event()  #: the agent answered the marker
        self._stopping = threading.Event()
        self.elapsed_s = 0.0
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._stopping.set()
        self.join(ANSWER_TIMEOUT_S)

    def run(self) -> None:
        back = None
        try:
            poller = zmq.Poller()
            poller.register(self.front, zmq.POLLIN)
            t0 = None
            while not self._stopping.is_set():
                for sock, _ in poller.poll(self.POLL_MS):
                    if sock is self.front:
                        identity, *frames = self.front.recv_multipart()
                        if back is None:  # the agent's first message: connect on its behalf
                            self.agent = identity
                            back = self.ctx.socket(zmq.DEALER)
                            back.setsockopt(zmq.LINGER, 0)
                            back.setsockopt(zmq.IDENTITY, identity)
                            back.connect(self.directory)
                            poller.register(back, zmq.POLLIN)
                        if self._is_marker_answer(frames):
                            self.elapsed_s = time.monotonic() - t0
                            self.done.set()
                        # forwarded all the same: it is numbered in the agent's session with
                        # the directory, which would wait for it (the directory drops a Fetched
                        # of a transaction it never began, with a warning)
                        back.send_multipart(frames)
                    else:
                        frames = back.recv_multipart()
                        self.front.send_multipart([self.agent, *frames])
                        if t0 is None and isinstance(p.decode(frames, PAGE, p.Direction.TO_NODE)[0],
                                                     p.Welcome):
                            t0 = time.monotonic()  # joined: the fuzzing starts
                if t0 is not None and self.injected < self.frames:
                    self._inject()
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.done.set()
        finally:
            self.front.close()
            if back is not None:
                back.close()

    def _inject(self) -> None:
        for _ in range(self.INJECT_PER_ROUND):
            frames = self.fuzzer.frames()
            if _validly_outside_fuzz_pages(frames, p.Direction.TO_NODE):
                self.skipped += 1
                continue
            self.front.send_multipart([self.agent, *frames])
            self.injected += 1
            if self.injected == self.frames:
                marker = p.Fetch(self.MARKER_TXN, FUZZ_PAGES.stop - 1, 1, False)
                self.front.send_multipart([self.agent, *p.encode(marker)])
                return

    def _is_marker_answer(self, frames: list[bytes]) -> bool:
        if frames and has_session(frames[0]):  # the agent's session with the directory
            frames = strip(frames)
        try:
            msg, _ = p.decode(frames, PAGE, p.Direction.TO_DIRECTORY)
        except p.ProtocolError:
            return False
        return isinstance(msg, p.Fetched) and msg.txn == self.MARKER_TXN


class AgentProcess:
    """``dsm agent`` started by the test (its directory endpoint is the proxy's)."""

    def __init__(self, directory: str, name: str, tmp_path):
        self.socket_path = str(tmp_path / f"{name}.sock")
        self.log_path = tmp_path / f"agent-{name}.log"
        self.log = open(self.log_path, "w")
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dsm", "--log-level", "INFO", "agent", "--directory",
             directory, "--node", name, "--socket", self.socket_path, "--ready-fd",
             str(write_fd), "--parent-pid", str(os.getpid())],
            pass_fds=[write_fd], stdout=self.log, stderr=self.log, start_new_session=True,
        )
        os.close(write_fd)
        try:
            ready, _, _ = select.select([read_fd], [], [], START_TIMEOUT_S)
            assert ready and os.read(read_fd, 64).startswith(b"ready"), \
                f"agent {name} not ready within {START_TIMEOUT_S} s"
        finally:
            os.close(read_fd)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def attached_workload(socket_path: str, name: str, tmp_path) -> NodeProcess:
    """A workload process attached to an existing agent (``$DSM_AGENT_SOCKET`` wins over the
    directory ``dsm.attach`` is given)."""
    env = {**os.environ, local.AGENT_SOCKET_ENV: socket_path}
    return NodeProcess("unused", name, tmp_path, env=env)


@pytest.mark.parametrize("manager", ["central"])  # one directory: the proxy stands for it whole
def test_an_agent_survives_fuzzing_from_the_directory_side(directory, make_node, tmp_path, capsys):
    rng = random.Random(SEED + 1)
    fuzzer = FrameFuzzer(rng, PAGE, p.Direction.TO_NODE, REGION_PAGES, FUZZ_PAGES,
                         node="fuzzed", exclude=(p.Fenced,))
    proxy = FuzzingProxy(directory.endpoint, fuzzer, FRAMES_TO_AGENT)
    proxy.start()
    agent = workload = None
    try:
        agent = AgentProcess(proxy.endpoint, "fuzzed", tmp_path)
        assert proxy.done.wait(60), f"the agent did not get through {FRAMES_TO_AGENT} frames"
        assert proxy.error is None, proxy.error
        with capsys.disabled():
            print(f"\nagent fuzz: {proxy.injected} frames in {proxy.elapsed_s:.1f} s "
                  f"({proxy.injected / proxy.elapsed_s:.0f} frames/s; {proxy.skipped} valid ones "
                  f"naming checked pages not sent); kinds {fuzzer.counts}")
        assert agent.proc.poll() is None, "the agent died"
        # a workload of the fuzzed agent and a node of its own write and read each other's data
        workload = attached_workload(agent.socket_path, "through-fuzzed", tmp_path)
        other = make_node("checker")
        _check_data_through(workload, other, "checked.agent")
        _check_data_through(other, workload, "checked.agent2")
        assert agent.proc.poll() is None
        _assert_log_is_quiet(agent.log_path, proxy.elapsed_s, "the agent")
    finally:
        if workload is not None:
            workload.kill()
        if agent is not None:
            agent.kill()
        proxy.stop()


# --- an agent's peer endpoint ----------------------------------------------------------------
FRAMES_TO_PEER = 5_000


def _peer_endpoint(directory, node: str) -> str:
    """The peer endpoint ``node`` told the directory (its join line)."""
    for line in directory.log_path.read_text().splitlines():
        if f"node {node} joined" in line and "peer endpoint" in line:
            return line.rsplit("peer endpoint ", 1)[1].rstrip(")")
    raise AssertionError(f"node {node} told the directory no peer endpoint")


@pytest.mark.parametrize("manager", ["central"])
def test_an_agent_survives_fuzzing_of_its_peer_endpoint(directory, make_node, capsys):
    a, b = make_node("a"), make_node("b")
    _check_data_through(a, b, "before.peers")  # pages travel node to node, connections made
    endpoint = _peer_endpoint(directory, "a")
    rng = random.Random(SEED + 2)
    fuzzer = FrameFuzzer(rng, PAGE, p.Direction.TO_PEER, REGION_PAGES, FUZZ_PAGES, node="a")
    ctx = zmq.Context.instance()
    sock = _dealer(ctx, endpoint, b"fuzzer")
    try:
        t0 = time.monotonic()
        for _ in range(FRAMES_TO_PEER):
            sock.send_multipart(fuzzer.frames(), copy=False)
        # a message after them all, answered only once the agent has read them: a round trip
        # through its loop (its stats, over its Unix socket)
        a.run("", "node.stats()['counters'].get('requests', 0)")
        elapsed = time.monotonic() - t0
    finally:
        sock.close(0)
    with capsys.disabled():
        print(f"\npeer fuzz: {FRAMES_TO_PEER} frames to node a's peer endpoint {endpoint} in "
              f"{elapsed:.1f} s; kinds {fuzzer.counts}")
    _check_data_through(a, b, "after.peers")
    _check_data_through(b, a, "after.peers2")
    _assert_log_is_quiet(a.log_path, elapsed, "node a's agent")


# --- an agent's Unix socket ------------------------------------------------------------------
def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _fds(pid: int) -> list[str]:
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out.append(f"{fd}:{os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            pass
    return out


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(CLIENT_ANSWER_TIMEOUT_S)
    s.connect(path)
    return s


def _greeted(path: str) -> socket.socket:
    s = _connect(path)
    greeting, fds = local.recv(s, local.Direction.TO_WORKLOAD)
    local.close_fds(fds)
    assert isinstance(greeting, local.Greeting)
    return s


def _ask(s: socket.socket, data: bytes, fds: list[int] = ()) -> local.LocalMessage:
    if fds:
        socket.send_fds(s, [data], list(fds))
    else:
        s.send(data)
    answer, got = local.recv(s, local.Direction.TO_WORKLOAD)
    local.close_fds(got)
    return answer


def _stats_round_trip(path: str) -> float:
    s = _greeted(path)
    try:
        t0 = time.monotonic()
        answer = _ask(s, local.encode(local.StatsRequest(1, os.getpid(), 1)))
        assert isinstance(answer, local.StatsAnswer), answer
        return time.monotonic() - t0
    finally:
        s.close()


def test_an_agent_survives_hostile_clients_on_its_unix_socket(make_node, capsys):
    a = make_node("a")
    agent_pid = a.run("", "node._agent_proc.pid")
    path = a.run("", "node._sock.getpeername()")
    # a forwarded request: the agent watches this process from now on (one pidfd, kept); the
    # fuzzing goes on over this connection, closed at the end (the baseline counts it out)
    s = _greeted(path)
    assert isinstance(_ask(s, local.encode(local.LostRequest(1, os.getpid(), 1))), local.LostAnswer)
    baseline = _fd_count(agent_pid) - 1
    baseline_fds = _fds(agent_pid)
    rng = random.Random(SEED + 2)
    fuzzer = LocalFuzzer(rng, os.getpid(), FrameFuzzer(rng, PAGE, p.Direction.TO_NODE,
                                                       REGION_PAGES, FUZZ_PAGES))
    r, w = os.pipe()
    t0 = time.monotonic()
    sent = 0
    try:
        for i in range(LOCAL_MESSAGES):
            if i % 100 == 0:  # a peer that leaves at once, before it is even greeted
                _connect(path).close()
            if i % 150 == 0:  # ... and one that leaves before its answer comes
                late = _greeted(path)
                late.send(local.encode(local.AllocRequest(7, os.getpid(), 1, "fuzz.late", 8, {})))
                late.close()
            roll = rng.random()
            data = fuzzer.message()
            if roll < 0.1:  # descriptors where none belong (or the wrong kind for Register)
                fds = [r, w][: rng.randint(1, 2)]
                if rng.random() < 0.5:
                    data = local.encode(local.Register(os.getpid()))
                answer = _ask(s, data, fds)
            elif roll < 0.13:  # more descriptors than a message may carry
                answer = _ask(s, data, [r, w, r, w, r, w])
            else:
                answer = _ask(s, data)
            sent += 1
            assert isinstance(answer, (local.ErrorAnswer, local.StatsAnswer,
                                       local.LockStatusAnswer, local.LostAnswer)), answer
        # a client that floods without reading is dropped; the agent keeps answering others
        flood = _greeted(path)
        flood.setblocking(False)
        request = local.encode(local.StatsRequest(9, os.getpid(), 1))
        try:
            for _ in range(100_000):
                flood.send(request)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass
        assert _stats_round_trip(path) < CLIENT_ANSWER_TIMEOUT_S
        flood.close()
    finally:
        os.close(r)
        os.close(w)
        s.close()
    elapsed = time.monotonic() - t0
    with capsys.disabled():
        print(f"\nunix socket fuzz: {sent} messages in {elapsed:.1f} s ({sent / elapsed:.0f}/s); "
              f"kinds {fuzzer.counts}")
    # every descriptor that came with a refused message, and every dropped client, is closed
    deadline = time.monotonic() + FD_SETTLE_TIMEOUT_S
    while _fd_count(agent_pid) != baseline:
        assert time.monotonic() < deadline, (
            f"the agent holds {_fd_count(agent_pid)} fds, {baseline} before the fuzzing: "
            f"new {sorted(set(_fds(agent_pid)) - set(baseline_fds))}")
        time.sleep(FD_POLL_S)
    b = make_node("b")
    _check_data_through(a, b, "checked.local")
    assert a.run("", "node.stats()['processes']") == 1
