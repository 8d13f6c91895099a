"""``dsm bench fault``: what one page fault costs, beside the bare network round trip.

One run starts a directory, a bare ZeroMQ echo server, the floors' processes (``dsm.bench.floor``)
and three nodes (A, B, C), each node a worker process attached with ``dsm.attach`` (so with its
own agent). Every measurement times one plain numpy access per page *in the faulting process*,
one fault per page, on its own set of pages prepared beforehand:

=============  ==========================================================================
round trip     the baseline: a bare pyzmq DEALER (this process) / ROUTER (an echo child)
               round trip of a 4 KiB message, over the same transport
floor, home    the least a Python handler does to serve a remote fault, each party its own
               process: a faulter's uffd read by a minimal handler, which asks a ROUTER for
               the page over a DEALER, gets 4 KiB back and UFFDIO_COPYs them (2 messages)
floor, 3 hops  the same handler, its request going to a manager that forwards it to the
               page's owner, which sends the page straight to the handler (3 messages)
home read      B reads a page that A wrote and C then read: the directory holds the home
               copy and grants it at once
owned read     B reads a page A wrote and still owns: the directory fetches it from A
write upgrade  A writes a page it holds a read copy of, as do B and C: the directory
               invalidates B's and C's copies before it grants
write miss     A writes a page it does not hold, of which B and C hold read copies: the
               same two invalidations, and the page from home
local fault    a forked child of C writes a page C owns, through a write-protect marker
               left from an earlier read copy: the agent alone serves it, no network
resident read  B reads a page it holds: no fault, the timing loop's own cost
=============  ==========================================================================

The measurements are interleaved in rounds (a share of every measurement per round) so that a
noisy stretch of the machine touches them all alike; each fault time is reported as a ratio to
the round trip's median (``/ rtt``) and, where one applies, to its floor's (``/ floor``): a home
read against the 2-hop floor, a read of a page another node owns against the 3-hop one. What the
DSM costs above its floor is its own machinery; the floor above the round trip is what any
Python handler pays (the uffd event, the copy, one more process woken per fault).

With ``--keys DIR`` a second cluster runs beside the first in the same run: a directory serving
with those CurveZMQ keys and nodes ka, kb, kc joining with them. Every round measures each fault
on both, and each keyed fault is reported as a ratio to the same fault of the open cluster:
what CURVE (encryption and authentication of every message) costs per fault.
"""

from __future__ import annotations

import argparse
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from dsm.bench import common, floor
from dsm.bench.common import TRAFFIC_DIRECTIONS, BenchError, Progress, environment
from dsm.bench.procs import Processes, Worker, children_of, cpu_ns, run_with_processes
from dsm.keys import add_keys_argument, keys_dir_from

#: the measured pages are this far apart (no two of them neighbours)
SET_STRIDE_PAGES = 2
#: targets, as a ratio of the fault's median to the round trip's median (issue 6's table)
TARGETS: dict[str, float] = {"home_read": 1.2, "owned_read": 1.8, "write_upgrade": 2.0,
                             "write_miss": 2.0}

DEFAULT_PAGES = 1000
DEFAULT_ROUNDS = 10
DEFAULT_MESSAGE_BYTES = 4096
WARMUP_PAGES = 50
#: pages per written set read back at the end to check that the writes landed
VERIFY_PAGES = 200
WARMUP_ROUND_TRIPS = 200
#: a worker command's deadline: this much, plus PER_PAGE_TIMEOUT_S for each page it touches
BASE_TIMEOUT_S = 30.0
PER_PAGE_TIMEOUT_S = 0.02
#: the values written into each set's pages (a page holds value + its page number)
VALUE = {"home": 1 << 20, "owned": 2 << 20, "upgrade": 3 << 20, "miss": 4 << 20, "local": 5 << 20}
#: the keyed cluster's node-name prefix and row-key suffix
CURVE_PREFIX = "k"
CURVE_SUFFIX = "@curve"


