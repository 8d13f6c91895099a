"""A member's role (``Member``): shard I > 0 of a distributed manager, joined to its coordinator.

It heartbeats to the coordinator; it serves a node's Hello only once the coordinator admitted that
incarnation (``NodeAdmitted``); it reports the deaths it declares (``NodeDead``) and carries out
those the coordinator tells it; it learns the arrays (``ArrayAllocated``) and answers the
coordinator's questions about its lost pages and its ``dsm top`` view (``LostRunsQuery``,
``StatsRunsQuery``); and it stops when the coordinator falls silent or refuses it.

It has no socket: what it says to the coordinator goes through the link it is given
(``CoordinatorLink``), and what the coordinator says comes in through ``receive`` (``heard`` for
any frame, an acknowledgement too); time is its directory's clock. The processes' link is a
DEALER with its session (``dsm/directory/memberlink.py``), the simulator's the simulated network
(``dsm.sim``), so that both run this one role.

What a shard is and what the shards tell each other: the package docstring (``__init__.py``).
The base it builds on: ``role.py``; the coordinator's side: ``coordinator.py``. How a shard
joins its coordinator before it serves (``ShardHello``): ``dsm/directory/shardprocs.py``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Protocol

from dsm import protocol as p
from dsm.core.shards import STRIPE_PAGES
from dsm.directory.allocations import AllocationError
from dsm.directory.shard.role import EXIT_SHARD_LOST, HELLO_HOLD_S, Role, _Held
from dsm.errors import DsmError
from dsm.liveness import HEARTBEAT_INTERVAL_S, NODE_TIMEOUT_S

if TYPE_CHECKING:
    from dsm.directory.machine import Directory

log = logging.getLogger(__name__)


class CoordinatorLink(Protocol):
    """Where a member's messages to its coordinator go."""

    def send(self, message: p.Message) -> bool:
        """Send ``message`` without blocking (a heartbeat unnumbered, the rest kept on the
        link's session until acknowledged); False if the coordinator takes no message."""


