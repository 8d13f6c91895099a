"""The kernel's userfaultfd events of a node's workload processes besides their page faults
(Fork, Remap, Remove, Unmap), and what the node does about each: one code path for the agent
(``dsm/agent/workloads.py``, which keeps the pidfds, the /proc lookups and the poller) and for the
simulator (``dsm/sim/``, whose model of the kernel delivers them). No sockets and no system
calls: the loop passes its kernel calls (``KernelCalls``), whether its memory holds a page, how to
carry the core's actions out, and the clock.

A process's mapping change is applied when its event is read (``follow``), not when the event is
handled: the kernel made the change before it queued the event, ioctls made meanwhile must go
where the process maps the region now (``dsm/core/kernel.py``, ENOENT), and an event read after
it (a Remove, a Fork) speaks of the process as it is then. Each event becomes a record in region
offsets (``Forked``, ``Remapped``, ``Unmapped``, ``Removed``), handled in order with the faults.

What each record means for the node's pages:

- Forked: the child's page tables are the parent's at the fork, with their write protection, but
  a read copy installed since is not protected there: every read copy is protected in the child.
- Unmapped: the pages no local process maps any more go back to the directory (owned ones with
  their contents: ``NodeCore.give_back``).
- Remapped: nothing moves in the node's memory; the process's addresses do (applied at reading).
- Removed: madvise(MADV_REMOVE) punches the memory right after the event is read, DONTNEED does
  not (on shared memory it keeps the data); the event does not say which. Without blocking the
  loop, the pages the node holds are checked ``REMOVE_SETTLE_S`` later (or at a fault on one
  before that): those the memory no longer holds were removed, zeros cluster-wide
  (``NodeCore.discard``); read copies are protected again in the removing process (DONTNEED
  may have zapped their protection with their entries).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from dsm import bugs
from dsm.core.kernel import KernelCalls
from dsm.core.node import NodeCore
from dsm.uffd.events import Access, FaultKind, Fork, Remap, Remove, Unmap

log = logging.getLogger(__name__)

#: how long after a Remove event its pages are checked for MADV_REMOVE's hole punch (DONTNEED
#: never punches): the madvise caller punches right after the agent has read the event
REMOVE_SETTLE_S = 0.02
#: how long after a Remove event a hole in one of its pages is still explained by it (its madvise
#: caller may be descheduled between the event and the punch): past it, a hole in a page the node
#: holds is an invariant violation, never a guessed discard
REMOVE_EXPLAINS_S = 1.0


@dataclass
class Mapping:
    """``length`` bytes of the region at region offset ``offset``, mapped at ``start``."""

    start: int
    length: int
    offset: int

    @property
    def end(self) -> int:
        return self.start + self.length


class RegionMappings:
    """Where in a process's address space each part of the region is mapped (``mappings``), and
    the changes its Unmap and Remap events make. A mixin: the class provides ``mappings``."""

    mappings: list[Mapping]

    def offset_of(self, addr: int) -> int | None:
        for m in self.mappings:
            if m.start <= addr < m.end:
                return m.offset + (addr - m.start)
        return None

    def addresses_of(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Every (address, length) at which this process maps region bytes [offset, offset+length)."""
        out = []
        for m in self.mappings:
            lo = max(offset, m.offset)
            hi = min(offset + length, m.offset + m.length)
            if lo < hi:
                out.append((m.start + (lo - m.offset), hi - lo))
        return out

    def region_ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        """The region (offset, length) ranges that addresses [start, end) of this process map."""
        out = []
        for m in self.mappings:
            lo, hi = max(start, m.start), min(end, m.end)
            if lo < hi:
                out.append((m.offset + (lo - m.start), hi - lo))
        return out

    def covers(self, offset: int) -> bool:
        return any(m.offset <= offset < m.offset + m.length for m in self.mappings)

    def unmap(self, start: int, end: int) -> list[tuple[int, int]]:
        """Forget [start, end); returns the region (offset, length) ranges it covered."""
        removed = self.region_ranges(start, end)
        kept = []
        for m in self.mappings:
            lo, hi = max(start, m.start), min(end, m.end)
            if lo >= hi:
                kept.append(m)
                continue
            if m.start < lo:
                kept.append(Mapping(m.start, lo - m.start, m.offset))
            if hi < m.end:
                kept.append(Mapping(hi, m.end - hi, m.offset + (hi - m.start)))
        self.mappings = kept
        return removed

    def remap(self, from_: int, to: int, length: int) -> list[tuple[int, int]]:
        """mremap moved [from_, from_+length) to ``to``: the region bytes follow the move.
        Returns the region (offset, length) ranges that moved."""
        moved = []
        for m in self.mappings:
            lo, hi = max(from_, m.start), min(from_ + length, m.end)
            if lo < hi:
                moved.append(Mapping(to + (lo - from_), hi - lo, m.offset + (lo - m.start)))
        # the destination's old contents are replaced; the source is gone
        self.unmap(to, to + length)
        self.unmap(from_, from_ + length)
        self.mappings.extend(moved)
        return [(m.offset, m.length) for m in moved]

    def copy_mappings(self) -> list[Mapping]:
        return [Mapping(m.start, m.length, m.offset) for m in self.mappings]


