"""``dsm bench scan``: moving many pages, beside bare ZeroMQ streaming measured in the same run.

One run starts a directory, the baselines' servers (a PULL end and an echo server) and three
nodes (A, B, C), each a worker process attached with ``dsm.attach`` (so with its own agent):

=================  ==============================================================================
stream             the baseline: this process PUSHes ``--mib`` MiB to a PULL child in 64 KiB frames
                   with ``copy=False``, over the same transport; MB/s timed by the receiver
sequential scan    A writes a fresh ``--mib`` MiB int64 array (word i = V + i), then B reads all of
                   it in one numpy pass (``arr.sum()``), timed in B: its pages come from A through
                   the directory, in batches, ahead of B's faults (read-ahead); MB/s
round trip         a bare pyzmq DEALER/ROUTER round trip of 4 KiB (as in ``dsm bench fault``)
random reads       C, which has not read the array, reads one word of each of ``--random-pages``
                   pages in random order (their home copy is at the directory since B's scan):
                   a page per round trip at best; pages/s beside 1 / the round trip's median
numpy first touch  the baseline: A zero-fills a fresh numpy array of ``--first-touch-mib`` MiB
                   and writes it in order (the kernel's zero pages as it goes); ms
memfd first touch  the floor of the region's backing: A writes in order a fresh memfd of that
                   size mapped shared, as the DSM region is, with no uffd (the kernel's shmem
                   pages as it goes: several times numpy's anonymous ones); ms
first touch        A writes a fresh DSM array of that size in order: the directory grants the
                   untouched pages in runs (zeros, no bytes); ms, beside the numpy and memfd runs
                   just before (its ratio to each)
=================  ==============================================================================

Streams and scans alternate (``--repeats`` of each; every scan reads an array of its own, written
just before), and random reads alternate with round trips, so that a noisy stretch of the
machine touches both sides of a ratio alike. What B read is checked (the sum, the first word of
every page), as is every word C read.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import numpy as np
import zmq

from dsm.bench import common
from dsm.bench.common import (BYTES_PER_MB, BYTES_PER_MIB, NS_PER_S, NS_PER_US, US_PER_S,
                              BenchError, Progress)
from dsm.bench.procs import Processes, Worker, cpu_ns, run_with_processes
from dsm.keys import add_keys_argument, keys_dir_from

DEFAULT_MIB = 256
DEFAULT_REPEATS = 3
DEFAULT_RANDOM_PAGES = 2000
DEFAULT_ROUND_TRIPS = 1000
DEFAULT_ROUNDS = 4
#: the fresh array whose first touch is timed (32 MiB: the issue's figure), and how many times
DEFAULT_FIRST_TOUCH_MIB = 32
FIRST_TOUCH_REPEATS = 5
#: target: the first touch's time over numpy's zero-fill and write of the same size
FIRST_TOUCH_TARGET = 3.0
#: what each first touch is timed beside, just before it (``op_first_touch``'s baselines)
FIRST_TOUCH_BASELINES = ("numpy", "memfd")
NS_PER_MS = 1_000_000
#: the streaming baseline's frame, and the round trip's message (one page)
FRAME_BYTES = 64 << 10
MESSAGE_BYTES = 4096
#: target: the scan's MB/s over the stream's (issue 24's: the scan was 0.47x the stream)
SCAN_TARGET = 0.65
#: the warm-up array and stream (every code path once, untimed)
WARMUP_MIB = 4
WARMUP_ROUND_TRIPS = 200
#: region room beyond the arrays (the warm-up array, allocations' alignment)
REGION_SPARE_BYTES = 64 << 20
#: deadlines: this much, plus so much per MiB moved or per page touched
BASE_TIMEOUT_S = 30.0
PER_MIB_TIMEOUT_S = 0.5
PER_PAGE_TIMEOUT_S = 0.02
#: repeat k's array holds (k + 1) * VALUE_STEP + i in word i (sums stay well inside int64)
VALUE_STEP = 1 << 30
INT64_BYTES = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = {"mib": DEFAULT_MIB, "repeats": DEFAULT_REPEATS, "random_pages": DEFAULT_RANDOM_PAGES,
         "round_trips": DEFAULT_ROUND_TRIPS}
    parser.add_argument("--mib", type=int, default=d["mib"],
                        help=f"MiB of the array scanned and of each stream (default {d['mib']})")
    parser.add_argument("--repeats", type=int, default=d["repeats"],
                        help=f"scans (each of a freshly written array) and streams "
                             f"(default {d['repeats']})")
    parser.add_argument("--random-pages", type=int, default=d["random_pages"],
                        help=f"pages read in random order by a node that has not read the array "
                             f"(default {d['random_pages']})")
    parser.add_argument("--round-trips", type=int, default=d["round_trips"],
                        help=f"bare 4 KiB round trips (default {d['round_trips']})")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random reads' order")
    parser.add_argument("--first-touch-mib", type=int, default=DEFAULT_FIRST_TOUCH_MIB,
                        help="MiB of the fresh array whose first touch is timed (default "
                             f"{DEFAULT_FIRST_TOUCH_MIB})")
    add_keys_argument(parser, "the directory and the nodes use those CurveZMQ keys (the stream "
                              "baseline stays plain ZeroMQ: the ratio then shows CURVE's cost)")

    common.add_transport_argument(parser)
    common.add_output_arguments(parser)

def check_arguments(args: argparse.Namespace) -> str | None:
    for name in ("mib", "repeats", "random_pages", "round_trips", "first_touch_mib"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    if args.random_pages > args.mib * BYTES_PER_MIB // os.sysconf("SC_PAGE_SIZE"):
        return "--random-pages must not exceed the array's pages"
    return None


def measure(args: argparse.Namespace, progress: Progress, log_dir: Path) -> dict:
    """Run the benchmark (its processes log into ``log_dir``); its result. Raises BenchError."""
    return run_with_processes(log_dir, progress,
                              lambda procs: ScanBench(procs, args, progress).run())


class ScanBench:
    def __init__(self, procs: Processes, args: argparse.Namespace, progress: Progress):
        self.procs = procs
        self.mib = args.mib
        self.repeats = args.repeats
        self.random_pages = args.random_pages
        self.round_trips = args.round_trips
        self.rounds = min(DEFAULT_ROUNDS, args.random_pages, args.round_trips)
        self.transport = args.transport
        self.seed = args.seed
        self.first_touch_mib = args.first_touch_mib
        self.progress = progress
        self.keys_dir = keys_dir_from(getattr(args, "keys", None))
        self.page_bytes = os.sysconf("SC_PAGE_SIZE")
        self.pages = self.mib * BYTES_PER_MIB // self.page_bytes
        self.words_per_page = self.page_bytes // INT64_BYTES
        self.nodes: dict[str, Worker] = {}
        self.pids: dict[str, int | None] = {}
        self.samples: dict[str, list] = {"stream_mbps": [], "scan_mbps": [], "fill_mbps": [],
                                         "rtt_ns": [], "random_ns": [], "first_touch_ms": [],
                                         "numpy_first_touch_ms": [], "memfd_first_touch_ms": []}
        #: node a's page requests per first touch of a fresh array
        self.first_touch_requests: list[int] = []
        self.cpu_scan_ns: dict[str, int] = {}
        self.scan_ns = 0
        self.scan_counters: dict[str, int] = {}

    def _node(self, node: str, op: str, timeout_s: float = BASE_TIMEOUT_S, **args) -> dict:
        return self.nodes[node].call(op, timeout_s, **args)

    def _move_timeout(self, mib: int) -> float:
        return BASE_TIMEOUT_S + PER_MIB_TIMEOUT_S * mib

    # --- the run -----------------------------------------------------------------------------------
    def run(self) -> dict:
        p = self.progress
        region = ((self.repeats * self.mib + FIRST_TOUCH_REPEATS * self.first_touch_mib)
                  * BYTES_PER_MIB + REGION_SPARE_BYTES)
        p(f"starting a directory ({self.transport}, {region >> 20} MiB region), a PULL and an echo "
          "server, nodes a, b, c")
        log_dir = self.procs.log_dir
        keys = str(self.keys_dir) if self.keys_dir is not None else None
        if keys is not None:
            p(f"the directory and the nodes use the CurveZMQ keys of {keys}")
        directory = self.procs.start_directory(common.endpoint(self.transport, log_dir, "dir"),
                                               region, keys)
        pull = self.procs.start_pull(common.endpoint(self.transport, log_dir, "pull"))
        echo = self.procs.start_echo(common.endpoint(self.transport, log_dir, "echo"))
        self.nodes = self.procs.start_workers(directory, ["a", "b", "c"], keys)
        self.pids = {"directory": self.procs.directory.proc.pid}
        for name, w in self.nodes.items():
            self.pids[f"agent {name}"] = w.agent_pid
            self.pids[f"workload {name}"] = w.proc.pid
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        dealer = ctx.socket(zmq.DEALER)
        for sock in (push, dealer):
            sock.setsockopt(zmq.LINGER, 0)
        try:
            push.connect(pull)
            dealer.connect(echo)
            data = np.arange(self.mib * BYTES_PER_MIB // INT64_BYTES, dtype=np.int64)
            p("warming up (a small stream, array and scan, untimed)")
            self._stream(push, memoryview(data).cast("B")[:WARMUP_MIB * BYTES_PER_MIB])
            self._fill_and_scan("warm", WARMUP_MIB, 0, timed=False)
            for k in range(self.repeats):
                p(f"repeat {k + 1}/{self.repeats}: stream {self.mib} MiB")
                self.samples["stream_mbps"].append(self._stream(push, memoryview(data).cast("B")))
                p(f"repeat {k + 1}/{self.repeats}: a writes {self.mib} MiB, b scans it")
                self._fill_and_scan(f"scan{k}", self.mib, self._value(k), timed=True)
                p(f"repeat {k + 1}/{self.repeats}: stream {self.samples['stream_mbps'][-1]:.0f} "
                  f"MB/s, scan {self.samples['scan_mbps'][-1]:.0f} MB/s")
            del data
            self._first_touches()
            self._random(dealer)
        finally:
            push.close(0)
            dealer.close(0)
            ctx.term()
        return self._result()

    def _value(self, k: int) -> int:
        return (k + 1) * VALUE_STEP

    def _stream(self, push: zmq.Socket, data: memoryview) -> float:
        """Push ``data`` in frames to the PULL end; the MB/s it timed."""
        push.send(b"S")
        for off in range(0, len(data), FRAME_BYTES):
            push.send(data[off:off + FRAME_BYTES], copy=False)
        push.send(b"")
        timeout_s = self._move_timeout(len(data) // BYTES_PER_MIB)
        report = json.loads(self.procs.pull.line(timeout_s, "the PULL end's report"))
        if report["bytes"] != len(data):
            raise BenchError(f"the PULL end received {report['bytes']} bytes, not {len(data)}")
        return report["bytes"] / BYTES_PER_MB / (report["ns"] / NS_PER_S)

    def _fill_and_scan(self, name: str, mib: int, value: int, timed: bool) -> None:
        pages = mib * BYTES_PER_MIB // self.page_bytes
        for node in ("a", "b"):
            self._node(node, "array", name=name, pages=pages)
        timeout_s = self._move_timeout(mib)
        fill = self._node("a", "fill", timeout_s, value=value)
        counters = self._node("b", "stats")["stats"]["counters"]
        cpu = {k: cpu_ns(pid) for k, pid in self.pids.items()}
        reply = self._node("b", "scan", timeout_s, value=value)
        if timed:
            after = {k: cpu_ns(pid) for k, pid in self.pids.items()}
            for k, t in after.items():
                self.cpu_scan_ns[k] = self.cpu_scan_ns.get(k, 0) + t - cpu.get(k, t)
            self.scan_ns += reply["ns"]
            for k, v in self._node("b", "stats")["stats"]["counters"].items():
                self.scan_counters[k] = self.scan_counters.get(k, 0) + v - counters.get(k, 0)
        if not reply["sum_ok"] or reply["n_bad"]:
            raise BenchError(f"node b read array {name} wrong: sum {'ok' if reply['sum_ok'] else 'wrong'}"
                             f", {reply['n_bad']} pages wrong ([page, first word]: {reply['bad']})")
        if timed:
            nbytes = mib * BYTES_PER_MIB
            self.samples["fill_mbps"].append(nbytes / BYTES_PER_MB / (fill["ns"] / NS_PER_S))
            self.samples["scan_mbps"].append(nbytes / BYTES_PER_MB / (reply["ns"] / NS_PER_S))

    def _first_touches(self) -> None:
        """A writes fresh arrays in order, each after a fresh numpy array and a fresh memfd of
        the same size (the baselines)."""
        pages = self.first_touch_mib * BYTES_PER_MIB // self.page_bytes
        timeout_s = self._move_timeout(self.first_touch_mib)
        for k in range(FIRST_TOUCH_REPEATS):
            self.progress(f"first touch {k + 1}/{FIRST_TOUCH_REPEATS}: a writes a fresh "
                          f"{self.first_touch_mib} MiB numpy array, memfd, then DSM array")
            self._node("a", "array", name=f"fresh{k}", pages=pages)
            before = self._node("a", "stats")["stats"]["counters"].get("requests", 0)
            for baseline in FIRST_TOUCH_BASELINES + (None,):
                reply = self._node("a", "first_touch", timeout_s, value=self._value(k),
                                   baseline=baseline)
                if reply["n_bad"]:
                    raise BenchError(f"node a's first touch of a fresh {baseline or 'DSM'} array "
                                     f"left {reply['n_bad']} pages without the value written")
                key = f"{baseline}_first_touch_ms" if baseline else "first_touch_ms"
                self.samples[key].append(reply["ns"] / NS_PER_MS)
            after = self._node("a", "stats")["stats"]["counters"].get("requests", 0)
            self.first_touch_requests.append(after - before)

    def _random(self, dealer: zmq.Socket) -> None:
        """C reads random pages of the first array, in rounds alternating with round trips."""
        p = self.progress
        pages = random.Random(self.seed).sample(range(self.pages), self.random_pages)
        self._node("c", "array", name="scan0", pages=self.pages)
        payload = os.urandom(MESSAGE_BYTES)
        common.round_trips(dealer, payload, WARMUP_ROUND_TRIPS, BASE_TIMEOUT_S)
        for r in range(self.rounds):
            p(f"random reads, round {r + 1}/{self.rounds}")
            n_rtt = (r + 1) * self.round_trips // self.rounds - r * self.round_trips // self.rounds
            self.samples["rtt_ns"] += common.round_trips(dealer, payload, n_rtt, BASE_TIMEOUT_S)
            chunk = pages[r * len(pages) // self.rounds:(r + 1) * len(pages) // self.rounds]
            reply = self._node("c", "time", BASE_TIMEOUT_S + PER_PAGE_TIMEOUT_S * len(chunk),
                               pages=chunk, expect=self._value(0), stride=self.words_per_page)
            if reply["n_bad"]:
                raise BenchError(f"node c read {reply['n_bad']} pages wrong ([page, word]: "
                                 f"{reply['bad']})")
            self.samples["random_ns"] += reply["samples_ns"]

    # --- the result --------------------------------------------------------------------------------
    def _result(self) -> dict:
        s = self.samples
        stream, scan = float(np.median(s["stream_mbps"])), float(np.median(s["scan_mbps"]))
        rtt_us = float(np.median(s["rtt_ns"])) / NS_PER_US
        random_us = float(np.median(s["random_ns"])) / NS_PER_US
        one_per_rtt = US_PER_S / rtt_us
        scan_s = self.scan_ns / NS_PER_S
        return {
            "benchmark": "scan",
            "config": {"mib": self.mib, "repeats": self.repeats, "random_pages": self.random_pages,
                       "round_trips": self.round_trips, "transport": self.transport,
                       "frame_bytes": FRAME_BYTES, "message_bytes": MESSAGE_BYTES,
                       "keys": str(self.keys_dir) if self.keys_dir is not None else None},
            "environment": common.environment(),
            "stream_mbps": stream, "scan_mbps": scan, "scan_ratio": scan / stream,
            "scan_target": SCAN_TARGET,
            "rtt_median_us": rtt_us, "random_median_us": random_us,
            #: rates as 1 / the median time of one read or round trip
            "random_pages_per_s": US_PER_S / random_us,
            "one_page_per_round_trip_per_s": one_per_rtt,
            "random_ratio": rtt_us / random_us,
            #: all the random reads over the time they took together (the tail included)
            "random_pages_per_s_overall": len(s["random_ns"]) / (sum(s["random_ns"]) / NS_PER_S),
            #: where the scans' time went: each process's CPU time over the scans' wall time
            "scan_cpu_cores": {k: v / NS_PER_S / scan_s for k, v in sorted(self.cpu_scan_ns.items())
                               if scan_s},
            "scan_counters": self.scan_counters,
            "first_touch_mib": self.first_touch_mib,
            "first_touch_ratio": (float(np.median(s["first_touch_ms"]))
                                  / float(np.median(s["numpy_first_touch_ms"]))),
            "first_touch_target": FIRST_TOUCH_TARGET,
            "first_touch_memfd_ratio": (float(np.median(s["first_touch_ms"]))
                                        / float(np.median(s["memfd_first_touch_ms"]))),
            "first_touch_requests": self.first_touch_requests,
            "samples": s,
        }


def summary(result: dict) -> list[dict]:
    """The combined table's rows (``dsm bench``)."""
    s, cfg = result["samples"], result["config"]
    mib = cfg["mib"]
    rtt_us = np.asarray(s["rtt_ns"], dtype=np.float64) / NS_PER_US
    random_us = np.asarray(s["random_ns"], dtype=np.float64) / NS_PER_US
    return [
        common.summary_row("scan", "stream", f"zmq PUSH/PULL stream, 64 KiB frames ({mib} MiB)",
                           "MB/s", s["stream_mbps"], is_baseline=True),
        common.summary_row("scan", "scan", f"sequential read of {mib} MiB written by another node",
                           "MB/s", s["scan_mbps"], ratio=result["scan_ratio"], baseline="stream",
                           at_least=result["scan_target"]),
        common.summary_row("scan", "one_per_rtt", "1 page per 4 KiB round trip (1 / round trip)",
                           "pages/s", US_PER_S / rtt_us, is_baseline=True),
        common.summary_row("scan", "random", "random 4 KiB reads of that array (fresh node)",
                           "pages/s", US_PER_S / random_us, ratio=result["random_ratio"],
                           baseline="one_per_rtt"),
    ] + _first_touch_rows(result)


