"""The kernel's userfaultfd ABI: the only module with kernel numbers in it.

Names are spelled as in ``<linux/userfaultfd.h>`` so that they can be grepped against the header;
``tests/test_uffd_abi.py`` pins every ioctl number and every struct size and field offset to the
values of the installed header (compiled with the system C compiler) and, for what is newer than
that header (MOVE, POISON, WP_UNPOPULATED, ...), to the values of the kernel's current header.
"""

from __future__ import annotations

import enum
import platform
import struct

# --- ioctl number encoding (include/uapi/asm-generic/ioctl.h) -----------------------------------
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, ioc_type: int, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (ioc_type << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(ioc_type: int, nr: int) -> int:
    return _IOC(_IOC_NONE, ioc_type, nr, 0)


def _IOR(ioc_type: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ, ioc_type, nr, size)


def _IOWR(ioc_type: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, ioc_type, nr, size)


# --- structs: little-endian native layout, no padding (every field is a u64 or a u32 pair) ------
#: struct uffdio_api { __u64 api; __u64 features; __u64 ioctls; }
STRUCT_UFFDIO_API = struct.Struct("=QQQ")
#: struct uffdio_range { __u64 start; __u64 len; }
STRUCT_UFFDIO_RANGE = struct.Struct("=QQ")
#: struct uffdio_register { struct uffdio_range range; __u64 mode; __u64 ioctls; }
STRUCT_UFFDIO_REGISTER = struct.Struct("=QQQQ")
#: struct uffdio_copy { __u64 dst; __u64 src; __u64 len; __u64 mode; __s64 copy; }
STRUCT_UFFDIO_COPY = struct.Struct("=QQQQq")
#: struct uffdio_zeropage { struct uffdio_range range; __u64 mode; __s64 zeropage; }
STRUCT_UFFDIO_ZEROPAGE = struct.Struct("=QQQq")
#: struct uffdio_writeprotect { struct uffdio_range range; __u64 mode; }
STRUCT_UFFDIO_WRITEPROTECT = struct.Struct("=QQQ")
#: struct uffdio_continue { struct uffdio_range range; __u64 mode; __s64 mapped; }
STRUCT_UFFDIO_CONTINUE = struct.Struct("=QQQq")
#: struct uffdio_move { __u64 dst; __u64 src; __u64 len; __u64 mode; __s64 move; }  (Linux 6.8)
STRUCT_UFFDIO_MOVE = struct.Struct("=QQQQq")
#: struct uffdio_poison { struct uffdio_range range; __u64 mode; __s64 updated; }  (Linux 6.6)
STRUCT_UFFDIO_POISON = struct.Struct("=QQQq")

#: struct uffd_msg: __u8 event; __u8 reserved1; __u16 reserved2; __u32 reserved3; then a 24-byte
#: union. The header is read with this struct, the union with one of the STRUCT_MSG_* below.
STRUCT_UFFD_MSG_HEADER = struct.Struct("=BBHI")
UFFD_MSG_SIZE = 32
#: pagefault: __u64 flags; __u64 address; union { __u32 ptid; } feat;
STRUCT_MSG_PAGEFAULT = struct.Struct("=QQI")
#: fork: __u32 ufd;
STRUCT_MSG_FORK = struct.Struct("=I")
#: remap: __u64 from; __u64 to; __u64 len;
STRUCT_MSG_REMAP = struct.Struct("=QQQ")
#: remove and unmap: __u64 start; __u64 end;
STRUCT_MSG_RANGE = struct.Struct("=QQ")
#: where the union starts inside struct uffd_msg
UFFD_MSG_ARG_OFFSET = STRUCT_UFFD_MSG_HEADER.size

# --- ioctl numbers -------------------------------------------------------------------------------
USERFAULTFD_IOC = 0xAA
USERFAULTFD_IOC_NEW = _IO(USERFAULTFD_IOC, 0x00)

UFFD_API = 0xAA
UFFDIO = 0xAA
_UFFDIO_REGISTER = 0x00
_UFFDIO_UNREGISTER = 0x01
_UFFDIO_WAKE = 0x02
_UFFDIO_COPY = 0x03
_UFFDIO_ZEROPAGE = 0x04
_UFFDIO_MOVE = 0x05
_UFFDIO_WRITEPROTECT = 0x06
_UFFDIO_CONTINUE = 0x07
_UFFDIO_POISON = 0x08
_UFFDIO_API = 0x3F

UFFDIO_API = _IOWR(UFFDIO, _UFFDIO_API, STRUCT_UFFDIO_API.size)
UFFDIO_REGISTER = _IOWR(UFFDIO, _UFFDIO_REGISTER, STRUCT_UFFDIO_REGISTER.size)
UFFDIO_UNREGISTER = _IOR(UFFDIO, _UFFDIO_UNREGISTER, STRUCT_UFFDIO_RANGE.size)
UFFDIO_WAKE = _IOR(UFFDIO, _UFFDIO_WAKE, STRUCT_UFFDIO_RANGE.size)
UFFDIO_COPY = _IOWR(UFFDIO, _UFFDIO_COPY, STRUCT_UFFDIO_COPY.size)
UFFDIO_ZEROPAGE = _IOWR(UFFDIO, _UFFDIO_ZEROPAGE, STRUCT_UFFDIO_ZEROPAGE.size)
UFFDIO_MOVE = _IOWR(UFFDIO, _UFFDIO_MOVE, STRUCT_UFFDIO_MOVE.size)
UFFDIO_WRITEPROTECT = _IOWR(UFFDIO, _UFFDIO_WRITEPROTECT, STRUCT_UFFDIO_WRITEPROTECT.size)
UFFDIO_CONTINUE = _IOWR(UFFDIO, _UFFDIO_CONTINUE, STRUCT_UFFDIO_CONTINUE.size)
UFFDIO_POISON = _IOWR(UFFDIO, _UFFDIO_POISON, STRUCT_UFFDIO_POISON.size)

# --- events and flags ----------------------------------------------------------------------------
UFFD_EVENT_PAGEFAULT = 0x12
UFFD_EVENT_FORK = 0x13
UFFD_EVENT_REMAP = 0x14
UFFD_EVENT_REMOVE = 0x15
UFFD_EVENT_UNMAP = 0x16

UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
UFFD_PAGEFAULT_FLAG_WP = 1 << 1
UFFD_PAGEFAULT_FLAG_MINOR = 1 << 2

UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFD_FEATURE_EVENT_FORK = 1 << 1
UFFD_FEATURE_EVENT_REMAP = 1 << 2
UFFD_FEATURE_EVENT_REMOVE = 1 << 3
UFFD_FEATURE_MISSING_HUGETLBFS = 1 << 4
UFFD_FEATURE_MISSING_SHMEM = 1 << 5
UFFD_FEATURE_EVENT_UNMAP = 1 << 6
UFFD_FEATURE_SIGBUS = 1 << 7
UFFD_FEATURE_THREAD_ID = 1 << 8
UFFD_FEATURE_MINOR_HUGETLBFS = 1 << 9
UFFD_FEATURE_MINOR_SHMEM = 1 << 10
UFFD_FEATURE_EXACT_ADDRESS = 1 << 11
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_POISON = 1 << 14
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFD_FEATURE_MOVE = 1 << 16

UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_REGISTER_MODE_MINOR = 1 << 2

UFFDIO_COPY_MODE_DONTWAKE = 1 << 0
UFFDIO_COPY_MODE_WP = 1 << 1
UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1 << 0
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 1 << 1
UFFDIO_CONTINUE_MODE_DONTWAKE = 1 << 0
UFFDIO_CONTINUE_MODE_WP = 1 << 1
UFFDIO_MOVE_MODE_DONTWAKE = 1 << 0
UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES = 1 << 1
UFFDIO_POISON_MODE_DONTWAKE = 1 << 0

#: flag of the userfaultfd syscall and of USERFAULTFD_IOC_NEW: only user-mode faults are handled
UFFD_USER_MODE_ONLY = 1

# --- the userfaultfd syscall number, by architecture (arch/*/syscall tables) ---------------------
SYSCALL_USERFAULTFD_BY_MACHINE = {
    "x86_64": 323,
    "i386": 374,
    "i686": 374,
    "aarch64": 282,
    "arm64": 282,
    "riscv64": 282,
    "loongarch64": 282,
    "armv7l": 388,
    "armv6l": 388,
    "ppc64le": 364,
    "ppc64": 364,
    "s390x": 355,
}

USERFAULTFD_DEVICE = "/dev/userfaultfd"


def syscall_number(machine: str | None = None) -> int:
    """The userfaultfd syscall number for ``machine`` (default: this one's ``uname -m``)."""
    machine = machine or platform.machine()
    try:
        return SYSCALL_USERFAULTFD_BY_MACHINE[machine]
    except KeyError:
        known = ", ".join(sorted(SYSCALL_USERFAULTFD_BY_MACHINE))
        raise LookupError(
            f"no userfaultfd syscall number known for architecture {machine!r} (known: {known})"
        ) from None


# --- typed flags over the numbers above ----------------------------------------------------------
class Feature(enum.IntFlag):
    """Features negotiated by UFFDIO_API (``uffdio_api.features``)."""

    PAGEFAULT_FLAG_WP = UFFD_FEATURE_PAGEFAULT_FLAG_WP  #: write-protect faults
    EVENT_FORK = UFFD_FEATURE_EVENT_FORK  #: Fork events (needs CAP_SYS_PTRACE)
    EVENT_REMAP = UFFD_FEATURE_EVENT_REMAP  #: Remap events from mremap
    EVENT_REMOVE = UFFD_FEATURE_EVENT_REMOVE  #: Remove events from madvise
    MISSING_HUGETLBFS = UFFD_FEATURE_MISSING_HUGETLBFS  #: missing faults on hugetlbfs
    MISSING_SHMEM = UFFD_FEATURE_MISSING_SHMEM  #: missing faults on shmem (memfd, tmpfs)
    EVENT_UNMAP = UFFD_FEATURE_EVENT_UNMAP  #: Unmap events from munmap
    SIGBUS = UFFD_FEATURE_SIGBUS  #: deliver SIGBUS instead of fault events
    THREAD_ID = UFFD_FEATURE_THREAD_ID  #: report the faulting thread id
    MINOR_HUGETLBFS = UFFD_FEATURE_MINOR_HUGETLBFS  #: minor faults on hugetlbfs
    MINOR_SHMEM = UFFD_FEATURE_MINOR_SHMEM  #: minor faults on shmem
    EXACT_ADDRESS = UFFD_FEATURE_EXACT_ADDRESS  #: do not mask the fault address to a page
    WP_HUGETLBFS_SHMEM = UFFD_FEATURE_WP_HUGETLBFS_SHMEM  #: write-protect on shmem/hugetlbfs
    WP_UNPOPULATED = UFFD_FEATURE_WP_UNPOPULATED  #: write-protect also unpopulated anon ptes
    POISON = UFFD_FEATURE_POISON  #: UFFDIO_POISON
    WP_ASYNC = UFFD_FEATURE_WP_ASYNC  #: the kernel resolves WP faults itself
    MOVE = UFFD_FEATURE_MOVE  #: UFFDIO_MOVE


class RegisterMode(enum.IntFlag):
    """``uffdio_register.mode``."""

    MISSING = UFFDIO_REGISTER_MODE_MISSING  #: faults on pages not present
    WP = UFFDIO_REGISTER_MODE_WP  #: faults on writes to write-protected pages
    MINOR = UFFDIO_REGISTER_MODE_MINOR  #: faults on pages in the page cache but not mapped


class Ioctl(enum.IntFlag):
    """The ioctls a uffd or a registered range allows (bit ``1 << _UFFDIO_*``)."""

    REGISTER = 1 << _UFFDIO_REGISTER
    UNREGISTER = 1 << _UFFDIO_UNREGISTER
    WAKE = 1 << _UFFDIO_WAKE
    COPY = 1 << _UFFDIO_COPY
    ZEROPAGE = 1 << _UFFDIO_ZEROPAGE
    MOVE = 1 << _UFFDIO_MOVE
    WRITEPROTECT = 1 << _UFFDIO_WRITEPROTECT
    CONTINUE = 1 << _UFFDIO_CONTINUE
    POISON = 1 << _UFFDIO_POISON
    API = 1 << _UFFDIO_API
