"""``dsm bench workloads``: the parallel programs of ``dsm/workloads/`` on 1, 2 and 3 nodes,
beside plain numpy in one process, with the DSM traffic they caused.

For each workload (jacobi, matmul, sort, counter) and each node count, a fresh cluster on this
machine (a directory and N ``dsm run`` nodes, as ``dsm demo`` starts them) runs the program at a
size that takes seconds. The time reported is the run phase of the slowest node: from the barrier
at which every node is attached to the barrier after the last iteration, initialization included
(the data has to reach the nodes: that is what a DSM costs). The baseline is the same computation
with plain numpy in one process (``python -m dsm.workloads.NAME --reference``), timed in the same
run with the same single-threaded BLAS; its digest is what every node's result must match.

The traffic columns add up every node's ``node.stats()`` over the run phase: faults (missing read,
missing write, write-protect), pages in, pages out and invalidations, and the messages and bytes
the agents sent to the directory, received from it and sent to their peers.

``--consistency sequential,release`` runs each workload on each node count once per consistency
model of its data arrays (``python -m dsm.workloads.NAME --consistency``), a row each, against
the same numpy baseline; a release row says how many times faster it ran than the sequential
one (``seq/rel``: the sequential time over its own), and its JSON run has the release counters
too (twins, diffs, notices_invalidated).

All processes share this machine's cores: on a 2-core machine, 3 nodes (each a workload and an
agent) and the directory compete for 2 cores, so the times show the protocol's cost, not a
cluster's speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dsm.bench import common
from dsm.bench.common import BYTES_PER_MB, BenchError, Progress, environment, message_traffic
from dsm.consistency import CONSISTENCIES, Consistency

#: size and iterations of each workload in the benchmark: each run takes seconds
BENCH_PROBLEMS: dict[str, tuple[int, int]] = {
    "jacobi": (1024, 20),
    "matmul": (512, 2),
    "sort": (1 << 20, 2),
    "counter": (200, 2),
}
DEFAULT_NODES = "1,2,3"
RUN_TIMEOUT_S = 180.0
REFERENCE_TIMEOUT_S = 300.0
FAULT_KEYS = ("faults_missing_read", "faults_missing_write", "faults_wp_write")
TRAFFIC_KEYS = ("pages_in", "pages_out", "invalidations")
#: what release consistency costs instead (node.stats() names): pages twinned at a first write,
#: diffs sent home, copies invalidated by write notices
RELEASE_KEYS = ("twins", "diffs", "notices_invalidated")
SEQUENTIAL = Consistency.SEQUENTIAL.value
DEFAULT_CONSISTENCIES = SEQUENTIAL


def _consistency_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in CONSISTENCIES]
    if not values or unknown or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(
            f"expected some of {', '.join(CONSISTENCIES)} separated by commas, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"node counts must be at least 1, got {text!r}")
    return values


def _problem(text: str) -> tuple[str, int, int | None]:
    """``NAME=SIZE`` or ``NAME=SIZE:ITERATIONS``."""
    try:
        name, value = text.split("=", 1)
        size, _, iterations = value.partition(":")
        return name, int(size), int(iterations) if iterations else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE[:ITERATIONS], got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workloads", default=",".join(BENCH_PROBLEMS),
                        help=f"which, separated by commas (default {','.join(BENCH_PROBLEMS)})")
    parser.add_argument("--nodes", type=_int_list, default=_int_list(DEFAULT_NODES),
                        help=f"node counts, separated by commas (default {DEFAULT_NODES})")
    parser.add_argument("--problem", type=_problem, action="append", default=[],
                        metavar="NAME=SIZE[:ITERATIONS]",
                        help="another size (and iterations) for a workload; defaults: " + ", ".join(
                            f"{k}={s}:{i}" for k, (s, i) in BENCH_PROBLEMS.items()))
    parser.add_argument("--consistency", type=_consistency_list,
                        default=_consistency_list(DEFAULT_CONSISTENCIES),
                        help="consistency models of the workloads' data arrays, separated by "
                             f"commas, each run in turn ({', '.join(CONSISTENCIES)}; default "
                             f"{DEFAULT_CONSISTENCIES})")
    parser.add_argument("--transport", choices=["tcp", "ipc"], default="tcp",
                        help="how the nodes reach the directory (default tcp)")
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT_S,
                        help=f"seconds one cluster run may take (default {RUN_TIMEOUT_S:g})")
    common.add_output_arguments(parser)


def problems_of(args: argparse.Namespace) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """The workloads asked for and each one's (size, iterations); raises ValueError."""
    from dsm.commands.demo import WORKLOADS

    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in BENCH_PROBLEMS]
    if unknown or not names:
        raise ValueError(f"unknown workload(s) {unknown} (choose from {', '.join(BENCH_PROBLEMS)})")
    problems = {w: BENCH_PROBLEMS[w] for w in names}
    for name, size, iterations in args.problem:
        if name not in WORKLOADS or name == "rows":
            raise ValueError(f"--problem: unknown workload {name!r}")
        problems[name] = (size, iterations if iterations is not None else problems.get(
            name, BENCH_PROBLEMS.get(name, (0, 1)))[1])
    return names, problems


