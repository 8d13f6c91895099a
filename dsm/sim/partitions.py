"""The simulated network's partitions (``dsm.sim.world`` with ``Faults.partition``): now and then
a live node is cut off from every other party for a while, as by ``ip link set down`` on its
host, and then its link comes back.

While a node is partitioned nothing reaches it and nothing it sends leaves: the messages on its
pairs' channels wait (the kernel's TCP holds them) and the scheduler delivers none of them. Every
party's timers go on meanwhile: heartbeats, replays, deadlines, and the replays wait behind the
partition too. When the link comes back, each of the node's connections resets, as after an
outage longer than TCP's patience (``SimLinks.reset_pair``: a suffix of what waited each way is
lost, both ends reconnect and replay). An outage this short is a normal event: it may cost
replays, and nothing else; no node is declared dead for it and nothing is lost (the world's
invariants say so). One that outlasts NODE_CUT_OFF_S is a death (the node cuts itself off and its
workload stops): the simulator's deaths are kills, so partitions stay below that.
"""

from __future__ import annotations

from typing import Any, Callable

from dsm.liveness import ACK_TIMEOUT_S, NODE_CUT_OFF_S, TRANSACTION_TIMEOUT_S
from dsm.sim.links import SimLinks

#: the shortest and the longest partition: long enough for several heartbeats and replays to
#: wait behind it, short enough that one replay after it still comes before the node's cut-off
PARTITION_MIN_S = 0.1
PARTITION_MAX_S = 2.0
assert PARTITION_MAX_S + ACK_TIMEOUT_S < NODE_CUT_OFF_S, "a partition must not cut a node off"
#: the calm after a partition before the next may start: outages back to back are one long
#: outage (several nodes' in turn add up against a transaction's deadline, which a request
#: whose holder and requester were cut off one after the other outlasted: seed 137 of the
#: distributed manager on 2 shards, once partitions ran back to back)
PARTITION_GAP_S = TRANSACTION_TIMEOUT_S


class Partitions:
    """At most one partitioned node at a time, drawn from the links' seeded generator."""

    def __init__(self, links: SimLinks):
        self.links = links
        #: the node cut off now, and until when (the world's clock); None: no partition
        self.node: str | None = None
        self.until_s = 0.0
        #: partitions so far, for the report
        self.count = 0
        #: no partition starts before then (``PARTITION_GAP_S`` after the last one healed)
        self.calm_until_s = 0.0

    def maybe_start(self, nodes: list[str], now: float) -> str | None:
        """Now and then (``Faults.partition`` per step), one of the live ``nodes`` is cut off
        for a random while; the node, if one was."""
        faults, rng = self.links.faults, self.links.rng
        if self.node is not None or not nodes or not faults.partition \
                or now < self.calm_until_s or rng.random() >= faults.partition:
            return None
        self.node = rng.choice(nodes)
        self.until_s = now + PARTITION_MIN_S + rng.random() * (PARTITION_MAX_S - PARTITION_MIN_S)
        self.count += 1
        return self.node

    def cuts(self, pair: tuple[str, str]) -> bool:
        """Whether the channel of ``pair`` (sender, receiver) waits behind the partition."""
        return self.node is not None and self.node in pair

    def heal_due(self, now: float, channels: dict, alive: Callable[[str], Any]) -> str | None:
        """If the partition's time is up: its node's link comes back and each of its live
        connections resets; the node healed, if one was."""
        if self.node is None or now < self.until_s:
            return None
        node, self.node = self.node, None
        self.calm_until_s = now + PARTITION_GAP_S
        if alive(node):
            for peer in self.links.peers_of(node):
                if alive(peer):
                    self.links.reset_pair(node, peer, channels)
        return node

    def next_heal_s(self) -> float | None:
        """When the partition heals (None: there is none)."""
        return self.until_s if self.node is not None else None
