"""The simulated network's links: the real session layer (``dsm/reliability.py``) on every pair of
parties, over channels that drop, duplicate, reorder and reset (``dsm.sim.world`` with
``faults``).

Every message the model sends is encoded as the processes encode it (``dsm.protocol``), put behind
its link's session header (``ReliableLink.sequenced``), and goes on its pair's channel as a
``Packet``. A delivery parses the header and asks the receiving end's link what to do
(``Verdict``): only a message delivered in order is decoded and handled, as ``dsm/linkwire.py``
does on ZeroMQ. Replays, requests for them and bare acknowledgements come from each link's
``outgoing`` on the simulated clock, after every step.

The faults, each with its probability per message or per step (``Faults``), all drawn from the
world's seeded generator, so that a seed replays exactly:

- a message dropped on its way (the ones after it are dropped at the receiver as a gap, and all
  are replayed);
- a message duplicated (the second is dropped as a duplicate);
- two neighbouring messages of a pair swapped (ZeroMQ never does this on one connection; the
  session layer must survive it all the same: a gap, then a replay);
- a connection reset: a suffix of both directions of a pair lost, then both ends reconnected.

(The faults of the nodes' kernels and of their peers are drawn in ``dsm.sim.agent``.)

Nothing here decides anything about pages: a message that the session layer delivers reaches the
same handlers as without faults.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from dsm import protocol as p
from dsm.reliability import ReliableLink, Verdict, parse, strip
from dsm.sim.model import PAGE_BYTES, Rates


@dataclass(frozen=True)
class Faults(Rates):
    """How often each fault strikes: per message sent (drop, duplicate, swap), per step of the
    schedule (a reset of a random pair with something in flight), per call of a node's kernel
    (``dsm.sim.agent``: an ioctl answers EAGAIN or ENOMEM; a forked child has exited, ESRCH)
    and per page send to a peer or question whether one can be reached (unreachable)."""

    drop: float = 0.0
    duplicate: float = 0.0
    swap: float = 0.0
    reset: float = 0.0
    #: a live node cut off from every other party for a while (``dsm.sim.partitions``), per step
    partition: float = 0.0
    eagain: float = 0.0
    enomem: float = 0.0
    exit: float = 0.0
    unreachable: float = 0.0

    @classmethod
    def everywhere(cls, rate: float) -> "Faults":
        """Every kind at ``rate`` (a reset a tenth as often: each costs a replay of the pair; a
        partition a twentieth: each lasts up to ``dsm.sim.partitions.PARTITION_MAX_S``)."""
        return cls(drop=rate, duplicate=rate, swap=rate, reset=rate / 10, partition=rate / 20,
                   eagain=rate, enomem=rate, exit=rate, unreachable=rate)


NO_FAULTS = Faults()


class Packet(NamedTuple):
    """What travels on a channel: the message as the model sent it (None for a bare
    acknowledgement or a request for a replay), its page bytes, and its frames on the wire."""

    msg: p.Message | None
    data: bytes | None
    frames: list[Any]


class SimLinks:
    def __init__(self, rng: random.Random, faults: Faults = NO_FAULTS):
        self.rng = rng
        self.faults = faults
        #: (this side, its peer) -> the session this side keeps with it
        self._links: dict[tuple[str, str], ReliableLink] = {}
        #: (sender, receiver, seq) -> what the model sent as that message (for replays)
        self._sent: dict[tuple[str, str, int], tuple[p.Message, bytes | None]] = {}
        #: counters of the faults done, for the report
        self.counters = {"dropped": 0, "duplicated": 0, "swapped": 0, "resets": 0,
                         "replayed": 0, "gaps": 0, "duplicates": 0}
        #: the links that may owe something (each one used since it last owed nothing), by
        #: when each was made: ``due`` looks at these alone, in the order of ``_links``, for a
        #: world of hundreds of nodes keeps thousands of idle ones
        self._maybe_owing: dict[tuple[str, str], int] = {}
        self._made: dict[tuple[str, str], int] = {}

    def link(self, me: str, peer: str, now: float) -> ReliableLink:
        link = self._links.get((me, peer))
        if link is None:
            link = self._links[(me, peer)] = ReliableLink(peer, now)
            self._made[(me, peer)] = len(self._made)
        self._maybe_owing[(me, peer)] = self._made[(me, peer)]
        return link

    # --- sending -------------------------------------------------------------------------------
    def send(self, channel: deque, src: str, dst: str, msg: p.Message, data: bytes | None,
             now: float, copies: int = 1) -> bool:
        """``msg`` from ``src`` to ``dst``, sequenced on their link, onto ``channel`` (or not:
        the faults). False for an unsequenced message the faults dropped: its sender is told,
        as a ROUTER tells (EHOSTUNREACH) of a message to a peer whose connection is down; a
        sequenced one is kept for the replay whatever happens to it. ``copies``: the message
        stands for as many unsequenced ones sent alike (heartbeats), lost only if every one is."""
        link = self.link(src, dst, now)
        if isinstance(msg, p.UNSEQUENCED):  # never replayed, as the processes send it
            return self._put(channel, Packet(msg, data, link.unsequenced(p.encode(msg, data))),
                             copies)
        frames = link.sequenced(p.encode(msg, data), now)
        seq = parse(frames[0])[0]
        self._sent[(src, dst, seq)] = (msg, data)
        self._put(channel, Packet(msg, data, frames))
        return True

    def _put(self, channel: deque, packet: Packet, copies: int = 1) -> bool:
        """``packet`` onto ``channel``, or not (False: dropped; all its ``copies`` were), or
        twice, or swapped. (One draw for the copies: the exploration's draws are its choices.)"""
        f, rng = self.faults, self.rng
        if f.drop and rng.random() < f.drop ** copies:
            self.counters["dropped"] += 1
            return False
        channel.append(packet)
        if f.duplicate and rng.random() < f.duplicate:
            self.counters["duplicated"] += 1
            channel.append(packet)
        if f.swap and len(channel) > 1 and rng.random() < f.swap:
            self.counters["swapped"] += 1
            channel[-1], channel[-2] = channel[-2], channel[-1]
        return True

    # --- receiving -----------------------------------------------------------------------------
    def receive(self, src: str, dst: str, packet: Packet,
                now: float) -> tuple[p.Message, bytes | None] | None:
        """What ``dst`` handles of ``packet`` from ``src``: the message decoded from the wire,
        and its page bytes; None when the session layer drops it (a duplicate, after a gap, or
        no message: an acknowledgement)."""
        seq, ack, flags = parse(packet.frames[0])
        body = strip(packet.frames)
        verdict = self.link(dst, src, now).receive(seq, ack, flags, sum(map(len, body)), now)
        if verdict is Verdict.GAP:
            self.counters["gaps"] += 1
        elif verdict is Verdict.DUPLICATE:
            self.counters["duplicates"] += 1
        if verdict is not Verdict.DELIVER or not body:
            return None
        msg, page = p.decode([bytes(f) for f in body], PAGE_BYTES, _direction(src, dst))
        return msg, bytes(page) if page is not None else None

    def unsessioned(self, src: str, dst: str,
                    packet: Packet) -> tuple[p.Message, bytes | None] | None:
        """What ``dst`` handles of ``packet`` from ``src`` once their session is forgotten (the
        sender's death was noticed): its header stripped and its numbers ignored, as for a peer
        without one; None for an acknowledgement."""
        body = strip(packet.frames)
        if not body:
            return None
        msg, page = p.decode([bytes(f) for f in body], PAGE_BYTES, _direction(src, dst))
        return msg, bytes(page) if page is not None else None

    def arrived(self, src: str, dst: str, packet: Packet) -> bool:
        """Whether ``dst`` has taken the message ``packet`` carries from ``src`` (in order, now
        or before); a bare acknowledgement carries none and counts as arrived."""
        seq = parse(packet.frames[0])[0]
        receiver = self._links.get((dst, src))
        return not seq or receiver is not None and seq <= receiver.delivered

    # --- timers and faults -----------------------------------------------------------------------
    def due(self, channels: dict, alive: Any, now: float) -> None:
        """Every link's replays, requests and acknowledgements due at ``now``, onto the
        channels (``alive(name)``: whether a party still runs; a dead one sends nothing)."""
        for key in sorted(self._maybe_owing, key=self._maybe_owing.__getitem__):
            link, (me, peer) = self._links.get(key), key
            if link is None or not link.owes():
                del self._maybe_owing[key]
                continue
            if not alive(me):
                continue
            for frames in link.outgoing(now):
                seq = parse(frames[0])[0]
                msg, data = self._sent.get((me, peer, seq), (None, None)) if seq else (None, None)
                if msg is not None:
                    self.counters["replayed"] += 1
                self._put(channels.setdefault((me, peer), deque()), Packet(msg, data, frames))
        self._forget_acknowledged()

    def _forget_acknowledged(self) -> None:
        if len(self._sent) < 4096:
            return
        unacked = {key: set(link.unacked_seqs()) for key, link in self._links.items()}
        self._sent = {(src, dst, seq): sent for (src, dst, seq), sent in self._sent.items()
                      if seq in unacked.get((src, dst), ())}

    def maybe_reset(self, channels: dict, alive: Any) -> tuple[str, str] | None:
        """Now and then, a connection between two live parties resets: a suffix of what is in
        flight each way is lost, and both ends reconnect. The pair reset, if one was."""
        if not self.faults.reset or self.rng.random() >= self.faults.reset:
            return None
        pairs = sorted({tuple(sorted(k)) for k in self._links
                        if alive(k[0]) and alive(k[1])})
        if not pairs:
            return None
        a, b = self.rng.choice(pairs)
        self.reset_pair(a, b, channels)
        return a, b

    def reset_pair(self, a: str, b: str, channels: dict) -> None:
        """The connection between ``a`` and ``b`` resets: a suffix of what is in flight each
        way is lost, and both ends reconnect (and replay)."""
        for pair in ((a, b), (b, a)):
            channel = channels.get(pair)
            if channel:
                keep = self.rng.randrange(len(channel) + 1)
                while len(channel) > keep:
                    channel.pop()
            link = self._links.get(pair)
            if link is not None:
                link.reconnected()
                self._maybe_owing[pair] = self._made[pair]
        self.counters["resets"] += 1

    def peers_of(self, name: str) -> list[str]:
        """The parties ``name`` has a session with, in a fixed order."""
        return sorted({peer for me, peer in self._links if me == name})

    def owed(self) -> bool:
        """Whether any link still waits for an acknowledgement or owes one."""
        return any(link.owes() for key in self._maybe_owing
                   if (link := self._links.get(key)) is not None)

    def in_flight_between(self, parties: Any, channels: dict) -> bool:
        """Whether anything is on its way among ``parties``: on a channel, or kept by a link
        for a replay (it was lost on the way)."""
        return any(channels.get((a, b)) or (link := self._links.get((a, b))) is not None
                   and link.unacked for a in parties for b in parties if a != b)

    def forget(self, name: str, keep: Any = ()) -> None:
        """``name`` is gone: its links, and the others' links to it, but those with the parties
        in ``keep`` (a shard that still serves it: ``forget_between`` once it no longer does)."""
        def gone(a: str, b: str) -> bool:
            return name in (a, b) and (b if a == name else a) not in keep

        for key in [k for k in self._links if gone(*k)]:
            del self._links[key]
        self._sent = {k: v for k, v in self._sent.items() if not gone(*k[:2])}

    def forget_between(self, a: str, b: str) -> None:
        """The link between ``a`` and ``b``, both ways, is gone."""
        for key in ((a, b), (b, a)):
            self._links.pop(key, None)
        self._sent = {k: v for k, v in self._sent.items() if k[:2] not in ((a, b), (b, a))}

    def lost_with(self, name: str, channels: dict) -> list[p.Message]:
        """What dies with ``name``: every message to it that it had not received, and every
        message from it that no peer has received and that is no longer on its way (those still
        in a channel may yet arrive)."""
        out = []
        for (src, dst, seq), (msg, _) in self._sent.items():
            if name not in (src, dst):
                continue
            receiver = self._links.get((dst, src))
            if receiver is not None and seq <= receiver.delivered:
                continue  # it arrived
            in_flight = src == name and any(parse(packet.frames[0])[0] == seq
                                            for packet in channels.get((src, dst), ()))
            if not in_flight:
                out.append(msg)
        return out


def _direction(src: str, dst: str) -> p.Direction:
    """Which way a message between the model's parties travels (their names say: shards are
    ``directory``...)."""
    from dsm.sim.network import DIRECTORY

    if dst.startswith(DIRECTORY) and src.startswith(DIRECTORY):  # between shards
        return p.Direction.TO_DIRECTORY if dst == f"{DIRECTORY}0" else p.Direction.TO_NODE
    if dst.startswith(DIRECTORY):
        return p.Direction.TO_DIRECTORY
    if src.startswith(DIRECTORY):
        return p.Direction.TO_NODE
    return p.Direction.TO_PEER
