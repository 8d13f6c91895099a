"""The coordinator's role (``Coordinator``): shard 0 of a distributed manager of K shards.

It admits the other shards (``ShardHello``, answered with ``ShardWelcome``) and holds nodes'
Hellos until all have joined; it tells every shard each node it admits, each array and each
death; it puts the lost-page and ``dsm top`` questions to every other shard and answers once all
have (a *gather*); and it stops the whole manager when a shard falls silent or its process exits.

What a shard is and what the shards tell each other: the package docstring (``__init__.py``).
The base it builds on: ``role.py``; the other shards' side: ``member.py``; how the shards' views
of the arrays are put together for ``dsm top``: ``dsm/directory/stats.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from dsm import protocol as p
from dsm.consistency import META_KEY, Consistency
from dsm.core.shards import STRIPE_PAGES
from dsm.directory.allocations import Allocation
from dsm.directory.pages import Send
from dsm.directory.shard.role import EXIT_SHARD_LOST, HELLO_HOLD_S, Role, _Held
from dsm.directory.stats import stitch_arrays
from dsm.liveness import NODE_TIMEOUT_S

if TYPE_CHECKING:
    from dsm.directory.machine import Directory

log = logging.getLogger(__name__)

#: how long the coordinator waits for every shard's part of a lost-page or stats question
GATHER_TIMEOUT_S = 5.0
#: how often a coordinator still missing shards says which
MISSING_SHARDS_LOG_INTERVAL_S = 5.0


@dataclass
class _Peer:
    index: int
    identity: bytes
    endpoint: str
    pid: int
    last_seen_s: float


@dataclass
class _Gather:
    """A question put to every other shard: their answers by shard, and what to do with them."""

    waiting: set[int]
    done: Callable[[dict[int, Any]], None]
    failed: Callable[[str], None]
    deadline_s: float
    parts: dict[int, Any] = field(default_factory=dict)


class Coordinator(Role):
    """Shard 0 of ``count``: see the module docstring, and the package's."""

    def __init__(self, count: int, check_peer_key: bytes | None = None,
                 stripe: int = STRIPE_PAGES):
        """``stripe``: pages per shard stripe (the simulator's are shorter)."""
        if count < 2:
            raise ValueError(f"a coordinator has other shards: count {count}")
        self.count = count
        self.stripe = stripe
        #: the shard processes it started on this host (``shardprocs.LocalShards``), if any
        self.local: Any = None
        #: with keys: the public key (Z85) a shard must present, the directory's own
        self._peer_key = check_peer_key.decode() if check_peer_key else None
        self._peers: dict[int, _Peer] = {}
        self._by_identity: dict[bytes, _Peer] = {}
        self._held: list[_Held] = []
        self._gathers: dict[int, _Gather] = {}
        self._next_gather = 1
        self._handlers: dict[type, Callable[[_Peer, Any], None]] = {
            p.Heartbeat: lambda peer, m: self._send(peer, p.Heartbeat(
                self.directory.tracer.now_ns(), m.clock_ns)),
            p.NodeDead: self._on_node_dead,
            p.LostRuns: self._on_part,
            p.StatsRuns: self._on_part,
            p.ArrayKnown: self._on_part,
        }
        #: release arrays some shard has not confirmed yet -> the Alloc answers waiting for it
        self._unknown_arrays: dict[str, list[Callable[[str | None], None]]] = {}

    def attach(self, directory: "Directory") -> None:
        super().attach(directory)
        self._last_missing_log_s = directory.clock()

    @property
    def ready(self) -> bool:  # type: ignore[override]
        return len(self._peers) == self.count - 1

    def _send(self, peer: _Peer, msg: p.Message) -> None:
        # a heartbeat's answer is never kept for a replay: one the shard's connection could not
        # take now (reset a moment ago) is lost as on the wire, and the next heartbeat gets the
        # next answer; the shard's silence deadline is the judge (a reset once stopped the whole
        # manager here). What is numbered is kept by the shard's session: it is sent.
        if not self.directory.send_to(peer.identity, msg) and not isinstance(msg, p.UNSEQUENCED):
            self.directory.fail(f"shard {peer.index} ({peer.endpoint}, pid {peer.pid}) could not "
                              f"be sent a {type(msg).__name__}: it is gone or stopped reading; "
                              "the distributed manager cannot serve its pages", EXIT_SHARD_LOST)

    def _to_all(self, msg: p.Message) -> None:
        for peer in list(self._peers.values()):
            self._send(peer, msg)

    # --- shards joining ----------------------------------------------------------------------
    def is_peer(self, identity: bytes) -> bool:
        return identity in self._by_identity

    def handle_peer(self, identity: bytes, msg: p.Message, user_id: str | None) -> None:
        peer = self._by_identity.get(identity)
        if isinstance(msg, p.ShardHello):
            self._on_shard_hello(identity, msg, user_id, peer)
            return
        if peer is None:
            log.warning("a %s from %r, which is not a shard: ignored", type(msg).__name__,
                        identity)
            return
        peer.last_seen_s = self.directory.clock()
        handler = self._handlers.get(type(msg))
        if handler is None:
            log.warning("shard %d sent a %s, which the coordinator does not take: ignored",
                        peer.index, type(msg).__name__)
            return
        handler(peer, msg)

    def _refuse(self, identity: bytes, why: str) -> None:
        self.directory.complain(logging.ERROR, "refused a shard: %s", why)  # rate-limited
        self.directory.send_to(identity, p.Fenced(self.directory.sessions.epoch, why))

    def _on_shard_hello(self, identity: bytes, msg: p.ShardHello, user_id: str | None,
                        peer: _Peer | None) -> None:
        d = self.directory
        if self._peer_key is not None and user_id != self._peer_key:
            self._refuse(identity, "a shard must connect with the directory's own keypair "
                                   "(directory.key_secret of the cluster's keys)")
            return
        if peer is not None:  # a repeated hello: answer it again
            self._send(peer, self._welcome(peer.index))
            return
        if msg.shards not in (0, self.count):
            self._refuse(identity, f"the shard was started as one of {msg.shards} (--of), but "
                                   f"this coordinator manages {self.count} shards")
            return
        index = msg.shard
        if index == -1:
            free = [i for i in range(1, self.count) if i not in self._peers]
            if not free:
                self._refuse(identity, f"all {self.count - 1} shards besides the coordinator "
                                       "have joined already: there is no free shard")
                return
            index = free[0]
        elif not 0 < index < self.count:
            self._refuse(identity, f"shard {index} does not exist: the coordinator is shard 0 "
                                   f"and the others are 1..{self.count - 1}")
            return
        elif index in self._peers:
            old = self._peers[index]
            self._refuse(identity, f"shard {index} has joined already (pid {old.pid}, "
                                   f"{old.endpoint}); a shard cannot join twice: restart the "
                                   "whole directory")
            return
        peer = _Peer(index, identity, msg.endpoint, msg.pid, self.directory.clock())
        self._peers[index] = peer
        self._by_identity[identity] = peer
        log.info("shard %d of %d joined: %s (pid %d)", index, self.count, msg.endpoint, msg.pid)
        self._send(peer, self._welcome(index))
        for alloc in d.allocations.all():  # none, usually: shards join before nodes
            self._send(peer, _array_message(alloc))
        for session in d.sessions.by_node.values():
            self._send(peer, p.NodeAdmitted(session.node, session.incarnation))
        if self.ready:
            log.info("all %d shards have joined: serving nodes", self.count)
            d.announce_once()
            held, self._held = self._held, []
            for h in held:
                d.send_all(d.on_hello(h.identity, h.hello))

    def _welcome(self, index: int) -> p.ShardWelcome:
        d = self.directory
        lay = d.layout
        return p.ShardWelcome(index, self.count, lay.base, lay.size, lay.page_size,
                              d.sessions.epoch, d.manager.value, d.pages.on_loss.value)

    def welcome_shards(self) -> list[str]:
        return [self.directory.endpoint] + [self._peers[i].endpoint for i in range(1, self.count)]

    def hold_hello(self, identity: bytes, hello: p.Hello) -> bool:
        if self.ready:
            return False
        self._held = [h for h in self._held if h.identity != identity]
        self._held.append(_Held(identity, hello, self.directory.clock()))
        log.info("node %s waits for its Welcome until every shard has joined (missing: %s)",
                 hello.node, self._missing())
        return True

    def _missing(self) -> str:
        return ", ".join(str(i) for i in range(1, self.count) if i not in self._peers)

    # --- what every shard must know ----------------------------------------------------------
    def admitted(self, node: str, incarnation: int) -> None:
        self._to_all(p.NodeAdmitted(node, incarnation))

    def dead(self, node: str, incarnation: int, why: str, told: bool) -> None:
        self._to_all(p.NodeDead(node, incarnation, why))

    def allocated(self, alloc: Allocation, answer: Callable[[str | None], None]) -> None:
        if alloc.meta.get(META_KEY) != Consistency.RELEASE.value:
            self._to_all(_array_message(alloc))  # only names: a shard may learn it late
            answer(None)
            return
        # a release array's pages are served apart from the others: no node may ask a shard
        # for one before that shard knows the array
        self._unknown_arrays[alloc.name] = [answer]

        def done(parts: dict[int, Any]) -> None:
            for waiting in self._unknown_arrays.pop(alloc.name, []):
                waiting(None)

        def failed(why: str) -> None:
            for waiting in self._unknown_arrays.pop(alloc.name, []):
                waiting(f"array {alloc.name!r}: {why}")

        self._ask_all(lambda gid: _array_message(alloc, gid), done, failed)

    def freed(self, alloc: Allocation) -> None:
        # in order with the ArrayAllocated of whatever array takes its place later
        self._to_all(p.ArrayFreed(alloc.name, alloc.offset, alloc.nbytes, alloc.meta))

    def when_known(self, name: str, answer: Callable[[str | None], None]) -> None:
        waiting = self._unknown_arrays.get(name)
        if waiting is None:
            answer(None)
        else:
            waiting.append(answer)

    def _on_node_dead(self, peer: _Peer, msg: p.NodeDead) -> None:
        why = f"shard {peer.index} declared it dead: {msg.why}"
        session = self.directory.sessions.get(msg.node)
        if session is not None and session.incarnation == msg.incarnation:
            self.directory.declare_dead(msg.node, why)  # tells every shard
        else:  # gone here already (left, or dead): the shards that still serve it must hear
            self._to_all(p.NodeDead(msg.node, msg.incarnation, why))

    # --- questions to every shard ------------------------------------------------------------
    def _ask_all(self, make: Callable[[int], p.Message], done: Callable[[dict[int, Any]], None],
                 failed: Callable[[str], None]) -> None:
        gid = self._next_gather
        self._next_gather += 1
        self._gathers[gid] = _Gather(set(self._peers), done, failed,
                                     self.directory.clock() + GATHER_TIMEOUT_S)
        self._to_all(make(gid))

    def _on_part(self, peer: _Peer, msg: Any) -> None:
        g = self._gathers.get(msg.gather)
        if g is None or peer.index not in g.waiting:
            log.warning("an unexpected %s from shard %d: ignored", type(msg).__name__, peer.index)
            return
        g.parts[peer.index] = msg
        g.waiting.discard(peer.index)
        if not g.waiting:
            del self._gathers[msg.gather]
            g.done(g.parts)

    def lost(self, node: str, req: int, first: int, count: int, forget: str | None) -> list[Send]:
        pages = self.directory.pages
        own = pages.forget_lost(first, count) if forget else pages.lost_runs(first, count)

        def done(parts: dict[int, Any]) -> None:
            runs = list(own)
            for part in parts.values():
                runs += [tuple(r) for r in part.runs]
            self.directory.send_all(self.directory.requests.lost_answer(node, req, runs, forget))

        def failed(why: str) -> None:
            self.directory.send_all([Send(node, p.Error(req, why))])

        self._ask_all(lambda gid: p.LostRunsQuery(gid, first, count, bool(forget)), done, failed)
        return []

    def stats(self, identity: bytes, req: int) -> None:
        d = self.directory

        def done(parts: dict[int, Any]) -> None:
            report = d.requests.stats_report(req)
            arrays = {0: report.arrays, **{i: m.arrays for i, m in parts.items()}}
            counters = dict(report.directory)
            for m in parts.values():
                for k, v in m.directory.items():
                    counters[k] = counters.get(k, 0) + v
            d.send_to(identity, p.StatsReport(req, report.nodes, report.latency_buckets_us,
                                                 stitch_arrays(arrays, self.count), counters,
                                                 report.manager))

        def failed(why: str) -> None:
            d.send_to(identity, p.Error(req, why))

        self._ask_all(p.StatsRunsQuery, done, failed)

    # --- timers ------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        gone = self.local.exited() if self.local is not None else None
        if gone is not None:
            self.directory.fail(f"{gone}: the distributed manager cannot serve its pages",
                              EXIT_SHARD_LOST)
            return
        for peer in list(self._peers.values()):
            if now - peer.last_seen_s > NODE_TIMEOUT_S:
                self.directory.fail(f"shard {peer.index} ({peer.endpoint}, pid {peer.pid}) has "
                                  f"been silent for {now - peer.last_seen_s:.1f} s: the "
                                  "distributed manager cannot serve its pages", EXIT_SHARD_LOST)
                return
        for gid, g in list(self._gathers.items()):
            if now > g.deadline_s:
                del self._gathers[gid]
                g.failed(f"shard(s) {', '.join(map(str, sorted(g.waiting)))} did not answer the "
                         f"coordinator within {GATHER_TIMEOUT_S:.0f} s")
        for h in [h for h in self._held if now - h.since_s >= HELLO_HOLD_S]:
            self._held.remove(h)
            self.directory.send_to(h.identity, p.Error(0, (
                f"not serving nodes yet: this coordinator (shard 0 of {self.count}) waits for "
                f"shard(s) {self._missing()} to join (dsm directory --shard I --of {self.count} "
                f"--coordinator {self.directory.endpoint}; in compose, --scale manager="
                f"{self.count - 1})")))
        if not self.ready and now - self._last_missing_log_s > MISSING_SHARDS_LOG_INTERVAL_S:
            self._last_missing_log_s = now
            log.warning("still waiting for shard(s) %s of %d to join (dsm directory --shard I "
                        "--of %d --coordinator %s): nodes are not served until they have",
                        self._missing(), self.count, self.count, self.directory.endpoint)


def _array_message(alloc: Allocation, gather: int = 0) -> p.ArrayAllocated:
    return p.ArrayAllocated(alloc.name, alloc.offset, alloc.nbytes, alloc.meta, gather)

