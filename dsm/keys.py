"""Who may talk to whom on the cluster's ZeroMQ sockets: CurveZMQ keys and the sockets that use them.

This module is the only place that knows the key files and the CURVE socket options. A cluster's
keys live in one directory, in pyzmq's ``zmq.auth`` certificate format (``dsm keygen DIR``):

    DIR/directory.key  DIR/directory.key_secret   the directory's keypair (it serves with it)
    DIR/node.key       DIR/node.key_secret        the nodes' shared keypair
    DIR/NAME.key       DIR/NAME.key_secret        a node's own keypair (``--node NAME``), if any

Each role needs only its part: the directory its secret file and the public files of the nodes
it accepts (every ``*.key`` in DIR but its own); a node its secret file (``NAME.key_secret`` if
present, else ``node.key_secret``) and ``directory.key``, the one public key it pins.

``serve(socket, keys)`` makes a socket a CURVE server whose clients are checked by ZAP (pyzmq's
``ThreadAuthenticator``, one per ZeroMQ context), and logs every refused peer, rate-limited, from
a monitor of the socket. ``configure_client(socket, keys)`` makes a socket a CURVE client that
pins the server's key; ``HandshakeWatch`` turns its monitor's ``EVENT_HANDSHAKE_FAILED_*`` into an
``AuthenticationFailed`` that says what went wrong. Without keys (``None``) the sockets stay on
ZeroMQ's NULL mechanism: the cluster runs open, and ``serve`` says so, once per process
(``warn_open``); a launcher says it once for its job (``announce_open``), and the processes it
starts do not repeat it.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.utils.monitor import parse_monitor_message

from dsm.errors import ConfigError, DsmError
from dsm.wire import stop_monitor

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

#: the environment variable behind every ``--keys`` flag
KEYS_ENV = "DSM_KEYS"
#: set (non-empty) by a launcher that said once for the whole job that the cluster runs open
#: (``announce_open``): the directory and node agents it starts do not say it again
OPEN_ANNOUNCED_ENV = "DSM_OPEN_ANNOUNCED"
#: certificate names in a keys directory
DIRECTORY_KEY_NAME = "directory"
NODE_KEY_NAME = "node"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
#: a CURVE key is 32 bytes, 40 characters in Z85
Z85_KEY_CHARS = 40
#: the ZAP domain of the cluster's sockets
ZAP_DOMAIN = "dsm"
#: secret files are written readable by their owner only; the keys directory likewise
SECRET_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
KEYS_DIR_MODE = 0o700

#: refused peers logged one by one per window; beyond that one summary line per window
REFUSAL_LOG_BURST = 5
REFUSAL_LOG_WINDOW_S = 10.0
#: how often the refusal monitor wakes to close a window that had refusals
REFUSAL_POLL_MS = 1000
#: handshakes that fail without detail (the server closed the connection) before a connecting
#: node calls it an authentication failure: one may be a server stopping mid-handshake, several in
#: a row are a server that cannot decrypt this node's hello (it pinned another directory's key)
HANDSHAKE_NO_DETAIL_LIMIT = 3

#: libzmq's ZMTP protocol error codes that a CURVE handshake reports (zmq.h)
_MECHANISM_MISMATCH = 0x11000002
_CRYPTOGRAPHIC = 0x11000001
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class KeysError(ConfigError):
    """A keys directory or key file is missing, unreadable or malformed; the message names it."""


class AuthenticationFailed(DsmError):
    """The peer refused this socket's credentials, or this socket refused the peer's."""


# --- key files ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Keypair:
    path: Path  #: the file it was read from
    public: bytes  #: Z85
    secret: bytes | None  #: Z85; None for a public certificate


@dataclass(frozen=True)
class ServerKeys:
    """What the directory serves with: its keypair and the public keys of the nodes it accepts."""

    keys_dir: Path
    own: Keypair
    #: Z85 public key -> the certificate file it came from
    clients: dict[bytes, Path]


@dataclass(frozen=True)
class ClientKeys:
    """What a node connects with: its keypair and the directory's public key, which it pins."""

    keys_dir: Path
    own: Keypair
    server_public: bytes


