"""The simulated network (``dsm.sim.world``): FIFO channels per pair of sockets in place of
ZeroMQ, delivery to the directory's shards and to the node cores, and node deaths, which cut it.

A message goes on its pair's channel (``channels``), encoded and behind its session's header
(``dsm.sim.links``: the real session layer, and the faults); the world's scheduler picks which
pair delivers next, so messages arrive in any order ZeroMQ allows — first in, first out per pair
of sockets, nothing more. A delivery the session accepts is decoded and handed to the shard's
directory state machine (``dsm.directory.machine.Directory``, the processes' own: its sessions,
its handler table, its Error policy; its transport here is the simulated network,
``SimTransport``) or, through the agent's own table (``core_handlers``), to the node's core, and
the node's agent carries out what the core answers (``dsm.sim.nodes``). A shard that answers a
node with an Error, or stops (an unexpected exception), fails the run.

A killed node's unsent messages are lost, but a prefix of them may still arrive; the directory
notices the death later, by its own silence deadline (``dsm.sim.timers``: the scheduler picks
when time passes), and every shard then declares it dead through its own ``declare_dead``. Its messages still on their way to a shard arrive after
that and are fenced there by the machine's own check (its session ended), never served. What a
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
        self.world._send(self.shard, node, message, bytes(page) if page is not None else None)
        return True  # kept on its session, as to a peer with one

    def forget(self, identity: bytes) -> None:
        self.world.links.forget(node_of_identity(identity.decode(errors="surrogateescape")))


class NetworkSimulation:
    """The network and deaths part of ``dsm.sim.world.World`` (a mixin: it uses the world's nodes,
    directories and schedule)."""

    # --- the network -------------------------------------------------------------------------------
    def _send(self, src: str, dst: str, msg: p.Message, data: bytes | None) -> None:
        if dst not in self.directories and not self.nodes[dst].alive:
            self._mark_lost_with(msg)  # what it carries dies with its receiver
            if dst not in self.unnoticed_dead:
                return  # its sessions ended: nothing is sent to it any more
        self.timers.sent(src, dst)
        # on the pair's session, as the processes send it (``dsm.sim.links``)
        self.links.send(self.channels.setdefault((src, dst), deque()), src, dst, msg, data,
                        self.clock)

    def _alive(self, name: str) -> bool:
        return name in self.directories or self.nodes[name].alive

    def _deliver(self, pair: tuple[str, str]) -> None:
        src, dst = pair
        packet = self.channels[pair].popleft()
        if dst not in self.directories and not self.nodes[dst].alive:
            self._mark_lost_with(packet.msg)
            return
        self.timers.heard(src, dst)  # any frame says its sender is alive
        if (src not in self.directories and not self.nodes[src].alive
                and src not in self.unnoticed_dead):
            self._from_the_fenced(src, dst, packet)
            return
        got = self.links.receive(src, dst, packet, self.clock)
        if got is None and src in self.unnoticed_dead and not self.links.arrived(src, dst, packet):
            # taken after a gap: the replay that would fill it will never come from the dead
            self._mark_lost_with(packet.msg)
        if got is None:  # a duplicate, one after a gap, or an acknowledgement: no message
            self._step(f"session {src}->{dst} takes {type(packet.msg).__name__ if packet.msg else 'an ack'}"
                       " without delivering it")
            return
        msg, data = got  # decoded from the wire, as the receiving process decodes it
        self._touch(msg)
        self._step(f"deliver {type(msg).__name__} {src}->{dst}: {msg}")
        if dst in self.directories:
            self._to_directory(dst, src, msg, data)
        else:
            self._to_node(self.nodes[dst], msg, data)

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

    def _to_node(self, node: SimNode, msg: p.Message, data: bytes | None) -> None:
        self._finish(node)  # one loop: it takes the next message when done with the last
        handler = node.handlers.get(type(msg))  # the agent's own table
        if handler is not None:
            acts = handler(msg, data)
        elif isinstance(msg, p.SyncReply):
            acts = self._sync_answered(node, msg, data)
        elif isinstance(msg, p.Heartbeat):  # the shard is alive (the agent samples its clock)
            acts = []
        elif isinstance(msg, (p.Error, p.Fenced)):  # the model's nodes send nothing refused
            raise SimulationFailure(f"{node.name}, alive, was answered {msg}")
        else:
            raise SimulationFailure(f"the model's nodes get no {type(msg).__name__}")
        self._carry_out(node, acts)

    # --- failures ------------------------------------------------------------------------------------
    def _kill(self, node: SimNode) -> None:
        """SIGKILL: the node's unsent messages are lost, but a prefix may be on the wire."""
        self._step(f"kill {node.name}")
        self._touched = None
        node.alive = False
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
        """A shard's deadline declared ``name`` dead (``dsm.sim.timers``): every other shard
        declares it too, through its machine's own path (in a real distributed manager the
        coordinator tells them: the session ends, what it held and waited for is released);
        what was on its way to it dies with it."""
        self._step(f"the shards have declared {name} dead")
        self._touched = None
        self.unnoticed_dead.remove(name)
        for shard, machine in self.machines.items():
            for packet in self.channels.pop((shard, name), ()):
                self._mark_lost_with(packet.msg)
            for packet in self.channels.get((name, shard), ()):  # to be fenced when they come
                self._mark_lost_with(packet.msg)
            if machine.sessions.get(name) is not None:
                machine.declare_dead(name, "another shard declared it dead")
        self.links.forget(name)  # its sessions end
