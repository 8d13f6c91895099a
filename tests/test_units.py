"""Sizes with units for ``--region-size``, and the clear errors for a region this host cannot
give (not page-sized, beyond the address space or ``ulimit -v``, more than the kernel commits)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from dsm.errors import ConfigError
from dsm.layout import DEFAULT_BASE_ADDRESS
from dsm.units import GIB, MIB, TIB, check_home_copy, check_region, format_size, parse_size

ROOT = Path(__file__).resolve().parents[1]
#: how long `dsm directory` may take to refuse a size
REFUSE_TIMEOUT_S = 30


@pytest.mark.timeout(10)
@pytest.mark.parametrize("text, nbytes", [
    ("4096", 4096), ("64GiB", 64 * GIB), ("64gib", 64 * GIB), ("64 GiB", 64 * GIB),
    ("512MiB", 512 * MIB), ("1G", GIB), ("2T", 2 * TIB), ("1.5GiB", 3 * GIB // 2),
    ("4KiB", 4096), ("1GB", 10 ** 9), ("16kB", 16000), ("100B", 100),
])
def test_parse_size(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.timeout(10)
@pytest.mark.parametrize("text, message", [
    ("lots", "not a size"), ("64XB", "unknown unit 'XB'"), ("-1GiB", "not a size"),
    ("0.3B", "not a whole number of bytes"), ("", "not a size"),
])
def test_parse_size_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_size(text)


@pytest.mark.timeout(10)
def test_format_size():
    assert [format_size(n) for n in (64 * GIB, 4096, 100, 3 * GIB // 2, 4097)] == [
        "64GiB", "4KiB", "100B", "1536MiB", "4097 bytes"]


@pytest.mark.timeout(10)
def test_check_region_accepts_what_the_address_space_gives():
    check_region(DEFAULT_BASE_ADDRESS, 64 * GIB)  # a reservation of addresses only


@pytest.mark.timeout(10)
def test_check_region_errors():
    with pytest.raises(ConfigError, match="not a multiple of the page size"):
        check_region(DEFAULT_BASE_ADDRESS, 4097)
    with pytest.raises(ConfigError, match="must be positive"):
        check_region(DEFAULT_BASE_ADDRESS, 0)
    # 200 TiB from the default base runs past the top of the 47-bit user address space
    with pytest.raises(ConfigError, match="the address space cannot give it"):
        check_region(DEFAULT_BASE_ADDRESS, 200 * TIB)


def _meminfo_bytes(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


@pytest.mark.timeout(10)
def test_a_home_copy_larger_than_ram_and_swap_is_mapped_without_reserving_it():
    """The home store is sparse and reserves nothing (MAP_NORESERVE): under the overcommit
    heuristic a region twice the machine's RAM plus swap is fine, as long as it stays sparse."""
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() != "0":
        pytest.skip("the overcommit heuristic (vm.overcommit_memory=0) is not in force here")
    huge = 2 * (_meminfo_bytes("MemTotal") + _meminfo_bytes("SwapTotal"))
    huge -= huge % 4096
    check_home_copy(huge)
    from dsm.directory.home import HomeStore
    from dsm.layout import Layout
    from dsm.protocol import Payload

    store = HomeStore(Layout(DEFAULT_BASE_ADDRESS, huge))
    store.put(3, 1, Payload.DATA, b"\x07" * 4096)
    assert store.get(3, 1) == (Payload.DATA, b"\x07" * 4096)
    store.clear(3, 1)
    assert store.get(3, 1) == (Payload.ZERO, None)


def _directory(*args: str, limit_as: int | None = None) -> subprocess.CompletedProcess:
    def limit():
        if limit_as is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    return subprocess.run([sys.executable, "-m", "dsm", "directory", "--listen",
                           "tcp://127.0.0.1:*", *args], capture_output=True, text=True,
                          timeout=REFUSE_TIMEOUT_S, preexec_fn=limit,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.timeout(REFUSE_TIMEOUT_S * 3)
def test_directory_refuses_sizes_with_the_reason():
    done = _directory("--region-size", "64XB")
    assert done.returncode == 2 and "unknown unit 'XB'" in done.stderr
    done = _directory("--region-size", "1000")
    assert done.returncode == 2
    assert "--region-size: region size 1000B (1000 bytes) is not a multiple of the page size" \
        in done.stderr
    done = _directory("--region-size", "200TiB")
    assert done.returncode == 2 and "the address space cannot give it" in done.stderr
    # `ulimit -v 4GiB`: 8 GiB of region do not fit, and the error says so
    done = _directory("--region-size", "8GiB", limit_as=4 * GIB)
    assert done.returncode == 2, done.stderr
    assert "the address space cannot give it" in done.stderr and "ulimit -v" in done.stderr
