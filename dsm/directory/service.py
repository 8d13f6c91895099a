"""The directory's ZeroMQ shell: a ROUTER socket, its sessions (``RouterLinks``,
``dsm/linkwire.py``), CURVE, the poll loop and the stop, in front of the directory state machine
(``machine.py``, ``Directory``), which decides everything: what each message does, the sessions,
the deaths. The shell is the machine's transport and clock; it never blocks on one node.

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
from typing import Any

import zmq

from dsm import protocol as p
from dsm.clusterstop import CLOSING_LINGER_MS, closing_reason
from dsm.core.shards import shard_name
from dsm.directory.machine import Directory
from dsm.directory.pages import OnLoss
from dsm.directory.shard.role import Role
from dsm.errors import ConfigError, ProtocolError
from dsm.keys import ServerKeys, serve
from dsm.layout import Layout
from dsm.linkwire import RouterLinks
from dsm.liveness import ACK_DELAY_S, HOUSEKEEPING_INTERVAL_S, NODE_TIMEOUT_S
from dsm.logthrottle import throttle_module_logs
from dsm.managers import DEFAULT_MANAGER
from dsm.reliability import describe_session
from dsm.trace import Tracer
from dsm.wire import has_input, recv_frames

log = logging.getLogger(__name__)


POLL_INTERVAL_MS = 200
#: how many queued messages are handled before timers are looked at again
MAX_MESSAGES_PER_WAKEUP = 1000
#: messages queued for one node before it counts as not reading them (declared dead): far more
#: than the protocol keeps in flight to a live node
SEND_QUEUE_LIMIT_MESSAGES = 100_000
#: the messages a peer reads before it has a session (it is joining, or refused): no session header
BARE = (p.Welcome, p.Fenced, p.ShardWelcome)
#: how often the sessions of peers that are gone (left, declared dead) are swept away
LINK_SWEEP_INTERVAL_S = 1.0




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


class DirectoryService:
    """The ZeroMQ shell of a ``Directory`` (see the module docstring): its transport."""

    def __init__(self, endpoint: str, layout: Layout, trace_path: str | None = None,
                 node_timeout_s: float = NODE_TIMEOUT_S, on_loss: OnLoss = OnLoss.POISON,
                 keys: ServerKeys | None = None, manager: str = DEFAULT_MANAGER.value,
                 role: Role | None = None, router: tuple[zmq.Socket, Any, str] | None = None,
                 migratory: bool = True, coordinator_link: Any = None):
        """``coordinator_link``: a member shard's link to its coordinator
        (``memberlink.MemberLink``), polled with the ROUTER."""
        role = role or Role()
        tracer = Tracer(trace_path, shard_name(role.index), role="manager")
        self._ctx = zmq.Context.instance()
        self.socket, self.security, self.endpoint = router or open_router(
            self._ctx, endpoint, keys, f"the directory at {endpoint}")
        #: the state machine this shell runs: it sends through ``send`` and ``forget``
        self.directory = Directory(layout, self, time.monotonic, tracer, node_timeout_s,
                                   on_loss, manager, role, migratory)
        self.directory.endpoint = self.endpoint
        #: a reliable session per live node and per shard (``dsm/linkwire.py``)
        self.links = RouterLinks(self.socket, self.directory.has_session)
        self.coordinator_link = coordinator_link
        self._last_link_sweep_s = time.monotonic()
        self._running = True
        #: the signal that stopped it (stop()), if one did
        self._stopped_on: int | None = None

    @property
    def exit_status(self) -> int:
        """What serve_forever's caller returns: 0, or why the manager stopped on its own."""
        return self.directory.exit_status

    def stop(self, signum: int | None = None, *_: Any) -> None:
        """Stop serving (a signal's handler): the nodes are told, last (``dsm/clusterstop.py``)."""
        self._running = False
        self._stopped_on = signum

    def serve_forever(self) -> None:
        d = self.directory
        log.info("directory listening on %s (%d pages of %d bytes at %#x, epoch %x, lost "
                 "pages: %s)", self.endpoint, d.layout.num_pages, d.layout.page_size,
                 d.layout.base, d.sessions.epoch, d.pages.on_loss.value)
        # the page-state machine warns about every unexpected answer: a peer can provoke those
        throttle_module_logs("dsm.directory.pages", "unexpected page messages")
        # and the coordinator about every shard message from a peer that is no shard
        throttle_module_logs("dsm.directory.shard", "refused shard messages")
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        side = self.coordinator_link  # a member shard's link to its coordinator
        for sock in side.sockets() if side is not None else ():
            poller.register(sock, zmq.POLLIN)
        if d.role.ready:
            d.announce_once()
        last_housekeeping_s = 0.0
        try:
            while self._running and d.failed is None:
                ready = dict(poller.poll(self._poll_timeout_ms()))
                if ready:
                    # drain what is queued before looking at the clock again (ZMQ_EVENTS is
                    # cheaper than a receive that raises Again; the poll said the first is there)
                    queued = self.socket in ready
                    for _ in range(MAX_MESSAGES_PER_WAKEUP):
                        if not queued or d.failed is not None:
                            break
                        self._handle(recv_frames(self.socket))
                        queued = has_input(self.socket)
                    if side is not None and any(sock is not self.socket for sock in ready):
                        side.drain()
                now = time.monotonic()
                if self.links.gapped:  # a message was lost: ask for its replay at once
                    self.links.flush_gaps(now)
                if not ready or now - last_housekeeping_s >= HOUSEKEEPING_INTERVAL_S:
                    last_housekeeping_s = now
                    self.links.flush(now)  # acknowledgements owed, replays due
                    d.tick(now)
                    if side is not None:
                        side.tick(now)
                    self._expire_behind_links(now)
        finally:
            linger_ms = self._tell_nodes_closing()
            d.role.close()
            if side is not None:
                side.close()
            d.tracer.close()
            self.socket.close(linger_ms)

    def _tell_nodes_closing(self) -> int:
        """Stopped by a signal (not failed): tell every live node, so that one leaving meanwhile
        does not wait for an answer, nor report its leave as failed; the linger (ms) that lets
        the messages go."""
        sessions = self.directory.sessions
        if self._stopped_on is None or self.exit_status != 0 or not sessions.by_node:
            return 0
        closing = p.Closing(closing_reason(self._stopped_on))
        for session in list(sessions.by_node.values()):
            self.directory.send_to(session.identity, closing)
        return CLOSING_LINGER_MS

    def _handle(self, frames: list[Any]) -> None:
        """One message off the ROUTER: through its session (in order and once each, without the
        session header) to the machine, which answers a malformed one with an Error."""
        identity = frames[0].bytes
        self.directory.heard(identity)  # any word from a node says it is alive
        try:
            body = self.links.accept(identity, frames[1:], time.monotonic())
        except ProtocolError as exc:  # a malformed session header
            self.directory.malformed(identity, None, exc)
            return
        if body is not None:
            self.directory.receive(identity, body, lambda: _user_id(frames[1]))

    # --- the machine's transport -----------------------------------------------------------------
    def send(self, identity: bytes, message: p.Message, page: Any = None) -> bool:
        """Send without blocking; to a peer with a session, kept until acknowledged (replayed
        after a reset). False if a message to a peer without one could not be delivered."""
        frames = p.encode(message, page)
        kind = type(message)
        now = time.monotonic()
        if not self.links.send(identity, frames, now, sequenced=kind not in p.UNSEQUENCED,
                               bare=kind in BARE):
            return False
        if kind is p.ShardWelcome:
            # the shard's session starts with its welcome: what the coordinator tells it next
            # (the nodes and arrays it must know) is numbered and replayed after a reset, though
            # the shard's first session header has not come yet (without it, a reset there lost
            # a NodeAdmitted silently, and the node's Hello to that shard was refused)
            self.links.link(identity, now)
        if self.directory.wire is not None:
            self.directory.wire.count("sent", message, frames)
        return True

    def forget(self, identity: bytes) -> None:
        self.links.forget(identity)

    def describe_link(self, identity: bytes) -> str:
        link = self.links.links.get(identity)
        if link is None:
            return "no session"
        return describe_session(link, time.monotonic())

    def _expire_behind_links(self, now: float) -> None:
        """A peer that has left more unacknowledged than its session's bound is handled as a
        silent one (the machine says how); the sessions of peers that are gone are swept away
        (once what they keep is acknowledged, or is older than a death)."""
        for link in self.links.behind():
            self.directory.link_behind(
                link.peer.encode(errors="replace"),
                f"it left {link.unacked} messages ({link.unacked_bytes} bytes) "
                "unacknowledged, past the session's bound")
        if now - self._last_link_sweep_s < LINK_SWEEP_INTERVAL_S:
            return
        self._last_link_sweep_s = now
        for identity, link in list(self.links.links.items()):
            if not self.directory.has_session(identity) and (
                    not link.unacked or link.oldest_unacked_s(now) > NODE_TIMEOUT_S):
                self.links.forget(identity)

    def _poll_timeout_ms(self) -> int:
        """Wake for the next lock deadline, for an acknowledgement owed, or at the latest after
        POLL_INTERVAL_MS."""
        timeout_ms = POLL_INTERVAL_MS
        if self.links.owes():
            timeout_ms = min(timeout_ms, int(ACK_DELAY_S * 1000) + 1)
        deadline = self.directory.sync.next_deadline()
        if deadline is None:
            return timeout_ms
        return max(0, min(timeout_ms, int((deadline - time.monotonic()) * 1000) + 1))


def _user_id(frame: Any) -> str | None:
    """The ZAP user id of a received frame: a CURVE peer's public key (None when open)."""
    try:
        return frame.get("User-Id")
    except (zmq.ZMQError, AttributeError):
        return None
