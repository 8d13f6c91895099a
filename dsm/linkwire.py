"""Reliable links on ZeroMQ sockets: ``dsm.reliability``'s sessions carried by a DEALER (one
peer) or a ROUTER (one per peer identity).

- ``DealerLink``: a DEALER and its session; with a ``ReconnectWatch`` (a socket monitor), a
  connection that comes back replays what is unacknowledged both ways at once, rather than after
  ``ACK_TIMEOUT_S``.
- ``RouterLinks``: a ROUTER's sessions by peer identity. A peer that reconnects under the same
  identity (``ROUTER_HANDOVER``) keeps its session; a message routed while it is away
  (``EHOSTUNREACH`` under ``ROUTER_MANDATORY``) or refused by a full queue stays kept for the
  replay, never a death.

Both strip the session header of what they receive and hand on only what is to be delivered, in
order; a message without a session header (a handshake, or a peer that keeps none, ``dsm top``)
is handed on as it came. ``flush(now)`` sends what the sessions have due (acknowledgements,
replay requests, replays): the owner's loop calls it after it has read, and on its timers.
"""

from __future__ import annotations

import errno
import itertools
import logging
from typing import Any, Callable, Iterator

import zmq
from zmq.utils.monitor import parse_monitor_message

from dsm.reliability import ReliableLink, Verdict, has_session, parse, strip
from dsm.wire import has_input, recv_frames, send_frames, stop_monitor

log = logging.getLogger(__name__)

#: the send errors that leave a message kept for the replay: the peer is disconnected
#: (EHOSTUNREACH under ROUTER_MANDATORY) or its queue is full (EAGAIN)
NOT_SENT_NOW = (errno.EHOSTUNREACH, errno.EAGAIN)


#: numbers the monitors' inproc addresses
_watch_ids = itertools.count()
#: how soon a connecting socket tries again after its connection was reset (ZeroMQ's default is
#: 100 ms: every reset would cost that before the replay), backing off to RECONNECT_MAX_MS
RECONNECT_MS = 10
RECONNECT_MAX_MS = 1000


def reconnect_promptly(sock: zmq.Socket) -> None:
    """Make a connecting socket reconnect within RECONNECT_MS of a reset (set before connect)."""
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)


def accept(link: ReliableLink | None | Callable[[], ReliableLink | None], frames: list[Any],
           now: float) -> list[Any] | None:
    """What of ``frames`` (a message as received, after any ROUTER identity) is to be handled:
    the message without its session header, or None (a bare acknowledgement, a duplicate, a
    message behind a gap). ``link``: the sender's session, or what makes it once the session
    frame proved well formed; without one, a session header is stripped and its numbers ignored.
    ProtocolError if the session header is malformed."""
    if not frames:
        return frames
    first = frames[0]
    head = first.buffer if type(first) is zmq.Frame else first
    if not has_session(head):
        return frames
    seq, ack, flags = parse(head)
    body = strip([head, *frames[1:]])
    if callable(link):
        link = link()
    if link is not None:
        nbytes = sum(map(len, body)) if body else 0
        if link.receive(seq, ack, flags, nbytes, now) is not Verdict.DELIVER:
            return None
    return body or None


class ReconnectWatch:
    """Whether a connecting socket's connection came back since last asked (its monitor).
    ``connected``: the socket's first connection is up already, so that every CONNECTED is a
    reconnect; else the first one is not."""

    EVENTS = zmq.EVENT_CONNECTED

    def __init__(self, sock: zmq.Socket, connected: bool = True):
        self._socket = sock
        self._first_pending = not connected
        # an address of its own: pyzmq's default (by fd) may still be bound by a monitor the
        # socket had while it joined
        address = f"inproc://dsm-reconnects-{next(_watch_ids)}"
        sock.monitor(address, self.EVENTS)
        self.monitor = sock.context.socket(zmq.PAIR)
        self.monitor.connect(address)

    def reconnected(self) -> bool:
        came_back = False
        while has_input(self.monitor):
            event = parse_monitor_message(self.monitor.recv_multipart())
            if event["event"] == zmq.EVENT_CONNECTED:
                came_back = not self._first_pending
                self._first_pending = False
        return came_back

    def close(self) -> None:
        stop_monitor(self._socket, self.monitor)