def _first_touch_rows(result: dict) -> list[dict]:
    s = result["samples"]
    if not s.get("first_touch_ms"):  # (a result from before the figure)
        return []
    mib = result["first_touch_mib"]
    return [
        common.summary_row("scan", "numpy_first_touch",
                           f"numpy: zero-fill and write {mib} MiB in order", "ms",
                           s["numpy_first_touch_ms"], is_baseline=True),
    ] + ([
        common.summary_row("scan", "memfd_first_touch",
                           f"shared memfd (the region's backing, no uffd): write {mib} MiB",
                           "ms", s["memfd_first_touch_ms"], is_baseline=True),
    ] if s.get("memfd_first_touch_ms") else []) + [
        common.summary_row("scan", "first_touch",
                           f"first touch of a fresh {mib} MiB array, one node, in order", "ms",
                           s["first_touch_ms"], ratio=result["first_touch_ratio"],
                           baseline="numpy_first_touch", at_most=result["first_touch_target"]),
    ]


def format_table(result: dict) -> str:
    cfg, env = result["config"], result["environment"]
    title = (f"dsm bench scan: transport {cfg['transport']}, {cfg['mib']} MiB x {cfg['repeats']} "
             f"(scans and streams alternating), {cfg['random_pages']} random pages, "
             f"{cfg['round_trips']} round trips"
             + (f", CurveZMQ keys {cfg['keys']}" if cfg.get("keys") else "")
             + "; ratio = rate / the baseline's rate "
             f"(pyzmq {env['pyzmq']}, libzmq {env['libzmq']}, {env['cpus']} cpus)")
    out = [common.format_summary(summary(result), title)]
    cores = ", ".join(f"{k} {v:.2f}" for k, v in sorted(result["scan_cpu_cores"].items(),
                                                         key=lambda kv: -kv[1]) if v >= 0.01)
    c = result["scan_counters"]
    out.append(f"during the scans: CPU cores busy by process (all threads): {cores or '-'}; "
               f"node b: {c.get('requests', 0)} requests ({c.get('readahead_requests', 0)} "
               f"ahead of faults), {c.get('pages_in', 0)} pages in, "
               f"{c.get('faults_missing_read', 0)} faults")
    out.append(f"a's writes of fresh pages (zero-filled by the directory): "
               f"{np.median(result['samples']['fill_mbps']):.0f} MB/s median")
    if result.get("first_touch_requests"):
        out.append(f"first touch of a fresh {result['first_touch_mib']} MiB array "
                   f"({result['first_touch_mib'] * BYTES_PER_MIB // os.sysconf('SC_PAGE_SIZE')} "
                   f"pages): node a's page requests per touch "
                   f"{', '.join(map(str, result['first_touch_requests']))}")
    if result.get("first_touch_memfd_ratio"):
        out.append(f"first touch of a fresh DSM array / of a fresh shared memfd (the floor of "
                   f"the region's backing): {result['first_touch_memfd_ratio']:.2f}x")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    return common.run_benchmark("scan", args, check_arguments, measure, format_table)

