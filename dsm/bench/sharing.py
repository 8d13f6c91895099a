"""``dsm bench sharing``: fine-grained sharing, beside the bare network round trip: atomic
counters, a work queue taken the old way and with an atomic, and a job's collectives.

One run starts a directory, a bare ZeroMQ echo server and N nodes (default 3), the ranks of one
job, each a worker process attached with ``dsm.attach`` (its own agent). An atomic operation goes
from the workload straight to the directory (its thread's own DEALER) and back; a collective
and a lock go through the node's agent (a Unix socket), to the directory (ZeroMQ) and back.

==========================  ==========================================================================
round trip                  the baseline: a bare pyzmq DEALER/ROUTER round trip of a small message
round trip, contended       the same round trip by all N nodes at once (their workload
                            processes): what the machine's cores allow N clients of one server
atomic fetch_add            node a alone: one ``counter.fetch_add(0, 1)``
contended fetch_add         all N nodes at once on one counter (target: <= 1.5x the round trip)
work queue, lock            one task taken per the README's first version: lock, read and bump a
                            shared int64, unlock (wall time / tasks, all N nodes taking)
... lock, release array     the same, the int64 in an array of consistency="release" (the grant's
                            write notices drop it, a fault brings it back)
... guarded lock            the same release array, the lock made with ``guards=`` it: its grant
                            carries the counter's page (target: <= 3x the round trip, issue 24)
work queue, atomic          the same queue, the task's number taken by one atomic fetch_add
allreduce (scalar)          every rank's float summed, on every rank (N ranks)
allreduce (1 MiB)           131,072 float64 summed element-wise (in chunks, one round trip each)
bcast (scalar)              rank 0's float on every rank
allgather (scalar)          every rank's float on every rank
barrier step                a step of every rank, as a halo exchange: bump its own int64 of a
                            release array (a page each), wait at a barrier, read and check the
                            neighbour's int64 (the departure's notice drops its copy: a fetch),
                            wait again (the neighbour writes only once it was read)
==========================  ==========================================================================

Rounds interleave the measurements; each row is reported as a ratio of its median to the round
trip's median. Every counter must end at the number of operations made, and every queue must
hand out each task exactly once.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from dsm.bench import common, profile
from dsm.bench.common import BenchError, Progress, environment
from dsm.bench.lock import Row
from dsm.bench.procs import Processes, Worker, run_with_processes

DEFAULT_OPERATIONS = 1000
DEFAULT_TASKS = 600
DEFAULT_COLLECTIVES = 200
DEFAULT_ROUNDS = 3
DEFAULT_NODES = 3
MESSAGE_BYTES = 64
WARMUP = 50
#: the large allreduce's float64 elements: 1 MiB
LARGE_ELEMENTS = (1 << 20) // 8
#: the most a contended fetch_add may cost, as a ratio of the round trip (issue 21)
CONTENDED_TARGET = 1.5
#: the most a task taken under a guarded lock may cost, as a ratio of the round trip (issue 24)
GUARDED_TARGET = 3.0
#: the work queues under a lock: row key -> (the counter's consistency, guarded)
LOCKED_QUEUES = {"queue_lock": ("sequential", False),
                 "queue_lock_release": ("release", False),
                 "queue_guarded": ("release", True)}
#: a worker command's deadline: this much, plus PER_OPERATION_TIMEOUT_S for each operation
BASE_TIMEOUT_S = 30.0
PER_OPERATION_TIMEOUT_S = 0.05
#: the collectives measured: row key -> (kind, float64 elements, share of the collectives count)
COLLECTIVES = {"allreduce": ("allreduce", 0, 1), "allreduce_1mib": ("allreduce", LARGE_ELEMENTS, 10),
               "bcast": ("bcast", 0, 1), "allgather": ("allgather", 0, 1),
               "barrier": ("barrier", 0, 1)}


def rows_for(nodes: int) -> list[tuple[str, str]]:
    return [
        ("rtt", f"zmq DEALER/ROUTER round trip ({MESSAGE_BYTES} B)"),
        ("rtt_contended", f"zmq round trip, {nodes} clients at once"),
        ("atomic", "atomic fetch_add (1 node)"),
        ("atomic_contended", f"atomic fetch_add, contended ({nodes} nodes)"),
        ("queue_lock", f"work queue per task: lock + shared int64 ({nodes} nodes)"),
        ("queue_lock_release", f"work queue per task: lock + release int64 ({nodes} nodes)"),
        ("queue_guarded", f"work queue per task: lock guarding its int64 ({nodes} nodes)"),
        ("queue_atomic", f"work queue per task: atomic fetch_add ({nodes} nodes)"),
        ("allreduce", f"allreduce, scalar ({nodes} ranks)"),
        ("allreduce_1mib", f"allreduce, 1 MiB float64 ({nodes} ranks)"),
        ("bcast", f"bcast, scalar ({nodes} ranks)"),
        ("allgather", f"allgather, scalar ({nodes} ranks)"),
        ("barrier", f"barrier step: write, wait, read a neighbour's, wait ({nodes} ranks)"),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--operations", type=int, default=DEFAULT_OPERATIONS,
                        help=f"atomic operations per node per measurement (default "
                             f"{DEFAULT_OPERATIONS})")
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS,
                        help=f"tasks in each work queue run (default {DEFAULT_TASKS})")
    parser.add_argument("--collectives", type=int, default=DEFAULT_COLLECTIVES,
                        help=f"collectives of each kind (default {DEFAULT_COLLECTIVES}; the "
                             "1 MiB allreduce runs a tenth as many)")
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES,
                        help=f"nodes, the ranks of the job (default {DEFAULT_NODES})")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"interleaved rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--transport", choices=["tcp", "ipc"], default="tcp",
                        help="how nodes reach the directory, and the round trip's transport")
    common.add_output_arguments(parser)
    profile.add_argument(parser)


def check_arguments(args: argparse.Namespace) -> str | None:
    for name in ("operations", "tasks", "collectives", "rounds"):
        if getattr(args, name) < 1:
            return f"--{name} must be at least 1"
    if args.nodes < 2:
        return "--nodes must be at least 2 (contention needs two)"
    return profile.check(getattr(args, "profile", None))


def measure(args: argparse.Namespace, progress: Progress, log_dir: Path) -> dict:
    return run_with_processes(log_dir, progress, lambda procs: SharingBench(
        procs, args, progress).run())


def run(args: argparse.Namespace) -> int:
    return common.run_benchmark("sharing", args, check_arguments, measure,
                                profile.with_profile(format_table))


class SharingBench:
    def __init__(self, procs: Processes, args: argparse.Namespace, progress: Progress):
        self.procs = procs
        self.args = args
        self.progress = progress
        self.rows = {key: Row(key, label) for key, label in rows_for(args.nodes)}
        self.names = [chr(ord("a") + i) for i in range(args.nodes)]
        self.nodes: dict[str, Worker] = {}
        self.queues = 0
        self.echo = ""  # the echo server's endpoint, once started
        self.profile: dict = {}

    def _endpoint(self, name: str) -> str:
        if self.args.transport == "tcp":
            return "tcp://127.0.0.1:*"
        return f"ipc://{self.procs.log_dir}/{name}.ipc"

    def _share(self, total: int, r: int) -> int:
        rounds = self.args.rounds
        return max(1, (r + 1) * total // rounds - r * total // rounds)

    def _all(self, op: str, operations: int, **fields) -> list[dict]:
        """Every node runs command ``op`` at once; ``operations``: how many each does."""
        deadline = BASE_TIMEOUT_S + PER_OPERATION_TIMEOUT_S * operations * len(self.nodes)
        for w in self.nodes.values():
            w.send(op, **fields)
        return [w.wait(deadline) for w in self.nodes.values()]

    def run(self) -> dict:
        p, a = self.progress, self.args
        p(f"starting a directory ({a.transport}), an echo server and nodes "
          f"{', '.join(self.names)} (the ranks of one job)")
        directory = self.procs.start_directory(self._endpoint("directory"),
                                                 common.SYNC_REGION_BYTES)
        echo = self.echo = self.procs.start_echo(self._endpoint("echo"))
        self.nodes = self.procs.start_workers(directory, self.names, job="bench-sharing")
        first = self.nodes[self.names[0]]
        with common.echo_dealer(echo) as dealer:
            payload = os.urandom(MESSAGE_BYTES)
            common.round_trips(dealer, payload, WARMUP, BASE_TIMEOUT_S)
            first.call("atomic", BASE_TIMEOUT_S, name="warm", n=WARMUP)
            watched = {"directory": self.procs.directory.proc.pid,
                       **{f"agent {n}": w.agent_pid for n, w in self.nodes.items()}}
            with profile.profiled(getattr(a, "profile", None), watched, self.profile):
                for r in range(a.rounds):
                    p(f"round {r + 1}/{a.rounds}")
                    self._round(r, dealer, payload)
        return self._result()

    def _round(self, r: int, dealer, payload: bytes) -> None:
        """Round ``r``: its share of every measurement, one after the other."""
        a, first = self.args, self.nodes[self.names[0]]
        n = self._share(a.operations, r)
        self.rows["rtt"].add(common.round_trips(dealer, payload, n, BASE_TIMEOUT_S))
        echoes = self._all("echo", n, endpoint=self.echo, name=f"echo.{r}", n=n,
                           parties=len(self.nodes), size=MESSAGE_BYTES)
        self.rows["rtt_contended"].add([t for reply in echoes for t in reply["ns"]])
        alone = first.call("atomic", BASE_TIMEOUT_S + PER_OPERATION_TIMEOUT_S * n,
                           name=f"alone.{r}", n=n)
        self._check_counter(alone["value"], n, "alone")
        self.rows["atomic"].add(alone["ns"])
        together = self._all("atomic", n, name=f"together.{r}", n=n,
                             parties=len(self.nodes))
        self._check_counter(max(t["value"] for t in together), n * len(self.nodes),
                            "contended")
        self.rows["atomic_contended"].add([t for reply in together for t in reply["ns"]])
        for key in (*LOCKED_QUEUES, "queue_atomic"):
            self._queue(self._share(a.tasks, r), key)
        for key, (kind, elements, divisor) in COLLECTIVES.items():
            k = max(1, self._share(a.collectives, r) // divisor)
            replies = self._all("collective", k, kind=kind, n=k, elements=elements)
            self.rows[key].add([t for reply in replies for t in reply["ns"]])

    def _check_counter(self, value: int, expected: int, what: str) -> None:
        if value != expected:
            raise BenchError(f"the {what} atomic counter holds {value} after {expected} "
                             "fetch_adds")

    def _queue(self, tasks: int, key: str) -> None:
        """A work queue of ``tasks`` taken by every node, the way row ``key`` says."""
        self.queues += 1
        consistency, guarded = LOCKED_QUEUES.get(key, ("sequential", False))
        replies = self._all("queue", tasks, name=f"queue.{self.queues}", tasks=tasks,
                            parties=len(self.nodes), atomic=key == "queue_atomic",
                            consistency=consistency, guarded=guarded)
        taken = sum(reply["taken"] for reply in replies)
        if taken != tasks:
            raise BenchError(f"a work queue of {tasks} tasks handed out {taken} ({key})")
        wall = max(reply["wall_ns"] for reply in replies)
        self.rows[key].add([wall // tasks])

    def _result(self) -> dict:
        base = self.rows["rtt"].stats()["median_us"]
        rows = []
        for row in self.rows.values():
            st = row.stats()
            if row.key.startswith("queue"):
                st["n"] = self.args.tasks  # one value per round: n counts the tasks
            rows.append({"key": row.key, "label": row.label, **st,
                         "ratio": st["median_us"] / base if base else float("nan"),
                         "round_medians_us": row.round_medians_us})
        return {
            **self.profile,
            "benchmark": "sharing",
            "config": {k: getattr(self.args, k) for k in ("nodes", "operations", "tasks",
                                                          "collectives", "rounds", "transport")},
            "environment": environment(),
            "rows": rows,
            "samples_ns": {row.key: row.samples_ns for row in self.rows.values()},
        }


def format_table(result: dict) -> str:
    cfg, env = result["config"], result["environment"]
    head = (f"dsm bench sharing: transport {cfg['transport']}, {cfg['nodes']} nodes, "
            f"{cfg['operations']} atomic operations, {cfg['tasks']} tasks a queue, "
            f"{cfg['collectives']} collectives, {cfg['rounds']} rounds; ratio = median / "
            f"round-trip median (pyzmq {env['pyzmq']}, libzmq {env['libzmq']}, "
            f"{env['cpus']} cpus)")
    contended = next(r for r in result["rows"] if r["key"] == "atomic_contended")
    verdict = "ok" if contended["ratio"] <= CONTENDED_TARGET else "MISSED"
    echoes = next((r for r in result["rows"] if r["key"] == "rtt_contended"), None)
    floor = (f"; {contended['median_us'] / echoes['median_us']:.2f}x the round trip contended "
             "the same way" if echoes and echoes["median_us"] else "")
    guarded = next((r for r in result["rows"] if r["key"] == "queue_guarded"), None)
    unguarded = next((r for r in result["rows"] if r["key"] == "queue_lock_release"), None)
    return "\n".join([head, common.text_table(
        ["measurement", "n", "median µs", "p90 µs", "p99 µs", "ratio"],
        [[r["label"], str(r["n"]), f"{r['median_us']:.1f}", f"{r['p90_us']:.1f}",
          f"{r['p99_us']:.1f}", f"{r['ratio']:.2f}x"] for r in result["rows"]]),
                      f"contended fetch_add: {contended['ratio']:.2f}x the round trip "
                      f"(target <= {CONTENDED_TARGET:g}x: {verdict}){floor}"]
                     + ([f"a task under a guarded lock: {guarded['ratio']:.2f}x the round trip "
                         f"(target <= {GUARDED_TARGET:g}x: "
                         f"{'ok' if guarded['ratio'] <= GUARDED_TARGET else 'MISSED'}), "
                         f"{unguarded['median_us'] / guarded['median_us']:.2f}x faster than "
                         "without guards"] if guarded and unguarded else []))


def summary(result: dict) -> list[dict]:
    """The combined table's rows (``dsm bench``): against the round trip; the contended atomic
    has its target."""
    rows = []
    for r in result["rows"]:
        samples = np.asarray(result["samples_ns"][r["key"]], dtype=np.float64) / common.NS_PER_US
        if r["key"] == "rtt":
            rows.append(common.summary_row("sharing", "sharing_rtt", r["label"], "µs", samples,
                                           is_baseline=True))
            continue
        target = {"atomic_contended": CONTENDED_TARGET,
                  "queue_guarded": GUARDED_TARGET}.get(r["key"])
        rows.append(common.summary_row("sharing", r["key"], r["label"], "µs", samples,
                                       ratio=r["ratio"], baseline="sharing_rtt", n=r["n"],
                                       at_most=target))
    return rows
