"""The directory as a state machine with no sockets (``Directory``): the sessions of the nodes it
serves, what each of their messages does, the policy for a message it cannot serve, and the
deadlines that declare a node dead. The ZeroMQ loop (``service.py``) and the simulator
(``dsm.sim``) both drive this one object, so that what the simulator checks is what the
processes run.

Inputs: a message a peer's session layer accepted (``receive``, or ``handle`` once decoded), a
word from a peer (``heard``: any word says it is alive, an acknowledgement too), a tick of the
clock (``tick``), a peer's session fallen behind its bound (``link_behind``), and a death
noticed elsewhere (``declare_dead``: the same path its silence deadline takes). Outputs go
through a ``Transport`` (send a message to an identity; forget a peer's session), and time comes
from a clock (seconds, monotonic).

The policy: whatever a peer sends, the directory stays up. A malformed or refused message gets
an Error answer (the handlers validate before they change anything); any other failure is a bug,
answered too, and the directory stops loudly (``fail``) rather than serve from page states that
may be half-updated (one policy, ``dsm.errors``). A peer without a session is fenced: it is told
why (``Fenced``), never served as if it were a live node.

What each message from a node with a session does is in the handler table (``_node_handlers``):
the pages' (``dsm.directory.pages``), the locks' and barriers' (``syncrequests.py``), the arrays'
and atomics' (``programs.py``), the lost-page questions and the arrays' allocation
(``requests.py``), and sessions' own (Hello, Bye, Discard, Heartbeat) here.

Shards (``dsm/directory/shard/``): the role says what this directory serves of a distributed
manager, what it tells the other shards and what it waits for; it calls this machine back.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol

from dsm import bugs
from dsm import protocol as p
from dsm.core.shards import shard_of
from dsm.directory.allocations import Allocations
from dsm.directory.pages import OnLoss, PageDirectory, Send, page_handlers
from dsm.directory.pages.dynamic import DynamicPages
from dsm.directory.programs import ProgramRequests
from dsm.directory.requests import ArrayRequests
from dsm.directory.sessions import Sessions, new_random_id
from dsm.directory.shard.role import EXIT_SHARD_LOST, Role, check_shard
from dsm.directory.stats import NodeReports
from dsm.directory.syncrequests import SyncRequests
from dsm.errors import DsmError, ProtocolError
from dsm.layout import Layout
from dsm.liveness import NODE_TIMEOUT_S, TRANSACTION_TIMEOUT_S
from dsm.logthrottle import ThrottledLog
from dsm.managers import DEFAULT_MANAGER, Manager
from dsm.trace import Tracer

log = logging.getLogger(__name__)

#: the exit status of a manager stopped by an unexpected exception (sysexits' EX_SOFTWARE)
EXIT_INTERNAL_ERROR = 70
#: the message types between shards (``dsm.directory.shard``)
SHARD_MESSAGES = frozenset(p.SHARD_MESSAGES)


class Transport(Protocol):
    """Where the directory's messages go: the ZeroMQ ROUTER and its sessions, or the
    simulator's channels."""

    def send(self, identity: bytes, message: p.Message, page: Any = None) -> bool:
        """Send ``message`` (with ``page``'s bytes) to ``identity`` without blocking; False if
        it could not be delivered (a peer without a session whose connection is gone)."""

    def forget(self, identity: bytes) -> None:
        """Drop ``identity``'s session (it fell behind its bound: handled as a silent peer)."""

    def describe_link(self, identity: bytes) -> str:
        """Where ``identity``'s session stands, for a log line (``describe_session``)."""