def add_keys_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """The ``--keys DIR`` flag of a command (default ``$DSM_KEYS``)."""
    parser.add_argument("--keys", metavar="DIR", default=os.environ.get(KEYS_ENV) or None,
                        help=f"the cluster's CurveZMQ keys (`dsm keygen DIR`): {what} (env "
                             f"{KEYS_ENV}; default: none, the cluster runs open)")


def keys_dir_from(value: str | os.PathLike | None) -> Path | None:
    """The keys directory a ``--keys`` flag (else ``$DSM_KEYS``) names; None: run open."""
    if value is None:
        value = os.environ.get(KEYS_ENV)
    return Path(value) if value else None


def load_keypair(path: Path, need_secret: bool) -> Keypair:
    """One certificate, checked: the file is readable, both keys are 40 Z85 characters that
    decode, and a secret key matches the public key beside it."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise KeysError(f"cannot read the key file {path}: "
                        f"{exc.strerror or exc} (make the keys with `dsm keygen DIR`)") from None
    except ValueError:
        raise KeysError(f"{path} is not a zmq.auth certificate: expected a line "
                        f"'public-key = \"<{Z85_KEY_CHARS} Z85 characters>\"', found none") from None
    for what, key in (("public", public), ("secret", secret)):
        if key is None:
            continue
        if len(key) != Z85_KEY_CHARS:
            raise KeysError(f"{path}: the {what} key must be {Z85_KEY_CHARS} Z85 characters, "
                            f"it is {len(key)}")
        try:
            zmq.utils.z85.decode(key)
        except (ValueError, KeyError, IndexError, TypeError):
            raise KeysError(f"{path}: the {what} key is not valid Z85") from None
    if need_secret:
        if secret is None:
            raise KeysError(f"{path} holds no secret key: expected a line "
                            f"'secret-key = \"...\"' (the {SECRET_SUFFIX} file of a keypair)")
        derived = zmq.curve_public(secret)
        if derived != public:
            raise KeysError(f"{path}: its secret key belongs to public key {derived.decode()}, "
                            f"but the file says {public.decode()}")
    return Keypair(path, public, secret if need_secret else None)


def _require_dir(keys_dir: Path) -> None:
    if not keys_dir.is_dir():
        raise KeysError(f"the keys directory {keys_dir} does not exist or is not a directory "
                        f"(make one with `dsm keygen {keys_dir}`)")


def load_server_keys(keys_dir: Path) -> ServerKeys:
    """The directory's keys: ``directory.key_secret`` and every other ``*.key`` in ``keys_dir``
    (at least one: a directory that accepts no node is a mistake, not a cluster)."""
    keys_dir = Path(keys_dir)
    _require_dir(keys_dir)
    own = load_keypair(keys_dir / f"{DIRECTORY_KEY_NAME}{SECRET_SUFFIX}", need_secret=True)
    clients: dict[bytes, Path] = {}
    for path in sorted(keys_dir.glob(f"*{PUBLIC_SUFFIX}")):
        if path.name == f"{DIRECTORY_KEY_NAME}{PUBLIC_SUFFIX}":
            continue  # the directory's identity is not a node's
        clients[load_keypair(path, need_secret=False).public] = path
    clients.pop(own.public, None)
    if not clients:
        raise KeysError(f"{keys_dir} holds no node public key (*{PUBLIC_SUFFIX} besides "
                        f"{DIRECTORY_KEY_NAME}{PUBLIC_SUFFIX}): the directory would accept no "
                        f"node (`dsm keygen {keys_dir}` makes {NODE_KEY_NAME}{PUBLIC_SUFFIX})")
    return ServerKeys(keys_dir, own, clients)


def node_secret_path(keys_dir: Path, node: str | None) -> Path:
    """The secret file a node uses: its own ``NAME.key_secret`` if present, else the shared one."""
    if node and node not in (DIRECTORY_KEY_NAME,) and "/" not in node:
        own = Path(keys_dir) / f"{node}{SECRET_SUFFIX}"
        if own.exists():
            return own
    return Path(keys_dir) / f"{NODE_KEY_NAME}{SECRET_SUFFIX}"


def load_client_keys(keys_dir: Path, node: str | None) -> ClientKeys:
    keys_dir = Path(keys_dir)
    _require_dir(keys_dir)
    own = load_keypair(node_secret_path(keys_dir, node), need_secret=True)
    server = load_keypair(keys_dir / f"{DIRECTORY_KEY_NAME}{PUBLIC_SUFFIX}", need_secret=False)
    return ClientKeys(keys_dir, own, server.public)


def load_peer_keys(keys_dir: Path, node: str | None) -> ServerKeys:
    """What a node's peer endpoint serves with (pages node to node): the node's own keypair,
    accepting every node key of the cluster (every ``*.key`` but the directory's)."""
    keys_dir = Path(keys_dir)
    _require_dir(keys_dir)
    own = load_keypair(node_secret_path(keys_dir, node), need_secret=True)
    clients = {load_keypair(path, need_secret=False).public: path
               for path in sorted(keys_dir.glob(f"*{PUBLIC_SUFFIX}"))
               if path.name != f"{DIRECTORY_KEY_NAME}{PUBLIC_SUFFIX}"}
    return ServerKeys(keys_dir, own, clients)


def peer_client_keys(keys: ServerKeys, peer: str) -> ClientKeys:
    """How a node connects to ``peer``'s endpoint: with its own keypair, pinning the peer's
    public key (``NAME.key`` if the peer has its own, else the shared ``node.key``)."""
    public = keys.keys_dir / f"{peer}{PUBLIC_SUFFIX}"
    if "/" in peer or peer == DIRECTORY_KEY_NAME or not public.exists():
        public = keys.keys_dir / f"{NODE_KEY_NAME}{PUBLIC_SUFFIX}"
    return ClientKeys(keys.keys_dir, keys.own, load_keypair(public, need_secret=False).public)


def keygen(keys_dir: Path, nodes: list[str] = (), force: bool = False) -> tuple[list[Path], list[Path]]:
    """Write the cluster's certificates into ``keys_dir`` (made mode 0700 if missing): the
    directory's, the shared node keypair, and one keypair per name in ``nodes``. A keypair that
    exists is kept unless ``force`` (new keys would lock out every node that holds the old ones),
    so that ``--node NAME`` adds a node to a cluster. (written files, kept files)."""
    keys_dir = Path(keys_dir)
    names = [DIRECTORY_KEY_NAME, NODE_KEY_NAME, *nodes]
    for name in nodes:
        if not name or "/" in name or name.startswith(".") or name in names[:2]:
            raise KeysError(f"--node {name!r}: a node key name must be a plain file name other "
                            f"than {DIRECTORY_KEY_NAME!r} and {NODE_KEY_NAME!r}")
    if len(set(names)) != len(names):
        raise KeysError(f"--node names repeat: {', '.join(nodes)}")
    todo, kept = [], []
    for name in names:
        files = [keys_dir / f"{name}{PUBLIC_SUFFIX}", keys_dir / f"{name}{SECRET_SUFFIX}"]
        present = [f for f in files if f.exists()]
        if force or not present:
            todo.append(name)
        elif len(present) == len(files):
            kept += files
        else:
            raise KeysError(f"{present[0]} exists without {({*files} - {*present}).pop()}: half a "
                            "keypair (--force replaces it)")
    keys_dir.mkdir(mode=KEYS_DIR_MODE, parents=True, exist_ok=True)
    written = []
    old_umask = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        for name in todo:
            public, secret = zmq.auth.create_certificates(keys_dir, name)
            os.chmod(secret, SECRET_FILE_MODE)
            os.chmod(public, PUBLIC_FILE_MODE)
            written += [Path(public), Path(secret)]
    finally:
        os.umask(old_umask)
    return written, kept


# --- rate-limited refusal log -------------------------------------------------------------------
class RefusalLog:
    """Log lines about refused peers, at most ``REFUSAL_LOG_BURST`` per ``REFUSAL_LOG_WINDOW_S``;
    the rest are counted and summed up in one line when their window closes, so that a flood of
    bad peers cannot fill the disk. Thread-safe (the ZAP thread and the monitor both log)."""

    def __init__(self, what: str, burst: int = REFUSAL_LOG_BURST,
                 window_s: float = REFUSAL_LOG_WINDOW_S, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log):
        self.what = what
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._log = logger
        self._lock = threading.Lock()
        self._window_start = clock()
        self._logged = 0
        self._suppressed = 0
        #: every refusal ever, logged or not
        self.total = 0

    def refused(self, reason: str) -> None:
        with self._lock:
            self._roll()
            self.total += 1
            if self._logged < self.burst:
                self._logged += 1
                self._log.warning("%s refused a peer: %s", self.what, reason)
            else:
                self._suppressed += 1

    def flush(self) -> None:
        """Close the window if its time is up (the summary line, when refusals were held back)."""
        with self._lock:
            self._roll()

    def _roll(self) -> None:
        now = self._clock()
        if now - self._window_start < self.window_s:
            return
        if self._suppressed:
            self._log.warning("%s refused %d more peers in the last %.0f s (not logged one by "
                              "one)", self.what, self._suppressed, now - self._window_start)
        self._window_start, self._logged, self._suppressed = now, 0, 0


def describe_handshake_failure(event: int, value: int, server: bool) -> str:
    """What a failed handshake means, from the side that saw it."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if server:
            return f"its public key is not among the cluster's keys (ZAP status {value})"
        return (f"the directory refused this node's key (ZAP status {value}): its public key is "
                "not among the keys the directory accepts")
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _MECHANISM_MISMATCH:
        if server:
            return ("its security mechanism is not this socket's (one side uses CURVE keys, the "
                    "other runs open)")
        return ("the directory's security mechanism is not this node's: one of them runs with "
                "CURVE keys (--keys / DSM_KEYS), the other without")
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _CRYPTOGRAPHIC:
        if server:
            return ("its CURVE hello does not decrypt: it pinned another directory's public key")
        return "the directory's CURVE messages do not decrypt with the keys this node holds"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return f"the ZMTP handshake failed (protocol error {value:#x})"
    if server:
        return (f"it closed the connection during the handshake (errno {value}): it runs "
                "without the CURVE keys this socket requires, or gave up on them")
    return ("the directory closed the connection during every CURVE handshake: it cannot "
            "decrypt this node's hello, so the directory public key this node pinned is not "
            "the directory's")


# --- servers ------------------------------------------------------------------------------------
class _KeySet:
    """pyzmq's credentials provider: the public keys a server accepts."""

    def __init__(self, keys: ServerKeys, refusals: RefusalLog):
        self._allowed = set(keys.clients)
        self._keys_dir = keys.keys_dir
        self._refusals = refusals

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._allowed:
            return True
        self._refusals.refused(f"its public key {key.decode(errors='replace')} is not among the "
                               f"cluster's keys in {self._keys_dir}")
        return False


#: one ZAP handler per context (libzmq binds it at a fixed inproc endpoint of the context)
_authenticators: dict[int, ThreadAuthenticator] = {}
_authenticators_lock = threading.Lock()
_monitor_ids = itertools.count()


class ServerGuard:
    """What ``serve`` started for one socket: the refusal monitor (and the ZAP handler it
    configured). ``close()`` after the socket is closed, or before, idempotent.

    The monitor also asks for ``EVENT_MONITOR_STOPPED``: libzmq sends it, when the socket closes
    or its monitor is disabled, only if the monitor's events include it. Without it the watching
    thread slept out its poll (``REFUSAL_POLL_MS``), and every agent took a second to stop."""

    def __init__(self, socket: zmq.Socket, refusals: RefusalLog, server_keys: ServerKeys | None):
        self.refusals = refusals
        self._addr = f"inproc://dsm-refusals-{os.getpid()}-{next(_monitor_ids)}"
        self._socket = socket
        self._ctx = socket.context
        socket.monitor(self._addr, _HANDSHAKE_FAILED | zmq.EVENT_MONITOR_STOPPED)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="refused peers", daemon=True,
                                        args=(server_keys is not None,))
        self._thread.start()

    def _watch(self, keyed: bool) -> None:
        mon = self._ctx.socket(zmq.PAIR)
        mon.setsockopt(zmq.LINGER, 0)
        mon.connect(self._addr)
        try:
            while not self._stop.is_set():
                if mon.poll(REFUSAL_POLL_MS):
                    event = parse_monitor_message(mon.recv_multipart())
                    kind = event["event"]
                    if kind == zmq.EVENT_MONITOR_STOPPED:
                        return
                    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH and keyed:
                        continue  # the ZAP handler logged it, with the key
                    self.refusals.refused(describe_handshake_failure(kind, event["value"], True))
                self.refusals.flush()
        except zmq.ZMQError:  # the context is being terminated: the process is ending
            return
        finally:
            mon.close(0)

    def close(self) -> None:
        self._stop.set()
        if not self._socket.closed:  # (a closed socket's monitor has stopped: the thread knows)
            try:
                self._socket.disable_monitor()  # wakes the thread: EVENT_MONITOR_STOPPED
            except zmq.ZMQError:
                pass
        self._thread.join(REFUSAL_POLL_MS / 1000 * 2)


