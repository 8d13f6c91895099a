"""Locks, barriers and write notices as the directory serves them to nodes: each message in, the
messages to send out, no sockets. The directory state machine (``machine.py``) and the simulator's
coordinator (``dsm/sim/release.py``) both serve through this one object, so that a lock or a
barrier behaves in simulation exactly as in the processes.

It owns the lock and barrier table (``SyncTable``) and the write notices (``WriteNotices``): a
release (a LockRelease, a BarrierWait) hands its notices over first, and every reply that ends an
acquire (``ACQUIRES``: a grant, a barrier's departure, a break) carries the notices of the other
nodes' releases since the node's last acquire.

A lock acquired with guards (``LockAcquire.guards``, ``dsm.guards``) is granted with the home
copies of the guarded pages (``carry``: the release homes', ``ReleaseHomes.carry``), taken when
the grant is made: after the previous holder's release, whose diffs came before it on the same
pipe, so that they are in. The guards wait with the request, by (node, req), until it is
granted, times out or its process or node departs.
"""

from __future__ import annotations

from typing import Any, Callable

from dsm import protocol as p
from dsm.directory.notices import WriteNotices
from dsm.directory.pages import Send
from dsm.directory.sync import Reply, SyncStatus, SyncTable, departed, node_of
from dsm.errors import ProtocolError
from dsm.layout import Layout

#: the answers that end an acquire: they carry the write notices
ACQUIRES = (SyncStatus.GRANTED, SyncStatus.GRANTED_BROKEN, SyncStatus.PASSED, SyncStatus.BROKEN)

#: ``(node, message, page data) -> the messages to send``
Handler = Callable[[str, Any, Any], list[Send]]
#: ``(node, lock, guarded page runs, broken) -> (the runs carried, their bytes)``: what a
#: grant carries (``broken``: its last holder died holding the lock); the pages carried are
#: dirtied by the node until their Diff or its release of the lock
Carry = Callable[[str, str, list[int], bool], tuple[list[int], bytes]]
#: ``(node, lock)``: the node released the lock (the pages its grant carried are clean there)
Released = Callable[[str, str], None]
#: ``(node, diffs, page data) -> the messages to send``: the diffs a release carries, applied
#: before it (``LockRelease.diffs``)
CarriedDiffs = Callable[[str, list, Any], list[Send]]
#: the answers that end a lock acquire (its guards are forgotten)
_LOCK_ANSWERS = (SyncStatus.GRANTED, SyncStatus.GRANTED_BROKEN, SyncStatus.TIMEOUT)


def check_holder(node: str, holder: str) -> str:
    """Holders are named under the node that speaks for them: a node cannot act for another."""
    if node_of(holder) != node:
        raise ProtocolError(f"holder {holder!r} does not belong to node {node!r}")
    return holder


