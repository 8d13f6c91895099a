"""A node process driven by a benchmark: ``python -m dsm.bench.worker DIRECTORY NODE_NAME``.

It attaches with ``dsm.attach(directory=..., node_name=...)`` (which starts the node's agent as a
child process), then answers commands, one JSON object a line on stdin, one JSON reply a line on
stdout (``{"ok": true, ...}`` or ``{"ok": false, "error": traceback}``):

    {"op": "array", "name": N, "pages": P}    map the int64 array N of P pages
    {"op": "touch", "pages": [...], "write": bool, "value": V}
                                              untimed: read (or write V + page) one word per page
    {"op": "time", "pages": [...], "write": bool, "value": V}
                                              time one access per page, in ns
    {"op": "fill", "value": V}                write the whole array in order, word i = V + i
    {"op": "scan", "value": V}                time one numpy pass over the whole array
                                              (``arr.sum()``), then check it held V + i
    {"op": "first_touch", "value": V, "baseline": None|"numpy"|"memfd"}
                                              time writing V to every word of the array in order
                                              (its first touch if it is fresh); with a baseline,
                                              of a fresh array of the same size instead, zero-
                                              filled by the kernel as it is written: anonymous
                                              memory (numpy's), or a shared mapping of a fresh
                                              memfd (the DSM region's backing, without uffd)
    {"op": "stats"}                           the node's counters (``node.stats()``)
    {"op": "lock", "name": L, "n": K, "parties": P, "counter": C}
                                              time K acquire/release pairs of lock L (P workers
                                              start together; C: a shared counter incremented in
                                              each critical section)
    {"op": "atomic", "name": A, "n": K, "parties": P}
                                              time K fetch_adds on atomic array A (P workers
                                              start together)
    {"op": "echo", "endpoint": E, "name": B, "n": K, "parties": P, "size": S}
                                              time K round trips of S bytes through the bare
                                              echo server at E (P workers start together, at
                                              barrier B): the round trip under the same
                                              contention as the atomics'
    {"op": "queue", "name": Q, "tasks": T, "parties": P, "atomic": bool,
     "consistency": "sequential" or "release", "guarded": bool}
                                              take tasks 0..T-1 from a shared work queue with the
                                              P workers: the next task's number taken by an atomic
                                              fetch_add, or read and bumped in a shared int64
                                              under a lock (the old way); wall time and tasks taken
    {"op": "collective", "kind": "allreduce"|"bcast"|"allgather"|"barrier", "n": K,
     "elements": E}
                                              time K collectives of this job's ranks on E float64
                                              (0: a Python float); a barrier step writes the
                                              rank's int64 of a release array (a page each),
                                              waits, and reads and checks its neighbour's
    {"op": "spawn"}                           fork a second local process of this node: a child
                                              that serves the same commands over a pipe
    {"op": "child", "command": {...}}         run a command in that child
    {"op": "reap"}                            end the child

Reads check the word they read against ``expect + page * stride`` (``expect`` and ``stride``,
default 1, given in the command; ``stride`` = words per page for an array ``fill`` wrote): a page
served wrong (say, zero) is reported, never silently timed.
"""

from __future__ import annotations

import contextlib
import gc
import json
import mmap
import os
import select
import sys
import time
import traceback

import numpy as np

import dsm

#: how long a forked child may take to answer a command
FORK_TIMEOUT_S = 60.0
#: how long the echo server may take to answer one round trip
ECHO_TIMEOUT_S = 10.0
#: words written per numpy call by ``fill`` (8 MiB of int64: fast, and no array-sized temporary)
FILL_CHUNK_WORDS = 1 << 20


