"""The pure parser of ``struct uffd_msg``: hand-packed bytes in, frozen events out. No kernel."""

from __future__ import annotations

import dataclasses
import errno
import struct

import pytest

from dsm.uffd import abi
from dsm.uffd.errors import ShortRead, UffdError, UnknownEvent
from dsm.uffd.events import (
    Access,
    FaultKind,
    Fork,
    Pagefault,
    Remap,
    Remove,
    Unmap,
    parse_msg,
    parse_msgs,
)

ADDR = 0x7F00_1234_5000

# struct uffd_msg packed by hand, independently of abi's structs: __u8 event; __u8 reserved1;
# __u16 reserved2; __u32 reserved3; then a 24-byte union.


def _msg(event: int, union: bytes) -> bytes:
    assert len(union) <= 24
    return struct.pack("<BBHI", event, 0, 0, 0) + union.ljust(24, b"\0")


def pagefault_msg(flags: int, address: int, ptid: int = 0) -> bytes:
    return _msg(0x12, struct.pack("<QQI", flags, address, ptid))


def fork_msg(ufd: int) -> bytes:
    return _msg(0x13, struct.pack("<I", ufd))


def remap_msg(from_: int, to: int, length: int) -> bytes:
    return _msg(0x14, struct.pack("<QQQ", from_, to, length))


def remove_msg(start: int, end: int) -> bytes:
    return _msg(0x15, struct.pack("<QQ", start, end))


def unmap_msg(start: int, end: int) -> bytes:
    return _msg(0x16, struct.pack("<QQ", start, end))


# --- one event of each type --------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, kind, rw",
    [
        (0x0, FaultKind.MISSING, Access.READ),
        (0x1, FaultKind.MISSING, Access.WRITE),  # WRITE
        (0x3, FaultKind.WRITE_PROTECTED, Access.WRITE),  # WRITE | WP: the usual WP fault
        (0x2, FaultKind.WRITE_PROTECTED, Access.READ),  # WP alone
        (0x4, FaultKind.MINOR, Access.READ),  # MINOR
        (0x5, FaultKind.MINOR, Access.WRITE),  # MINOR | WRITE
    ],
)
def test_pagefault_flags(flags, kind, rw):
    assert parse_msg(pagefault_msg(flags, ADDR)) == Pagefault(kind, rw, ADDR, 0)


def test_pagefault_thread_id_and_exact_address():
    event = parse_msg(pagefault_msg(0x1, ADDR + 123, ptid=4242))
    assert event == Pagefault(FaultKind.MISSING, Access.WRITE, ADDR + 123, 4242)
    assert event.thread_id == 4242 and event.addr == ADDR + 123


def test_pagefault_ignores_reserved_bytes():
    raw = bytearray(pagefault_msg(0x0, ADDR, 7))
    raw[1:8] = b"\xff" * 7  # reserved1..3
    raw[28:32] = b"\xee" * 4  # the tail of the union after ptid
    assert parse_msg(bytes(raw)) == Pagefault(FaultKind.MISSING, Access.READ, ADDR, 7)


def test_fork_wraps_the_fd():
    seen = []

    def wrap(fd: int) -> tuple[str, int]:
        seen.append(fd)
        return ("uffd", fd)

    assert parse_msg(fork_msg(17), wrap_fd=wrap) == Fork(("uffd", 17))
    assert seen == [17]


def test_fork_without_wrapper_gives_the_raw_fd():
    assert parse_msg(fork_msg(9)) == Fork(9)


def test_remap():
    event = parse_msg(remap_msg(ADDR, ADDR + 0x10_0000, 0x2000))
    assert event == Remap(ADDR, ADDR + 0x10_0000, 0x2000)
    assert (event.from_, event.to, event.len) == (ADDR, ADDR + 0x10_0000, 0x2000)


def test_remove():
    assert parse_msg(remove_msg(ADDR, ADDR + 0x3000)) == Remove(ADDR, ADDR + 0x3000)


def test_unmap():
    assert parse_msg(unmap_msg(ADDR, ADDR + 0x1000)) == Unmap(ADDR, ADDR + 0x1000)


def test_accepts_bytearray_and_memoryview():
    raw = remove_msg(ADDR, ADDR + 0x1000)
    assert parse_msg(bytearray(raw)) == parse_msg(memoryview(raw)) == Remove(ADDR, ADDR + 0x1000)