def check_arguments(args: argparse.Namespace) -> str | None:
    try:
        problems_of(args)
    except ValueError as exc:
        return str(exc)
    return None


def measure(args: argparse.Namespace, progress: Progress, log_dir: Path) -> dict:
    """Run every workload on every node count (clusters under ``log_dir``); the result (a run
    that failed is in it with ``match`` false). Raises BenchError."""
    names, problems = problems_of(args)
    return WorkloadBench(names, problems, args.nodes, args.transport, args.timeout,
                         log_dir, progress, args.consistency).run()


def run(args: argparse.Namespace) -> int:
    return common.run_benchmark("workloads", args, check_arguments, measure, format_table,
                                failed=lambda result: not all(r["match"] for r in result["runs"]))


class WorkloadBench:
    def __init__(self, names: list[str], problems: dict[str, tuple[int, int]], nodes: list[int],
                 transport: str, timeout_s: float, log_dir: Path, progress: Progress,
                 consistencies: list[str] | None = None):
        from dsm.commands.demo import SINGLE_THREAD_ENV

        self.names = names
        self.problems = problems
        self.node_counts = nodes
        self.transport = transport
        self.timeout_s = timeout_s
        self.log_dir = log_dir
        self.progress = progress
        self.consistencies = consistencies or [SEQUENTIAL]
        # one BLAS thread everywhere, the baseline included
        self.env = {**os.environ, **SINGLE_THREAD_ENV}
        self.env.pop("DSM_AGENT_SOCKET", None)

    def run(self) -> dict:
        from dsm.commands.demo import load_workload

        runs = []
        for name in self.names:
            spec = load_workload(name)
            size, iterations = self.problems[name]
            if size < spec.min_size(max(self.node_counts)) or iterations < 1:
                raise BenchError(f"{name}: size {size} / iterations {iterations} too small")
            refused = [c for c in self.consistencies if c not in spec.consistencies]
            if refused:
                raise BenchError(f"{name} does not run under {', '.join(refused)} consistency")
            for n in self.node_counts:
                what = spec.describe(n, size, iterations)
                self.progress(f"{name} ({what}): plain numpy in one process, as for {n} node(s)")
                ref = self._reference(spec, n, size, iterations)
                self.progress(f"{name}: {ref['seconds']['compute']:.2f} s; now on {n} node(s)")
                for consistency in self.consistencies:
                    runs.append(self._cluster(spec, n, size, iterations, ref, consistency))
                    r = runs[-1]
                    self.progress(f"{name} on {n} node(s), {consistency}: {r['seconds']:.2f} s, "
                                  f"{'MATCH' if r['match'] else 'MISMATCH'}")
        return {"benchmark": "workloads", "config": {"transport": self.transport,
                                                      "nodes": self.node_counts,
                                                      "consistencies": self.consistencies},
                "environment": environment(), "runs": runs}

    def _reference(self, spec, nodes: int, size: int, iterations: int) -> dict:
        from dsm.workloads.common import RESULT_PREFIX

        cmd = [sys.executable, "-m", spec.module, "--reference", "--nodes", str(nodes),
               "--size", str(size), "--iterations", str(iterations)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env,
                                  timeout=REFERENCE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{spec.name}: the numpy reference took over {REFERENCE_TIMEOUT_S} s")
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
        if proc.returncode != 0 or not lines:
            raise BenchError(f"{spec.name}: the numpy reference failed (status "
                             f"{proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(lines[-1][len(RESULT_PREFIX):])

    def _cluster(self, spec, nodes: int, size: int, iterations: int, ref: dict,
                 consistency: str = SEQUENTIAL) -> dict:
        from dsm.commands.local_cluster import DemoError, LocalCluster, region_bytes_for

        workdir = Path(tempfile.mkdtemp(prefix=f"{spec.name}-{nodes}-{consistency}-",
                                        dir=self.log_dir))
        cluster = LocalCluster(workdir, self.env, self.transport)
        t0 = time.monotonic()
        error = None
        results: list[dict] = []
        problems: list[str] = []
        try:
            cluster.start_directory(region_bytes_for(spec, nodes, size, iterations),
                                    self.timeout_s)
            cluster.start_nodes(spec, nodes, size, iterations, self.timeout_s,
                                expect=ref["digest"], consistency=consistency)
            cluster.collect(t0 + self.timeout_s)
            results, problems = cluster.results(ref["digest"])
        except DemoError as exc:
            error = str(exc)
        finally:
            cluster.stop()
        if error or problems:
            self.progress(f"{spec.name} on {nodes} node(s) failed: {error or '; '.join(problems)}"
                          f"\n{cluster.log_tails()}")
        totals = {k: 0 for k in FAULT_KEYS + TRAFFIC_KEYS + RELEASE_KEYS
                  + ("requests", "messages", "bytes")}
        for res in results:
            counters = res.get("stats", {}).get("counters", {})
            for k in FAULT_KEYS + TRAFFIC_KEYS + RELEASE_KEYS + ("requests",):
                totals[k] += counters.get(k, 0)
            messages, size_bytes = message_traffic(counters)
            totals["messages"] += messages
            totals["bytes"] += size_bytes
        seconds = [r["seconds"]["compute"] for r in results if "seconds" in r]
        return {
            "workload": spec.name, "problem": spec.describe(nodes, size, iterations),
            "size": size, "iterations": iterations, "nodes": nodes, "consistency": consistency,
            "seconds": max(seconds) if len(seconds) == nodes else float("nan"),
            "numpy_seconds": ref["seconds"]["compute"],
            "match": not error and not problems and len(results) == nodes,
            "problems": ([error] if error else []) + problems,
            "faults": sum(totals[k] for k in FAULT_KEYS),
            **totals,
            "whole_run_seconds": round(time.monotonic() - t0, 3),
            "node_results": results,
        }


def _consistency_of(run: dict) -> str:
    return run.get("consistency", SEQUENTIAL)  # (a result from before the models)


def format_table(result: dict) -> str:
    header = ["workload", "problem", "nodes", "consistency", "time s", "numpy s", "ratio",
              "vs 1 node", "seq/rel", "faults", "pages in", "pages out", "invalidations",
              "messages", "MB", "result"]
    lines = []
    # the runs each row is compared with: the same consistency on 1 node, sequential on as many
    one_node: dict[tuple[str, str], float] = {}
    sequential: dict[tuple[str, int], float] = {}
    for r in result["runs"]:
        if r["nodes"] == 1:
            one_node[r["workload"], _consistency_of(r)] = r["seconds"]
        if _consistency_of(r) == SEQUENTIAL:
            sequential[r["workload"], r["nodes"]] = r["seconds"]
    previous = None
    for r in result["runs"]:
        first = r["workload"] != previous
        previous = r["workload"]
        model = _consistency_of(r)
        measured = r["seconds"] == r["seconds"]  # not NaN: every node reported
        t1 = one_node.get((r["workload"], model))
        speedup = f"{t1 / r['seconds']:.2f}x" if t1 and measured else "-"
        t_seq = sequential.get((r["workload"], r["nodes"]))
        versus_sequential = (f"{t_seq / r['seconds']:.2f}x"
                             if model != SEQUENTIAL and t_seq and measured else "-")
        ratio = r["seconds"] / r["numpy_seconds"] if r["numpy_seconds"] else float("nan")
        lines.append([r["workload"] if first else "", r["problem"] if first else "",
                      str(r["nodes"]), model, f"{r['seconds']:.2f}", f"{r['numpy_seconds']:.4f}",
                      f"{ratio:.1f}x", speedup, versus_sequential, str(r["faults"]),
                      str(r["pages_in"]), str(r["pages_out"]), str(r["invalidations"]),
                      str(r.get("messages", "-")),
                      f"{r['bytes'] / BYTES_PER_MB:.1f}" if "bytes" in r else "-",
                      "MATCH" if r["match"] else "MISMATCH"])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    left_aligned = {header.index(h) for h in ("workload", "problem", "consistency")}

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i in left_aligned else c.rjust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    env = result["environment"]
    out = [f"dsm bench workloads: transport {result['config']['transport']}, {env['cpus']} cpus; "
           "time = run phase (initialization + computation) of the slowest node; numpy = the "
           "same computation in one process; ratio = time / numpy; vs 1 node = speed-up over "
           "the 1-node run of the same consistency; seq/rel = the sequential run's time / this "
           "one's; traffic summed over the nodes' run phase (messages and MB: what the agents "
           "sent to the directory, received from it and sent to their peers)",
           fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt(line) for line in lines]
    failed = [r for r in result["runs"] if not r["match"]]
    for r in failed:
        out.append(f"{r['workload']} on {r['nodes']} node(s), {_consistency_of(r)}: "
                   f"{'; '.join(r['problems'])}")
    return "\n".join(out)


def summary(result: dict) -> list[dict]:
    """The combined table's rows (``dsm bench``): per workload, plain numpy in one process (the
    baseline), then each node count's run phase against it; reported (no targets)."""
    rows = []
    seen = set()
    for r in result["runs"]:
        base_key = f"{r['workload']}_numpy"
        if base_key not in seen:  # numpy was timed before each node count's run
            seen.add(base_key)
            rows.append(common.summary_row(
                "workloads", base_key, f"{r['workload']} {r['problem']}: plain numpy", "s",
                [x["numpy_seconds"] for x in result["runs"] if x["workload"] == r["workload"]],
                is_baseline=True))
        ratio = r["seconds"] / r["numpy_seconds"] if r["numpy_seconds"] else float("nan")
        verdict_label = "" if r["match"] else " MISMATCH"
        model = _consistency_of(r)
        # the sequential rows keep their keys of before the models
        key_model, label_model = ("", "") if model == SEQUENTIAL else (f"_{model}", f", {model}")
        rows.append(common.summary_row("workloads", f"{r['workload']}_{r['nodes']}{key_model}",
                                       f"{r['workload']} on {r['nodes']} node(s){label_model}"
                                       f"{verdict_label}",
                                       "s", [r["seconds"]], ratio=ratio, baseline=base_key))
    return rows


def traffic_lines(result: dict) -> list[str]:
    """The DSM traffic of each run, one line each (the combined table has no room for it)."""
    return [f"{r['workload']} on {r['nodes']} node(s), {_consistency_of(r)}: "
            f"{r['faults']} faults, {r['pages_in']} pages in, {r['pages_out']} out, "
            f"{r['invalidations']} invalidations, {r['requests']} requests"
            f"{'' if r['match'] else ' (MISMATCH)'}"
            for r in result["runs"]]
