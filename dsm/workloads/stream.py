"""Round after round, every node writes a fresh page of its own and reads the fresh pages the
others wrote in the same round, and never waits for anyone: the workload of the link-cut test.

``rows`` (named ``stream.RUN.rows``, RUN from ``$DSM_RUN``) holds ``rounds x nodes`` pages. In
round T node K writes page (T, K), every word a function of (T, K, its index), then reads pages
(T, J) of the other nodes: each word must be 0 (not written yet) or the right value. Every round
touches pages this node never had, so each round needs the directory: a node cut off from it
gets no page, and its agent fails the workload (``SIGBUS``) after its request timeout, while the
nodes that still reach the directory carry on to the last round.

The node prints ``stream: rank R started`` after its first round, then one ``DSM-DEMO-RESULT
{json}`` line: ``match`` is true iff its own pages are all right at the end and no word it read
from the others was wrong; ``finished_at`` is the wall-clock time of its last round.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from dsm.workloads.common import RUN_ENV, attach_and_report

DEFAULT_ROUNDS = 200
DEFAULT_INTERVAL_S = 0.05


def pattern(rnd: int, rank: int, words: int) -> np.ndarray:
    return ((rnd + 1) << 40) | ((rank + 1) << 24) | np.arange(words, dtype=np.int64)


def run(node, rank: int, nodes: int, rounds: int, interval_s: float, prefix: str) -> dict:
    page_words = node.layout.page_size // 8
    rows = node.array(prefix + "rows", (rounds, nodes, page_words), np.int64)
    seen_full = seen_partial = seen_zero = wrong = 0
    t0 = time.monotonic()
    for rnd in range(rounds):
        rows[rnd, rank] = pattern(rnd, rank, page_words)
        for other in range(nodes):
            if other == rank:
                continue
            got = np.array(rows[rnd, other])
            want = pattern(rnd, other, page_words)
            written = got != 0
            wrong += int((got[written] != want[written]).sum())
            if written.all():
                seen_full += 1
            elif written.any():
                seen_partial += 1
            else:
                seen_zero += 1
        if rnd == 0:
            print(f"stream: rank {rank} started", flush=True)
        time.sleep(interval_s)
    finished_at = time.time()
    own_wrong = sum(int((rows[rnd, rank] != pattern(rnd, rank, page_words)).sum())
                    for rnd in range(rounds))
    return {
        "workload": "stream",
        "rank": rank,
        "nodes": nodes,
        "node": node.name,
        "match": own_wrong == 0 and wrong == 0,
        "rounds": rounds,
        "own_wrong": own_wrong,
        "wrong": wrong,
        "seen": {"full": seen_full, "partial": seen_partial, "zero": seen_zero},
        "finished_at": finished_at,
        "seconds": {"rounds": round(time.monotonic() - t0, 4)},
        "stats": node.stats(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dsm.workloads.stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, required=True, help="this node's index, 0..nodes-1")
    parser.add_argument("--nodes", type=int, required=True, help="how many nodes take part")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S,
                        help=f"seconds between rounds (default {DEFAULT_INTERVAL_S:g})")
    args = parser.parse_args(argv)
    if not 0 <= args.rank < args.nodes:
        parser.error(f"--rank must be in 0..{args.nodes - 1}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prefix = f"stream.{os.environ.get(RUN_ENV, 'default')}."
    return attach_and_report("stream", args.rank, lambda node: run(node, args.rank, args.nodes, args.rounds, args.interval, prefix))


if __name__ == "__main__":
    sys.exit(main())