def _authenticator(ctx: zmq.Context, keys: ServerKeys, refusals: RefusalLog) -> None:
    # imported here: it imports asyncio, 0.1 s of every agent's and directory's start, and only a
    # keyed server needs it
    from zmq.auth.thread import ThreadAuthenticator

    with _authenticators_lock:
        auth = _authenticators.get(id(ctx))
        if auth is None:
            auth = ThreadAuthenticator(ctx, log=logging.getLogger(f"{__name__}.zap"))
            auth.start()
            _authenticators[id(ctx)] = auth
        auth.configure_curve_callback(ZAP_DOMAIN, _KeySet(keys, refusals))


# --- running open: said once --------------------------------------------------------------------
#: what running open means, in the warning and in ``dsm doctor``'s ``cluster keys`` row
OPEN_MEANS = ("anyone who reaches it can read and write the cluster's memory (no authentication, "
              "no encryption); `dsm keygen DIR` makes keys")
_open_warned = threading.Lock()
_open_said = False


def open_announced() -> bool:
    """Whether this process's launcher has said that the cluster runs open
    (``$DSM_OPEN_ANNOUNCED``)."""
    return bool(os.environ.get(OPEN_ANNOUNCED_ENV))


def warn_open(what: str) -> None:
    """The warning that WHAT runs open: at most once per process, and not at all in a process
    started by a launcher that said it for the whole job (``OPEN_ANNOUNCED_ENV``, see
    ``announce_open``); a line at INFO level instead."""
    global _open_said
    with _open_warned:
        repeat = _open_said or open_announced()
        _open_said = True
    if repeat:
        log.info("%s runs open (no --keys; said once already)", what)
        return
    log.warning("%s runs OPEN: no --keys (env %s), so %s", what, KEYS_ENV, OPEN_MEANS)


