"""Typed, immutable uffd events, and the pure parser from ``struct uffd_msg`` bytes to them.

The parser needs no kernel: feed it bytes. A Fork event carries a new file descriptor; the parser
hands it to ``wrap_fd`` (``Uffd.read_events`` passes the ``Uffd`` constructor).
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass
from typing import Any, Callable, Union

from dsm.uffd import abi
from dsm.uffd.errors import ShortRead, UnknownEvent


class FaultKind(enum.Enum):
    """Why the page fault was raised."""

    MISSING = "missing"  #: the page is not present
    WRITE_PROTECTED = "wp"  #: a write to a write-protected page
    MINOR = "minor"  #: the page is in the page cache but not mapped (MINOR mode)


class Access(enum.Enum):
    """Whether the faulting access was a read or a write."""

    READ = "read"
    WRITE = "write"


@dataclass(frozen=True, slots=True)
class Pagefault:
    kind: FaultKind
    rw: Access
    addr: int  #: faulting address, page-aligned unless EXACT_ADDRESS was negotiated
    thread_id: int  #: faulting thread id with THREAD_ID, else 0


@dataclass(frozen=True, slots=True)
class Fork:
    uffd: Any  #: the child's uffd, installed in the reader's fd table (a Uffd or, raw, an int)


@dataclass(frozen=True, slots=True)
class Remap:
    from_: int  #: old start address
    to: int  #: new start address
    len: int  #: length in bytes


@dataclass(frozen=True, slots=True)
class Remove:
    start: int  #: start of the range given to madvise
    end: int  #: end (exclusive)


@dataclass(frozen=True, slots=True)
class Unmap:
    start: int  #: start of the range unmapped
    end: int  #: end (exclusive)


Event = Union[Pagefault, Fork, Remap, Remove, Unmap]


def _pagefault(arg: bytes | memoryview, wrap_fd: Callable[[int], Any]) -> Pagefault:
    flags, address, ptid = abi.STRUCT_MSG_PAGEFAULT.unpack_from(arg)
    if flags & abi.UFFD_PAGEFAULT_FLAG_WP:
        kind = FaultKind.WRITE_PROTECTED
    elif flags & abi.UFFD_PAGEFAULT_FLAG_MINOR:
        kind = FaultKind.MINOR
    else:
        kind = FaultKind.MISSING
    rw = Access.WRITE if flags & abi.UFFD_PAGEFAULT_FLAG_WRITE else Access.READ
    return Pagefault(kind, rw, address, ptid)


def _fork(arg: bytes | memoryview, wrap_fd: Callable[[int], Any]) -> Fork:
    (ufd,) = abi.STRUCT_MSG_FORK.unpack_from(arg)
    return Fork(wrap_fd(ufd))


def _remap(arg: bytes | memoryview, wrap_fd: Callable[[int], Any]) -> Remap:
    return Remap(*abi.STRUCT_MSG_REMAP.unpack_from(arg))


def _remove(arg: bytes | memoryview, wrap_fd: Callable[[int], Any]) -> Remove:
    return Remove(*abi.STRUCT_MSG_RANGE.unpack_from(arg))


def _unmap(arg: bytes | memoryview, wrap_fd: Callable[[int], Any]) -> Unmap:
    return Unmap(*abi.STRUCT_MSG_RANGE.unpack_from(arg))


_PARSERS: dict[int, Callable[[memoryview, Callable[[int], Any]], Event]] = {
    abi.UFFD_EVENT_PAGEFAULT: _pagefault,
    abi.UFFD_EVENT_FORK: _fork,
    abi.UFFD_EVENT_REMAP: _remap,
    abi.UFFD_EVENT_REMOVE: _remove,
    abi.UFFD_EVENT_UNMAP: _unmap,
}


def _identity(fd: int) -> int:
    return fd


def parse_msg(msg: bytes | memoryview, wrap_fd: Callable[[int], Any] = _identity) -> Event:
    """Parse exactly one 32-byte ``struct uffd_msg``."""
    view = memoryview(msg)
    if len(view) != abi.UFFD_MSG_SIZE:
        raise ShortRead(
            errno.EIO, f"incomplete uffd_msg: got {len(view)}/{abi.UFFD_MSG_SIZE} bytes"
        )
    event = view[0]
    try:
        parser = _PARSERS[event]
    except KeyError:
        raise UnknownEvent(errno.EINVAL, f"unknown uffd event code {event:#x}") from None
    return parser(view[abi.UFFD_MSG_ARG_OFFSET :], wrap_fd)


def parse_msgs(data: bytes | memoryview, wrap_fd: Callable[[int], Any] = _identity) -> list[Event]:
    """Parse a buffer of whole ``struct uffd_msg`` (as one read(2) of a uffd returns)."""
    view = memoryview(data)
    if len(view) % abi.UFFD_MSG_SIZE:
        raise ShortRead(
            errno.EIO,
            f"incomplete uffd_msg: read {len(view)} bytes, not a multiple of {abi.UFFD_MSG_SIZE}",
        )
    return [
        parse_msg(view[i : i + abi.UFFD_MSG_SIZE], wrap_fd)
        for i in range(0, len(view), abi.UFFD_MSG_SIZE)
    ]
