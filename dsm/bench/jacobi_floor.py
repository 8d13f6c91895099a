"""The floor of ``dsm bench jacobi`` (``dsm/bench/jacobi.py``): the nodes' bands relaxed by as
many plain processes, on one grid in shared memory, with a barrier per iteration and no DSM.

It is what this machine gives a perfect protocol: the nodes' computations at once on its cores,
sharing its caches and memory bandwidth, plus a local barrier. "numpy's time / nodes" assumes
that N bands run N times faster than the whole grid in one process; on a small machine they do
not (two bands on two cores share the memory bus, and nothing is left for the agents), and the
difference is not the DSM's. The grid is POSIX shared memory (shmem pages, as the DSM's memfd),
each process maps it and times each iteration from barrier to barrier, as the workload's nodes
do (``dsm.workloads.jacobi.run``); an iteration's time is the slowest process's.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from multiprocessing import shared_memory

import numpy as np

from dsm.bench.common import BenchError

#: seconds the floor's processes may take to start, run and report
FLOOR_TIMEOUT_S = 60.0
#: how often the wait for their reports looks whether one of them failed
POLL_S = 0.2
#: seconds a process that reported, or is stuck behind one that failed, gets to exit
EXIT_TIMEOUT_S = 5.0


def _relax_band(shm_name: str, size: int, iterations: int, rank: int, nodes: int,
                barrier, results) -> None:
    """One process of the floor: relax band ``rank`` of the shared grids, timing each
    iteration from barrier to barrier."""
    from dsm.commands.demo import load_workload

    load_workload("jacobi")  # makes the workloads importable
    from dsm.workloads.jacobi import band, relax

    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        grids = np.ndarray((2, size, size), dtype=np.float64, buffer=shm.buf)
        lo, hi = band(rank, nodes, size)
        barrier.wait()
        seconds = []
        for it in range(iterations):
            t0 = time.perf_counter()
            if hi > lo:
                relax(grids[it % 2], grids[(it + 1) % 2], lo, hi)
            barrier.wait()
            seconds.append(time.perf_counter() - t0)
        del grids
        results.put((rank, seconds))
    finally:
        shm.close()


def band_iterations(size: int, iterations: int, nodes: int, expected: np.ndarray) -> list[float]:
    """Each iteration's seconds (the slowest process's) with ``nodes`` plain processes relaxing
    their bands of one shared grid at once. Raises BenchError if a process fails, or if the
    grid they leave is not ``expected``, numpy's (a floor that computed something else is no
    floor)."""
    from dsm.commands.demo import load_workload

    load_workload("jacobi")
    from dsm.workloads.jacobi import initial_rows

    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads or sockets
    shm = shared_memory.SharedMemory(create=True, size=2 * size * size * 8)
    procs = []
    try:
        grids = np.ndarray((2, size, size), dtype=np.float64, buffer=shm.buf)
        grids[0] = grids[1] = initial_rows(0, size, size)
        del grids
        barrier, results = ctx.Barrier(nodes), ctx.Queue()
        procs = [ctx.Process(target=_relax_band, daemon=True,
                             args=(shm.name, size, iterations, rank, nodes, barrier, results))
                 for rank in range(nodes)]
        for proc in procs:
            proc.start()
        per_process = {}
        deadline = time.monotonic() + FLOOR_TIMEOUT_S
        while len(per_process) < nodes:
            try:
                rank, seconds = results.get(timeout=POLL_S)
                per_process[rank] = seconds
                continue
            except queue.Empty:
                pass
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed:  # the others wait for it at the barrier: no use waiting for them
                raise BenchError(f"a process of the floor exited with status {failed[0]}")
            if time.monotonic() > deadline:
                raise BenchError(f"the floor's {nodes} processes did not report within "
                                 f"{FLOOR_TIMEOUT_S:g} s")
        grids = np.ndarray((2, size, size), dtype=np.float64, buffer=shm.buf)
        same = np.array_equal(grids[iterations % 2], expected)
        del grids
        if not same:
            raise BenchError(f"the floor's {nodes} processes left another grid than numpy's")
        return [max(times) for times in zip(*per_process.values())]
    finally:
        for proc in procs:  # done, or stuck at the barrier behind a failed one
            proc.join(timeout=EXIT_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
        shm.close()
        shm.unlink()