def announce_open(keys: str | os.PathLike | None, what: str) -> None:
    """A launcher's: when neither ``keys`` nor ``$DSM_KEYS`` names keys, say once that WHAT runs
    open, and tell the processes it starts from now on (their environment, inherited from this
    one) not to say it again."""
    if keys_dir_from(keys) is not None:
        return
    warn_open(what)
    os.environ[OPEN_ANNOUNCED_ENV] = "1"


def serve(socket: zmq.Socket, keys: ServerKeys | None, what: str) -> ServerGuard:
    """Configure ``socket`` (before it binds) as a CURVE server accepting only ``keys.clients``,
    or leave it open when ``keys`` is None (with a warning, once: ``warn_open``). Refused peers
    are logged as ``WHAT refused a peer: ...``, rate-limited."""
    refusals = RefusalLog(what)
    if keys is None:
        warn_open(what)
    else:
        # the ZAP handler first: a CURVE server without one accepts any client that knows its key
        _authenticator(socket.context, keys, refusals)
        socket.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        socket.setsockopt(zmq.CURVE_SECRETKEY, keys.own.secret)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.own.public)
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        log.info("%s serves with CURVE keys from %s (%d node keys accepted)", what,
                 keys.keys_dir, len(keys.clients))
    return ServerGuard(socket, refusals, keys)


