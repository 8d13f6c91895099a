"""``dsm bench directory``: how many page requests per second one directory serves.

One run starts a directory and ``--clients`` client processes (``dsm.bench.dirclient``, default
4) that speak the node protocol straight to it over ZeroMQ, with no agent: each says Hello, then
asks for read copies of pages nobody has touched (``Acquire(page, 1, write=False,
have_copy=False)``), one page per request, keeping ``--in-flight`` requests outstanding (default
16), and reads every Grant. The directory's whole work per request is the real one: decode,
look the page up, record the new copy holder, encode and send the Grant (of a zero page: no page
bytes travel).

In each of ``--rounds`` rounds every client sends ``--requests`` requests for pages of its own
that nobody asked for before; the round's throughput is all the clients' requests over the time
from the first send to the last answer (the clients' clocks are the same CLOCK_MONOTONIC). The
target is at least 20,000 requests per second. Every request's latency (send to Grant, with the
others in flight) is reported too.

The clients and the directory share this machine's cores: on 2 cores, 4 clients in Python take
part of the CPU the directory would have.

``--manager distributed --shards 1,2,4`` measures IVY's fixed distributed manager with each
number of shards in turn (``dsm directory --shards K``: K manager processes on this host, each
client with a DEALER per shard, every request sent to its page's shard; a client's pages are
consecutive, so its requests move from shard to shard a stripe at a time), one row per K. The
shards share the same cores as the clients: on 2 cores more shards add processes to schedule
rather than CPU.

Under ``--manager dynamic`` there is nothing to measure: its directory serves no page requests
(the nodes ask each other) and admits no node without a peer endpoint, which these clients are.
It says so; ``dsm bench --manager all`` leaves that column empty.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from dsm.bench import common
from dsm.bench.common import NS_PER_S, NS_PER_US, BenchError, Progress
from dsm.bench.procs import Driven, Processes, children_of, cpu_ns, run_with_processes
from dsm.bench.managers import DEFAULT_SHARDS, SHARDS_ENV
from dsm.managers import DEFAULT_MANAGER, MANAGER_ENV, MANAGERS, Manager

DEFAULT_CLIENTS = 4
DEFAULT_IN_FLIGHT = 16
DEFAULT_REQUESTS = 5000
DEFAULT_ROUNDS = 5
#: target: page requests per second served
TARGET_PER_S = 20_000
#: requests per client before the timed rounds (every code path warm)
WARMUP_REQUESTS = 500
#: deadlines: a client's start, and a round: this much plus so much per request
START_TIMEOUT_S = 20.0
BASE_TIMEOUT_S = 30.0
PER_REQUEST_TIMEOUT_S = 0.005
#: region room beyond the pages the rounds ask for
REGION_SPARE_PAGES = 1024
#: why there is nothing to measure under the dynamic manager
NOT_UNDER_DYNAMIC = ("--manager dynamic: its directory serves no page requests (the nodes ask "
                     "each other, and it admits no node without a peer endpoint, which these "
                     "clients are): measure relay, central or distributed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = {"clients": DEFAULT_CLIENTS, "in_flight": DEFAULT_IN_FLIGHT,
         "requests": DEFAULT_REQUESTS, "rounds": DEFAULT_ROUNDS}
    parser.add_argument("--clients", type=int, default=d["clients"],
                        help=f"client processes (default {d['clients']})")
    parser.add_argument("--in-flight", type=int, default=d["in_flight"],
                        help=f"requests each client keeps outstanding (default {d['in_flight']})")
    parser.add_argument("--requests", type=int, default=d["requests"],
                        help=f"requests per client per round (default {d['requests']})")
    parser.add_argument("--rounds", type=int, default=d["rounds"],
                        help=f"timed rounds (default {d['rounds']})")
    parser.add_argument("--manager", choices=MANAGERS, default=None,
                        help="the directory's --manager (default: relay, distributed with "
                             "several shards)")
    parser.add_argument("--shards", default="1", metavar="K[,K...]",
                        help="the directory's --shards, one measurement for each K listed "
                             "(default 1)")

    common.add_transport_argument(parser)
    common.add_output_arguments(parser)

def shard_counts(text: str) -> list[int]:
    """``--shards 1,2,4`` -> [1, 2, 4] (ValueError if not positive numbers)."""
    counts = [int(k) for k in str(text).split(",") if k.strip()]
    if not counts or min(counts) < 1:
        raise ValueError(text)
    return counts


def check_arguments(args: argparse.Namespace) -> str | None:
    for name in ("clients", "in_flight", "requests", "rounds"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    try:
        counts = shard_counts(getattr(args, "shards", "1"))
    except ValueError:
        return f"--shards must list numbers of shards of at least 1, like 1,2,4: got {args.shards!r}"
    manager = getattr(args, "manager", None)
    if max(counts) > 1 and manager not in (None, "distributed"):
        return f"--shards {args.shards}: several shards make --manager distributed, not {manager}"
    if manager == Manager.DYNAMIC.value:
        return NOT_UNDER_DYNAMIC
    return None


def measure(args: argparse.Namespace, progress: Progress, log_dir: Path) -> dict:
    """Run the benchmark (its processes log into ``log_dir``), once per number of shards; its
    result (the first's, with every one's under ``by_shards``). Raises BenchError."""
    # the suite's pass of a manager (``dsm bench --manager``) names it, and its shards, in the
    # environment every directory reads (set on a copy: the suite hands the next manager's
    # pass the same arguments, which measured the first pass's manager in every column)
    args = argparse.Namespace(**vars(args))
    if getattr(args, "manager", None) is None and os.environ.get(MANAGER_ENV):
        args.manager = os.environ[MANAGER_ENV]
        if args.manager == "distributed" and getattr(args, "shards", "1") == "1":
            args.shards = os.environ.get(SHARDS_ENV, str(DEFAULT_SHARDS))
    if args.manager == Manager.DYNAMIC.value:
        raise BenchError(NOT_UNDER_DYNAMIC)
    counts = shard_counts(getattr(args, "shards", "1"))
    results = []
    for k in counts:
        sub = progress.sub(f"{k} shard{'s' if k > 1 else ''}: ") if len(counts) > 1 else progress
        results.append(run_with_processes(
            log_dir, sub, lambda procs: DirectoryBench(procs, args, sub, k).run()))
    result = dict(results[0])
    if len(counts) > 1:
        result["by_shards"] = {str(k): r for k, r in zip(counts, results)}
    return result


class DirectoryBench:
    def __init__(self, procs: Processes, args: argparse.Namespace, progress: Progress,
                 shards: int = 1):
        self.procs = procs
        self.n_clients = args.clients
        self.in_flight = args.in_flight
        self.requests = args.requests
        self.rounds = args.rounds
        self.transport = args.transport
        self.shards = shards
        manager = getattr(args, "manager", None)
        self.manager = manager or ("distributed" if shards > 1 else DEFAULT_MANAGER.value)
        self.progress = progress
        self.clients: list[Driven] = []

    def run(self) -> dict:
        p = self.progress
        page_bytes = os.sysconf("SC_PAGE_SIZE")
        pages = self.n_clients * (WARMUP_REQUESTS + self.rounds * self.requests)
        region = (pages + REGION_SPARE_PAGES) * page_bytes
        tag = f"-{self.shards}shards" if self.shards > 1 else ""
        p(f"starting a directory ({self.transport}, --manager {self.manager}, {self.shards} "
          f"shard{'s' if self.shards > 1 else ''}) and {self.n_clients} clients")
        directory = self.procs.start_directory(
            common.endpoint(self.transport, self.procs.log_dir, f"dir{tag}"), region,
            name=f"directory{tag}", manager=self.manager, shards=self.shards)
        names = [f"client{k}{tag}" for k in range(self.n_clients)]
        self.clients = [self.procs.start_driven(
            name, [sys.executable, "-m", "dsm.bench.dirclient", directory, name]) for name in names]
        for c in self.clients:
            c.wait(START_TIMEOUT_S)
        next_page = 0
        p(f"warming up ({WARMUP_REQUESTS} requests per client)")
        self._round(next_page, WARMUP_REQUESTS)
        next_page += self.n_clients * WARMUP_REQUESTS
        rates: list[float] = []
        latency: list[int] = []
        cpu = {"directory": 0, "clients": 0}
        wall_ns = 0
        for r in range(self.rounds):
            cpu0 = self._cpu()
            replies = self._round(next_page, self.requests)
            for k, v in self._cpu().items():
                cpu[k] += v - cpu0[k]
            next_page += self.n_clients * self.requests
            span = max(x["end_ns"] for x in replies) - min(x["start_ns"] for x in replies)
            wall_ns += span
            rates.append(self.n_clients * self.requests / (span / NS_PER_S))
            for x in replies:
                latency += x["latency_ns"]
            p(f"round {r + 1}/{self.rounds}: {rates[-1]:,.0f} requests/s")
        return {
            "benchmark": "directory",
            "config": {"clients": self.n_clients, "in_flight": self.in_flight,
                       "requests": self.requests, "rounds": self.rounds,
                       "transport": self.transport, "manager": self.manager,
                       "shards": self.shards},
            "environment": common.environment(),
            "target_per_s": TARGET_PER_S,
            "requests_per_s": float(np.median(rates)),
            #: CPU time (all threads) per request of the directory and of the clients together,
            #: and how many cores each kept busy
            "cpu_us_per_request": {k: v / NS_PER_US / (self.rounds * self.n_clients * self.requests)
                                   for k, v in cpu.items()},
            "cpu_cores": {k: v / wall_ns if wall_ns else float("nan") for k, v in cpu.items()},
            "samples": {"requests_per_s": rates, "latency_ns": latency},
        }

    def _cpu(self) -> dict[str, int]:
        pid = self.procs.directory.proc.pid  # and its shards
        return {"directory": cpu_ns(pid) + sum(cpu_ns(c) for c in children_of(pid)),
                "clients": sum(cpu_ns(c.proc.pid) for c in self.clients)}

    def _round(self, first: int, requests: int) -> list[dict]:
        """Every client asks for ``requests`` pages of its own at once; their replies."""
        timeout_s = BASE_TIMEOUT_S + PER_REQUEST_TIMEOUT_S * requests * self.n_clients
        for k, c in enumerate(self.clients):
            c.send("acquire", first=first + k * requests, count=requests,
                   in_flight=self.in_flight)
        return [c.wait(timeout_s) for c in self.clients]


def summary(result: dict) -> list[dict]:
    """The combined table's rows (``dsm bench``): two per number of shards measured."""
    runs = result.get("by_shards") or {"1": result}
    rows = []
    for i, run in enumerate(runs.values()):
        cfg, s = run["config"], run["samples"]
        who = f"{cfg['clients']} clients x {cfg['in_flight']} in flight"
        shards = cfg.get("shards", 1)
        key = "" if i == 0 else f"_{shards}_shards"
        if cfg.get("manager", "relay") == "distributed":
            who += f", {shards} shard{'s' if shards > 1 else ''}"
        rows += [
            common.summary_row("directory", f"directory_rate{key}",
                               f"directory page requests ({who})", "req/s",
                               s["requests_per_s"], at_least=run["target_per_s"]),
            common.summary_row("directory", f"directory_latency{key}",
                               f"directory request latency ({who})", "µs",
                               np.asarray(s["latency_ns"], dtype=np.float64) / NS_PER_US),
        ]
    return rows


def format_table(result: dict) -> str:
    cfg, env = result["config"], result["environment"]
    title = (f"dsm bench directory: transport {cfg['transport']}, {cfg['clients']} clients x "
             f"{cfg['requests']} requests per round x {cfg['rounds']} rounds, {cfg['in_flight']} "
             f"in flight each (pyzmq {env['pyzmq']}, libzmq {env['libzmq']}, {env['cpus']} cpus)")
    if cfg.get("manager", "relay") != "relay":
        title += f", --manager {cfg['manager']}"
    lines = [common.format_summary(summary(result), title)]
    for run in (result.get("by_shards") or {"1": result}).values():
        shards = run["config"].get("shards", 1)
        lines.append(f"CPU per request (all threads{f', {shards} shards' if shards > 1 else ''})"
                     ": " + ", ".join(f"{k} {v:.1f} µs ({run['cpu_cores'][k]:.2f} cores busy)"
                                      for k, v in run["cpu_us_per_request"].items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    return common.run_benchmark("directory", args, check_arguments, measure, format_table)

