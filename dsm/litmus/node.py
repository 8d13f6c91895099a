"""What one node runs of the litmus tests: its threads, round after round.

A run does many rounds; round k uses fresh variables (row k of an array, never touched before:
zero, with no reset to race with). Each variable is on a page of its own, or, ``same_page``, all
of them on one page, a cache line apart. Every thread waits on one cluster barrier before each
round so that the threads start together, then busy-waits a random moment (up to
``MAX_JITTER_S``), so that their relative timing varies and the rounds explore many
interleavings, as litmus7's random delays do. ``warm``: before the round every thread reads every
variable, so that each node holds read copies (a store must upgrade and invalidate, a load of a
copy still held does not fault). A test with final values waits on the barrier once more after
its code; its first thread then reads them.

A second thread on a node is a forked process: two Python threads would share one GIL, and a
thread stuck in a page fault holds it.

``python -m dsm.litmus.node --rank K ...`` (under ``dsm run``) runs rank K's share of every test
named; ``dsm litmus`` starts one per node.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from pathlib import Path

from dsm.litmus.table import BY_NAME, Litmus

#: the busy wait before a thread's code, drawn anew each round, at most this
MAX_JITTER_S = 0.003
PAGE_BYTES = 4096
WORD_BYTES = 8
WORDS_PER_PAGE = PAGE_BYTES // WORD_BYTES
#: on one page, variables sit this many words apart (a cache line)
WORDS_PER_LINE = 64 // WORD_BYTES
#: how a thread reports a failure of its forked process
CHILD_FAILED_STATUS = 1


def layout(test: Litmus, same_page: bool) -> tuple[int, list[int]]:
    """(words in a round's row, each variable's word in it)."""
    n = len(test.variables)
    if same_page:
        return WORDS_PER_PAGE, [i * WORDS_PER_LINE for i in range(n)]
    return n * WORDS_PER_PAGE, [i * WORDS_PER_PAGE for i in range(n)]


def array_name(test: Litmus, run_id: str) -> str:
    return f"litmus-{test.name}-{run_id}"


def result_path(out_dir: str | Path, test: Litmus, thread: int) -> Path:
    return Path(out_dir) / f"{test.name}-thread{thread}.json"


def run_thread(node, test: Litmus, thread: int, rounds: int, run_id: str, same_page: bool,
               warm: bool, seed: float, out_dir: str, consistency: str = "sequential") -> None:
    import numpy as np

    row_words, slot = layout(test, same_page)
    var = {v: slot[i] for i, v in enumerate(test.variables)}
    mem = node.array(array_name(test, run_id), (rounds, row_words), np.int64,
                     consistency=consistency)
    code = [(op, var[v], arg) for op, v, arg in test.threads[thread]]
    finals = [(f"[{v}]", var[v]) for v in test.finals]
    bar = node.barrier(array_name(test, run_id), len(test.threads))
    rng = random.Random(seed)
    results = []
    for k in range(rounds):
        row = mem[k]
        if warm:
            for word in slot:
                int(row[word])
        bar.wait()  # the threads start each round together
        until = time.monotonic() + rng.uniform(0, MAX_JITTER_S)
        while time.monotonic() < until:  # a busy wait: a sleep would be far coarser
            pass
        regs = {}
        for op, word, arg in code:
            if op == "st":
                row[word] = arg
            else:
                regs[arg] = int(row[word])
        if finals:
            bar.wait()  # every store of the round is done
            if thread == 0:
                regs.update((name, int(row[word])) for name, word in finals)
        results.append(regs)
    with open(result_path(out_dir, test, thread), "w") as f:
        json.dump(results, f)


def run_on_node(node, test: Litmus, threads: list[int], rounds: int, run_id: str, out_dir: str,
                same_page: bool = False, warm: bool = False, seed: int | None = None,
                consistency: str = "sequential") -> None:
    """Run ``threads`` of ``test`` on this node: the first in this process, the others each
    in a forked child; return when all are done (an error if a child failed)."""
    rng = random.Random(seed)
    seeds = [rng.random() for _ in threads]
    children = []
    for thread, s in list(zip(threads, seeds))[1:]:
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                run_thread(node, test, thread, rounds, run_id, same_page, warm, s, out_dir,
                           consistency)
            except BaseException:
                traceback.print_exc()
                status = CHILD_FAILED_STATUS
            os._exit(status)
        children.append(pid)
    failed = []
    try:
        if threads:
            run_thread(node, test, threads[0], rounds, run_id, same_page, warm, seeds[0], out_dir,
                       consistency)
    finally:
        for pid in children:
            _, status = os.waitpid(pid, 0)
            if status != 0:
                failed.append(pid)
    if failed:
        raise RuntimeError(f"litmus test {test.name}: thread process(es) {failed} failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsm.litmus.node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--tests", required=True, help="comma-separated test names")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--run-id", required=True, help="names this run's arrays and barriers")
    parser.add_argument("--out", required=True, help="directory for the per-thread results")
    parser.add_argument("--same-page", action="store_true")
    parser.add_argument("--warm", action="store_true")
    parser.add_argument("--consistency", default="sequential")
    args = parser.parse_args(argv)
    import dsm

    node = dsm.attach()
    try:
        for name in args.tests.split(","):
            test = BY_NAME[name]
            mine = [t for t, n in enumerate(test.placement) if n == args.rank]
            if mine:
                run_on_node(node, test, mine, args.rounds, args.run_id, args.out,
                            args.same_page, args.warm, consistency=args.consistency)
    finally:
        node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
