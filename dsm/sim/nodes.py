"""The simulated nodes (``dsm.sim.world``): each one's memory, write protection and threads, and
its agent carrying out the core's actions on them as the real agent carries them out on the
memfd and the uffds (installs, upgrades, protections, punches, wakes, poisons; a send goes out
on the network, ``dsm.sim.network``).

The agent may be descheduled after a send (``DEFER_AFTER_SEND``): the receiver may act on the
message before the agent carries out the rest, and this node's threads go on with what its
memory holds meanwhile. The workload threads' reads and writes touch the memory directly
(memory steps are atomic here), each read checked against the last completed write (the world's
``truth``), or fault into the core; a node may also hand pages back now and then.

The world (``dsm.sim.world``) builds the nodes, schedules their steps and checks the invariants;
the release pages' twins, diffs and the threads' locks and barriers are in ``dsm.sim.release``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dsm.core import actions as a
from dsm.sim import programs
from dsm.sim import release as rc
from dsm.sim.model import PAGE_BYTES, SLOT, SLOT_BYTES, SLOTS_PER_PAGE, SimulationFailure
from dsm.uffd.events import Access, FaultKind

if TYPE_CHECKING:
    from dsm.core.node import NodeCore

#: how often the agent is descheduled after a send, the rest of its actions pending
DEFER_AFTER_SEND = 0.3


@dataclass(eq=False)
class Thread:
    node: "SimNode"
    tid: int
    #: (r|w, location, value to write), or a lock's or barrier's (kind, lock or phase, 0)
    ops: list[tuple[str, int, int]]
    next_op: int = 0
    blocked_on: int | None = None  #: the page it faulted on
    #: the lock or barrier request it waits for the answer to (its kind)
    waits_for: str | None = None

    @property
    def done(self) -> bool:
        return self.next_op >= len(self.ops)

    @property
    def runnable(self) -> bool:
        return not self.done and self.blocked_on is None and self.waits_for is None


@dataclass(eq=False)
class SimNode:
    """A node: its core, its memory (page -> bytes; absent is a hole), the pages write-protected
    in its one workload process, its threads."""

    name: str
    core: NodeCore
    memory: dict[int, bytearray] = field(default_factory=dict)
    wp: set[int] = field(default_factory=set)
    poisoned: set[int] = field(default_factory=set)
    threads: list[Thread] = field(default_factory=list)
    alive: bool = True
    #: actions the agent has yet to carry out after a send: the receiver may act on the
    #: message first, and this node's threads go on with what its memory holds meanwhile
    deferred: list = field(default_factory=list)
    #: runs punched with their contents kept, for the sends that follow (``Punch.keep``)
    taken: dict = field(default_factory=dict)
    #: release pages' twins: their bytes at their first write since the last release
    twins: dict[int, bytes] = field(default_factory=dict)
    #: lock and barrier requests sent, by request id: the thread waiting for the answer
    sync_waiters: dict[int, Thread] = field(default_factory=dict)
    next_req: int = 1
    #: release locations written since the last release, and those of releases not answered
    #: yet (by request id): the writes a death may lose
    unreleased: set[int] = field(default_factory=set)
    releasing: dict[int, tuple[set[int], set[int]]] = field(default_factory=dict)
    #: release pages twinned since the last release (their Dirtied may be at the directory,
    #: which loses them with this node unless their Diff came), and those of each release
    #: not answered yet (with ``releasing``)
    twinned: set[int] = field(default_factory=set)
    #: what its agent does with each page message (``dsm.core.inputs``, as the real agent)
    handlers: dict = field(default_factory=dict)


class NodeSimulation:
    """The nodes' part of ``dsm.sim.world.World`` (a mixin: it uses the world's network, truth
    and schedule)."""

    # --- the kernel and the memory, as the agent would carry the actions out ------------------------
    def _carry_out(self, node: SimNode, acts: list) -> None:
        for i, act in enumerate(acts):
            if isinstance(act, a.Send):
                data = act.data
                if act.pages is not None:
                    data = node.taken.pop(act.pages, None)
                    if data is None:
                        data = self._read(node, *act.pages)
                dst = (act.peer[0] if act.peer is not None
                       else self._shard_names[0] if isinstance(act.message, rc.SYNC_MESSAGES)
                       else self._shard_of(act.message.page))
                self._send(node.name, dst, act.message, bytes(data) if data is not None else None)
                if i + 1 < len(acts) and self.rng.random() < DEFER_AFTER_SEND:
                    node.deferred = list(acts[i + 1:])
                    return
            elif isinstance(act, rc.RELEASE_ACTIONS):
                sent = self._release_action(node, act)
                if sent and i + 1 < len(acts) and self.rng.random() < DEFER_AFTER_SEND:
                    node.deferred = list(acts[i + 1:])
                    return
            elif isinstance(act, a.Install):
                for i in range(act.count):
                    q = act.first + i
                    chunk = (act.data[i * PAGE_BYTES:(i + 1) * PAGE_BYTES] if act.data is not None
                             else bytes(PAGE_BYTES))
                    node.memory[q] = bytearray(chunk)
                    if not act.writable:
                        node.wp.add(q)
                    elif act.installer is not None:  # UFFDIO_COPY writable: no marker left
                        node.wp.discard(q)
                self._wake(node, [w.thread_id for w in act.wake])
            elif isinstance(act, a.Upgrade):
                pages = set(range(act.first, act.first + act.count))
                node.wp -= pages
                self._wake(node, [t.tid for t in node.threads if t.blocked_on in pages])
            elif isinstance(act, a.Protect):
                node.wp.update(range(act.first, act.first + act.count))
            elif isinstance(act, a.Unprotect):
                node.wp.discard(act.page)
                self._wake(node, [t.tid for t in node.threads if t.blocked_on == act.page])
            elif isinstance(act, a.Punch):
                if act.keep:
                    node.taken[act.first, act.count] = self._read(node, act.first, act.count)
                for q in range(act.first, act.first + act.count):
                    node.memory.pop(q, None)  # write-protect markers stay (shmem keeps them)
            elif isinstance(act, a.Wake):
                self._wake(node, [t.tid for t in node.threads if t.blocked_on == act.addr])
            elif isinstance(act, a.Poison):
                node.poisoned.add(act.waiter.page)
                self._wake(node, [act.waiter.thread_id])
            elif isinstance(act, a.Kill):
                raise SimulationFailure(f"{node.name} killed a waiter: {act.why}")

    @staticmethod
    def _read(node: SimNode, first: int, count: int) -> bytes:
        return b"".join(bytes(node.memory.get(q, bytes(PAGE_BYTES)))
                        for q in range(first, first + count))

    def _finish(self, node: SimNode) -> None:
        """The agent carries out what it had left to do (it may be descheduled again)."""
        while node.deferred:
            acts, node.deferred = node.deferred, []
            self._carry_out(node, acts)

    def _wake(self, node: SimNode, tids: list[int]) -> None:
        for t in node.threads:
            if t.tid in tids:
                t.blocked_on = None

    # --- the workload --------------------------------------------------------------------------------
    def _run_op(self, t: Thread) -> None:
        node = t.node
        kind, loc, value = t.ops[t.next_op]
        if kind in programs.SYNC_OPS:
            self._sync(t, kind, loc)
            return
        page, slot = divmod(loc, SLOTS_PER_PAGE)
        self._touched.add(page)
        self._step(f"{node.name}/t{t.tid} {kind} loc {loc} (page {page})"
                   + (f" := {value}" if kind == "w" else ""))
        if page in node.poisoned:  # SIGBUS: the access fails, loudly
            if loc not in self.lost_locations and page not in self.maybe_lost_release_pages:
                raise SimulationFailure(f"{node.name}: page {page} poisoned but location {loc} "
                                        "was not lost")
            t.next_op += 1
            return
        rw = Access.WRITE if kind == "w" else Access.READ
        if page not in node.memory:
            fault = FaultKind.MISSING
        elif kind == "w" and page in node.wp:
            fault = FaultKind.WRITE_PROTECTED
        else:
            mem = node.memory[page]
            if kind == "w":
                SLOT.pack_into(mem, slot * SLOT_BYTES, value)
                self.truth[loc] = value
                self.lost_locations.discard(loc)
                if self.is_release(page):
                    self._wrote_release(node, loc, value)
            else:
                got = SLOT.unpack_from(mem, slot * SLOT_BYTES)[0]
                if got != self.truth[loc] and got not in self.after_death.get(loc, ()):
                    # on a release page the program is data-race free: the last write in the
                    # simulation's order is the last one in happens-before order (DRF-SC)
                    order = " (happens-before: a DRF program)" if self.is_release(page) else ""
                    raise SimulationFailure(f"{node.name}/t{t.tid} read {got} at location {loc}; "
                                            f"the last write{order} was {self.truth[loc]}")
            t.next_op += 1
            return
        t.blocked_on = page
        self._finish(node)  # the fault waits in the uffd for the agent's loop
        acts = node.core.fault(node, page, page, rw, fault, t.tid, self.clock,
                               resident=page in node.memory)
        self._carry_out(node, acts)

    def _give_back(self) -> None:
        """A node hands a page back, as at an unmap or a leave (owned ones with their contents;
        read copies too under a direct manager: the last one must not vanish)."""
        holders = [n for n in self.nodes.values() if n.alive and n.core.state]
        if not holders:
            return
        node = self.rng.choice(holders)
        page = self.rng.choice(sorted(node.core.state))
        self._step(f"{node.name} gives back page {page}")
        self._touched.add(page)
        self._finish(node)
        self._carry_out(node, node.core.give_back([page]))
