"""Sizes with units (``64GiB``, ``512MiB``, ``4096``) and whether this host can give a region of
that size at the cluster's base address.

A size is a whole number of bytes, optionally followed by a unit: ``B``, the binary units
``KiB MiB GiB TiB`` (powers of 1024) or the decimal ``kB MB GB TB`` (powers of 1000), in any
case, a space allowed before the unit (``"64 GiB"``). ``K``, ``M``, ``G``, ``T`` alone are read
as the binary units, as ``dd``, ``ulimit`` and the kernel's command line read them.
"""

from __future__ import annotations

import errno
import os
import re

from dsm import libc
from dsm.errors import ConfigError

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
#: unit (lower case) -> bytes
UNITS = {
    "": 1, "b": 1,
    "k": KIB, "kib": KIB, "m": MIB, "mib": MIB, "g": GIB, "gib": GIB, "t": TIB, "tib": TIB,
    "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
#: mmap(2)'s flag for a mapping that reserves no swap (<asm-generic/mman-common.h>)
MAP_NORESERVE = 0x4000


def parse_size(text: str | int) -> int:
    """Bytes of ``text`` (``"64GiB"``, ``"1.5GiB"``, ``"4096"``); a ``ConfigError`` naming what was
    wrong otherwise. A fraction must come to a whole number of bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text)
    if not match:
        raise ConfigError(f"{text!r} is not a size: a number of bytes, optionally with a unit "
                          "(e.g. 64GiB, 512MiB, 1073741824)")
    number, unit = match.groups()
    if unit.lower() not in UNITS:
        raise ConfigError(f"{text!r}: unknown unit {unit!r} (one of B, KiB, MiB, GiB, TiB, "
                          "kB, MB, GB, TB)")
    scale = UNITS[unit.lower()]
    if "." in number:
        whole, frac = number.split(".")
        numerator = int(whole + frac) * scale
        denominator = 10 ** len(frac)
        if numerator % denominator:
            raise ConfigError(f"{text!r} is not a whole number of bytes")
        return numerator // denominator
    return int(number) * scale


def format_size(nbytes: int) -> str:
    """``nbytes`` in the largest binary unit that divides it (``64GiB``), else in bytes."""
    for unit, scale in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return f"{nbytes}B" if nbytes < KIB else f"{nbytes} bytes"


def check_region(base: int, size: int, page_size: int = libc.PAGE_SIZE) -> None:
    """Raise a ``ConfigError`` saying why if this host cannot give a shared region of ``size``
    bytes at ``base``: not a positive multiple of the page size, beyond the process address
    space (or ``ulimit -v``), or larger than a memfd may be. It asks the kernel, without using
    memory: a ``PROT_NONE`` reservation of the range (then unmapped) and a sparse memfd of that
    size (then closed)."""
    shown = format_size(size)
    what = f"region size {shown}" + ("" if shown.endswith("bytes") else f" ({size} bytes)")
    if size <= 0:
        raise ConfigError(f"{what}: must be positive")
    if size % page_size:
        raise ConfigError(f"{what} is not a multiple of the page size ({page_size} bytes): "
                          f"e.g. {format_size((size // page_size + 1) * page_size)}")
    try:
        addr = libc.mmap_at(base, size, libc.PROT_NONE,
                            libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | MAP_NORESERVE
                            | libc.MAP_FIXED_NOREPLACE)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise ConfigError(f"{what} at {base:#x}: part of that range is already mapped in "
                              "this process (choose another --base)") from None
        raise ConfigError(
            f"{what} at {base:#x}: the address space cannot give it "
            f"({os.strerror(exc.errno)}): the range {base:#x}-{base + size:#x} must fit below "
            "the top of the user address space (47 bits on x86_64: 128 TiB) and within "
            "`ulimit -v`; choose a smaller --region-size or a lower --base") from None
    libc.munmap(addr, size)
    try:
        fd = os.memfd_create("dsm-region-check", os.MFD_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{what}: memfd_create failed ({exc.strerror})") from None
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        raise ConfigError(f"{what}: the kernel refuses a shared-memory file that large "
                          f"({exc.strerror}; `ulimit -f`?)") from None
    finally:
        os.close(fd)


def _overcommit_policy() -> str:
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip()
    except OSError:
        return "?"


def check_home_copy(size: int) -> None:
    """Raise a ``ConfigError`` if the kernel will not map ``size`` bytes of private anonymous
    memory for the directory's home copy of the region. Untouched pages cost nothing and none is
    reserved (``MAP_NORESERVE``), so only strict accounting (vm.overcommit_memory=2) refuses a
    region larger than it commits."""
    try:  # mapped as the home store maps it (dsm/directory/home.py)
        probe = libc.mmap_at(0, size, libc.PROT_READ | libc.PROT_WRITE,
                             libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE)
    except OSError as exc:
        policy = _overcommit_policy()
        raise ConfigError(
            f"region size {format_size(size)}: the kernel will not give the directory's home "
            f"copy of the region ({exc.strerror}): with vm.overcommit_memory={policy} every "
            "mapping is accounted in full, although pages are only used once written. Choose "
            "a smaller --region-size, or allow it: `sysctl vm.overcommit_memory=0`")
    libc.munmap(probe, size)
