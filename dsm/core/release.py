"""A node's pages of release-consistency arrays (home-based lazy release consistency): twins,
diffs and write notices, with no sockets. ``NodeCore`` hands these pages over to it.

A page's life on a node (``PageState``):

    invalid --fault: the home copy (Grant with release)--> CLEAN (write-protected)
    CLEAN --first write: Twin, lift the protection, Dirtied to the home--> DIRTY (writable)
    DIRTY --release: protect, SendDiff (the bytes changed since the twin; carried by the
        release itself, SendRelease, when it goes at once to the page's home)--> CLEAN
    CLEAN or DIRTY --acquire naming it (write notice): [SendDiff], Punch--> invalid
    invalid, or CLEAN named by a notice --a grant of a lock guarding it: the home copy
        (SyncReply.guarded), Install write-protected, then as a first write (no Dirtied: the
        grant dirtied it at the home)--> DIRTY

A **release** (a lock release, a barrier arrival) sends every dirty page's diff home first, then
the release message itself, carrying the write notices: every page whose diff went home since
the last release. One directory gets both on one pipe, in order (so it does not answer the
diff; a release that goes at once carries it); a diff to another shard is answered
(``DiffApplied``), and awaited before the release goes, so that whoever acquires next finds
every diff at its home. An **acquire** (a grant, a barrier departure) brings the notices of the other
nodes' releases: those pages are punched (a dirty one sends its diff first), so the next access
fetches the merged home copy. A page whose home copy is on its way at an acquire that names it
is asked for again when it comes (what comes may predate the release).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Container

import numpy as np

from dsm import protocol as p
from dsm.core.actions import (Action, DropTwins, Install, Protect, Punch, Send, SendDiff,
                              SendRelease, Twin, Upgrade)
from dsm.core.shards import COORDINATOR_SHARD, shard_of, split_at_stripes
from dsm.core.states import PageState, pack_runs, runs
from dsm.core.stats import NodeStats

#: the release messages, which carry the write notices
Release = p.LockRelease | p.BarrierWait
#: the states of sequentially consistent pages
SEQUENTIAL = (PageState.SHARED, PageState.EXCLUSIVE)
#: the states of release-consistency pages
RELEASE = (PageState.CLEAN, PageState.DIRTY)


class ReleasePages:
    def __init__(self, node: str, num_pages: int, state: dict[int, PageState], stats: NodeStats,
                 trace: Callable[..., None], tracing: bool, page_size: int):
        self.node = node
        self.num_pages = num_pages
        self.page_size = page_size
        self.state = state  #: the node core's page states (shared)
        self.stats = stats
        self._trace, self._tracing = trace, tracing
        self.shards, self.stripe = 1, 0  #: set by the node core
        #: the DIRTY pages (twinned)
        self.dirty: set[int] = set()
        #: pages whose diff went home since the last release: the next release's notices
        self.noticed: set[int] = set()
        self._next_req = 1
        #: diffs sent to a shard other than the coordinator and not applied yet
        self._unacked: set[int] = set()
        #: releases waiting for those, in order, each with the diffs it waits for
        self._held: deque[tuple[Release, set[int]]] = deque()
        #: pages asked for when an acquire named them: what comes may predate the release
        self.stale_on_arrival: set[int] = set()
        #: diffs sent so far (runs), and per page the count when its last diff went: a lock's
        #: grant carries home copies taken when its request came, so a page whose diff went
        #: after the request may come without it (``lock_requested``, ``_installable``)
        self._diffs_sent = 0
        self._last_diff: dict[int, int] = {}
        #: lock request (agent req) -> the diffs sent when it went
        self._request_marks: dict[int, int] = {}

    # --- writes --------------------------------------------------------------------------------
    def first_write(self, page: int, count: int, announce: bool = True) -> list[Action]:
        """A write fault on a CLEAN page: twin it, and the ``count - 1`` CLEAN pages after it
        (a sequential writer's next ones: one fault and one message for the run), and let the
        writers go on. ``announce``: tell the home (Dirtied); not for the pages a lock's grant
        carried, which the grant dirtied there (``ReleaseHomes.carry``)."""
        for q in range(page, page + count):
            self.state[q] = PageState.DIRTY
        self.dirty.update(range(page, page + count))
        self.stats.count("twins", count)
        if self._tracing:
            self._trace(page, "TWIN", self.node, "clean", "dirty", count=count)
        # the home hears of it before the write can land (should this node die unreleased,
        # the page is lost there, loudly)
        told = [Send(p.Dirtied(page, count))] if announce else []
        return [Twin(page, count), *told, Upgrade(page, count)]

    def _flush(self, pages: list[int], carried: list[tuple[int, int, int]] | None = None
               ) -> list[Action]:
        """Send the diffs of dirty ``pages`` home (they stay as CLEAN copies). ``carried``: a
        release's, which takes the coordinator's runs as ``(req, first, count)`` to carry
        them itself (each still write-protected here)."""
        out: list[Action] = []
        for first, count in split_at_stripes(runs(pages, p.MAX_BATCH_PAGES), self.shards,
                                             self.stripe):
            req = self._next_req
            self._next_req += 1
            self._diffs_sent += 1
            self._last_diff.update(dict.fromkeys(range(first, first + count), self._diffs_sent))
            out.append(Protect(first, count))
            if self.shards > 1 and shard_of(first, self.shards, self.stripe) != COORDINATOR_SHARD:
                self._unacked.add(req)
                out.append(SendDiff(req, first, count))
            elif carried is not None:
                carried.append((req, first, count))
            else:
                out.append(SendDiff(req, first, count))
            for q in range(first, first + count):
                self.state[q] = PageState.CLEAN
                self.dirty.discard(q)
            self.noticed.update(range(first, first + count))
            self.stats.count("diffs")
            if self._tracing:
                self._trace(first, "DIFF", self.node, "dirty", "clean", count=count, req=req)
        return out

    # --- synchronization -----------------------------------------------------------------------
    def release(self, msg: Release) -> list[Action]:
        """Flush every dirty page, then send ``msg`` with the write notices (at once, or when
        the diffs to other shards are applied). One that goes at once carries the diffs of the
        coordinator's pages (``SendRelease``); one that waits sends them ahead: they are of
        the pages as they are now, which its thread's next writes change."""
        carried: list[tuple[int, int, int]] = []
        out = self._flush(sorted(self.dirty), carried)
        msg = p.replace(msg, notices=pack_runs(self.noticed))
        self.noticed.clear()
        if self._unacked or self._held:
            out += [SendDiff(*run) for run in carried]
            if isinstance(msg, p.LockRelease):  # its thread waits for the directory's answer
                msg = p.replace(msg, answered=False)
            self._held.append((msg, set(self._unacked)))
        else:
            out.append(SendRelease(msg, tuple(carried)) if carried else Send(msg))
        return out

    def holding(self) -> bool:
        """Whether a release waits for diffs another shard has not acknowledged."""
        return bool(self._held)

    def diff_applied(self, msg: p.DiffApplied) -> list[Action]:
        self._unacked.discard(msg.req)
        out: list[Action] = []
        while self._held and not (self._held[0][1] & self._unacked):
            out.append(Send(self._held.popleft()[0]))
        return out

    def lock_requested(self, req: int) -> None:
        """A lock request ``req`` goes to the coordinator now: the diffs sent before it are in
        the home copies its grant carries (one pipe, in order); later ones may not be."""
        self._request_marks[req] = self._diffs_sent

    def request_mark(self, req: int | None) -> int:
        """The diffs sent before request ``req`` went (forgotten now); none known: 0, so that
        no page this node ever sent a diff of is taken from its grant."""
        return self._request_marks.pop(req, 0) if req is not None else 0

    def acquired(self, notices: list[int], pending: Container[int], guarded: list[int] = (),
                 data: Any = None, mark: int = 0) -> list[Action]:
        """Another node's releases changed these pages: invalidate this node's copies (a dirty
        one sends its diff first: its writes are this node's, not lost). ``pending``: the pages
        requests are out for. ``guarded`` (runs) and ``data``: the home copies a lock's grant
        carried (``dsm.guards``), installed as clean copies where this node holds none or a
        clean one the notices name (written over in place: never a moment without it); never
        over a dirty page (its own unreleased writes are not in the home copy yet), nor where
        a request is out (what it brings is handled as any grant), nor a page whose diff this
        node sent after the lock request (``mark``: the diffs sent before it): the carried copy
        may predate it (another thread's writes, under another lock guarding other bytes of
        the page, given back meanwhile); a fault brings the merged copy then."""
        out: list[Action] = []
        # the notices as a mask, a slice per run: what costs is then the pages this node holds
        # or awaits, not how many the notices name (runs from a hostile peer may overlap)
        noticed = np.zeros(self.num_pages, dtype=bool)
        for first, count in zip(notices[::2], notices[1::2]):
            noticed[first:first + count] = True
        installs = self._installable(guarded, noticed, pending, mark)
        held = self._held_noticed(notices, noticed)
        out += self._flush([q for q in held if q in self.dirty])
        punched = [q for q in held if q not in installs]
        for first, count in runs(punched, p.MAX_BATCH_PAGES):
            out.append(Punch(first, count))
            for q in range(first, first + count):
                del self.state[q]
        self.stale_on_arrival.update(q for q in pending if noticed[q])
        self.stats.count("notices_invalidated", len(punched))
        if self._tracing and punched:
            self._trace(punched[0], "NOTICE", self.node, "held", "invalid", count=len(punched))
        return out + self._install_guarded(guarded, installs, data)

    def _held_noticed(self, notices: list[int], noticed: np.ndarray) -> list[int]:
        """The release pages this node holds that the notices name, in order: found from the
        notices when they name fewer pages than this node holds (a node holding a large array
        would otherwise look at every page of it at every acquire: 11 ms for 100,000 pages),
        else from what it holds (runs from a hostile peer may overlap and name the region many
        times over)."""
        state = self.state
        if sum(notices[1::2]) <= len(state):
            return sorted({q for first, count in zip(notices[::2], notices[1::2])
                           for q in range(first, first + count) if state.get(q) in RELEASE})
        return sorted(q for q, st in state.items() if st in RELEASE and noticed[q])

    def _installable(self, guarded: list[int], noticed: np.ndarray,
                     pending: Container[int], mark: int) -> set[int]:
        """The carried pages to install: held nowhere here, or as a clean copy the notices
        name; no request out for them, and no diff of them sent after the request (``mark``)."""
        out: set[int] = set()
        last_diff = self._last_diff
        for first, count in zip(guarded[::2], guarded[1::2]):
            for q in range(first, first + count):
                st = self.state.get(q)
                if (q not in pending and last_diff.get(q, 0) <= mark
                        and (st is None or (st is PageState.CLEAN and noticed[q]))):
                    out.add(q)
        return out

    def _install_guarded(self, guarded: list[int], installs: set[int],
                         data: Any) -> list[Action]:
        """Install the carried pages of ``installs`` and twin them at once, writable: the
        lock's holder is there to update what the lock guards, and a write fault per grant
        (the workload stopped, the agent woken, the page twinned, the workload woken) would
        cost about as much as the grant itself. Installed write-protected, twinned, then
        lifted (``first_write``), so that a local process writing the page meanwhile (under
        another lock guarding other bytes of it) has its write in the diff, not the twin. A
        holder that only reads sends an empty diff at its release. No Dirtied:
        the grant dirtied the pages at their home (until their Diff, or the lock's release)."""
        if not installs:
            return []
        size = self.page_size
        view = memoryview(data)
        out: list[Action] = []
        twins: list[tuple[int, int]] = []  # the runs installed, to twin
        offset = 0  # where each carried run's bytes start in the frame
        for first, count in zip(guarded[::2], guarded[1::2]):
            mine = [q for q in range(first, first + count) if q in installs]
            for run_first, run_count in runs(mine, p.MAX_BATCH_PAGES):
                at = offset + (run_first - first) * size
                out.append(Install(run_first, run_count, view[at:at + run_count * size], False,
                                   None, ()))
                for q in range(run_first, run_first + run_count):
                    self.state[q] = PageState.CLEAN
                twins.append((run_first, run_count))
            offset += count * size
        self.stats.count("guarded_pages_in", len(installs))
        if self._tracing:
            self._trace(min(installs), "GUARDED", self.node, "", "clean", count=len(installs))
        for run_first, run_count in twins:
            out += self.first_write(run_first, run_count, announce=False)
        return out

    # --- giving pages up -----------------------------------------------------------------------
    def give_back(self, first: int, count: int) -> list[Action]:
        """A run of release pages leaves this node (unmap, leave): dirty ones send their diff."""
        out = self._flush([q for q in range(first, first + count) if q in self.dirty])
        out.append(Punch(first, count))
        for q in range(first, first + count):
            del self.state[q]
        return out

    def discarded(self, pages: list[int]) -> list[Action]:
        """MADV_REMOVE of release pages: zeros at home (the Discard), noticed at the next
        release; this node's changes to them are gone with them."""
        dirty = [q for q in pages if q in self.dirty]
        self.dirty.difference_update(dirty)
        # (pages this node does not hold may be release pages too: noticed all the same)
        self.noticed.update(q for q in pages if self.state.get(q) not in SEQUENTIAL)
        return [DropTwins(first, count) for first, count in runs(dirty, p.MAX_BATCH_PAGES)]

    def clear(self) -> None:
        """Cut off: nothing here is current any more."""
        self.dirty.clear()
        self.noticed.clear()
        self._unacked.clear()
        self._held.clear()
        self.stale_on_arrival.clear()
