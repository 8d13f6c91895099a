"""The agent's links to the directory: one DEALER per manager shard (IVY's fixed distributed
manager, ``dsm.core.shards``), and which of them each message travels on.

A node first reaches the directory's coordinator, shard 0, at the endpoint it was given. The
coordinator's Welcome lists every shard's endpoint (none: one directory serves every page); the
node then says the same Hello to every other shard, with the same ZeroMQ identity, and waits
for each one's Welcome (``join_shards``). From then on:

    a message with a ``page`` (Acquire, Fetched, Invalidated, Writeback, Drop, ...)
                                    -> the page's shard, ``shard_of(page, shards)``
    Discard (a list of pages)       -> split: one Discard per shard, of that shard's pages
    Heartbeat, Bye                  -> every shard (each keeps its own session of this node)
    anything else (Hello, Alloc, locks, barriers, lost pages, reports)
                                    -> shard 0, the coordinator

Every link carries a session (``dsm/reliability.py``, ``dsm/linkwire.py``) once the shard has
welcomed the node: messages are numbered, acknowledged and replayed after a reset, so a reset
connection costs a replay, never a message. The Hellos and Welcomes before it travel bare.

The node core never asks for a run that crosses a stripe's end, so a page message's run is one
shard's. Each shard's silence is watched on its own: the node is cut off as soon as any shard
has been silent for ``NODE_CUT_OFF_S`` (``longest_silence``), since that shard is about to hand
this node's pages on.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator
from urllib.parse import urlsplit

import zmq

from dsm import protocol as p
from dsm.linkwire import DealerLink, accept, reconnect_promptly
from dsm.wire import has_input, recv_frames
from dsm.core.shards import shard_name, shard_of
from dsm.errors import DsmError, ProtocolError
from dsm.keys import ClientKeys, HandshakeWatch, configure_client
from dsm.logthrottle import ThrottledLog
from dsm.trace import Tracer

log = logging.getLogger(__name__)


#: hosts that, in an advertised shard endpoint, stand for "the coordinator's host"
WILDCARD_HOSTS = ("0.0.0.0", "*", "::", "[::]")
#: the messages every shard gets
TO_EVERY_SHARD = (p.Heartbeat, p.Bye)
#: what ``send`` returns for a message to shard 0 alone
COORDINATOR_ONLY = (0,)


class ShardUnreachable(DsmError):
    """A manager shard the coordinator named did not answer the node's Hello in time."""


class ShardRefused(DsmError):
    """A manager shard will not serve this node (it fenced it, or it belongs to another
    directory)."""


def resolve_endpoint(advertised: str, coordinator: str) -> str:
    """Where this node reaches a shard the coordinator advertised: a wildcard host
    (``tcp://0.0.0.0:7401``: the shard binds every interface of the coordinator's host) is
    replaced by the host this node reached the coordinator at."""
    scheme, sep, rest = advertised.partition("://")
    if scheme != "tcp" or not sep:
        return advertised
    host, colon, port = rest.rpartition(":")
    if not colon or host not in WILDCARD_HOSTS:
        return advertised
    coordinator_host = urlsplit(coordinator).hostname if coordinator.startswith("tcp://") else None
    if not coordinator_host:
        return advertised
    if ":" in coordinator_host:  # an IPv6 address
        coordinator_host = f"[{coordinator_host}]"
    return f"tcp://{coordinator_host}:{port}"


