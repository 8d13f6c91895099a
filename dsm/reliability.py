"""Reliable links above ZeroMQ: numbered messages, cumulative acknowledgements, replay.

ZeroMQ reconnects by itself but promises nothing across a reconnect: what was in the reset
connection's pipe or kernel buffers is gone, and ``ROUTER_MANDATORY`` reports only what is routed
while the peer is absent. So every link (node <-> manager shard, node <-> node, shard <->
coordinator) carries a session, as TCP does above IP and the ZeroMQ guide's Pirate patterns do
above ZeroMQ. This module is its state, one ``ReliableLink`` per peer, with no sockets: the
ZeroMQ side (``dsm/linkwire.py``) puts a link's header in front of every message it sends and
hands every session header it receives to ``receive``.

Wire layout: a session header in front of the protocol's first frame (``dsm/protocol.py``), in
the same frame (a frame more per message would cost a send and a receive call each)::

    frame 0: session header, 18 bytes: b"S", seq (u64), ack (u64), flags (u8), little-endian,
             then the message's header frame (nothing more: a bare acknowledgement)
    frame 1..: the message's other frames (page bytes)

- ``seq`` numbers the sender's messages on this link from 1; ``UNSEQUENCED`` (0) marks a message
  that is never replayed (the handshake, heartbeats, bare acknowledgements).
- ``ack`` says the sender has received every message of the other direction up to it, in order:
  every message carries one, so a conversation costs no extra message; a link that only receives
  sends a bare one after ``ACK_DELAY_S`` (or ``ACK_EVERY_BYTES``).
- ``FLAG_RESEND`` asks the other side to send again everything after ``ack``: a gap was seen (a
  message lost in a reset, the ones after it dropped until the lost one comes), or the sender's
  connection came back.

The receiver delivers in order, drops duplicates and what follows a gap (go-back-N: the sender
replays it). The sender keeps every sequenced message, page bytes included, until it is
acknowledged, and replays what is unacknowledged when asked, after a reconnect, or when no
acknowledgement came for ``ACK_TIMEOUT_S``. What it keeps is bounded (``MAX_UNACKED_*``): a peer
that stays behind past the bound is ``behind``, which the owner handles as a silent peer.

The header's first byte cannot begin a protocol header (a msgpack array starts 0x90-0x9f, 0xdc or
0xdd): a message without a session (``dsm top``'s questions) is told apart by it.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from typing import Any

from dsm.errors import ProtocolError
from dsm.liveness import ACK_DELAY_S, ACK_TIMEOUT_S

SESSION_MAGIC = b"S"
_HEADER = struct.Struct("<cQQB")
#: the length of a session header
SESSION_HEADER_BYTES = _HEADER.size
#: ``seq`` of a message that is never replayed
UNSEQUENCED = 0
#: "send again everything after my ack"
FLAG_RESEND = 1
_KNOWN_FLAGS = FLAG_RESEND
#: a bare acknowledgement is sent once this many bytes are unacknowledged, whatever the delay
ACK_EVERY_BYTES = 4 << 20
#: after a replay (or a request for one), another waits this long: the messages that were in
#: flight behind a gap arrive before the replay and must not trigger a second one
RESEND_HOLDOFF_S = 0.05
#: what one link may keep unacknowledged before its peer counts as behind (a live peer
#: acknowledges within milliseconds; a scan keeps a few MiB in flight)
MAX_UNACKED_MESSAGES = 100_000
MAX_UNACKED_BYTES = 512 << 20


#: what a link counts: messages sent again, received twice, received after a gap (dropped and
#: replayed), and acknowledgements sent alone; a node's stats carry each summed over its links
#: as ``session_<name>`` (``dsm top``, the metrics)
SESSION_COUNTERS = ("replayed", "duplicates", "gaps", "bare_acks")


def describe_session(link: "ReliableLink", now: float) -> str:
    """Where a session stands, for a log line about its peer: what waits for its
    acknowledgement, and what it has delivered here (whether a message reached the peer's
    session at all tells a loss on the way from a peer that got it and did not answer)."""
    waiting = (f"{link.unacked} sent unacknowledged for {link.oldest_unacked_s(now):.1f} s"
               if link.unacked else "everything sent acknowledged")
    return f"session: {waiting}, {link.delivered} received in order, {link.replayed} replayed"


def session_totals(links: list["ReliableLink"]) -> dict[str, int]:
    """The SESSION_COUNTERS of ``links``, summed (keys ``session_<name>``)."""
    return {f"session_{name}": sum(getattr(link, name) for link in links)
            for name in SESSION_COUNTERS}


class Verdict(enum.Enum):
    """What becomes of a received message."""

    DELIVER = "deliver"  #: the next in order, or unsequenced: handle it
    DUPLICATE = "duplicate"  #: delivered before (a replay crossed an acknowledgement): drop it
    GAP = "gap"  #: an earlier one is missing: drop it, the sender replays both


_MAGIC_BYTE = SESSION_MAGIC[0]


def has_session(frame: Any) -> bool:
    """Whether a message's first frame (any buffer) begins with a session header."""
    return len(frame) > 0 and frame[0] == _MAGIC_BYTE