def test_hand_packing_agrees_with_abi():
    assert len(pagefault_msg(0, 0)) == abi.UFFD_MSG_SIZE
    codes = (abi.UFFD_EVENT_PAGEFAULT, abi.UFFD_EVENT_FORK, abi.UFFD_EVENT_REMAP,
             abi.UFFD_EVENT_REMOVE, abi.UFFD_EVENT_UNMAP)
    assert codes == (0x12, 0x13, 0x14, 0x15, 0x16)


# --- several messages --------------------------------------------------------------------------


def test_parse_msgs_in_order():
    data = b"".join([
        pagefault_msg(0x0, ADDR),
        fork_msg(5),
        remap_msg(ADDR, ADDR + 0x8000, 0x4000),
        remove_msg(ADDR, ADDR + 0x1000),
        unmap_msg(ADDR + 0x1000, ADDR + 0x2000),
        pagefault_msg(0x3, ADDR + 0x1000, 99),
    ])
    wrapped = []
    events = parse_msgs(data, wrap_fd=lambda fd: wrapped.append(fd) or f"fd{fd}")
    assert events == [
        Pagefault(FaultKind.MISSING, Access.READ, ADDR, 0),
        Fork("fd5"),
        Remap(ADDR, ADDR + 0x8000, 0x4000),
        Remove(ADDR, ADDR + 0x1000),
        Unmap(ADDR + 0x1000, ADDR + 0x2000),
        Pagefault(FaultKind.WRITE_PROTECTED, Access.WRITE, ADDR + 0x1000, 99),
    ]
    assert wrapped == [5]


def test_parse_msgs_empty():
    assert parse_msgs(b"") == []


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 8, 31, 33])
def test_parse_msg_wrong_length_is_short_read(length):
    with pytest.raises(ShortRead) as info:
        parse_msg(bytes(length))
    assert f"got {length}/32 bytes" in str(info.value)
    assert info.value.errno == errno.EIO
    assert isinstance(info.value, UffdError)


@pytest.mark.parametrize("length", [1, 31, 33, 63, 65])
def test_parse_msgs_partial_message_is_short_read(length):
    data = (remove_msg(ADDR, ADDR + 0x1000) * 3)[:length]
    with pytest.raises(ShortRead) as info:
        parse_msgs(data)
    message = str(info.value)
    assert f"read {length} bytes" in message and "multiple of 32" in message


@pytest.mark.parametrize("code", [0x00, 0x11, 0x17, 0xFF])
def test_unknown_event_names_the_code(code):
    with pytest.raises(UnknownEvent) as info:
        parse_msg(_msg(code, b""))
    assert f"{code:#x}" in str(info.value)
    assert info.value.errno == errno.EINVAL


def test_unknown_event_in_a_batch():
    data = remove_msg(ADDR, ADDR + 0x1000) + _msg(0x42, b"")
    with pytest.raises(UnknownEvent, match="0x42"):
        parse_msgs(data)


def test_a_fork_after_an_unknown_event_is_not_wrapped():
    """The batch is parsed in order: nothing after the bad message is looked at."""
    wrapped = []
    with pytest.raises(UnknownEvent):
        parse_msgs(_msg(0x42, b"") + fork_msg(3), wrap_fd=wrapped.append)
    assert wrapped == []


# --- the events are values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "event, field",
    [
        (Pagefault(FaultKind.MISSING, Access.READ, ADDR, 0), "addr"),
        (Fork(3), "uffd"),
        (Remap(ADDR, ADDR + 0x1000, 0x1000), "len"),
        (Remove(ADDR, ADDR + 0x1000), "start"),
        (Unmap(ADDR, ADDR + 0x1000), "end"),
    ],
)
def test_events_are_frozen(event, field):
    assert dataclasses.is_dataclass(event)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, field, 0)
    with pytest.raises((AttributeError, TypeError)):
        event.extra = 1  # slots: no new attributes


def test_events_are_hashable_and_compare_by_value():
    a = Pagefault(FaultKind.MINOR, Access.WRITE, ADDR, 1)
    b = parse_msg(pagefault_msg(0x5, ADDR, 1))
    assert a == b and hash(a) == hash(b)
    assert len({a, b, Remove(1, 2), Remove(1, 2)}) == 2
    assert Remove(1, 2) != Unmap(1, 2)  # same fields, different events
