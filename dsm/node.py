"""The workload API: ``dsm.attach()`` and ``Node``.

Attaching receives the node's memfd from the agent, maps it at the cluster-wide base address,
registers it MISSING|WP on a uffd of this process and hands the uffd to the agent, which from then
on serves every fault of this process (and of its forked children) in its own process: plain numpy
and memoryview code on the region just works (see DESIGN.md on why the handler cannot live here).

This process keeps its own reference to the uffd: were the agent to die, a closed last reference
would make faults read zero pages; with ours open they block instead, and the watchdog process
that ``attach`` starts kills this process loudly.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, NamedTuple

import numpy as np

from dsm import libc, local
from dsm.agent.launch import StartedAgent, start_agent
from dsm.errors import ConfigError, DsmError
from dsm.layout import AddressError, Layout
from dsm.sync import Barrier, Lock
from dsm.needs import OPTIONAL_WORKLOAD_FEATURES, REGION_REGISTER_MODE, WORKLOAD_FEATURES
from dsm.uffd import Uffd

log = logging.getLogger(__name__)

#: how long attach waits for the agent at each step
ATTACH_TIMEOUT_S = 10.0
#: the watchdog that kills this process loudly if the agent dies (run by path: it starts fast)
WATCHDOG = os.path.join(os.path.dirname(__file__), "watchdog.py")
#: how long a request to the agent (allocation, stats) may take
REQUEST_TIMEOUT_S = 15.0


class LostRange(NamedTuple):
    """Bytes [start, end) of an array, lost when node ``dead_node`` died."""

    start: int
    end: int
    dead_node: str


def _lost_ranges(ranges: list) -> dict[str, list[LostRange]]:
    out: dict[str, list[LostRange]] = {}
    for name, start, end, dead in ranges:
        out.setdefault(name, []).append(LostRange(int(start), int(end), str(dead)))
    return out


class AttachError(DsmError):
    """This process could not attach to a node agent."""


class Node:
    """This process's view of the shared region."""

    def __init__(self, sock: socket.socket, layout: Layout, node_name: str, memfd: int,
                 uffd: Uffd, agent_proc: StartedAgent | None,
                 watchdog: subprocess.Popen | None = None):
        self._sock = sock
        self._agent_path = sock.getpeername()
        self._connections: dict[tuple[int, int], socket.socket] = {
            (os.getpid(), threading.get_ident()): sock
        }
        self._req_lock = threading.Lock()
        self.layout = layout
        self.name = node_name
        self._memfd = memfd
        self._uffd = uffd
        self._agent_proc = agent_proc
        self._watchdog = watchdog
        self._next_req = 1
        self._buffer = (ctypes.c_char * layout.size).from_address(layout.base)
        self._closed = False

    # --- the region ------------------------------------------------------------------------------
    @property
    def base(self) -> int:
        return self.layout.base

    def memoryview(self) -> memoryview:
        """The whole region as a writable memoryview (touching it faults pages in)."""
        return memoryview(self._buffer).cast("B")

    def array(self, name: str, shape: Any, dtype: Any = np.float64) -> np.ndarray:
        """The cluster-wide array ``name``: created zero-filled by the first caller anywhere,
        the same memory for every later caller. Another shape or dtype is an error."""
        dt = np.dtype(dtype)
        shape = tuple(int(s) for s in (shape if np.iterable(shape) else (shape,)))
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        meta = {"shape": list(shape), "dtype": dt.str}
        reply = self._request({"type": "alloc", "name": name, "nbytes": max(nbytes, 1), "meta": meta})
        offset = int(reply["offset"])
        self.layout.check_offset(offset, nbytes)
        return np.ndarray(shape, dtype=dt, buffer=self.memoryview(), offset=offset)

    def address_of(self, array: np.ndarray) -> int:
        return array.__array_interface__["data"][0]

    def stats(self) -> dict:
        """This node's counters and fault-latency histogram."""
        reply = self._request({"type": "stats"})
        reply.pop("type", None)
        reply.pop("req", None)
        return reply

    # --- lost pages (see the README: when a node dies) -----------------------------------------
    def lost(self) -> dict[str, list[LostRange]]:
        """The lost ranges of every array: pages whose newest contents died with a node. Every
        access to them fails (SIGBUS) until ``forget_lost``. Arrays without lost pages are not
        listed; pages outside every array are listed under ""."""
        return _lost_ranges(self._request({"type": "lost"})["ranges"])

    def forget_lost(self, name: str) -> list[LostRange]:
        """Give up the lost pages of array ``name``: from now on they read as zeros, on every
        node. Returns the ranges that were lost."""
        return _lost_ranges(self._request({"type": "forget_lost", "name": name})["ranges"]).get(name, [])

    # --- talking to the agent --------------------------------------------------------------------
    def _connection(self) -> socket.socket:
        """This thread's own connection to the agent (answers of concurrent requests from
        several threads, or from a forked child, must not cross)."""
        key = (os.getpid(), threading.get_ident())
        sock = self._connections.get(key)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.settimeout(ATTACH_TIMEOUT_S)
            try:
                sock.connect(self._agent_path)
                _, fds = local.recv(sock)  # every connection is greeted with the layout
            except (OSError, socket.timeout) as exc:
                sock.close()
                raise local.AgentGone(f"cannot reach the node agent at {self._agent_path}: {exc}") from None
            for fd in fds:
                os.close(fd)
            self._connections[key] = sock
        return sock

    def _request(self, message: dict, timeout_s: float | None = REQUEST_TIMEOUT_S) -> dict:
        """Send a request to the agent and wait for its answer (``timeout_s=None``: as long as
        it takes, for lock and barrier waits; the agent's death still ends the wait).

        Only the answer carrying this request's id is taken: an earlier request on this
        connection that timed out may still be answered later, and that late answer (another
        array's offset, say) is dropped here instead of being taken for this one's."""
        if self._closed:
            raise DsmError("this node is detached")
        sock = self._connection()
        with self._req_lock:
            req = self._next_req
            self._next_req += 1
        local.send(sock, {**message, "req": req, "pid": os.getpid(), "tid": threading.get_ident()})
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:  # settimeout(0) would mean "non-blocking"
                raise self._no_answer(message, timeout_s)
            sock.settimeout(left)
            try:
                reply, fds = local.recv(sock)
            except socket.timeout:
                raise self._no_answer(message, timeout_s) from None
            for fd in fds:
                os.close(fd)
            answers = reply.get("req")
            # an error without an id answers a message the agent could not read: this one
            if answers == req or (not answers and reply.get("type") == "error"):
                break
            log.debug("dropped a late %r answer to request %s while waiting for request %s (%s)",
                      reply.get("type"), answers, req, message["type"])
        if reply.get("type") == "error":
            raise DsmError(reply.get("message", "the agent reported an error"))
        return reply

    @staticmethod
    def _no_answer(message: dict, timeout_s: float | None) -> local.NoAnswer:
        return local.NoAnswer(
            f"the node agent did not answer a {message['type']} request within {timeout_s} s"
        )

    # --- synchronization -------------------------------------------------------------------------
    def lock(self, name: str) -> "Lock":
        """The cluster-wide mutual-exclusion lock ``name`` (FIFO, not reentrant)."""
        return Lock(self, name)

    def barrier(self, name: str, parties: int) -> "Barrier":
        """The cluster-wide barrier ``name`` of ``parties`` (reusable)."""
        return Barrier(self, name, parties)

    # --- detaching -------------------------------------------------------------------------------
    def close(self) -> None:
        """Detach: unmapping the region lets the agent give this process's pages back."""
        if self._closed:
            return
        self._closed = True
        self._buffer = None
        try:
            local.send(self._sock, {"type": "detach"})
        except OSError:
            pass
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
        libc.munmap(self.layout.base, self.layout.size)
        self._uffd.close()
        os.close(self._memfd)
        for conn in self._connections.values():
            conn.close()
        if self._agent_proc is not None:
            self._agent_proc.stop()

    def __enter__(self) -> "Node":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def attach(directory: str | None = None, *, socket_path: str | None = None,
           node_name: str | None = None) -> Node:
    """Attach this process to its node agent: the one named by ``socket_path`` or by
    ``$DSM_AGENT_SOCKET`` (set by ``dsm run``), or, given ``directory``, one started for this
    process as a child process."""
    agent_proc = None
    path = socket_path or os.environ.get(local.AGENT_SOCKET_ENV)
    if path is None:
        if directory is None:
            raise ConfigError(
                f"no node agent: run under `dsm run`, set ${local.AGENT_SOCKET_ENV}, "
                "or pass directory=ENDPOINT to start an agent for this process"
            )
        name = node_name or f"{socket.gethostname()}-{os.getpid()}"
        agent_proc = start_agent(directory, name)
        path = agent_proc.socket_path
    try:
        return _attach_to(path, agent_proc)
    except BaseException:
        if agent_proc is not None:
            agent_proc.stop()
        raise


