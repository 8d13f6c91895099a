"""Cluster-wide locks and barriers, served by the directory: a state machine with no sockets.

Holders are strings ``"node:pid:thread"``; a departed process (``"node:pid"``) or node (``"node"``)
is a prefix of its holders. Every method returns the replies to send as ``Reply(node, req, ...)``.

Locks are granted in FIFO order. A lock whose holder departs passes to the next waiter with
``broken=True``, so that it learns the protected data may be half-updated; with nobody waiting,
the lock remembers it, and its next acquirer is told (as a robust mutex's next locker gets
EOWNERDEAD). A waiter may give a deadline: ``expire(now)`` answers TIMEOUT to those whose
deadline passed.

A barrier knows its members from their ``join``: when a member departs, the barrier breaks for
everyone waiting and for every later ``wait``, instead of leaving them waiting forever. A wait may
give a deadline, as ``threading.Barrier.wait(timeout)`` does: past it, the barrier breaks for
every party.

A job (nodes with a rank and a size, from ``dsm launch``, a launcher or ``DSM_RANK``/``DSM_NODES``:
``enroll``) is one program: when one of its nodes dies, every barrier a node of the job is a
member of or waits at breaks at once, naming the dead node and its rank, and so does every later
wait of a node of the job, until the job's last node is gone. A member that died before it ever
reached the job's last barrier would otherwise leave the others waiting there forever.

Nothing unused is kept: a lock nobody holds or waits for, and a barrier with no members left,
are forgotten (a later use of the name starts afresh), so that a long-running directory does
not grow with every name ever used. Two exceptions, for news that nobody has heard yet: a lock
whose holder died with nobody waiting (see above), and a barrier whose only members were the
ones that just departed, which stays broken because its other parties may simply not have
joined yet (a process that joins after its peer died must not wait forever for it); that
barrier is forgotten once the parties that joined it since have departed too. Of each kind, at
most ``ORPHANED_BROKEN_KEPT`` are kept (the oldest forgotten first).
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from dsm.errors import DsmError
from dsm.protocol import SyncStatus


class SyncError(DsmError):
    """A lock or barrier was used wrongly (release of a lock not held, parties mismatch, ...)."""


class Reply(NamedTuple):
    node: str
    req: int
    status: SyncStatus
    detail: str = ""


def node_of(holder: str) -> str:
    return holder.split(":", 1)[0]


def departed(holder: str, prefix: str) -> bool:
    return holder == prefix or holder.startswith(prefix + ":")


#: broken locks nobody holds or waits for, and broken barriers left with no members, kept for
#: their next user (of each kind)
ORPHANED_BROKEN_KEPT = 1024

#: upper bounds of the wait histograms, in seconds: 1 ms doubling to about a minute
WAIT_BUCKETS_S = tuple(0.001 * 2**i for i in range(17))


class WaitHistogram:
    """How long requests waited (a lock grant, a barrier's last arrival): counts per bucket of
    ``WAIT_BUCKETS_S`` (the last one for longer waits) and their sum, for the metrics."""

    def __init__(self) -> None:
        self.counts = [0] * (len(WAIT_BUCKETS_S) + 1)
        self.sum_s = 0.0

    def record(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(WAIT_BUCKETS_S, seconds)] += 1
        self.sum_s += seconds


#: how many nodes' lock waits are kept apart, for the metrics' ``node`` label (the most recent
#: waiters: a long-lived directory sees many nodes come and go)
NODE_WAITS_KEPT = 1024


@dataclass
class Waiter:
    node: str
    req: int
    holder: str
    deadline: float | None
    since: float = 0.0  #: when it began to wait (the table's clock)


@dataclass
class LockState:
    holder: str | None = None
    queue: deque[Waiter] = field(default_factory=deque)
    #: its last holder departed holding it, and nobody has been granted it since
    broken: bool = False

    def unused(self) -> bool:
        return self.holder is None and not self.queue and not self.broken


@dataclass
class JobState:
    """The nodes of one job, by rank; why it is broken (a node of it died), if it is."""

    size: int
    ranks: dict[str, int] = field(default_factory=dict)
    broken: str | None = None
    #: rank -> the node that had it, for the ranks that left (or died)
    gone: dict[int, str] = field(default_factory=dict)


class JobPlace(NamedTuple):
    """Where a node stands in its job."""

    job: str
    rank: int
    size: int
    broken: str | None  #: why the job is broken, if it is
    gone: dict[int, str]  #: rank -> node, of the ranks that left or died


@dataclass
class BarrierState:
    parties: int
    members: set[str] = field(default_factory=set)
    arrived: list[Waiter] = field(default_factory=list)
    generation: int = 0
    broken_by: str | None = None


class SyncTable:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.locks: dict[str, LockState] = {}
        self.barriers: dict[str, BarrierState] = {}
        #: broken barriers with no members, kept for their late parties, oldest first
        self._orphaned_broken: dict[str, None] = {}
        #: barriers some party waits at with a deadline
        self._timed_barriers: dict[str, None] = {}
        #: broken locks nobody holds or waits for, kept for their next acquirer, oldest first
        self._broken_locks: dict[str, None] = {}
        self._clock = clock
        #: the jobs, by name, and the job of each node enrolled in one
        self.jobs: dict[str, JobState] = {}
        self._job_of: dict[str, str] = {}
        #: how long lock acquisitions and barrier waits took
        self.waits = {"lock": WaitHistogram(), "barrier": WaitHistogram()}
        #: how long each node's lock acquisitions took (the most recent NODE_WAITS_KEPT nodes)
        self.lock_waits_by_node: dict[str, WaitHistogram] = {}

    # --- locks -------------------------------------------------------------------------------------
    def acquire(self, node: str, req: int, name: str, holder: str,
                deadline: float | None) -> list[Reply]:
        lock = self.locks.setdefault(name, LockState())
        if lock.holder == holder:
            raise SyncError(f"lock {name!r} is already held by {holder}: it is not reentrant")
        if lock.holder is None and not lock.queue:
            lock.holder = holder
            self._lock_waited(node, 0.0)
            status = SyncStatus.GRANTED_BROKEN if lock.broken else SyncStatus.GRANTED
            lock.broken = False
            self._broken_locks.pop(name, None)
            return [Reply(node, req, status)]
        lock.queue.append(Waiter(node, req, holder, deadline, self._clock()))
        return []

    def _lock_waited(self, node: str, seconds: float) -> None:
        self.waits["lock"].record(seconds)
        hist = self.lock_waits_by_node.pop(node, None) or WaitHistogram()
        self.lock_waits_by_node[node] = hist  # the most recent last
        hist.record(seconds)
        while len(self.lock_waits_by_node) > NODE_WAITS_KEPT:
            del self.lock_waits_by_node[next(iter(self.lock_waits_by_node))]

    def release(self, node: str, req: int, name: str, holder: str) -> list[Reply]:
        lock = self.locks.get(name)
        if lock is None or lock.holder != holder:
            owner = lock.holder if lock else None
            raise SyncError(
                f"release of lock {name!r} by {holder}, which does not hold it "
                f"(held by {owner or 'nobody'})"
            )
        out = [Reply(node, req, SyncStatus.RELEASED)] + self._pass_on(lock, broken=False)
        self._forget_if_unused(name)
        return out

    def _forget_if_unused(self, name: str) -> None:
        lock = self.locks.get(name)
        if lock is not None and lock.unused():
            del self.locks[name]

    def _pass_on(self, lock: LockState, broken: bool) -> list[Reply]:
        lock.holder = None
        if not lock.queue:
            lock.broken = broken  # for the next acquirer, whenever it comes
            return []
        nxt = lock.queue.popleft()
        lock.holder = nxt.holder
        self._lock_waited(nxt.node, self._clock() - nxt.since)
        status = SyncStatus.GRANTED_BROKEN if broken else SyncStatus.GRANTED
        return [Reply(nxt.node, nxt.req, status)]

    def status(self, name: str) -> tuple[str, list[str]]:
        """(holder or "", waiting holders in grant order) of lock ``name``."""
        lock = self.locks.get(name)
        if lock is None:
            return "", []
        return lock.holder or "", [w.holder for w in lock.queue]

    def expire(self, now: float) -> list[Reply]:
        """Answer the waits whose deadline has passed: a lock's waiter TIMEOUT; a barrier's
        wait breaks the barrier for every party, as ``threading.Barrier`` does."""
        out = []
        for name, lock in self.locks.items():
            expired = [w for w in lock.queue if w.deadline is not None and w.deadline <= now]
            for w in expired:
                lock.queue.remove(w)
                out.append(Reply(w.node, w.req, SyncStatus.TIMEOUT, f"lock {name!r}"))
        for name in [n for n, lock in self.locks.items() if lock.unused()]:
            del self.locks[name]
        if self._timed_barriers:
            for name in list(self._timed_barriers):
                barrier = self.barriers.get(name)
                late = [w for w in barrier.arrived if w.deadline is not None
                        and w.deadline <= now] if barrier is not None else []
                if barrier is None or not any(w.deadline is not None for w in barrier.arrived):
                    del self._timed_barriers[name]
                if late:
                    out += self._break(name, barrier, (
                        f"barrier {name!r} is broken: {late[0].holder} waited "
                        f"{now - late[0].since:.1f} s, its timeout, for the other parties "
                        f"({len(barrier.arrived)} of {barrier.parties} had arrived)"))
        return out

    def next_deadline(self) -> float | None:
        if not self.locks and not self._timed_barriers:  # the common case, before every poll
            return None
        deadlines = [w.deadline for lock in self.locks.values() for w in lock.queue
                     if w.deadline is not None]
        deadlines += [w.deadline for name in self._timed_barriers
                      for w in self.barriers[name].arrived if w.deadline is not None]
        return min(deadlines, default=None)

    # --- barriers ----------------------------------------------------------------------------------
    def _barrier(self, name: str, parties: int) -> BarrierState:
        if parties < 1:
            raise SyncError(f"barrier {name!r} needs at least 1 party, got {parties}")
        barrier = self.barriers.setdefault(name, BarrierState(parties))
        if barrier.parties != parties:
            raise SyncError(
                f"barrier {name!r} exists with {barrier.parties} parties; asked for {parties}"
            )
        self._orphaned_broken.pop(name, None)  # it has a member again (the caller adds it)
        return barrier

    def join(self, node: str, req: int, name: str, parties: int, holder: str) -> list[Reply]:
        barrier = self._barrier(name, parties)
        barrier.members.add(holder)
        return [Reply(node, req, SyncStatus.JOINED)]

    def wait(self, node: str, req: int, name: str, parties: int, holder: str,
             deadline: float | None = None) -> list[Reply]:
        barrier = self._barrier(name, parties)
        barrier.members.add(holder)
        job_broken = self._job_broken(node)
        if job_broken is not None and barrier.broken_by is None:
            barrier.broken_by = f"barrier {name!r} is broken: {job_broken}"
        if barrier.broken_by is not None:
            return [Reply(node, req, SyncStatus.BROKEN, barrier.broken_by)]
        now = self._clock()
        barrier.arrived.append(Waiter(node, req, holder, deadline, now))
        if deadline is not None:
            self._timed_barriers[name] = None
        if len(barrier.arrived) < barrier.parties:
            return []
        arrived, barrier.arrived = barrier.arrived, []
        for w in arrived:
            self.waits["barrier"].record(now - w.since)
        barrier.generation += 1
        return [Reply(w.node, w.req, SyncStatus.PASSED, str(barrier.generation)) for w in arrived]

    def _break(self, name: str, barrier: BarrierState, why: str) -> list[Reply]:
        """Break ``barrier`` (if it is not already) for ``why``: every party waiting at it is
        answered BROKEN, and so is every later wait."""
        if barrier.broken_by is None:
            barrier.broken_by = why
        waiting, barrier.arrived = barrier.arrived, []
        return [Reply(w.node, w.req, SyncStatus.BROKEN, barrier.broken_by) for w in waiting]

    # --- jobs --------------------------------------------------------------------------------------
    def enroll(self, node: str, job: str, rank: int, size: int) -> None:
        """``node`` is rank ``rank`` of job ``job`` of ``size`` nodes."""
        self._leave_job(node)
        state = self.jobs.setdefault(job, JobState(size))
        state.ranks[node] = rank
        self._job_of[node] = job

    def placement(self, node: str) -> JobPlace | None:
        """Where ``node`` stands in its job; None outside a job."""
        job = self._job_of.get(node)
        if job is None:
            return None
        state = self.jobs[job]
        return JobPlace(job, state.ranks[node], state.size, state.broken, state.gone)

    def _job_broken(self, node: str) -> str | None:
        job = self._job_of.get(node_of(node))
        return self.jobs[job].broken if job is not None else None

    def job_member_died(self, node: str, why: str) -> list[Reply]:
        """``node`` died (or was fenced): if it is part of a job, the job breaks, and with it
        every barrier one of its nodes belongs to or waits at, naming ``node`` and its rank."""
        job = self._job_of.get(node)
        if job is None:
            return []
        state = self.jobs[job]
        if state.broken is None:
            state.broken = (f"node {node} (rank {state.ranks[node]} of {state.size} of job "
                            f"{job or 'without a name'}) died: {why}")
        out: list[Reply] = []
        for name, barrier in self.barriers.items():
            holders = barrier.members | {w.holder for w in barrier.arrived}
            if any(self._job_of.get(node_of(h)) == job for h in holders):
                out += self._break(name, barrier, f"barrier {name!r} is broken: {state.broken}")
        return out

    def _leave_job(self, node: str) -> None:
        """``node`` is gone (left or died): a job whose last node is gone is forgotten."""
        job = self._job_of.pop(node, None)
        if job is None:
            return
        state = self.jobs[job]
        rank = state.ranks.pop(node, None)
        if rank is not None:
            state.gone[rank] = node
        if not state.ranks:
            del self.jobs[job]

    # --- departures --------------------------------------------------------------------------------
    def depart(self, prefix: str) -> list[Reply]:
        """A process (``node:pid``) or a node (``node``) is gone: release what it held, drop what
        it waited for, break the barriers it belonged to."""
        if ":" not in prefix:
            self._leave_job(prefix)
        out: list[Reply] = []
        for name, lock in self.locks.items():
            lock.queue = deque(w for w in lock.queue if not departed(w.holder, prefix))
            if lock.holder is not None and departed(lock.holder, prefix):
                out += self._pass_on(lock, broken=True)
                if lock.broken:
                    self._broken_locks[name] = None
        just_broken: list[str] = []
        for name, barrier in self.barriers.items():
            gone = {m for m in barrier.members if departed(m, prefix)}
            if not gone:
                continue
            barrier.members -= gone
            if barrier.broken_by is None:
                barrier.broken_by = f"barrier {name!r} is broken: party {sorted(gone)[0]} departed"
                just_broken.append(name)
            waiting = [w for w in barrier.arrived if not departed(w.holder, prefix)]
            barrier.arrived = []
            out += [Reply(w.node, w.req, SyncStatus.BROKEN, barrier.broken_by) for w in waiting]
        for name in [n for n, lock in self.locks.items() if lock.unused()]:
            del self.locks[name]
        for name in just_broken:
            if not self.barriers[name].members:
                self._orphaned_broken[name] = None
        for name in [n for n, b in self.barriers.items()
                     if not b.members and n not in self._orphaned_broken]:
            del self.barriers[name]
        while len(self._broken_locks) > ORPHANED_BROKEN_KEPT:
            oldest = next(iter(self._broken_locks))
            del self._broken_locks[oldest], self.locks[oldest]
        while len(self._orphaned_broken) > ORPHANED_BROKEN_KEPT:
            oldest = next(iter(self._orphaned_broken))
            del self._orphaned_broken[oldest], self.barriers[oldest]
        return out