class Member(Role):
    """Shard ``index`` > 0, joined (``welcome``) to the coordinator at ``coordinator`` (for the
    logs), which it talks to through ``link``; ``stripe``: pages per shard stripe (the
    simulator's are shorter)."""

    coordinator = False

    def __init__(self, welcome: p.ShardWelcome, coordinator: str, link: CoordinatorLink,
                 stripe: int = STRIPE_PAGES):
        self.index = welcome.shard
        self.count = welcome.shards
        self.stripe = stripe
        self.welcome = welcome
        self.link = link
        self.coordinator_endpoint = coordinator
        #: node -> the incarnation the coordinator admitted last
        self._admitted: dict[str, int] = {}
        self._held: list[_Held] = []
        self._handlers: dict[type, Callable[[Any], None]] = {
            p.Heartbeat: lambda m: None,  # the coordinator lives (noted on every frame)
            p.NodeAdmitted: self._on_admitted,
            p.NodeDead: self._on_node_dead,
            p.ArrayAllocated: self._on_array,
            p.ArrayFreed: self._on_array_freed,
            p.LostRunsQuery: self._on_lost_query,
            p.StatsRunsQuery: self._on_stats_query,
            p.Fenced: lambda m: self.directory.fail(
                f"the coordinator {coordinator} refuses this shard: {m.reason}", EXIT_SHARD_LOST),
            p.Error: lambda m: log.error("the coordinator reported: %s", m.message),
        }

    def attach(self, directory: "Directory") -> None:
        super().attach(directory)
        directory.sessions.epoch = self.welcome.epoch  # one epoch for the whole cluster
        self._last_heard_s = self._last_sent_s = directory.clock()

    # --- the link to the coordinator ---------------------------------------------------------
    def _send(self, msg: p.Message) -> None:
        if not self.link.send(msg):
            self.directory.fail(f"the coordinator {self.coordinator_endpoint} takes no message "
                                "(gone, or not reading)", EXIT_SHARD_LOST)
            return
        self._last_sent_s = self.directory.clock()

    def heard(self) -> None:
        """A frame from the coordinator (any: an acknowledgement too): it lives."""
        self._last_heard_s = self.directory.clock()

    def receive(self, msg: p.Message) -> None:
        """A message from the coordinator, delivered by the link's session (in order, once)."""
        try:
            handler = self._handlers.get(type(msg))
            if handler is None:
                raise DsmError(f"a shard does not take a {type(msg).__name__}")
            handler(msg)
        except DsmError as exc:
            log.error("dropped a message from the coordinator: %s", exc)

    @property
    def heartbeat_due_s(self) -> float:
        """When this member's next heartbeat to the coordinator is due (its directory's clock)."""
        return self._last_sent_s + HEARTBEAT_INTERVAL_S

    # --- nodes -------------------------------------------------------------------------------
    def hold_hello(self, identity: bytes, hello: p.Hello) -> bool:
        if self._admitted.get(hello.node) == hello.incarnation:
            return False
        if self.directory.sessions.is_fenced(identity):
            return False  # answered with why
        self._held = [h for h in self._held if h.identity != identity]
        self._held.append(_Held(identity, hello, self.directory.clock()))
        return True

    def _on_admitted(self, msg: p.NodeAdmitted) -> None:
        self._admitted[msg.node] = msg.incarnation
        ready = [h for h in self._held if h.hello.node == msg.node
                 and h.hello.incarnation == msg.incarnation]
        self._held = [h for h in self._held if h not in ready]
        for h in ready:
            self.directory.send_all(self.directory.on_hello(h.identity, h.hello))

    def dead(self, node: str, incarnation: int, why: str, told: bool) -> None:
        if not told:
            self._send(p.NodeDead(node, incarnation, why))

    def _on_node_dead(self, msg: p.NodeDead) -> None:
        d = self.directory
        if self._admitted.get(msg.node) == msg.incarnation:
            del self._admitted[msg.node]
        identity = p.identity(msg.node, msg.incarnation)
        session = d.sessions.get(msg.node)
        if session is not None and session.incarnation == msg.incarnation:
            d.declare_dead(msg.node, f"the coordinator says: {msg.why}", report=False)
        elif not d.sessions.is_fenced(identity):  # never said Hello here: it will be fenced
            d.sessions.fence(identity, f"node {msg.node} was declared dead: {msg.why}")
        for h in [h for h in self._held if h.identity == identity]:
            self._held.remove(h)
            d.send_to(identity, p.Fenced(d.sessions.epoch, d.sessions.why_fenced(identity)))

    def _on_array(self, msg: p.ArrayAllocated) -> None:
        try:
            alloc = self.directory.allocations.place(msg.name, msg.offset, msg.nbytes, msg.meta)
        except AllocationError as exc:
            raise DsmError(f"array {msg.name!r} from the coordinator: {exc}") from None
        self.directory.requests.traced_array(alloc)
        if msg.gather:
            self._send(p.ArrayKnown(msg.gather))

    def _on_array_freed(self, msg: p.ArrayFreed) -> None:
        alloc = self.directory.allocations.at(msg.offset)
        if alloc is None or (alloc.name, alloc.offset) != (msg.name, msg.offset):
            raise DsmError(f"the coordinator freed array {msg.name!r} at {msg.offset:#x}, which "
                           "this shard does not have there: the allocation tables diverged")
        self.directory.send_all(self.directory.requests.reclaim(alloc))

    def _on_lost_query(self, msg: p.LostRunsQuery) -> None:
        pages = self.directory.pages
        first, count = msg.first, msg.count
        runs = pages.forget_lost(first, count) if msg.forget else pages.lost_runs(first, count)
        if msg.forget and runs:
            log.warning("forgot %d lost pages at the coordinator's word: they read as zeros "
                        "from now on", sum(n for _, n, _ in runs))
        self._send(p.LostRuns(msg.gather, [list(r) for r in runs]))

    def _on_stats_query(self, msg: p.StatsRunsQuery) -> None:
        report = self.directory.requests.stats_report(0)
        self._send(p.StatsRuns(msg.gather, report.arrays, report.directory))

    # --- timers ------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if now - self._last_sent_s > HEARTBEAT_INTERVAL_S:
            self._send(p.Heartbeat(self.directory.tracer.now_ns()))
        if now - self._last_heard_s > NODE_TIMEOUT_S:
            self.directory.fail(f"the coordinator {self.coordinator_endpoint} has been silent for "
                              f"{now - self._last_heard_s:.1f} s: stopping this shard",
                              EXIT_SHARD_LOST)
            return
        for h in [h for h in self._held if now - h.since_s > HELLO_HOLD_S]:
            self._held.remove(h)
            log.warning("node %s said Hello, but the coordinator did not admit incarnation %x "
                        "within %.0f s: refused", h.hello.node, h.hello.incarnation, HELLO_HOLD_S)
            self.directory.send_to(h.identity, p.Fenced(self.directory.sessions.epoch, (
                f"the coordinator {self.coordinator_endpoint} has not admitted this node: say "
                "Hello to the coordinator first")))