def _attach_to(path: str, agent_proc: StartedAgent | None) -> Node:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(ATTACH_TIMEOUT_S)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise AttachError(f"cannot reach the node agent at {path}: {exc}") from None
    try:
        message, fds = local.recv(sock)
        base, size, page_size, node_name = local.expect(message, "base", "size", "page_size", "node")
        if message["type"] != "layout" or len(fds) != 1:
            raise AttachError(f"expected the layout and the memfd from the agent, got {message}")
        layout = Layout(base, size, page_size)
        memfd = fds[0]
        try:
            libc.mmap_at(layout.base, layout.size, libc.PROT_READ | libc.PROT_WRITE,
                         libc.MAP_SHARED | libc.MAP_FIXED_NOREPLACE, memfd)
        except OSError as exc:
            os.close(memfd)
            raise AddressError(
                f"cannot map the shared region at {layout.base:#x}+{layout.size:#x} in this "
                f"process: {exc.strerror} (the address range is already taken)"
            ) from None
        uffd = Uffd.open(features=WORKLOAD_FEATURES | OPTIONAL_WORKLOAD_FEATURES,
                         required=WORKLOAD_FEATURES)
        uffd.register(layout.base, layout.size, REGION_REGISTER_MODE)
        local.send(sock, {"type": "register", "pid": os.getpid()}, [uffd.fileno()])
        reply, _ = local.recv(sock)
        if reply.get("type") != "ready":
            raise AttachError(f"the agent refused this process: {reply.get('message', reply)}")
    except socket.timeout:
        sock.close()
        raise AttachError(f"the node agent at {path} did not answer within {ATTACH_TIMEOUT_S} s") from None
    watchdog = _start_watchdog(path)
    return Node(sock, layout, node_name, memfd, uffd, agent_proc, watchdog)


def _start_watchdog(agent_socket: str) -> subprocess.Popen:
    """Start the watchdog and wait until it watches the agent."""
    import select

    watchdog = subprocess.Popen(
        [sys.executable, "-I", WATCHDOG, agent_socket, str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
    )
    ready, _, _ = select.select([watchdog.stdout], [], [], ATTACH_TIMEOUT_S)
    line = watchdog.stdout.readline() if ready else b""
    watchdog.stdout.close()
    if line.strip() != b"watching":
        watchdog.kill()
        watchdog.wait()
        raise AttachError(f"the watchdog could not watch the node agent at {agent_socket}")
    return watchdog
