"""Blocked matrix multiply on shared memory: C = A·B, the tiles of C shared out among the nodes.

Rank 0 writes A and B (``size x size``, float64 holding small integers); every node then reads
them (read sharing: the pages are copied to every node, and served from the directory's home copy
once the first reader has fetched them from rank 0). C is cut into ``TILE x TILE`` tiles dealt
out round-robin, so that every node needs rows of A and columns of B from everywhere; each tile is
stored contiguously and page-aligned in C's shared array (a blocked layout, as DSM programs pad
their data), so a tile's pages are written by its owner only and never falsely shared.

With ``--iterations I`` the product is accumulated I times, ``C += A_i · B`` with A_i = A + i:
before each pass rank 0 rewrites A, which invalidates every node's read copies, and every node
fetches A again. A barrier separates rank 0's writes from the reads, and one pass from the next.

The values are integers below 2**53 in float64, so every sum is exact whatever the order of the
additions: the result equals numpy's ``A @ B`` in one process bit for bit.

Under ``--consistency release`` A, B and C are release arrays: rank 0's writes of A and B come
before a barrier that every reader passes before reading them, each tile of C is written by its
owner only, and the barrier after a pass orders its reads of A before rank 0 rewrites it.

Run it on three nodes by hand (``dsm demo --workload matmul`` does all of this for you)::

    dsm directory --listen tcp://127.0.0.1:7400 &
    # then in three shells, K = 0, 1, 2 (dsm installed):
    dsm run --directory tcp://127.0.0.1:7400 -- python -m dsm.workloads.matmul --rank K --nodes 3

Options: ``--size`` (matrix side), ``--iterations``; ``--rank`` may be left out (the nodes are then
numbered by arrival), ``--rank``/``--nodes`` may come from ``$DSM_RANK``/``$DSM_NODES``.
"""

from __future__ import annotations

import sys

import numpy as np

from dsm.consistency import CONSISTENCIES
from dsm.workloads.common import Context, Workload, block, main as common_main

DEFAULT_SIZE = 256
DEFAULT_ITERATIONS = 2
#: the side of a tile of C (the last tiles of a side that is not a multiple take the rest)
TILE = 64
PAGE_BYTES = 4096


def matrix_a(size: int, it: int) -> np.ndarray:
    i = np.arange(size, dtype=np.int64)[:, None]
    j = np.arange(size, dtype=np.int64)[None, :]
    return (((i * 31 + j * 17) % 19) - 9 + it).astype(np.float64)


def matrix_b(size: int) -> np.ndarray:
    i = np.arange(size, dtype=np.int64)[:, None]
    j = np.arange(size, dtype=np.int64)[None, :]
    return (((i * 13 + j * 7 + 5) % 23) - 11).astype(np.float64)


def tiles_per_side(size: int) -> int:
    return max(1, size // TILE)


def tile_bounds(size: int, b: int) -> tuple[int, int]:
    return block(b, tiles_per_side(size), size)


def tile_offsets(size: int) -> list[tuple[int, int, int, int, int]]:
    """``(offset, r0, r1, c0, c1)`` of each tile of C in its flat array, in row-major tile order;
    every tile starts on a page."""
    nb = tiles_per_side(size)
    out = []
    offset = 0
    words = PAGE_BYTES // 8
    for bi in range(nb):
        r0, r1 = tile_bounds(size, bi)
        for bj in range(nb):
            c0, c1 = tile_bounds(size, bj)
            out.append((offset, r0, r1, c0, c1))
            offset += -(-(r1 - r0) * (c1 - c0) // words) * words
    return out


def flat_words(size: int) -> int:
    offset, r0, r1, c0, c1 = tile_offsets(size)[-1]
    words = PAGE_BYTES // 8
    return offset + -(-(r1 - r0) * (c1 - c0) // words) * words


def reference(nodes: int, size: int, iterations: int) -> dict[str, np.ndarray]:
    b = matrix_b(size)
    c = np.zeros((size, size), np.float64)
    for it in range(iterations):
        c += matrix_a(size, it) @ b
    return {"c": c}


def run(ctx: Context) -> dict:
    n = ctx.size
    a = ctx.data_array("a", (n, n), np.float64)
    b = ctx.data_array("b", (n, n), np.float64)
    c_flat = ctx.data_array("c", (flat_words(n),), np.float64)
    tiles = tile_offsets(n)
    mine = [t for k, t in enumerate(tiles) if k % ctx.nodes == ctx.rank]
    step = ctx.barrier("step")
    if ctx.rank == 0:
        b[:] = matrix_b(n)
    for it in range(ctx.iterations):
        if ctx.rank == 0:
            a[:] = matrix_a(n, it)  # invalidates every read copy of A from the last pass
        step.wait()
        for offset, r0, r1, c0, c1 in mine:
            tile = c_flat[offset:offset + (r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0)
            tile += a[r0:r1, :] @ b[:, c0:c1]
        step.wait()  # every node is done reading A before rank 0 rewrites it

    def gather() -> np.ndarray:
        c = np.empty((n, n), np.float64)
        for offset, r0, r1, c0, c1 in tiles:
            c[r0:r1, c0:c1] = c_flat[offset:offset + (r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0)
        return c

    ctx.info["tiles"] = len(mine)
    return {"c": gather}


def describe(nodes: int, size: int, iterations: int) -> str:
    nb = tiles_per_side(size)
    return (f"{size}x{size} float64, {nb}x{nb} tiles of C, "
            f"{iterations} pass{'es' if iterations != 1 else ''}")


WORKLOAD = Workload(
    name="matmul",
    module="dsm.workloads.matmul",
    summary="blocked C = A·B: A and B written by rank 0 and read by all, tiles of C by their owners",
    default_size=DEFAULT_SIZE,
    default_iterations=DEFAULT_ITERATIONS,
    size_help="side of the matrices",
    iterations_help="passes C += (A + i)·B, rank 0 rewriting A before each",
    min_size=lambda nodes: 1,
    region_bytes=lambda nodes, size, iterations: (2 * size * size + flat_words(size)) * 8,
    describe=describe,
    reference=reference,
    run=run,
    consistencies=CONSISTENCIES,
)


def main(argv: list[str] | None = None) -> int:
    return common_main(WORKLOAD, argv)


if __name__ == "__main__":
    sys.exit(main())
