"""The node's workload processes as the agent serves them: which are attached, the kernel's
userfaultfd events on their uffds, and their exits.

A process attaches through the Unix socket (``dsm/agent/clients.py`` hands its uffd over) and maps
the whole region at the base; a Fork event adopts a child's uffd, Remap and Unmap events move or
drop parts of a process's mapping (``dsm/agent/processes.py``), a Remove event (madvise) may have
discarded pages. What each event means for the node's pages is the node core's decision
(``dsm/core/node.py``); this module feeds it the events and gives back the pages no local process
maps any more. A process's pidfd tells when it exits; so does the pidfd of a process that used
locks or barriers, whose exit the directory is told (``Departed``).

Two events cannot be finished when they are read, and the agent's loop must not block on them:
a Remove's pages are told apart ``REMOVE_SETTLE_S`` later, and a forked child's pid is looked for
every ``FORK_LOOKUP_INTERVAL_S``; ``next_timer_s`` and ``run_timers`` are the loop's side of that.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from dsm import protocol as p
from dsm.agent.memory import NodeMemory
from dsm.agent.processes import (
    Mapping,
    WorkloadProcess,
    children_of,
    maps_file,
    thread_group_of,
)
from dsm.core.kernel import KernelCalls
from dsm.core.node import NodeCore
from dsm.core.stats import NodeStats
from dsm.layout import Layout
from dsm.uffd import (
    FaultKind,
    Fork,
    Pagefault,
    ProcessGone,
    Remap,
    Remove,
    UffdError,
    Uffd,
    Unmap,
)

log = logging.getLogger(__name__)

#: how long after a Remove event its pages are checked for MADV_REMOVE's hole punch (DONTNEED
#: never punches): the madvise caller punches right after the agent has read the event
REMOVE_SETTLE_S = 0.02
#: how long after a Remove event a hole in one of its pages is still explained by it (its madvise
#: caller may be descheduled between the event and the punch): past it, a hole in a page the node
#: holds is an invariant violation, never a guessed discard
REMOVE_EXPLAINS_S = 1.0
#: a forked child appears under /proc a moment after its Fork event is read (the parent is still
#: in fork() then): how often, and for how long, to look for it before relying on its first fault
FORK_LOOKUP_INTERVAL_S = 0.001
FORK_LOOKUP_TIMEOUT_S = 1.0


@dataclass
class Removal:
    """Pages a Remove event of ``proc`` covered, to be told apart at ``deadline``: punched
    (MADV_REMOVE: discarded cluster-wide) or kept (DONTNEED)."""

    proc: WorkloadProcess
    pages: set[int]
    deadline: float


class Workloads:
    def __init__(self, node: str, layout: Layout, procs: dict[int, WorkloadProcess],
                 poller: zmq.Poller, memory: NodeMemory, kernel: KernelCalls, core: NodeCore,
                 stats: NodeStats,
                 carry_out: Callable[[list], None], send: Callable[[p.Message], None]):
        self.node = node
        self.layout = layout
        self.page_size = layout.page_size
        self.procs = procs  #: uffd fd -> process, the agent's (NodeMemory reads it too)
        self.poller = poller  #: the agent's: every uffd and pidfd of this module is polled there
        self.memory = memory
        #: ioctls on the uffds, each answer handled as the simulator handles it
        self.kernel = kernel
        self.core = core
        self.state = core.state  # page -> PageState, for the pages this node holds
        self.stats = stats
        #: how the node core's decisions are done (``Messaging.carry_out``)
        self._carry_out = carry_out
        self._send = send  #: to the directory
        #: pidfd -> the attached process it tells the exit of
        self._pidfds: dict[int, WorkloadProcess] = {}
        #: pidfds of processes that used locks or barriers: their exit is told to the directory
        self._departure_pidfds: dict[int, int] = {}
        #: Remove events whose pages are not yet told apart, oldest first
        self._removals: list[Removal] = []
        #: pages Remove events named, until when a hole in them is explained (oldest first)
        self._explains: dict[int, float] = {}
        #: forked children whose pid is not known yet -> until when to look for it
        self._unnamed_children: dict[WorkloadProcess, float] = {}
        self._event_handlers: dict[type, Callable[[WorkloadProcess, Any], None]] = {
            Pagefault: self._on_pagefault,
            Fork: self._on_fork,
            Remap: self._on_remap,
            Remove: self._on_remove,
            Unmap: self._on_unmap,
        }

    # --- what the loop polls -----------------------------------------------------------------------
    def owns(self, fd: Any) -> bool:
        return fd in self.procs or fd in self._departure_pidfds or fd in self._pidfds

    def handle(self, fd: int) -> None:
        """``fd`` polled readable: a uffd's events, or a process's exit."""
        if fd in self.procs:
            proc = self.procs[fd]
            try:
                proc.events.extend(proc.uffd.read_events())
            except UffdError as exc:
                log.warning("reading events of pid %s failed: %s", proc.pid, exc)
            self.handle_events(proc)
        elif fd in self._departure_pidfds:
            pid = self._departure_pidfds.pop(fd)
            self.poller.unregister(fd)
            os.close(fd)
            self._send(p.Departed(f"{self.node}:{pid}"))
        else:
            proc = self._pidfds[fd]
            log.info("workload process %s exited", proc.pid)
            self.forget(proc, give_back=True)

    def next_timer_s(self) -> float:
        """How long until a Remove is to be told apart or a forked child looked for (inf: no
        timer)."""
        due_s = math.inf
        if self._unnamed_children:
            due_s = FORK_LOOKUP_INTERVAL_S
        if self._removals:
            due_s = min(due_s, self._removals[0].deadline - time.monotonic())
        return due_s

    def run_timers(self, now: float) -> None:
        while self._removals and self._removals[0].deadline <= now:
            self._settle_removal(self._removals.pop(0))
        if self._unnamed_children:
            self._name_children(now)

    def handle_shelved(self) -> None:
        """Handle the events read while an ioctl was retried (NodeMemory.shelved), now that the
        operation is over: their uffd may never poll readable again (a Fork read so would leave
        its child unadopted, its faults unserved). Handling them may shelve more: loop."""
        shelved = self.memory.shelved
        while shelved:
            proc = next(iter(shelved))
            del shelved[proc]
            self.handle_events(proc)

    # --- uffd events -------------------------------------------------------------------------------
    def handle_events(self, proc: WorkloadProcess) -> None:
        while proc.events and not proc.uffd.closed:
            event = proc.events.popleft()
            try:
                self._event_handlers[type(event)](proc, event)
            except ProcessGone:
                self.forget(proc, give_back=True)
                return

    def _on_pagefault(self, proc: WorkloadProcess, ev: Pagefault) -> None:
        now = time.monotonic()
        if proc.pid is None and ev.thread_id:
            pid = thread_group_of(ev.thread_id)
            if pid is not None:
                self._name_process(proc, pid)
        page_addr = ev.addr - ev.addr % self.page_size
        offset = proc.offset_of(page_addr)
        if offset is None:
            log.error("fault at %#x in pid %s outside the region: waking it", ev.addr, proc.pid)
            self.kernel.wake(proc, page_addr)
            return
        page = offset // self.page_size
        resident = True
        if ev.kind is FaultKind.MISSING and page in self.state and page not in self.core.pending:
            # a page held here, faulted as missing: raised before it arrived, or punched. Only
            # a Remove event of this node's processes may have punched it: tell those apart
            # now; the core takes any other hole for the invariant violation it is
            if self._removals:
                self._protect_kept(page)  # a read copy DONTNEED unprotected, before the wake
            resident = self.memory.holds(page)
            if not resident and self._removed_recently(page, now):
                self._discard([page])  # punched by MADV_REMOVE: zeros cluster-wide
                resident = True  # no longer held: the core asks for it
        self._carry_out(self.core.fault(proc, page_addr, page, ev.rw, ev.kind, ev.thread_id, now,
                                        resident))

    def _on_fork(self, proc: WorkloadProcess, ev: Fork) -> None:
        """Adopt the child's uffd. Its page tables are the parent's at the fork, with their
        write protection, but a read copy installed since (while this event waited, read in an
        ioctl's retry) is not protected there: protect every read copy on the child's uffd."""
        child = proc.forked(ev.uffd)
        self.add(child)
        self._unnamed_children[child] = time.monotonic() + FORK_LOOKUP_TIMEOUT_S
        self._name_children(time.monotonic())
        self.kernel.protect_read_copies(child, self.core.read_copies())
        log.info("pid %s forked: adopted the child's uffd %d (pid %s)", proc.pid,
                 ev.uffd.fileno(), child.pid)

    def _fork_candidates(self, child: WorkloadProcess) -> list[int]:
        """The pids ``child`` may have: children of its parent that map the node's memfd (not,
        say, an exec'd helper) and that are not a known workload process."""
        parent = child.parent.pid if child.parent is not None else None
        if parent is None:
            return []
        known = {pr.pid for pr in self.procs.values()} | {os.getpid()}
        memfd = os.fstat(self.memory.memfd)
        return [c for c in children_of(parent) if c not in known and maps_file(c, memfd)]

    def _name_children(self, now: float) -> None:
        """Learn forked children's pids (to see them exit, and to kill them when the node is cut
        off, even if they never fault). One unknown candidate among its parent's children is the
        child; with several (threads forking at once), its first fault names it instead."""
        for child in list(self._unnamed_children):
            if child.pid is None:
                candidates = self._fork_candidates(child)
                if len(candidates) == 1:
                    self._name_process(child, candidates[0])
            if child.pid is not None:
                self._unnamed_children.pop(child, None)
            elif now >= self._unnamed_children[child]:
                log.info("the pid of a child forked by pid %s was not found within %.1f s: it is "
                         "learned at its first fault", child.parent.pid if child.parent else None,
                         FORK_LOOKUP_TIMEOUT_S)
                del self._unnamed_children[child]

    def _name_process(self, proc: WorkloadProcess, pid: int) -> None:
        """Learn ``proc``'s pid and watch for its exit."""
        proc.watch_pid(pid)
        self._unnamed_children.pop(proc, None)
        if proc.pidfd is not None:
            self._pidfds[proc.pidfd] = proc
            self.poller.register(proc.pidfd, zmq.POLLIN)

    def _on_remap(self, proc: WorkloadProcess, ev: Remap) -> None:
        proc.remap(ev.from_, ev.to, ev.len)
        self.stats.count("remaps")

    def _on_unmap(self, proc: WorkloadProcess, ev: Unmap) -> None:
        removed = proc.unmap(ev.start, ev.end)
        self.stats.count("unmaps")
        self._give_back_unmapped(removed)

    def _on_remove(self, proc: WorkloadProcess, ev: Remove) -> None:
        """madvise(MADV_REMOVE) punches the memfd right after this event is read, DONTNEED
        does not (on shared memory it keeps the data); the event does not say which. Without
        blocking the loop, check the pages the node holds REMOVE_SETTLE_S later (or at a fault on
        one before that): those the memfd no longer holds were removed."""
        self.stats.count("removes")
        pages = self._held_pages(proc.region_ranges(ev.start, ev.end))
        if pages:
            now = time.monotonic()
            self._removals.append(Removal(proc, pages, now + REMOVE_SETTLE_S))
            for pg in pages:
                self._explains.pop(pg, None)  # in order of expiry
                self._explains[pg] = now + REMOVE_EXPLAINS_S

    def _protect_kept(self, page: int) -> None:
        """A fault on a page of a Remove event not told apart yet, which the memfd still holds:
        if it is a read copy, DONTNEED may have zapped its protection with its entry in the
        removing process; protect it there again before the fault is let through."""
        st = self.state.get(page)
        if st is None or not st.protected:
            return
        for removal in self._removals:
            if page in removal.pages and not removal.proc.uffd.closed:
                self.kernel.writeprotect(removal.proc, page, 1, wp=True)

    def _removed_recently(self, page: int, now: float) -> bool:
        """Whether a Remove event of this node's processes named ``page`` within
        REMOVE_EXPLAINS_S (its hole is MADV_REMOVE's)."""
        while self._explains and next(iter(self._explains.values())) < now:
            self._explains.pop(next(iter(self._explains)))
        return page in self._explains or any(page in r.pages for r in self._removals)

    def _settle_removal(self, removal: Removal) -> None:
        gone = [pg for pg in removal.pages if pg in self.state and not self.memory.holds(pg)]
        if gone:
            self._discard(gone)
        if removal.proc.uffd.closed:
            return
        for pg in removal.pages:  # DONTNEED: the pages stay; keep read copies protected
            st = self.state.get(pg)
            if st is not None and st.protected:
                self.kernel.writeprotect(removal.proc, pg, 1, wp=True)

    # --- giving pages back -------------------------------------------------------------------------
    def _held_pages(self, ranges: list[tuple[int, int]]) -> set[int]:
        """The pages this node holds among the (region offset, length) ``ranges``."""
        pages = set()
        for offset, length in ranges:
            first = offset // self.page_size
            last = (offset + length - 1) // self.page_size
            pages.update(pg for pg in range(first, last + 1) if pg in self.state)
        return pages

    def _discard(self, pages: list[int]) -> None:
        for removal in self._removals:  # told apart already
            removal.pages.difference_update(pages)
        self._carry_out(self.core.discard(pages))

    def _give_back_unmapped(self, ranges: list[tuple[int, int]]) -> None:
        """Hand back the pages of ``ranges`` that no local process maps any more (not those a
        request is out for): owned ones with their contents."""
        unmapped = [
            pg for pg in self._held_pages(ranges)
            if not any(pr.covers(pg * self.page_size) for pr in self.procs.values())
        ]
        self._carry_out(self.core.give_back(unmapped))

    # --- attaching and leaving ---------------------------------------------------------------------
    def register(self, pid: int, uffd: Uffd) -> None:
        """A workload process attached: serve its faults; it maps the whole region at the base."""
        proc = WorkloadProcess(uffd, pid, [Mapping(self.layout.base, self.layout.size, 0)])
        self.add(proc)
        self.kernel.protect_read_copies(proc, self.core.read_copies())

    def add(self, proc: WorkloadProcess) -> None:
        self.procs[proc.uffd.fileno()] = proc
        self.poller.register(proc.uffd.fileno(), zmq.POLLIN)
        if proc.pidfd is not None:
            self._pidfds[proc.pidfd] = proc
            self.poller.register(proc.pidfd, zmq.POLLIN)

    def forget(self, proc: WorkloadProcess, give_back: bool) -> None:
        """``proc`` exited (or the agent stops): stop serving it; with ``give_back``, hand back
        the pages no other local process maps."""
        fd = proc.uffd.fileno() if not proc.uffd.closed else None
        if fd is not None and fd in self.procs:
            self.poller.unregister(fd)
            del self.procs[fd]
        if proc.pidfd is not None and proc.pidfd in self._pidfds:
            self.poller.unregister(proc.pidfd)
            del self._pidfds[proc.pidfd]
        ranges = [(m.offset, m.length) for m in proc.mappings]
        proc.mappings = []
        proc.close()
        self.core.process_gone(proc)  # its waiters and read-ahead streams
        self.memory.shelved.pop(proc, None)
        self._unnamed_children.pop(proc, None)
        if give_back:
            self._give_back_unmapped(ranges)

    def close(self) -> None:
        """Stop serving every process, handing nothing back (and stop watching for the exits
        of those that used locks or barriers: the directory learns of them with this node's
        end)."""
        for proc in list(self.procs.values()):
            self.forget(proc, give_back=False)
        for pidfd in list(self._departure_pidfds):
            del self._departure_pidfds[pidfd]
            self.poller.unregister(pidfd)
            os.close(pidfd)

    def watch_departures(self, pid: int) -> None:
        """``pid`` uses locks or barriers: tell the directory when it exits."""
        if pid in self._departure_pidfds.values():
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._send(p.Departed(f"{self.node}:{pid}"))
            return
        self._departure_pidfds[pidfd] = pid
        self.poller.register(pidfd, zmq.POLLIN)

    def kill_all(self, sig: int) -> None:
        """Send ``sig`` to every workload process of the node: the attached ones and their
        forked children, those that never faulted included (a child whose pid is not known yet
        is looked up among its parent's children now)."""
        for proc in list(self.procs.values()):
            if proc.pidfd is not None:  # safe from pid reuse
                try:
                    signal.pidfd_send_signal(proc.pidfd, sig)
                except ProcessLookupError:
                    pass
                continue
            pids = [proc.pid] if proc.pid else self._fork_candidates(proc)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
