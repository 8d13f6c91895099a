"""The workload of ``dsm demo``: one process per node, run under ``dsm run``.

Every node reads what the others wrote and writes pages the others read:

* ``demo.a`` / ``demo.b``: two ``rows x COLUMNS`` int64 arrays used in turn. In round ``r`` node
  ``k`` computes its block of rows of the next array from *every* row of the previous one (a
  column sum over all rows, plus a neighbour row that may belong to another node). A row is 3 KiB,
  so rows straddle pages and the pages at block boundaries are written by two nodes.
* ``demo.hist``: a small histogram, one row of bins per node, all in one page: every node writes
  its own words of the same page in every round (false sharing).
* ``demo.phase``: one barrier slot per node, each on its own page (the library has no barrier yet:
  memory is sequentially consistent, so a barrier is a slot write and a spin over all slots).

At the end every node compares the whole final array and histogram, as it reads them from shared
memory, with the same computation done by plain numpy in this one process, and prints one line
``DSM-DEMO-RESULT {json}`` (its verdict, a digest of what it read, its timings and
``node.stats()``) on stdout; nothing else is written to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

import numpy as np

from dsm.workloads.common import Workload, attach_and_report

#: int64 words per row: 3 KiB rows, so that rows straddle 4 KiB pages
COLUMNS = 384
#: histogram bins per node
BINS = 16
#: values stay below this prime, so sums over many rows never overflow int64
MODULUS = (1 << 31) - 1
DEFAULT_SIZE = 96
DEFAULT_ROUNDS = 6
DEFAULT_BARRIER_TIMEOUT_S = 60.0


class BarrierTimeout(RuntimeError):
    pass


# --- the computation (used on shared memory by the nodes and on plain numpy by the reference) ---
def block(rank: int, nodes: int, rows: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` node ``rank`` computes."""
    return rank * rows // nodes, (rank + 1) * rows // nodes


def initial_rows(lo: int, hi: int) -> np.ndarray:
    i = np.arange(lo, hi, dtype=np.int64)[:, None]
    j = np.arange(COLUMNS, dtype=np.int64)[None, :]
    return (i * 7919 + j * 104729 + 1) % MODULUS


def step(src: np.ndarray, dst: np.ndarray, lo: int, hi: int, rnd: int) -> None:
    """Rows ``[lo, hi)`` of ``dst`` from *all* rows of ``src``."""
    rows = src.shape[0]
    colsum = src.sum(axis=0) % MODULUS  # reads every row, most of them written by other nodes
    idx = np.arange(lo, hi, dtype=np.int64)
    neighbour = np.roll(src[(idx + 1) % rows], 1, axis=1)  # the next row, maybe another node's
    dst[lo:hi] = (3 * src[lo:hi] + colsum + neighbour + (rnd + 1) * (idx[:, None] + 1)) % MODULUS


def histogram(values: np.ndarray) -> np.ndarray:
    return np.bincount((values % BINS).ravel(), minlength=BINS).astype(np.int64)


