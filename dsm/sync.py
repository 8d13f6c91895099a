"""Cluster-wide locks and barriers for workloads (``node.lock(name)``, ``node.barrier(name, n)``).

The directory serves them (``dsm/directory/sync.py``); these classes are the workload's handles.
Memory ordering: everything written before a release or before arriving at a barrier is visible
to whoever acquires next or leaves the barrier (sequential pages are always current; release
pages' changes go home at the release, and the acquire drops the copies others changed). A lock
with ``guards`` brings the current contents of the data it protects with its grant.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dsm import local
from dsm.protocol import SyncStatus
from dsm.errors import DsmError

if TYPE_CHECKING:
    from dsm.node import Node

log = logging.getLogger(__name__)

#: how the agent is told "wait forever"
NO_TIMEOUT_MS = -1
#: how much longer than a timed acquire's (or barrier wait's) own timeout the workload waits for
#: the answer: the directory answers at the timeout, so this only has to cover the answer's way
#: back through the agent on a loaded machine; past it, the agent or the directory is stuck
LOCK_ANSWER_MARGIN_S = 2.0


class BarrierBroken(DsmError):
    """A party of the barrier departed (died or left): the barrier will never complete."""


class LockUnanswered(DsmError):
    """A timed acquire got no answer, not even its timeout, from the agent and the directory
    within the timeout plus ``LOCK_ANSWER_MARGIN_S``: whether the lock is held is unknown."""


class Lock:
    """A FIFO mutual-exclusion lock shared by every process of the cluster. Not reentrant; owned
    by the thread that acquired it. After ``acquire``, ``previous_holder_died`` tells whether the
    lock came from a holder that died holding it (the data it protects may be half-updated).
    ``guards``: the pages of the data it protects (``dsm.guards``), which each grant carries."""

    def __init__(self, node: "Node", name: str, guards: list[int] | None = None):
        if not name:
            raise DsmError("a lock needs a non-empty name")
        self._node = node
        self.name = name
        self.guards = list(guards or [])
        self.previous_holder_died = False

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Wait for the lock; False if ``timeout`` seconds pass first (``blocking=False``: do
        not wait at all)."""
        if not blocking:
            timeout = 0.0
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout}")
        timeout_ms = NO_TIMEOUT_MS if timeout is None else int(timeout * 1000)
        # the directory's deadline fires first and answers TIMEOUT; this one is the workload's
        # own, for an agent or a directory that does not answer at all
        wait_s = None if timeout is None else timeout + LOCK_ANSWER_MARGIN_S
        try:
            reply = self._node._request(local.LockRequest, timeout_s=wait_s, name=self.name,
                                        timeout_ms=timeout_ms, guards=self.guards)
        except local.NoAnswer:
            raise LockUnanswered(
                f"lock {self.name!r}: acquire(timeout={timeout:g}) expected the directory's "
                f"answer (granted, or timed out at {timeout:g} s) but got none within "
                f"{wait_s:g} s ({LOCK_ANSWER_MARGIN_S:g} s of margin): the node agent or the "
                "directory is stuck, and whether this thread holds the lock is unknown"
            ) from None
        status = SyncStatus(reply.status)
        if status is SyncStatus.TIMEOUT:
            return False
        self.previous_holder_died = status is SyncStatus.GRANTED_BROKEN
        if self.previous_holder_died:
            log.warning("lock %r: its previous holder died while holding it", self.name)
        return True

    def release(self) -> None:
        """Release the lock; releasing a lock this thread does not hold is an error."""
        self._node._request(local.UnlockRequest, name=self.name)

    def status(self) -> tuple[str | None, list[str]]:
        """(holder, waiters in the order they will get it); holders are "node:pid:thread"."""
        reply = self._node._request(local.LockStatusRequest, name=self.name)
        return reply.holder or None, list(reply.waiting)

    def __enter__(self) -> "Lock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Barrier:
    """A reusable barrier of ``parties``: ``wait()`` returns when all have arrived. Creating it
    registers this thread as a party, so that its death breaks the barrier for the others."""

    def __init__(self, node: "Node", name: str, parties: int):
        if parties < 1:
            raise DsmError(f"barrier {name!r} needs at least 1 party, got {parties}")
        self._node = node
        self.name = name
        self.parties = parties
        self._node._request(local.BarrierJoinRequest, name=name, parties=parties)

    def wait(self, timeout: float | None = None) -> int:
        """Block until every party has arrived; returns the barrier's generation number.
        Raises BarrierBroken if a party departed, if a node of this node's job died (naming it
        and its rank), or if ``timeout`` seconds pass first: then the barrier is broken for
        every party, as ``threading.Barrier.wait(timeout)`` breaks it."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout}")
        timeout_ms = NO_TIMEOUT_MS if timeout is None else int(timeout * 1000)
        # the directory answers BROKEN at the timeout; this deadline is the workload's own, for
        # an agent or a directory that does not answer at all
        wait_s = None if timeout is None else timeout + LOCK_ANSWER_MARGIN_S
        try:
            reply = self._node._request(local.BarrierWaitRequest, timeout_s=wait_s,
                                        name=self.name, parties=self.parties,
                                        timeout_ms=timeout_ms)
        except local.NoAnswer:
            raise BarrierBroken(
                f"barrier {self.name!r}: wait(timeout={timeout:g}) got no answer, not even its "
                f"timeout, within {wait_s:g} s: the node agent or the directory is stuck"
            ) from None
        if SyncStatus(reply.status) is SyncStatus.BROKEN:
            raise BarrierBroken(reply.detail or f"barrier {self.name!r} is broken")
        return int(reply.detail)
