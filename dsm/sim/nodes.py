"""The simulated nodes (``dsm.sim.world``): each one's memory, write protection and threads, and
its agent carrying out the core's actions on them with the real agent's runner
(``dsm.core.carryout``) over the model's kernel and network (``dsm.sim.agent``: the memory and
the processes, which fail calls now and then with ``Faults``; a send goes out on the network,
``dsm.sim.network``).

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
from typing import TYPE_CHECKING, Callable

from dsm.core.carryout import ActionRunner, Carrying
from dsm.core.events import ProcessEvents
from dsm.core.inbox import Inbox
from dsm.core.kernel import KernelCalls
from dsm.errors import DsmError
from dsm.sim import programs
from dsm.sim import release as rc
from dsm.sim.agent import SimKernel, SimTransport, SimTwins
from dsm.sim.processes import SimProcess
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
    blocked_at: int | None = None  #: the address it faulted at (a wake there lets it retry)
    #: the lock or barrier request it waits for the answer to (its kind)
    waits_for: str | None = None

    @property
    def done(self) -> bool:
        return self.next_op >= len(self.ops)

    @property
    def runnable(self) -> bool:
        return not self.done and self.blocked_on is None and self.waits_for is None


@dataclass(eq=False)
class SimNode(SimProcess):
    """A node: its core, its memory (page -> bytes; absent is a hole), its threads; it is its
    workload process too (``SimProcess``: its mappings, the pages write-protected in it, its
    events)."""

    name: str
    core: NodeCore
    memory: dict[int, bytearray] = field(default_factory=dict)
    poisoned: set[int] = field(default_factory=set)
    threads: list[Thread] = field(default_factory=list)
    alive: bool = True
    #: actions the agent has yet to carry out after a send: the receiver may act on the
    #: message first, and this node's threads go on with what its memory holds meanwhile
    deferred: Carrying | None = None
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
    #: (thread, lock) -> the pages the grant of the thread's acquire of the lock (guards)
    #: dirtied at their home, until its release (with ``releasing`` from then until answered)
    carried_by_lock: dict[tuple[int, int], set[int]] = field(default_factory=dict)
    #: what its agent does with each message that reaches it (``dsm.core.inbox``, the real
    #: agent's dispatch)
    inbox: Inbox | None = None
    #: what the inbox asked for while it takes a message: the core's actions and the model's
    #: (``Resume``), carried out in order once it is done (``_take``)
    taken: list = field(default_factory=list)
    #: how its agent carries out the core's actions (``dsm.core.carryout``, as the real agent)
    runner: ActionRunner | None = None
    #: what its agent does about its processes' faults and events (``dsm.core.events``, as the
    #: real agent)
    process_events: ProcessEvents | None = None


class NodeSimulation:
    """The nodes' part of ``dsm.sim.world.World`` (a mixin: it uses the world's network, truth
    and schedule)."""

    # --- the agent: the shared runner over the model's kernel and network -------------------------
    def _wire_agent(self, node: SimNode) -> None:
        """The node's agent: the messages that reach it through the real agent's inbox
        (``dsm.core.inbox``), the core's actions through the real agent's runner
        (``dsm.core.carryout``), over the model's kernel, twins and network (``dsm.sim.agent``)."""
        faults = self.agent_faults
        node.inbox = Inbox(node.core, self.layout, now=lambda: self.clock,
                           reachable=lambda fetch: lambda addr: not faults.unreachable(),
                           carry_out=node.taken.extend,
                           answer=lambda msg: self._node_answered(node, msg),
                           cut_off=lambda why: self._node_cut_off(node, why),
                           clock_sample=lambda t0_s, clock_ns: None)  # (only a trace uses it)
        kernel = SimKernel(self, node, faults)
        calls = KernelCalls(kernel)
        node.runner = ActionRunner(calls, SimTwins(kernel), SimTransport(self, node, faults),
                                   model_actions={rc.Resume: lambda act: self._resume(node, act)})

        def carry_out(acts: list) -> None:  # (the agent's are done at once: no pause between)
            self._finish(node)
            self._carry_out(node, acts)

        node.process_events = ProcessEvents(node.core, calls, lambda page: page in node.memory,
                                            kernel.processes, carry_out)

    def _take(self, node: SimNode, deliver: Callable[[], None]) -> None:
        """The node's agent takes a message (``deliver``: through its inbox) once it is done
        with the last, and carries out what the inbox asked for, in order (an acquire's
        actions before its thread resumes). A message the inbox refuses fails the run: the
        model's nodes and shards send none that the agent would drop."""
        self._finish(node)  # one loop: it takes the next message when done with the last
        try:
            deliver()
        except DsmError as exc:
            raise SimulationFailure(f"{node.name}'s agent refused a message: {exc}") from None
        acts, node.taken[:] = list(node.taken), []
        if not node.alive:  # its agent stopped (a join refused): it carries nothing out
            return
        self._carry_out(node, acts)

    def _descheduled(self) -> bool:
        return self.rng.random() < DEFER_AFTER_SEND

    def _carry_out(self, node: SimNode, acts: list) -> None:
        node.deferred = node.runner.carry_out(acts, self._descheduled)

    def _finish(self, node: SimNode) -> None:
        """The agent carries out what it had left to do (it may be descheduled again)."""
        while node.deferred is not None:
            carrying, node.deferred = node.deferred, None
            if node.runner.carry_on(carrying, self._descheduled):
                node.deferred = carrying

    # --- the workload --------------------------------------------------------------------------------
    def _run_op(self, t: Thread) -> None:
        node = t.node
        kind, loc, value = t.ops[t.next_op]
        if kind in programs.SYNC_OPS:
            self._sync(t, kind, loc)
            return
        page, slot = divmod(loc, SLOTS_PER_PAGE)
        self._touched.add(page)
        where = node.space.addresses_of(page * PAGE_BYTES, PAGE_BYTES)
        if not where:  # the workload unmapped it: a real thread would crash there
            self._step(f"{node.name}/t{t.tid} skips loc {loc}: page {page} is unmapped")
            t.next_op += 1
            return
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
                if got != self.truth[loc] and got not in self.after_death.get(loc, ()) and not (
                        got == 0 and page in self.zeros_allowed):
                    # on a release page the program is data-race free: the last write in the
                    # simulation's order is the last one in happens-before order (DRF-SC)
                    order = " (happens-before: a DRF program)" if self.is_release(page) else ""
                    raise SimulationFailure(f"{node.name}/t{t.tid} read {got} at location {loc}; "
                                            f"the last write{order} was {self.truth[loc]}")
            t.next_op += 1
            return
        addr = where[0][0]
        t.blocked_on, t.blocked_at = page, addr
        self._finish(node)  # the fault waits in the uffd for the agent's loop
        self._handle_read_events(node)  # (read before the fault, handled first)
        node.process_events.fault(node, addr, rw, fault, t.tid, self.clock)

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
