"""The simulated network (``dsm.sim.world``): FIFO channels per pair of sockets in place of
ZeroMQ, delivery to the directory's shards and to the node cores, and node deaths, which cut it.

A message goes on its pair's channel (``channels``), encoded and behind its session's header
(``dsm.sim.links``: the real session layer, and the faults); the world's scheduler picks which
pair delivers next, so messages arrive in any order ZeroMQ allows — first in, first out per pair
of sockets, nothing more. A delivery the session accepts is decoded and handed to the shard's
directory state machine (``dsm.directory.machine.Directory``, the processes' own: its sessions,
its handler table, its Error policy; its transport here is the simulated network,
``SimTransport``) or to the node's inbox (``dsm.core.inbox``, the agent's own dispatch: its
checks, the core's handlers, the answers to the threads' requests, the Fenced that cuts a node
off), and the node's agent carries out what the core answers (``dsm.sim.nodes``). A shard that
answers a node with an Error or fences a live one, or stops (an unexpected exception), fails
the run. Between shards, a message goes to the coordinator's machine or to a member's role
(``dsm.sim.shards``: the processes' own ``Coordinator`` and ``Member``).

A killed node's unsent messages are lost, but a prefix of them may still arrive; a shard notices
the death later, by its own silence deadline (``dsm.sim.timers``: the scheduler picks when time
passes), and the others hear of it through the coordinator (the roles' own path), or by their
own deadlines. Its messages still on their way to a shard that has ended its session arrive
after that and are fenced there by the machine's own check, never served. What a
lost message carried, or what a dead node owned, may be lost: those locations are recorded
(``lost_locations``), so that the world's invariant checks allow reads of them to fail loudly,
never to return an older value or zeros.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from dsm import protocol as p
from dsm.core.actions import Send
from dsm.core.shards import shard_of
from dsm.core.states import OWNED
from dsm.directory.machine import node_of_identity
from dsm.directory.shard import Member
from dsm.sim.model import SLOTS_PER_PAGE, SimulationFailure

if TYPE_CHECKING:
    from dsm.sim.nodes import SimNode

#: the directory's name on the model's network (a shard's: DIRECTORY + its number)
DIRECTORY = "directory"
#: pages per shard stripe in the model (the real one, 256, would put every page on one shard)
STRIPE_PAGES = 2
#: the directory's epoch and every node's incarnation in the model (drawn at random by the
#: processes; fixed here, so that a seed replays exactly)
SIM_EPOCH = 1
SIM_INCARNATION = 1


def sim_identity(node: str) -> bytes:
    """A model node's identity at the shards, as its agent's ZeroMQ identity is made."""
    return p.identity(node, SIM_INCARNATION)


class SimTransport:
    """A shard's transport (``dsm.directory.machine.Transport``): its messages go onto the
    model's channels, from ``shard`` to the node the identity names."""

    def __init__(self, world: "NetworkSimulation", shard: str):
        self.world = world
        self.shard = shard

    def send(self, identity: bytes, message: p.Message, page: Any = None) -> bool:
        node = node_of_identity(identity.decode(errors="surrogateescape"))
        if isinstance(message, p.ShardWelcome):  # the join's answer, before the run begins
            self.world.shard_welcomes[node] = message
            return True
        # kept on its session, as to a peer with one; an unsequenced one may be lost, and said
        return self.world._send(self.shard, node, message,
                                bytes(page) if page is not None else None)

    def forget(self, identity: bytes) -> None:
        self.world.links.forget(node_of_identity(identity.decode(errors="surrogateescape")))

    def describe_link(self, identity: bytes) -> str:
        return "simulated session"


