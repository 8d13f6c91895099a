"""The conversation between a workload process and its node agent over a Unix socket: every
message, typed, with its encoding and validation (as ``dsm.protocol`` is for the directory).

A SOCK_SEQPACKET socket keeps message boundaries; each message is one msgpack map of its tag
(``"type"``) and its fields, optionally with file descriptors attached (SCM_RIGHTS):

    on connect        agent -> workload  Greeting {base, size, page_size, node}  + [memfd]
    attach            workload -> agent  Register {pid}                         + [uffd]
                      agent -> workload  Ready
    requests          workload -> agent  AllocRequest ...  ->  AllocAnswer
    (forwarded to     workload -> agent  LockRequest, UnlockRequest, BarrierJoinRequest,
    the directory,                       BarrierWaitRequest  ->  SyncAnswer
    see ``dsm.agent.  workload -> agent  LockStatusRequest   ->  LockStatusAnswer
    forwarding``)     workload -> agent  LostRequest, ForgetLostRequest  ->  LostAnswer
                      workload -> agent  FreeRequest  ->  FreeAnswer
                      workload -> agent  ArraysRequest  ->  ArraysAnswer
                      workload -> agent  AtomicRequest  ->  AtomicAnswer
                      workload -> agent  CollectiveRequest  ->  CollectiveAnswer
    answered here     workload -> agent  StatsRequest        ->  StatsAnswer
    leaving           workload -> agent  Detach

Every request carries an id (``req``) that its answer repeats, and the asking thread (``pid``,
``tid``: locks and barriers are held by threads). Any request may be answered by an
``ErrorAnswer`` instead; one with ``req`` 0 answers a message the agent could not read.

``recv`` validates what arrives: a known tag for the receiver's direction, exactly the message's
fields, each of the type and range its annotation declares (``dsm.schema``), and exactly the
file descriptors it carries. Anything else is a ``ProtocolError`` naming what was wrong, and the
descriptors that came with it are closed.
"""

from __future__ import annotations

import enum
import os
import socket
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import msgpack

from dsm.errors import DsmError, ProtocolError
# (where dsm run sets it, a light module: local.AGENT_SOCKET_ENV is the same name)
from dsm.launchers import AGENT_SOCKET_ENV  # noqa: F401
from dsm.protocol import (AtomicIndex, AtomicKind, AtomicSize, CollectiveKind, CreateMode,
                          MAX_JOB_SIZE, Parties, ReduceOp, Status)

from dsm.schema import I64, U64, Pid, check_fields, field_checks, one_of, ranged

#: the longest message either side reads; a longer one is refused (the socket truncates it)
MAX_MESSAGE_BYTES = 1 << 16
#: the most file descriptors read with one message (more are refused; the kernel closes the rest)
MAX_FDS = 4
#: recvmsg's flags as plain ints: ``socket.MSG_TRUNC`` is an IntFlag, whose ``&`` goes through
#: the enum machinery (a few microseconds per message on the lock path, each side)
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
#: the key of a message's tag in its map
TAG_KEY = "type"

class AgentGone(DsmError):
    """The peer (the node agent, seen from a workload) closed the connection or did not answer
    in time."""


class NoAnswer(AgentGone):
    """The node agent did not answer a request before its deadline (a late answer is dropped)."""


class Direction(enum.Enum):
    TO_AGENT = "workload -> agent"
    TO_WORKLOAD = "agent -> workload"


@dataclass(frozen=True)
class LocalMessage:
    TAG: ClassVar[str]
    DIRECTION: ClassVar[Direction]
    #: how many file descriptors come with it
    FDS: ClassVar[int] = 0


# --- agent -> workload -------------------------------------------------------------------------
@dataclass(frozen=True)
class Greeting(LocalMessage):
    """Sent on every connection, with the node's memfd: the region's layout and the node."""

    TAG = "layout"
    DIRECTION = Direction.TO_WORKLOAD
    FDS = 1
    base: U64
    size: U64
    page_size: U64
    node: str


@dataclass(frozen=True)
class Ready(LocalMessage):
    """The agent serves the faults of the process that registered."""

    TAG = "ready"
    DIRECTION = Direction.TO_WORKLOAD


@dataclass(frozen=True)
class AllocAnswer(LocalMessage):
    TAG = "allocated"
    DIRECTION = Direction.TO_WORKLOAD
    req: U64
    offset: U64  #: from the region's base
    nbytes: U64
    meta: dict[str, Any]


@dataclass(frozen=True)
class StatsAnswer(LocalMessage):
    """The node's counters and fault-latency histogram (``NodeStats.snapshot``), its name and
    its number of workload processes."""

    TAG = "stats"
    DIRECTION = Direction.TO_WORKLOAD
    req: U64
    stats: dict[str, Any]


@dataclass(frozen=True)
class SyncAnswer(LocalMessage):
    """The directory's answer to a lock or barrier request (``SyncStatus`` and a detail)."""

    TAG = "sync"
    DIRECTION = Direction.TO_WORKLOAD
    req: U64
    status: Status
    detail: str


