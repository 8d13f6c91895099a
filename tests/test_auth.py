"""Who may talk to whom: CurveZMQ between the nodes and the directory, credentials on the agent's
Unix socket. Real processes: a directory started with ``--keys``, nodes attached with
``dsm.attach`` (each with its own agent), raw ZeroMQ peers and raw Unix-socket clients."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from dsm import local
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from dsm import keys as k
from dsm import protocol as p
from dsm.agent.clients import refuse_claim, refuse_uid
from dsm.agent.launch import AgentStartError, start_agent
from dsm.agent.join import CONNECT_TIMEOUT_S
from tests.cluster import Directory, NodeProcess

pytestmark = pytest.mark.timeout(90)

#: how long a refused peer may take to see its handshake fail (a few reconnects at 100 ms)
HANDSHAKE_DEADLINE_S = 5.0
#: how long a refused peer waits for a reply that must not come (its handshake failed already)
NO_REPLY_WAIT_S = 1.0
#: plain peers of the flood test
FLOOD_PEERS = 40
#: how long the directory may take to log a refusal its peer has already seen
REFUSAL_LOGGED_DEADLINE_S = 10.0
#: a uid other than root's for the SO_PEERCRED test (nobody)
OTHER_UID = 65534
#: how long a raw client of the agent's socket waits for an answer
CLIENT_TIMEOUT_S = 5.0
PAGE_WORDS = 512


def _keygen(path: Path, *nodes: str) -> Path:
    done = subprocess.run([sys.executable, "-m", "dsm", "keygen", str(path),
                           *[a for n in nodes for a in ("--node", n)]],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture
def cluster_keys(tmp_path) -> Path:
    return _keygen(tmp_path / "keys", "reader")


@pytest.fixture
def keyed(tmp_path, cluster_keys):
    """A directory serving with the cluster's keys, and ``make(name, keys_dir)`` for nodes."""
    directory = Directory(tmp_path, extra=["--keys", str(cluster_keys)])
    nodes: list[NodeProcess] = []

    def make(name: str, keys_dir: Path | None = cluster_keys) -> NodeProcess:
        env = {key: v for key, v in os.environ.items() if key != k.KEYS_ENV}
        if keys_dir is not None:
            env[k.KEYS_ENV] = str(keys_dir)
        node = NodeProcess(directory.endpoint, name, tmp_path, env=env)
        nodes.append(node)
        return node

    yield directory, make
    for node in nodes:
        node.close()
    directory.kill()


def _directory_log(directory: Directory) -> str:
    directory.log.flush()
    return directory.log_path.read_text()


def _refusal_lines(directory: Directory) -> list[str]:
    """The directory's lines about refused peers (not the start lines that say who would be
    refused: one a shard)."""
    return [ln for ln in _directory_log(directory).splitlines()
            if "refused a peer" in ln or "more peers in the last" in ln]


def _other_keys(tmp_path: Path) -> Path:
    """A second cluster's keys: a directory key and a node key that the first does not know."""
    return _keygen(tmp_path / "other-keys")


def _mixed_keys(tmp_path: Path, node_from: Path, directory_from: Path) -> Path:
    """A keys directory holding one cluster's node keypair and another's directory key."""
    mixed = tmp_path / "mixed-keys"
    mixed.mkdir(mode=0o700)
    for name in ("node.key", "node.key_secret"):
        (mixed / name).write_bytes((node_from / name).read_bytes())
    (mixed / "directory.key").write_bytes((directory_from / "directory.key").read_bytes())
    return mixed


