"""Every message between the directory and the node agents: types, fields, encoding, validation.

Wire layout (ZeroMQ multipart; the directory is a ROUTER, each agent a DEALER whose identity is its
node name, so the directory's sends to a node and its replies share one FIFO pipe):

    frame 0: header, msgpack array [msg_type, field1, field2, ...]
    frame 1: page bytes (only for messages with ``carries_page`` and a DATA payload)

Page bytes travel as their own frame, never inside msgpack, and are sent and received without
copies. ``decode`` validates the message type, the field count and types, and the page frame's
length, and raises ``ProtocolError`` naming what was wrong.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import msgpack
import zmq

from dsm.errors import ProtocolError


#: the most pages one message may carry or name (4 MiB of 4 KiB pages)
MAX_BATCH_PAGES = 1024


class MsgType(enum.IntEnum):
    # node -> directory
    HELLO = 1
    ACQUIRE = 2
    FETCHED = 3
    INVALIDATED = 4
    WRITEBACK = 5
    DROP = 6
    DISCARD = 7
    ALLOC = 8
    HEARTBEAT = 9
    BYE = 10
    LOCK_ACQUIRE = 11
    LOCK_RELEASE = 12
    BARRIER_JOIN = 13
    BARRIER_WAIT = 14
    DEPARTED = 15
    LOCK_STATUS = 16
    LOST_QUERY = 17
    FORGET_LOST = 18
    STATS_QUERY = 19  #: from any peer, no session needed: read-only (``dsm top``)
    NODE_REPORT = 32  #: node -> directory, every STATS_REPORT_INTERVAL_S
    # directory -> node
    WELCOME = 20
    GRANT = 21
    FETCH = 22
    INVALIDATE = 23
    ALLOCATED = 24
    ERROR = 25
    SYNC_REPLY = 26
    LOCK_INFO = 27
    LOST = 28
    FENCED = 29
    LOST_REPORT = 30
    STATS_REPORT = 31


class Payload(enum.IntEnum):
    """What a page-carrying message carries."""

    NONE = 0  #: no bytes: the receiver already has the current contents
    ZERO = 1  #: the page is all zeros (never written, or discarded): no frame is sent
    DATA = 2  #: the page bytes follow in frame 1


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[MsgType]
    #: whether a DATA payload's page frame may follow the header
    CARRIES_PAGE: ClassVar[bool] = False


@dataclass(frozen=True)
class Hello(Message):
    """A node joins: its name, its agent's pid (for the logs) and its incarnation, a number
    drawn at random when the agent starts (its ZeroMQ identity is ``identity(node,
    incarnation)``), so that a restarted agent is told apart from its predecessor."""

    TYPE = MsgType.HELLO
    node: str
    pid: int
    incarnation: int


@dataclass(frozen=True)
class Welcome(Message):
    """The directory's answer to Hello: the region layout."""

    TYPE = MsgType.WELCOME
    base: int
    size: int
    page_size: int
    epoch: int  #: drawn at random when the directory starts: a restart changes it
    clock_ns: int = 0  #: the directory's trace clock when it answered (``dsm.clocksync``)


@dataclass(frozen=True)
class Acquire(Message):
    """Ask for ``page``, read access (a copy) or write access (exclusive ownership), and, as
    read-ahead, for up to ``count - 1`` pages after it that the directory can add without waiting.
    ``have_copy``: the node holds a read copy of ``page`` and only needs the upgrade."""

    TYPE = MsgType.ACQUIRE
    page: int
    count: int
    write: bool
    have_copy: bool


@dataclass(frozen=True)
class Grant(Message):
    """Access granted to ``count`` pages from ``page``; the payload is their contents (or NONE
    for an upgrade)."""

    TYPE = MsgType.GRANT
    CARRIES_PAGE = True
    page: int
    count: int
    write: bool
    payload: int


@dataclass(frozen=True)
class Fetch(Message):
    """Directory to owner: send ``count`` pages from ``page``; keep read copies (``keep_copy``)
    or give them up."""

    TYPE = MsgType.FETCH
    txn: int
    page: int
    count: int
    keep_copy: bool


@dataclass(frozen=True)
class Fetched(Message):
    """Owner to directory: the pages (payload DATA), or NONE when the node held none of them.
    ``not_held`` lists the pages it no longer held (a Writeback crossed the Fetch): their bytes
    in the frame are meaningless."""

    TYPE = MsgType.FETCHED
    CARRIES_PAGE = True
    txn: int
    page: int
    count: int
    payload: int
    not_held: list


@dataclass(frozen=True)
class Invalidate(Message):
    TYPE = MsgType.INVALIDATE
    txn: int
    page: int
    count: int


@dataclass(frozen=True)
class Invalidated(Message):
    TYPE = MsgType.INVALIDATED
    txn: int
    page: int
    count: int


@dataclass(frozen=True)
class Writeback(Message):
    """A node gives ``count`` owned pages back with their contents (unmap, leave)."""

    TYPE = MsgType.WRITEBACK
    CARRIES_PAGE = True
    page: int
    count: int
    payload: int