def parse(frame: Any) -> tuple[int, int, int]:
    """(seq, ack, flags) of the session header a first frame (any buffer) begins with;
    ProtocolError naming what was wrong."""
    if len(frame) < SESSION_HEADER_BYTES:
        raise ProtocolError(f"session header is {len(frame)} bytes, expected "
                            f"{SESSION_HEADER_BYTES}")
    magic, seq, ack, flags = _HEADER.unpack_from(frame)
    if magic != SESSION_MAGIC:
        raise ProtocolError(f"session header starts with {magic!r}, expected {SESSION_MAGIC!r}")
    if flags & ~_KNOWN_FLAGS:
        raise ProtocolError(f"session header has unknown flags {flags:#x}")
    return seq, ack, flags


def strip(frames: list[Any]) -> list[Any]:
    """The message behind the session header of ``frames`` (its first frame a buffer that
    begins with one): empty for a bare acknowledgement. No copy."""
    first = frames[0]
    if len(first) == SESSION_HEADER_BYTES:
        return frames[1:]
    return [memoryview(first)[SESSION_HEADER_BYTES:], *frames[1:]]


def _behind(header: bytes, frames: list[Any]) -> list[Any]:
    """``frames`` with ``header`` in front of the first."""
    if not frames:
        return [header]
    return [header + frames[0], *frames[1:]]