# --- the key files ------------------------------------------------------------------------------
def test_keygen_output_loads_with_zmq_auth(tmp_path):
    keys_dir = _keygen(tmp_path / "keys", "n1")
    assert keys_dir.stat().st_mode & 0o777 == 0o700
    for name in ("directory", "node", "n1"):
        public, none = zmq.auth.load_certificate(keys_dir / f"{name}.key")
        assert none is None  # the public file holds no secret
        public2, secret = zmq.auth.load_certificate(keys_dir / f"{name}.key_secret")
        assert public2 == public and zmq.curve_public(secret) == public
        assert (keys_dir / f"{name}.key_secret").stat().st_mode & 0o777 == 0o600
    assert len(zmq.auth.load_certificates(keys_dir)) == 3
    # the roles load: the directory accepts the two node keys, n1 uses its own keypair
    server = k.load_server_keys(keys_dir)
    assert set(server.clients.values()) == {keys_dir / "node.key", keys_dir / "n1.key"}
    assert k.load_client_keys(keys_dir, "n1").own.path == keys_dir / "n1.key_secret"
    assert k.load_client_keys(keys_dir, "n2").own.path == keys_dir / "node.key_secret"
    # run again: kept, not replaced (new keys would lock the nodes out); --node adds one
    before = (keys_dir / "node.key_secret").read_bytes()
    _keygen(keys_dir, "n2")
    assert (keys_dir / "node.key_secret").read_bytes() == before
    assert (keys_dir / "n2.key_secret").exists()


def test_malformed_keys_are_errors_that_name_the_file(tmp_path):
    keys_dir = _keygen(tmp_path / "keys")
    (keys_dir / "node.key_secret").write_text("curve\n    public-key = \"short\"\n")
    with pytest.raises(k.KeysError, match=r"node\.key_secret: the public key must be 40 Z85"):
        k.load_client_keys(keys_dir, None)
    with pytest.raises(k.KeysError, match="does not exist"):
        k.load_server_keys(tmp_path / "nowhere")
    done = subprocess.run([sys.executable, "-m", "dsm", "directory", "--listen",
                           "tcp://127.0.0.1:*", "--keys", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "dsm keygen" in done.stderr


def test_refusal_log_is_rate_limited():
    now = [0.0]
    lines: list[str] = []

    class Capture:
        def warning(self, fmt, *args):
            lines.append(fmt % args)

    refusals = k.RefusalLog("x", burst=5, window_s=10.0, clock=lambda: now[0], logger=Capture())
    for _ in range(1000):
        refusals.refused("bad peer")
    assert len(lines) == 5 and refusals.total == 1000
    now[0] = 10.5
    refusals.flush()
    assert len(lines) == 6 and "995 more" in lines[-1]
    refusals.refused("bad peer")
    assert len(lines) == 7


@pytest.mark.parametrize("order", ["socket first", "guard first"])
def test_the_refusal_watch_ends_when_its_socket_closes_not_at_its_poll_timeout(monkeypatch,
                                                                              order):
    # every agent's peer endpoint has one: its thread slept out a 1 s poll, so every agent took
    # a second to stop (libzmq tells a monitor that it stopped only if asked to). With the
    # poll made 20 s long, only the event can end the thread in time
    monkeypatch.setattr(k, "REFUSAL_POLL_MS", 20_000)
    monkeypatch.setattr(k, "warn_open", lambda what: None)
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.ROUTER)
        guard = k.serve(sock, None, "a test endpoint")
        sock.bind("tcp://127.0.0.1:*")
        if order == "socket first":
            sock.close(0)
            guard._thread.join(10)
            assert not guard._thread.is_alive(), "the watch outlived its socket"
            guard.close()
        else:
            started = time.monotonic()
            guard.close()
            # (the poll's end would come at 20 s: half of it is the event's doing, not the poll's)
            assert time.monotonic() - started < 10 and not guard._thread.is_alive()
            sock.close(0)
    finally:
        ctx.term()


# --- CurveZMQ, end to end -----------------------------------------------------------------------
def test_accepted_keys_work_end_to_end(keyed, cluster_keys):
    directory, make = keyed
    writer = make("writer")  # the shared node.key
    reader = make("reader")  # its own reader.key
    writer.run("x = node.array('x', (8 * 512,), np.int64); x[:] = np.arange(x.size)")
    total = reader.run("x = node.array('x', (8 * 512,), np.int64)", "int(x.sum())")
    assert total == 8 * 512 * (8 * 512 - 1) // 2
    assert reader.run("", "node.stats()")["counters"].get("pages_in", 0) >= 8
    log = _directory_log(directory)
    assert "serves with CURVE keys" in log and "runs OPEN" not in log
    assert "refused a peer" not in log


def _raw_peer(endpoint: str, setup) -> tuple[str, bool]:
    """A DEALER configured by ``setup`` sends the directory a well-formed Hello: which
    handshake failure its monitor saw, and whether any reply came."""
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IDENTITY, p.identity("intruder", 1))
    setup(dealer)
    monitor = dealer.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                        | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        dealer.connect(endpoint)
        dealer.send_multipart(p.encode(p.Hello("intruder", os.getpid(), 1)))
        assert monitor.poll(int(HANDSHAKE_DEADLINE_S * 1000)), "no handshake outcome in time"
        event = zmq.Event(recv_monitor_message(monitor)["event"]).name
        replied = bool(dealer.poll(int(NO_REPLY_WAIT_S * 1000)))
        return event, replied
    finally:
        dealer.disable_monitor()
        monitor.close(0)
        dealer.close(0)