class ShardLinks:
    """The DEALERs to the directory's shards, shard 0 (the coordinator) first; ``send`` routes
    each message to its shard, ``receive`` drains them all. ``close()`` when done."""

    def __init__(self, ctx: zmq.Context, identity: bytes, coordinator: str,
                 keys: ClientKeys | None, send_timeout_ms: int, linger_ms: int = 1000):
        self._ctx = ctx
        self._identity = identity
        self._keys = keys
        self._send_timeout_ms = send_timeout_ms
        self._linger_ms = linger_ms
        #: shard 0's DEALER; its monitor (made before it connects) tells a refused handshake
        #: from an unreachable directory
        self.coordinator = self._dealer()
        self.handshake = HandshakeWatch(self.coordinator, coordinator, keys)
        self.coordinator.connect(coordinator)
        self.dealers: list[zmq.Socket] = [self.coordinator]
        self.endpoints: list[str] = [coordinator]
        now = time.monotonic()
        #: when each shard was last heard from, and last sent to (its heartbeats are due)
        self.last_heard_s: list[float] = [now]
        self.last_sent_s: list[float] = [now]
        self._ids = {id(self.coordinator)}
        self._tracer: Tracer | None = None
        self._link = ""
        #: each shard's session, shard 0 first (``start_sessions``, once every shard welcomed)
        self.sessions: list[DealerLink] = []
        self._complain = ThrottledLog(log, "malformed session headers")

    @property
    def _tracing(self) -> bool:
        return self._tracer is not None and self._tracer.enabled

    @property
    def count(self) -> int:
        """How many shards (1: one directory)."""
        return len(self.dealers)

    def _dealer(self) -> zmq.Socket:
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, self._linger_ms)
        # a shard that takes no message for as long as this node may go on without it (its
        # queue full: gone, or not reading) cuts the node off, rather than block the loop forever
        dealer.setsockopt(zmq.SNDTIMEO, self._send_timeout_ms)
        dealer.setsockopt(zmq.IDENTITY, self._identity)
        reconnect_promptly(dealer)  # a reset costs a replay, not ZeroMQ's 100 ms wait
        # CURVE with this node's key, pinning the directory's (every shard serves with it)
        configure_client(dealer, self._keys)
        return dealer

    # --- joining -----------------------------------------------------------------------------
    def join_shards(self, advertised: list[str], hello: p.Hello, epoch: int,
                    timeout_s: float, tracer: Tracer | None = None, link: str = "") -> None:
        """Say ``hello`` to every shard after the coordinator (``advertised``: the coordinator's
        Welcome.shards) and wait for each one's Welcome. ShardUnreachable, ShardRefused or
        AuthenticationFailed if one does not serve this node. Every shard's silence starts
        when this returns. ``tracer``: the Hellos and Welcomes are traced on the link of
        ``link`` (this node's) with each shard, as every later message is."""
        self._tracer, self._link = tracer, link
        if len(advertised) > 1:
            self._join_others(advertised, hello, epoch, timeout_s)
        now = time.monotonic()
        self.last_heard_s = [now] * self.count
        self.last_sent_s = [now] * self.count
        # every connection is up and welcomed: from here every later connection is a reconnect
        self.sessions = [DealerLink(dealer, f"shard {shard}", now)
                         for shard, dealer in enumerate(self.dealers)]
        for session in self.sessions:
            session.open(now)

    def _join_others(self, advertised: list[str], hello: p.Hello, epoch: int,
                     timeout_s: float) -> None:
        frames = p.encode(hello)
        watches: dict[int, HandshakeWatch] = {}
        waiting: dict[int, int] = {}  # id(dealer) -> shard
        poller = zmq.Poller()
        try:
            for shard, ad in enumerate(advertised[1:], start=1):
                endpoint = resolve_endpoint(ad, self.endpoints[0])
                dealer = self._dealer()
                watches[shard] = HandshakeWatch(dealer, endpoint, self._keys)
                dealer.connect(endpoint)
                t0 = self._tracer.now() if self._tracing else None
                dealer.send_multipart(frames)
                if t0 is not None:
                    self._tracer.sent(self._link, shard_name(shard), shard_name(shard), hello, t0)
                self.dealers.append(dealer)
                self.endpoints.append(endpoint)
                self._ids.add(id(dealer))
                waiting[id(dealer)] = shard
                poller.register(dealer, zmq.POLLIN)
                poller.register(watches[shard].monitor, zmq.POLLIN)
            deadline = time.monotonic() + timeout_s
            while waiting:
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    shard = min(waiting.values())
                    raise ShardUnreachable(
                        f"manager shard {shard} of {len(advertised)} at "
                        f"{self.endpoints[shard]} (advertised by the coordinator as "
                        f"{advertised[shard]}) did not answer within {timeout_s} s "
                        f"({watches[shard].progress()})")
                ready = dict(poller.poll(max(1, int(left_s * 1000))))
                for watch in watches.values():
                    watch.check()  # AuthenticationFailed when a handshake was refused
                for dealer in self.dealers[1:]:
                    if dealer in ready and id(dealer) in waiting:
                        shard = waiting.pop(id(dealer))
                        self._welcomed(shard, dealer, epoch)
        finally:
            for watch in watches.values():
                watch.close()

    def _welcomed(self, shard: int, dealer: zmq.Socket, epoch: int) -> None:
        msg, _ = p.decode(dealer.recv_multipart(), 0, p.Direction.TO_NODE)
        if self._tracing:
            self._tracer.received(shard_name(shard), self._link, shard_name(shard), msg)
        where = f"manager shard {shard} at {self.endpoints[shard]}"
        if isinstance(msg, p.Fenced):
            raise ShardRefused(f"{where} refused this node: {msg.reason}")
        if not isinstance(msg, p.Welcome):
            raise ProtocolError(f"expected Welcome from {where}, got {type(msg).__name__}")
        if msg.epoch != epoch:
            raise ShardRefused(f"{where} belongs to another directory: its epoch is "
                               f"{msg.epoch:x}, the coordinator's {epoch:x}")

    # --- sending -----------------------------------------------------------------------------
    def send(self, msg: p.Message, frames: list[Any]) -> tuple[int, ...]:
        """Send ``msg`` (encoded as ``frames``) to the shard it belongs to (see the module
        docstring); the shards it went to. zmq.Again if a shard's queue stayed full for the
        send timeout."""
        sequenced = not isinstance(msg, p.UNSEQUENCED)
        if len(self.dealers) == 1:
            self._send_to(0, frames, sequenced)
            return COORDINATOR_ONLY
        if isinstance(msg, TO_EVERY_SHARD):
            for shard in range(self.count):
                self._send_to(shard, frames, sequenced)
            return tuple(range(self.count))
        page = getattr(msg, "page", None)
        if page is not None:
            shard = shard_of(page, self.count)
            self._send_to(shard, frames, sequenced)
            return (shard,)
        if isinstance(msg, p.Discard):
            by_shard: dict[int, list[int]] = {}
            for q in msg.pages:
                by_shard.setdefault(shard_of(q, self.count), []).append(q)
            for shard, pages in by_shard.items():
                self._send_to(shard, p.encode(p.Discard(pages)), sequenced)
            return tuple(by_shard)
        self._send_to(0, frames, sequenced)
        return COORDINATOR_ONLY

    def _send_to(self, shard: int, frames: list[Any], sequenced: bool) -> None:
        now = time.monotonic()
        self.sessions[shard].send(frames, now, sequenced)
        self.last_sent_s[shard] = now

    def flush(self, now: float) -> None:
        """Send what each shard's session has due (acknowledgements, replays)."""
        for session in self.sessions:
            session.flush(now)

    def flush_urgent(self, now: float) -> None:
        """What cannot wait for the loop's timers: a replay asked for after a gap."""
        for session in self.sessions:
            if session.link.wants_replay:
                session.flush(now, watch=False)

    def behind(self) -> DealerLink | None:
        """A shard's session that has fallen behind its bound, if any."""
        return next((s for s in self.sessions if s.link.behind), None)

    def least_recent_send_s(self) -> float:
        """When the shard sent to least recently was last sent to (a heartbeat is due when
        that is HEARTBEAT_INTERVAL_S ago: every shard must hear from a live node)."""
        return min(self.last_sent_s)

    # --- receiving ---------------------------------------------------------------------------
    def owns(self, item: Any) -> bool:
        """Whether a polled item is one of these DEALERs."""
        return id(item) in self._ids

    def register(self, poller: zmq.Poller) -> None:
        # the monitors are not polled (each item costs every poll a look): the loop's timers
        # look at them, within HOUSEKEEPING_INTERVAL_S while it is busy, POLL_INTERVAL_MS idle
        for dealer in self.dealers:
            poller.register(dealer, zmq.POLLIN)

    def poll(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` until a shard has sent something."""
        if len(self.dealers) == 1:
            return bool(self.coordinator.poll(timeout_ms))
        poller = zmq.Poller()
        self.register(poller)
        return bool(poller.poll(timeout_ms))

    def receive(self) -> Iterator[tuple[int, list[Any]]]:
        """Every message queued on every DEALER as (shard, frames), each shard's in its order
        (no copies). A shard heard from is alive: its silence starts again."""
        for shard, session in enumerate(self.sessions):
            dealer, link = session.socket, session.link
            # ZMQ_EVENTS says whether a message is queued: cheaper than a receive that raises
            while has_input(dealer):
                now = self.last_heard_s[shard] = time.monotonic()
                frames = recv_frames(dealer)
                try:
                    body = accept(link, frames, now)  # in order, each once; acks noted
                except ProtocolError as exc:
                    self._complain(logging.WARNING, "malformed message from shard %d: %s",
                                   shard, exc)
                    continue
                if body is not None:
                    yield shard, body

    def longest_silence(self, now: float) -> tuple[float, str]:
        """How long the most silent shard has been silent, in seconds, and its endpoint."""
        shard = min(range(self.count), key=self.last_heard_s.__getitem__)
        return now - self.last_heard_s[shard], self.endpoints[shard]

    # --- the end -----------------------------------------------------------------------------
    def set_linger(self, linger_ms: int) -> None:
        for dealer in self.dealers:
            dealer.setsockopt(zmq.LINGER, linger_ms)

    def close(self) -> None:
        for session in self.sessions:
            if session.watch is not None:
                session.watch.close()
        for dealer in self.dealers:
            dealer.close()
