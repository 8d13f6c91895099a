"""The directory's ZeroMQ loop: a ROUTER socket in front of the page-state machine, the
allocation table, the locks and barriers and the sessions. It only decodes, dispatches and sends;
it never blocks on one node. What each message does is in ``handlers.py`` (``MessageHandlers``,
mixed into ``DirectoryService``).

Liveness (``dsm.liveness``): a node silent for ``NODE_TIMEOUT_S``, or one that leaves a transaction
unanswered for ``TRANSACTION_TIMEOUT_S``, is declared dead, which releases every transaction
waiting on it; its session ends and its later messages are fenced. Deaths are decided by these
deadlines alone: every node and shard link carries a reliable session (``dsm/linkwire.py``), so a
message that cannot be delivered now (the peer's connection was reset, or its queue is full) is
kept and replayed once it is back, and only a peer that falls behind the session's bound is
handled as a silent one.

Shards (IVY's fixed distributed manager, ``dsm/directory/shard/``): a directory process is one
directory alone, or shard I of K; its role says what it serves, what it tells the other shards
and what it waits for. Each shard serves only its own pages (``WrongShard`` otherwise, answered
with an Error that says which shard to ask).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import Any, Callable

import zmq

from dsm import protocol as p
from dsm.clusterstop import CLOSING_LINGER_MS, closing_reason
from dsm.core.shards import shard_name, shard_of
from dsm.directory.allocations import Allocations
from dsm.directory.handlers import MessageHandlers
from dsm.directory.pages import OnLoss, PageDirectory, Send
from dsm.directory.pages.dynamic import DynamicPages
from dsm.directory.programs import ProgramRequests
from dsm.directory.sessions import Sessions, new_random_id
from dsm.directory.shard.role import EXIT_SHARD_LOST, Role, check_shard
from dsm.directory.stats import NodeReports
from dsm.directory.syncrequests import SyncRequests
from dsm.errors import ConfigError, DsmError, ProtocolError
from dsm.keys import ServerKeys, serve
from dsm.layout import Layout
from dsm.linkwire import RouterLinks
from dsm.liveness import ACK_DELAY_S, NODE_TIMEOUT_S, TRANSACTION_TIMEOUT_S
from dsm.logthrottle import ThrottledLog, throttle_module_logs
from dsm.managers import DEFAULT_MANAGER, Manager
from dsm.trace import Tracer
from dsm.wire import has_input

log = logging.getLogger(__name__)


POLL_INTERVAL_MS = 200
#: how many queued messages are handled before timers are looked at again
MAX_MESSAGES_PER_WAKEUP = 1000
#: while messages keep coming, the timers (silent nodes, lock deadlines, the shards' heartbeats)
#: are looked at this often, not after every message: their deadlines are tenths of seconds
#: and more, and looking costs a pass over the sessions and the locks
HOUSEKEEPING_INTERVAL_S = 0.005
#: messages queued for one node before it counts as not reading them (declared dead): far more
#: than the protocol keeps in flight to a live node
SEND_QUEUE_LIMIT_MESSAGES = 100_000
#: the messages a peer reads before it has a session (it is joining, or refused): no session header
BARE = (p.Welcome, p.Fenced, p.ShardWelcome)
#: the messages never replayed after a reset (a later one says the same)
UNSEQUENCED = (p.Heartbeat,)
#: how often the sessions of peers that are gone (left, declared dead) are swept away
LINK_SWEEP_INTERVAL_S = 1.0
#: the exit status of a manager stopped by an unexpected exception (sysexits' EX_SOFTWARE)
EXIT_INTERNAL_ERROR = 70




def open_router(ctx: zmq.Context, endpoint: str, keys: ServerKeys | None,
                what: str) -> tuple[zmq.Socket, Any, str]:
    """The directory's ROUTER, bound: (socket, its security guard, the endpoint bound)."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    # a node's DEALER that reconnects (same identity) takes its pipe over
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    # an undeliverable message is an error, not a silent drop
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, SEND_QUEUE_LIMIT_MESSAGES)
    # CURVE with ZAP (only the nodes whose keys are in the keys directory), or open with a
    # warning; either way refused peers are logged, rate-limited (dsm/keys.py)
    security = serve(sock, keys, what)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        security.close()
        hint = (" (another directory, or another program, listens there: --listen another port)"
                if exc.errno == errno.EADDRINUSE else "")
        raise ConfigError(f"{what}: cannot listen there: {os.strerror(exc.errno)}{hint}") from None
    return sock, security, sock.getsockopt_string(zmq.LAST_ENDPOINT)


