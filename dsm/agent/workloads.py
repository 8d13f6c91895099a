"""The node's workload processes as the agent serves them: which are attached, the kernel's
userfaultfd events on their uffds, and their exits.

A process attaches through the Unix socket (``dsm/agent/clients.py`` hands its uffd over) and maps
the whole region at the base; a Fork event adopts a child's uffd, Remap and Unmap events move or
drop parts of a process's mapping (applied as they are read: ``dsm.core.events.follow``), a
Remove event (madvise) may have discarded pages. What each event means for the node's pages is
decided without I/O in ``dsm/core/events.py`` (``ProcessEvents``, which the simulator runs too)
and the node core (``dsm/core/node.py``); this module reads the events, keeps the pidfds, the
/proc lookups and the poller, and feeds them in. A process's pidfd tells when it exits; so does
the pidfd of a process that used locks or barriers, whose exit the directory is told
(``Departed``).

Two events cannot be finished when they are read, and the agent's loop must not block on them:
a Remove's pages are told apart ``REMOVE_SETTLE_S`` later (``ProcessEvents``' timer), and a forked
child's pid is looked for every ``FORK_LOOKUP_INTERVAL_S``; ``next_timer_s`` and ``run_timers``
are the loop's side of that.
"""

from __future__ import annotations

import logging
import math
import os
import select
import signal
import time
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
from dsm.core.events import Forked, ProcessEvents, follow
from dsm.core.kernel import KernelCalls
from dsm.core.node import NodeCore
from dsm.core.stats import NodeStats
from dsm.layout import Layout
from dsm.uffd import Pagefault, ProcessGone, UffdError, Uffd

log = logging.getLogger(__name__)

#: a forked child appears under /proc a moment after its Fork event is read (the parent is still
#: in fork() then): how often, and for how long, to look for it before relying on its first fault
FORK_LOOKUP_INTERVAL_S = 0.001
FORK_LOOKUP_TIMEOUT_S = 1.0


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
        #: what each event means for the node's pages (no I/O: the simulator runs it too)
        self.events = ProcessEvents(core, kernel, memory.holds, lambda: self.procs.values(),
                                    carry_out)
        #: forked children whose pid is not known yet -> until when to look for it
        self._unnamed_children: dict[WorkloadProcess, float] = {}
        #: the loop's own events; the others are ``ProcessEvents``' (``dsm.core.events``)
        self._event_handlers: dict[type, Callable[[WorkloadProcess, Any], None]] = {
            Pagefault: self._on_pagefault,
            Forked: self._on_fork,
        }

    # --- what the loop polls -----------------------------------------------------------------------
    def owns(self, fd: Any) -> bool:
        return fd in self.procs or fd in self._departure_pidfds or fd in self._pidfds

    def handle(self, fd: int) -> None:
        """``fd`` polled readable: a uffd's events, or a process's exit."""
        if fd in self.procs:
            proc = self.procs[fd]
            try:
                proc.events.extend(follow(proc, proc.uffd.read_events()))
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
        deadline = self.events.next_deadline()
        if deadline is not None:
            due_s = min(due_s, deadline - time.monotonic())
        return due_s

    def run_timers(self, now: float) -> None:
        self.events.run_timers(now)
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
                handler = self._event_handlers.get(type(event))
                if handler is not None:
                    handler(proc, event)
                else:
                    self.events.handle(proc, event, time.monotonic())
            except ProcessGone:
                self.forget(proc, give_back=True)
                return

    def _on_pagefault(self, proc: WorkloadProcess, ev: Pagefault) -> None:
        if proc.pid is None and ev.thread_id:
            pid = thread_group_of(ev.thread_id)
            if pid is not None:
                self._name_process(proc, pid)
        self.events.fault(proc, ev.addr, ev.rw, ev.kind, ev.thread_id, time.monotonic())

    def _on_fork(self, proc: WorkloadProcess, ev: Forked) -> None:
        """Adopt the child's uffd (its read copies protected: ``ProcessEvents.forked``) and
        look for its pid."""
        child = proc.forked(ev.uffd, ev.mappings)
        self.add(child)
        self._unnamed_children[child] = time.monotonic() + FORK_LOOKUP_TIMEOUT_S
        self._name_children(time.monotonic())
        self.events.forked(child)
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
        self.memory.shelved.pop(proc, None)
        self._unnamed_children.pop(proc, None)
        self.events.gone(proc, ranges, give_back)  # its waiters, read-ahead streams, pages

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

    def await_exits(self, timeout_s: float) -> None:
        """Until every workload process with a pidfd has exited, for at most ``timeout_s``."""
        pidfds = [proc.pidfd for proc in self.procs.values() if proc.pidfd is not None]
        deadline = time.monotonic() + timeout_s
        while pidfds and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(pidfds, [], [], left)
            pidfds = [fd for fd in pidfds if fd not in ready]

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
