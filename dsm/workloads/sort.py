"""Parallel integer bucket sort on shared memory, with a shared histogram updated under locks
(TreadMarks' IS, the NAS integer sort).

``size`` keys (int32 in ``[0, 2**KEY_BITS)``) live in one shared array; each node generates its
own slice of them. A pass then goes:

1. each node counts its keys into a private histogram of ``BUCKETS`` buckets (the top bits of a
   key), then adds it into the shared histogram: one lock per page of buckets, taken in an order
   that starts at the node's own section, so that the nodes mostly add to different pages at once;
2. barrier; every node turns the shared histogram into bucket start offsets (a prefix sum), takes
   its range of buckets, reads *all* the keys (read sharing of every node's slice), keeps those in
   its buckets, sorts them and writes them at their offset in the shared output;
3. barrier.

With ``--iterations I`` the sort runs I times over new keys (as IS does); the histograms of
consecutive passes alternate between two shared arrays, so that one can be cleared while the
other is read. The result (the sorted keys and the last pass's histogram) must equal numpy's
``np.sort`` and ``np.bincount`` in one process exactly.

Under ``--consistency release`` the keys, the output and both histograms are release arrays:
each node writes its own slice of keys and its own range of the output, and reads them after a
barrier; the histogram is added to under its sections' locks (a release sends the additions
home, the next grant of that lock invalidates the stale copy) and read after the barrier; a
histogram is cleared between two barriers in which nobody reads or adds to it.

Run it on three nodes by hand (``dsm demo --workload sort`` does all of this for you)::

    dsm directory --listen tcp://127.0.0.1:7400 &
    # then in three shells, K = 0, 1, 2 (dsm installed):
    dsm run --directory tcp://127.0.0.1:7400 -- python -m dsm.workloads.sort --rank K --nodes 3

Options: ``--size`` (number of keys), ``--iterations``; ``--rank`` may be left out (the nodes are
then numbered by arrival), ``--rank``/``--nodes`` may come from ``$DSM_RANK``/``$DSM_NODES``.
"""

from __future__ import annotations

import sys

import numpy as np

from dsm.consistency import CONSISTENCIES
from dsm.workloads.common import Context, Workload, main as common_main

DEFAULT_SIZE = 1 << 16
DEFAULT_ITERATIONS = 2
KEY_BITS = 20
#: buckets of the histogram (a power of two: a key's bucket is its top bits)
BUCKETS = 2048
SHIFT = KEY_BITS - BUCKETS.bit_length() + 1
#: buckets per lock: one page of int64 counts
BUCKETS_PER_LOCK = 512


def keys(lo: int, hi: int, it: int) -> np.ndarray:
    """Keys ``[lo, hi)`` of pass ``it``: splitmix64 of the key's index (random-looking, and any
    slice is computed on its own)."""
    seed = np.uint64((it + 1) * 0x9E3779B97F4A7C15 % (1 << 64))
    z = np.arange(lo, hi, dtype=np.uint64) + seed
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(64 - KEY_BITS)).astype(np.int32)


def bucket_of(k: np.ndarray) -> np.ndarray:
    return k >> SHIFT


def reference(nodes: int, size: int, iterations: int) -> dict[str, np.ndarray]:
    out = hist = None
    for it in range(iterations):
        k = keys(0, size, it)
        hist = np.bincount(bucket_of(k), minlength=BUCKETS).astype(np.int64)
        out = np.sort(k)
    return {"sorted": out, "histogram": hist}


def run(ctx: Context) -> dict[str, np.ndarray]:
    n = ctx.size
    shared_keys = ctx.data_array("keys", (n,), np.int32)
    out = ctx.data_array("sorted", (n,), np.int32)
    hists = [ctx.data_array("hist0", (BUCKETS,), np.int64),
             ctx.data_array("hist1", (BUCKETS,), np.int64)]
    lo, hi = ctx.block(n)
    b_lo, b_hi = ctx.block(BUCKETS)  # this node's buckets
    sections = BUCKETS // BUCKETS_PER_LOCK
    first = ctx.rank * sections // ctx.nodes
    step = ctx.barrier("step")
    for it in range(ctx.iterations):
        hist = hists[it % 2]
        mine = keys(lo, hi, it)
        shared_keys[lo:hi] = mine
        local = np.bincount(bucket_of(mine), minlength=BUCKETS).astype(np.int64)
        for s in range(sections):
            sec = (first + s) % sections
            a, b = sec * BUCKETS_PER_LOCK, (sec + 1) * BUCKETS_PER_LOCK
            with ctx.lock(f"hist.{sec}"):
                hist[a:b] += local[a:b]
        step.wait()
        # hists[(it + 1) % 2] was last read in the previous pass, before its closing barrier
        hists[(it + 1) % 2][b_lo:b_hi] = 0
        starts = np.concatenate(([0], np.cumsum(hist)))
        everything = np.array(shared_keys)  # every node's keys: read sharing
        chosen = everything[(bucket_of(everything) >= b_lo) & (bucket_of(everything) < b_hi)]
        start, end = int(starts[b_lo]), int(starts[b_hi])
        if end - start != len(chosen):
            raise RuntimeError(f"pass {it}: the histogram counts {end - start} keys in buckets "
                               f"[{b_lo}, {b_hi}) but the keys hold {len(chosen)}")
        out[start:end] = np.sort(chosen)
        step.wait()
    return {"sorted": out, "histogram": hists[(ctx.iterations - 1) % 2]}


def describe(nodes: int, size: int, iterations: int) -> str:
    return (f"{size} int32 keys < 2**{KEY_BITS}, {BUCKETS} buckets, "
            f"{iterations} pass{'es' if iterations != 1 else ''}")


WORKLOAD = Workload(
    name="sort",
    module="dsm.workloads.sort",
    summary="parallel bucket sort of integer keys with a shared histogram updated under locks",
    default_size=DEFAULT_SIZE,
    default_iterations=DEFAULT_ITERATIONS,
    size_help="number of keys",
    iterations_help="sorts of new keys (the last one is checked)",
    min_size=lambda nodes: nodes,
    region_bytes=lambda nodes, size, iterations: 2 * size * 4 + 2 * BUCKETS * 8,
    describe=describe,
    reference=reference,
    run=run,
    consistencies=CONSISTENCIES,
)


def main(argv: list[str] | None = None) -> int:
    return common_main(WORKLOAD, argv)


if __name__ == "__main__":
    sys.exit(main())
