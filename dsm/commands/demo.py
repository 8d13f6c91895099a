"""``dsm demo``: a whole cluster on this machine, a parallel program on shared pages, a verdict.

Starts ``dsm directory`` and N nodes (``dsm run ... -- python -m dsm.workloads.WORKLOAD``),
each a separate set of processes talking over tcp loopback (or ipc), runs one of the workloads
of ``dsm/workloads/`` on them, computes the same thing with plain numpy in this one process and
compares: it prints a table of each node's counters and a line saying whether the results
matched (MATCH, MISMATCH), or that a node crashed (CRASHED: it exited non-zero or was killed
before its result, ``node1 killed by SIGSEGV (status 139)``). The exit status is 0 if and only if
they matched.

Workloads (``--workload``):
  rows     (default) row blocks computed from every row, a falsely shared histogram
  jacobi   Jacobi relaxation of a 2-D grid, a band of rows per node, a barrier per iteration
  matmul   blocked C = A·B, A and B written by one node and read by all
  sort     bucket sort of integer keys, a shared histogram updated under locks
  counter  N nodes x M increments of shared counters under locks
  tally    each node counts in its own slot, --size bytes from the next (false sharing)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from dsm import bugs
from dsm.commands.local_cluster import DemoError, LocalCluster, NodeCrashed, region_bytes_for
from dsm.consistency import CONSISTENCIES
from dsm.core.stats import quantile_text
from dsm.managers import DEFAULT_MANAGER, MANAGER_ENV, MANAGERS
from dsm.keys import add_keys_argument
from dsm.workloads import CHECKED, WORKLOADS as WORKLOAD_MODULES, load

# This module owns the command: its options, the workload and its numpy reference, the verdict
# and the report (the table of each node's counters). The cluster it runs them on (the directory
# and the nodes' processes, their output and their stopping) is dsm.commands.local_cluster's.

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_NODES = 3


#: the default workload's defaults (dsm/workloads/rows.py; not imported here: every `dsm`
#: command builds this parser, and the workload modules import numpy)
DEFAULT_SIZE = 96
DEFAULT_ROUNDS = 6
#: workload name -> the module run on each node (it defines ``WORKLOAD``, a
#: dsm.workloads.common.Workload)
WORKLOADS = {name: WORKLOAD_MODULES[name] for name in CHECKED}
DEFAULT_WORKLOAD = "rows"
#: one thread per node process (and in the numpy reference): BLAS threads would only fight over
#: the cores the nodes share
SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def load_workload(name: str):
    """The ``dsm.workloads.common.Workload`` of ``name``."""
    return load(name)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run a directory and N nodes on this machine and check a shared computation",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workload", choices=list(WORKLOADS), default=DEFAULT_WORKLOAD,
                        help=f"the program the nodes run (default {DEFAULT_WORKLOAD})")
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES,
                        help=f"how many nodes (default {DEFAULT_NODES})")
    parser.add_argument("--size", type=int, default=None,
                        help="the problem's size: rows of the arrays, grid or matrix side, keys, "
                             "increments per node, bytes between slots (tally) (default: the "
                             f"workload's; rows: {DEFAULT_SIZE})")
    parser.add_argument("--rounds", "--iterations", dest="rounds", type=int, default=None,
                        metavar="N",
                        help="rounds or iterations of the computation (default: the workload's; "
                             f"rows: {DEFAULT_ROUNDS})")
    parser.add_argument("--consistency", choices=CONSISTENCIES, default=None,
                        help="consistency model of the workload's data arrays (python -m "
                             "dsm.workloads.NAME --consistency; default: the nodes' default, "
                             "sequential; release: jacobi, matmul, sort, counter)")
    parser.add_argument("--transport", choices=["tcp", "ipc"], default="tcp",
                        help="how the nodes reach the directory: tcp loopback or ipc (default tcp)")
    parser.add_argument("--manager", choices=MANAGERS, default=None,
                        help="the directory's manager (dsm directory --manager; default "
                             f"${MANAGER_ENV}, else {DEFAULT_MANAGER.value}; distributed with "
                             "--shards K > 1)")
    parser.add_argument("--shards", type=int, default=1, metavar="K",
                        help="the directory's manager shards (dsm directory --shards; default 1)")
    parser.add_argument("--trace", metavar="DIR",
                        help="write the protocol traces (directory.trace, NODE.trace) into DIR")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds the whole run may take (default {DEFAULT_TIMEOUT_S:g})")
    bugs.add_argument(parser)
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the processes' logs (they are kept anyway when the run fails)")
    add_keys_argument(parser, "the directory and every node use them")
    parser.set_defaults(func=run)


# --- the report ---------------------------------------------------------------------------------
COLUMNS = [
    ("node", None),
    ("missing rd", "faults_missing_read"),
    ("missing wr", "faults_missing_write"),
    ("wp wr", "faults_wp_write"),
    ("requests", "requests"),
    ("pages in", "pages_in"),
    ("pages out", "pages_out"),
    ("invalidations", "invalidations"),
    ("median fault µs", None),
]


def _median(counts: list[int], bounds: list[int]) -> str:
    return quantile_text(counts, bounds, 0.5)


def format_table(results: list[dict]) -> str:
    rows = []
    totals: dict[str, int] = {}
    all_counts: list[int] = []
    bounds: list[int] = []
    for res in results:
        stats = res.get("stats")
        row = [res.get("node", f"node{res.get('rank')}")]
        if not stats:  # the node did not get as far as reporting
            rows.append(row + ["-"] * (len(COLUMNS) - 1))
            continue
        counters = stats.get("counters", {})
        for _, key in COLUMNS[1:-1]:
            row.append(str(counters.get(key, 0)))
            totals[key] = totals.get(key, 0) + counters.get(key, 0)
        counts = stats.get("latency_counts", [])
        bounds = stats.get("latency_buckets_us", bounds)
        all_counts = [a + b for a, b in zip(all_counts, counts)] if all_counts else list(counts)
        row.append(_median(counts, bounds))
        rows.append(row)
    rows.append(["all"] + [str(totals.get(key, 0)) for _, key in COLUMNS[1:-1]]
                + [_median(all_counts, bounds)])
    headers = [name for name, _ in COLUMNS]
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    sep = "  ".join("-" * w for w in widths)
    out = [line(headers), sep]
    out += [line(r) for r in rows[:-1]]
    out += [sep, line(rows[-1])]
    return "\n".join(out)


def crashed_verdict(crashed: list[str]) -> str:
    """The verdict of a run in which nodes crashed (``LocalCluster.crashed``): not a MISMATCH,
    which says that a result differs from numpy's."""
    return f"result: CRASHED ({'; '.join(crashed)})"


