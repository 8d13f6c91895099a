"""``dsm bench lock``: what a cluster-wide lock costs, beside the bare network round trip.

One run starts a directory, a bare ZeroMQ echo server and N nodes (default 3), each a worker
process attached with ``dsm.attach`` (so with its own agent). A lock request goes from the
workload to its agent (a Unix socket), from the agent to the directory (ZeroMQ) and back the same
way: one acquire or one release is one such round trip when nobody else holds the lock.

==========================  ==========================================================================
round trip                  the baseline: a bare pyzmq DEALER (this process) / ROUTER (an echo child)
                            round trip of a small message, over the same transport
uncontended acquire         node a acquires a lock nobody else uses (one time per acquire)
uncontended release         ... and releases it
uncontended pair            acquire + release
contended acquire           all N nodes acquire and release one lock in a loop, starting together at
                            a barrier: the time each acquire waited (FIFO: behind the others)
contended handoff           the same run's wall time over the acquisitions of all nodes: the time
                            one grant takes to move on to the next node
contended + counter ...     the same, the critical section incrementing a shared counter: the lock's
                            holder also takes the counter's page from the previous holder
==========================  ==========================================================================

Rounds interleave every measurement (a share of each per round) so that a noisy stretch of the
machine touches them all alike; each row is reported as a ratio of its median to the round
trip's median. The counter must end at exactly the number of increments made.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from dsm.bench import common
from dsm.bench.common import BenchError, Progress, environment
from dsm.bench.procs import Processes, Worker, run_with_processes

DEFAULT_ACQUIRES = 2000
DEFAULT_CONTENDED = 300
DEFAULT_ROUNDS = 5
DEFAULT_NODES = 3
DEFAULT_MESSAGE_BYTES = 64
WARMUP_ROUND_TRIPS = 200
WARMUP_ACQUIRES = 50
#: a worker command's deadline: this much, plus PER_ACQUIRE_TIMEOUT_S for each acquisition
BASE_TIMEOUT_S = 30.0
PER_ACQUIRE_TIMEOUT_S = 0.05


@dataclass
class Row:
    key: str
    label: str
    samples_ns: list[int] = field(default_factory=list)
    round_medians_us: list[float] = field(default_factory=list)

    def add(self, samples_ns: list[int]) -> None:
        self.samples_ns += samples_ns
        if samples_ns:
            self.round_medians_us.append(float(np.median(samples_ns)) / 1e3)

    def stats(self) -> dict[str, float]:
        a = np.asarray(self.samples_ns, dtype=np.float64) / 1e3
        if not len(a):
            return {"n": 0, "median_us": float("nan"), "p90_us": float("nan"),
                    "p99_us": float("nan")}
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return {"n": len(a), "median_us": float(p50), "p90_us": float(p90), "p99_us": float(p99)}


def rows_for(nodes: int, message_bytes: int) -> list[tuple[str, str]]:
    size = f"{message_bytes} B" if message_bytes % 1024 else f"{message_bytes // 1024} KiB"
    return [
        ("rtt", f"zmq DEALER/ROUTER round trip ({size})"),
        ("acquire", "uncontended acquire (1 node)"),
        ("release", "uncontended release (1 node)"),
        ("pair", "uncontended acquire + release"),
        ("contended_acquire", f"contended acquire ({nodes} nodes, empty section)"),
        ("contended_handoff", f"contended handoff ({nodes} nodes: wall / acquisitions)"),
        ("counter_acquire", f"contended acquire ({nodes} nodes, section += shared counter)"),
        ("counter_handoff", f"contended handoff ({nodes} nodes, with shared counter)"),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--acquires", type=int, default=DEFAULT_ACQUIRES,
                        help=f"uncontended acquire/release pairs (default {DEFAULT_ACQUIRES})")
    parser.add_argument("--contended", type=int, default=DEFAULT_CONTENDED,
                        help="contended acquire/release pairs per node, for each of the two "
                             f"contended measurements (default {DEFAULT_CONTENDED})")
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES,
                        help=f"nodes contending (default {DEFAULT_NODES})")
    parser.add_argument("--round-trips", type=int, default=None,
                        help="bare round trips (default: as many as --acquires)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"interleaved rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--transport", choices=["tcp", "ipc"], default="tcp",
                        help="how nodes reach the directory, and the round trip's transport")
    parser.add_argument("--message-bytes", type=int, default=DEFAULT_MESSAGE_BYTES,
                        help=f"round-trip message size (default {DEFAULT_MESSAGE_BYTES})")
    common.add_output_arguments(parser)


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, or None."""
    for name in ("acquires", "contended", "rounds", "nodes", "message_bytes"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    if args.nodes < 2:
        return "--nodes must be at least 2 (contention needs two)"
    return None


def measure(args: argparse.Namespace, progress: Progress, log_dir: Path) -> dict:
    """Run the benchmark (its processes log into ``log_dir``); its result. Raises BenchError."""
    round_trips = args.round_trips if args.round_trips is not None else args.acquires
    return run_with_processes(log_dir, progress, lambda procs: LockBench(
        procs, args.nodes, args.acquires, args.contended, round_trips, args.rounds,
        args.transport, args.message_bytes, progress).run())


def run(args: argparse.Namespace) -> int:
    return common.run_benchmark("lock", args, check_arguments, measure, format_table)


class LockBench:
    def __init__(self, procs: Processes, nodes: int, acquires: int, contended: int,
                 round_trips: int, rounds: int, transport: str, message_bytes: int,
                 progress: Progress):
        self.procs = procs
        self.n_nodes = nodes
        self.acquires = acquires
        self.contended = contended
        self.round_trips = round_trips
        self.rounds = rounds
        self.transport = transport
        self.message_bytes = message_bytes
        self.progress = progress
        self.rows = {key: Row(key, label) for key, label in rows_for(nodes, message_bytes)}
        self.names = [chr(ord("a") + i) for i in range(nodes)]
        self.nodes: dict[str, Worker] = {}
        self.increments = 0

    def _endpoint(self, name: str) -> str:
        if self.transport == "tcp":
            return "tcp://127.0.0.1:*"
        return f"ipc://{self.procs.log_dir}/{name}.ipc"

    def _share(self, total: int, r: int) -> int:
        return (r + 1) * total // self.rounds - r * total // self.rounds

    def run(self) -> dict:
        p = self.progress
        p(f"starting a directory ({self.transport}), an echo server and nodes "
          f"{', '.join(self.names)}")
        directory = self.procs.start_directory(self._endpoint("directory"),
                                                 common.SYNC_REGION_BYTES)
        echo = self.procs.start_echo(self._endpoint("echo"))
        self.nodes = self.procs.start_workers(directory, self.names)
        with common.echo_dealer(echo) as dealer:
            payload = os.urandom(self.message_bytes)
            _round_trips(dealer, payload, WARMUP_ROUND_TRIPS)
            self._lock("a", "warm", WARMUP_ACQUIRES)
            self._contend("warm.contended", WARMUP_ACQUIRES // self.n_nodes + 1, None)
            for r in range(self.rounds):
                p(f"round {r + 1}/{self.rounds}")
                self.rows["rtt"].add(_round_trips(dealer, payload,
                                                  self._share(self.round_trips, r)))
                reply = self._lock("a", "uncontended", self._share(self.acquires, r))
                self.rows["acquire"].add(reply["acquire_ns"])
                self.rows["release"].add(reply["release_ns"])
                self.rows["pair"].add([a + b for a, b in zip(reply["acquire_ns"],
                                                             reply["release_ns"])])
                n = self._share(self.contended, r)
                self._contended_rows("contended", self._contend("contended", n, None), n)
                self._contended_rows("counter", self._contend("counter", n, "bench.counter"), n)
                self.increments += n * self.n_nodes
        return self._result()

    def _lock(self, node: str, name: str, n: int, parties: int = 1,
              counter: str | None = None) -> dict:
        return self.nodes[node].call("lock", BASE_TIMEOUT_S + PER_ACQUIRE_TIMEOUT_S * n * parties,
                                     name=name, n=n, parties=parties, counter=counter)

    def _contend(self, name: str, n: int, counter: str | None) -> list[dict]:
        """Every node runs ``n`` pairs of lock ``name`` at once (they start at a barrier)."""
        deadline = BASE_TIMEOUT_S + PER_ACQUIRE_TIMEOUT_S * n * self.n_nodes
        for w in self.nodes.values():
            w.send("lock", name=name, n=n, parties=self.n_nodes, counter=counter)
        return [w.wait(deadline) for w in self.nodes.values()]

    def _contended_rows(self, prefix: str, replies: list[dict], n: int) -> None:
        key = "contended" if prefix == "contended" else "counter"
        self.rows[f"{key}_acquire"].add([t for r in replies for t in r["acquire_ns"]])
        wall = max(r["wall_ns"] for r in replies)
        self.rows[f"{key}_handoff"].add([wall // (n * self.n_nodes)])
        if prefix == "counter":
            final = max(r["counter"] for r in replies)
            expected = self.increments + n * self.n_nodes
            if final != expected:
                raise BenchError(f"the shared counter holds {final} after {expected} increments "
                                 "under the lock")

    def _result(self) -> dict:
        base = self.rows["rtt"].stats()["median_us"]
        rtt_rounds = self.rows["rtt"].round_medians_us
        rows = []
        for row in self.rows.values():
            st = row.stats()
            if row.key.endswith("handoff"):
                # one value per round: n counts the acquisitions it averages
                st["n"] = self.contended * self.n_nodes
            per_round = [m / b for m, b in zip(row.round_medians_us, rtt_rounds) if b]
            rows.append({"key": row.key, "label": row.label, **st,
                         "ratio": st["median_us"] / base if base else float("nan"),
                         "round_medians_us": row.round_medians_us,
                         "median_round_ratio": float(np.median(per_round)) if per_round
                         else float("nan")})
        return {
            "benchmark": "lock",
            "config": {"nodes": self.n_nodes, "acquires": self.acquires,
                       "contended": self.contended, "round_trips": self.round_trips,
                       "rounds": self.rounds, "transport": self.transport,
                       "message_bytes": self.message_bytes},
            "environment": environment(),
            "rows": rows,
            "counter": self.increments,
            "samples_ns": {row.key: row.samples_ns for row in self.rows.values()},
        }


def _round_trips(dealer: zmq.Socket, payload: bytes, n: int) -> list[int]:
    return common.round_trips(dealer, payload, n, BASE_TIMEOUT_S)


def format_table(result: dict) -> str:
    cfg = result["config"]
    header = ["measurement", "n", "median µs", "p90 µs", "p99 µs", "ratio"]
    lines = []
    for r in result["rows"]:
        handoff = r["key"].endswith("handoff")
        lines.append([r["label"], str(r["n"]), f"{r['median_us']:.1f}",
                      "-" if handoff else f"{r['p90_us']:.1f}",
                      "-" if handoff else f"{r['p99_us']:.1f}", f"{r['ratio']:.2f}x"])
    env = result["environment"]
    out = [f"dsm bench lock: transport {cfg['transport']}, {cfg['acquires']} uncontended pairs, "
           f"{cfg['contended']} contended pairs per node x {cfg['nodes']} nodes, "
           f"{cfg['round_trips']} round trips, {cfg['rounds']} rounds; ratio = median / "
           f"round-trip median (pyzmq {env['pyzmq']}, libzmq {env['libzmq']}, "
           f"{env['cpus']} cpus)", common.text_table(header, lines)]
    medians = result["rows"][0]["round_medians_us"]
    if len(medians) > 1:
        out.append("round-trip median per round (µs): " + ", ".join(f"{m:.1f}" for m in medians))
        out.append("median of the per-round ratios (robust to load drifting during the run): "
                   + ", ".join(f"{r['key']} {r['median_round_ratio']:.2f}x"
                               for r in result["rows"][1:]))
    out.append(f"shared counter: {result['counter']} increments under the lock, none lost")
    return "\n".join(out)


def summary(result: dict) -> list[dict]:
    """The combined table's rows (``dsm bench``): every lock measurement against the round
    trip, reported (no targets)."""
    rows = []
    for r in result["rows"]:
        samples = np.asarray(result["samples_ns"][r["key"]], dtype=np.float64) / common.NS_PER_US
        if r["key"] == "rtt":
            rows.append(common.summary_row("lock", "lock_rtt", r["label"], "µs", samples,
                                           is_baseline=True))
            continue
        rows.append(common.summary_row("lock", r["key"], r["label"], "µs", samples,
                                       ratio=r["ratio"], baseline="lock_rtt", n=r["n"]))
    return rows
