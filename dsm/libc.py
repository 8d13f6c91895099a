"""The few libc calls Python's standard library does not offer: mmap at a fixed address, mremap,
madvise on raw addresses, fallocate with PUNCH_HOLE, mincore, and the raw syscall entry.

Foreign signatures are declared once, as data, and every call turns ``-1`` into an ``OSError``
carrying errno and the call's name, retrying on EINTR. ctypes calls release the GIL, which is what
lets a thread of a process fault on registered memory while another thread of the same process
keeps running (see DESIGN.md, the GIL section).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from typing import Any, Callable

_libc = ctypes.CDLL(None, use_errno=True)

_c = ctypes
_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "mmap": ([_c.c_void_p, _c.c_size_t, _c.c_int, _c.c_int, _c.c_int, _c.c_long], _c.c_void_p),
    "munmap": ([_c.c_void_p, _c.c_size_t], _c.c_int),
    "mremap": ([_c.c_void_p, _c.c_size_t, _c.c_size_t, _c.c_int, _c.c_void_p], _c.c_void_p),
    "madvise": ([_c.c_void_p, _c.c_size_t, _c.c_int], _c.c_int),
    "mprotect": ([_c.c_void_p, _c.c_size_t, _c.c_int], _c.c_int),
    "fallocate": ([_c.c_int, _c.c_int, _c.c_long, _c.c_long], _c.c_int),
    "mincore": ([_c.c_void_p, _c.c_size_t, _c.c_char_p], _c.c_int),
    "syscall": (None, _c.c_long),  # variadic: arguments are passed as given
    "memset": ([_c.c_void_p, _c.c_int, _c.c_size_t], _c.c_void_p),
    "mallopt": ([_c.c_int, _c.c_int], _c.c_int),
}
for _name, (_argtypes, _restype) in _SIGNATURES.items():
    _fn = getattr(_libc, _name)
    if _argtypes is not None:
        _fn.argtypes = _argtypes
    _fn.restype = _restype

PAGE_SIZE = mmap.PAGESIZE

PROT_NONE = mmap.PROT_NONE if hasattr(mmap, "PROT_NONE") else 0
PROT_READ = mmap.PROT_READ
PROT_WRITE = mmap.PROT_WRITE
MAP_SHARED = mmap.MAP_SHARED
MAP_PRIVATE = mmap.MAP_PRIVATE
MAP_ANONYMOUS = mmap.MAP_ANONYMOUS
MAP_FIXED = 0x10  #: <asm-generic/mman-common.h>
MAP_FIXED_NOREPLACE = 0x100000  #: fail with EEXIST instead of replacing a mapping
#: do not reserve swap for the mapping: a sparse one larger than RAM is then allowed under the
#: kernel's overcommit heuristic (vm.overcommit_memory=0) <asm-generic/mman-common.h>
MAP_NORESERVE = 0x4000
MREMAP_MAYMOVE = 1  #: <linux/mman.h>
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4
MADV_DONTNEED = mmap.MADV_DONTNEED
MADV_REMOVE = mmap.MADV_REMOVE
FALLOC_FL_KEEP_SIZE = 0x01  #: <linux/falloc.h>
FALLOC_FL_PUNCH_HOLE = 0x02

_MAP_FAILED = ctypes.c_void_p(-1).value


def _checked(name: str, call: Callable[[], Any], failed: Any = -1) -> Any:
    while True:
        result = call()
        if result != failed:
            return result
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, f"{name}: {os.strerror(err)}")


def mmap_at(
    addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0
) -> int:
    """mmap(2) returning the address; ``MAP_FIXED_NOREPLACE`` in flags refuses a taken range."""
    result = _checked(
        "mmap",
        lambda: _libc.mmap(addr or None, length, prot, flags, fd, offset),
        _MAP_FAILED,
    )
    if flags & MAP_FIXED_NOREPLACE and addr and result != addr:
        # Kernels before 4.17 ignore NOREPLACE and treat the address as a hint.
        _libc.munmap(result, length)
        raise OSError(errno.EEXIST, f"mmap: address {addr:#x} is already in use")
    return result


def munmap(addr: int, length: int) -> None:
    _checked("munmap", lambda: _libc.munmap(addr, length))


def mremap(old_addr: int, old_len: int, new_len: int, flags: int = 0, new_addr: int = 0) -> int:
    return _checked(
        "mremap",
        lambda: _libc.mremap(old_addr, old_len, new_len, flags, new_addr or None),
        _MAP_FAILED,
    )


def madvise(addr: int, length: int, advice: int) -> None:
    _checked("madvise", lambda: _libc.madvise(addr, length, advice))


def mprotect(addr: int, length: int, prot: int) -> None:
    _checked("mprotect", lambda: _libc.mprotect(addr, length, prot))


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Drop ``length`` bytes at ``offset`` of a file (memfd) from every mapping of it."""
    _checked(
        "fallocate",
        lambda: _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length),
    )


def resident_pages(addr: int, length: int) -> bytes:
    """mincore(2): one byte per page, bit 0 set where the page is resident (in the page cache)."""
    pages = (length + PAGE_SIZE - 1) // PAGE_SIZE
    vec = ctypes.create_string_buffer(pages)
    _checked("mincore", lambda: _libc.mincore(addr, length, vec))
    return vec.raw


def syscall(number: int, *args: int) -> int:
    """The raw syscall(2) entry with integer arguments."""
    c_args = [ctypes.c_long(a) for a in args]
    return _checked(f"syscall {number}", lambda: _libc.syscall(ctypes.c_long(number), *c_args))


def memset(addr: int, value: int, length: int) -> None:
    """Write through raw memory without holding the GIL (ctypes releases it)."""
    _libc.memset(addr, value, length)


#: glibc's mallopt parameters <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def mallopt(param: int, value: int) -> bool:
    """glibc's mallopt(3): whether it took the setting (it answers 1, or 0 for a value it
    refuses; it sets no errno)."""
    return _libc.mallopt(param, value) == 1


def memmove(dst: int, src: int, length: int) -> None:
    """Copy raw memory without holding the GIL (ctypes releases it)."""
    ctypes.memmove(dst, src, length)


def buffer_address(buf: Any) -> int:
    """The address of the first byte of a buffer (bytes, bytearray, memoryview, zmq frame)."""
    view = memoryview(buf)
    if not view.c_contiguous:
        raise ValueError("buffer is not contiguous")
    if not view.readonly:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    if isinstance(buf, bytes):
        return ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0
    import numpy  # a read-only buffer that is not bytes: numpy exposes its address without a copy

    return numpy.frombuffer(view, dtype=numpy.uint8).ctypes.data