@dataclass(frozen=True)
class Drop(Message):
    """A node gives up its read copies of ``count`` pages from ``page``."""

    TYPE = MsgType.DROP
    page: int
    count: int


@dataclass(frozen=True)
class Discard(Message):
    """A node discarded pages (MADV_REMOVE): they become zero everywhere."""

    TYPE = MsgType.DISCARD
    pages: list


@dataclass(frozen=True)
class Alloc(Message):
    """Find or create the named allocation; ``meta`` describes it (shape, dtype) and must match."""

    TYPE = MsgType.ALLOC
    req: int
    name: str
    nbytes: int
    meta: dict


@dataclass(frozen=True)
class Allocated(Message):
    TYPE = MsgType.ALLOCATED
    req: int
    offset: int
    nbytes: int
    meta: dict


@dataclass(frozen=True)
class Error(Message):
    """The request ``req`` (0 when there is none) failed; ``message`` says why."""

    TYPE = MsgType.ERROR
    req: int
    message: str


@dataclass(frozen=True)
class Heartbeat(Message):
    """Node to directory every HEARTBEAT_INTERVAL_S; the directory answers each one, so that
    both sides notice the other's silence. ``clock_ns``: the sender's trace clock; in an answer,
    ``echo_ns`` is the ``clock_ns`` of the heartbeat answered (an NTP round trip,
    ``dsm.clocksync``; 0 when there is none)."""

    TYPE = MsgType.HEARTBEAT
    clock_ns: int = 0
    echo_ns: int = 0


@dataclass(frozen=True)
class Bye(Message):
    """A node leaves: it has already given back everything it held. The directory answers with
    a Bye of its own once it has processed everything the node sent before."""

    TYPE = MsgType.BYE


@dataclass(frozen=True)
class LockAcquire(Message):
    """Ask for lock ``name`` for ``holder`` ("node:pid:thread"); give up after ``timeout_ms``
    (negative: wait forever)."""

    TYPE = MsgType.LOCK_ACQUIRE
    req: int
    name: str
    holder: str
    timeout_ms: int


@dataclass(frozen=True)
class LockRelease(Message):
    TYPE = MsgType.LOCK_RELEASE
    req: int
    name: str
    holder: str


@dataclass(frozen=True)
class BarrierJoin(Message):
    """Register ``holder`` as a member of barrier ``name`` of ``parties``."""

    TYPE = MsgType.BARRIER_JOIN
    req: int
    name: str
    parties: int
    holder: str


@dataclass(frozen=True)
class BarrierWait(Message):
    TYPE = MsgType.BARRIER_WAIT
    req: int
    name: str
    parties: int
    holder: str


@dataclass(frozen=True)
class Departed(Message):
    """A process ("node:pid") of the sender's node is gone: release its locks, break its
    barriers."""

    TYPE = MsgType.DEPARTED
    prefix: str


@dataclass(frozen=True)
class LockStatus(Message):
    """Who holds lock ``name`` and who waits for it, in order (to watch it, or to wait in a
    test until a request is queued)."""

    TYPE = MsgType.LOCK_STATUS
    req: int
    name: str


@dataclass(frozen=True)
class LockInfo(Message):
    TYPE = MsgType.LOCK_INFO
    req: int
    holder: str
    waiting: list


@dataclass(frozen=True)
class SyncReply(Message):
    """The answer to a lock or barrier request: a ``SyncStatus`` and a detail text."""

    TYPE = MsgType.SYNC_REPLY
    req: int
    status: int
    detail: str


@dataclass(frozen=True)
class Lost(Message):
    """Directory to a node that asked for ``count`` pages from ``page``: they are lost, their
    newest contents died with node ``dead_node``. ``array`` names the allocation they belong
    to ("" if none) and ``array_page`` is the index of ``page`` within it (for the log line).
    Every access to them fails until the program calls ``node.forget_lost``."""

    TYPE = MsgType.LOST
    page: int
    count: int
    dead_node: str
    array: str
    array_page: int


@dataclass(frozen=True)
class Fenced(Message):
    """Directory to a peer it will not serve: declared dead, joined an earlier directory (its
    ``epoch`` differs), or a second live node under a name in use. ``reason`` says which."""

    TYPE = MsgType.FENCED
    epoch: int
    reason: str


@dataclass(frozen=True)
class LostQuery(Message):
    """Which pages are lost, per array (answered by a LostReport)."""

    TYPE = MsgType.LOST_QUERY
    req: int


@dataclass(frozen=True)
class ForgetLost(Message):
    """The program gives up the lost pages of array ``name``: they read as zeros from now on
    (answered by a LostReport of the ranges forgotten)."""

    TYPE = MsgType.FORGET_LOST
    req: int
    name: str


@dataclass(frozen=True)
class LostReport(Message):
    """Lost ranges: ``ranges`` holds ``[array, start_byte, end_byte, dead_node]`` lists, the
    bytes counted from the array's start."""

    TYPE = MsgType.LOST_REPORT
    req: int
    ranges: list


