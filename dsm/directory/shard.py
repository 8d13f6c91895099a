"""What a directory process is among the manager shards (IVY's fixed distributed manager), and
what the shards tell each other.

Page ``p`` is managed by shard ``shard_of(p, K)`` (``dsm.core.shards``: stripes of
``STRIPE_PAGES``); every shard runs the page-state machine (``PageDirectory``) for its own pages
only, behind its own ROUTER, with its own sessions and heartbeats. Shard 0 is also the
**coordinator**: the only one that knows the membership (it admits nodes, refuses name clashes),
the allocations, the locks and barriers, and the only one nodes ask about lost pages. A
directory process plays one of three roles, which its ZeroMQ loop (``service.py``) consults:

- ``Role`` itself: the one directory of a cluster (``--shards 1``), as before shards existed.
- ``Coordinator``: shard 0 of K. The other shards join it (``ShardHello``: it answers with the
  layout, the epoch and how to serve, ``ShardWelcome``); nodes' Hellos wait until all have
  joined, then a node's Welcome lists every shard's endpoint. It tells every shard each node it
  admits (``NodeAdmitted``, before the node's Welcome), each array (``ArrayAllocated``) and each
  death (``NodeDead``).
- ``Member``: shard I > 0. A DEALER to the coordinator, heartbeats on it; serves a node's Hello
  only once the coordinator admitted that incarnation.

**Deaths** are shared through the coordinator. Any shard that declares a node dead (silent for
``NODE_TIMEOUT_S`` to it, a transaction left unanswered, a message it could not deliver) fences
it and loses the pages it owned *there* at once, then reports ``NodeDead(node, incarnation)`` to
the coordinator; the coordinator declares it dead too (its locks pass on, its barriers break)
and tells every shard, which does the same for its pages. A shard hears of a death at most one
coordinator round trip after the first shard declared it. The node itself stops first: its agent
cuts itself off after ``NODE_CUT_OFF_S`` of silence from *any* shard, before that shard's
``NODE_TIMEOUT_S`` (``dsm.liveness``), and a fenced node stops at once. A clean leave is not
shared: the node says Bye to every shard after handing its pages back to each (a Bye that
overtook pages still in flight to another shard would lose them).

**Lost pages** are asked of the coordinator only (``LostQuery``, ``ForgetLost``), which asks every
other shard for its lost runs (``LostRunsQuery``/``LostRuns``) and answers once all have: the
agent keeps one request, one answer. ``dsm top``'s ``StatsQuery`` is gathered the same way
(``StatsRunsQuery``/``StatsRuns``).

A shard that falls silent to the coordinator, or a coordinator to its shards, for
``NODE_TIMEOUT_S`` is fatal for the whole manager: a shard's pages cannot move elsewhere, so the
process stops loudly (exit status ``EXIT_SHARD_LOST``) and its nodes cut themselves off.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import zmq

from dsm import protocol as p
from dsm.core.shards import STRIPE_PAGES, shard_of
from dsm.consistency import META_KEY, Consistency
from dsm.directory.allocations import Allocation, AllocationError
from dsm.directory.pages import Send
from dsm.errors import DsmError
from dsm.liveness import HEARTBEAT_INTERVAL_S, NODE_TIMEOUT_S

if TYPE_CHECKING:
    from dsm.directory.service import DirectoryService

log = logging.getLogger(__name__)

#: exit status of a shard process whose coordinator, or a coordinator whose shard, fell silent
EXIT_SHARD_LOST = 3
#: how long a node's Hello waits for the shards to join (coordinator) or for the coordinator's
#: admission (member) before it is dropped: about as long as an agent waits for its Welcome
HELLO_HOLD_S = 5.0
#: how long the coordinator waits for every shard's part of a lost-page or stats question
GATHER_TIMEOUT_S = 5.0
#: how often a coordinator still missing shards says which
MISSING_SHARDS_LOG_INTERVAL_S = 5.0
#: the messages any shard serves; a message with a page goes to the page's shard, and every
#: other message to the coordinator
TO_EVERY_SHARD = (p.Hello, p.Heartbeat, p.Bye, p.StatsQuery)


class WrongShard(DsmError):
    """A node sent a message to a shard that does not manage its pages (or to a shard that is
    not the coordinator, for a message only the coordinator serves)."""


class ShardJoinError(DsmError):
    """A shard could not join its coordinator: unreachable, or refused."""


@dataclass
class _Held:
    identity: bytes
    hello: p.Hello
    since_s: float


class Role:
    """A directory alone (also the base of the other roles: the hooks the loop calls)."""

    index = 0
    count = 1
    coordinator = True  #: whether this process serves memberships, allocations, locks
    ready = True  #: whether nodes are served yet (a coordinator waits for its shards)

    def attach(self, service: "DirectoryService") -> None:
        self.service = service
        service.pages.shards = self.count

    def sockets(self) -> list[zmq.Socket]:
        """Sockets of its own the loop polls (``drain`` when readable)."""
        return []

    def drain(self, sock: zmq.Socket) -> None:
        pass

    def tick(self, now: float) -> None:
        """Timers, looked at after every wake-up of the loop."""

    def hold_hello(self, identity: bytes, hello: p.Hello) -> bool:
        """Whether a node's Hello must wait (it is answered later)."""
        return False

    def welcome_shards(self) -> list[str]:
        return []

    def admitted(self, node: str, incarnation: int) -> None:
        """A session started."""

    def dead(self, node: str, incarnation: int, why: str, told: bool) -> None:
        """A node's session ended by death (``told``: the coordinator said so)."""

    def allocated(self, alloc: Allocation, answer: Callable[[str | None], None]) -> None:
        """A new array: ``answer(None)`` once every shard knows it (``answer(why)``: it could
        not be told)."""
        answer(None)

    def when_known(self, name: str, answer: Callable[[str | None], None]) -> None:
        """``answer`` once the array ``name`` (which exists) is known at every shard."""
        answer(None)

    def is_peer(self, identity: bytes) -> bool:
        """Whether ``identity`` is another shard (not a node)."""
        return False

    def handle_peer(self, identity: bytes, msg: p.Message, user_id: str | None) -> None:
        """A message between shards, or a ShardHello; a directory alone refuses it."""
        self.service._send_to(identity, p.Fenced(self.service.sessions.epoch, (
            f"this directory is not a distributed manager's coordinator (it runs --manager "
            f"{self.service.manager.value} with one shard): it takes no {type(msg).__name__}")))

    def lost(self, node: str, req: int, first: int, count: int, forget: str | None) -> list[Send]:
        """Answer a LostQuery (``forget`` None) or a ForgetLost of array ``forget``."""
        pages = self.service.pages
        runs = pages.forget_lost(first, count) if forget else pages.lost_runs(first, count)
        return self.service.lost_answer(node, req, runs, forget)

    def stats(self, identity: bytes, req: int) -> None:
        self.service._send_to(identity, self.service.stats_report(req))

    def close(self) -> None:
        pass



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
    """Shard 0 of ``count``: see the module docstring."""

    def __init__(self, count: int, check_peer_key: bytes | None = None):
        if count < 2:
            raise ValueError(f"a coordinator has other shards: count {count}")
        self.count = count
        #: the shard processes it started on this host (``shardprocs.LocalShards``), if any
        self.local: Any = None
        #: with keys: the public key (Z85) a shard must present, the directory's own
        self._peer_key = check_peer_key.decode() if check_peer_key else None
        self._peers: dict[int, _Peer] = {}
        self._by_identity: dict[bytes, _Peer] = {}
        self._held: list[_Held] = []
        self._gathers: dict[int, _Gather] = {}
        self._next_gather = 1
        self._last_missing_log_s = time.monotonic()
        self._handlers: dict[type, Callable[[_Peer, Any], None]] = {
            p.Heartbeat: lambda peer, m: self._send(peer, p.Heartbeat(
                self.service.tracer.now_ns(), m.clock_ns)),
            p.NodeDead: self._on_node_dead,
            p.LostRuns: self._on_part,
            p.StatsRuns: self._on_part,
            p.ArrayKnown: self._on_part,
        }
        #: release arrays some shard has not confirmed yet -> the Alloc answers waiting for it
        self._unknown_arrays: dict[str, list[Callable[[str | None], None]]] = {}

    @property
    def ready(self) -> bool:  # type: ignore[override]
        return len(self._peers) == self.count - 1

    def _send(self, peer: _Peer, msg: p.Message) -> None:
        if not self.service._send_to(peer.identity, msg):
            self.service.fail(f"shard {peer.index} ({peer.endpoint}, pid {peer.pid}) could not "
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
        peer.last_seen_s = time.monotonic()
        handler = self._handlers.get(type(msg))
        if handler is None:
            log.warning("shard %d sent a %s, which the coordinator does not take: ignored",
                        peer.index, type(msg).__name__)
            return
        handler(peer, msg)

    def _refuse(self, identity: bytes, why: str) -> None:
        self.service._complain(logging.ERROR, "refused a shard: %s", why)  # rate-limited
        self.service._send_to(identity, p.Fenced(self.service.sessions.epoch, why))

    def _on_shard_hello(self, identity: bytes, msg: p.ShardHello, user_id: str | None,
                        peer: _Peer | None) -> None:
        svc = self.service
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
        peer = _Peer(index, identity, msg.endpoint, msg.pid, time.monotonic())
        self._peers[index] = peer
        self._by_identity[identity] = peer
        log.info("shard %d of %d joined: %s (pid %d)", index, self.count, msg.endpoint, msg.pid)
        self._send(peer, self._welcome(index))
        for alloc in svc.allocations.all():  # none, usually: shards join before nodes
            self._send(peer, _array_message(alloc))
        for session in svc.sessions.by_node.values():
            self._send(peer, p.NodeAdmitted(session.node, session.incarnation))
        if self.ready:
            log.info("all %d shards have joined: serving nodes", self.count)
            svc._announce_once()
            held, self._held = self._held, []
            for h in held:
                svc._send_all(svc._on_hello(h.identity, h.hello))

    def _welcome(self, index: int) -> p.ShardWelcome:
        svc = self.service
        lay = svc.layout
        return p.ShardWelcome(index, self.count, lay.base, lay.size, lay.page_size,
                              svc.sessions.epoch, svc.manager.value, svc.pages.on_loss.value)

    def welcome_shards(self) -> list[str]:
        return [self.service.endpoint] + [self._peers[i].endpoint for i in range(1, self.count)]

    def hold_hello(self, identity: bytes, hello: p.Hello) -> bool:
        if self.ready:
            return False
        self._held = [h for h in self._held if h.identity != identity]
        self._held.append(_Held(identity, hello, time.monotonic()))
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

    def when_known(self, name: str, answer: Callable[[str | None], None]) -> None:
        waiting = self._unknown_arrays.get(name)
        if waiting is None:
            answer(None)
        else:
            waiting.append(answer)

    def _on_node_dead(self, peer: _Peer, msg: p.NodeDead) -> None:
        why = f"shard {peer.index} declared it dead: {msg.why}"
        session = self.service.sessions.get(msg.node)
        if session is not None and session.incarnation == msg.incarnation:
            self.service._declare_dead(msg.node, why)  # tells every shard
        else:  # gone here already (left, or dead): the shards that still serve it must hear
            self._to_all(p.NodeDead(msg.node, msg.incarnation, why))

    # --- questions to every shard ------------------------------------------------------------
    def _ask_all(self, make: Callable[[int], p.Message], done: Callable[[dict[int, Any]], None],
                 failed: Callable[[str], None]) -> None:
        gid = self._next_gather
        self._next_gather += 1
        self._gathers[gid] = _Gather(set(self._peers), done, failed,
                                     time.monotonic() + GATHER_TIMEOUT_S)
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
        pages = self.service.pages
        own = pages.forget_lost(first, count) if forget else pages.lost_runs(first, count)

        def done(parts: dict[int, Any]) -> None:
            runs = list(own)
            for part in parts.values():
                runs += [tuple(r) for r in part.runs]
            self.service._send_all(self.service.lost_answer(node, req, runs, forget))

        def failed(why: str) -> None:
            self.service._send_all([Send(node, p.Error(req, why))])

        self._ask_all(lambda gid: p.LostRunsQuery(gid, first, count, bool(forget)), done, failed)
        return []

    def stats(self, identity: bytes, req: int) -> None:
        svc = self.service

        def done(parts: dict[int, Any]) -> None:
            report = svc.stats_report(req)
            arrays = {0: report.arrays, **{i: m.arrays for i, m in parts.items()}}
            counters = dict(report.directory)
            for m in parts.values():
                for k, v in m.directory.items():
                    counters[k] = counters.get(k, 0) + v
            svc._send_to(identity, p.StatsReport(req, report.nodes, report.latency_buckets_us,
                                                 stitch_arrays(arrays, self.count), counters))

        def failed(why: str) -> None:
            svc._send_to(identity, p.Error(req, why))

        self._ask_all(p.StatsRunsQuery, done, failed)

    # --- timers ------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        gone = self.local.exited() if self.local is not None else None
        if gone is not None:
            self.service.fail(f"{gone}: the distributed manager cannot serve its pages",
                              EXIT_SHARD_LOST)
            return
        for peer in list(self._peers.values()):
            if now - peer.last_seen_s > NODE_TIMEOUT_S:
                self.service.fail(f"shard {peer.index} ({peer.endpoint}, pid {peer.pid}) has "
                                  f"been silent for {now - peer.last_seen_s:.1f} s: the "
                                  "distributed manager cannot serve its pages", EXIT_SHARD_LOST)
                return
        for gid, g in list(self._gathers.items()):
            if now > g.deadline_s:
                del self._gathers[gid]
                g.failed(f"shard(s) {', '.join(map(str, sorted(g.waiting)))} did not answer the "
                         f"coordinator within {GATHER_TIMEOUT_S:.0f} s")
        if self._held:
            self._held = [h for h in self._held if now - h.since_s < HELLO_HOLD_S]
        if not self.ready and now - self._last_missing_log_s > MISSING_SHARDS_LOG_INTERVAL_S:
            self._last_missing_log_s = now
            log.warning("still waiting for shard(s) %s of %d to join (dsm directory --shard I "
                        "--of %d --coordinator %s): nodes are not served until they have",
                        self._missing(), self.count, self.count, self.service.endpoint)


class Member(Role):
    """Shard ``index`` > 0: its DEALER to the coordinator (joined: ``welcome``)."""

    coordinator = False

    def __init__(self, dealer: zmq.Socket, welcome: p.ShardWelcome, coordinator: str,
                 parent_pidfd: int | None = None):
        self.index = welcome.shard
        self.count = welcome.shards
        self.welcome = welcome
        self.dealer = dealer
        self.coordinator_endpoint = coordinator
        self._parent_pidfd = parent_pidfd
        #: node -> the incarnation the coordinator admitted last
        self._admitted: dict[str, int] = {}
        self._held: list[_Held] = []
        self._last_heard_s = self._last_sent_s = time.monotonic()
        self._handlers: dict[type, Callable[[Any], None]] = {
            p.Heartbeat: lambda m: None,  # the coordinator lives (noted on every message)
            p.NodeAdmitted: self._on_admitted,
            p.NodeDead: self._on_node_dead,
            p.ArrayAllocated: self._on_array,
            p.LostRunsQuery: self._on_lost_query,
            p.StatsRunsQuery: self._on_stats_query,
            p.Fenced: lambda m: self.service.fail(
                f"the coordinator {coordinator} refuses this shard: {m.reason}", EXIT_SHARD_LOST),
            p.Error: lambda m: log.error("the coordinator reported: %s", m.message),
        }

    def attach(self, service: "DirectoryService") -> None:
        super().attach(service)
        service.sessions.epoch = self.welcome.epoch  # one epoch for the whole cluster

    def sockets(self) -> list[zmq.Socket]:
        return [self.dealer]

    def _send(self, msg: p.Message) -> None:
        try:
            self.dealer.send_multipart(p.encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.service.fail(f"the coordinator {self.coordinator_endpoint} takes no message "
                              "(gone, or not reading)", EXIT_SHARD_LOST)
            return
        self._last_sent_s = time.monotonic()

    def drain(self, sock: zmq.Socket) -> None:
        while self.dealer.get(zmq.EVENTS) & zmq.POLLIN:
            frames = self.dealer.recv_multipart(copy=False)
            self._last_heard_s = time.monotonic()
            try:
                msg, _ = p.decode(frames, self.service.layout.page_size, p.Direction.TO_NODE)
                handler = self._handlers.get(type(msg))
                if handler is None:
                    raise DsmError(f"a shard does not take a {type(msg).__name__}")
                handler(msg)
            except DsmError as exc:
                log.error("dropped a message from the coordinator: %s", exc)

    # --- nodes -------------------------------------------------------------------------------
    def hold_hello(self, identity: bytes, hello: p.Hello) -> bool:
        if self._admitted.get(hello.node) == hello.incarnation:
            return False
        if self.service.sessions.is_fenced(identity):
            return False  # answered with why
        self._held = [h for h in self._held if h.identity != identity]
        self._held.append(_Held(identity, hello, time.monotonic()))
        return True

    def _on_admitted(self, msg: p.NodeAdmitted) -> None:
        self._admitted[msg.node] = msg.incarnation
        ready = [h for h in self._held if h.hello.node == msg.node
                 and h.hello.incarnation == msg.incarnation]
        self._held = [h for h in self._held if h not in ready]
        for h in ready:
            self.service._send_all(self.service._on_hello(h.identity, h.hello))

    def dead(self, node: str, incarnation: int, why: str, told: bool) -> None:
        if not told:
            self._send(p.NodeDead(node, incarnation, why))

    def _on_node_dead(self, msg: p.NodeDead) -> None:
        svc = self.service
        if self._admitted.get(msg.node) == msg.incarnation:
            del self._admitted[msg.node]
        identity = p.identity(msg.node, msg.incarnation)
        session = svc.sessions.get(msg.node)
        if session is not None and session.incarnation == msg.incarnation:
            svc._declare_dead(msg.node, f"the coordinator says: {msg.why}", report=False)
        elif not svc.sessions.is_fenced(identity):  # never said Hello here: it will be fenced
            svc.sessions.fence(identity, f"node {msg.node} was declared dead: {msg.why}")
        for h in [h for h in self._held if h.identity == identity]:
            self._held.remove(h)
            svc._send_to(identity, p.Fenced(svc.sessions.epoch, svc.sessions.why_fenced(identity)))

    def _on_array(self, msg: p.ArrayAllocated) -> None:
        try:
            alloc = self.service.allocations.find_or_create(msg.name, msg.nbytes, msg.meta)
        except AllocationError as exc:
            raise DsmError(f"array {msg.name!r} from the coordinator: {exc}") from None
        if alloc.offset != msg.offset:
            raise DsmError(f"array {msg.name!r} is at {alloc.offset:#x} here, at "
                           f"{msg.offset:#x} on the coordinator: the allocation tables diverged")
        self.service.traced_array(alloc)
        if msg.gather:
            self._send(p.ArrayKnown(msg.gather))

    def _on_lost_query(self, msg: p.LostRunsQuery) -> None:
        pages = self.service.pages
        first, count = msg.first, msg.count
        runs = pages.forget_lost(first, count) if msg.forget else pages.lost_runs(first, count)
        if msg.forget and runs:
            log.warning("forgot %d lost pages at the coordinator's word: they read as zeros "
                        "from now on", sum(n for _, n, _ in runs))
        self._send(p.LostRuns(msg.gather, [list(r) for r in runs]))

    def _on_stats_query(self, msg: p.StatsRunsQuery) -> None:
        report = self.service.stats_report(0)
        self._send(p.StatsRuns(msg.gather, report.arrays, report.directory))

    # --- timers ------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if now - self._last_sent_s > HEARTBEAT_INTERVAL_S:
            self._send(p.Heartbeat(self.service.tracer.now_ns()))
        if now - self._last_heard_s > NODE_TIMEOUT_S:
            self.service.fail(f"the coordinator {self.coordinator_endpoint} has been silent for "
                              f"{now - self._last_heard_s:.1f} s: stopping this shard",
                              EXIT_SHARD_LOST)
            return
        if self._parent_pidfd is not None and _exited(self._parent_pidfd):
            self.service.fail("the coordinator that started this shard exited: stopping",
                              EXIT_SHARD_LOST)
            return
        for h in [h for h in self._held if now - h.since_s > HELLO_HOLD_S]:
            self._held.remove(h)
            log.warning("node %s said Hello, but the coordinator did not admit incarnation %x "
                        "within %.0f s: refused", h.hello.node, h.hello.incarnation, HELLO_HOLD_S)
            self.service._send_to(h.identity, p.Fenced(self.service.sessions.epoch, (
                f"the coordinator {self.coordinator_endpoint} has not admitted this node: say "
                "Hello to the coordinator first")))

    def close(self) -> None:
        self.dealer.close(0)
        if self._parent_pidfd is not None:
            os.close(self._parent_pidfd)


def _exited(pidfd: int) -> bool:
    import select

    return bool(select.select([pidfd], [], [], 0)[0])


def _array_message(alloc: Allocation, gather: int = 0) -> p.ArrayAllocated:
    return p.ArrayAllocated(alloc.name, alloc.offset, alloc.nbytes, alloc.meta, gather)


def check_shard(msg: p.Message, index: int, count: int) -> None:
    """WrongShard unless shard ``index`` of ``count`` serves ``msg``: its pages are this shard's
    and within one stripe, or it is for every shard, or this is the coordinator."""
    page = getattr(msg, "page", None)
    if page is not None:
        n = getattr(msg, "count", 1)
        owner = shard_of(page, count)
        last_owner = shard_of(page + n - 1, count)
        if owner != index or last_owner != owner:
            what = f"page {page}" if n == 1 else f"pages {page}..{page + n - 1}"
            raise WrongShard(
                f"{type(msg).__name__} of {what} sent to shard {index} of {count}, but "
                + (f"page {page} is managed by shard {owner}" if owner != index else
                   f"the run crosses into shard {last_owner}'s stripe")
                + f" (stripes of {STRIPE_PAGES} pages: dsm.core.shards.shard_of); a node "
                "sends each page message to its page's shard")
        return
    if isinstance(msg, p.Discard):
        wrong = [q for q in msg.pages if shard_of(q, count) != index]
        if wrong:
            raise WrongShard(f"Discard sent to shard {index} of {count} names page {wrong[0]}, "
                             f"which shard {shard_of(wrong[0], count)} manages")
        return
    if index != 0 and not isinstance(msg, TO_EVERY_SHARD):
        raise WrongShard(f"{type(msg).__name__} sent to shard {index} of {count}: only the "
                         "coordinator (shard 0) serves it")


# --- dsm top over the shards ------------------------------------------------------------------
def stitch_arrays(by_shard: dict[int, list[Any]], count: int) -> list[Any]:
    """Every array's page states (StatsReport.arrays) put together from each shard's view, each
    stripe from the shard that manages it (the others see it at home)."""
    views = {shard: {a[0]: a for a in arrays} for shard, arrays in by_shard.items()}
    out = []
    for name, first, pages, _ in by_shard[0]:
        cursors = {s: _RunCursor(v[name][3]) for s, v in views.items() if name in v}
        runs: list[list] = []
        offset = 0
        while offset < pages:
            page = first + offset
            stripe_left = STRIPE_PAGES - page % STRIPE_PAGES
            n = min(stripe_left, pages - offset)
            cursor = cursors.get(shard_of(page, count))
            pieces = cursor.take(offset, n) if cursor is not None else [[n, "home", []]]
            for piece in pieces:
                if runs and runs[-1][1:] == piece[1:]:
                    runs[-1][0] += piece[0]
                else:
                    runs.append(list(piece))
            offset += n
        out.append([name, first, pages, runs])
    return out


class _RunCursor:
    """Reads ``[pages, kind, holders]`` runs by page offset, offsets asked in increasing order."""

    def __init__(self, runs: list[list]):
        self._runs = runs
        self._i = 0
        self._start = 0  #: offset of run ``_i``

    def take(self, offset: int, n: int) -> list[list]:
        out: list[list] = []
        end = offset + n
        while self._i < len(self._runs) and self._start < end:
            length, kind, holders = self._runs[self._i]
            run_end = self._start + length
            if run_end <= offset:
                self._i += 1
                self._start = run_end
                continue
            lo, hi = max(offset, self._start), min(end, run_end)
            out.append([hi - lo, kind, holders])
            if run_end > end:
                break
            self._i += 1
            self._start = run_end
        covered = sum(r[0] for r in out)
        if covered < n:  # a view shorter than the array (capped runs): the rest as its last
            out.append([n - covered, out[-1][1] if out else "home", out[-1][2] if out else []])
        return out
