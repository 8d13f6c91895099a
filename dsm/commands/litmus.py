"""``dsm litmus``: the classic litmus tests across nodes, many rounds each, a histogram of the
outcomes with each marked allowed or forbidden under sequential consistency.

Tests: SB (store buffering), MP (message passing), LB (load buffering), IRIW (independent reads of
independent writes), 2+2W, WRC (write-to-read causality), CoRR (read-read coherence); the table
is ``dsm.litmus.table``. Each variable is on a page of its own, or with ``--same-page`` all on one
page (a cache line apart: false sharing, one page ping-pongs). The nodes (as many as the widest
test needs) run on this machine against a directory of their own, or against ``--directory``.

Exit status: 0 if every outcome seen is sequentially consistent, 1 if a forbidden (or any other
non-SC) outcome appeared, 2 if the run itself failed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from dsm import bugs
from dsm.consistency import CONSISTENCIES, Consistency
from dsm.managers import DEFAULT_MANAGER, MANAGER_ENV, MANAGERS
from dsm.litmus.table import BY_NAME, LITMUS_TESTS, Litmus, format_histogram, nodes_needed, violations
from dsm.litmus.node import result_path

DEFAULT_ROUNDS = 200
DEFAULT_TIMEOUT_S = 300.0
#: the shared region of a local cluster
REGION_BYTES = 256 << 20
EXIT_NOT_SC = 1
EXIT_FAILED = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("litmus", help="run litmus tests across nodes",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tests", nargs="*", metavar="TEST",
                        help=f"which tests (default all: {', '.join(BY_NAME)})")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"rounds of each test (default {DEFAULT_ROUNDS})")
    parser.add_argument("--same-page", action="store_true",
                        help="put all of a test's variables on one page")
    parser.add_argument("--warm", action="store_true",
                        help="every node reads every variable before each round (read copies "
                             "everywhere: stores must invalidate them)")
    parser.add_argument("--consistency", choices=CONSISTENCIES, default="sequential",
                        help="the tests' arrays' consistency (default sequential); under "
                             "release the unsynchronized tests may show relaxed outcomes, which "
                             "are allowed: exit status 1 only for one no model allows")
    parser.add_argument("--manager", choices=MANAGERS, default=None,
                        help="the manager of the directory started here (dsm directory "
                             f"--manager; default ${MANAGER_ENV}, else {DEFAULT_MANAGER.value})")
    parser.add_argument("--directory", help="use this directory instead of starting one here")
    parser.add_argument("--trace", metavar="DIR", help="write the protocol traces into DIR")
    bugs.add_argument(parser)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds the whole run may take (default {DEFAULT_TIMEOUT_S:g})")
    parser.set_defaults(func=run)


def collect(tests: list[Litmus], rounds: int, out_dir: Path) -> dict[str, Counter]:
    """Each test's histogram from its threads' result files."""
    histograms = {}
    for test in tests:
        per_thread = [json.loads(result_path(out_dir, test, t).read_text())
                      for t in range(len(test.threads))]
        histogram: Counter = Counter()
        for k in range(rounds):
            regs = {}
            for results in per_thread:
                regs.update(results[k])
            histogram[tuple(sorted(regs.items()))] += 1
        histograms[test.name] = histogram
    return histograms


def run(args: argparse.Namespace) -> int:
    from dsm.commands.local_cluster import DemoError, LocalCluster

    ended = bugs.from_arguments(args, "dsm litmus")
    if ended is not None:
        return ended
    unknown = [t for t in args.tests if t not in BY_NAME]
    if unknown:
        print(f"dsm litmus: unknown test(s) {', '.join(unknown)}: the tests are "
              f"{', '.join(BY_NAME)}", file=sys.stderr)
        return EXIT_FAILED
    if args.rounds < 1:
        print(f"dsm litmus: --rounds must be at least 1, got {args.rounds}", file=sys.stderr)
        return EXIT_FAILED
    tests = [BY_NAME[t] for t in args.tests] if args.tests else list(LITMUS_TESTS)
    nodes = max(nodes_needed(t) for t in tests)
    workdir = Path(tempfile.mkdtemp(prefix="dsm-litmus-"))
    out_dir = workdir / "results"
    out_dir.mkdir()
    trace_dir = Path(args.trace).resolve() if args.trace else None
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(4)
    if args.manager is not None and args.directory:
        print("dsm litmus: --manager is for the directory started here, not with --directory",
              file=sys.stderr)
        return EXIT_FAILED
    cluster = LocalCluster(workdir, dict(os.environ), trace_dir=trace_dir, manager=args.manager)
    ok = False
    try:
        if args.directory:
            cluster.endpoint = args.directory
        else:
            cluster.start_directory(REGION_BYTES, args.timeout)
        layout = "one page" if args.same_page else "a page per variable"
        print(f"dsm litmus: {len(tests)} test(s), {args.rounds} rounds each, {nodes} nodes, "
              f"{layout}{', warm' if args.warm else ''}, {args.consistency} consistency; "
              f"directory {cluster.endpoint}", flush=True)
        t0 = time.monotonic()
        for rank in range(nodes):
            name = f"litmus{rank}"
            cmd = [sys.executable, "-m", "dsm", "run", "--directory", cluster.endpoint,
                   "--node", f"{name}-{run_id}"]
            if trace_dir is not None:
                cmd += ["--trace", str(trace_dir / f"{name}.trace")]
            cmd += ["--", sys.executable, "-m", "dsm.litmus.node", "--rank", str(rank),
                    "--tests", ",".join(t.name for t in tests), "--rounds", str(args.rounds),
                    "--run-id", run_id, "--out", str(out_dir)]
            cmd += ["--same-page"] if args.same_page else []
            cmd += ["--warm"] if args.warm else []
            cmd += ["--consistency", args.consistency]
            cluster.start_node(name, cmd)
        cluster.collect(time.monotonic() + args.timeout)
        failed = [c.name for c in cluster.nodes if c.proc.wait() != 0]
        if failed:
            raise DemoError(f"node(s) {', '.join(failed)} failed")
        histograms = collect(tests, args.rounds, out_dir)
        elapsed = time.monotonic() - t0
        release = args.consistency == Consistency.RELEASE.value
        bad = 0
        for test in tests:
            print()
            print(format_histogram(test, histograms[test.name], release=release))
            bad += violations(test, histograms[test.name], release)
        print()
        model = "release-consistent" if release else "sequentially consistent"
        print(f"dsm litmus: {sum(map(sum, (h.values() for h in histograms.values())))} rounds in "
              f"{elapsed:.1f} s; " + (f"every outcome {model}" if not bad
                                       else f"{bad} rounds NOT {model}"))
        ok = True
        return EXIT_NOT_SC if bad else 0
    except (DemoError, OSError, json.JSONDecodeError) as exc:
        print(f"dsm litmus: {exc}", file=sys.stderr)
        tails = cluster.log_tails()
        if tails:
            print(tails, file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("dsm litmus: interrupted, stopping every process", file=sys.stderr)
        return EXIT_FAILED
    finally:
        cluster.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"dsm litmus: logs in {workdir}", file=sys.stderr)
