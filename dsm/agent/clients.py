"""The Unix socket workload processes attach through (see ``dsm/local.py`` for the messages).

Every connection is greeted with the layout and the node's memfd. A ``register`` hands over the
process's uffd; ``alloc``, lock and barrier requests go to the directory through the forwarder;
``stats`` is answered here. A malformed message gets an error reply; the agent stays up.

Who may connect: the socket lives in a directory of mode 0700 owned by the agent's user, and each
connection's credentials (``SO_PEERCRED``, taken by the kernel at ``connect``) are checked: the
peer's uid must be the agent's, or root's, else the connection is closed before the greeting (no
memfd). The pid a message claims (``register``, and the ``pid`` of lock and barrier requests,
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
from dsm.errors import ConfigError, ProtocolError
from dsm.keys import RefusalLog
from dsm.layout import Layout
from dsm.uffd import Uffd

log = logging.getLogger(__name__)

#: sun_path holds 108 bytes including the terminating NUL
MAX_UNIX_PATH_BYTES = 107
#: how long a send to one workload may block before the connection is given up
CLIENT_SEND_TIMEOUT_S = 5.0
LISTEN_BACKLOG = 64
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


def refuse_claim(message: dict, peer_pid: int) -> str | None:
    """Why ``message`` may not be served for the peer ``peer_pid`` (None: it claims no other pid)."""
    if "pid" not in message or message["pid"] == peer_pid:
        return None
    return (f"{message.get('type')!r} claims pid {message['pid']!r}, but the process at the "
            f"other end of this connection is pid {peer_pid} (SO_PEERCRED): a process speaks "
            "for itself only")


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
        self._greeting = {"type": "layout", "base": layout.base, "size": layout.size,
                          "page_size": layout.page_size, "node": node}
        self._memfd = memfd
        self._poller = poller
        self._forwarder = forwarder
        self._on_register = on_register
        self._stats = stats
        self.clients: dict[int, Client] = {}
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

    def reply(self, client: Client, message: dict) -> None:
        try:
            local.send(client.sock, message)
        except OSError as exc:
            log.warning("could not answer a workload: %s", exc)
            self._drop(client)

    def _accept(self) -> None:
        sock, _ = self.listener.accept()
        pid, uid, _gid = peer_credentials(sock)
        why = refuse_uid(uid, os.geteuid())
        if why is not None:  # before the greeting: it never sees the memfd
            self._refusals.refused(f"pid {pid}: {why}")
            sock.close()
            return
        sock.settimeout(CLIENT_SEND_TIMEOUT_S)
        client = Client(sock, pid, uid)
        self.clients[sock.fileno()] = client
        self._poller.register(sock.fileno(), zmq.POLLIN)
        local.send(sock, self._greeting, [self._memfd])

    def _drop(self, client: Client) -> None:
        self._forwarder.forget_client(client)
        fd = client.sock.fileno()
        if fd in self.clients:
            self._poller.unregister(fd)
            del self.clients[fd]
        client.sock.close()

    def _on_message(self, client: Client) -> None:
        try:
            message, fds = local.recv(client.sock)
        except (local.AgentGone, OSError):
            self._drop(client)
            return
        except ProtocolError as exc:
            log.warning("malformed message from a workload: %s", exc)
            self.reply(client, {"type": "error", "req": 0, "message": str(exc)})
            return
        kind = message["type"]
        try:
            why = refuse_claim(message, client.pid)
            if why is not None:
                self._refusals.refused(why)
                raise ProtocolError(why)
            if kind == "register":
                (pid,) = local.expect(message, "pid")
                if len(fds) != 1:
                    raise ProtocolError(f"register needs exactly one uffd, got {len(fds)} fds")
                self._on_register(int(pid), Uffd(fds[0]))
                self.reply(client, {"type": "ready"})
            elif self._forwarder.handles(kind):
                self._forwarder.forward(client, message)
            elif kind == "stats":
                (req,) = local.expect(message, "req")
                self.reply(client, {"type": "stats", "req": req, **self._stats()})
            elif kind == "detach":
                self._drop(client)
            else:
                raise ProtocolError(f"unknown local message type {kind!r}")
        except (ProtocolError, ValueError, TypeError) as exc:
            for fd in fds:
                os.close(fd)
            self.reply(client, {"type": "error", "req": message.get("req", 0), "message": str(exc)})