class Worker:
    def __init__(self, node: dsm.Node):
        self.node = node
        self.words_per_page = node.layout.page_size // np.dtype(np.int64).itemsize
        self.arr: np.ndarray | None = None

    def op_array(self, name: str, pages: int) -> dict:
        self.arr = self.node.array(name, (pages * self.words_per_page,), np.int64)
        return {"page_size": self.node.layout.page_size, "base": self.node.address_of(self.arr)}

    def op_touch(self, pages: list[int], write: bool = False, value: int = 0,
                 expect: int | None = None, stride: int = 1) -> dict:
        arr, wpp = self.arr, self.words_per_page
        bad = []
        for pg in pages:
            if write:
                arr[pg * wpp] = value + pg
            else:
                x = int(arr[pg * wpp])
                if expect is not None and x != expect + pg * stride:
                    bad.append([pg, x])
        return {"bad": bad[:10], "n_bad": len(bad)}

    def _timed(self, pages: list[int], write: bool, value: int, expect: int | None,
               stride: int = 1) -> dict:
        arr, wpp = self.arr, self.words_per_page
        pc = time.perf_counter_ns
        samples = [0] * len(pages)
        seen = [0] * len(pages)
        gc.disable()
        try:
            if write:
                for k, pg in enumerate(pages):
                    i = pg * wpp
                    v = value + pg
                    t0 = pc()
                    arr[i] = v
                    t1 = pc()
                    samples[k] = t1 - t0
            else:
                for k, pg in enumerate(pages):
                    i = pg * wpp
                    t0 = pc()
                    x = arr[i]
                    t1 = pc()
                    samples[k] = t1 - t0
                    seen[k] = x
        finally:
            gc.enable()
        bad = []
        if not write and expect is not None:
            bad = [[pg, int(x)] for pg, x in zip(pages, seen) if int(x) != expect + pg * stride]
        return {"samples_ns": samples, "bad": bad[:10], "n_bad": len(bad)}

    def op_time(self, pages: list[int], write: bool = False, value: int = 0,
                expect: int | None = None, stride: int = 1) -> dict:
        return self._timed(pages, write, value, expect, stride)

    def op_fill(self, value: int) -> dict:
        """Write the whole array in order (word i holds ``value + i``), a chunk per numpy call."""
        arr = self.arr
        t0 = time.perf_counter_ns()
        for lo in range(0, len(arr), FILL_CHUNK_WORDS):
            hi = min(lo + FILL_CHUNK_WORDS, len(arr))
            arr[lo:hi] = np.arange(lo + value, hi + value, dtype=np.int64)
        return {"ns": time.perf_counter_ns() - t0}

    def op_first_touch(self, value: int, baseline: str | None = None) -> dict:
        """Time the first touch of a fresh array written in order: the DSM array (``array``
        before; zeros granted by the directory), or a baseline of its size, zeros from the
        kernel: ``numpy`` (anonymous memory) or ``memfd`` (a fresh memfd mapped shared, as the
        DSM region is, with no uffd: what the region's backing costs by itself); then check
        (untimed) the first word of each page."""
        words = len(self.arr)
        with contextlib.ExitStack() as stack:
            if baseline == "memfd":
                nbytes = words * self.arr.itemsize
                fd = os.memfd_create("dsm-bench-first-touch", os.MFD_CLOEXEC)
                stack.callback(os.close, fd)
                os.ftruncate(fd, nbytes)
                region = stack.enter_context(mmap.mmap(fd, nbytes, mmap.MAP_SHARED))
            gc.disable()
            try:
                t0 = time.perf_counter_ns()
                if baseline == "numpy":
                    arr = np.zeros(words, dtype=np.int64)
                elif baseline == "memfd":
                    arr = np.frombuffer(region, dtype=np.int64)
                else:
                    arr = self.arr
                for lo in range(0, words, FILL_CHUNK_WORDS):
                    arr[lo:lo + FILL_CHUNK_WORDS] = value
                ns = time.perf_counter_ns() - t0
            finally:
                gc.enable()
            wrong = int(np.count_nonzero(arr[::self.words_per_page] != value))
            del arr  # the mapping closes only once no array views it
        return {"ns": ns, "n_bad": wrong}

    def op_scan(self, value: int) -> dict:
        """Time one sequential numpy pass over the whole array (``arr.sum()``), then check what it
        read: the sum, and (untimed) the first word of every page, against ``fill(value)``."""
        arr, wpp = self.arr, self.words_per_page
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            total = int(arr.sum())
            ns = time.perf_counter_ns() - t0
        finally:
            gc.enable()
        n = len(arr)
        firsts = np.asarray(arr[::wpp])
        wrong = np.flatnonzero(firsts != value + np.arange(0, n, wpp, dtype=np.int64))
        return {"ns": ns, "sum_ok": total == value * n + n * (n - 1) // 2,
                "bad": [[int(pg), int(firsts[pg])] for pg in wrong[:10]], "n_bad": len(wrong)}

    def op_stats(self) -> dict:
        return {"stats": self.node.stats()}

    def op_lock(self, name: str, n: int, parties: int = 1, counter: str | None = None) -> dict:
        """Time ``n`` acquire/release pairs of the lock ``name``, the ``parties`` workers that
        run this together starting at a barrier; with ``counter``, each critical section
        increments that shared int64 (so the lock's holder also takes the counter's page)."""
        lock = self.node.lock(name)
        count = self.node.array(counter, (1,), np.int64) if counter else None
        if parties > 1:
            self.node.barrier(f"{name}.start", parties).wait()
        pc = time.perf_counter_ns
        acquire = [0] * n
        release = [0] * n
        gc.disable()
        try:
            t_start = pc()
            for i in range(n):
                t0 = pc()
                lock.acquire()
                t1 = pc()
                if count is not None:
                    count[0] += 1
                t2 = pc()
                lock.release()
                t3 = pc()
                acquire[i] = t1 - t0
                release[i] = t3 - t2
            wall = pc() - t_start
        finally:
            gc.enable()
        if parties > 1:
            self.node.barrier(f"{name}.end", parties).wait()
        value = int(count[0]) if count is not None else None
        return {"acquire_ns": acquire, "release_ns": release, "wall_ns": wall, "counter": value}

    def op_atomic(self, name: str, n: int, parties: int = 1) -> dict:
        counter = self.node.atomic(name)
        if parties > 1:
            self.node.barrier(f"{name}.start", parties).wait()
        samples = _timed(n, lambda: counter.fetch_add(0, 1))
        if parties > 1:
            self.node.barrier(f"{name}.end", parties).wait()
        return {"ns": samples, "value": counter.load(0)}

    def op_echo(self, endpoint: str, name: str, n: int, parties: int = 1,
                size: int = 64) -> dict:
        from dsm.bench import common

        payload = os.urandom(size)
        with common.echo_dealer(endpoint) as dealer:
            common.round_trips(dealer, payload, 1, ECHO_TIMEOUT_S)  # connected before the start
            if parties > 1:
                self.node.barrier(f"{name}.start", parties).wait()
            gc.disable()
            try:
                samples = common.round_trips(dealer, payload, n, ECHO_TIMEOUT_S)
            finally:
                gc.enable()
        if parties > 1:
            self.node.barrier(f"{name}.end", parties).wait()
        return {"ns": samples}

    def op_queue(self, name: str, tasks: int, parties: int, atomic: bool,
                 consistency: str = "sequential", guarded: bool = False) -> dict:
        """One run of a work queue (the README's first programs): each task is only taken.
        Under a lock, the counter is an array of ``consistency``; ``guarded``: the lock guards
        it (its grant carries the counter's page)."""
        if atomic:
            counter = self.node.atomic(f"{name}.next")
            take = lambda: counter.fetch_add(0, 1)  # noqa: E731
        else:
            shared = self.node.array(f"{name}.next", (1,), np.int64, consistency=consistency)
            lock = self.node.lock(f"{name}.lock", guards=shared if guarded else None)

            def take() -> int:
                with lock:
                    i = int(shared[0])
                    shared[0] = i + 1
                return i
        self.node.barrier(f"{name}.start", parties).wait()
        taken = 0
        t0 = time.perf_counter_ns()
        while take() < tasks:
            taken += 1
        wall = time.perf_counter_ns() - t0
        self.node.barrier(f"{name}.end", parties).wait()
        return {"wall_ns": wall, "taken": taken}

    def op_collective(self, kind: str, n: int, elements: int) -> dict:
        value = float(self.node.rank or 0) if not elements else np.full(elements, 1.0)
        expected = self.node.allreduce(1)  # the job's size, and everyone here
        if kind == "barrier":
            # every rank runs the same commands in the same order: the same names everywhere
            self._barriers += 1
            name = f"bench.barrier.{self._barriers}"
            # a page each, read by the next rank after every barrier (a halo, as Jacobi's):
            # each departure carries the neighbour's notice, and the read fetches its page
            words_apart = self.node.layout.page_size // 8
            cells = self.node.array(name, (expected * words_apart,), np.int64,
                                    consistency="release")
            barrier = self.node.barrier(name, expected)
            rank = self.node.rank or 0
            mine, left = rank * words_apart, (rank - 1) % expected * words_apart
            steps = [0]

            def step() -> None:
                cells[mine] += 1
                barrier.wait()
                steps[0] += 1
                seen = int(cells[left])
                if seen != steps[0]:
                    raise RuntimeError(f"barrier step {steps[0]}: rank {rank} read {seen} in "
                                       "its neighbour's int64")
                barrier.wait()  # (read before the neighbour's next write)
        do = {"allreduce": lambda: self.node.allreduce(value),
              "bcast": lambda: self.node.bcast(value),
              "allgather": lambda: self.node.allgather(value),
              "barrier": lambda: step()}[kind]
        samples = _timed(n, do)
        if kind == "barrier":  # each step's barrier brought every rank's write of it
            seen = [int(cells[r * words_apart]) for r in range(expected)]
            if seen != [n] * expected:
                raise RuntimeError(f"after {n} barrier steps the ranks' int64s read {seen}")
        return {"ns": samples, "size": expected}

    #: barriers measured so far (each run gets names of its own)
    _barriers = 0

    # --- a second local process: a forked child that serves commands over a pipe ----------------
    _child: "ChildProcess | None" = None

    def op_spawn(self) -> dict:
        if self._child is not None:
            raise RuntimeError("a child is running already")
        self._child = ChildProcess.fork(self)
        return {"child_pid": self._child.pid}

    def op_child(self, command: dict, timeout_s: float = FORK_TIMEOUT_S) -> dict:
        if self._child is None:
            raise RuntimeError("no child: spawn one first")
        return self._child.call(command, timeout_s)

    def op_reap(self) -> dict:
        if self._child is not None:
            self._child.close()
            self._child = None
        return {}