# --- the command --------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    ended = bugs.from_arguments(args, "dsm demo")
    if ended is not None:
        return ended
    spec = load_workload(args.workload)
    size = spec.default_size if args.size is None else args.size
    iterations = spec.default_iterations if args.rounds is None else args.rounds
    if args.nodes < 1:
        print("dsm demo: --nodes must be at least 1", file=sys.stderr)
        return 2
    if size < spec.min_size(args.nodes):
        print(f"dsm demo: --size must be at least {spec.min_size(args.nodes)} for {args.workload} "
              f"on {args.nodes} nodes", file=sys.stderr)
        return 2
    if iterations < 1:
        print("dsm demo: --rounds/--iterations must be at least 1", file=sys.stderr)
        return 2
    if args.consistency is not None and args.consistency not in spec.consistencies:
        print(f"dsm demo: {args.workload} runs under {', '.join(spec.consistencies)} "
              f"consistency, not {args.consistency}", file=sys.stderr)
        return 2
    if args.shards < 1 or (args.shards > 1 and args.manager not in (None, "distributed")):
        print(f"dsm demo: --shards {args.shards} needs a number of shards of at least 1, and "
              "several make --manager distributed", file=sys.stderr)
        return 2

    from dsm.workloads.common import digest, values_of

    t0 = time.monotonic()
    deadline = t0 + args.timeout
    nodes_text = f"{args.nodes} node{'s' if args.nodes != 1 else ''}"
    what = spec.describe(args.nodes, size, iterations)
    workdir = Path(tempfile.mkdtemp(prefix="dsm-demo-"))
    trace_dir = Path(args.trace).resolve() if args.trace else None
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
    ok = False

    def on_sigterm(signum, frame):  # stop the children on `kill` as on Ctrl-C
        raise KeyboardInterrupt

    old_handler = signal.signal(signal.SIGTERM, on_sigterm)
    env = {**SINGLE_THREAD_ENV, **os.environ}
    cluster = LocalCluster(workdir, env, args.transport, trace_dir, args.keys, args.manager,
                           args.shards)
    try:
        security = f" with CurveZMQ keys from {cluster.keys_dir}" if cluster.keys_dir else ""
        if args.shards > 1:
            security += f", a distributed manager of {args.shards} shards"
        endpoint = cluster.start_directory(region_bytes_for(spec, args.nodes, size, iterations),
                                           args.timeout)
        if args.workload == "rows":
            print(f"dsm demo: directory on {endpoint}, {nodes_text} over {args.transport}"
                  f"{security}; {what}", flush=True)
        else:
            print(f"dsm demo: directory on {endpoint}, {nodes_text} over {args.transport}"
                  f"{security}; workload {spec.name} ({spec.summary}): {what}"
                  + (f", {args.consistency} consistency" if args.consistency else ""), flush=True)
        want = want_values = None
        numpy_s = None
        if spec.takes_expect:
            # the nodes compare what they read with numpy's digest, computed here in one process
            t_ref = time.perf_counter()
            reference = spec.reference(args.nodes, size, iterations)
            numpy_s = time.perf_counter() - t_ref
            want, want_values = digest(reference), values_of(reference)
        cluster.start_nodes(spec, args.nodes, size, iterations, args.timeout, expect=want,
                            consistency=args.consistency)
        cluster.collect(deadline)
        elapsed = time.monotonic() - t0
        if want is None:
            # the same computation with plain numpy in this one process
            t_ref = time.perf_counter()
            reference = spec.reference(args.nodes, size, iterations)
            numpy_s = time.perf_counter() - t_ref
            want, want_values = digest(reference), values_of(reference)
        results, problems = cluster.results(want)

        print()
        print(format_table(results))
        print()
        if spec.takes_expect:
            print("counters: the run phase of each node (initialization and computation), "
                  "not the final check")
        seconds = [r["seconds"] for r in results if "seconds" in r]
        if seconds:
            print(f"compute {max(s['compute'] for s in seconds):.2f} s (slowest node), "
                  f"verify {max(s['verify'] for s in seconds):.2f} s, "
                  f"numpy in one process {numpy_s:.2f} s, whole run {elapsed:.2f} s")
        if trace_dir is not None:
            print(f"traces in {trace_dir}")
        remark = next((r["remark"] for r in results if r.get("remark")), None)
        crashed = cluster.crashed()
        if crashed:
            print(crashed_verdict(crashed))
        elif not problems:
            ok = True
            if args.workload == "rows":
                print(f"result: MATCH ({nodes_text}, {want_values} values after {iterations} "
                      f"rounds checked against numpy in one process: digest {want})")
            else:
                print(f"result: MATCH ({nodes_text}, {spec.name}, {want_values} values "
                      f"checked against numpy in one process: digest {want}"
                      + (f"; {remark}" if remark else "") + ")")
        else:
            print(f"result: MISMATCH ({'; '.join(problems)})")
    except NodeCrashed:
        print(crashed_verdict(cluster.crashed()))
    except DemoError as exc:
        print(f"dsm demo: {exc}", file=sys.stderr)
        print("result: MISMATCH (the run did not complete)")
    except KeyboardInterrupt:
        print("dsm demo: interrupted, stopping every process", file=sys.stderr)
        ok = False
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, old_handler)
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            if not ok:
                tails = cluster.log_tails()
                if tails:
                    print(tails, file=sys.stderr)
            print(f"dsm demo: logs in {workdir}", file=sys.stderr)
    return 0 if ok else 1
