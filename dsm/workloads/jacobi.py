"""Jacobi relaxation of a 2-D grid on shared memory (TreadMarks' SOR, IVY's PDE solver).

Two ``size x size`` float64 grids, ``a`` and ``b``, are used in turn: in every iteration each
interior point of the next grid becomes the mean of its four neighbours in the previous one, the
border stays fixed. The interior rows are split into one contiguous band per node; a node writes
only its band and reads, besides its own rows, the row just above and the row just below it,
which belong to its neighbours: those pages move between nodes in every iteration (a read copy
to the neighbour, then an invalidation when the owner writes its band again). One library
barrier per iteration separates reading the previous grid from overwriting it.

Every node initializes its own rows of both grids (the border rows go with the first and last
bands). The result is compared bit for bit with numpy in one process: every point is computed by
the same numpy expression on the same doubles, so the bands give exactly numpy's values.

Under ``--consistency release`` both grids are release arrays: a node writes only its own band of
the next grid and reads its neighbours' edge rows of the previous one, and the barrier between
two iterations orders every such write before every such read (and every read before the next
overwrite), so the program is data-race free. Every page a node writes is twinned and its diff
sent home at each barrier, though: the manager is the home, not the band's node.

Run it on three nodes by hand (``dsm demo --workload jacobi`` does all of this for you)::

    dsm directory --listen tcp://127.0.0.1:7400 &
    # then in three shells, K = 0, 1, 2 (dsm installed):
    dsm run --directory tcp://127.0.0.1:7400 -- python -m dsm.workloads.jacobi --rank K --nodes 3

Options: ``--size`` (grid side), ``--iterations``; ``--rank`` may be left out (the nodes are then
numbered by arrival), ``--rank``/``--nodes`` may come from ``$DSM_RANK``/``$DSM_NODES``. Each node
prints its time, its faults and page transfers, and whether the grid matched numpy.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from dsm.consistency import CONSISTENCIES
from dsm.workloads.common import Context, Workload, block, main as common_main

DEFAULT_SIZE = 256
DEFAULT_ITERATIONS = 20


def initial_rows(lo: int, hi: int, n: int) -> np.ndarray:
    """Rows ``[lo, hi)`` of the starting grid: values in [0, 1) from the point's coordinates."""
    i = np.arange(lo, hi, dtype=np.int64)[:, None]
    j = np.arange(n, dtype=np.int64)[None, :]
    return ((i * 37 + j * 91 + i * j) % 1009) / 1009.0


def relax(src: np.ndarray, dst: np.ndarray, lo: int, hi: int) -> None:
    """Interior rows ``[lo, hi)`` of ``dst`` from ``src`` (1 <= lo, hi <= rows - 1): the one
    expression the nodes and the reference both use."""
    dst[lo:hi, 1:-1] = 0.25 * (src[lo - 1:hi - 1, 1:-1] + src[lo + 1:hi + 1, 1:-1]
                               + src[lo:hi, :-2] + src[lo:hi, 2:])


def band(rank: int, nodes: int, n: int) -> tuple[int, int]:
    """The interior rows ``[lo, hi)`` node ``rank`` computes."""
    lo, hi = block(rank, nodes, n - 2)
    return lo + 1, hi + 1


def reference(nodes: int, size: int, iterations: int) -> dict[str, np.ndarray]:
    grids = [initial_rows(0, size, size), initial_rows(0, size, size)]
    for it in range(iterations):
        relax(grids[it % 2], grids[(it + 1) % 2], 1, size - 1)
    return {"grid": grids[iterations % 2]}


def run(ctx: Context) -> dict[str, np.ndarray]:
    n = ctx.size
    grids = [ctx.data_array("a", (n, n), np.float64),
             ctx.data_array("b", (n, n), np.float64)]
    lo, hi = band(ctx.rank, ctx.nodes, n)
    # this node's rows of both grids, the border rows with the first and the last band
    init_lo = 0 if ctx.rank == 0 else lo
    init_hi = n if ctx.rank == ctx.nodes - 1 else hi
    rows = initial_rows(init_lo, init_hi, n)
    for g in grids:
        g[init_lo:init_hi] = rows
    step = ctx.barrier("step")
    step.wait()
    # each iteration's time, barrier to barrier (the same on every node give or take the
    # barrier's release): ``dsm bench jacobi`` reads it from the result line
    seconds, relax_seconds = [], []
    for it in range(ctx.iterations):
        t0 = time.perf_counter()
        if hi > lo:
            relax(grids[it % 2], grids[(it + 1) % 2], lo, hi)
        t1 = time.perf_counter()
        step.wait()
        seconds.append(time.perf_counter() - t0)
        relax_seconds.append(t1 - t0)
    ctx.info["iteration_seconds"] = seconds
    ctx.info["relax_seconds"] = relax_seconds
    return {"grid": grids[ctx.iterations % 2]}


def describe(nodes: int, size: int, iterations: int) -> str:
    return f"{size}x{size} grid, {iterations} iterations"


WORKLOAD = Workload(
    name="jacobi",
    module="dsm.workloads.jacobi",
    summary="Jacobi relaxation of a shared 2-D grid, a band of rows per node, a barrier per iteration",
    default_size=DEFAULT_SIZE,
    default_iterations=DEFAULT_ITERATIONS,
    size_help="side of the grid (float64)",
    iterations_help="relaxation sweeps",
    min_size=lambda nodes: 3,
    region_bytes=lambda nodes, size, iterations: 2 * size * size * 8,
    describe=describe,
    reference=reference,
    run=run,
    consistencies=CONSISTENCIES,
)


def main(argv: list[str] | None = None) -> int:
    return common_main(WORKLOAD, argv)


if __name__ == "__main__":
    sys.exit(main())
