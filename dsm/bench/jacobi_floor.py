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
from multiprocessing import shared_memory

import numpy as np

from dsm.bench.common import BenchError

#: seconds the floor's processes may take to start, run and report, beyond the iterations
FLOOR_TIMEOUT_S = 60.0


def _relax_band(shm_name: str, size: int, iterations: int, rank: int, nodes: int,
                barrier, results) -> None:
    """One process of the floor: relax band ``rank`` of the shared grids, timing each
    iteration from barrier to barrier."""
    import time

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


def band_iterations(size: int, iterations: int, nodes: int) -> list[float]:
    """Each iteration's seconds (the slowest process's) with ``nodes`` plain processes relaxing
    their bands of one shared grid at once. Raises BenchError if a process fails, or if the
    grid they leave is not numpy's (a floor that computed something else is no floor)."""
    from dsm.commands.demo import load_workload

    load_workload("jacobi")
    from dsm.workloads.jacobi import initial_rows, reference

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
        for _ in range(nodes):
            try:
                rank, seconds = results.get(timeout=FLOOR_TIMEOUT_S)
            except queue.Empty:
                raise BenchError(f"the floor's {nodes} processes did not report within "
                                   f"{FLOOR_TIMEOUT_S:g} s") from None
            per_process[rank] = seconds
        grids = np.ndarray((2, size, size), dtype=np.float64, buffer=shm.buf)
        same = np.array_equal(grids[iterations % 2], reference(nodes, size, iterations)["grid"])
        del grids
        if not same:
            raise BenchError(f"the floor's {nodes} processes left another grid than numpy's")
        return [max(times) for times in zip(*per_process.values())]
    finally:
        for proc in procs:
            proc.join(timeout=FLOOR_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
        shm.close()
        shm.unlink()
