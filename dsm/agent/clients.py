"""The Unix socket workload processes attach through (see ``dsm/local.py`` for the messages).

Every connection is greeted with the layout and the node's memfd. A ``register`` hands over the
process's uffd; ``alloc``, lock and barrier requests go to the directory through the forwarder;
``stats`` is answered here. A malformed message gets an error reply; the agent stays up.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from dsm import local
from dsm.agent.forwarding import Forwarder
from dsm.errors import ConfigError, ProtocolError
from dsm.layout import Layout
from dsm.uffd import Uffd

log = logging.getLogger(__name__)

#: sun_path holds 108 bytes including the terminating NUL
MAX_UNIX_PATH_BYTES = 107
#: how long a send to one workload may block before the connection is given up
CLIENT_SEND_TIMEOUT_S = 5.0
LISTEN_BACKLOG = 64


@dataclass
class Client:
    sock: socket.socket


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
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(socket_path)
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
        sock.settimeout(CLIENT_SEND_TIMEOUT_S)
        client = Client(sock)
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