@dataclass
class Row:
    key: str
    label: str
    samples_ns: list[int] = field(default_factory=list)
    #: what the faulting node's counters should grow by, per access
    expect_counters: dict[str, int] = field(default_factory=dict)
    counter_deltas: dict[str, int] = field(default_factory=dict)
    #: CPU time each process spent during this row's accesses, in ns
    cpu_ns: dict[str, int] = field(default_factory=dict)
    #: messages and bytes of every agent of the faulting node's cluster during the accesses
    #: (each message is one an agent sent or received: ``NodeStats.count_message``)
    messages: int = 0
    bytes: int = 0
    #: the median of each round's share, in µs
    round_medians_us: list[float] = field(default_factory=list)

    def add_samples(self, samples_ns: list[int]) -> None:
        self.samples_ns += samples_ns
        if samples_ns:
            self.round_medians_us.append(float(np.median(samples_ns)) / 1e3)

    def add_cpu(self, before: dict[str, int], after: dict[str, int]) -> None:
        for name, t in after.items():
            self.cpu_ns[name] = self.cpu_ns.get(name, 0) + t - before.get(name, t)

    def stats(self) -> dict[str, float]:
        a = np.asarray(self.samples_ns, dtype=np.float64) / 1e3
        if not len(a):
            return {"n": 0, "median_us": float("nan"), "p90_us": float("nan"), "p99_us": float("nan")}
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return {"n": len(a), "median_us": float(p50), "p90_us": float(p90), "p99_us": float(p99)}


