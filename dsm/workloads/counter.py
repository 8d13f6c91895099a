"""Shared counters incremented under locks: the smallest proof that locks and coherence work
together.

``COUNTERS`` int64 counters, each on a page of its own, each guarded by a lock of its own. In
every round each node makes ``size`` increments, the i-th one to counter ``(i + rank) % COUNTERS``
(so the nodes start on different counters and then chase each other round them): acquire the
counter's lock, read the counter, write it plus one, release. The read and the write are two page
faults apart (the page comes from the last writer, then the read copy is upgraded), so a lock that
let two nodes in at once, or a page that came back stale, would lose increments. After each round a
barrier, then every node checks the running total. At the end the counters must hold exactly what
numpy computes in one process, and their sum must be exactly nodes × size × rounds.

Under ``--consistency release`` the counters are a release array: every read and write of a
counter happens under its lock (the grant invalidates a copy another holder changed, the release
sends the increment home) and the totals are read after a barrier.

Run it on three nodes by hand (``dsm demo --workload counter`` does all of this for you)::

    dsm directory --listen tcp://127.0.0.1:7400 &
    # then in three shells, K = 0, 1, 2 (dsm installed):
    dsm run --directory tcp://127.0.0.1:7400 -- python -m dsm.workloads.counter --rank K --nodes 3

Options: ``--size`` (increments per node per round), ``--iterations`` (rounds); ``--rank`` may be
left out (the nodes are then numbered by arrival), ``--rank``/``--nodes`` may come from
``$DSM_RANK``/``$DSM_NODES``.
"""

from __future__ import annotations

import sys

import numpy as np

from dsm.consistency import CONSISTENCIES
from dsm.workloads.common import Context, Workload, main as common_main

DEFAULT_SIZE = 100
DEFAULT_ITERATIONS = 2
COUNTERS = 4
PAGE_WORDS = 4096 // 8


def increments(counters: np.ndarray, rank: int, size: int) -> None:
    """One node's round on a plain array (the reference)."""
    for i in range(size):
        counters[(i + rank) % COUNTERS] += 1


def reference(nodes: int, size: int, iterations: int) -> dict[str, np.ndarray]:
    counters = np.zeros(COUNTERS, np.int64)
    for _ in range(iterations):
        for rank in range(nodes):
            increments(counters, rank, size)
    return {"counters": counters}


def run(ctx: Context) -> dict[str, np.ndarray]:
    # one counter per page: column 0 of each row
    pages = ctx.data_array("counters", (COUNTERS, PAGE_WORDS), np.int64)
    locks = [ctx.lock(f"counter.{j}") for j in range(COUNTERS)]
    step = ctx.barrier("step")
    broken = 0
    # every node starts counting together: one that started first would otherwise make many of
    # its increments alone, and the counters would change hands a few times only
    step.wait()
    for rnd in range(ctx.iterations):
        for i in range(ctx.size):
            j = (i + ctx.rank) % COUNTERS
            with locks[j]:
                broken += locks[j].previous_holder_died
                value = int(pages[j, 0])
                pages[j, 0] = value + 1
        step.wait()
        total = int(pages[:, 0].sum())
        want = ctx.nodes * ctx.size * (rnd + 1)
        if total != want:
            raise RuntimeError(f"after round {rnd} the counters sum to {total}, not "
                               f"{ctx.nodes} x {ctx.size} x {rnd + 1} = {want}")
        step.wait()  # every node checked this round's total before the next round changes it
    ctx.info["broken_locks"] = broken
    return {"counters": pages[:, 0]}


def remark(got: dict[str, np.ndarray], ctx: Context) -> str:
    total = int(got["counters"].sum())
    want = ctx.nodes * ctx.size * ctx.iterations
    return (f"total {total} {'=' if total == want else '!='} {ctx.nodes} nodes x "
            f"{ctx.size * ctx.iterations} increments")


def describe(nodes: int, size: int, iterations: int) -> str:
    return (f"{COUNTERS} counters, {size} locked increments per node per round, "
            f"{iterations} round{'s' if iterations != 1 else ''}")


WORKLOAD = Workload(
    name="counter",
    module="dsm.workloads.counter",
    summary="N nodes x M increments of shared counters under locks: exactly N·M at the end",
    default_size=DEFAULT_SIZE,
    default_iterations=DEFAULT_ITERATIONS,
    size_help="increments per node per round",
    iterations_help="rounds, a barrier and a check of the running total after each",
    min_size=lambda nodes: 1,
    region_bytes=lambda nodes, size, iterations: COUNTERS * PAGE_WORDS * 8,
    describe=describe,
    reference=reference,
    run=run,
    consistencies=CONSISTENCIES,
    remark=remark,
)


def main(argv: list[str] | None = None) -> int:
    return common_main(WORKLOAD, argv)


if __name__ == "__main__":
    sys.exit(main())