# --- clients ------------------------------------------------------------------------------------
def configure_client(socket: zmq.Socket, keys: ClientKeys | None) -> None:
    """Configure ``socket`` (before it connects) as a CURVE client pinning the server's public
    key; nothing when ``keys`` is None (open)."""
    if keys is None:
        return
    socket.setsockopt(zmq.CURVE_SECRETKEY, keys.own.secret)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.own.public)
    socket.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)


class HandshakeWatch:
    """The handshake events of a connecting socket (its monitor, made before it connects):
    ``check()`` raises AuthenticationFailed when a handshake failed, and says whether one
    succeeded. ``close()`` stops the monitor."""

    EVENTS = _HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECTED

    def __init__(self, socket: zmq.Socket, endpoint: str, keys: ClientKeys | None):
        self._socket = socket
        self._endpoint = endpoint
        self._keys = keys
        self.monitor = socket.get_monitor_socket(self.EVENTS)
        self.connected = False
        self.succeeded = False
        self._no_detail = 0

    def check(self) -> bool:
        while self.monitor.poll(0):
            event = parse_monitor_message(self.monitor.recv_multipart())
            kind, value = event["event"], event["value"]
            if kind == zmq.EVENT_CONNECTED:
                self.connected = True
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.succeeded = True
                self._no_detail = 0
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self._no_detail += 1
                if self._no_detail >= HANDSHAKE_NO_DETAIL_LIMIT:
                    self._fail(kind, value)
            elif kind & _HANDSHAKE_FAILED:
                self._fail(kind, value)
        return self.succeeded

    def progress(self) -> str:
        """How far the connection got, for a timeout's message."""
        if self.succeeded:
            return "the connection and its handshake succeeded, but no answer came"
        if self.connected:
            return "a connection was made, but its handshake did not complete"
        return f"no connection could be made: {unreachable_why(self._endpoint)}"

    def _fail(self, kind: int, value: int) -> None:
        if self._keys is None:
            held = "no keys (it runs open)"
        else:
            held = (f"key {self._keys.own.path} (public {self._keys.own.public.decode()}), "
                    f"pinning the directory key of {self._keys.keys_dir}/"
                    f"{DIRECTORY_KEY_NAME}{PUBLIC_SUFFIX}")
        raise AuthenticationFailed(
            f"authentication failed with the directory {self._endpoint}: "
            f"{describe_handshake_failure(kind, value, server=False)}; this node holds {held}")

    def close(self) -> None:
        stop_monitor(self._socket, self.monitor)


def unreachable_why(endpoint: str) -> str:
    """Why nothing could connect to ``endpoint``, as far as this host can tell: its host name
    does not resolve, or nothing answers there."""
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp":
        return f"nothing listens at {rest or endpoint}"
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    try:
        socket.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return f"the host name {host!r} does not resolve ({exc})"
    return f"nothing answers at {host}:{port} (no directory there, or a firewall drops it)"