@dataclass(frozen=True)
class NodeReport(Message):
    """A node's counters and fault-latency histogram (``dsm.agent.stats``), sent every
    STATS_REPORT_INTERVAL_S so that the directory can show the whole cluster (``dsm top``)."""

    TYPE = MsgType.NODE_REPORT
    counters: dict
    latency_counts: list
    processes: int


@dataclass(frozen=True)
class StatsQuery(Message):
    """What is the cluster doing? Read-only: answered by a StatsReport to any peer, with or
    without a session."""

    TYPE = MsgType.STATS_QUERY
    req: int


@dataclass(frozen=True)
class StatsReport(Message):
    """``nodes``: node -> {"counters", "latency_counts", "processes", "age_s"} (the node's last
    report, ``age_s`` seconds old); ``latency_buckets_us``: the histogram's upper bounds;
    ``arrays``: ``[name, first_page, pages, runs]``, ``runs`` the page states in order as
    ``[pages, kind, holders]`` (kind "owned", "shared", "home" or "lost"); ``directory``: its
    own counters."""

    TYPE = MsgType.STATS_REPORT
    req: int
    nodes: dict
    latency_buckets_us: list
    arrays: list
    directory: dict


MESSAGE_CLASSES: dict[MsgType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Welcome, Acquire, Grant, Fetch, Fetched, Invalidate, Invalidated, Writeback,
        Drop, Discard, Alloc, Allocated, Error, Heartbeat, Bye, LockAcquire, LockRelease,
        BarrierJoin, BarrierWait, Departed, SyncReply, LockStatus, LockInfo, Lost, Fenced,
        LostQuery, ForgetLost, LostReport, NodeReport, StatsQuery, StatsReport,
    )
}

_FIELD_NAMES: dict[type[Message], tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in MESSAGE_CLASSES.values()
}
_FIELD_TYPES: dict[type[Message], tuple[type, ...]] = {
    cls: tuple(
        {"int": int, "bool": bool, "str": str, "list": list, "dict": dict}[f.type]
        for f in fields(cls)
    )
    for cls in MESSAGE_CLASSES.values()
}


def identity(node: str, incarnation: int) -> bytes:
    """The ZeroMQ identity of incarnation ``incarnation`` of node ``node``."""
    return f"{node}#{incarnation:x}".encode(errors="surrogateescape")


_PAYLOAD_VALUES = frozenset(p.value for p in Payload)


def encode(msg: Message, page: Any = None) -> list[Any]:
    """The frames of ``msg``; ``page`` (a buffer) goes in its own frame for a DATA payload."""
    cls = type(msg)
    header = msgpack.packb([cls.TYPE, *(getattr(msg, n) for n in _FIELD_NAMES[cls])])
    if page is not None:
        return [header, page]
    return [header]


def decode(frames: list[Any], page_size: int) -> tuple[Message, Any]:
    """Parse and validate frames into (message, page buffer or None)."""
    if not frames:
        raise ProtocolError("empty message: expected a header frame")
    first = frames[0]
    try:
        header = msgpack.unpackb(first.bytes if isinstance(first, zmq.Frame) else first)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, list) or not header:
        raise ProtocolError(f"header must be a non-empty array, got {type(header).__name__}")
    try:
        cls = MESSAGE_CLASSES[MsgType(header[0])]
    except (ValueError, TypeError):
        raise ProtocolError(f"unknown message type {header[0]!r}") from None
    names, types = _FIELD_NAMES[cls], _FIELD_TYPES[cls]
    if len(header) - 1 != len(names):
        raise ProtocolError(
            f"{cls.__name__} needs {len(names)} fields ({', '.join(names)}), got {len(header) - 1}"
        )
    for name, expected, value in zip(names, types, header[1:]):
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if not ok:
            raise ProtocolError(
                f"{cls.__name__}.{name} must be {expected.__name__}, got {type(value).__name__}"
            )
    msg = cls(*header[1:])
    count = getattr(msg, "count", 1)
    if not 1 <= count <= MAX_BATCH_PAGES:
        raise ProtocolError(f"{cls.__name__}.count {count} is outside 1..{MAX_BATCH_PAGES}")
    if cls.CARRIES_PAGE and getattr(msg, "payload") not in _PAYLOAD_VALUES:
        raise ProtocolError(f"{cls.__name__}.payload {getattr(msg, 'payload')} is not a Payload")
    page = None
    if cls.CARRIES_PAGE and getattr(msg, "payload") == Payload.DATA:
        if len(frames) != 2:
            raise ProtocolError(f"{cls.__name__} with DATA needs 2 frames, got {len(frames)}")
        page = frames[1]
        if isinstance(page, zmq.Frame):  # received without a copy: hand out its buffer
            page = page.buffer
        length = len(page)
        expected = msg.count * page_size
        if length != expected:
            raise ProtocolError(
                f"{cls.__name__} page frame is {length} bytes, expected {expected} "
                f"({msg.count} pages of {page_size})"
            )
    elif len(frames) != 1:
        raise ProtocolError(f"{cls.__name__} needs 1 frame, got {len(frames)}")
    return msg, page
