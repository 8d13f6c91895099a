"""The memory settings of a long-running service (the directory, a node's agent): what they keep
is large and lives long, what they make per message is short-lived.

**The cyclic garbage collector.**

Python's collector runs its youngest generation every 700 allocations of container objects and
an older one every 10 runs of the one below, and each run of an older generation walks every
object that survived into it. A service keeps an entry per page it has seen (the directory: a
``PageEntry`` with its copy set and queue per page; an agent: its page states), so a 256 MiB
scan makes some 200,000 containers in a second, and every tenth young collection then walks
them all: py-spy found a third of the directory's samples during a scan in the line that makes
an entry. ``tune_for_service`` freezes what the start-up made (imports, the tables: never
garbage) out of the collector's sight and collects far less often; what a service lets go is
mostly freed by reference counting, and the collector still runs for the cycles.

**The allocator.** A service moves pages in runs of up to 4 MiB: an owner reads a run out of its
memory into a new buffer, ZeroMQ receives one into a new message. glibc gives a block that large
back to the kernel once it is freed (unmapped, or trimmed off the top of the heap), so the next
run's buffer is faulted in and cleared by the kernel page by page before the copy into it even
starts: perf found a quarter of an owner's time during a scan in those faults. Raised
thresholds keep such blocks on the heap, and freed memory there for the next run (with the
owner reading through a mapping, ``dsm/agent/memory.py``: its CPU per MB served during a scan
fell from 0.89-1.01 ms to 0.71-0.89 ms on this VM). What a service keeps free that way is
bounded by the trim threshold.
"""

from __future__ import annotations

import gc
import logging

from dsm import libc

log = logging.getLogger(__name__)

#: (allocations between two young collections, young collections between two of the middle
#: generation, middle between two of the oldest): Python's are (700, 10, 10)
SERVICE_GC_THRESHOLDS = (100_000, 50, 100)
#: blocks at least this large are mmapped (the ceiling of glibc's own threshold on 64 bits,
#: which starts at 128 KiB and rises only as far as the largest mmapped block freed so far)
SERVICE_MMAP_THRESHOLD_BYTES = 32 << 20
#: the free memory at the top of the heap kept for reuse rather than given back to the kernel:
#: a few runs in flight each way (the read-ahead keeps two windows of 4 MiB ahead of a scan)
SERVICE_TRIM_THRESHOLD_BYTES = 64 << 20


def tune_for_service() -> None:
    """Call once the service has started (its imports and tables made)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVICE_GC_THRESHOLDS)
    for param, value in ((libc.M_MMAP_THRESHOLD, SERVICE_MMAP_THRESHOLD_BYTES),
                         (libc.M_TRIM_THRESHOLD, SERVICE_TRIM_THRESHOLD_BYTES)):
        if not libc.mallopt(param, value):  # (runs as it is, a bit slower)
            log.info("the allocator refused mallopt(%d, %d): page runs may be read into "
                     "fresh memory", param, value)