class DirectoryService(MessageHandlers):
    def __init__(self, endpoint: str, layout: Layout, trace_path: str | None = None,
                 node_timeout_s: float = NODE_TIMEOUT_S, on_loss: OnLoss = OnLoss.POISON,
                 keys: ServerKeys | None = None, manager: str = DEFAULT_MANAGER.value,
                 role: Role | None = None, router: tuple[zmq.Socket, Any, str] | None = None,
                 migratory: bool = True):
        self.layout = layout
        #: which manager this directory is part of (``dsm.managers``)
        self.manager = Manager(manager)
        self.role = role or Role()
        who = shard_name(self.role.index)
        self.tracer = Tracer(trace_path, who, role="manager")
        self.allocations = Allocations(layout)
        self.pages = PageDirectory(layout, self.tracer, on_loss, self.allocations.locate_page,
                                   direct=self.manager.direct, migratory=migratory,
                                   is_release=self.allocations.is_release)
        #: IVY's dynamic manager's side of the pages (``dsm/directory/pages/dynamic.py``): its
        #: messages, a death's gather, what it refuses; None under the other managers. Its
        #: owners keep a freed array's pages: their addresses are never reused
        self.dynamic = DynamicPages(self.pages) if self.manager is Manager.DYNAMIC else None
        self.allocations.retire_freed = self.dynamic is not None
        #: locks, barriers and write notices (``syncrequests.py``): their table, and the notices
        self.syncreq = SyncRequests(layout, time.monotonic, self._carry_guarded)
        self.sync, self.notices = self.syncreq.sync, self.syncreq.notices
        #: array lifetimes, atomic arrays and collectives (``dsm/directory/programs.py``)
        self.programs = ProgramRequests(self.allocations, self.sync, self._reclaim)
        self.node_timeout_s = node_timeout_s
        self.sessions = Sessions(new_random_id())
        #: each node's last counters, for ``dsm top``
        self.node_reports = NodeReports()
        self._ctx = zmq.Context.instance()
        self.socket, self.security, self.endpoint = router or open_router(
            self._ctx, endpoint, keys, f"the directory at {endpoint}")
        #: a reliable session per live node and per shard (``dsm/linkwire.py``)
        self.links = RouterLinks(self.socket, self._has_session)
        self._last_link_sweep_s = time.monotonic()
        self._running = True
        #: the signal that stopped it (stop()), if one did
        self._stopped_on: int | None = None
        #: what serve_forever's caller returns: 0, or why the manager stopped on its own
        self.exit_status = 0
        #: called once nodes are served (all shards joined): says where
        self.announce: Callable[[], None] = lambda: None
        self._announced = False
        #: messages and bytes by type, counted only for --metrics (dsm.metrics)
        self.wire: Any = None
        #: lines about malformed and refused messages, rate-limited (a flood must not fill the log)
        self._complain = ThrottledLog(log, "malformed or refused messages")
        self._handlers = self._node_handlers()
        self.role.attach(self)

    def fail(self, why: str, status: int) -> None:
        """Stop serving, loudly: the manager cannot go on (a shard or the coordinator is
        gone)."""
        if self._running:
            log.error("%s", why)
        self._running = False
        self.exit_status = status

    def _announce_once(self) -> None:
        if not self._announced:
            self._announced = True
            self.announce()

    def stop(self, signum: int | None = None, *_: Any) -> None:
        """Stop serving (a signal's handler): the nodes are told, last (``dsm/clusterstop.py``)."""
        self._running = False
        self._stopped_on = signum

    def serve_forever(self) -> None:
        log.info("directory listening on %s (%d pages of %d bytes at %#x, epoch %x, lost "
                 "pages: %s)", self.endpoint, self.layout.num_pages, self.layout.page_size,
                 self.layout.base, self.sessions.epoch, self.pages.on_loss.value)
        # the page-state machine warns about every unexpected answer: a peer can provoke those
        throttle_module_logs("dsm.directory.pages", "unexpected page messages")
        # and the coordinator about every shard message from a peer that is no shard
        throttle_module_logs("dsm.directory.shard", "refused shard messages")
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        for sock in self.role.sockets():  # a shard's link to its coordinator
            poller.register(sock, zmq.POLLIN)
        if self.role.ready:
            self._announce_once()
        last_housekeeping_s = 0.0
        try:
            while self._running:
                ready = dict(poller.poll(self._poll_timeout_ms()))
                if ready:
                    # drain what is queued before looking at the clock again (ZMQ_EVENTS is
                    # cheaper than a receive that raises Again; the poll said the first is there)
                    queued = self.socket in ready
                    for _ in range(MAX_MESSAGES_PER_WAKEUP):
                        if not queued:
                            break
                        self._handle(self.socket.recv_multipart(copy=False))
                        queued = has_input(self.socket)
                    for sock in ready:
                        if sock is not self.socket:
                            self.role.drain(sock)
                now = time.monotonic()
                if self.links.gapped:  # a message was lost: ask for its replay at once
                    self.links.flush_gaps(now)
                if not ready or now - last_housekeeping_s >= HOUSEKEEPING_INTERVAL_S:
                    last_housekeeping_s = now
                    self.links.flush(now)  # acknowledgements owed, replays due
                    self.role.tick(now)
                    self._expire_silent_nodes()
                    self._expire_behind_links(now)
                    self._send_all(self.syncreq.expire(now))
                    self._complain.flush()
        finally:
            linger_ms = self._tell_nodes_closing()
            self.role.close()
            self.tracer.close()
            self.socket.close(linger_ms)

    def _tell_nodes_closing(self) -> int:
        """Stopped by a signal (not failed): tell every live node, so that one leaving meanwhile
        does not wait for an answer, nor report its leave as failed; the linger (ms) that lets
        the messages go."""
        if self._stopped_on is None or self.exit_status != 0 or not self.sessions.by_node:
            return 0
        closing = p.Closing(closing_reason(self._stopped_on))
        for session in list(self.sessions.by_node.values()):
            self._send_to(session.identity, closing)
        return CLOSING_LINGER_MS

    def _handle(self, frames: list[Any]) -> None:
        """Handle one message. Whatever a peer sends, the directory stays up: a malformed or
        refused message gets an Error answer (the handlers validate before they change
        anything), and any other failure is answered and logged too, rate-limited."""
        identity = frames[0].bytes
        msg: Any = None
        try:
            now = time.monotonic()
            node = self.sessions.node_of(identity)
            if node is not None:  # any word from a node says it is alive
                self.sessions.by_node[node].last_seen_s = now
            # in order and once each, without the session header; None: nothing to handle
            body = self.links.accept(identity, frames[1:], now)
            if body is None:
                return
            msg, data = p.decode(body, self.layout.page_size, p.Direction.TO_DIRECTORY)
            if self.tracer.enabled:
                self._trace_received(identity, msg)
            if self.wire is not None:
                self.wire.count("received", msg, body)
            if isinstance(msg, p.Hello):
                self._send_all(self._on_hello(identity, msg))
                return
            if isinstance(msg, p.StatsQuery):  # read-only: any peer may ask (dsm top)
                self.role.stats(identity, msg.req)
                return
            if type(msg) in _SHARD_MESSAGES or self.role.is_peer(identity):
                # between shards; with keys, the shard's public key says it holds ours
                self.role.handle_peer(identity, msg, _user_id(frames[1]) if msg.TYPE ==
                                      p.MsgType.SHARD_HELLO else None)
                return
            if node is None and isinstance(msg, p.Atomic):  # a workload's own, no session
                self._send_to(identity, self.programs.atomic_direct(identity, msg))
                return
            if node is None:  # no session: never serve it as if it were a live node
                if not isinstance(msg, p.Bye):
                    self._send_to(identity, p.Fenced(self.sessions.epoch,
                                                     self.sessions.why_fenced(identity)))
                return
            if self.role.count > 1:  # this shard's pages only (WrongShard: an Error answer)
                check_shard(msg, self.role.index, self.role.count)
            handler = self._handlers.get(type(msg))
            if handler is None:
                raise ProtocolError(f"the directory does not handle {type(msg).__name__}")
            self._send_all(handler(node, msg, data))
        except ProtocolError as exc:
            if msg is None and self.tracer.enabled:
                self._trace_received(identity, None)
            self._complain(logging.WARNING, "malformed message from %r: %.500s", identity, exc)
            self._answer_error(identity, msg, f"malformed message: {exc}")
        except DsmError as exc:
            self._complain(logging.WARNING, "bad request from %r: %.500s", identity, exc)
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

    def _carry_guarded(self, node: str, guards: list[int], broken: bool
                       ) -> tuple[list[int], bytes]:
        """The home copies of the guarded pages that a lock's grant carries to ``node``: those
        this directory is the home of (with shards, the coordinator's stripes; the others are
        fetched at a fault, as without guards), not lost."""
        pages, shards, me = self.pages, self.role.count, self.role.index
        return pages.release.carry(node, guards, lambda q: q not in pages.lost and (
            shards == 1 or shard_of(q, shards) == me), broken)

    def _answer_error(self, identity: bytes, msg: Any, text: str) -> None:
        self._send_to(identity, p.Error(getattr(msg, "req", 0), text))

    def _send_all(self, sends: list[Send]) -> None:
        for send in sends:
            identity = self.sessions.identity_of(send.node)
            if identity is None:  # its session ended meanwhile: nothing to tell it any more
                log.debug("no session for %s: %s not sent", send.node, type(send.message).__name__)
                continue
            self._send_to(identity, send.message, send.page)

    def _has_session(self, identity: bytes) -> bool:
        """Whether ``identity`` is a live node's or a shard's (its link keeps a session)."""
        return self.sessions.node_of(identity) is not None or self.role.is_peer(identity)

    def _send_to(self, identity: bytes, message: p.Message, page: Any = None) -> bool:
        """Send without blocking; to a peer with a session, kept until acknowledged (replayed
        after a reset). False if a message to a peer without one could not be delivered."""
        t = self.tracer.now() if self.tracer.enabled else None
        frames = p.encode(message, page)
        kind = type(message)
        if not self.links.send(identity, frames, time.monotonic(),
                               sequenced=kind not in UNSEQUENCED, bare=kind in BARE):
            return False
        if self.wire is not None:
            self.wire.count("sent", message, frames)
        if self.tracer.enabled:
            link = identity.decode(errors="surrogateescape")
            self.tracer.sent(self.tracer.who, link, _node_of_identity(link), message, t)
        return True

    def _trace_received(self, identity: bytes, msg: p.Message | None) -> None:
        link = identity.decode(errors="surrogateescape")
        self.tracer.received(link, self.tracer.who, _node_of_identity(link), msg)

    def _expire_behind_links(self, now: float) -> None:
        """A peer that has left more unacknowledged than its session's bound is handled as a
        silent one; the sessions of peers that are gone are swept away (once what they keep is
        acknowledged, or is older than a death)."""
        for link in self.links.behind():
            why = (f"it left {link.unacked} messages ({link.unacked_bytes} bytes) "
                   "unacknowledged, past the session's bound")
            identity = link.peer.encode(errors="replace")
            node = self.sessions.node_of(identity)
            if node is not None:
                self._declare_dead(node, why)
            elif self.role.is_peer(identity):
                self.fail(f"a manager shard ({link.peer}) {why}: the distributed manager "
                          "cannot serve its pages", EXIT_SHARD_LOST)
            self.links.forget(identity)
        if now - self._last_link_sweep_s < LINK_SWEEP_INTERVAL_S:
            return
        self._last_link_sweep_s = now
        for identity, link in list(self.links.links.items()):
            if not self._has_session(identity) and (
                    not link.unacked or link.oldest_unacked_s(now) > NODE_TIMEOUT_S):
                self.links.forget(identity)

    def _poll_timeout_ms(self) -> int:
        """Wake for the next lock deadline, for an acknowledgement owed, or at the latest after
        POLL_INTERVAL_MS."""
        timeout_ms = POLL_INTERVAL_MS
        if self.links.owes():
            timeout_ms = min(timeout_ms, int(ACK_DELAY_S * 1000) + 1)
        deadline = self.sync.next_deadline()
        if deadline is None:
            return timeout_ms
        return max(0, min(timeout_ms, int((deadline - time.monotonic()) * 1000) + 1))

    def _expire_silent_nodes(self) -> None:
        now = time.monotonic()
        for session in self.sessions.silent(now, self.node_timeout_s):
            self._declare_dead(session.node, f"silent for {now - session.last_seen_s:.1f} s")
        for node, txn in self.pages.silent_nodes(TRANSACTION_TIMEOUT_S).items():
            if self.sessions.get(node) is not None:
                self._declare_dead(node, f"it left transaction {txn.id} (page {txn.request.page}) "
                                         f"unanswered for over {TRANSACTION_TIMEOUT_S:.0f} s")


#: the message types between shards (``dsm.directory.shard``)
_SHARD_MESSAGES = frozenset(p.SHARD_MESSAGES)


def _user_id(frame: Any) -> str | None:
    """The ZAP user id of a received frame: a CURVE peer's public key (None when open)."""
    try:
        return frame.get("User-Id")
    except (zmq.ZMQError, AttributeError):
        return None


def _node_of_identity(link: str) -> str:
    """The node name in a ZeroMQ identity ``node#incarnation`` (``protocol.identity``)."""
    node, sep, _ = link.rpartition("#")
    return node if sep else link