@dataclass(frozen=True)
class LockStatusAnswer(LocalMessage):
    TAG = "lock_info"
    DIRECTION = Direction.TO_WORKLOAD
    req: U64
    holder: str  #: "" when nobody holds it
    waiting: list[str]  #: in the order they will get it


@dataclass(frozen=True)
class FreeAnswer(LocalMessage):
    """``holders``: how many other nodes still hold the freed memory (0: reclaimed)."""

    TAG = "freed"
    DIRECTION = Direction.TO_WORKLOAD
    req: U64
    holders: U64


@dataclass(frozen=True)
class ArraysAnswer(LocalMessage):
    """``[name, nbytes, meta, holders]`` rows (``dsm.protocol.ArrayList``)."""

    TAG = "arrays"
    DIRECTION = Direction.TO_WORKLOAD
    req: U64
    arrays: list[tuple[str, U64, dict[str, Any], U64]]


@dataclass(frozen=True)
class AtomicAnswer(LocalMessage):
    TAG = "atomic"
    DIRECTION = Direction.TO_WORKLOAD
    req: U64
    value: I64


@dataclass(frozen=True)
class CollectiveAnswer(LocalMessage):
    TAG = "collective"
    DIRECTION = Direction.TO_WORKLOAD
    req: U64
    value: Any


@dataclass(frozen=True)
class LostAnswer(LocalMessage):
    """Lost ranges as ``[array, start_byte, end_byte, dead_node]`` rows."""

    TAG = "lost"
    DIRECTION = Direction.TO_WORKLOAD
    req: U64
    ranges: list[tuple[str, U64, U64, str]]


@dataclass(frozen=True)
class ErrorAnswer(LocalMessage):
    """Request ``req`` failed (0: a message the agent could not read); ``message`` says why."""

    TAG = "error"
    DIRECTION = Direction.TO_WORKLOAD
    req: U64
    message: str


# --- workload -> agent -------------------------------------------------------------------------
@dataclass(frozen=True)
class Register(LocalMessage):
    """A process attaches, with its uffd registered over the whole region."""

    TAG = "register"
    DIRECTION = Direction.TO_AGENT
    FDS = 1
    pid: Pid


@dataclass(frozen=True)
class Detach(LocalMessage):
    TAG = "detach"
    DIRECTION = Direction.TO_AGENT


@dataclass(frozen=True)
class Request(LocalMessage):
    """A request of thread ``tid`` of process ``pid``, answered by an ``ANSWER`` (or an
    ``ErrorAnswer``) that repeats ``req``."""

    DIRECTION = Direction.TO_AGENT
    ANSWER: ClassVar[type[LocalMessage]]
    req: U64
    pid: Pid
    tid: U64  #: ``threading.get_ident()``


@dataclass(frozen=True)
class AllocRequest(Request):
    """Find or create array ``name`` of ``nbytes``; ``meta`` (shape, dtype) must match."""

    TAG = "alloc"
    ANSWER = AllocAnswer
    name: str
    nbytes: U64
    meta: dict[str, Any]
    create: one_of(CreateMode) = int(CreateMode.EITHER)


@dataclass(frozen=True)
class FreeRequest(Request):
    TAG = "free"
    ANSWER = FreeAnswer
    name: str


@dataclass(frozen=True)
class ArraysRequest(Request):
    TAG = "arrays"
    ANSWER = ArraysAnswer


@dataclass(frozen=True)
class AtomicRequest(Request):
    """``dsm.protocol.Atomic``'s fields, from a workload."""

    TAG = "atomic"
    ANSWER = AtomicAnswer
    name: str
    size: AtomicSize
    index: AtomicIndex
    op: one_of(AtomicKind)
    operand: I64 = 0
    expected: I64 = 0


@dataclass(frozen=True)
class CollectiveRequest(Request):
    """``dsm.protocol.Collective``'s fields, from a workload."""

    TAG = "collective"
    ANSWER = CollectiveAnswer
    seq: U64
    kind: one_of(CollectiveKind)
    root: ranged(0, MAX_JOB_SIZE - 1)
    op: one_of(ReduceOp)
    value: Any


@dataclass(frozen=True)
class StatsRequest(Request):
    TAG = "stats"
    ANSWER = StatsAnswer


@dataclass(frozen=True)
class LockRequest(Request):
    """Acquire lock ``name``; give up after ``timeout_ms`` (negative: wait forever).
    ``guards``: the pages the lock guards, ``[first, count, ...]`` runs (``LockAcquire``)."""

    TAG = "lock"
    ANSWER = SyncAnswer
    name: str
    timeout_ms: I64
    guards: list[U64]


@dataclass(frozen=True)
class UnlockRequest(Request):
    TAG = "unlock"
    ANSWER = SyncAnswer
    name: str


@dataclass(frozen=True)
class LockStatusRequest(Request):
    TAG = "lock_status"
    ANSWER = LockStatusAnswer
    name: str


@dataclass(frozen=True)
class BarrierJoinRequest(Request):
    TAG = "barrier_join"
    ANSWER = SyncAnswer
    name: str
    parties: Parties


