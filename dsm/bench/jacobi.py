"""``dsm bench jacobi``: one Jacobi iteration on the DSM, beside plain numpy in one process.

The workload is ``dsm/workloads/jacobi.py`` (a 1024x1024 float64 grid relaxed by bands of rows, a barrier
per iteration), run the way ``dsm bench workloads`` runs it: a fresh cluster on this machine (a
directory and ``--nodes`` ``dsm run`` nodes, default 2), its result checked bit for bit against
numpy's. Each node times every iteration from barrier to barrier; an iteration's time is the
slowest node's. In an iteration each node relaxes its band, and the rows at the band's edges
move: a neighbour's edge row comes in as a read copy, and this node's edge row, which the
neighbour read, costs an invalidation when it is written again.

The baseline is the same iterations of the same numpy expression (``dsm.workloads.jacobi.relax``) over
the whole grid in this one process, timed in the same run, each iteration alone. The issue's
figure is the DSM overhead: the iteration beyond numpy's time / nodes. The floor, measured in the
same run too (``dsm/bench/jacobi_floor.py``), is the nodes' bands relaxed by as many plain
processes on one shared grid with a local barrier: what the machine's cores and memory give with
no DSM at all, so that "beyond the floor" is the DSM's own cost.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from dsm.bench import common
from dsm.bench.common import NS_PER_S, BenchError, Progress
from dsm.bench.jacobi_floor import band_iterations
from dsm.bench.workloads import RUN_TIMEOUT_S, WorkloadBench

DEFAULT_SIZE = 1024
DEFAULT_ITERATIONS = 10
DEFAULT_NODES = 2
#: milliseconds per second: iteration times are shown in ms
MS_PER_S = 1000
#: the DSM overhead per iteration the protocol aims at (within 2x of ArgoDSM's on these machines)
OVERHEAD_TARGET_MS = 3.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = {"size": DEFAULT_SIZE, "iterations": DEFAULT_ITERATIONS, "nodes": DEFAULT_NODES}
    parser.add_argument("--size", type=int, default=d["size"],
                        help=f"side of the grid, float64 (default {d['size']})")
    parser.add_argument("--iterations", type=int, default=d["iterations"],
                        help=f"relaxation sweeps (default {d['iterations']})")
    parser.add_argument("--nodes", type=int, default=d["nodes"],
                        help=f"nodes sharing the grid (default {d['nodes']})")
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT_S,
                        help=f"seconds the cluster run may take (default {RUN_TIMEOUT_S:g})")

    common.add_transport_argument(parser)
    common.add_output_arguments(parser)

def check_arguments(args: argparse.Namespace) -> str | None:
    from dsm.commands.demo import load_workload

    if args.iterations < 1 or args.nodes < 1:
        return "--iterations and --nodes must be at least 1"
    smallest = load_workload("jacobi").min_size(args.nodes)
    if args.size < max(smallest, args.nodes + 2):
        return f"--size must be at least {max(smallest, args.nodes + 2)} on {args.nodes} nodes"
    return None


def numpy_iterations(size: int, iterations: int) -> tuple[list[float], np.ndarray]:
    """Each iteration's seconds with plain numpy in this process (the workload's own
    expression over every interior row), and the grid they leave."""
    from dsm.commands.demo import load_workload

    load_workload("jacobi")  # makes the workloads importable
    from dsm.workloads.jacobi import initial_rows, relax

    grids = [initial_rows(0, size, size), initial_rows(0, size, size)]
    seconds = []
    for it in range(iterations):
        t0 = time.perf_counter_ns()
        relax(grids[it % 2], grids[(it + 1) % 2], 1, size - 1)
        seconds.append((time.perf_counter_ns() - t0) / NS_PER_S)
    return seconds, grids[iterations % 2]


def measure(args: argparse.Namespace, progress: Progress, log_dir: Path) -> dict:
    """Run the benchmark (its cluster under ``log_dir``); its result. Raises BenchError, also
    when the cluster's grid does not match numpy's."""
    from dsm.commands.demo import SINGLE_THREAD_ENV

    progress(f"jacobi {args.size}x{args.size}, {args.iterations} iterations: plain numpy in "
             "this process")
    # one BLAS thread, as on the nodes (the relaxation itself uses none)
    with common.environment_set(SINGLE_THREAD_ENV):
        reference, grid = numpy_iterations(args.size, args.iterations)
        progress(f"the floor: {args.nodes} plain processes relaxing their bands at once")
        floor = band_iterations(args.size, args.iterations, args.nodes, grid)
    bench = WorkloadBench(["jacobi"], {"jacobi": (args.size, args.iterations)}, [args.nodes],
                          args.transport, args.timeout, log_dir, progress)
    run = bench.run()["runs"][0]
    if not run["match"]:
        raise BenchError(f"jacobi on {args.nodes} nodes: {'; '.join(run['problems'])}")
    per_node = [r.get("iteration_seconds") for r in run["node_results"]]
    if any(not t or len(t) != args.iterations for t in per_node):
        raise BenchError("a node did not report its iteration times")
    # an iteration ends at a barrier: its time is the slowest node's
    iterations = [max(times) for times in zip(*per_node)]
    # the numpy part of each node's iteration (its band's relaxation, page faults included):
    # the rest of the iteration is the barrier and the waits for the other nodes
    relax_per_node = [r.get("relax_seconds") or [] for r in run["node_results"]]
    slowest_relax = [max(times) for times in zip(*relax_per_node)]
    numpy_share_s = float(np.median(reference)) / args.nodes
    floor_median_s = float(np.median(floor))
    return {
        "benchmark": "jacobi",
        "config": {"size": args.size, "iterations": args.iterations, "nodes": args.nodes,
                   "transport": args.transport},
        "environment": common.environment(),
        "iteration_ms_median": float(np.median(iterations)) * MS_PER_S,
        "numpy_iteration_ms_median": float(np.median(reference)) * MS_PER_S,
        "ratio": float(np.median(iterations) / np.median(reference)),
        # the figure: DSM time per iteration beyond numpy's own time / nodes
        "overhead_ms_median": (float(np.median(iterations)) - numpy_share_s) * MS_PER_S,
        "floor_iteration_ms_median": floor_median_s * MS_PER_S,
        "run": {k: v for k, v in run.items() if k != "node_results"},
        "samples": {"iteration_s": iterations, "numpy_iteration_s": reference,
                    "per_node_iteration_s": per_node, "per_node_relax_s": relax_per_node,
                    "overhead_s": [t - numpy_share_s for t in iterations],
                    "floor_iteration_s": floor,
                    "beyond_floor_s": [t - floor_median_s for t in iterations],
                    "slowest_relax_s": slowest_relax},
    }


def summary(result: dict) -> list[dict]:
    """The combined table's rows (``dsm bench``)."""
    cfg, s = result["config"], result["samples"]
    grid = f"{cfg['size']}x{cfg['size']}"
    return [
        common.summary_row("jacobi", "jacobi_numpy", f"jacobi {grid} iteration, plain numpy",
                           "ms", np.asarray(s["numpy_iteration_s"]) * MS_PER_S, is_baseline=True),
        common.summary_row("jacobi", "jacobi_dsm",
                           f"jacobi {grid} iteration, {cfg['nodes']} nodes (slowest node)", "ms",
                           np.asarray(s["iteration_s"]) * MS_PER_S, ratio=result["ratio"],
                           baseline="jacobi_numpy"),
        common.summary_row("jacobi", "jacobi_overhead",
                           f"  DSM overhead: iteration - numpy / {cfg['nodes']}", "ms",
                           np.asarray(s["overhead_s"]) * MS_PER_S, at_most=OVERHEAD_TARGET_MS),
        common.summary_row("jacobi", "jacobi_relax",
                           "  of the iteration: the band's relaxation (slowest node)", "ms",
                           np.asarray(s["slowest_relax_s"]) * MS_PER_S),
        common.summary_row("jacobi", "jacobi_floor",
                           f"jacobi {grid} iteration, {cfg['nodes']} plain processes (the floor)",
                           "ms", np.asarray(s["floor_iteration_s"]) * MS_PER_S,
                           ratio=result["floor_iteration_ms_median"]
                           / result["numpy_iteration_ms_median"], baseline="jacobi_numpy"),
        common.summary_row("jacobi", "jacobi_beyond_floor",
                           "  DSM cost: iteration - the floor's", "ms",
                           np.asarray(s["beyond_floor_s"]) * MS_PER_S),
    ]


def format_table(result: dict) -> str:
    cfg, env, run = result["config"], result["environment"], result["run"]
    title = (f"dsm bench jacobi: transport {cfg['transport']}, {cfg['size']}x{cfg['size']} "
             f"float64, {cfg['iterations']} iterations on {cfg['nodes']} nodes; ratio = median "
             f"iteration / numpy's ({env['cpus']} cpus)")
    return "\n".join([
        common.format_summary(summary(result), title),
        f"the whole run phase (initialization included): {run['seconds']:.2f} s; DSM traffic: "
        f"{run['faults']} faults, {run['pages_in']} pages in, {run['pages_out']} out, "
        f"{run['invalidations']} invalidations; result MATCH numpy",
    ])


def run(args: argparse.Namespace) -> int:
    return common.run_benchmark("jacobi", args, check_arguments, measure, format_table)