class AddressSpace(RegionMappings):
    """Mappings of the region, alone (the simulator's model of a process's)."""

    def __init__(self, mappings: list[Mapping]):
        self.mappings = mappings


# --- the events, as read ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Forked:
    """A Fork: the child's uffd, and the parent's mappings at the fork (the child's)."""

    uffd: Any
    mappings: list[Mapping]


@dataclass(frozen=True)
class Remapped:
    """A Remap, applied: the region (offset, length) ranges now at new addresses."""

    ranges: list[tuple[int, int]]


@dataclass(frozen=True)
class Unmapped:
    """An Unmap, applied: the region (offset, length) ranges the process no longer maps."""

    ranges: list[tuple[int, int]]


@dataclass(frozen=True)
class Removed:
    """A Remove (madvise): the region (offset, length) ranges it named."""

    ranges: list[tuple[int, int]]


def follow(proc: RegionMappings, events: Iterable) -> list:
    """``events`` just read from ``proc``'s uffd, in order: their mapping changes applied to
    ``proc`` now, each event other than a page fault turned into its record."""
    out: list = []
    for ev in events:
        if type(ev) is Unmap:
            out.append(Unmapped(proc.unmap(ev.start, ev.end)))
        elif type(ev) is Remap:
            out.append(Remapped(proc.remap(ev.from_, ev.to, ev.len)))
        elif type(ev) is Remove:
            out.append(Removed(proc.region_ranges(ev.start, ev.end)))
        elif type(ev) is Fork:
            out.append(Forked(ev.uffd, proc.copy_mappings()))
        else:
            out.append(ev)
    return out


@dataclass
class Removal:
    """Pages a Remove event of ``proc`` covered, to be told apart at ``deadline``: punched
    (MADV_REMOVE: discarded cluster-wide) or kept (DONTNEED)."""

    proc: Any
    pages: set[int]
    deadline: float