@dataclass(frozen=True)
class BarrierWaitRequest(Request):
    """Wait at barrier ``name``; break it after ``timeout_ms`` (negative: wait forever)."""

    TAG = "barrier_wait"
    ANSWER = SyncAnswer
    name: str
    parties: Parties
    timeout_ms: I64 = -1


@dataclass(frozen=True)
class LostRequest(Request):
    TAG = "lost"
    ANSWER = LostAnswer


@dataclass(frozen=True)
class ForgetLostRequest(Request):
    TAG = "forget_lost"
    ANSWER = LostAnswer
    name: str


LOCAL_MESSAGE_CLASSES: tuple[type[LocalMessage], ...] = (
    Greeting, Ready, AllocAnswer, StatsAnswer, SyncAnswer, LockStatusAnswer, LostAnswer,
    ErrorAnswer, Register, Detach, AllocRequest, StatsRequest, LockRequest, UnlockRequest,
    LockStatusRequest, BarrierJoinRequest, BarrierWaitRequest, LostRequest, ForgetLostRequest,
    FreeAnswer, ArraysAnswer, AtomicAnswer, CollectiveAnswer, FreeRequest, ArraysRequest,
    AtomicRequest, CollectiveRequest,
)
#: (direction, tag) -> class: a tag names one message per direction
_CLASS_OF: dict[tuple[Direction, str], type[LocalMessage]] = {
    (cls.DIRECTION, cls.TAG): cls for cls in LOCAL_MESSAGE_CLASSES
}
assert len(_CLASS_OF) == len(LOCAL_MESSAGE_CLASSES), "two messages of one direction share a tag"
_FIELD_NAMES = {cls: tuple(f.name for f in fields(cls)) for cls in LOCAL_MESSAGE_CLASSES}
_FIELD_CHECKS = {cls: field_checks(cls) for cls in LOCAL_MESSAGE_CLASSES}
_OTHER = {Direction.TO_AGENT: Direction.TO_WORKLOAD, Direction.TO_WORKLOAD: Direction.TO_AGENT}


def encode(msg: LocalMessage) -> bytes:
    cls = type(msg)
    return msgpack.packb({TAG_KEY: cls.TAG, **{n: getattr(msg, n) for n in _FIELD_NAMES[cls]}})


def decode(data: bytes, nfds: int, to: Direction) -> LocalMessage:
    """Parse and validate one message received by ``to`` with ``nfds`` descriptors attached."""
    try:
        body = msgpack.unpackb(data)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError(f"local message is not valid msgpack: {exc}") from None
    if type(body) is not dict:
        raise ProtocolError(f"local message must be a map, got {type(body).__name__}")
    tag = body.get(TAG_KEY)
    if type(tag) is not str:
        raise ProtocolError(f"local message must have a string {TAG_KEY!r}, got "
                            f"{type(tag).__name__}")
    cls = _CLASS_OF.get((to, tag))
    if cls is None:
        other = _CLASS_OF.get((_OTHER[to], tag))
        if other is not None:
            raise ProtocolError(f"local message {other.__name__} travels {other.DIRECTION.value}: "
                                f"it is not received {to.value}")
        raise ProtocolError(f"unknown local message type {tag!r:.40}")
    names = _FIELD_NAMES[cls]
    if len(body) != len(names) + 1:
        missing = [n for n in names if n not in body]
        if missing:
            raise ProtocolError(f"{cls.__name__} lacks field {missing[0]!r}")
        extra = next(k for k in body if k != TAG_KEY and k not in names)
        raise ProtocolError(f"{cls.__name__} has no field {extra!r:.40}")
    try:
        values = [body[n] for n in names]
    except KeyError as exc:
        raise ProtocolError(f"{cls.__name__} lacks field {exc}") from None
    check_fields(cls, _FIELD_CHECKS[cls], values)
    if nfds != cls.FDS:
        raise ProtocolError(f"{cls.__name__} carries {cls.FDS} file descriptors, got {nfds}")
    return cls(*values)


def send(sock: socket.socket, msg: LocalMessage, fds: list[int] = ()) -> None:
    data = encode(msg)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv(sock: socket.socket, to: Direction) -> tuple[LocalMessage, list[int]]:
    """One message received by ``to`` and its fds. Raises AgentGone on EOF, ProtocolError on a
    malformed message (its fds closed), and whatever the socket's timeout raises at the
    deadline."""
    data, fds, flags, _addr = socket.recv_fds(sock, MAX_MESSAGE_BYTES, MAX_FDS)
    try:
        if not data:
            raise AgentGone("the peer closed the connection")
        if flags & _MSG_TRUNC:
            raise ProtocolError(f"local message is longer than {MAX_MESSAGE_BYTES} bytes")
        if flags & _MSG_CTRUNC:
            raise ProtocolError(f"local message carries more than {MAX_FDS} file descriptors")
        return decode(data, len(fds), to), fds
    except BaseException:
        close_fds(fds)
        raise


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
