"""``dsm bench`` (or ``dsm bench all``): every benchmark in sequence, one combined table.

Each benchmark runs as it does alone (``dsm bench fault``, ``lock``, ``scan``, ``directory``,
``workloads``, ``jacobi``), each measurement beside its baseline from the same run, at sizes
chosen so that the whole suite takes under two minutes on 2 cores (the scan keeps its 256 MiB;
``--mib`` changes it). The table has one row per measurement: n, median, p90, p99 (in the row's
unit), the ratio to its baseline, the target and the verdict (ok, MISSED, report: no target,
baseline: another row's baseline). ``--json FILE`` writes every raw sample, every benchmark's
own result and the environment; ``--plot FILE`` draws them (matplotlib). Progress goes to stderr.

``--quick`` runs everything at tiny sizes (seconds; for tests: the numbers mean little).
The exit status is 1 if a benchmark failed (the others still run), 3 with ``--fail-on-target``
if a target was missed, else 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from types import ModuleType

from dsm.bench import common, directory, fault, jacobi, lock, managers, scan, sharing, workloads
from dsm.bench.common import BenchError, Progress
from dsm.keys import add_keys_argument
from dsm.managers import Manager

#: (name, module, the suite's sizes, --quick's sizes): every other option is the benchmark's own
#: default. The suite's sizes keep the whole run under two minutes on 2 cores.
BENCHMARKS: list[tuple[str, ModuleType, dict, dict]] = [
    ("fault", fault, {"pages": 500, "rounds": 5},
     {"pages": 30, "rounds": 2}),
    ("lock", lock, {"acquires": 1000, "contended": 150, "rounds": 5},
     {"acquires": 30, "contended": 10, "rounds": 2, "nodes": 2}),
    ("sharing", sharing, {"operations": 500, "tasks": 300, "collectives": 100, "rounds": 3},
     {"operations": 20, "tasks": 20, "collectives": 10, "rounds": 1, "nodes": 2}),
    ("scan", scan, {"repeats": 3, "random_pages": 1000, "round_trips": 1000},
     {"mib": 8, "repeats": 1, "random_pages": 40, "round_trips": 40, "first_touch_mib": 4}),
    ("directory", directory, {"requests": 4000, "rounds": 3},
     {"clients": 2, "requests": 200, "rounds": 1}),
    ("workloads", workloads, {},
     {"workloads": "jacobi,counter", "nodes": [1, 2],
      "problem": [("jacobi", 48, 3), ("counter", 5, 1)]}),
    ("jacobi", jacobi, {},
     {"size": 64, "iterations": 3}),
]
NAMES = [name for name, *_ in BENCHMARKS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", metavar="NAMES",
                        help=f"run only these benchmarks, separated by commas ({','.join(NAMES)})")
    parser.add_argument("--skip", metavar="NAMES", help="run all but these benchmarks")
    parser.add_argument("--mib", type=int,
                        help=f"MiB of the scan (default {scan.DEFAULT_MIB}; --quick: 8)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: the whole suite in seconds (for tests)")
    parser.add_argument("--manager", metavar="NAMES",
                        help="run the suite once per manager, a column each: 'all' or some of "
                             f"{managers.NAMES} (default: the directory's default alone)")
    parser.add_argument("--fail-on-target", action="store_true",
                        help="exit with status 3 when a measurement misses its target")
    common.add_transport_argument(parser)
    common.add_output_arguments(parser)
    add_keys_argument(parser, "`fault` also measures a keyed cluster beside the open one "
                              "(CURVE's cost per fault)")


def _selected(args: argparse.Namespace) -> list[str]:
    def names(text: str | None) -> list[str]:
        chosen = [n.strip() for n in (text or "").split(",") if n.strip()]
        unknown = [n for n in chosen if n not in NAMES]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {', '.join(unknown)} (choose from "
                             f"{', '.join(NAMES)})")
        return chosen

    only, skip = names(args.only), names(args.skip)
    return [n for n in NAMES if (not only or n in only) and n not in skip]


def namespace(name: str, module: ModuleType, args: argparse.Namespace) -> argparse.Namespace:
    """The benchmark's own options: its defaults, the suite's sizes, the suite's flags."""
    parser = argparse.ArgumentParser(prog=f"dsm bench {name}")
    module.add_arguments(parser)
    ns = parser.parse_args([])
    sizes = next(quick if args.quick else full for n, _, full, quick in BENCHMARKS if n == name)
    for key, value in sizes.items():
        setattr(ns, key, value)
    if name == "scan" and args.mib is not None:
        ns.mib = args.mib
    ns.transport = args.transport
    ns.json = ns.plot = None
    ns.keep_logs = args.keep_logs
    if hasattr(ns, "keys"):
        ns.keys = args.keys
    return ns


def run(args: argparse.Namespace) -> int:
    try:
        selected = _selected(args)
    except ValueError as exc:
        print(f"dsm bench: {exc}", file=sys.stderr)
        return 2
    if not selected:
        print("dsm bench: no benchmark left to run", file=sys.stderr)
        return 2
    plan = [(name, module, namespace(name, module, args))
            for name, module, _, _ in BENCHMARKS if name in selected]
    for name, module, ns in plan:
        problem = module.check_arguments(ns)
        if problem:
            print(f"dsm bench: {name}: {problem}", file=sys.stderr)
            return 2
    problem = common.plot_problem(args)  # fail now, not after two minutes
    if problem:
        print(f"dsm bench: {problem}", file=sys.stderr)
        return 2
    try:
        chosen = managers.parse(args.manager)
    except ValueError as exc:
        print(f"dsm bench: --manager: {exc}", file=sys.stderr)
        return 2
    progress = Progress()
    if chosen:
        return _run_per_manager(chosen, plan, args, progress)
    return _run_plan(plan, args, progress)


