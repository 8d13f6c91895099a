"""The wire protocol: every message round-trips; malformed frames are errors that say what; and,
property-based, no input at all makes ``decode`` fail with anything but a ProtocolError."""

import struct

import msgpack
import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsm import protocol as p
from dsm.directory.home import HomeStore
from dsm.layout import DEFAULT_BASE_ADDRESS, Layout
from dsm.errors import ProtocolError
from dsm.schema import check_fields, field_names
from tests.strategies import (
    any_value,
    frames_for,
    header_of,
    receiver_of,
    valid_message,
    wrong_value,
)

PAGE = 4096
#: examples per property: about two per message type (65 of them) a run, quick on 2 cores;
#: hypothesis keeps a failing example in its database and tries it first the next run
EXAMPLES = 120
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
CLASSES = list(p.MESSAGE_CLASSES.values())


@pytest.mark.parametrize("msg,page", [
    (p.Hello("n1", 42, 7), None),
    (p.Welcome(0x6000_0000_0000, 1 << 30, PAGE, 5), None),
    (p.Lost(3, 2, "b", "x", 1), None),
    (p.Fenced(5, "declared dead"), None),
    (p.Closing("the directory is stopping on SIGTERM"), None),
    (p.LostQuery(1), None),
    (p.ForgetLost(1, "x"), None),
    (p.LostReport(1, [("x", 0, 4096, "b")]), None),
    (p.Acquire(7, 1, True, False), None),
    (p.Grant(7, 2, False, p.Payload.DATA), b"a" * 2 * PAGE),
    (p.Grant(7, 1, True, p.Payload.ZERO), None),
    (p.Fetch(3, 9, 1, True), None),
    (p.Fetched(3, 9, 1, p.Payload.DATA, []), b"b" * PAGE),
    (p.Invalidate(4, 1, 1), None),
    (p.Invalidated(4, 1, 1), None),
    (p.Invalidated(4, 1, 1, "b"), None),
    (p.Grant(7, 2, True, p.Payload.NONE, False, 9, ["b", "c"]), None),
    (p.Invalidate(4, 1, 2, "a", "tcp://10.0.0.1:7401"), None),
    (p.Writeback(5, 1, p.Payload.DATA), b"c" * PAGE),
    (p.Drop(5, 1), None),
    (p.Drop(5, 1, p.Payload.DATA), b"\x07" * PAGE),
    (p.PeerPage(3, 9, 1, True, p.Payload.DATA, "n2"), b"\x05" * PAGE),
    (p.Received(3, 9, 1, True), None),
    (p.Withdrawn(3, 9, 1, "n2"), None),
    (p.Fetch(3, 9, 1, False, "n2", "tcp://10.0.0.2:7411"), None),
    (p.Discard([1, 2, 3]), None),
    (p.Alloc(1, "x", 80, {"shape": [10], "dtype": "<i8"}), None),
    (p.Allocated(1, 0, 80, {"shape": [10], "dtype": "<i8"}), None),
    (p.Error(1, "no"), None),
    (p.Heartbeat(), None),
    (p.Bye(), None),
    (p.LockInfo(1, "a:1:2", ["b:3:4"]), None),
    (p.SyncReply(1, 1, ""), None),
    (p.SyncReply(1, 1, "", [3, 1], [7, 2], p.Payload.DATA), b"g" * (2 * PAGE)),
    (p.LockAcquire(1, "l", "n:1:2", -1, [7, 2]), None),
    # a release carrying two diffs: 3 bytes of page 7, nothing of page 9 (it ends its dirtying)
    (p.LockRelease(1, "l", "n:1:2", [7, 1], True,
                   [(7, 1, int(p.DiffEncoding.SPANS),
                     np.array([[8, 3]], dtype=p.SPAN_DTYPE).tobytes()),
                    (9, 1, int(p.DiffEncoding.SPANS), b"")], p.Payload.DATA), b"abc"),
    (p.BarrierWait(1, "b", 2, "n:1:2", [], -1, [(7, 1, int(p.DiffEncoding.MASK),
                                                 b"\x80" + bytes(PAGE // 8 - 1))],
                   p.Payload.DATA), b"z"),
    # a distributed manager's (dsm/directory/shard/)
    (p.Welcome(0x6000_0000_0000, 1 << 30, PAGE, 5, 9, True, ["tcp://d:7400", "tcp://0.0.0.0:7401"]),
     None),
    (p.ShardHello(-1, 0, "tcp://10.0.0.2:7400", 42), None),
    (p.ShardWelcome(1, 3, 0x6000_0000_0000, 1 << 30, PAGE, 5, "distributed", "poison"), None),
    (p.NodeAdmitted("n1", 7), None),
    (p.NodeDead("n1", 7, "silent for 5.1 s"), None),
    (p.ArrayAllocated("x", 0, 80, {"shape": [10], "dtype": "<i8"}), None),
    (p.LostRunsQuery(3, 0, 1 << 20, True), None),
    (p.LostRuns(3, [(256, 2, "b")]), None),
    (p.StatsRunsQuery(4), None),
    # the dynamic manager's (dsm/core/dynamic.py)
    (p.PageRequest(5, 9, True, "n1", "tcp://10.0.0.1:7401", 2, True), None),
    (p.Served(5, 9, 1, True, p.Payload.DATA, "n2", "tcp://10.0.0.2:7401",
              [("n3", "tcp://10.0.0.3:7401")], [("n1", 5)]), b"\x09" * PAGE),
    (p.Served(5, 9, 1, False, p.Payload.ZERO, ""), None),
    (p.Taken(5, 9, "n1", True), None),
    (p.OwnerDead(2, "n2"), None),
    (p.OwnedPages(2, "n2", [(9, 4), (40, 1)], [(12, "n1", 3), (13, "n2", 7)], [(14, 2)]), None),
    (p.StatsRuns(4, [["x", 0, 1, [[1, "home", []]]]], {"grants": 3}), None),
])
def test_round_trip(msg, page):
    frames = p.encode(msg, page)
    assert p.decode(frames, PAGE, receiver_of(type(msg))) == (msg, page)


def _header(cls, *values):
    return msgpack.packb([int(cls.TYPE), *values])


@pytest.mark.parametrize("frames,to,complaint", [
    ([], p.Direction.TO_DIRECTORY, "empty message"),
    ([b"\xc1"], p.Direction.TO_DIRECTORY, "not valid msgpack"),
    ([msgpack.packb({"a": 1})], p.Direction.TO_DIRECTORY, "non-empty array"),
    ([msgpack.packb([77])], p.Direction.TO_DIRECTORY, "unknown message type 77"),
    ([msgpack.packb([True, "n", 1, 1])], p.Direction.TO_DIRECTORY, "unknown message type True"),
    ([_header(p.Acquire, 1, True)], p.Direction.TO_DIRECTORY, "Acquire needs 5 fields"),
    ([_header(p.Acquire, "1", 1, True, False, 1)], p.Direction.TO_DIRECTORY,
     "Acquire.page must be int, got str"),
    ([_header(p.Acquire, True, 1, True, False, 1)], p.Direction.TO_DIRECTORY,
     "Acquire.page must be int, got bool"),
    ([_header(p.Acquire, -1, 1, True, False, 1)], p.Direction.TO_DIRECTORY,
     r"Acquire.page -1 is outside 0\.\."),
    ([_header(p.Acquire, 1, 0, True, False, 1)], p.Direction.TO_DIRECTORY,
     "Acquire.count 0 is outside 1..1024"),
    ([_header(p.Acquire, 1, 5000, True, False, 1)], p.Direction.TO_DIRECTORY,
     "Acquire.count 5000 is outside 1..1024"),
    ([_header(p.Acquire, 1, 1, 1, False, 1)], p.Direction.TO_DIRECTORY,
     "Acquire.write must be bool, got int"),
    ([_header(p.Grant, 1, 1, True, 9, False, 0, [])], p.Direction.TO_NODE,
     "Grant.payload 9 is not a Payload"),
    ([_header(p.Grant, 1, 1, True, 2, False, 0, [])], p.Direction.TO_NODE, "needs 2 frames"),
    ([_header(p.Grant, 1, 1, True, 2, False, 0, []), b"x"], p.Direction.TO_NODE,
     "1 bytes, expected 4096"),
    ([_header(p.Grant, 1, 1, True, 0, False, 0, [7])], p.Direction.TO_NODE,
     "Grant.acks"),
    ([_header(p.Invalidated, 1, 1, 1, "b", ""), b"extra"], p.Direction.TO_DIRECTORY,
     "needs 1 frame"),
    ([_header(p.Invalidated, 1, 1, 1, "b", ""), b"extra"], p.Direction.TO_PEER, "needs 1 frame"),
    ([_header(p.Fetched, 1, 1, 1, 0, [[1]], [], False)], p.Direction.TO_DIRECTORY,
     r"Fetched.not_held\[0\] must be int, got list"),
    ([_header(p.Discard, [1, "2"])], p.Direction.TO_DIRECTORY,
     r"Discard.pages\[1\] must be int, got str"),
    ([_header(p.LockInfo, 1, "a", ["b", 3])], p.Direction.TO_NODE,
     r"LockInfo.waiting\[1\] must be str, got int"),
    ([_header(p.LostReport, 1, [["a", 0, 1]])], p.Direction.TO_NODE,
     r"LostReport.ranges\[0\] must hold 4 elements \[str, int, int, str\], got 3"),
    ([_header(p.LostReport, 1, [["a", 0, "1", "b"]])], p.Direction.TO_NODE,
     r"LostReport.ranges\[0\]\[2\] must be int, got str"),
    ([_header(p.Alloc, 1, "x", 8, [1], -1)], p.Direction.TO_DIRECTORY,
     "Alloc.meta must be a map, got list"),
    ([_header(p.Alloc, 1, "x", 8, {1: 2}, -1)], p.Direction.TO_DIRECTORY,
     "Alloc.meta key 1 must be str, got int"),
    ([_header(p.SyncReply, 1, 99, "", [], [], 0)], p.Direction.TO_NODE,
     "SyncReply.status 99 is not a SyncStatus"),
    # guarded pages a grant carries: runs, and a frame of exactly their pages
    ([_header(p.SyncReply, 1, 1, "", [], [7, 2], 2), b"g" * PAGE], p.Direction.TO_NODE,
     "SyncReply frame is 4096 bytes, its guarded pages need 8192"),
    ([_header(p.SyncReply, 1, 1, "", [], [7], 2), b""], p.Direction.TO_NODE,
     r"SyncReply.guarded must be \[first, count, ...\] runs: 1 numbers"),
    ([_header(p.SyncReply, 1, 1, "", [], [7, 0], 2), b""], p.Direction.TO_NODE,
     "SyncReply.guarded has a run of no pages"),
    ([_header(p.SyncReply, 1, 1, "", [], [0, p.MAX_GUARDED_PAGES + 1], 2), b""],
     p.Direction.TO_NODE, f"names {p.MAX_GUARDED_PAGES + 1} pages; a lock guards at most"),
    ([_header(p.SyncReply, 1, 1, "", [], [7, 1], 0)], p.Direction.TO_NODE,
     "a SyncReply with guarded pages needs the DATA payload"),
    ([_header(p.LockAcquire, 1, "l", "n:1:2", -1, [-1, 2])], p.Direction.TO_DIRECTORY,
     r"LockAcquire.guards\[0\]"),
    ([_header(p.Hello, "n", 0, 1, "", "", -1, 0)], p.Direction.TO_DIRECTORY,
     "Hello.pid 0 is outside 1.."),
    ([_header(p.Error, 0, "x")], p.Direction.TO_DIRECTORY,
     "Error travels directory -> node: it is not received node -> directory"),
    ([_header(p.Acquire, 1, 1, True, False, 1)], p.Direction.TO_NODE,
     "Acquire travels node -> directory: it is not received directory -> node"),
    ([_header(p.Diff, 1, 1, 1, 5, b"", 0)], p.Direction.TO_DIRECTORY,
     "Diff.encoding 5 is not a DiffEncoding"),
    ([_header(p.Diff, 1, 1, 1, int(p.DiffEncoding.MASK), b"\xff" * 7, 2), b"x"],
     p.Direction.TO_DIRECTORY, "Diff mask is 7 bytes: a run of 1 pages needs 512"),
    ([_header(p.Diff, 1, 1, 1, int(p.DiffEncoding.MASK), b"\x80" + bytes(511), 2), b"xy"],
     p.Direction.TO_DIRECTORY, "Diff frame is 2 bytes, its changes need 1"),
    ([_header(p.Diff, 1, 1, 1, int(p.DiffEncoding.SPANS), bytes(12), 2), b"x"],
     p.Direction.TO_DIRECTORY, r"Diff spans are 12 bytes: not \(start, length\) pairs"),
    ([_header(p.Diff, 1, 1, 1, int(p.DiffEncoding.SPANS),
              np.array([[4000, 200]], dtype=p.SPAN_DTYPE).tobytes(), 2), b"x" * 200],
     p.Direction.TO_DIRECTORY, r"Diff span 0 \(4000\+200\) is not an ascending"),
    ([_header(p.LockRelease, 1, "l", "n:1:2", [], True,
              [[7, 1, int(p.DiffEncoding.SPANS),
                np.array([[8, 3]], dtype=p.SPAN_DTYPE).tobytes()]], 0)],
     p.Direction.TO_DIRECTORY, "a LockRelease carrying diffs needs the DATA payload"),
    ([_header(p.LockRelease, 1, "l", "n:1:2", [], True,
              [[7, 1, int(p.DiffEncoding.SPANS),
                np.array([[8, 3]], dtype=p.SPAN_DTYPE).tobytes()]], 2), b"ab"],
     p.Direction.TO_DIRECTORY, "LockRelease frame is 2 bytes, its diffs need 3"),
    ([_header(p.BarrierWait, 1, "b", 2, "n:1:2", [], -1,
              [[7, 1, int(p.DiffEncoding.MASK), b"\xff"]], 2), b"x"],
     p.Direction.TO_DIRECTORY, r"BarrierWait.diffs\[0\] mask is 1 bytes"),
])
def test_malformed_frames_name_the_problem(frames, to, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        p.decode(frames, PAGE, to)


def test_every_message_declares_its_direction_and_heartbeat_bye_and_node_dead_go_both_ways():
    both = {cls for cls in CLASSES if cls.DIRECTION is p.Direction.BOTH}
    # NodeDead: a shard reports a death to the coordinator, which tells every shard
    assert both == {p.Heartbeat, p.Bye, p.NodeDead}
    # Invalidated: a holder's acknowledgement goes to the directory or straight to the writer,
    # and the directory forwards one to the writer (or says the holder died); PageRequest (the
    # dynamic manager): to a probable owner, node or directory, which forwards it along; Served
    # (the dynamic manager): ownership from the owner or the directory, and given back to it;
    # the dynamic manager's node-to-node messages, and acknowledgements, go to the directory
    # when their peer cannot be reached, which relays them (``relay_to``)
    every_way = {cls for cls in CLASSES if cls.DIRECTION == p.Direction.BOTH | p.Direction.TO_PEER}
    assert every_way == {p.Invalidated, p.PageRequest, *p.RELAYED_MESSAGES}
    assert not {cls for cls in CLASSES
                if cls.DIRECTION in (p.Direction.TO_NODE | p.Direction.TO_PEER,
                                     p.Direction.TO_DIRECTORY | p.Direction.TO_PEER)}
    for cls in CLASSES:
        assert cls.DIRECTION in (p.Direction.TO_DIRECTORY, p.Direction.TO_NODE, p.Direction.BOTH,
                                 p.Direction.TO_PEER, p.Direction.BOTH | p.Direction.TO_PEER,
                                 p.Direction.TO_NODE | p.Direction.TO_PEER,
                                 p.Direction.TO_DIRECTORY | p.Direction.TO_PEER)


def test_every_message_meant_for_the_other_side_is_refused():
    for cls in CLASSES:
        if cls.DIRECTION & p.Direction.BOTH == p.Direction.BOTH:
            continue
        other = p.Direction.BOTH & ~cls.DIRECTION
        header = [int(cls.TYPE)] + [0] * len(field_names(cls))
        with pytest.raises(ProtocolError, match=f"{cls.__name__} travels"):
            p.decode([msgpack.packb(header)], PAGE, other)


# --- properties: anything in, a ProtocolError or a valid message out ---------------------------
def _decode_or_refuse(frames, to):
    """decode's result, or None for a ProtocolError; any other exception fails the test."""
    try:
        msg, page = p.decode(frames, PAGE, to)
    except ProtocolError as exc:
        assert str(exc), "a ProtocolError must say what was wrong"
        return None
    # what got through is a valid message: it encodes and decodes to itself
    assert p.decode(p.encode(msg, page), PAGE, to)[0] == msg
    return msg


@FUZZ
@given(st.data())
def test_valid_messages_of_every_type_round_trip(data):
    cls = data.draw(st.sampled_from(CLASSES))
    msg, page = data.draw(valid_message(cls, PAGE))
    assert p.decode(p.encode(msg, page), PAGE, receiver_of(cls)) == (msg, page)


@FUZZ
@given(st.data())
def test_random_values_for_every_field_and_wrong_field_counts(data):
    cls = data.draw(st.sampled_from(CLASSES))
    n = len(field_names(cls))
    count = data.draw(st.sampled_from([n, n, n, max(0, n - 1), n + 1, 0]))
    values = data.draw(st.lists(any_value(), min_size=count, max_size=count))
    frames = data.draw(frames_for(msgpack.packb([int(cls.TYPE), *values]), PAGE))
    _decode_or_refuse(frames, data.draw(st.sampled_from(list(p.Direction)[:2])))


@FUZZ
@given(st.data())
def test_one_field_changed_is_refused_naming_the_field_or_still_valid(data):
    cls = data.draw(st.sampled_from([c for c in CLASSES if field_names(c)]))
    msg, page = data.draw(valid_message(cls, PAGE))
    header = header_of(msg)
    names = list(field_names(cls))
    i = data.draw(st.integers(0, len(names) - 1))
    header[1 + i] = data.draw(wrong_value(cls, names[i]))
    frames = [msgpack.packb(header)] + ([page] if page is not None else [])
    try:
        p.decode(frames, PAGE, receiver_of(cls))
    except ProtocolError as exc:  # it names the field, unless msgpack itself refused it
        assert cls.__name__ in str(exc) or "not valid msgpack" in str(exc), exc
        return
    # the changed value happened to fit (another valid message): fine too
    _decode_or_refuse(frames, receiver_of(cls))


@FUZZ
@given(st.data())
def test_page_frames_of_every_length_and_count(data):
    cls = data.draw(st.sampled_from([c for c in CLASSES if c.CARRIES_PAGE]))
    msg, _ = data.draw(valid_message(cls, PAGE))
    frames = data.draw(frames_for(p.encode(msg)[0], PAGE))
    got = _decode_or_refuse(frames, receiver_of(cls))
    if got is not None and msg.payload == p.Payload.DATA:
        expected = (msg.frame_bytes(PAGE) if hasattr(msg, "frame_bytes")
                    else msg.count * PAGE)
        assert len(frames) == 2 and len(frames[1]) == expected


@FUZZ
@given(st.binary(max_size=256), st.sampled_from([p.Direction.TO_DIRECTORY, p.Direction.TO_NODE]))
def test_random_bytes(raw, to):
    _decode_or_refuse([raw], to)


@FUZZ
@given(any_value(), st.sampled_from([p.Direction.TO_DIRECTORY, p.Direction.TO_NODE]))
def test_random_msgpack_documents(value, to):
    _decode_or_refuse([msgpack.packb(value)], to)


def test_no_message_field_shadows_a_trace_record_field():
    # the trace writes a message's fields into its record (dsm.trace): a field named like the
    # record's own would overwrite it (a Hello field "peer" once unpaired every Hello)
    reserved = {"t", "who", "peer", "dir", "msg", "id", "ts"}
    for cls in CLASSES:
        clash = reserved & set(field_names(cls))
        assert not clash, f"{cls.__name__} has fields {clash}"


def test_a_diff_is_sent_as_spans_or_as_a_mask_whichever_is_shorter_and_applies_exactly():
    from dsm.agent.twins import changed_bytes

    rng = np.random.default_rng(7)
    was = rng.integers(0, 1 << 20, 2 * PAGE // 4, dtype=np.int32).view(np.uint8)
    # new integer keys below 2**20: every key's top byte stays 0, a span per 3 bytes
    keys = rng.integers(0, 1 << 20, 2 * PAGE // 4, dtype=np.int32).view(np.uint8)
    sparse = was.copy()
    sparse[[5, 6, 7, 5000]] += 1
    for now, encoding in ((keys, p.DiffEncoding.MASK), (sparse, p.DiffEncoding.SPANS)):
        got, changes, data = changed_bytes(was, now)
        assert got is encoding
        frames = p.encode(p.Diff(1, 3, 2, got, changes, p.Payload.DATA), data)
        msg, frame = p.decode(frames, PAGE, p.Direction.TO_DIRECTORY)
        mask = p.changed_of(msg.count, msg.encoding, msg.changes, PAGE)
        merged = was.copy()
        merged[mask] = np.frombuffer(frame, dtype=np.uint8)
        assert np.array_equal(merged, now)
        assert np.count_nonzero(mask) == np.count_nonzero(was != now)
        # as the home copies apply it: a few spans one by one, else through the mask
        assert type(msg.changed(PAGE)) is (list if encoding is p.DiffEncoding.SPANS
                                           else np.ndarray)
        home = HomeStore(Layout(DEFAULT_BASE_ADDRESS, 8 * PAGE, PAGE))
        home.put(3, 2, p.Payload.DATA, was.tobytes())
        home.patch(3, 2, msg.changed(PAGE), frame)
        assert home.get(3, 2) == (p.Payload.DATA, now.tobytes())
    assert len(changed_bytes(was, keys)[1]) == 2 * PAGE // 8
    assert len(changed_bytes(was, sparse)[1]) == 2 * p.SPAN_BYTES  # bytes 5-7, and 5000


@FUZZ
@given(st.lists(st.integers(0, 2 * PAGE - 1), max_size=40), st.integers(0, 1))
def test_a_few_changed_bytes_are_diffed_in_python_as_numpy_diffs_many(changed, flip):
    from dsm.agent import twins

    was = np.zeros(2 * PAGE, dtype=np.uint8) + flip
    now = was.copy()
    now[changed] = 1 - flip
    few = twins.changed_bytes(was, now)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(twins, "FEW_CHANGED_BYTES", -1)  # every diff the general way
        assert twins.changed_bytes(was, now) == few


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 3 * PAGE), st.integers(0, 64)), max_size=12))
def test_few_spans_are_checked_in_python_as_numpy_checks_many(spans):
    changes = b"".join(struct.pack("<II", start, length) for start, length in spans)

    def check() -> object:
        try:
            return p.changed_bytes_of(2, p.DiffEncoding.SPANS, changes, PAGE, "Diff")
        except ProtocolError as exc:
            return str(exc)

    few = check()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(p, "FEW_SPANS", -1)  # every diff through numpy
        assert check() == few


@FUZZ
@given(st.data())
def test_the_fast_check_and_the_explaining_check_agree_on_every_header(data):
    """msgspec's decoder (the hot path, in C) and the schema's checks (which explain a refusal,
    ``dsm.schema``) are two readings of one declaration: they accept exactly the same headers."""
    cls = data.draw(st.sampled_from([c for c in CLASSES if field_names(c)]))
    msg, _ = data.draw(valid_message(cls, PAGE))
    header = header_of(msg)
    names = list(field_names(cls))
    for i in data.draw(st.lists(st.integers(0, len(names) - 1), max_size=2)):
        header[1 + i] = data.draw(wrong_value(cls, names[i]))
    raw = msgpack.packb(header)
    try:
        fast = type(p._DECODER.decode(raw)) is cls
    except msgspec.ValidationError:
        fast = False
    try:
        check_fields(cls, p._FIELD_CHECKS[cls], msgpack.unpackb(raw, strict_map_key=False)[1:])
        explained = True
    except ProtocolError:
        explained = False
    assert fast == explained, f"msgspec {'accepts' if fast else 'refuses'} {header!r:.300}"