#: the baselines, measured in the same rounds as the faults: (key, label, counters per access)
BASELINE_ROWS = [
    ("rtt", "zmq DEALER/ROUTER round trip ({size})", {}),
    (floor.HOME, "floor: home read, minimal handler", {}),
    (floor.THREE_HOPS, "floor: 3 hops, minimal handler", {}),
]
#: the DSM's own measurements (the keyed cluster measures these too)
FAULT_ROWS = [
    ("home_read", "read fault, page others read (home copy / a keeper)", {"requests": 1, "pages_in": 1}),
    ("owned_read", "read fault, page owned by another node", {"requests": 1, "pages_in": 1}),
    ("write_upgrade", "write fault, upgrade, invalidates 2 copies", {"requests": 1, "upgrades": 1}),
    ("write_miss", "write fault, missing, invalidates 2 copies", {"requests": 1, "pages_in": 1}),
    ("local_fault", "local WP fault, agent only (no network)", {"faults_local": 1}),
    ("resident_read", "resident read, no fault (loop overhead)", {}),
]
ROWS = BASELINE_ROWS + FAULT_ROWS
BASELINE_KEYS = {key for key, _, _ in BASELINE_ROWS}
FLOOR_KEYS = [floor.HOME, floor.THREE_HOPS]
#: each fault's floor: a page the directory holds at home against the 2-hop floor, a page another
#: live node owns (the directory fetches it) against the 3-hop one; the other faults do more
#: than fetch one page (invalidations) or less (no network), and have none
FLOOR_OF = {"home_read": floor.HOME, "owned_read": floor.THREE_HOPS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pages", type=int, default=DEFAULT_PAGES,
                        help=f"pages (one fault each) per measurement (default {DEFAULT_PAGES})")
    parser.add_argument("--round-trips", type=int,
                        help="bare round trips measured (default: as many as --pages)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"interleaved rounds the measurements are split into "
                             f"(default {DEFAULT_ROUNDS})")
    parser.add_argument("--transport", choices=["tcp", "ipc"], default="tcp",
                        help="ZeroMQ transport of the directory and of the baseline (default tcp "
                             "loopback)")
    parser.add_argument("--message-bytes", type=int, default=DEFAULT_MESSAGE_BYTES,
                        help=f"size of the baseline's message (default {DEFAULT_MESSAGE_BYTES}, "
                             "one page)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the page order (pages are visited in random order)")
    parser.add_argument("--trace", metavar="DIR",
                        help="trace the directory and the nodes into DIR (to measure what "
                             "tracing costs per fault: run once with it and once without)")
    common.add_output_arguments(parser)
    parser.add_argument("--fail-on-target", action="store_true",
                        help="exit with status 3 when a row misses its target")
    add_keys_argument(parser, "a second, keyed cluster runs beside the open one and every fault "
                              "is measured on both (CURVE's cost per fault)")


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, or None."""
    round_trips = args.round_trips if args.round_trips is not None else args.pages
    if min(args.pages, args.rounds, args.message_bytes, round_trips) < 1:
        return "--pages, --round-trips, --rounds and --message-bytes must be positive"
    return None


def measure(args: argparse.Namespace, progress: Progress, log_dir: Path) -> dict:
    """Run the benchmark (its processes log into ``log_dir``); its result. Raises BenchError."""
    round_trips = args.round_trips if args.round_trips is not None else args.pages
    rounds = min(args.rounds, args.pages, round_trips)
    keys_dir = keys_dir_from(getattr(args, "keys", None))
    return run_with_processes(log_dir, progress, lambda procs: FaultBench(
        procs, args.pages, round_trips, rounds, args.transport, args.message_bytes, args.seed,
        progress, keys_dir).run(), trace_dir=_trace_dir(args))


def _trace_dir(args: argparse.Namespace) -> Path | None:
    if not getattr(args, "trace", None):
        return None
    path = Path(args.trace).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(args: argparse.Namespace) -> int:
    return common.run_benchmark("fault", args, check_arguments, measure, format_table)


class FaultBench:
    def __init__(self, procs: Processes, pages: int, round_trips: int, rounds: int,
                 transport: str, message_bytes: int, seed: int, progress: Progress,
                 keys_dir: Path | None = None):
        self.procs = procs
        self.keys_dir = keys_dir
        #: node-name prefixes of the clusters measured: the open one, and the keyed one
        self.clusters = [""] + ([CURVE_PREFIX] if keys_dir is not None else [])
        self.pages = pages
        self.round_trips = round_trips
        self.rounds = rounds
        self.transport = transport
        self.message_bytes = message_bytes
        self.progress = progress
        self.rows = {key: Row(key, label.format(size=_size(message_bytes)), expect_counters=dict(c))
                     for key, label, c in ROWS}
        if keys_dir is not None:  # the same faults on the keyed cluster
            for key, label, c in FAULT_ROWS:
                self.rows[key + CURVE_SUFFIX] = Row(key + CURVE_SUFFIX, label + " [CURVE]",
                                                    expect_counters=dict(c))
        self.warnings: list[str] = []
        rng = random.Random(seed)
        # one set of pages per measurement, each visited in random order, every other page (two
        # neighbours faulted one after the other would be a run the read-ahead remembers, and
        # asks for whole the next time: two pages for one fault); warm-up pages last
        self.sets: dict[str, list[int]] = {}
        span = SET_STRIDE_PAGES * pages
        for i, name in enumerate(VALUE):
            pages_of_set = list(range(i * span, (i + 1) * span, SET_STRIDE_PAGES))
            rng.shuffle(pages_of_set)
            self.sets[name] = pages_of_set
        self.warm = list(range(len(VALUE) * span, len(VALUE) * span + WARMUP_PAGES))
        self.total_pages = len(VALUE) * span + WARMUP_PAGES
        # each floor's faulter maps pages of its own: its share of them in random order too
        # (drawn after the sets: the sets' order does not depend on the floors), then its warm-up
        self.floor_sets: dict[str, list[int]] = {}
        for key in FLOOR_KEYS:
            self.floor_sets[key] = list(range(pages))
            rng.shuffle(self.floor_sets[key])
        self.floor_warm = list(range(pages, pages + floor.WARMUP_PAGES))
        self.floors: dict[str, floor.FloorPath] = {}
        self.nodes: dict[str, Worker] = {}
        #: the processes whose CPU time is accounted, by name
        self.pids: dict[str, int | None] = {}

    def _endpoint(self, name: str) -> str:
        if self.transport == "tcp":
            return "tcp://127.0.0.1:*"
        return f"ipc://{self.procs.log_dir}/{name}.ipc"

    def _call(self, node: str, op: str, n_pages: int = 0, **args: Any) -> dict:
        return self.nodes[node].call(op, BASE_TIMEOUT_S + PER_PAGE_TIMEOUT_S * n_pages, **args)

    def _touch(self, node: str, pages: list[int], write: bool = False, value: int = 0,
               expect: int | None = None) -> None:
        reply = self._call(node, "touch", len(pages), pages=pages, write=write, value=value,
                           expect=expect)
        if reply["n_bad"]:
            raise BenchError(f"node {node} read {reply['n_bad']} pages wrong "
                             f"([page, value] expected {expect} + page: {reply['bad']})")

    # --- the run -----------------------------------------------------------------------------------
    def run(self) -> dict:
        p = self.progress
        page_bytes = os.sysconf("SC_PAGE_SIZE")
        region = max(self.total_pages * page_bytes + (16 << 20), 64 << 20)
        region = (region + (1 << 20) - 1) >> 20 << 20
        p(f"starting a directory ({self.transport}), an echo server, the floors' processes and "
          "nodes a, b, c")
        directory = self.procs.start_directory(self._endpoint("directory"), region)
        echo = self.procs.start_echo(self._endpoint("echo"))
        self.floors = floor.start(self.procs, self._endpoint, self.pages)
        self.nodes = self.procs.start_workers(directory, ["a", "b", "c"])
        self.pids = {"bench": os.getpid(), "echo": self.procs.echo.proc.pid,
                     "directory": self.procs.directory.proc.pid}
        # a distributed manager's other shards are the directory's children
        for i, pid in enumerate(children_of(self.procs.directory.proc.pid), start=1):
            self.pids[f"directory shard{i}"] = pid
        for path in self.floors.values():
            self.pids.update(path.pids)
        if self.keys_dir is not None:
            c = CURVE_PREFIX
            p(f"starting a directory with the keys of {self.keys_dir} and nodes {c}a, {c}b, {c}c")
            keyed = self.procs.start_directory(self._endpoint("directory-curve"), region,
                                               str(self.keys_dir), name="directory-curve")
            self.nodes.update(self.procs.start_workers(keyed, [c + "a", c + "b", c + "c"],
                                                       str(self.keys_dir)))
            self.pids["directory-curve"] = next(ch.proc.pid for ch in self.procs.children
                                                if ch.name == "directory-curve")
        for name in self.nodes:
            self._call(name, "array", name="bench", pages=self.total_pages)
        for name, w in self.nodes.items():
            self.pids[f"agent {name}"] = w.agent_pid
            self.pids[f"workload {name}"] = w.proc.pid
        p(f"nodes attached; preparing {len(VALUE)} sets of {self.pages} pages")
        for c in self.clusters:
            self._prepare(c)
        for path in self.floors.values():  # untimed, like the nodes' (cold code, new connections)
            path.touch(self.floor_warm, BASE_TIMEOUT_S + PER_PAGE_TIMEOUT_S * len(self.floor_warm))
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        try:
            dealer.connect(echo)
            payload = os.urandom(self.message_bytes)
            self._round_trips(dealer, payload, WARMUP_ROUND_TRIPS)
            for r in range(self.rounds):
                p(f"round {r + 1}/{self.rounds}")
                self._round(r, dealer, payload)
        finally:
            dealer.close(0)
            ctx.term()
        p("checking what the writes left")
        for c in self.clusters:
            self._verify(c)
        return self._result()

    def _prepare(self, c: str) -> None:
        """Prepare the sets on the cluster whose nodes are named ``c + "a"``, ... ."""
        s, v = self.sets, VALUE
        a, b, c = c + "a", c + "b", c + "c"
        # warm-up: every path once, untimed (first faults of a process run cold code)
        self._touch(a, self.warm, write=True, value=7)
        self._touch(c, self.warm, expect=7)
        self._touch(b, self.warm, expect=7)
        self._touch(a, self.warm, write=True, value=8)
        # home: A writes, C reads (the directory fetches it and keeps the home copy)
        self._touch(a, s["home"], write=True, value=v["home"])
        self._touch(c, s["home"], expect=v["home"])
        # owned: A writes and keeps it
        self._touch(a, s["owned"], write=True, value=v["owned"])
        # upgrade: A writes, B and C read: all three hold read copies
        self._touch(a, s["upgrade"], write=True, value=v["upgrade"])
        self._touch(b, s["upgrade"], expect=v["upgrade"])
        self._touch(c, s["upgrade"], expect=v["upgrade"])
        # miss: C writes, B reads: B and C hold read copies, the directory the home copy
        self._touch(c, s["miss"], write=True, value=v["miss"])
        self._touch(b, s["miss"], expect=v["miss"])
        # local: C reads a page A wrote (a read copy, write-protected in C's processes), forks a
        # child (which inherits the protection), A writes it again (C's copy is invalidated; the
        # protection marker stays in the child), C's parent writes it (C owns it now): the
        # child's first write hits the stale marker, which the agent clears without the network
        self._touch(a, s["local"], write=True, value=v["local"])
        self._touch(c, s["local"], expect=v["local"])
        self.pids[f"workload {c} child"] = self._call(c, "spawn")["child_pid"]
        self._touch(a, s["local"], write=True, value=v["local"] + 1)
        self._touch(c, s["local"], write=True, value=v["local"] + 2)

    def _chunk(self, pages: list[int], r: int) -> list[int]:
        n = len(pages)
        return pages[r * n // self.rounds:(r + 1) * n // self.rounds]

    def _round(self, r: int, dealer: zmq.Socket, payload: bytes) -> None:
        s, v = self.sets, VALUE
        n_rtt = (r + 1) * self.round_trips // self.rounds - r * self.round_trips // self.rounds
        cpu_before = self._cpu()
        rtt = self._round_trips(dealer, payload, n_rtt)
        self.rows["rtt"].add_cpu(cpu_before, self._cpu())
        self.rows["rtt"].add_samples(rtt)
        for key, path in self.floors.items():
            self._timed_floor(key, path, self._chunk(self.floor_sets[key], r))
        # each fault on every cluster in turn, so that both see the same stretch of the machine
        clusters = [(c, CURVE_SUFFIX if c else "") for c in self.clusters]
        for c, x in clusters:
            self._timed("home_read" + x, c + "b", self._chunk(s["home"], r), expect=v["home"])
        for c, x in clusters:
            self._timed("owned_read" + x, c + "b", self._chunk(s["owned"], r), expect=v["owned"])
        for c, x in clusters:
            self._timed("write_upgrade" + x, c + "a", self._chunk(s["upgrade"], r), write=True,
                        value=v["upgrade"] + 1)
        for c, x in clusters:
            self._timed("write_miss" + x, c + "a", self._chunk(s["miss"], r), write=True,
                        value=v["miss"] + 1)
        for c, x in clusters:
            self._timed("local_fault" + x, c + "c", self._chunk(s["local"], r), write=True,
                        value=v["local"] + 3, in_child=True)
        for c, x in clusters:
            self._timed("resident_read" + x, c + "b", self._chunk(s["home"], r),
                        expect=v["home"])

    def _timed(self, key: str, node: str, pages: list[int], write: bool = False, value: int = 0,
               expect: int | None = None, in_child: bool = False) -> None:
        if not pages:
            return
        row = self.rows[key]
        cluster = [n for n in self.nodes if n[:-1] == node[:-1]]  # a, b, c (or the keyed ones)
        traffic_before = {n: self._counters(n) for n in cluster}
        before = traffic_before[node]
        command = {"pages": pages, "write": write, "value": value, "expect": expect}
        cpu_before = self._cpu()
        if in_child:
            reply = self._call(node, "child", len(pages), command={"op": "time", **command},
                               timeout_s=BASE_TIMEOUT_S + PER_PAGE_TIMEOUT_S * len(pages))
        else:
            reply = self._call(node, "time", len(pages), **command)
        row.add_cpu(cpu_before, self._cpu())
        traffic_after = {n: self._counters(n) for n in cluster}
        after = traffic_after[node]
        for n in cluster:
            for kind, total in (("messages", "messages"), ("bytes", "bytes")):
                delta = sum(traffic_after[n].get(f"{kind}_{d}", 0) - traffic_before[n].get(
                    f"{kind}_{d}", 0) for d in TRAFFIC_DIRECTIONS)
                setattr(row, total, getattr(row, total) + delta)
        if reply["n_bad"]:
            raise BenchError(f"{row.label}: node {node} read {reply['n_bad']} pages wrong "
                             f"([page, value], expected {expect} + page: {reply['bad']})")
        row.add_samples(reply["samples_ns"])
        for name in set(before) | set(after):
            row.counter_deltas[name] = row.counter_deltas.get(name, 0) + after.get(name, 0) - before.get(name, 0)

    def _timed_floor(self, key: str, path: floor.FloorPath, pages: list[int]) -> None:
        """A floor's share of the round: its faulter faults each page once, timed the same way."""
        if not pages:
            return
        row = self.rows[key]
        cpu_before = self._cpu()
        samples = path.time(pages, BASE_TIMEOUT_S + PER_PAGE_TIMEOUT_S * len(pages))
        row.add_cpu(cpu_before, self._cpu())
        row.add_samples(samples)

    def _cpu(self) -> dict[str, int]:
        return {name: cpu_ns(pid) for name, pid in self.pids.items()}

    def _counters(self, node: str) -> dict[str, int]:
        return self._call(node, "stats")["stats"]["counters"]

    def _round_trips(self, dealer: zmq.Socket, payload: bytes, n: int) -> list[int]:
        return common.round_trips(dealer, payload, n, BASE_TIMEOUT_S)

    def _verify(self, c: str) -> None:
        """The writes landed: B reads back (a sample of) what A and C's child wrote last."""
        s, v = self.sets, VALUE
        self._touch(c + "b", s["upgrade"][:VERIFY_PAGES], expect=v["upgrade"] + 1)
        self._touch(c + "b", s["miss"][:VERIFY_PAGES], expect=v["miss"] + 1)
        self._touch(c + "b", s["local"][:VERIFY_PAGES], expect=v["local"] + 3)

    # --- the result --------------------------------------------------------------------------------
    def _result(self) -> dict:
        base = self.rows["rtt"].stats()["median_us"]
        rows = []
        for row in self.rows.values():
            st = row.stats()
            target = TARGETS.get(row.key)
            ratio = st["median_us"] / base if base else float("nan")
            n = st["n"]
            rtt_rounds = self.rows["rtt"].round_medians_us
            per_round = [m / b for m, b in zip(row.round_medians_us, rtt_rounds) if b]
            floor_key = floor_of(row.key)
            floor_ratio, floor_rounds = None, []
            if floor_key is not None:  # against its floor, from the same run and rounds
                floor_row = self.rows[floor_key]
                floor_median = floor_row.stats()["median_us"]
                floor_ratio = st["median_us"] / floor_median if floor_median else float("nan")
                floor_rounds = [m / f for m, f in zip(row.round_medians_us,
                                                      floor_row.round_medians_us) if f]
            rows.append({
                "key": row.key, "label": row.label, **st, "ratio": ratio, "target": target,
                "meets_target": (ratio <= target) if target is not None else None,
                "counters": row.counter_deltas,
                "round_medians_us": row.round_medians_us,
                #: each round's median over that round's round-trip median, and their median:
                #: less sensitive to the machine's load drifting during the run
                "round_ratios": per_round,
                "median_round_ratio": float(np.median(per_round)) if per_round else float("nan"),
                #: the row's floor (None: it has none), its median over the floor's, and the
                #: median of the per-round ratios to the floor
                "floor": floor_key,
                "floor_ratio": floor_ratio,
                "median_round_floor_ratio": (float(np.median(floor_rounds)) if floor_rounds
                                             else None if floor_key is None else float("nan")),
                "cpu_us_per_access": {
                    name: t / n / 1e3 for name, t in sorted(row.cpu_ns.items()) if n
                },
                #: per access: messages and bytes (every agent of the cluster), and the CPU of
                #: the manager (the directory and its shards)
                "traffic": {
                    "messages": row.messages / n, "bytes": row.bytes / n,
                    "manager_cpu_us": sum(t for name, t in row.cpu_ns.items()
                                          if name.startswith("directory")
                                          and "curve" not in name) / n / 1e3,
                } if n and (row.messages or row.key not in BASELINE_KEYS) else None,
            })
            n = st["n"]
            for name, per_access in row.expect_counters.items():
                got = row.counter_deltas.get(name, 0)
                if got != per_access * n:
                    self.warnings.append(
                        f"{row.label}: the node counted {name} {got} times for {n} accesses "
                        f"(expected {per_access * n}): not every access was the intended fault"
                    )
        return {
            "benchmark": "fault",
            "floor_of": {key: floor_of(key) for key in self.rows if floor_of(key) is not None},
            "config": {"pages": self.pages, "round_trips": self.round_trips,
                       "rounds": self.rounds, "transport": self.transport,
                       "message_bytes": self.message_bytes,
                       "keys": str(self.keys_dir) if self.keys_dir is not None else None},
            "curve_cost": self._curve_cost(),
            "environment": environment(),
            "rows": rows,
            "samples_ns": {row.key: row.samples_ns for row in self.rows.values()},
            "warnings": self.warnings,
        }


    def _curve_cost(self) -> list[dict]:
        """Each fault on the keyed cluster against the same fault on the open one: the ratio of
        the medians, and the median of the rounds' ratios (robust to load drifting)."""
        out = []
        for key, _label, _ in FAULT_ROWS:
            keyed = self.rows.get(key + CURVE_SUFFIX)
            if keyed is None:
                continue
            open_row = self.rows[key]
            base = open_row.stats()["median_us"]
            per_round = [k / o for k, o in zip(keyed.round_medians_us, open_row.round_medians_us)
                         if o]
            out.append({"key": key, "open_median_us": base,
                        "curve_median_us": keyed.stats()["median_us"],
                        "ratio": keyed.stats()["median_us"] / base if base else float("nan"),
                        "median_round_ratio": (float(np.median(per_round)) if per_round
                                               else float("nan"))})
        return out


