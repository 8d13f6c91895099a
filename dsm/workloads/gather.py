"""Every node writes its block of pages once, then waits until every node has written its own,
and checks every block: the workload of the join-late and leave tests.

Arrays (named ``gather.RUN.*``, RUN from ``$DSM_RUN``, so that runs do not meet):

* ``data``: ``nodes x block`` int64, ``--pages`` pages per node; node K writes row K, every word
  a function of (K, its index): a reader can tell each word it got right.
* ``done``: one flag per node, each on its own page, written after the data (memory is
  sequentially consistent: whoever sees the flag sees the data).

A node that arrives late reads blocks written before it joined; a node that leaves (``SIGTERM``
while it waits) has handed its block back to the directory, and the others read it from there.
Each node prints ``gather: rank R wrote its block`` once written, then one ``DSM-DEMO-RESULT
{json}`` line: ``match`` is true iff every word of every block was right.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from dsm.workloads.common import RUN_ENV, attach_and_report

DEFAULT_PAGES = 4
DEFAULT_WAIT_TIMEOUT_S = 60.0
POLL_S = 0.002


def pattern(rank: int, words: int) -> np.ndarray:
    return ((rank + 1) << 32) | np.arange(words, dtype=np.int64)


def run(node, rank: int, nodes: int, pages: int, wait_timeout_s: float, prefix: str) -> dict:
    page_words = node.layout.page_size // 8
    words = pages * page_words
    data = node.array(prefix + "data", (nodes, words), np.int64)
    done = node.array(prefix + "done", (nodes, page_words), np.int64)
    t0 = time.monotonic()
    data[rank] = pattern(rank, words)
    done[rank, 0] = 1
    print(f"gather: rank {rank} wrote its block ({pages} pages)", flush=True)
    deadline = time.monotonic() + wait_timeout_s
    while not (flags := done[:, 0].copy()).all():
        if time.monotonic() > deadline:
            missing = [k for k, f in enumerate(flags.tolist()) if not f]
            raise TimeoutError(f"ranks {missing} did not write their blocks within "
                               f"{wait_timeout_s:g} s")
        time.sleep(POLL_S)
    t_all = time.monotonic()
    got = np.array(data)
    bad_blocks = [k for k in range(nodes) if not np.array_equal(got[k], pattern(k, words))]
    wrong = int(sum((got[k] != pattern(k, words)).sum() for k in bad_blocks))
    return {
        "workload": "gather",
        "rank": rank,
        "nodes": nodes,
        "node": node.name,
        "match": not bad_blocks,
        "values": int(got.size),
        "mismatches": wrong,
        "bad_blocks": bad_blocks,
        "seconds": {"wait": round(t_all - t0, 4), "verify": round(time.monotonic() - t_all, 4)},
        "stats": node.stats(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dsm.workloads.gather", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, required=True, help="this node's index, 0..nodes-1")
    parser.add_argument("--nodes", type=int, required=True, help="how many nodes take part")
    parser.add_argument("--pages", type=int, default=DEFAULT_PAGES,
                        help=f"pages of each node's block (default {DEFAULT_PAGES})")
    parser.add_argument("--wait-timeout", type=float, default=DEFAULT_WAIT_TIMEOUT_S,
                        help="seconds to wait for the other blocks "
                             f"(default {DEFAULT_WAIT_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    if not 0 <= args.rank < args.nodes:
        parser.error(f"--rank must be in 0..{args.nodes - 1}")
    if args.pages < 1:
        parser.error("--pages must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prefix = f"gather.{os.environ.get(RUN_ENV, 'default')}."
    return attach_and_report("gather", args.rank, lambda node: run(node, args.rank, args.nodes, args.pages, args.wait_timeout, prefix))


if __name__ == "__main__":
    sys.exit(main())
