"""The measurements of ``dsm bench fault`` (``FaultBench``): one run's processes started (a
directory, an echo server, the floors' processes and nodes a, b, c; with keys a keyed directory
and nodes ka, kb, kc), the pages of every measurement prepared, the faults timed in interleaved
rounds with the counters, CPU time and traffic they caused, and the writes checked at the end.

What each row is, its target and floor, and the result and table made of the rows are
``dsm.bench.fault_rows``'s; the command and its options are ``dsm.bench.fault``'s.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import zmq

from dsm.bench import common, floor, profile
from dsm.bench.common import TRAFFIC_DIRECTIONS, BenchError, Progress, environment
from dsm.bench.fault_rows import (CURVE_SUFFIX, FLOOR_KEYS, curve_cost, floor_of, new_rows,
                                  row_results)
from dsm.bench.procs import Processes, Worker, children_of, sched_ns
from dsm.managers import DEFAULT_MANAGER, MANAGER_ENV

#: the measured pages are this far apart (no two of them neighbours)
SET_STRIDE_PAGES = 2
WARMUP_PAGES = 50
#: pages per written set read back at the end to check that the writes landed
VERIFY_PAGES = 200
WARMUP_ROUND_TRIPS = 200
#: a worker command's deadline: this much, plus PER_PAGE_TIMEOUT_S for each page it touches
BASE_TIMEOUT_S = 30.0
PER_PAGE_TIMEOUT_S = 0.02
#: the values written into each set's pages (a page holds value + its page number)
VALUE = {"home": 1 << 20, "owned": 2 << 20, "upgrade": 3 << 20, "miss": 4 << 20, "local": 5 << 20}
#: the keyed cluster's node-name prefix (its row-key suffix is fault_rows.CURVE_SUFFIX)
CURVE_PREFIX = "k"


class FaultBench:
    """One run of ``dsm bench fault`` on ``procs``: ``run()`` starts, prepares, times and checks,
    and returns the result (``fault_rows.row_results`` and the run's config)."""

    def __init__(self, procs: Processes, pages: int, round_trips: int, rounds: int,
                 transport: str, message_bytes: int, seed: int, progress: Progress,
                 keys_dir: Path | None = None, profile_dir: str | None = None):
        self.procs = procs
        #: where py-spy's flame graphs of the timed rounds go (None: not profiled)
        self.profile_dir = profile_dir
        self.profile: dict = {}
        self.keys_dir = keys_dir
        #: node-name prefixes of the clusters measured: the open one, and the keyed one
        self.clusters = [""] + ([CURVE_PREFIX] if keys_dir is not None else [])
        self.pages = pages
        self.round_trips = round_trips
        self.rounds = rounds
        self.transport = transport
        self.message_bytes = message_bytes
        self.progress = progress
        # the directories started here run $DSM_MANAGER (``dsm bench --manager`` sets it)
        self.rows = new_rows(message_bytes, keyed=keys_dir is not None,
                             manager=os.environ.get(MANAGER_ENV) or DEFAULT_MANAGER.value)
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
        with common.echo_dealer(echo) as dealer:
            payload = os.urandom(self.message_bytes)
            self._round_trips(dealer, payload, WARMUP_ROUND_TRIPS)
            watched = {name: pid for name, pid in self.pids.items()
                       if name.startswith(("agent", "directory"))}
            with profile.profiled(self.profile_dir, watched, self.profile):
                for r in range(self.rounds):
                    p(f"round {r + 1}/{self.rounds}")
                    self._round(r, dealer, payload)
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
        # owned: A writes and keeps it; B read it once before A's last write (its copy
        # invalidated): under the dynamic manager B knows A as the owner and asks it straight
        # (2 hops), the others' directories fetch it from A as before (3 hops)
        self._touch(a, s["owned"], write=True, value=v["owned"] - 1)
        self._touch(b, s["owned"], expect=v["owned"] - 1)
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

    def _cpu(self) -> dict[str, tuple[int, int, int]]:
        """Each process's time on a CPU and in the run queue, and its wake-ups, so far
        (``sched_ns``)."""
        return {name: sched_ns(pid) for name, pid in self.pids.items()}

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
        rows = row_results(self.rows, self.warnings)
        return {
            **self.profile,
            "benchmark": "fault",
            "floor_of": {key: floor_of(key) for key in self.rows if floor_of(key) is not None},
            "config": {"pages": self.pages, "round_trips": self.round_trips,
                       "rounds": self.rounds, "transport": self.transport,
                       "message_bytes": self.message_bytes,
                       "keys": str(self.keys_dir) if self.keys_dir is not None else None},
            "curve_cost": curve_cost(self.rows),
            "environment": environment(),
            "rows": rows,
            "samples_ns": {row.key: row.samples_ns for row in self.rows.values()},
            "warnings": self.warnings,
        }
