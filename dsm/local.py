"""The conversation between a workload process and its node agent over a Unix socket.

A SOCK_SEQPACKET socket keeps message boundaries; each message is one msgpack map with a "type",
optionally with file descriptors attached (SCM_RIGHTS):

    agent -> workload  {"type": "layout", base, size, page_size, node}   + [memfd]
    workload -> agent  {"type": "register", pid}                        + [uffd]
    agent -> workload  {"type": "ready"}
    workload -> agent  {"type": "alloc", req, name, nbytes, meta}  ->  "allocated" | "error"
    workload -> agent  {"type": "stats", req}                      ->  "stats"
    workload -> agent  {"type": "detach"}
"""

from __future__ import annotations

import socket
from typing import Any

import msgpack

from dsm.errors import DsmError, ProtocolError

#: environment variable through which ``dsm run`` tells a workload where its agent listens
AGENT_SOCKET_ENV = "DSM_AGENT_SOCKET"
MAX_MESSAGE_BYTES = 1 << 16
MAX_FDS = 4


class AgentGone(DsmError):
    """The node agent closed the connection or did not answer in time."""


class NoAnswer(AgentGone):
    """The node agent did not answer a request before its deadline (a late answer is dropped)."""


def send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    data = msgpack.packb(message)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv(sock: socket.socket) -> tuple[dict, list[int]]:
    """One message and its fds. Raises AgentGone on EOF, ProtocolError on a malformed message,
    and whatever the socket's timeout raises at the deadline."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE_BYTES, MAX_FDS)
    if not data:
        for fd in fds:
            _close_quietly(fd)
        raise AgentGone("the peer closed the connection")
    try:
        message = msgpack.unpackb(data)
    except Exception as exc:  # msgpack raises several unrelated exception types
        for fd in fds:
            _close_quietly(fd)
        raise ProtocolError(f"local message is not valid msgpack: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        for fd in fds:
            _close_quietly(fd)
        raise ProtocolError(f"local message must be a map with a 'type', got {message!r:.80}")
    return message, fds


def _close_quietly(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass


def expect(message: dict, *keys: str) -> list[Any]:
    """The values of ``keys`` in ``message``, or a ProtocolError naming the missing one."""
    try:
        return [message[k] for k in keys]
    except KeyError as exc:
        raise ProtocolError(f"local message {message.get('type')!r} lacks field {exc}") from None