def _run_per_manager(chosen: list[str], plan: list, args: argparse.Namespace,
                     progress: Progress) -> int:
    passes: dict[str, dict] = {}
    status = 0
    for m in chosen:
        progress(f"##### manager {m} #####")
        # the directory's page requests: none to measure under the dynamic manager (its column
        # says "-")
        plan_of_m = [entry for entry in plan
                     if not (entry[0] == "directory" and m == Manager.DYNAMIC.value)]
        if len(plan_of_m) < len(plan):
            progress(f"directory: not run: {directory.NOT_UNDER_DYNAMIC}")
        with managers.running(m):
            code, result = _measure_plan(plan_of_m, args, progress)
        if code == 130:
            return code
        status = status or code
        passes[m] = result
    env = next(iter(passes.values()))["environment"]
    title = (f"dsm bench --manager {','.join(chosen)}: transport {args.transport}, {env['cpus']} "
             f"cpus; median (ratio to the baseline of the same pass)")
    print(managers.format_table(passes, title))
    combined = {"benchmark": "suite-per-manager", "managers": passes,
                "environment": env, "summary": [dict(r, manager=m) for m, res in passes.items()
                                                for r in res["summary"]]}
    common.write_outputs(combined, args, progress)
    return status


def _run_plan(plan: list, args: argparse.Namespace, progress: Progress) -> int:
    code, result = _measure_plan(plan, args, progress)
    if code == 130:
        return code
    print(format_table(result))
    common.write_outputs(result, args, progress)
    if result["failures"]:
        return 1
    if args.fail_on_target and any(r["verdict"] == common.MISSED for r in result["summary"]):
        return 3
    return 0


def _measure_plan(plan: list, args: argparse.Namespace, progress: Progress) -> tuple[int, dict]:
    t0 = time.monotonic()
    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    try:
        with common.terminable():
            for k, (name, module, ns) in enumerate(plan):
                progress(f"=== {name} ({k + 1}/{len(plan)}) ===")
                started = time.monotonic()
                with common.LogDirectory(name, args.keep_logs) as logs:
                    try:
                        results[name] = module.measure(ns, progress.sub(f"{name}: "), logs.path)
                    except BenchError as exc:
                        logs.keep = True
                        failures[name] = str(exc)
                        progress(f"{name} failed: {str(exc)[:2000]}")
                        continue
                    if name == "workloads" and not all(r["match"] for r in results[name]["runs"]):
                        logs.keep = True
                        failures[name] = "a workload's result did not match numpy's"
                results[name]["seconds"] = round(time.monotonic() - started, 2)
    except (common.Interrupted, KeyboardInterrupt):
        print("dsm bench: interrupted", file=sys.stderr)
        return 130, {}
    seconds = time.monotonic() - t0
    result = suite_result(results, failures, args, seconds)
    return (1 if failures else 0), result


def suite_result(results: dict[str, dict], failures: dict[str, str], args: argparse.Namespace,
                 seconds: float) -> dict:
    modules = {name: module for name, module, _, _ in BENCHMARKS}
    rows = [row for name, res in results.items() for row in modules[name].summary(res)]
    return {
        "benchmark": "suite",
        "config": {"transport": args.transport, "quick": args.quick,
                   "benchmarks": list(results) + [n for n in failures if n not in results]},
        "environment": common.environment(),
        "seconds": round(seconds, 2),
        "summary": rows,
        "failures": failures,
        "benchmarks": results,
    }


def format_table(result: dict) -> str:
    env, cfg = result["environment"], result["config"]
    title = (f"dsm bench: transport {cfg['transport']}, {env['cpus']} cpus, pyzmq {env['pyzmq']} "
             f"(libzmq {env['libzmq']}), kernel {env['kernel']}; {result['seconds']:.0f} s. "
             "ratio: a latency's or time's median over its baseline's, a rate's median over its "
             "baseline's (baseline measured in the same run)")
    out = [common.format_summary(result["summary"], title), ""]
    runs = result["benchmarks"]
    if "scan" in runs:
        s = runs["scan"]
        cores = ", ".join(f"{k} {v:.2f}" for k, v in sorted(s["scan_cpu_cores"].items(),
                                                             key=lambda kv: -kv[1]) if v >= 0.01)
        out.append(f"scan: CPU cores busy during the scans (all threads): {cores}")
    if "directory" in runs:
        d = runs["directory"]
        out.append("directory: CPU per request (all threads): " + ", ".join(
            f"{k} {v:.1f} µs ({d['cpu_cores'][k]:.2f} cores)"
            for k, v in d["cpu_us_per_request"].items()))
    if "workloads" in runs:
        out.append("workloads' DSM traffic (run phase, all nodes):")
        out += [f"  {line}" for line in workloads.traffic_lines(runs["workloads"])]
    if "jacobi" in runs:
        r = runs["jacobi"]["run"]
        out.append(f"jacobi: {r['faults']} faults, {r['pages_in']} pages in, {r['pages_out']} "
                   f"out, {r['invalidations']} invalidations over {runs['jacobi']['config']['iterations']} "
                   "iterations")
    for name, res in runs.items():
        for warning in res.get("warnings", []):
            out.append(f"warning: {name}: {warning}")
    for name, text in result["failures"].items():
        out.append(f"FAILED: {name}: {text.splitlines()[0] if text else ''}")
    return "\n".join(out)
