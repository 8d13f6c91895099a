"""The directory's ZeroMQ loop: a ROUTER socket in front of the page-state machine and the
allocation table. It only decodes, dispatches and sends; it never blocks on one node.

Nodes send a heartbeat every ``HEARTBEAT_INTERVAL_S``; a node silent for ``NODE_TIMEOUT_S`` is
declared dead, which releases every transaction waiting on it.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, Callable

import zmq

from dsm import protocol as p
from dsm.directory.allocations import AllocationError, Allocations
from dsm.directory.pages import PageDirectory, Send
from dsm.directory.sync import Reply, SyncTable, node_of
from dsm.errors import DsmError, ProtocolError
from dsm.layout import Layout
from dsm.trace import Tracer

log = logging.getLogger(__name__)

#: as a plain int: pyzmq's flag enums are slow on a hot path
_POLLIN = int(zmq.POLLIN)

HEARTBEAT_INTERVAL_S = 0.5
#: a node silent this long is declared dead
NODE_TIMEOUT_S = 5.0
POLL_INTERVAL_MS = 200
#: how many queued messages are handled before timers are looked at again
MAX_MESSAGES_PER_WAKEUP = 1000


class DirectoryService:
    def __init__(self, endpoint: str, layout: Layout, trace_path: str | None = None,
                 node_timeout_s: float = NODE_TIMEOUT_S):
        self.layout = layout
        self.tracer = Tracer(trace_path, "directory")
        self.pages = PageDirectory(layout, self.tracer)
        self.allocations = Allocations(layout)
        self.sync = SyncTable()
        self.node_timeout_s = node_timeout_s
        self._last_seen: dict[str, float] = {}
        self._ctx = zmq.Context.instance()
        self.socket = self._ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # a node that reconnects under the same name takes over its identity
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._running = True
        self._handlers: dict[type, Callable[[str, Any, Any], list[Send]]] = {
            p.Hello: self._on_hello,
            p.Acquire: lambda n, m, d: self.pages.acquire(n, m.page, m.count, m.write, m.have_copy),
            p.Fetched: lambda n, m, d: self.pages.fetched(
                n, m.txn, m.page, m.count, m.payload, d, m.not_held),
            p.Invalidated: lambda n, m, d: self.pages.invalidated(n, m.txn, m.page, m.count),
            p.Writeback: lambda n, m, d: self.pages.writeback(n, m.page, m.count, m.payload, d),
            p.Drop: lambda n, m, d: self.pages.drop(n, m.page, m.count),
            p.Discard: self._on_discard,
            p.Alloc: self._on_alloc,
            p.Heartbeat: lambda n, m, d: [Send(n, p.Heartbeat())],  # the node knows we live
            p.Bye: self._on_bye,
            p.LockAcquire: self._on_lock_acquire,
            p.LockRelease: lambda n, m, d: self._replies(
                self.sync.release(n, m.req, m.name, self._holder(n, m.holder))),
            p.BarrierJoin: lambda n, m, d: self._replies(
                self.sync.join(n, m.req, m.name, m.parties, self._holder(n, m.holder))),
            p.BarrierWait: lambda n, m, d: self._replies(
                self.sync.wait(n, m.req, m.name, m.parties, self._holder(n, m.holder))),
            p.LockStatus: lambda n, m, d: [Send(n, p.LockInfo(m.req, *self.sync.status(m.name)))],
            p.Departed: lambda n, m, d: self._replies(
                self.sync.depart(self._holder(n, m.prefix))),
        }

    def stop(self, *_: Any) -> None:
        self._running = False

    def serve_forever(self) -> None:
        log.info("directory listening on %s (%d pages of %d bytes at %#x)", self.endpoint,
                 self.layout.num_pages, self.layout.page_size, self.layout.base)
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        try:
            while self._running:
                if poller.poll(self._poll_timeout_ms()):
                    # drain what is queued before looking at the clock again
                    # (ZMQ_EVENTS is cheaper than a receive that raises Again)
                    for _ in range(MAX_MESSAGES_PER_WAKEUP):
                        if not self.socket.get(zmq.EVENTS) & _POLLIN:
                            break
                        self._handle(self.socket.recv_multipart(copy=False))
                self._expire_silent_nodes()
                for send in self._replies(self.sync.expire(time.monotonic())):
                    self._send(send)
        finally:
            self.tracer.close()
            self.socket.close(0)

    def _handle(self, frames: list[Any]) -> None:
        node = frames[0].bytes.decode(errors="surrogateescape")  # exact round trip for any identity
        try:
            msg, data = p.decode(frames[1:], self.layout.page_size)
            self._last_seen[node] = time.monotonic()
            out = self._handlers[type(msg)](node, msg, data)
        except ProtocolError as exc:
            log.warning("malformed message from %r: %s", node, exc)
            self._send(Send(node, p.Error(0, f"malformed message: {exc}")))
            return
        except DsmError as exc:
            log.warning("bad request from %r: %s", node, exc)
            self._send(Send(node, p.Error(getattr(msg, "req", 0), str(exc))))
            return
        for send in out:
            self._send(send)

    def _send(self, send: Send) -> None:
        frames = [send.node.encode(errors="surrogateescape"), *p.encode(send.message, send.page)]
        self.socket.send_multipart(frames, copy=False)

    def _poll_timeout_ms(self) -> int:
        """Wake for the next lock deadline, or at the latest after POLL_INTERVAL_MS."""
        deadline = self.sync.next_deadline()
        if deadline is None:
            return POLL_INTERVAL_MS
        return max(0, min(POLL_INTERVAL_MS, int((deadline - time.monotonic()) * 1000) + 1))

    @staticmethod
    def _holder(node: str, holder: str) -> str:
        """Holders are named under the node that speaks for them: a node cannot act for another."""
        if node_of(holder) != node:
            raise ProtocolError(f"holder {holder!r} does not belong to node {node!r}")
        return holder

    @staticmethod
    def _replies(replies: list[Reply]) -> list[Send]:
        return [Send(r.node, p.SyncReply(r.req, int(r.status), r.detail)) for r in replies]

    def _on_lock_acquire(self, node: str, msg: p.LockAcquire, _: Any) -> list[Send]:
        deadline = None if msg.timeout_ms < 0 else time.monotonic() + msg.timeout_ms / 1000
        holder = self._holder(node, msg.holder)
        return self._replies(self.sync.acquire(node, msg.req, msg.name, holder, deadline))

    def _node_gone(self, node: str) -> list[Send]:
        return self.pages.node_lost(node) + self._replies(self.sync.depart(node))

    def _on_hello(self, node: str, msg: p.Hello, _: Any) -> list[Send]:
        log.info("node %s joined (pid %d)", node, msg.pid)
        self.pages.node_joined(node)
        lay = self.layout
        return [Send(node, p.Welcome(lay.base, lay.size, lay.page_size))]

    def _on_bye(self, node: str, msg: p.Bye, _: Any) -> list[Send]:
        log.info("node %s left", node)
        self._last_seen.pop(node, None)
        # the acknowledgement comes after everything the node sent before: all it handed back
        return self._node_gone(node) + [Send(node, p.Bye())]

    def _on_discard(self, node: str, msg: p.Discard, _: Any) -> list[Send]:
        out: list[Send] = []
        for page in msg.pages:
            if not isinstance(page, int):
                raise ProtocolError(f"Discard.pages must hold integers, got {type(page).__name__}")
            out += self.pages.discard(node, page)
        return out

    def _on_alloc(self, node: str, msg: p.Alloc, _: Any) -> list[Send]:
        try:
            a = self.allocations.find_or_create(msg.name, msg.nbytes, msg.meta)
        except AllocationError as exc:
            return [Send(node, p.Error(msg.req, str(exc)))]
        return [Send(node, p.Allocated(msg.req, a.offset, a.nbytes, a.meta))]

    def _expire_silent_nodes(self) -> None:
        now = time.monotonic()
        for node, seen in list(self._last_seen.items()):
            if now - seen > self.node_timeout_s:
                log.error("node %s silent for %.1f s: declared dead", node, now - seen)
                del self._last_seen[node]
                for send in self._node_gone(node):
                    self._send(send)


def run_directory(endpoint: str, layout: Layout, trace_path: str | None = None,
                  ready_fd: int | None = None) -> int:
    service = DirectoryService(endpoint, layout, trace_path)
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    print(f"directory listening on {service.endpoint}", flush=True)
    if ready_fd is not None:
        os.write(ready_fd, service.endpoint.encode() + b"\n")
        os.close(ready_fd)
    service.serve_forever()
    return 0