class DealerLink:
    """A DEALER to one peer with its session (``peer``: a name for the logs)."""

    def __init__(self, sock: zmq.Socket, peer: str, now: float, watch: bool = True,
                 connected: bool = True):
        self.socket = sock
        self.link = ReliableLink(peer, now)
        self.watch = ReconnectWatch(sock, connected) if watch else None

    def open(self, now: float) -> None:
        """Start the session at the peer (a bare acknowledgement: its first session header), so
        that whatever it sends from now on is numbered, even before this side says more."""
        try:
            self.send([], now, sequenced=False, nonblocking=True)
        except zmq.Again:  # no connection yet: the first message starts it instead
            pass

    def send(self, frames: list[Any], now: float, sequenced: bool = True,
             nonblocking: bool = False) -> None:
        """Send ``frames`` as one message, numbered and kept until acknowledged (``sequenced``)
        or not. zmq.Again as the socket raises it; a sequenced message stays kept (replayed
        once the peer takes messages again)."""
        link = self.link
        wire = link.sequenced(frames, now) if sequenced else link.unsequenced(frames)
        send_frames(self.socket, wire, nonblocking)

    def send_once(self, frames: list[Any], now: float) -> bool:
        """Send ``frames`` numbered, or not at all if the socket takes it not now (then it is not
        kept either: the caller sends it another way). Whether it was sent."""
        wire = self.link.sequenced(frames, now)
        try:
            send_frames(self.socket, wire, nonblocking=True)
        except zmq.Again:
            self.link.retract()
            return False
        return True

    def receive(self, now: float) -> Iterator[list[Any]]:
        """The messages queued on the DEALER that are to be handled, in order (ProtocolError
        for one whose session header is malformed: the others are still read after it)."""
        sock, link = self.socket, self.link
        while has_input(sock):
            frames = recv_frames(sock)
            body = accept(link, frames, now)
            if body is not None:
                yield body

    def flush(self, now: float, watch: bool = True) -> None:
        """Send what the session has due; on a reconnect (``watch``: look at the monitor),
        replay and ask for a replay."""
        if watch and self.watch is not None and self.watch.reconnected():
            self.link.reconnected()
        if not self.link.owes():
            return
        for wire in self.link.outgoing(now):
            try:
                send_frames(self.socket, wire, nonblocking=True)
            except zmq.Again:  # kept: the acknowledgement timer sends it again
                break

    def replace_socket(self, sock: zmq.Socket) -> None:
        """Carry on the session over ``sock``, a fresh socket (not yet connected) with the same
        identity, as the guide's Lazy Pirate does with a connection that stopped answering: the
        old one is closed at once, and what is unacknowledged is replayed as soon as the new one
        connects."""
        watching = self.watch is not None
        self.close(0)
        self.socket = sock
        # every CONNECTED of the new socket, the first included, is a reconnect: replay
        self.watch = ReconnectWatch(sock, connected=True) if watching else None

    def close(self, linger_ms: int | None = None) -> None:
        if self.watch is not None:
            self.watch.close()
        self.socket.close(linger_ms)


class RouterLinks:
    """A ROUTER's sessions, one per peer identity. A peer's session starts with the first
    session header it sends, if ``admit(identity)`` says it may have one (a live node, a shard);
    a peer that sends none (a handshake, ``dsm top``, a test's raw socket) is answered without."""

    def __init__(self, sock: zmq.Socket, admit: Callable[[bytes], bool],
                 max_links: int | None = None):
        self.socket = sock
        self._admit = admit
        self._max_links = max_links
        self.links: dict[bytes, ReliableLink] = {}
        #: links that may have something to send (``flush``)
        self._owing: set[bytes] = set()
        #: links that saw a gap: their replay is asked for at once (``flush_gaps``)
        self.gapped: set[bytes] = set()

    def link(self, identity: bytes, now: float) -> ReliableLink | None:
        """``identity``'s session: made now if it has none and ``admit`` says so."""
        link = self.links.get(identity)
        if link is None and self._admit(identity):
            link = self.links[identity] = ReliableLink(identity.decode(errors="replace"), now)
            if self._max_links is not None and len(self.links) > self._max_links:
                oldest = next(iter(self.links))
                self.forget(oldest)
        return link

    def accept(self, identity: bytes, frames: list[Any], now: float) -> list[Any] | None:
        """As ``accept`` above, with ``identity``'s session (``frames``: after the identity)."""
        link = self.links.get(identity)
        body = accept(link if link is not None else lambda: self.link(identity, now), frames,
                      now)
        if link is not None or identity in self.links:
            self._owing.add(identity)
            if link is not None and link.wants_replay:
                self.gapped.add(identity)
        return body

    def send(self, identity: bytes, frames: list[Any], now: float, sequenced: bool = True,
             bare: bool = False) -> bool:
        """Send ``frames`` to ``identity``: behind its session header if it has a session (kept
        until acknowledged when ``sequenced``, sent again once it reconnects), as they are if
        not or if ``bare`` (a handshake, which its peer reads before any session). False only
        for a message without a session that could not be delivered."""
        link = None if bare else self.links.get(identity)
        if link is None:
            wire = frames
        elif sequenced:
            wire = link.sequenced(frames, now)
            self._owing.add(identity)
        else:
            wire = link.unsequenced(frames)
        try:
            send_frames(self.socket, [identity, *wire], nonblocking=True)
        except zmq.ZMQError as exc:
            if exc.errno not in NOT_SENT_NOW:
                raise
            return link is not None and sequenced
        return True

    def flush_gaps(self, now: float) -> None:
        """Ask at once for the replays of the sessions that saw a gap (the rest of what is due
        waits for ``flush``, on the loop's timers)."""
        gapped, self.gapped = self.gapped, set()
        self._flush(gapped, now)

    def flush(self, now: float) -> None:
        """Send what every session has due."""
        self.gapped.clear()
        self._flush(self._owing, now)

    def _flush(self, identities: set[bytes], now: float) -> None:
        if not identities:
            return
        for identity in list(identities):
            link = self.links.get(identity)
            if link is None or not link.owes():
                self._owing.discard(identity)
                continue
            for wire in link.outgoing(now):
                try:
                    send_frames(self.socket, [identity, *wire], nonblocking=True)
                except zmq.ZMQError as exc:
                    if exc.errno not in NOT_SENT_NOW:
                        raise
                    break  # kept: sent again on its acknowledgement timer

    def forget(self, identity: bytes) -> ReliableLink | None:
        self._owing.discard(identity)
        return self.links.pop(identity, None)

    def owes(self) -> bool:
        """Whether a session may have something to send soon (the loop wakes for it)."""
        return bool(self._owing)

    def behind(self) -> list[ReliableLink]:
        """The sessions whose peers have fallen behind their bound."""
        return [link for link in self.links.values() if link.behind]