def reference(nodes: int, rows: int, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """The same computation with plain numpy in one process: the final array and histogram."""
    bufs = [np.zeros((rows, COLUMNS), np.int64), np.zeros((rows, COLUMNS), np.int64)]
    hist = np.zeros((nodes, BINS), np.int64)
    bufs[0][:] = initial_rows(0, rows)
    for rnd in range(rounds):
        src, dst = bufs[rnd % 2], bufs[(rnd + 1) % 2]
        for k in range(nodes):
            lo, hi = block(k, nodes, rows)
            step(src, dst, lo, hi, rnd)
            hist[k] += histogram(dst[lo:hi])
    return bufs[rounds % 2], hist


def digest(final: np.ndarray, hist: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(final, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(hist, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


# --- synchronizing through shared memory ---------------------------------------------------------
class Barrier:
    """Node ``rank`` writes the phase it reached into its own slot (on its own page), then spins
    until every slot has reached it."""

    def __init__(self, phase: np.ndarray, rank: int, timeout_s: float):
        self.phase = phase
        self.rank = rank
        self.timeout_s = timeout_s
        self.reached = 0

    def wait(self, what: str) -> None:
        self.reached += 1
        target = self.reached
        self.phase[self.rank, 0] = target
        deadline = time.monotonic() + self.timeout_s
        while True:
            slots = self.phase[:, 0]
            if (slots >= target).all():
                return
            if time.monotonic() > deadline:
                behind = [k for k, v in enumerate(slots.tolist()) if v < target]
                raise BarrierTimeout(
                    f"barrier {target} ({what}): nodes {behind} did not arrive within "
                    f"{self.timeout_s} s (slots {slots.tolist()})"
                )
            time.sleep(0.001)


# --- the workload -------------------------------------------------------------------------------
def run(node, rank: int, nodes: int, rows: int, rounds: int, barrier_timeout_s: float) -> dict:
    page_words = node.layout.page_size // 8
    t0 = time.monotonic()
    phase = node.array("demo.phase", (nodes, page_words), np.int64)
    bufs = [node.array("demo.a", (rows, COLUMNS), np.int64),
            node.array("demo.b", (rows, COLUMNS), np.int64)]
    hist = node.array("demo.hist", (nodes, BINS), np.int64)
    barrier = Barrier(phase, rank, barrier_timeout_s)
    lo, hi = block(rank, nodes, rows)

    bufs[0][lo:hi] = initial_rows(lo, hi)
    barrier.wait("initial rows written")
    t_start = time.monotonic()
    for rnd in range(rounds):
        src, dst = bufs[rnd % 2], bufs[(rnd + 1) % 2]
        step(src, dst, lo, hi, rnd)
        hist[rank] += histogram(dst[lo:hi])  # every node writes its words of one shared page
        barrier.wait(f"round {rnd}")
    t_compute = time.monotonic() - t_start

    # verify: read everything back from shared memory, compare with plain numpy
    t_v = time.monotonic()
    got_final = np.array(bufs[rounds % 2])
    got_hist = np.array(hist)
    want_final, want_hist = reference(nodes, rows, rounds)
    mismatches = int((got_final != want_final).sum()) + int((got_hist != want_hist).sum())
    t_verify = time.monotonic() - t_v
    barrier.wait("verified")  # nobody leaves (and hands its pages back) before all have read
    return {
        "rank": rank,
        "node": node.name,
        "match": mismatches == 0,
        "mismatches": mismatches,
        "values": int(want_final.size + want_hist.size),
        "digest": digest(got_final, got_hist),
        "seconds": {"setup": round(t_start - t0, 4), "compute": round(t_compute, 4),
                    "verify": round(t_verify, 4)},
        "stats": node.stats(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dsm.workloads.rows", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, required=True, help="this node's index, 0..nodes-1")
    parser.add_argument("--nodes", type=int, required=True, help="how many nodes take part")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"rows of the arrays (default {DEFAULT_SIZE})")
    parser.add_argument("--rounds", "--iterations", dest="rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--barrier-timeout", type=float, default=DEFAULT_BARRIER_TIMEOUT_S,
                        help=f"seconds a barrier may wait (default {DEFAULT_BARRIER_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    if not 0 <= args.rank < args.nodes:
        parser.error(f"--rank must be in 0..{args.nodes - 1}")
    if args.size < args.nodes:
        parser.error(f"--size must be at least --nodes ({args.nodes})")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


#: what ``dsm demo --workload rows`` (the default) needs to know of this workload
WORKLOAD = Workload(
    name="rows",
    module="dsm.workloads.rows",
    summary="row blocks computed from all rows, a falsely shared histogram, barriers in shared memory",
    default_size=DEFAULT_SIZE,
    default_iterations=DEFAULT_ROUNDS,
    size_help=f"rows of the shared arrays, {COLUMNS * 8 // 1024} KiB each",
    iterations_help="rounds of the computation",
    min_size=lambda nodes: nodes,
    region_bytes=lambda nodes, size, rounds: 3 * size * COLUMNS * 8 + (nodes + 4) * 4096,
    describe=lambda nodes, size, rounds: (f"{size} rows x {COLUMNS} int64 "
                                          f"({size * COLUMNS * 8 // 1024} KiB) per array, "
                                          f"{rounds} rounds"),
    reference=lambda nodes, size, rounds: dict(zip(("final", "hist"),
                                                   reference(nodes, size, rounds))),
    takes_expect=False,
    node_args=lambda timeout_s: ["--barrier-timeout", str(max(5.0, timeout_s))],
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    return attach_and_report("rows", args.rank, lambda node: run(
        node, args.rank, args.nodes, args.size, args.rounds, args.barrier_timeout))


if __name__ == "__main__":
    sys.exit(main())