class ProcessEvents:
    """What a node does about its processes' events, and the faults that depend on them.

    ``holds(page)``: whether the node's memory holds the page's data (not a hole);
    ``processes()``: the node's workload processes it serves (each a ``RegionMappings``);
    ``carry_out``: how the core's actions are done."""

    def __init__(self, core: NodeCore, kernel: KernelCalls, holds: Callable[[int], bool],
                 processes: Callable[[], Iterable], carry_out: Callable[[list], None]):
        self.core = core
        self.state = core.state
        self.kernel = kernel
        self.page_size = kernel.page_size
        self._holds = holds
        self._processes = processes
        self._carry_out = carry_out
        #: Remove events whose pages are not yet told apart, oldest first
        self._removals: list[Removal] = []
        #: pages Remove events named, until when a hole in them is explained (oldest first)
        self._explains: dict[int, float] = {}
        #: what each event's record means (a Forked child is the loop's to adopt first)
        self._handlers: dict[type, Callable[[Any, Any, float], None]] = {
            Remapped: lambda proc, ev, now: self.core.stats.count("remaps"),
            Removed: self.removed,
            Unmapped: lambda proc, ev, now: self.unmapped(ev),
        }

    # --- faults --------------------------------------------------------------------------------------
    def fault(self, proc: Any, addr: int, rw: Access, kind: FaultKind, thread_id: int,
              now: float) -> None:
        """A fault of ``proc`` at ``addr``, into the core. A page held here, faulted as missing,
        was raised before it arrived, or punched: only a Remove event of this node's processes
        may have punched it; it is told apart now (the core takes any other hole for the
        invariant violation it is). A fault outside the region (a range moved or unmapped since
        the fault: its event was read after it) is woken: it faults again where the process
        maps the page now, or fails."""
        page_addr = addr - addr % self.page_size
        offset = proc.offset_of(page_addr)
        if offset is None:
            log.info("fault at %#x outside the region (moved or unmapped meanwhile): waking "
                        "it", addr)
            self.kernel.wake(proc, page_addr)
            return
        page = offset // self.page_size
        resident = True
        if kind is FaultKind.MISSING and page in self.state and page not in self.core.pending:
            if self._removals:
                self._protect_kept(page)  # a read copy DONTNEED unprotected, before the wake
            resident = self._holds(page)
            if not resident and self._removed_recently(page, now):
                self._discard([page])  # punched by MADV_REMOVE: zeros cluster-wide
                resident = True  # no longer held: the core asks for it
        self._carry_out(self.core.fault(proc, page_addr, page, rw, kind, thread_id, now,
                                        resident))

    # --- the events ------------------------------------------------------------------------------------
    def handle(self, proc: Any, record: Any, now: float) -> None:
        """A Remapped, Removed or Unmapped record of ``proc``'s (``follow``)."""
        self._handlers[type(record)](proc, record, now)

    def forked(self, child: Any) -> None:
        """Protect every read copy in a forked child (one installed since the fork is not)."""
        self.kernel.protect_read_copies(child, self.core.read_copies())

    def unmapped(self, ev: Unmapped) -> None:
        self.core.stats.count("unmaps")
        self.give_back_unmapped(ev.ranges)

    def removed(self, proc: Any, ev: Removed, now: float) -> None:
        """Tell the pages of ``ev`` apart ``REMOVE_SETTLE_S`` from ``now`` (the module's
        docstring)."""
        self.core.stats.count("removes")
        pages = self._held_pages(ev.ranges)
        if pages:
            self._removals.append(Removal(proc, pages, now + REMOVE_SETTLE_S))
            for pg in pages:
                self._explains.pop(pg, None)  # in order of expiry
                self._explains[pg] = now + REMOVE_EXPLAINS_S

    def gone(self, proc: Any, ranges: list[tuple[int, int]], give_back: bool) -> None:
        """``proc`` exited or is no longer served (its ``ranges`` were mapped): the core forgets
        its waiters; with ``give_back``, the pages no other local process maps go back."""
        self.core.process_gone(proc)
        if give_back:
            self.give_back_unmapped(ranges)

    # --- the removals' timers ----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When the oldest Remove is to be told apart (None: none is waiting)."""
        return self._removals[0].deadline if self._removals else None

    def run_timers(self, now: float) -> list[int]:
        """Tell apart the Removes due by ``now``; the pages told apart."""
        settled: list[int] = []
        while self._removals and self._removals[0].deadline <= now:
            settled += self._settle(self._removals.pop(0), now)
        return settled

    def _settle(self, removal: Removal, now: float) -> list[int]:
        """Discard the pages of ``removal`` that were punched; the pages told apart. A page a
        request is out for (an upgrade of a read copy) waits for its answer, and is told apart
        ``REMOVE_SETTLE_S`` later again: a Discard sent now would reach the directory after it
        granted the request, and take the page from this node, which installs it."""
        waiting = {pg for pg in removal.pages if pg in self.core.pending}
        if waiting:
            self._removals.append(Removal(removal.proc, waiting, now + REMOVE_SETTLE_S))
        told = [pg for pg in removal.pages if pg not in waiting]
        gone = [pg for pg in told if pg in self.state and not self._holds(pg)]
        if gone and bugs.ACTIVE != bugs.KEEP_REMOVED:  # the bug switch (dsm/bugs.py)
            self._discard(gone)
        if self._served(removal.proc):
            for pg in told:  # DONTNEED: the pages stay; keep read copies protected
                st = self.state.get(pg)
                if st is not None and st.protected:
                    self.kernel.writeprotect(removal.proc, pg, 1, wp=True)
        return told

    def _protect_kept(self, page: int) -> None:
        """A fault on a page of a Remove event not told apart yet, which the memory still holds:
        if it is a read copy, DONTNEED may have zapped its protection with its entry in the
        removing process; protect it there again before the fault is let through."""
        st = self.state.get(page)
        if st is None or not st.protected:
            return
        for removal in self._removals:
            if page in removal.pages and self._served(removal.proc):
                self.kernel.writeprotect(removal.proc, page, 1, wp=True)

    def _removed_recently(self, page: int, now: float) -> bool:
        """Whether a Remove event of this node's processes named ``page`` within
        REMOVE_EXPLAINS_S (its hole is MADV_REMOVE's)."""
        while self._explains and next(iter(self._explains.values())) < now:
            self._explains.pop(next(iter(self._explains)))
        return page in self._explains or any(page in r.pages for r in self._removals)

    def _served(self, proc: Any) -> bool:
        return any(pr is proc for pr in self._processes())

    # --- giving pages back -------------------------------------------------------------------------------
    def _held_pages(self, ranges: list[tuple[int, int]]) -> set[int]:
        """The pages this node holds among the (region offset, length) ``ranges``."""
        pages, state = set(), self.state
        for offset, length in ranges:
            first = offset // self.page_size
            last = (offset + length - 1) // self.page_size
            if last + 1 - first > len(state):  # (a whole region unmapped: 262,144 pages a GiB)
                pages.update(pg for pg in state if first <= pg <= last)
            else:
                pages.update(pg for pg in range(first, last + 1) if pg in state)
        return pages

    def _discard(self, pages: list[int]) -> None:
        for removal in self._removals:  # told apart already
            removal.pages.difference_update(pages)
        self._carry_out(self.core.discard(pages))

    def give_back_unmapped(self, ranges: list[tuple[int, int]]) -> None:
        """Hand back the pages of ``ranges`` that no local process maps any more (not those a
        request is out for): owned ones with their contents."""
        procs = list(self._processes())
        unmapped = [pg for pg in self._held_pages(ranges)
                    if not any(pr.covers(pg * self.page_size) for pr in procs)]
        self._carry_out(self.core.give_back(unmapped))