class SyncRequests:
    def __init__(self, layout: Layout, clock: Callable[[], float], carry: Carry | None = None,
                 released: Released | None = None, diffs: CarriedDiffs | None = None):
        self.layout = layout
        self._clock = clock
        self.sync = SyncTable(clock)
        self.notices = WriteNotices()
        #: the guarded pages' home copies for a grant (None: guards are served by faults)
        self._carry = carry
        self._lock_released = released
        self._apply_diffs = diffs
        #: the guards of lock acquires not answered yet: (node, req) -> (holder, lock, runs)
        self._guards: dict[tuple[str, int], tuple[str, str, list[int]]] = {}

    def handlers(self) -> dict[type, Handler]:
        sync, h = self.sync, check_holder
        return {
            p.LockAcquire: self._acquire,
            p.LockRelease: self._release,
            p.BarrierJoin: lambda n, m, d: self.replies(
                sync.join(n, m.req, m.name, m.parties, h(n, m.holder))),
            p.BarrierWait: lambda n, m, d: self._diffs(n, m, d) + (
                self._released(n, m.notices) or self.replies(
                    sync.wait(n, m.req, m.name, m.parties, h(n, m.holder),
                              self.deadline(m.timeout_ms)))),
            p.LockStatus: lambda n, m, d: [Send(n, p.LockInfo(m.req, *sync.status(m.name)))],
            p.Departed: lambda n, m, d: self._departed(h(n, m.prefix)),
        }

    def _release(self, node: str, msg: p.LockRelease, data: Any) -> list[Send]:
        """A lock released: its notices kept, the lock passed on. The releaser is answered
        unless its agent has answered its thread already (``answered``): then only a failure
        (raised here, an Error) goes back."""
        out = self._diffs(node, msg, data)
        self._released(node, msg.notices)
        replies = self.sync.release(node, msg.req, msg.name, check_holder(node, msg.holder))
        if self._lock_released is not None:  # (a failed release raised: another may hold it)
            self._lock_released(node, msg.name)
        if msg.answered:
            replies = [r for r in replies if (r.node, r.req) != (node, msg.req)]
        return out + self.replies(replies)

    def _diffs(self, node: str, msg: p.LockRelease | p.BarrierWait, data: Any) -> list[Send]:
        """The diffs a release carries, into their home copies before it is handled."""
        if not msg.diffs:
            return []
        if self._apply_diffs is None:
            raise ProtocolError(f"a {type(msg).__name__} carries diffs to a directory that "
                                "is the home of no page")
        return self._apply_diffs(node, msg.diffs, data)

    def _acquire(self, node: str, msg: p.LockAcquire, _: Any) -> list[Send]:
        holder = check_holder(node, msg.holder)
        if msg.guards:  # checked before anything changes: a bad one is an Error answer
            p.guarded_pages(msg.guards, f"LockAcquire of lock {msg.name!r}: guards")
            for first, count in zip(msg.guards[::2], msg.guards[1::2]):
                self.layout.check_page(first + count - 1)
        deadline = self.deadline(msg.timeout_ms)
        if msg.guards and self._carry is not None:
            self._guards[node, msg.req] = (holder, msg.name, list(msg.guards))
        try:
            return self.replies(self.sync.acquire(node, msg.req, msg.name, holder, deadline))
        except Exception:
            self._guards.pop((node, msg.req), None)
            raise

    def _departed(self, prefix: str) -> list[Send]:
        """A process (or a node) is gone: its waiting acquires' guards with it."""
        self._guards = {key: g for key, g in self._guards.items()
                        if not departed(g[0], prefix)}
        return self.replies(self.sync.depart(prefix))

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
        """The SyncReplies; an acquire (a grant, a departure) carries its write notices, and a
        grant of a lock acquired with guards the guarded pages' home copies."""
        out = []
        for r in replies:
            notices = self.notices.take(r.node) if r.status in ACQUIRES else []
            guards = (self._guards.pop((r.node, r.req), None) if self._guards
                      and r.status in _LOCK_ANSWERS else None)
            if guards is not None and r.status is not SyncStatus.TIMEOUT:
                runs, data = self._carry(r.node, guards[1], guards[2],
                                         r.status is SyncStatus.GRANTED_BROKEN)
                if runs:
                    out.append(Send(r.node, p.SyncReply(r.req, int(r.status), r.detail, notices,
                                                        runs, p.Payload.DATA), data))
                    continue
            out.append(Send(r.node, p.SyncReply(r.req, int(r.status), r.detail, notices)))
        return out

    # --- nodes coming and going ----------------------------------------------------------------
    def joined(self, node: str) -> None:
        self.notices.joined(node)

    def gone(self, node: str) -> list[Send]:
        """``node`` left or died: its notices are forgotten, its locks pass on (broken), the
        barriers it belonged to break."""
        self.notices.gone(node)
        self._guards = {key: g for key, g in self._guards.items() if key[0] != node}
        return self.replies(self.sync.depart(node))

    def expire(self, now: float) -> list[Send]:
        """The waits whose deadline passed."""
        return self.replies(self.sync.expire(now))
