"""The liveness timers of a simulated world (``dsm.sim.world``), on its clock: the nodes'
heartbeats, their cut-off when a shard falls silent and their request timeout, each decided by
the agent's own ``AgentTimers`` (``dsm.core.timers``), and every shard's deadlines
(``Directory.tick``: a node silent past NODE_TIMEOUT_S, or leaving a transaction unanswered
past TRANSACTION_TIMEOUT_S, is declared dead). A killed node is silent, so the shards' real
deadlines notice it; nothing else declares a death.

When the clock jumps: the world moves it a step at a time, and to the next timer when nothing
else can happen but a deadline is pending (a killed node not declared dead yet, a transaction
open at a shard), or when the scheduler picks "time passes" while a killed node is unnoticed and
no live node's message to a shard is on its way (``jump_allowed``). The network delays nothing
by a jump: what a live node sends its shards arrives before time passes, as the margins of
``dsm.liveness`` assume of one network delay.

The invariants (issue 20): no node is declared dead while it is alive. A live node that falls
silent for real (its shards' answers lost, or held back while time passes) cuts itself off first,
NODE_CUT_OFF_S into the silence, and fails loudly, as the agent does: it stops as if killed (its
workload processes get SIGBUS; what it held may be lost, and reads of it fail, never return old
data), and the shards' deadlines then notice it as they notice a killed node. Without faults
nothing is lost, so a node is cut off only while a shard's messages to it are on their way: a
cut-off with none fails the run (its heartbeats did not go out, or were not answered).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from dsm import protocol as p
from dsm.core.timers import AgentTimers
from dsm.directory.shard import HELLO_HOLD_S, Member
from dsm.liveness import (ACK_TIMEOUT_S, HEARTBEAT_INTERVAL_S, HOUSEKEEPING_INTERVAL_S,
                          NODE_CUT_OFF_S, NODE_TIMEOUT_S, TRANSACTION_TIMEOUT_S)
from dsm.sim.model import SimulationFailure
from dsm.sim.network import sim_identity

if TYPE_CHECKING:
    from dsm.sim.nodes import SimNode
    from dsm.sim.world import World

#: the silence of a node's session that stands for "never": a transaction open since no time
NEVER_S = float("inf")


#: the most heartbeat intervals one heartbeat stands for after a jump of the clock: those of
#: the longest idle jump, the sessions' replay timer
HEARTBEATS_PER_JUMP = math.ceil(ACK_TIMEOUT_S / HEARTBEAT_INTERVAL_S)

class SimTimers:
    """The world's liveness timers; ``run`` after every step, ``next_due`` to jump to."""

    def __init__(self, world: World):
        self.world = world
        #: each node's agent timers (the agent's own decisions)
        self.agents = {name: AgentTimers() for name in world.nodes}
        #: (node, shard) -> when the node last sent the shard anything, and last heard from it
        self.last_sent_s = {(n, s): world.clock for n in world.nodes for s in world.machines}
        self.last_heard_s = dict(self.last_sent_s)
        #: when the timers were last looked at (every HOUSEKEEPING_INTERVAL_S, as the loops do)
        self._looked_s = world.clock
        #: how many sessions the shards keep (one fewer: a deadline ended one)
        self._sessions_kept = self._count_sessions()
        #: no timer of a node is due before this (each only moves later: a step looks at a
        #: node's only then, as a world of hundreds of nodes needs), nor any before the first
        self._due_s = {name: world.clock for name in world.nodes}
        self._first_due_s = world.clock
        #: (node, shard) whose session the shard ended, their link forgotten
        self._ended: set[tuple[str, str]] = set()

    # --- what the network tells ----------------------------------------------------------------
    def sent(self, src: str, dst: str) -> None:
        if (src, dst) in self.last_sent_s:
            self.last_sent_s[(src, dst)] = self.world.clock

    def heard(self, src: str, dst: str) -> None:
        """A frame from ``src`` reached ``dst`` (any: an acknowledgement, a duplicate too)."""
        if (dst, src) in self.last_heard_s:  # a node hears its shard
            self.last_heard_s[(dst, src)] = self.world.clock
        elif src in self.agents and dst in self.world.machines:  # a shard hears a node
            self.world.machines[dst].heard(sim_identity(src))

    # --- the timers ----------------------------------------------------------------------------
    def run(self, idle: bool = False) -> None:
        """Every timer due at the world's clock, looked at every HOUSEKEEPING_INTERVAL_S as the
        processes' busy loops do, or at once by idle ones (``idle``: the clock jumped to a
        timer): the live nodes' first (a node about to be declared dead has cut itself off
        before), then the shards'."""
        world, now = self.world, self.world.clock
        if not idle and now - self._looked_s < HOUSEKEEPING_INTERVAL_S:
            return
        self._looked_s = now
        if now >= self._first_due_s:
            for name, due_s in list(self._due_s.items()):
                node = world.nodes[name]
                if due_s > now:
                    continue
                if node.alive:
                    self._node_timers(node, now)
                if node.alive:  # (not cut off just now)
                    self._due_s[name] = self._node_due_s(node)
                else:
                    del self._due_s[name]
            self._first_due_s = min(self._due_s.values(), default=float("inf"))
        for shard, machine in world.machines.items():
            machine.tick(now)
            if machine.failed is not None:
                raise SimulationFailure(f"{shard} stopped: {machine.failed}")
        self._check_declared_dead()

    def _node_timers(self, node: SimNode, now: float) -> None:
        world, agent, name = self.world, self.agents[node.name], node.name
        if name in world.joining and now >= world.joined_by_s:
            # a member refuses a Hello it held HELLO_HOLD_S, and the agent gives up its join
            # soon after: what the faults held back that long fails it loudly (not without them)
            if not world.links.faults.any:
                raise SimulationFailure(f"{name} was not welcomed by {world.joining[name]} "
                                        f"within {HELLO_HOLD_S:g} s, with no fault")
            world._step(f"{name} gives up joining, not welcomed by {world.joining[name]}: its "
                        "agent stops")
            world._kill(node)
            return
        # a node joining the shards keeps its timers with those that have welcomed it
        shards = [s for s in world.machines if s not in world.joining.get(name, ())]
        if not shards:
            return
        silent = min(shards, key=lambda s: self.last_heard_s[(name, s)])
        silent_s = now - self.last_heard_s[(name, silent)]
        if agent.cut_off(silent_s):
            if not world.links.faults.any and not world.channels.get((silent, name)):
                # every word it sent the shard arrived at once (time passes only then) and the
                # shard answers each: its silence means the node did not speak
                raise SimulationFailure(f"{name} is cut off by {silent}'s silence of "
                                        f"{silent_s:.2f} s, with nothing lost or on its way")
            world._step(f"{name} has heard nothing from a shard for {silent_s:.2f} s: it cuts "
                        "itself off (its workload is killed, as the agent does)")
            world._kill(node)
            return
        if node.deferred is not None:
            return  # its agent is busy carrying out actions: its loop looks at timers after
        last_sent_s = min(self.last_sent_s[(name, s)] for s in shards)
        if agent.heartbeat_due(now, last_sent_s):
            # the clock may have jumped past several heartbeat intervals (the sessions' replay
            # timer, ACK_TIMEOUT_S): the agent sent one each, and a shard hears the node if any
            # of them arrives. One message stands for them (they say the same), lost only if
            # every one is; at most HEARTBEATS_PER_JUMP, so that states the exploration's
            # fingerprint merges (timers kept as expired or not) send alike
            intervals = int((now - last_sent_s) / HEARTBEAT_INTERVAL_S)
            copies = max(1, min(HEARTBEATS_PER_JUMP, intervals))
            world._step(f"{name} sends its heartbeats" + (f" ({copies} intervals)" if copies > 1
                                                          else ""))
            for shard in shards:  # every shard keeps its own session of the node
                world._send(name, shard, p.Heartbeat(), None, copies)
        acts = agent.overdue(node.core, now)
        if acts:
            world._step(f"{name}'s requests are overdue: {acts}")
            world._carry_out(node, acts)

    def _node_due_s(self, node: SimNode) -> float:
        """When the node's first timer is due: a heartbeat, the cut-off, the request timeout,
        the end of its join."""
        shards, agent = self.world.machines, self.agents[node.name]
        join_s = self.world.joined_by_s if node.name in self.world.joining else NEVER_S
        return min(join_s,
                   AgentTimers.heartbeat_due_at(min(self.last_sent_s[(node.name, s)] for s in shards)),
                   min(self.last_heard_s[(node.name, s)] for s in shards) + NODE_CUT_OFF_S,
                   agent.overdue_due_at())

    def _check_declared_dead(self) -> None:
        """A shard's deadline ended a node's session: a live node fails the run; a dead one's
        death is noticed by every shard (``World._notice_death``: in a real distributed
        manager the coordinator tells the other shards)."""
        world = self.world
        if self._count_sessions() == self._sessions_kept:
            return
        for name, node in world.nodes.items():
            # (a session that ended, not one a member never started: it refused the node's join,
            # or has not admitted it yet)
            ended = [shard for shard, m in world.machines.items() if m.sessions.get(name) is None
                     and m.sessions.is_fenced(sim_identity(name))]
            if not ended:
                continue
            if node.alive:
                machine = world.machines[ended[0]]
                why = machine.sessions.why_fenced(sim_identity(name))
                heard = max(self.last_sent_s[(name, s)] for s in world.machines)
                raise SimulationFailure(
                    f"{name}, alive, was declared dead by {ended[0]} ({why}); it last sent "
                    f"the shards something {world.clock - heard:.2f} s ago")
            if name in world.unnoticed_dead:
                world._notice_death(name)
            for shard in ended:  # (the others told since: their sessions with it end too)
                if (name, shard) not in self._ended:
                    self._ended.add((name, shard))
                    world.links.forget_between(name, shard)
        self._sessions_kept = self._count_sessions()

    def _count_sessions(self) -> int:
        return sum(len(m.sessions.by_node) for m in self.world.machines.values())

    # --- when the clock may jump ---------------------------------------------------------------
    def deadline_pending(self) -> bool:
        """Whether a deadline is still to come that the run needs: a killed node's silence, or
        a transaction open at a shard."""
        return bool(self.world.unnoticed_dead) or any(
            self._open_transactions(m) for m in self.world.machines.values())

    @staticmethod
    def _open_transactions(machine) -> list:
        """A shard's open transactions whose deadline would declare a node dead (one each)."""
        return [txn for node, txn in machine.pages.silent_nodes(-NEVER_S).items()
                if machine.sessions.get(node) is not None]

    def jump_allowed(self) -> bool:
        """Whether the scheduler may let time pass now: no live node's message to a shard, nor
        a shard's to another, is on its way, and no agent is busy."""
        world = self.world
        return not any(node.deferred is not None or any(
            world.channels.get((name, s)) for s in world.machines)
            for name, node in world.nodes.items() if node.alive) and not any(
            world.channels.get((a, b)) for a in world.machines for b in world.machines)

    def shard_heartbeat_due(self) -> float:
        """When a member shard's next heartbeat to its coordinator is due (never: one shard)."""
        return min((m.role.heartbeat_due_s for m in self.world.machines.values()
                    if isinstance(m.role, Member)), default=NEVER_S)

    def next_due(self) -> float | None:
        """When the next liveness timer is due: a live node's heartbeat, or a shard's deadline
        for a silent node or an open transaction (None: none is to come)."""
        world = self.world
        due = [AgentTimers.heartbeat_due_at(self.last_sent_s[(name, s)])
               for name, node in world.nodes.items() if node.alive for s in world.machines]
        due.append(self.shard_heartbeat_due())  # a member's heartbeat to the coordinator
        for machine in world.machines.values():
            due += [s.last_seen_s + NODE_TIMEOUT_S for s in machine.sessions.by_node.values()]
            due += [txn.started_s + TRANSACTION_TIMEOUT_S
                    for txn in self._open_transactions(machine)]
        # (one past due has not been looked at yet: the jump is to now, and looks)
        return min((t for t in due if t != float("inf")), default=None)
