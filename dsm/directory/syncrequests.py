"""Locks, barriers and write notices as the directory serves them to nodes: each message in, the
messages to send out, no sockets. The directory service (``handlers.py``) and the simulator's
coordinator (``dsm/sim/release.py``) both serve through this one object, so that a lock or a
barrier behaves in simulation exactly as in the processes.

It owns the lock and barrier table (``SyncTable``) and the write notices (``WriteNotices``): a
release (a LockRelease, a BarrierWait) hands its notices over first, and every reply that ends an
acquire (``ACQUIRES``: a grant, a barrier's departure, a break) carries the notices of the other
nodes' releases since the node's last acquire.
"""

from __future__ import annotations

from typing import Any, Callable

from dsm import protocol as p
from dsm.directory.notices import WriteNotices
from dsm.directory.pages import Send
from dsm.directory.sync import Reply, SyncStatus, SyncTable, node_of
from dsm.errors import ProtocolError
from dsm.layout import Layout

#: the answers that end an acquire: they carry the write notices
ACQUIRES = (SyncStatus.GRANTED, SyncStatus.GRANTED_BROKEN, SyncStatus.PASSED, SyncStatus.BROKEN)

#: ``(node, message, page data) -> the messages to send``
Handler = Callable[[str, Any, Any], list[Send]]


def check_holder(node: str, holder: str) -> str:
    """Holders are named under the node that speaks for them: a node cannot act for another."""
    if node_of(holder) != node:
        raise ProtocolError(f"holder {holder!r} does not belong to node {node!r}")
    return holder


class SyncRequests:
    def __init__(self, layout: Layout, clock: Callable[[], float]):
        self.layout = layout
        self._clock = clock
        self.sync = SyncTable(clock)
        self.notices = WriteNotices(layout.num_pages)

    def handlers(self) -> dict[type, Handler]:
        sync, h = self.sync, check_holder
        return {
            p.LockAcquire: lambda n, m, d: self.replies(
                sync.acquire(n, m.req, m.name, h(n, m.holder), self.deadline(m.timeout_ms))),
            p.LockRelease: lambda n, m, d: self._released(n, m.notices) or self.replies(
                sync.release(n, m.req, m.name, h(n, m.holder))),
            p.BarrierJoin: lambda n, m, d: self.replies(
                sync.join(n, m.req, m.name, m.parties, h(n, m.holder))),
            p.BarrierWait: lambda n, m, d: self._released(n, m.notices) or self.replies(
                sync.wait(n, m.req, m.name, m.parties, h(n, m.holder),
                          self.deadline(m.timeout_ms))),
            p.LockStatus: lambda n, m, d: [Send(n, p.LockInfo(m.req, *sync.status(m.name)))],
            p.Departed: lambda n, m, d: self.replies(sync.depart(h(n, m.prefix))),
        }

    def deadline(self, timeout_ms: int) -> float | None:
        """When a wait of ``timeout_ms`` (negative: forever) given now ends, on the table's
        clock."""
        return None if timeout_ms < 0 else self._clock() + timeout_ms / 1000

    def _released(self, node: str, notices: list[int]) -> None:
        if len(notices) % 2:
            raise ProtocolError(f"write notices must be (first, count) runs: {len(notices)} "
                                "numbers")
        for first, count in zip(notices[::2], notices[1::2]):
            if count < 1:
                raise ProtocolError(f"a write notice run of {count} pages from page {first}")
            self.layout.check_page(first + count - 1)
        self.notices.released(node, notices)

    def replies(self, replies: list[Reply]) -> list[Send]:
        """The SyncReplies; an acquire (a grant, a departure) carries its write notices."""
        return [Send(r.node, p.SyncReply(r.req, int(r.status), r.detail,
                                         self.notices.take(r.node) if r.status in ACQUIRES
                                         else []))
                for r in replies]

    # --- nodes coming and going ----------------------------------------------------------------
    def joined(self, node: str) -> None:
        self.notices.joined(node)

    def gone(self, node: str) -> list[Send]:
        """``node`` left or died: its notices are forgotten, its locks pass on (broken), the
        barriers it belonged to break."""
        self.notices.gone(node)
        return self.replies(self.sync.depart(node))

    def expire(self, now: float) -> list[Send]:
        """The waits whose deadline passed."""
        return self.replies(self.sync.expire(now))