def _curve(secret_file: Path, server_public_file: Path):
    public, secret = zmq.auth.load_certificate(secret_file)
    server, _ = zmq.auth.load_certificate(server_public_file)

    def setup(sock: zmq.Socket) -> None:
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server
    return setup


def test_unauthenticated_peers_get_nothing_and_the_cluster_keeps_serving(keyed, cluster_keys,
                                                                         tmp_path):
    directory, make = keyed
    writer = make("writer")
    writer.run("x = node.array('x', (4 * 512,), np.int64); x[:] = 5")
    other = _other_keys(tmp_path)
    # the plain peer last: it retries its handshake until it is closed, and its refusals would
    # use up the log's budget for the window before the others are logged
    peers = {
        "a key not in DIR": _curve(other / "node.key_secret", cluster_keys / "directory.key"),
        "the wrong directory key pinned": _curve(cluster_keys / "node.key_secret",
                                                 other / "directory.key"),
        "plain ZeroMQ": lambda sock: None,
    }
    for what, setup in peers.items():
        event, replied = _raw_peer(directory.endpoint, setup)
        assert event.startswith("HANDSHAKE_FAILED"), (what, event)
        assert not replied, f"{what}: the directory answered"
    # the directory logged each refusal, and served on: a node that joins now reads the data
    deadline = time.monotonic() + REFUSAL_LOGGED_DEADLINE_S  # (logged after the peer saw it)
    while (len(_refusal_lines(directory)) < len(peers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = _directory_log(directory)
    assert log.count("refused a peer") >= len(peers), log
    assert "is not among the cluster's keys" in log
    reader = make("reader")
    assert reader.run("x = node.array('x', (4 * 512,), np.int64)", "int(x.sum())") == 5 * 4 * 512
    writer.run("x[:] = 6")
    assert reader.run("", "int(x.sum())") == 6 * 4 * 512
    assert directory.proc.poll() is None


def test_a_flood_of_refused_peers_logs_a_bounded_number_of_lines(keyed):
    directory, make = keyed
    t0 = time.monotonic()
    ctx = zmq.Context.instance()
    socks, monitors = [], []
    try:
        for _ in range(FLOOD_PEERS):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            # a refusal shows as either event: PROTOCOL when the directory's ERROR arrives
            # before it closes the connection, NO_DETAIL when the close (EPIPE) comes first
            monitors.append(s.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                                 | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL))
            s.connect(directory.endpoint)
            try:  # never blocking: a handshake already refused for a protocol error leaves
                s.send(b"garbage", zmq.NOBLOCK)  # the socket no pipe (seen on a loaded host)
            except zmq.Again:
                pass
            socks.append(s)
        for m in monitors:  # every one of them was refused
            assert m.poll(int(HANDSHAKE_DEADLINE_S * 1000))
    finally:
        for s, m in zip(socks, monitors):
            s.disable_monitor()
            m.close(0)
            s.close(0)
    # the directory hears of a refusal from its socket's monitor, after the peer did: its
    # lines may come a moment after every peer was refused (seen on a loaded host)
    deadline = time.monotonic() + REFUSAL_LOGGED_DEADLINE_S
    while not (lines := _refusal_lines(directory)) and time.monotonic() < deadline:
        time.sleep(0.05)
    windows = int((time.monotonic() - t0) // k.REFUSAL_LOG_WINDOW_S) + 1
    # one-by-one lines per window, plus one summary line per closed window
    assert 1 <= len(lines) <= windows * (k.REFUSAL_LOG_BURST + 1), lines
    node = make("after-the-flood")
    assert node.run("x = node.array('x', (512,), np.int64); x[:] = 1", "int(x.sum())") == 512


@pytest.mark.parametrize("case", ["no keys", "a key not in DIR", "the wrong directory key",
                                  "keys against an open directory"])
def test_a_wrongly_keyed_node_fails_with_an_authentication_error_in_bounded_time(
        case, tmp_path, cluster_keys):
    other = _other_keys(tmp_path)
    keys_dir = {
        "no keys": lambda: None,
        "a key not in DIR": lambda: _mixed_keys(tmp_path, other, cluster_keys),
        "the wrong directory key": lambda: _mixed_keys(tmp_path, cluster_keys, other),
        "keys against an open directory": lambda: cluster_keys,
    }[case]()
    extra = [] if case == "keys against an open directory" else ["--keys", str(cluster_keys)]
    directory = Directory(tmp_path, extra=extra)
    env_keys = os.environ.pop(k.KEYS_ENV, None)  # the agent must not find keys elsewhere
    try:
        t0 = time.monotonic()
        with pytest.raises(AgentStartError) as info:
            agent = start_agent(directory.endpoint, "wrong", keys_dir=keys_dir)
            agent.stop()
        elapsed = time.monotonic() - t0
        # not the generic "did not answer within CONNECT_TIMEOUT_S"
        assert elapsed < CONNECT_TIMEOUT_S, elapsed
        assert info.value.kind == "AuthenticationFailed", info.value
        assert "authentication failed" in str(info.value)
        assert directory.proc.poll() is None
    finally:
        if env_keys is not None:
            os.environ[k.KEYS_ENV] = env_keys
        directory.kill()


def test_an_open_directory_warns_that_it_is_open(tmp_path):
    directory = Directory(tmp_path)
    try:
        deadline = time.monotonic() + HANDSHAKE_DEADLINE_S
        while "runs OPEN" not in _directory_log(directory):
            assert time.monotonic() < deadline, _directory_log(directory)
            time.sleep(0.05)
    finally:
        directory.kill()


# --- the agent's Unix socket --------------------------------------------------------------------
@pytest.fixture
def agent(tmp_path):
    """An agent of an open directory, its socket in a private directory it made."""
    directory = Directory(tmp_path)
    started = start_agent(directory.endpoint, "local", socket_path=str(tmp_path / "agent" / "sock"))
    yield started
    started.stop()
    directory.kill()


def _connect(path: str) -> tuple[socket.socket, dict]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(CLIENT_TIMEOUT_S)
    sock.connect(path)
    data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
    for fd in fds:
        os.close(fd)
    return sock, msgpack.unpackb(data)


def _ask(sock: socket.socket, message: dict, fds: list[int] = ()) -> dict:
    data = msgpack.packb(message)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)
    return msgpack.unpackb(sock.recv(1 << 16))


def test_a_client_claiming_another_pid_is_refused(agent):
    sock, greeting = _connect(agent.socket_path)
    assert greeting["type"] == "layout"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        r, w = os.pipe()
        try:  # the claim is refused before the fd is even looked at
            reply = _ask(sock, {"type": "register", "pid": other.pid}, [r])
        finally:
            os.close(r)
            os.close(w)
        assert reply["type"] == "error" and "SO_PEERCRED" in reply["message"], reply
        assert f"claims pid {other.pid}" in reply["message"]
        reply = _ask(sock, {"type": "lock", "req": 7, "name": "l", "pid": other.pid, "tid": 1,
                            "timeout_ms": 0, "guards": []})
        assert reply["type"] == "error" and reply["req"] == 7 and "SO_PEERCRED" in reply["message"]
        # its own pid is served (the directory answers the lock)
        reply = _ask(sock, {"type": "lock", "req": 8, "name": "l", "pid": os.getpid(), "tid": 1,
                            "timeout_ms": 0, "guards": []})
        assert reply["type"] == "sync" and reply["req"] == 8, reply
    finally:
        other.kill()
        other.wait()
        sock.close()
    # the agent still serves a real workload
    code = ("import dsm, numpy as np; n = dsm.attach(socket_path=%r); "
            "x = n.array('y', (512,), np.int64); x[:] = 3; print(int(x.sum())); n.close()"
            % agent.socket_path)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert done.stdout.strip() == str(3 * 512), done.stderr


def test_the_socket_directory_is_private_and_other_users_are_refused(agent):
    sock_dir = os.path.dirname(agent.socket_path)
    assert os.stat(sock_dir).st_mode & 0o777 == 0o700
    assert os.stat(agent.socket_path).st_mode & 0o777 == 0o600
    if os.geteuid() != 0:
        pytest.skip("changing uid needs root")
    assert _connect_as(OTHER_UID, agent.socket_path, fs_root=False) == "EACCES"
    # even past the directory's mode (file-system uid root), the agent refuses the uid it sees
    assert _connect_as(OTHER_UID, agent.socket_path, fs_root=True) == "closed before greeting"


def _connect_as(uid: int, path: str, fs_root: bool) -> str:
    """Connect from a forked child whose effective uid is ``uid``; with ``fs_root`` its
    file-system uid stays root (setfsuid), so that only SO_PEERCRED's uid (the effective one)
    can refuse it. What happened, as a word."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python-level cleanup, only syscalls, then _exit
        try:
            os.setresuid(uid, uid, 0)  # the saved uid 0 allows setfsuid(0)
            if fs_root:
                ctypes.CDLL(None, use_errno=True).setfsuid(0)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(CLIENT_TIMEOUT_S)
            try:
                s.connect(path)
                data = s.recv(1 << 16)
                out = b"greeted" if data else b"closed before greeting"
            except PermissionError:
                out = b"EACCES"
            except ConnectionResetError:
                out = b"closed before greeting"
            os.write(w, out)
        finally:
            os._exit(0)
    os.close(w)
    try:
        return os.read(r, 64).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def test_an_agent_refuses_a_socket_directory_others_can_reach(tmp_path):
    directory = Directory(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    try:
        with pytest.raises(AgentStartError, match="must be private") as info:
            start_agent(directory.endpoint, "exposed", socket_path=str(shared / "sock")).stop()
        assert "mode 0755" in str(info.value)
    finally:
        directory.kill()


def test_credential_rules():
    assert refuse_uid(1000, 1000) is None and refuse_uid(0, 1000) is None
    assert "only uid 0" in refuse_uid(1000, 0)
    assert refuse_claim(local.Detach(), 42) is None  # claims no pid
    assert refuse_claim(local.Register(42), 42) is None
    assert "claims pid 43" in refuse_claim(local.Register(43), 42)
    assert "claims pid 43" in refuse_claim(local.StatsRequest(1, 43, 7), 42)