def floor_of(key: str) -> str | None:
    """The floor a row is measured against: a floor is its own; a keyed fault has the open
    one's (the floors run open: what CURVE adds shows against them too); None when none applies."""
    if key in FLOOR_KEYS:
        return key
    return FLOOR_OF.get(key.removesuffix(CURVE_SUFFIX))


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _size(nbytes: int) -> str:
    return f"{nbytes // 1024} KiB" if nbytes % 1024 == 0 else f"{nbytes} B"


def format_table(result: dict) -> str:
    cfg = result["config"]
    header = ["measurement", "n", "median µs", "p90 µs", "p99 µs", "/ rtt", "/ floor", "target"]
    numbers = range(1, 7)  # the columns right-aligned: the numbers and the ratios
    lines = []
    for r in result["rows"]:
        if r["target"] is None:
            target = "-"
        else:
            target = f"<={r['target']:.1f}x " + ("ok" if r["meets_target"] else "MISSED")
        lines.append([r["label"], str(r["n"]), f"{r['median_us']:.1f}", f"{r['p90_us']:.1f}",
                      f"{r['p99_us']:.1f}", _ratio(r["ratio"]), _ratio(r.get("floor_ratio")),
                      target])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in numbers else c.ljust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    env = result["environment"]
    title = (f"dsm bench fault: transport {cfg['transport']}, {cfg['pages']} pages per fault row, "
             f"{cfg['round_trips']} round trips, {cfg['rounds']} rounds; / rtt = median / round-"
             f"trip median, / floor = median / its floor's median (home read: the 2-hop floor, "
             f"owned read: the 3-hop one) (pyzmq {env['pyzmq']}, libzmq {env['libzmq']}, "
             f"{env['cpus']} cpus)")
    out = [title, fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt(line) for line in lines]
    medians = result["rows"][0]["round_medians_us"]
    if len(medians) > 1:
        # the resident reads are the timing loop, not a fault: no ratio worth a robust estimate
        measured = [r for r in result["rows"][1:]
                    if not r["key"].startswith("resident_read")]
        out.append("round-trip median per round (µs): " + ", ".join(f"{m:.1f}" for m in medians))
        out.append("median of the per-round ratios (robust to load drifting during the run): "
                   + ", ".join(f"{r['key']} {r['median_round_ratio']:.2f}x" for r in measured))
        over_floor = [r for r in measured
                      if r.get("floor") is not None and r["key"] not in FLOOR_KEYS]
        if over_floor:
            out.append("median of the per-round ratios to the floor: "
                       + ", ".join(f"{r['key']} {r['median_round_floor_ratio']:.2f}x"
                                   for r in over_floor))
    if result.get("curve_cost"):
        out.append("")
        out.append(f"CURVE's cost per fault (keys {cfg['keys']}): keyed cluster / open cluster, "
                   "same run, same rounds")
        for c in result["curve_cost"]:
            out.append(f"  {c['key']:<14} open {c['open_median_us']:7.1f} µs  CURVE "
                       f"{c['curve_median_us']:7.1f} µs  ratio {c['ratio']:.2f}x  (median of the "
                       f"per-round ratios {c['median_round_ratio']:.2f}x)")
    out.append("")
    out.append("CPU µs per access, by process (all threads; includes the bench's own bookkeeping):")
    for r in result["rows"]:
        busy = sorted(((t, name) for name, t in r["cpu_us_per_access"].items() if t >= 0.5),
                      reverse=True)
        cells = ", ".join(f"{name} {t:.1f}" for t, name in busy) or "-"
        out.append(f"  {r['label'].ljust(widths[0])}  {cells}")
    traffic = [r for r in result["rows"] if r.get("traffic")]
    if traffic:
        out.append("")
        out.append("per access: messages and bytes (every agent's, sent or received), and the "
                   "manager's CPU:")
        for r in traffic:
            t = r["traffic"]
            out.append(f"  {r['label'].ljust(widths[0])}  {t['messages']:.1f} messages, "
                       f"{t['bytes']:,.0f} bytes, manager {t['manager_cpu_us']:.0f} µs")
    return "\n".join(out)


def summary(result: dict) -> list[dict]:
    """The combined table's rows (``dsm bench``): every fault against the round trip."""
    rows = []
    curve = {c["key"] + CURVE_SUFFIX: c for c in result.get("curve_cost", [])}
    for r in result["rows"]:
        samples = np.asarray(result["samples_ns"][r["key"]], dtype=np.float64) / common.NS_PER_US
        if r["key"] in curve:  # against the same fault on the open cluster
            rows.append(common.summary_row("fault", r["key"], r["label"], "µs", samples,
                                           ratio=curve[r["key"]]["ratio"],
                                           baseline=r["key"][:-len(CURVE_SUFFIX)]))
        elif r["key"] == "rtt":
            rows.append(common.summary_row("fault", r["key"], r["label"], "µs", samples,
                                           is_baseline=True))
        else:
            rows.append(common.summary_row("fault", r["key"], r["label"], "µs", samples,
                                           ratio=r["ratio"], baseline="rtt",
                                           at_most=TARGETS.get(r["key"])))
    return rows