class NetworkSimulation:
    """The network and deaths part of ``dsm.sim.world.World`` (a mixin: it uses the world's nodes,
    directories and schedule)."""

    # --- the network -------------------------------------------------------------------------------
    def _send(self, src: str, dst: str, msg: p.Message, data: bytes | None,
              copies: int = 1) -> bool:
        """``msg`` onto the pair's channel; False if it was not sent and its sender is told
        (``SimLinks.send``; ``copies``: as many sent alike, lost only if all are)."""
        if dst not in self.directories and not self.nodes[dst].alive:
            self._mark_lost_with(msg)  # what it carries dies with its receiver
            if dst not in self.unnoticed_dead:
                return True  # its sessions ended: nothing is sent to it any more
        if src not in self.directories:  # (the shards talk before the timers are built)
            self.timers.sent(src, dst)
        # on the pair's session, as the processes send it (``dsm.sim.links``)
        return self.links.send(self.channels.setdefault((src, dst), deque()), src, dst, msg,
                               data, self.clock, copies)

    def _alive(self, name: str) -> bool:
        return name in self.directories or self.nodes[name].alive

    def _deliver(self, pair: tuple[str, str]) -> None:
        src, dst = pair
        packet = self.channels[pair].popleft()
        if dst not in self.directories and not self.nodes[dst].alive:
            self._mark_lost_with(packet.msg)
            return
        between_shards = src in self.directories and dst in self.directories
        self.timers.heard(src, dst)  # any frame says its sender is alive
        if between_shards:
            self._shard_heard(dst)
        dead = src not in self.directories and not self.nodes[src].alive
        if dead and src not in self.unnoticed_dead and not self._served_at(src, dst):
            self._from_the_fenced(src, dst, packet)
            return
        got = self.links.receive(src, dst, packet, self.clock)
        if got is None and dead and not self.links.arrived(src, dst, packet):
            # taken after a gap: the replay that would fill it will never come from the dead
            self._mark_lost_with(packet.msg)
        if got is None:  # a duplicate, one after a gap, or an acknowledgement: no message
            self._step(f"session {src}->{dst} takes {type(packet.msg).__name__ if packet.msg else 'an ack'}"
                       " without delivering it")
            return
        msg, data = got  # decoded from the wire, as the receiving process decodes it
        self._touch(msg)
        self._step(f"deliver {type(msg).__name__} {src}->{dst}: {msg}")
        if isinstance(msg, p.Welcome):
            self._welcomed(src, dst)
        if between_shards:
            self._between_shards(src, dst, msg, data)
        elif dst in self.directories:
            self._to_directory(dst, src, msg, data)
        else:
            self._to_node(self.nodes[dst], src, msg, data)

    def _welcomed(self, shard: str, node: str) -> None:
        """``shard``'s Welcome reached ``node`` (``dsm.sim.shards.join_nodes``): once every
        shard's has, its workload starts."""
        waiting = self.joining.get(node)
        if waiting is None or shard not in waiting:
            raise SimulationFailure(f"{node} was welcomed by {shard} again, or unasked")
        waiting.discard(shard)
        if not waiting:
            del self.joining[node]
            self._step(f"{node} has joined every shard")

    def _served_at(self, node: str, shard: str) -> bool:
        """Whether ``shard`` still serves ``node`` (its death not told there yet): what the node
        sent it still goes through their session."""
        return shard in self.machines and self.machines[shard].sessions.get(node) is not None

    def _between_shards(self, src: str, dst: str, msg: p.Message, data: bytes | None) -> None:
        """A message one shard's session delivered to another (``dsm.sim.shards``): the
        coordinator's machine takes it from the member's identity (its name), a member's role
        from its coordinator."""
        machine = self.machines[dst]
        if isinstance(machine.role, Member):
            machine.role.receive(msg)
        else:
            machine.handle(src.encode(), msg, data)
        if machine.failed is not None:
            raise SimulationFailure(f"{dst} stopped: {machine.failed}")

    def _shard_heard(self, shard: str) -> None:
        """A frame (any: an acknowledgement too) from another shard reached ``shard``: a member
        hears its coordinator live (the coordinator hears a member by its messages, as the
        processes do)."""
        role = self.machines[shard].role
        if isinstance(role, Member):
            role.heard()

    def _to_directory(self, shard: str, node: str, msg: p.Message, data: bytes | None) -> None:
        """What the shard's machine does with ``msg`` (its sends go onto the channels)."""
        machine = self.machines[shard]
        machine.handle(sim_identity(node), msg, data)
        if machine.failed is not None:
            raise SimulationFailure(f"{shard} stopped: {machine.failed}")

    def _from_the_fenced(self, src: str, dst: str, packet: Any) -> None:
        """A message from a node whose death the shards noticed (what it carries was marked
        lost then): a shard takes it without a session (its link ended with the death) and
        fences it; a peer drops it."""
        got = self.links.unsessioned(src, dst, packet) if dst in self.directories else None
        if got is None:  # to a peer, which forgot the dead node; or an acknowledgement
            self._step(f"{dst} drops a message from {src}, whose death was noticed")
            return
        msg, data = got
        self._step(f"deliver {type(msg).__name__} {src}->{dst} after {src}'s death: {msg}")
        self._to_directory(dst, src, msg, data)

    def _shard_of(self, page: int) -> str:
        return self._shard_names[shard_of(page, self.shards, STRIPE_PAGES)]

    def _to_node(self, node: SimNode, src: str, msg: p.Message, data: bytes | None) -> None:
        """What the node's agent does with ``msg`` from ``src``: what its inbox does
        (``dsm.core.inbox``, the real agent's dispatch), as from a shard or from a peer."""
        if src in self.directories:
            shard = self._shard_names.index(src)
            self._take(node, lambda: node.inbox.from_directory(shard, msg, data))
        else:
            self._take(node, lambda: node.inbox.from_peer(msg, data))

    def _node_answered(self, node: SimNode, msg: p.Message) -> bool:
        """The inbox's answer port (the agent's forwarder's part): what the model's workload
        asked the directory, answered: a lost-page question's report, or its failure once a
        shard's part was held back past the gather's deadline (``dsm.sim.shards``), or a
        thread's lock or barrier request (``dsm.sim.release``)."""
        if isinstance(msg, p.LostReport):
            self.lost_queries.answer(node, msg)
            return True
        if isinstance(msg, p.Error) and self.lost_queries.gave_up(node, msg):
            self._step(f"{node.name}'s question about lost pages failed: {msg.message}")
            return True
        return self._answered(node, msg)

    def _node_cut_off(self, node: SimNode, why: str) -> None:
        """The inbox cuts the node off (a Fenced). A member holds a Hello for HELLO_HOLD_S,
        waiting for the coordinator's word, which the faults may keep away that long (each loss
        costs ACK_TIMEOUT_S): the agent's join fails loudly and it stops. Otherwise (and without
        faults) the model's live nodes are never refused: the run fails."""
        if node.name in self.joining and self.links.faults.any:
            self._step(f"{node.name} was refused as it joined ({why}): its agent stops")
            self.refused_joins += 1
            self._kill(node)
            return
        raise SimulationFailure(f"{node.name}, alive, was cut off: {why}")

    # --- failures ------------------------------------------------------------------------------------
    def _kill(self, node: SimNode) -> None:
        """SIGKILL: the node's unsent messages are lost, but a prefix may be on the wire."""
        self._step(f"kill {node.name}")
        self._touched = None
        node.alive = False
        self.dead.append(node.name)
        self.joining.pop(node.name, None)
        self.lost_queries.died(node.name)
        if node.deferred is not None:  # what the agent had not sent yet dies with it
            for act in node.deferred.left:
                if isinstance(act, Send):
                    self._mark_lost_with(act.message)
        node.deferred = None
        for (src, dst), out in self.channels.items():
            if src == node.name and out:
                keep = self.rng.randrange(len(out) + 1)
                while len(out) > keep:
                    self._mark_lost_with(out.pop().msg)
                if dst not in self.directories:  # pages on the wire from it: the requester, told its
                    for packet in out:  # source is gone before they come, refuses them
                        self._mark_lost_with(packet.msg)
            elif dst == node.name:  # pages on their way to it die with it
                for packet in out:
                    self._mark_lost_with(packet.msg)
        for shard in self.directories:
            for packet in self.channels.pop((shard, node.name), ()):
                self._mark_lost_with(packet.msg)
        # what its sessions kept for a replay that will never come
        for msg in self.links.lost_with(node.name, self.channels):
            self._mark_lost_with(msg)
        self._release_node_died(node)
        self._discards_died_with(node)
        for pend in node.core.pending.values():
            if pend.write and self.directory.direct and not self.is_release(pend.first):
                # the copies may be invalidated for it already: under a direct manager no
                # home copy is left (a node dying as it asks to write may take the page along)
                self.lost_locations.update(range(pend.first * SLOTS_PER_PAGE,
                                                 (pend.first + pend.count) * SLOTS_PER_PAGE))
        for first, count in node.core.acks.runs():
            # granted for writing, awaiting acknowledgements: the directory cannot tell whether
            # it installed and wrote them (under every manager)
            self.lost_locations.update(range(first * SLOTS_PER_PAGE,
                                             (first + count) * SLOTS_PER_PAGE))
        for page in getattr(node.core, "owned", ()):  # the dynamic manager's: owned, shared
            self.lost_locations.update(range(page * SLOTS_PER_PAGE, (page + 1) * SLOTS_PER_PAGE))
        others = [n for n in self.nodes.values() if n.alive]
        for page, st in node.core.state.items():
            if self.is_release(page):
                continue  # (``_release_node_died``)
            # its writes may be lost with it: reads must say so; under a direct manager a
            # read copy may have been the last one
            last_copy = (self.directory.direct
                         and not self.directories[self._shard_of(page)].peek(page).home_current
                         and not any(page in n.core.state for n in others))
            if st in OWNED or last_copy:
                self.lost_locations.update(range(page * SLOTS_PER_PAGE,
                                                 (page + 1) * SLOTS_PER_PAGE))
        self.unnoticed_dead.append(node.name)

    def _mark_lost_with(self, msg: p.Message | None) -> None:
        """A message from or to a dead node that will never arrive: the pages it carried may be
        lost, and so may those it granted for writing (the directory cannot tell whether the
        dead node wrote them)."""
        if (isinstance(msg, (p.Fetched, p.Writeback, p.Drop)) and msg.payload == p.Payload.DATA
                or isinstance(msg, (p.Grant, p.PeerPage)) and msg.write
                or isinstance(msg, p.Served) and msg.owner):  # (the dynamic manager's ownership)
            self.lost_locations.update(range(msg.page * SLOTS_PER_PAGE,
                                             (msg.page + msg.count) * SLOTS_PER_PAGE))

    def _notice_death(self, name: str) -> None:
        """A shard declared ``name`` dead (``dsm.sim.timers``): what was on its way to it dies
        with it. The other shards hear of it through their roles (a member reports it to the
        coordinator, which tells every shard: ``dsm.directory.shard``), each then ending the
        session; until then what the node sent a shard still goes through their session."""
        self._step(f"a shard has declared {name} dead")
        self._touched = None
        self.unnoticed_dead.remove(name)
        for shard, machine in self.machines.items():
            for packet in self.channels.pop((shard, name), ()):
                self._mark_lost_with(packet.msg)
            for packet in self.channels.get((name, shard), ()):  # to be fenced when they come
                self._mark_lost_with(packet.msg)
        # its sessions end: with the nodes, and with the shards that ended its session
        self.links.forget(name, keep=[s for s in self.machines if self._served_at(name, s)])
