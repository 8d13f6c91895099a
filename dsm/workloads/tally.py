"""False sharing, and how to avoid it: every node counts in a slot of its own, ``--size`` bytes
from the next node's.

No locks: no node ever writes another's slot, so no increment can be lost, whatever the layout.
Each node makes ``iterations`` increments of its slot, each followed by a short step of other
work (``WORK_S``, a sleep: the nodes count at the same time, as threads of a real program
would). With ``--size 8`` (or 64, a cache line) every slot is on one page: the nodes write
different words of the same page, and the page, the unit of coherence, moves to whichever node
wrote last; every increment may fault. With ``--size 4096`` each slot has a page of its own:
each node faults once and then keeps its page. At the end every node reads every slot: each
must hold exactly the number of increments.

Run it on two nodes by hand (``dsm demo --workload tally`` does all of this for you)::

    dsm directory --listen tcp://127.0.0.1:7400 &
    # then in two shells, K = 0, 1 (dsm installed):
    dsm run --directory tcp://127.0.0.1:7400 -- python -m dsm.workloads.tally --rank K --nodes 2

Options: ``--size`` (bytes from one node's slot to the next's, a multiple of 8), ``--iterations``
(increments per node); ``--rank`` may be left out (the nodes are then numbered by arrival),
``--rank``/``--nodes`` may come from ``$DSM_RANK``/``$DSM_NODES``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from dsm.workloads.common import Context, Workload, main as common_main

#: bytes between two nodes' slots: all on one page
DEFAULT_SIZE = 8
DEFAULT_ITERATIONS = 300
#: the other work after each increment (seconds)
WORK_S = 0.0005
WORD = 8
PAGE_BYTES = 4096


def words_apart(size: int) -> int:
    return max(1, size // WORD)


def reference(nodes: int, size: int, iterations: int) -> dict[str, np.ndarray]:
    return {"slots": np.full(nodes, iterations, np.int64)}


def run(ctx: Context) -> dict[str, object]:
    stride = words_apart(ctx.size)
    slots = ctx.data_array("slots", (ctx.nodes * stride,), np.int64)
    mine = ctx.rank * stride
    ctx.barrier("start").wait()  # all count at once: a node that came late would find no one
    for _ in range(ctx.iterations):
        slots[mine] += 1
        time.sleep(WORK_S)
    ctx.barrier("step").wait()
    return {"slots": lambda: np.array(slots[::stride][:ctx.nodes])}


def remark(got: dict[str, np.ndarray], ctx: Context) -> str:
    pages = (ctx.nodes - 1) * words_apart(ctx.size) * WORD // PAGE_BYTES + 1
    return (f"slots {ctx.size} bytes apart, on {'one page' if pages == 1 else f'{pages} pages'}: "
            f"{' '.join(str(int(v)) for v in got['slots'])}")


def describe(nodes: int, size: int, iterations: int) -> str:
    where = ("one page" if (nodes - 1) * words_apart(size) * WORD < PAGE_BYTES
             else "pages of their own")
    return (f"{iterations} increments per node of its own slot, slots {size} bytes apart "
            f"({where}), {WORK_S * 1e3:g} ms of other work after each")


WORKLOAD = Workload(
    name="tally",
    module="dsm.workloads.tally",
    summary="each node counts in its own slot, no locks: --size bytes apart (8: false sharing, "
            "4096: a page each)",
    default_size=DEFAULT_SIZE,
    default_iterations=DEFAULT_ITERATIONS,
    size_help="bytes from one node's slot to the next node's (8: one page; 4096: a page each)",
    iterations_help="increments per node",
    min_size=lambda nodes: WORD,
    region_bytes=lambda nodes, size, iterations: (nodes * words_apart(size) * WORD
                                                  + PAGE_BYTES),
    describe=describe,
    reference=reference,
    run=run,
    remark=remark,
)


def main(argv: list[str] | None = None) -> int:
    return common_main(WORKLOAD, argv)


if __name__ == "__main__":
    sys.exit(main())