class ChildProcess:
    """A forked child of the worker: the same array, served by the same agent (which adopted the
    child's uffd from the Fork event). Commands go down one pipe, replies come up another."""

    def __init__(self, pid: int, to_child: int, from_child: int):
        self.pid, self._to, self._from = pid, to_child, from_child
        self._buf = b""

    @classmethod
    def fork(cls, worker: Worker) -> "ChildProcess":
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.close(down_w)
                os.close(up_r)
                worker._child = None
                _child_loop(worker, down_r, up_w)
                status = 0
            finally:
                os._exit(status)  # never the parent's cleanup: that would stop the node's agent
        os.close(down_r)
        os.close(up_w)
        return cls(pid, down_w, up_r)

    def call(self, command: dict, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        os.write(self._to, json.dumps(command).encode() + b"\n")
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self._from], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                self.close()
                raise TimeoutError(f"the forked child did not answer within {timeout_s} s")
            chunk = os.read(self._from, 1 << 20)
            if not chunk:
                raise RuntimeError("the forked child exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"the forked child failed:\n{reply.get('error')}")
        return reply

    def close(self) -> None:
        for fd in (self._to, self._from):
            try:
                os.close(fd)
            except OSError:
                pass
        _reap(self.pid, time.monotonic() + 5.0)


def _child_loop(worker: Worker, commands: int, replies: int) -> None:
    with os.fdopen(commands, "rb") as inp, os.fdopen(replies, "wb", buffering=0) as out:
        for line in inp:
            request = json.loads(line)
            op = request.pop("op")
            try:
                # not stats: the agent socket is the parent's
                if op not in ("touch", "time"):
                    raise ValueError(f"a child runs touch and time, not {op!r}")
                reply = {"ok": True, **getattr(worker, f"op_{op}")(**request)}
            except Exception:
                reply = {"ok": False, "error": traceback.format_exc()}
            out.write(json.dumps(reply).encode() + b"\n")


def _timed(n: int, operation) -> list[int]:
    """``operation()`` ``n`` times, each timed in ns (the collector off: no pause inside)."""
    pc = time.perf_counter_ns
    samples = [0] * n
    gc.disable()
    try:
        for i in range(n):
            t0 = pc()
            operation()
            samples[i] = pc() - t0
    finally:
        gc.enable()
    return samples


def _reap(pid: int, deadline: float) -> None:
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return
        time.sleep(0.001)


def main(argv: list[str] | None = None) -> int:
    directory, name = (argv or sys.argv[1:])[:2]
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by accident goes to the log, not to the protocol
    try:
        node = dsm.attach(directory=directory, node_name=name)
    except Exception:
        out.write(json.dumps({"ok": False, "error": traceback.format_exc()}) + "\n")
        return 1
    worker = Worker(node)
    out.write(json.dumps({"ok": True, "pid": os.getpid(), "node": node.name}) + "\n")
    try:
        for line in sys.stdin:
            request = json.loads(line)
            op = request.pop("op")
            if op == "quit":
                break
            try:
                reply = getattr(worker, f"op_{op}")(**request)
                out.write(json.dumps({"ok": True, **reply}) + "\n")
            except Exception:
                out.write(json.dumps({"ok": False, "error": traceback.format_exc()}) + "\n")
    finally:
        worker.op_reap()
        node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