class ReliableLink:
    """One peer's session: what this side sent and keeps until acknowledged, and what it has
    received in order. ``now`` arguments are ``time.monotonic()`` seconds (the simulator's
    clock in simulation)."""

    def __init__(self, peer: str, now: float, max_unacked_messages: int = MAX_UNACKED_MESSAGES,
                 max_unacked_bytes: int = MAX_UNACKED_BYTES):
        self.peer = peer
        self._max_messages = max_unacked_messages
        self._max_bytes = max_unacked_bytes
        self._next_seq = 1
        #: (seq, frames, bytes) sent and not yet acknowledged, oldest first
        self._unacked: deque[tuple[int, list[Any], int]] = deque()
        self.unacked_bytes = 0
        #: the last message of the peer's delivered in order (what this side acknowledges)
        self.delivered = 0
        self._acked_to_peer = 0  # the last ack this side sent
        self._owed_since: float | None = None  # an acknowledgement owed since
        self._owed_bytes = 0
        self._want_resend = False  # a gap was seen: ask the peer to replay
        self._asked_resend_s = float("-inf")
        self._resent_s = float("-inf")
        #: when the peer last acknowledged something new, or this side replayed or began to wait
        self._progress_s = now
        #: a replay is due at once (the peer asked for it, or this side reconnected): apart from
        #: ``_progress_s``, whose age tells how long the peer has made no progress
        self._replay_due = False
        #: counters (``SESSION_COUNTERS``), for the node's stats and its metrics
        self.replayed = 0
        self.duplicates = 0
        self.gaps = 0
        self.bare_acks = 0

    # --- sending -----------------------------------------------------------------------------
    def _frame(self, seq: int, flags: int = 0) -> bytes:
        self._acked_to_peer = self.delivered
        self._owed_since = None
        self._owed_bytes = 0
        return _HEADER.pack(SESSION_MAGIC, seq, self.delivered, flags)

    def sequenced(self, frames: list[Any], now: float) -> list[Any]:
        """``frames`` behind a session header with the next number; kept until
        acknowledged."""
        seq = self._next_seq
        self._next_seq += 1
        nbytes = sum(map(len, frames))  # page bytes (a byte buffer's len), for the bound
        if not self._unacked:
            self._progress_s = now  # the acknowledgement timer starts with the first kept
        self._unacked.append((seq, frames, nbytes))
        self.unacked_bytes += nbytes
        return _behind(self._frame(seq), frames)

    def unsequenced(self, frames: list[Any]) -> list[Any]:
        """``frames`` behind a session header that is never replayed (it still
        acknowledges)."""
        return _behind(self._frame(UNSEQUENCED), frames)

    def retract(self) -> list[Any]:
        """Take back the last message sequenced (its send failed and the caller sends it another
        way): its frames. Only right after ``sequenced``."""
        seq, frames, nbytes = self._unacked.pop()
        assert seq == self._next_seq - 1, "retract only the last message sequenced"
        self._next_seq -= 1
        self.unacked_bytes -= nbytes
        return frames

    @property
    def behind(self) -> bool:
        """Whether the peer has left more unacknowledged than the bound: handle it as silent."""
        return len(self._unacked) > self._max_messages or self.unacked_bytes > self._max_bytes

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def unacked_seqs(self) -> list[int]:
        """The numbers of the messages sent and not yet acknowledged, oldest first."""
        return [seq for seq, _, _ in self._unacked]

    def oldest_unacked_s(self, now: float) -> float:
        """How long the peer has made no progress while messages wait for it (0: none wait)."""
        return now - self._progress_s if self._unacked else 0.0

    # --- receiving ---------------------------------------------------------------------------
    def receive(self, seq: int, ack: int, flags: int, nbytes: int, now: float) -> Verdict:
        """A session header ``(seq, ack, flags)`` came, in front of ``nbytes`` of message (0: a
        bare acknowledgement): what to do with the message. Replays the peer asked for are
        collected by ``outgoing``."""
        self._acknowledged(ack, now)
        if flags & FLAG_RESEND and now - self._resent_s >= RESEND_HOLDOFF_S:
            self._resent_s = float("-inf")  # due now: outgoing replays
            self._replay_due = True
        if seq == UNSEQUENCED:
            return Verdict.DELIVER
        if seq == self.delivered + 1:
            self.delivered = seq
            if self._owed_since is None:
                self._owed_since = now
            self._owed_bytes += nbytes
            return Verdict.DELIVER
        if seq <= self.delivered:
            self.duplicates += 1
            if self._owed_since is None:  # the peer did not hear the acknowledgement: again
                self._owed_since = now
            return Verdict.DUPLICATE
        self.gaps += 1
        self._want_resend = True
        return Verdict.GAP

    def _acknowledged(self, ack: int, now: float) -> None:
        if ack >= self._next_seq:
            raise ProtocolError(f"acknowledgement {ack} from {self.peer} of a message never sent "
                                f"(the last sent is {self._next_seq - 1})")
        unacked = self._unacked
        if not unacked or unacked[0][0] > ack:
            return
        while unacked and unacked[0][0] <= ack:
            _, _, nbytes = unacked.popleft()
            self.unacked_bytes -= nbytes
        self._progress_s = now

    def reconnected(self) -> None:
        """This side's connection came back: what the old one carried may be lost both ways.
        ``outgoing`` then replays what is unacknowledged and asks the peer to do the same."""
        self._want_resend = True
        self._asked_resend_s = float("-inf")
        self._resent_s = float("-inf")
        self._replay_due = True

    # --- what to send now --------------------------------------------------------------------
    def outgoing(self, now: float) -> list[list[Any]]:
        """The messages due now, each as frames to send: a request for a replay (a gap was
        seen), a bare acknowledgement owed for ``ACK_DELAY_S`` or ``ACK_EVERY_BYTES``, and
        the replay of everything unacknowledged when the peer asked for it or has acknowledged
        nothing for ``ACK_TIMEOUT_S``."""
        out: list[list[Any]] = []
        if self._want_resend and now - self._asked_resend_s >= RESEND_HOLDOFF_S:
            self._want_resend = False
            self._asked_resend_s = now
            out.append([self._frame(UNSEQUENCED, FLAG_RESEND)])
        elif self._owed_since is not None and (now - self._owed_since >= ACK_DELAY_S
                                               or self._owed_bytes >= ACK_EVERY_BYTES):
            self.bare_acks += 1
            out.append([self._frame(UNSEQUENCED)])
        if self._unacked and (self._replay_due or now - self._progress_s >= ACK_TIMEOUT_S):
            out.extend(self._replay(now))
        self._replay_due = False  # (replayed, or nothing is kept to replay)
        return out

    def _replay(self, now: float) -> list[list[Any]]:
        self._resent_s = self._progress_s = now
        self.replayed += len(self._unacked)
        return [_behind(self._frame(seq), frames) for seq, frames, _ in self._unacked]

    def owes(self) -> bool:
        """Whether ``outgoing`` may have something to send (cheap: for the loop's fast path)."""
        return bool(self._unacked) or self._owed_since is not None or self._want_resend

    @property
    def wants_replay(self) -> bool:
        """Whether a gap was seen and the peer is to be asked for a replay (at once: the loop
        does not wait for its timers for that)."""
        return self._want_resend