class Directory:
    """The directory state machine (see the module docstring)."""

    def __init__(self, layout: Layout, transport: Transport,
                 clock: Callable[[], float] = time.monotonic, tracer: Tracer | None = None,
                 node_timeout_s: float = NODE_TIMEOUT_S, on_loss: OnLoss = OnLoss.POISON,
                 manager: str = DEFAULT_MANAGER.value, role: Role | None = None,
                 migratory: bool = True, pages: PageDirectory | None = None):
        """``pages``: the page directory to serve (the simulator builds its shards' own, with
        its clock and stripes); by default one for ``layout``'s arrays."""
        self.layout = layout
        self.transport = transport
        self.clock = clock
        #: which manager this directory is part of (``dsm.managers``)
        self.manager = Manager(manager)
        self.role = role or Role()
        self.tracer = tracer or Tracer(None, "directory", role="manager")
        self.allocations = Allocations(layout)
        self.pages = pages or PageDirectory(
            layout, self.tracer, on_loss, self.allocations.locate_page, clock=clock,
            direct=self.manager.direct, migratory=migratory,
            is_release=self.allocations.is_release)
        #: IVY's dynamic manager's side of the pages (``dsm/directory/pages/dynamic.py``): its
        #: messages, a death's gather, what it refuses; None under the other managers. Its
        #: owners keep a freed array's pages: their addresses are never reused
        self.dynamic = DynamicPages(self.pages) if self.manager is Manager.DYNAMIC else None
        self.allocations.retire_freed = self.dynamic is not None
        #: locks, barriers and write notices (``syncrequests.py``): their table, and the notices
        self.syncreq = SyncRequests(
            layout, clock, self._carry_guarded, released=self.pages.release.released,
            diffs=lambda n, diffs, d: self.pages.carried_diffs(n, diffs, d, self._homed_here))
        self.sync, self.notices = self.syncreq.sync, self.syncreq.notices
        #: the arrays' allocation and the lost-page questions (``requests.py``)
        self.requests = ArrayRequests(self)
        #: array lifetimes, atomic arrays and collectives (``dsm/directory/programs.py``)
        self.programs = ProgramRequests(self.allocations, self.sync, self.requests.reclaim)
        self.node_timeout_s = node_timeout_s
        self.sessions = Sessions(new_random_id())
        #: each node's last counters, for ``dsm top``
        self.node_reports = NodeReports()
        #: where nodes reach this directory (the shell says, once bound): shards tell nodes
        self.endpoint = ""
        #: 0 while it serves; the exit status it stopped with on its own (``fail``) otherwise
        self.exit_status = 0
        #: why it stopped on its own, if it did (its shell stops its loop)
        self.failed: str | None = None
        #: called once nodes are served (all shards joined): says where
        self.announce: Callable[[], None] = lambda: None
        self._announced = False
        #: messages and bytes by type, counted only for --metrics (dsm.metrics)
        self.wire: Any = None
        #: lines about malformed and refused messages, rate-limited (a flood must not fill the log)
        self.complain = ThrottledLog(log, "malformed or refused messages")
        self._handlers = self._node_handlers()
        self.role.attach(self)

    def _node_handlers(self) -> dict[type, Callable[[str, Any, Any], list[Send]]]:
        """What each message from a node with a session does: (node, message, page data) ->
        the messages to send."""
        r = self.requests
        return {
            **page_handlers(self.pages, self.layout.page_size),
            p.Discard: self._on_discard,
            p.Alloc: r.on_alloc,
            # the node knows we live, and learns our clock (dsm.clocksync)
            p.Heartbeat: lambda n, m, d: [Send(n, p.Heartbeat(self.tracer.now_ns(), m.clock_ns))],
            p.Bye: self._on_bye,
            **self.syncreq.handlers(),
            p.LostQuery: lambda n, m, d: self.role.lost(n, m.req, 0, self.layout.num_pages, None),
            p.ForgetLost: r.on_forget_lost,
            p.NodeReport: lambda n, m, d: self.node_reports.add(n, m) or [],
            p.Free: lambda n, m, d: self.programs.free(n, m),
            p.ArraysQuery: lambda n, m, d: self.programs.arrays(n, m),
            p.Atomic: lambda n, m, d: self.programs.atomic(n, m),
            p.Collective: lambda n, m, d: self.programs.collective(n, m),
            # the dynamic manager's messages, and what it refuses (dsm/directory/pages/dynamic.py)
            **(self.dynamic.service_handlers() if self.dynamic else {}),
        }

    @property
    def handled(self) -> frozenset[type]:
        """The message types a node with a session may send (its handler table's)."""
        return frozenset(self._handlers)

    def fail(self, why: str, status: int) -> None:
        """Stop serving, loudly: the manager cannot go on (a bug, a shard or the coordinator
        is gone). The shell stops its loop."""
        if self.failed is None:
            log.error("%s", why)
            self.failed = why
        self.exit_status = status

    def announce_once(self) -> None:
        if not self._announced:
            self._announced = True
            self.announce()

    # --- inputs --------------------------------------------------------------------------------
    def heard(self, identity: bytes) -> None:
        """A word from ``identity`` (any, an acknowledgement too): a node's says it is alive."""
        node = self.sessions.node_of(identity)
        if node is not None:
            self.sessions.by_node[node].last_seen_s = self.clock()

    def receive(self, identity: bytes, body: list[Any],
                peer_key: Callable[[], str | None] = lambda: None) -> None:
        """A message ``identity``'s session accepted (in order, once), still encoded;
        ``peer_key``: its CURVE public key, for a shard's hello."""
        try:
            msg, data = p.decode(body, self.layout.page_size, p.Direction.TO_DIRECTORY)
        except ProtocolError as exc:
            self.malformed(identity, None, exc)
            return
        if self.wire is not None:
            self.wire.count("received", msg, body)
        self.handle(identity, msg, data, peer_key)

    def handle(self, identity: bytes, msg: p.Message, data: Any,
               peer_key: Callable[[], str | None] = lambda: None) -> None:
        """A decoded message from ``identity``: served, or answered with an Error (the policy:
        the module docstring)."""
        try:
            if self.tracer.enabled:
                self._trace_received(identity, msg)
            self._dispatch(identity, msg, data, peer_key)
        except ProtocolError as exc:
            self.malformed(identity, msg, exc)
        except DsmError as exc:
            self.complain(logging.WARNING, "bad request from %r: %.500s", identity, exc)
            self._answer_error(identity, msg, str(exc))
        except Exception as exc:
            # not bad input (that is a DsmError, raised by the handlers' checks before they
            # change anything): a bug. The page states may be half-updated: the manager stops
            # loudly rather than serve from them (one policy, dsm.errors)
            log.critical("failed to handle a %s from %r", type(msg).__name__, identity,
                         exc_info=exc)
            self._answer_error(identity, msg, f"the directory failed to handle "
                                              f"{type(msg).__name__}: {exc!r:.200}")
            self.fail(f"the directory failed to handle a {type(msg).__name__} from {identity!r} "
                      f"({exc!r:.200}): it stops rather than serve from page states that may be "
                      "half-updated", EXIT_INTERNAL_ERROR)

    def malformed(self, identity: bytes, msg: p.Message | None, exc: ProtocolError) -> None:
        """A message that could not be read (its session header, its body): an Error answer."""
        if msg is None and self.tracer.enabled:
            self._trace_received(identity, None)
        self.complain(logging.WARNING, "malformed message from %r: %.500s", identity, exc)
        self._answer_error(identity, msg, f"malformed message: {exc}")

    def _dispatch(self, identity: bytes, msg: p.Message, data: Any,
                  peer_key: Callable[[], str | None]) -> None:
        if isinstance(msg, p.Hello):
            self.send_all(self.on_hello(identity, msg))
            return
        if isinstance(msg, p.StatsQuery):  # read-only: any peer may ask (dsm top)
            self.role.stats(identity, msg.req)
            return
        if type(msg) in SHARD_MESSAGES or self.role.is_peer(identity):
            # between shards; with keys, the shard's public key says it holds ours
            self.role.handle_peer(identity, msg, peer_key() if msg.TYPE ==
                                  p.MsgType.SHARD_HELLO else None)
            return
        node = self.sessions.node_of(identity)
        if node is None and isinstance(msg, p.Atomic):  # a workload's own, no session
            self.send_to(identity, self.programs.atomic_direct(identity, msg))
            return
        if node is None:  # no session: never serve it as if it were a live node
            if not isinstance(msg, p.Bye):
                self.send_to(identity, p.Fenced(self.sessions.epoch,
                                                self.sessions.why_fenced(identity)))
            return
        if self.role.count > 1:  # this shard's pages only (WrongShard: an Error answer)
            check_shard(msg, self.role.index, self.role.count, self.role.stripe)
        handler = self._handlers.get(type(msg))
        if handler is None:
            raise ProtocolError(f"the directory does not handle {type(msg).__name__}")
        self.send_all(handler(node, msg, data))

    def tick(self, now: float) -> None:
        """The timers: the role's, nodes silent or leaving a transaction unanswered too long,
        lock and barrier deadlines."""
        self.role.tick(now)
        for session in self.sessions.silent(now, self.node_timeout_s):
            self.declare_dead(session.node, f"silent for {now - session.last_seen_s:.1f} s")
        txn_timeout_s = (bugs.SHORT_TRANSACTION_TIMEOUT_S  # the bug switch (dsm/bugs.py)
                         if bugs.ACTIVE == bugs.SHORT_TRANSACTIONS else TRANSACTION_TIMEOUT_S)
        for node, txn in self.pages.silent_nodes(txn_timeout_s).items():
            session = self.sessions.get(node)
            if session is not None:
                self.declare_dead(node, f"it left transaction {txn.id} (page {txn.request.page}) "
                                        f"unanswered for over {txn_timeout_s:g} s "
                                        f"({txn.describe()}; "
                                        f"{self.transport.describe_link(session.identity)})")
        self.send_all(self.syncreq.expire(now))
        self.complain.flush()

    def link_behind(self, identity: bytes, why: str) -> None:
        """``identity``'s session fell behind its bound (``why``): a node is handled as a
        silent one, a shard stops the manager; either way its session is forgotten."""
        node = self.sessions.node_of(identity)
        if node is not None:
            self.declare_dead(node, why)
        elif self.role.is_peer(identity):
            self.fail(f"a manager shard ({identity.decode(errors='replace')}) {why}: the "
                      "distributed manager cannot serve its pages", EXIT_SHARD_LOST)
        self.transport.forget(identity)

    def has_session(self, identity: bytes) -> bool:
        """Whether ``identity`` is a live node's or a shard's (its link keeps a session)."""
        return self.sessions.node_of(identity) is not None or self.role.is_peer(identity)

    # --- outputs -------------------------------------------------------------------------------
    def send_to(self, identity: bytes, message: p.Message, page: Any = None) -> bool:
        """Send without blocking; False if a message to a peer without a session could not be
        delivered."""
        t = self.tracer.now() if self.tracer.enabled else None
        if not self.transport.send(identity, message, page):
            return False
        if self.tracer.enabled:
            link = identity.decode(errors="surrogateescape")
            self.tracer.sent(self.tracer.who, link, node_of_identity(link), message, t)
        return True

    def send_all(self, sends: list[Send]) -> None:
        for send in sends:
            identity = self.sessions.identity_of(send.node)
            if identity is None:  # its session ended meanwhile: nothing to tell it any more
                log.debug("no session for %s: %s not sent", send.node, type(send.message).__name__)
                continue
            self.send_to(identity, send.message, send.page)

    def reachable(self, identity: bytes) -> bool:
        """Whether a peer is still connected (the transport refuses to send to a peer without a
        session whose connection closed: a killed process's kernel closes its sockets at once)."""
        return self.send_to(identity, p.Heartbeat())

    def _answer_error(self, identity: bytes, msg: Any, text: str) -> None:
        self.send_to(identity, p.Error(getattr(msg, "req", 0), text))

    def _trace_received(self, identity: bytes, msg: p.Message | None) -> None:
        link = identity.decode(errors="surrogateescape")
        self.tracer.received(link, self.tracer.who, node_of_identity(link), msg)

    # --- sessions --------------------------------------------------------------------------------
    def on_hello(self, identity: bytes, msg: p.Hello) -> list[Send]:
        """A node's Hello: a session starts (a restart's old incarnation declared dead), or the
        peer is told why it cannot have one."""
        node = msg.node
        if self.role.hold_hello(identity, msg):  # shards missing, or not admitted yet
            return []
        lay = self.layout
        welcome = p.Welcome(lay.base, lay.size, lay.page_size, self.sessions.epoch,
                            self.tracer.now_ns(), self.pages.direct, self.role.welcome_shards(),
                            dynamic=self.dynamic is not None)
        old = self.sessions.get(node)
        if old is not None and old.identity == identity:  # a repeated Hello: answer it again
            return [Send(node, welcome)]
        if self.sessions.is_fenced(identity):
            self.send_to(identity, p.Fenced(self.sessions.epoch, self.sessions.why_fenced(identity)))
            return []
        if self.dynamic is not None and not msg.endpoint:
            # the dynamic manager has no path through the directory for a node's pages: the
            # others ask their owner straight, and it serves them straight (a real agent refuses
            # to start so; a foreign or misbehaving one is told why here)
            self.complain(logging.ERROR, "refused node %r (agent pid %d): it serves no peer "
                          "endpoint, which the dynamic manager needs", node, msg.pid)
            self.send_to(identity, p.Fenced(
                self.sessions.epoch, f"node {node!r} needs a peer endpoint under the dynamic "
                "manager, which serves every page node to node, and has none (--peer-listen "
                "none): give it one, or use --manager relay or central"))
            return []
        if old is not None and not self.role.coordinator:
            # the coordinator admitted this incarnation: it found the old one gone
            self.declare_dead(node, f"the coordinator admitted incarnation {msg.incarnation:x} "
                                    f"in place of {old.incarnation:x}", report=False)
        elif old is not None:
            if self.reachable(old.identity):
                reason = (f"node name {node!r} is in use by a live node (agent pid {old.pid}, "
                          f"incarnation {old.incarnation:x}): give this node another name "
                          "(--node / DSM_NODE)")
                # a peer can say this again and again: rate-limited
                self.complain(logging.ERROR, "refused a second node named %r (agent pid %d): "
                              "the first (pid %d) is alive", node, msg.pid, old.pid)
                self.send_to(identity, p.Fenced(self.sessions.epoch, reason))
                return []
            # the old incarnation's connection is gone: it died, and this is its restart
            self.declare_dead(node, f"it restarted (incarnation {old.incarnation:x} -> "
                                    f"{msg.incarnation:x}) without leaving")
        if self.pages.direct and not msg.endpoint:
            log.warning("node %s serves no peer endpoint (--peer-listen none): the pages it "
                        "asks for come through the directory, a round trip more each", node)
        log.info("node %s joined (agent pid %d, incarnation %x%s)", node, msg.pid,
                 msg.incarnation, f", peer endpoint {msg.endpoint}" if msg.endpoint else "")
        self.admit(identity, msg)
        return [Send(node, welcome)]

    def admit(self, identity: bytes, hello: p.Hello) -> None:
        """``hello``'s node has a session from now on, at ``identity`` (the Hello was accepted;
        the simulator admits its nodes through here too)."""
        node = hello.node
        self.sessions.start(node, identity, hello.incarnation, hello.pid, self.clock())
        if hello.rank >= 0:
            self.sync.enroll(node, hello.job, hello.rank, hello.size)
        self.pages.node_joined(node, hello.endpoint)
        self.syncreq.joined(node)
        self.role.admitted(node, hello.incarnation)  # every shard hears it before the node

    def declare_dead(self, node: str, why: str, report: bool = True) -> None:
        """``node`` is dead: fenced, its pages here lost, and every shard told (``report``
        False: the coordinator told us)."""
        log.error("node %s declared dead: %s", node, why)
        session = self.sessions.end(node, f"node {node} was declared dead: {why}")
        self.send_all(self.syncreq.replies(self.sync.job_member_died(node, why)))  # its job's
        self.send_all(self._node_gone(node, "died"))
        if session is not None:  # if it still listens, it learns why it is no longer served
            self.send_to(session.identity, p.Fenced(self.sessions.epoch,
                                                    self.sessions.why_fenced(session.identity)))
            self.role.dead(node, session.incarnation, why, told=not report)

    def _node_gone(self, node: str, how: str) -> list[Send]:
        """``node`` left or died (``how``): what it held, waited for and was part of."""
        self.node_reports.forget(node)
        out = (self.dynamic or self.pages).node_lost(node) + self.programs.node_gone(node, how)
        if bugs.ACTIVE == bugs.KEEP_DEAD_LOCKS:  # the bug switch (dsm/bugs.py): locks kept
            return out
        return out + self.syncreq.gone(node)

    def _on_bye(self, node: str, msg: p.Bye, _: Any) -> list[Send]:
        log.info("node %s left", node)
        out = self._node_gone(node, "left the cluster")
        session = self.sessions.end(node, f"node {node} left the cluster")
        # the acknowledgement comes after everything the node sent before: all it handed back
        self.send_to(session.identity, p.Bye())
        return out

    def _on_discard(self, node: str, msg: p.Discard, _: Any) -> list[Send]:
        for page in msg.pages:  # all of them first: a bad one must not leave half done
            self.layout.check_page(page)
        out: list[Send] = []
        for page in msg.pages:
            out += self.pages.discard(node, page)
        return out

    def _carry_guarded(self, node: str, lock: str, guards: list[int], broken: bool
                       ) -> tuple[list[int], bytes]:
        """The home copies of the guarded pages that a lock's grant carries to ``node``: those
        this directory is the home of (with shards, the coordinator's stripes; the others are
        fetched at a fault, as without guards), not lost."""
        pages = self.pages
        return pages.release.carry(node, lock, guards,
                                   lambda q: q not in pages.lost and self._homed_here(q), broken)

    def _homed_here(self, page: int) -> bool:
        """Whether this directory is ``page``'s home (with shards: its stripe's)."""
        role = self.role
        return role.count == 1 or shard_of(page, role.count, role.stripe) == role.index


def node_of_identity(link: str) -> str:
    """The node name in a ZeroMQ identity ``node#incarnation`` (``protocol.identity``)."""
    node, sep, _ = link.rpartition("#")
    return node if sep else link
