"""The wire protocol: every message round-trips; malformed frames are errors that say what."""

import msgpack
import pytest

from dsm import protocol as p
from dsm.errors import ProtocolError

PAGE = 4096


@pytest.mark.parametrize("msg,page", [
    (p.Hello("n1", 42, 7), None),
    (p.Welcome(0x6000_0000_0000, 1 << 30, PAGE, 5), None),
    (p.Lost(3, 2, "b", "x", 1), None),
    (p.Fenced(5, "declared dead"), None),
    (p.LostQuery(1), None),
    (p.ForgetLost(1, "x"), None),
    (p.LostReport(1, [["x", 0, 4096, "b"]]), None),
    (p.Acquire(7, 1, True, False), None),
    (p.Grant(7, 2, False, p.Payload.DATA), b"a" * 2 * PAGE),
    (p.Grant(7, 1, True, p.Payload.ZERO), None),
    (p.Fetch(3, 9, 1, True), None),
    (p.Fetched(3, 9, 1, p.Payload.DATA, []), b"b" * PAGE),
    (p.Invalidate(4, 1, 1), None),
    (p.Invalidated(4, 1, 1), None),
    (p.Writeback(5, 1, p.Payload.DATA), b"c" * PAGE),
    (p.Drop(5, 1), None),
    (p.Discard([1, 2, 3]), None),
    (p.Alloc(1, "x", 80, {"shape": [10], "dtype": "<i8"}), None),
    (p.Allocated(1, 0, 80, {"shape": [10], "dtype": "<i8"}), None),
    (p.Error(1, "no"), None),
    (p.Heartbeat(), None),
    (p.Bye(), None),
])
def test_round_trip(msg, page):
    frames = p.encode(msg, page)
    assert p.decode(frames, PAGE) == (msg, page)


@pytest.mark.parametrize("frames,complaint", [
    ([], "empty message"),
    ([b"\xc1"], "not valid msgpack"),
    ([msgpack.packb({"a": 1})], "non-empty array"),
    ([msgpack.packb([77])], "unknown message type 77"),
    ([msgpack.packb([int(p.MsgType.ACQUIRE), 1, True])], "Acquire needs 4 fields"),
    ([msgpack.packb([int(p.MsgType.ACQUIRE), "1", 1, True, False])], "Acquire.page must be int"),
    ([msgpack.packb([int(p.MsgType.ACQUIRE), True, 1, True, False])], "Acquire.page must be int"),
    ([msgpack.packb([int(p.MsgType.ACQUIRE), 1, 0, True, False])], "count 0 is outside"),
    ([msgpack.packb([int(p.MsgType.ACQUIRE), 1, 5000, True, False])], "count 5000 is outside"),
    ([msgpack.packb([int(p.MsgType.GRANT), 1, 1, True, 9])], "payload 9 is not a Payload"),
    ([msgpack.packb([int(p.MsgType.GRANT), 1, 1, True, 2])], "needs 2 frames"),
    ([msgpack.packb([int(p.MsgType.GRANT), 1, 1, True, 2]), b"x"], "1 bytes, expected 4096"),
    ([msgpack.packb([int(p.MsgType.DROP), 1, 1]), b"extra"], "needs 1 frame"),
])
def test_malformed_frames_name_the_problem(frames, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        p.decode(frames, PAGE)
