"""The reliable session's logic (``dsm/reliability.py``) without sockets: numbering,
acknowledgements, duplicates, gaps, replays and bounds; and, over a channel that loses,
duplicates, reorders and resets at random, every message delivered once, in order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from dsm.errors import ProtocolError
from dsm.liveness import ACK_DELAY_S, ACK_TIMEOUT_S
from dsm.reliability import (
    FLAG_RESEND, SESSION_HEADER_BYTES, UNSEQUENCED, ReliableLink, Verdict, describe_session,
    has_session, parse, strip,
)


def _deliver(receiver: ReliableLink, wire: list, now: float) -> tuple[Verdict, list]:
    seq, ack, flags = parse(wire[0])
    body = [bytes(f) for f in strip(wire)]
    return receiver.receive(seq, ack, flags, sum(len(f) for f in body), now), body


def test_messages_are_numbered_and_kept_until_acknowledged():
    a, b = ReliableLink("b", 0.0), ReliableLink("a", 0.0)
    first = a.sequenced([b"one"], 0.0)
    second = a.sequenced([b"two", b"page"], 0.0)
    assert has_session(first[0]) and len(first[0]) == SESSION_HEADER_BYTES + len(b"one")
    assert [parse(first[0])[0], parse(second[0])[0]] == [1, 2]
    assert a.unacked == 2 and a.unacked_bytes == 3 + 7
    assert _deliver(b, first, 0.0) == (Verdict.DELIVER, [b"one"])
    assert _deliver(b, second, 0.0) == (Verdict.DELIVER, [b"two", b"page"])
    reply = b.unsequenced([b"answer"])  # any message acknowledges
    assert parse(reply[0]) == (UNSEQUENCED, 2, 0)
    assert _deliver(a, reply, 0.1)[0] is Verdict.DELIVER
    assert a.unacked == 0 and a.unacked_bytes == 0


def test_a_duplicate_is_dropped_and_acknowledged_again():
    a, b = ReliableLink("b", 0.0), ReliableLink("a", 0.0)
    wire = a.sequenced([b"x"], 0.0)
    assert _deliver(b, wire, 0.0)[0] is Verdict.DELIVER
    b.outgoing(1.0)  # its acknowledgement, lost on the way
    assert _deliver(b, wire, 1.0)[0] is Verdict.DUPLICATE
    (ack,) = b.outgoing(1.0 + ACK_DELAY_S)
    assert parse(ack[0]) == (UNSEQUENCED, 1, 0) and len(ack) == 1


def test_a_gap_drops_what_follows_and_asks_for_a_replay():
    a, b = ReliableLink("b", 0.0), ReliableLink("a", 0.0)
    lost = a.sequenced([b"1"], 0.0)
    later = a.sequenced([b"2"], 0.0)
    assert lost
    assert _deliver(b, later, 0.0)[0] is Verdict.GAP
    (ask,) = b.outgoing(0.0)
    assert parse(ask[0]) == (UNSEQUENCED, 0, FLAG_RESEND)
    assert b.outgoing(0.0) == []  # asked once per hold-off
    assert _deliver(a, ask, 0.001)[0] is Verdict.DELIVER
    replay = a.outgoing(0.001)
    assert [parse(w[0])[0] for w in replay] == [1, 2] and [[bytes(f) for f in strip(w)] for w in replay] == [[b"1"], [b"2"]]
    assert [_deliver(b, w, 0.002)[0] for w in replay] == [Verdict.DELIVER, Verdict.DELIVER]
    # a second request inside the hold-off (messages that were in flight behind the gap) waits
    assert _deliver(a, [ask[0]], 0.002)[0] is Verdict.DELIVER
    assert a.outgoing(0.002) == []
    assert b.delivered == 2


def test_what_is_unacknowledged_is_replayed_after_the_timeout_and_on_a_reconnect():
    a = ReliableLink("b", 0.0)
    a.sequenced([b"x"], 0.0)
    assert a.outgoing(ACK_TIMEOUT_S / 2) == []
    (replay,) = a.outgoing(ACK_TIMEOUT_S)
    assert parse(replay[0])[0] == 1
    assert a.outgoing(ACK_TIMEOUT_S + 0.1) == []  # the timer starts again
    a.reconnected()
    out = a.outgoing(ACK_TIMEOUT_S + 0.2)
    assert parse(out[0][0]) == (UNSEQUENCED, 0, FLAG_RESEND)  # and the peer replays its own
    assert [parse(w[0])[0] for w in out[1:]] == [1]


def test_a_replay_asked_for_or_due_to_a_reconnect_is_no_stall():
    # a peer endpoint gives a link up once it has made no progress for long (dsm.agent.peers):
    # a replay the peer asks for, or a reconnect, must not read as a link silent for ever
    # (it did: the dynamic manager's requests on a link reset now and then were given up)
    a, b = ReliableLink("b", 0.0), ReliableLink("a", 0.0)
    a.sequenced([b"1"], 0.0)
    later = a.sequenced([b"2"], 0.0)
    assert _deliver(b, later, 0.0)[0] is Verdict.GAP
    (ask,) = b.outgoing(0.0)
    assert _deliver(a, ask, 0.1)[0] is Verdict.DELIVER
    assert a.oldest_unacked_s(0.1) == pytest.approx(0.1)
    assert [parse(w[0])[0] for w in a.outgoing(0.1)] == [1, 2]  # replayed at once
    a.reconnected()
    assert a.oldest_unacked_s(0.2) == pytest.approx(0.1)
    assert [parse(w[0])[0] for w in a.outgoing(0.2)[1:]] == [1, 2]
    assert a.outgoing(0.3) == []  # and not again before its timer


def test_retract_takes_back_the_last_message():
    a = ReliableLink("b", 0.0)
    a.sequenced([b"kept"], 0.0)
    a.sequenced([b"not sent"], 0.0)
    assert a.retract() == [b"not sent"]
    assert parse(a.sequenced([b"next"], 0.0)[0])[0] == 2 and a.unacked == 2


def test_a_peer_that_falls_behind_its_bound_is_behind():
    a = ReliableLink("b", 0.0, max_unacked_messages=3, max_unacked_bytes=1 << 20)
    for _ in range(3):
        a.sequenced([b"x"], 0.0)
    assert not a.behind
    a.sequenced([b"x"], 0.0)
    assert a.behind
    big = ReliableLink("b", 0.0, max_unacked_messages=100, max_unacked_bytes=10)
    big.sequenced([b"x" * 11], 0.0)
    assert big.behind


def test_malformed_session_frames_are_protocol_errors():
    with pytest.raises(ProtocolError, match="is 5 bytes, expected 18"):
        parse(b"S" * 5)
    with pytest.raises(ProtocolError, match="starts with"):
        parse(b"X" + bytes(17))
    with pytest.raises(ProtocolError, match="unknown flags"):
        parse(b"S" + bytes(16) + b"\x80")
    a = ReliableLink("b", 0.0)
    with pytest.raises(ProtocolError, match="never sent"):
        a.receive(0, 5, 0, 0, 0.0)
    assert not has_session(b"\x93\x01\x02\x03")  # a msgpack header


class _Channel:
    """One direction of a link: loses, duplicates and reorders messages, and resets (loses
    everything in flight) — each with a probability per step."""

    def __init__(self, rng: random.Random, loss: float, dup: float, reorder: float):
        self.rng, self.loss, self.dup, self.reorder = rng, loss, dup, reorder
        self.flight: list[list] = []

    def put(self, wire: list) -> None:
        if self.rng.random() < self.loss:
            return
        self.flight.append(wire)
        if self.rng.random() < self.dup:
            self.flight.append(wire)
        if len(self.flight) > 1 and self.rng.random() < self.reorder:
            i = self.rng.randrange(len(self.flight) - 1)
            self.flight[i], self.flight[-1] = self.flight[-1], self.flight[i]

    def reset(self) -> None:
        self.flight.clear()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), loss=st.floats(0, 0.3), dup=st.floats(0, 0.2),
       reorder=st.floats(0, 0.2), resets=st.floats(0, 0.05))
def test_every_message_arrives_once_in_order_over_a_bad_channel(seed, loss, dup, reorder,
                                                                resets):
    rng = random.Random(seed)
    ends = {"a": ReliableLink("b", 0.0), "b": ReliableLink("a", 0.0)}
    channels = {"a": _Channel(rng, loss, dup, reorder), "b": _Channel(rng, loss, dup, reorder)}
    sent = {"a": 0, "b": 0}
    got: dict[str, list[int]] = {"a": [], "b": []}
    messages = 40
    now = 0.0
    for _ in range(20_000):
        now += 0.005
        for me, other in (("a", "b"), ("b", "a")):
            if sent[me] < messages and rng.random() < 0.3:
                sent[me] += 1
                channels[me].put(ends[me].sequenced([str(sent[me]).encode()], now))
            for wire in ends[me].outgoing(now):
                channels[me].put(wire)
            if rng.random() < resets:  # a reset: what is in flight is gone, the ends reconnect
                channels[me].reset()
                channels[other].reset()
                ends[me].reconnected()
            flight = channels[other].flight
            if flight:
                wire = flight.pop(0)
                verdict, body = _deliver(ends[me], wire, now)
                if verdict is Verdict.DELIVER and body:
                    got[me].append(int(body[0]))
        if all(len(got[k]) == messages for k in got) and not any(
                e.unacked for e in ends.values()):
            break
    assert got == {"a": list(range(1, messages + 1)), "b": list(range(1, messages + 1))}
    assert all(e.unacked == 0 for e in ends.values())


def test_a_session_described_says_what_waits_unacknowledged_and_what_came_in_order():
    a, b = ReliableLink("b", 0.0), ReliableLink("a", 0.0)
    assert describe_session(a, 0.0) == ("session: everything sent acknowledged, 0 received in "
                                         "order, 0 replayed")
    a.sequenced([b"one"], 1.0)
    a.sequenced([b"two"], 1.0)  # neither reaches b
    _deliver(a, b.sequenced([b"from b"], 1.5), 1.5)
    assert describe_session(a, 3.5) == ("session: 2 sent unacknowledged for 2.5 s, 1 received "
                                        "in order, 0 replayed")
