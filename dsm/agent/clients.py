"""The Unix socket workload processes attach through (see ``dsm/local.py`` for the messages).

Every connection is greeted with the layout and the node's memfd. A ``Register`` hands over the
process's uffd; allocation, lock, barrier and lost-page requests go to the directory through the
forwarder; ``StatsRequest`` is answered here. Whatever a client sends, the agent stays up: a
malformed message, or one carrying descriptors it should not (they are closed), gets an
``ErrorAnswer``; a client that disconnects, at any point, is forgotten; one that does not read its
answers is dropped rather than let the agent block on it. The lines about them are rate-limited.

Who may connect: the socket lives in a directory of mode 0700 owned by the agent's user, and each
connection's credentials (``SO_PEERCRED``, taken by the kernel at ``connect``) are checked: the
peer's uid must be the agent's, or root's, else the connection is closed before the greeting (no
memfd). The pid a message claims (``Register``, and the ``pid`` of lock and barrier requests,
which the agent may later signal or report as departed) must be the peer's own: every process,
forked children and threads included, speaks on a connection it opened itself.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from dsm import local
from dsm.agent.forwarding import Forwarder
from dsm.errors import ConfigError, DsmError, ProtocolError
from dsm.keys import RefusalLog
from dsm.layout import Layout
from dsm.logthrottle import ThrottledLog
from dsm.uffd import Uffd

log = logging.getLogger(__name__)

#: sun_path holds 108 bytes including the terminating NUL
MAX_UNIX_PATH_BYTES = 107
LISTEN_BACKLOG = 64
#: what /proc/self/fd/N links to for a userfaultfd
UFFD_FD_KIND = "anon_inode:[userfaultfd]"
#: the socket's directory: the agent's user only (others cannot even reach the socket)
SOCKET_DIR_MODE = 0o700
SOCKET_FILE_MODE = 0o600
#: struct ucred of SO_PEERCRED: pid, uid, gid
_UCRED = struct.Struct("3i")
ROOT_UID = 0


@dataclass
class Client:
    sock: socket.socket
    #: the peer's credentials, from SO_PEERCRED
    pid: int = 0
    uid: int = 0


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected ``sock``, as the kernel recorded them."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


def refuse_uid(peer_uid: int, own_uid: int) -> str | None:
    """Why a peer of uid ``peer_uid`` may not use an agent running as ``own_uid`` (None: it may)."""
    if peer_uid in (own_uid, ROOT_UID):
        return None
    return (f"its uid is {peer_uid}, but only uid {own_uid} (the agent's) or root may attach "
            "to this node")


def refuse_claim(msg: local.LocalMessage, peer_pid: int) -> str | None:
    """Why ``msg`` may not be served for the peer ``peer_pid`` (None: it claims no other pid)."""
    claimed = getattr(msg, "pid", None)
    if claimed is None or claimed == peer_pid:
        return None
    return (f"{type(msg).__name__} claims pid {claimed!r}, but the process at the other end of "
            f"this connection is pid {peer_pid} (SO_PEERCRED): a process speaks for itself only")


def private_socket_dir(socket_path: str) -> str:
    """The directory of ``socket_path``, made mode 0700 if missing; a ConfigError if it exists
    and others could reach a socket in it."""
    parent = os.path.dirname(os.path.abspath(socket_path))
    try:
        os.mkdir(parent, SOCKET_DIR_MODE)
    except FileExistsError:
        pass
    st = os.stat(parent)
    mode = st.st_mode & 0o7777
    if st.st_uid != os.geteuid() or mode & 0o077:
        raise ConfigError(
            f"the agent socket's directory {parent} must be private to this user: owned by uid "
            f"{os.geteuid()} with mode {SOCKET_DIR_MODE:04o}, but it is owned by uid {st.st_uid} "
            f"with mode {mode:04o}; give --socket a path in a directory of its own (dsm run "
            "makes one)")
    return parent


class ClientHub:
    def __init__(self, socket_path: str, node: str, layout: Layout, memfd: int,
                 poller: zmq.Poller, forwarder: Forwarder,
                 on_register: Callable[[int, Uffd], None], stats: Callable[[], dict]):
        encoded = os.fsencode(socket_path)
        if len(encoded) > MAX_UNIX_PATH_BYTES:
            raise ConfigError(
                f"agent socket path {socket_path!r} is {len(encoded)} bytes; "
                f"a Unix socket path holds at most {MAX_UNIX_PATH_BYTES}"
            )
        self.socket_path = socket_path
        self._greeting = local.Greeting(layout.base, layout.size, layout.page_size, node)
        self._memfd = memfd
        self._poller = poller
        self._forwarder = forwarder
        self._on_register = on_register
        self._stats = stats
        self.clients: dict[int, Client] = {}
        #: lines about refused connections and messages, rate-limited
        self._complain = ThrottledLog(log, "refused workload messages")
        self._refusals = RefusalLog(f"the agent socket {socket_path}", logger=log)
        private_socket_dir(socket_path)
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(socket_path)
        os.chmod(socket_path, SOCKET_FILE_MODE)
        self.listener.listen(LISTEN_BACKLOG)
        poller.register(self.listener.fileno(), zmq.POLLIN)

    def owns(self, fd: Any) -> bool:
        return fd == self.listener.fileno() or fd in self.clients

    def handle(self, fd: int) -> None:
        if fd == self.listener.fileno():
            self._accept()
        else:
            self._on_message(self.clients[fd])

    def close(self) -> None:
        for client in list(self.clients.values()):
            client.sock.close()
        self.listener.close()
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass

    def reply(self, client: Client, message: local.LocalMessage) -> None:
        """Answer without blocking: a workload whose socket buffer is full is not reading its
        answers, and the agent must not stall for it (it has the directory to answer)."""
        try:
            local.send(client.sock, message)
        except OSError as exc:
            self._complain(logging.WARNING, "could not answer a workload (%s): dropped it", exc)
            self._drop(client)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError as exc:  # the peer went away at once, or this process is out of fds
            self._complain(logging.WARNING, "could not accept a workload connection: %s", exc)
            return
        pid, uid, _gid = peer_credentials(sock)
        why = refuse_uid(uid, os.geteuid())
        if why is not None:  # before the greeting: it never sees the memfd
            self._refusals.refused(f"pid {pid}: {why}")
            sock.close()
            return
        sock.setblocking(False)
        client = Client(sock, pid, uid)
        self.clients[sock.fileno()] = client
        self._poller.register(sock.fileno(), zmq.POLLIN)
        try:
            local.send(sock, self._greeting, [self._memfd])
        except OSError as exc:  # it connected and closed at once
            self._complain(logging.INFO, "a workload left before it was greeted: %s", exc)
            self._drop(client)

    def _drop(self, client: Client) -> None:
        self._forwarder.forget_client(client)
        if client.sock.fileno() < 0:  # closed already
            return
        fd = client.sock.fileno()
        if fd in self.clients:
            self._poller.unregister(fd)
            del self.clients[fd]
        client.sock.close()

    def _on_message(self, client: Client) -> None:
        try:
            msg, fds = local.recv(client.sock, local.Direction.TO_AGENT)
        except BlockingIOError:  # nothing there after all
            return
        except (local.AgentGone, OSError):
            self._drop(client)
            return
        except ProtocolError as exc:  # recv closed the fds that came with it
            self._complain(logging.WARNING, "malformed message from a workload: %.500s", exc)
            self.reply(client, local.ErrorAnswer(0, str(exc)))
            return
        try:
            self._handle(client, msg, fds)
        except DsmError as exc:
            self._complain(logging.WARNING, "refused a %s from a workload: %.500s",
                           type(msg).__name__, exc)
            self.reply(client, local.ErrorAnswer(getattr(msg, "req", 0), str(exc)))
        except Exception as exc:  # a bug some input reaches: answer it, do not die of it
            self._complain(logging.ERROR, "failed to handle a %s from a workload",
                           type(msg).__name__, exc_info=True)
            self.reply(client, local.ErrorAnswer(getattr(msg, "req", 0), f"the agent failed to "
                                                 f"handle {type(msg).__name__}: {exc!r:.200}"))

    def _handle(self, client: Client, msg: local.LocalMessage, fds: list[int]) -> None:
        """Act on a valid message; ``fds`` are what ``recv`` checked it carries."""
        why = refuse_claim(msg, client.pid)
        if why is not None:
            for fd in fds:
                os.close(fd)
            self._refusals.refused(why)
            raise ProtocolError(why)
        if isinstance(msg, local.Register):
            (fd,) = fds
            try:
                kind = os.readlink(f"/proc/self/fd/{fd}")
            except OSError as exc:
                kind = f"unknown ({exc})"
            if kind != UFFD_FD_KIND:
                os.close(fd)
                raise ProtocolError(f"Register carries a {kind}, expected a userfaultfd "
                                    f"({UFFD_FD_KIND})")
            self._on_register(msg.pid, Uffd(fd))  # the uffd owns the fd from here on
            self.reply(client, local.Ready())
        elif self._forwarder.handles(msg):
            self._forwarder.forward(client, msg)
        elif isinstance(msg, local.StatsRequest):
            self.reply(client, local.StatsAnswer(msg.req, self._stats()))
        elif isinstance(msg, local.Detach):
            self._drop(client)
        else:  # recv only lets messages to the agent through: every one is handled above
            raise ProtocolError(f"the agent does not handle {type(msg).__name__}")
