"""The simulated nodes' workload processes and the kernel's userfaultfd events on them (Fork,
Unmap, Remap, Remove), delivered to the node's agent as the real kernel delivers them, and handled
by the real agent's code (``dsm.core.events``: ``follow`` when read, ``ProcessEvents`` after).

Each process (the node's workload process, ``SimNode``, and the children it forked,
``ForkedChild``) maps the region twice over: as the kernel does (``space``), which an event
changes at once, and as the agent knows it (``mappings``), which changes when the agent reads the
event (``follow``). Until then an ioctl there answers as Linux does (``dsm.sim.agent``): EAGAIN
while events are pending, ENOENT where nothing is mapped any more.

With ``KernelEvents`` (each kind's probability per step of the schedule, drawn from the world's
seeded generator), a live node's processes now and then:

- fork: the workload process forks a child, which inherits its mappings and its write
  protection (``dup_userfaultfd``) and touches nothing;
- unmap a page or two (the workload's threads skip their operations there from then on: a
  real one would crash), or remap them (mremap) beyond the region;
- remove a page or two of its sequential pages (madvise): MADV_REMOVE punches them from the
  node's memory once the agent has read the event, DONTNEED keeps them.

The truth model (``dsm.sim.world``) takes a removal as a write of zeros: at once for a page the
node owned (it was the only copy: what any node reads of it after the punch is zeros, whoever
the pages go to), and at the directory's discard of it for a read copy; until then a read of it
may return zeros or what it held.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from dsm.core.events import AddressSpace, Forked, Mapping, RegionMappings, Removed
from dsm.core.states import OWNED
from dsm.sim.model import PAGE_BYTES, SLOTS_PER_PAGE, Rates, SimulationFailure
from dsm.uffd.events import Fork, Remap, Remove, Unmap

if TYPE_CHECKING:
    from dsm.sim.nodes import SimNode

#: where the model's mremaps move pages to: past the region (which the model maps at 0), a fresh
#: stretch of addresses each time
REMAP_BASE = 1 << 40
#: how many pages an unmap, a remap or a remove covers, at most
EVENT_PAGES = 2
#: how often a Remove is MADV_REMOVE (the pages punched); else DONTNEED (kept)
PUNCH_SHARE = 0.5


@dataclass(frozen=True)
class KernelEvents(Rates):
    """How often each event strikes a random live node, per step of the schedule."""

    fork: float = 0.0
    unmap: float = 0.0
    remap: float = 0.0
    remove: float = 0.0

    @classmethod
    def everywhere(cls, rate: float) -> "KernelEvents":
        return cls(fork=rate, unmap=rate, remap=rate, remove=rate)


NO_EVENTS = KernelEvents()


@dataclass(eq=False, kw_only=True)
class SimProcess(RegionMappings):
    """A workload process of the model: its mappings of the region as the agent knows them and
    as the kernel does, the pages write-protected in it, the events the kernel queued on its
    uffd (with what happens once one is read) and those read but not handled yet."""

    mappings: list[Mapping] = field(default_factory=list)
    space: AddressSpace = field(default_factory=lambda: AddressSpace([]))
    wp: set[int] = field(default_factory=set)
    #: (event, what the kernel does once it is read, or None), in the kernel's order
    unread: list[tuple[Any, Callable[[], None] | None]] = field(default_factory=list)
    #: events read (``follow``'s records), not yet handled
    events: deque = field(default_factory=deque)
    exited: bool = False

    def maps_whole(self, size: int) -> None:
        """Map the whole region, at address 0, as the kernel and the agent know it."""
        self.mappings = [Mapping(0, size, 0)]
        self.space = AddressSpace([Mapping(0, size, 0)])


@dataclass(eq=False, kw_only=True, repr=False)
class ForkedChild(SimProcess):
    """A process the workload forked: it maps the region and touches nothing; it may exit."""

    def __repr__(self) -> str:
        return f"ForkedChild(wp={sorted(self.wp)}, kernel maps {self.space.mappings})"


class ProcessSimulation:
    """The kernel's events part of ``dsm.sim.world.World`` (a mixin: it uses the world's nodes,
    truth, clock and schedule)."""

    # --- the kernel queues events ----------------------------------------------------------------
    def _kernel_event(self) -> None:
        """Now and then, one of the kernel's events on a random live node's process."""
        rates = self.kernel_events
        kinds = [(rates.fork, self._fork), (rates.unmap, self._unmap),
                 (rates.remap, self._remap), (rates.remove, self._remove)]
        if self.rng.random() >= sum(rate for rate, _ in kinds):
            return
        happen = self.rng.choices([do for _, do in kinds], weights=[rate for rate, _ in kinds])[0]
        happen(self.rng.choice([n for n in self.nodes.values() if n.alive]))

    def _fork(self, node: SimNode) -> None:
        child = ForkedChild(wp=set(node.wp), space=AddressSpace(node.space.copy_mappings()))
        node.unread.append((Fork(child), None))
        self.event_counters["forks"] += 1
        self._step(f"{node.name}'s workload forks a child (its Fork event queued)")

    def _some_range(self, proc: SimProcess, pages: range) -> tuple[int, int] | None:
        """An address range the kernel maps ``proc`` a page or two of ``pages`` at."""
        first = self.rng.choice(pages)
        count = self.rng.randint(1, EVENT_PAGES)
        where = proc.space.addresses_of(first * PAGE_BYTES, count * PAGE_BYTES)
        return where[0] if where else None

    def _processes_of(self, node: SimNode) -> list[SimProcess]:
        return [node, *node.runner.kernel.kernel.children]

    def _some_mapping(self, node: SimNode) -> tuple[SimProcess, int, int] | None:
        """One of ``node``'s processes, and an address range where it maps a page or two."""
        proc = self.rng.choice(self._processes_of(node))
        where = self._some_range(proc, range(self.num_pages))
        return (proc, *where) if where is not None else None

    def _unmap(self, node: SimNode) -> None:
        if (picked := self._some_mapping(node)) is None:
            return
        proc, addr, length = picked
        self._touched.update(self._pages_at(proc, addr, length))
        proc.space.unmap(addr, addr + length)
        proc.unread.append((Unmap(addr, addr + length), None))
        self.event_counters["unmaps"] += 1
        self._step(f"{node.name}: a process unmaps {addr:#x}+{length:#x} (its Unmap queued)")

    def _remap(self, node: SimNode) -> None:
        if (picked := self._some_mapping(node)) is None:
            return
        proc, addr, length = picked
        to = REMAP_BASE + self._remaps * self.num_pages * PAGE_BYTES
        self._remaps += 1
        proc.space.remap(addr, to, length)
        proc.unread.append((Remap(addr, to, length), None))
        self.event_counters["remaps"] += 1
        self._step(f"{node.name}: a process moves {addr:#x}+{length:#x} to {to:#x} (its Remap "
                   "queued)")

    def _remove(self, node: SimNode) -> None:
        """madvise on sequential pages of the workload process: the kernel waits for the agent
        to read the event, then MADV_REMOVE punches (DONTNEED keeps the pages)."""
        if self.release_pages >= self.num_pages:
            return
        where = self._some_range(node, range(self.release_pages, self.num_pages))
        if where is None:
            return
        addr, length = where
        pages = [pg for pg in self._pages_at(node, addr, length) if not self.is_release(pg)]
        punch = self.rng.random() < PUNCH_SHARE
        self.event_counters["removes"] += 1
        node.unread.append((Remove(addr, addr + length),
                            (lambda: self._punched(node, pages)) if punch else None))
        self._step(f"{node.name}: madvise({'MADV_REMOVE' if punch else 'MADV_DONTNEED'}) of "
                   f"pages {pages} (its Remove queued)")

    @staticmethod
    def _pages_at(proc: SimProcess, addr: int, length: int) -> list[int]:
        return [off // PAGE_BYTES for off, n in proc.space.region_ranges(addr, addr + length)
                for off in range(off, off + n, PAGE_BYTES)]

    def _punched(self, node: SimNode, pages: list[int]) -> None:
        """MADV_REMOVE's punch, once its event is read: a write of zeros at once where the node
        owned the page; where it held a read copy, at the directory's discard (zeros or the old
        contents may be read until then)."""
        if not node.alive:
            return
        self._step(f"{node.name}: MADV_REMOVE punches pages {pages}")
        for pg in pages:
            if node.memory.pop(pg, None) is None:
                continue  # nothing there: nothing read of it changes
            self.event_counters["punched"] += 1
            if self._touched is not None:
                self._touched.add(pg)
            if node.core.state.get(pg) in OWNED:
                self._zeroed(pg)
            else:
                self.zeros_allowed.setdefault(pg, set()).add(node.name)

    # --- the agent reads and handles them --------------------------------------------------------------
    def _has_events(self, node: SimNode) -> bool:
        return any(proc.unread or proc.events for proc in self._processes_of(node))

    def _handle_events(self, node: SimNode) -> None:
        """The agent's loop finds the node's uffds readable: it reads every process's events and
        handles them in order (handling may read more: an ioctl's EAGAIN)."""
        self._finish(node)
        kernel = node.runner.kernel.kernel
        while self._has_events(node):
            for proc in self._processes_of(node):
                kernel.read_events(proc)
            self._handle_read_events(node)

    def _handle_read_events(self, node: SimNode) -> None:
        """Handle the events the agent has read already (at an ioctl's EAGAIN), before a fault
        read after them: the agent handles each process's in the order it read them."""
        kernel = node.runner.kernel.kernel
        while any(proc.events for proc in self._processes_of(node)):
            for proc in self._processes_of(node):
                while proc.events and proc in self._processes_of(node):
                    record = proc.events.popleft()
                    self._step(f"{node.name}'s agent handles {record}")
                    self._finish(node)
                    if type(record) is Forked:
                        child = record.uffd
                        child.mappings = record.mappings
                        kernel.children.append(child)
                        node.process_events.forked(child)
                    else:
                        node.process_events.handle(proc, record, self.clock)

    def _run_event_timers(self) -> None:
        """After a step: the madvise calls whose events were read go on (their punches), then
        the agents' removal timers due now (between operations) run, and every punched page
        they told apart must have been discarded."""
        while self.madvise_going_on:
            self.madvise_going_on.pop(0)()
        for page, punchers in list(self.zeros_allowed.items()):
            for name in punchers:
                node = self.nodes[name]
                if node.alive and node.deferred is None and page not in node.memory \
                        and node.core.state.get(page) in OWNED:
                    # it owns its punched read copy now (an upgrade moves no data): the hole,
                    # zeros, is the only copy
                    self._zeroed(page)
                    break
        for node in self.nodes.values():
            deadline = node.process_events.next_deadline()
            if not node.alive or node.deferred is not None or deadline is None \
                    or deadline > self.clock:
                continue
            settled = node.process_events.run_timers(self.clock)
            if self._touched is not None:
                self._touched.update(settled)
            # a Remove read meanwhile (at an ioctl's EAGAIN) has not been handled yet: its own
            # pages are told apart at its own deadline
            later = {pg for proc in self._processes_of(node) for record in proc.events
                     if type(record) is Removed
                     for off, length in record.ranges
                     for pg in range(off // PAGE_BYTES, (off + length) // PAGE_BYTES)}
            for pg in set(settled) - later:
                if pg in node.core.state and pg not in node.memory:
                    raise SimulationFailure(
                        f"{node.name} still holds page {pg} ({node.core.state[pg].value}) with a "
                        "hole after its Remove was told apart: MADV_REMOVE's punch was not "
                        "discarded")
                if pg not in self.discarding and pg in self.zeros_allowed:
                    self.zeros_allowed[pg].discard(node.name)  # its punch, told apart
                    if not self.zeros_allowed[pg]:
                        del self.zeros_allowed[pg]

    def _next_event_deadline(self) -> float | None:
        deadlines = [d for n in self.nodes.values() if n.alive
                     if (d := n.process_events.next_deadline()) is not None]
        return min(deadlines, default=None)

    # --- the truth model ----------------------------------------------------------------------------------
    def _zeroed(self, page: int) -> None:
        """A write of zeros to the whole of ``page``."""
        for loc in range(page * SLOTS_PER_PAGE, (page + 1) * SLOTS_PER_PAGE):
            self.truth[loc] = 0
            self.lost_locations.discard(loc)
        self.zeros_allowed.pop(page, None)
        self.discarding.pop(page, None)

    def _discarded(self, page: int) -> None:
        """The directory has discarded ``page`` (every copy invalidated): zeros everywhere."""
        self._step(f"the directory has discarded page {page}: zeros from now on")
        self.event_counters["discarded"] += 1
        self._zeroed(page)

    def _discards_died_with(self, node: SimNode) -> None:
        """``node`` died: the pages it asked the directory to discard, not discarded yet, may
        be lost (the directory may still take the dead node for their owner)."""
        for page, discarder in self.discarding.items():
            if discarder == node.name:
                self.lost_locations.update(range(page * SLOTS_PER_PAGE,
                                                 (page + 1) * SLOTS_PER_PAGE))

    def _check_read_copies_protected(self, node: SimNode, pages) -> None:
        """A read copy is write-protected in every process of its node that maps it (a write
        there must fault), once the agent is between operations."""
        if node.deferred is not None or self._has_events(node):
            return
        for pg in pages:
            st = node.core.state.get(pg)
            if st is None or not st.protected or pg not in node.memory:
                continue
            for proc in self._processes_of(node):
                if proc.space.covers(pg * PAGE_BYTES) and pg not in proc.wp:
                    who = "its workload process" if proc is node else "a forked child"
                    raise SimulationFailure(f"{node.name} holds a read copy of page {pg} that "
                                            f"{who} can write without a fault")
