"""A service's memory settings (``dsm/collector.py``), on the real allocator and kernel."""

from __future__ import annotations

import subprocess
import sys

#: a run of pages as the agent moves them (4 MiB), and how many ZeroMQ holds at once
RUN_BYTES = 4 << 20
RUNS_IN_FLIGHT = 3
ROUNDS = 10
#: page faults per run read, on average, past which runs go into fresh memory as a rule: a run
#: is 1024 pages; untuned, 672 per run on this VM; tuned, 0.1-68 (now and then one run's block
#: is fresh, 1024 faults: ZeroMQ's threads allocate and free in arenas of their own)
MOST_FAULTS_PER_RUN = 256

#: what an owner does during a scan: reads runs out of its memfd and sends them without a copy,
#: several in flight, freed by ZeroMQ's threads once sent; the page faults per run read
CHURN = f"""
import os, resource, zmq
from dsm.collector import tune_for_service
tune_for_service()
fd = os.memfd_create("runs")
os.ftruncate(fd, {RUN_BYTES})
os.pwrite(fd, b"y" * {RUN_BYTES}, 0)
ctx = zmq.Context()
out = ctx.socket(zmq.PAIR)
out.linger = 0
port = out.bind_to_random_port("tcp://127.0.0.1")
into = ctx.socket(zmq.PAIR)
into.linger = 0
into.connect(f"tcp://127.0.0.1:{{port}}")
into.rcvtimeo = 10_000
def rounds(n):
    for _ in range(n):
        for _ in range({RUNS_IN_FLIGHT}):
            out.send(os.pread(fd, {RUN_BYTES}, 0), copy=False)
        for _ in range({RUNS_IN_FLIGHT}):
            into.recv(copy=False)
rounds(3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds({ROUNDS})
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / ({ROUNDS} * {RUNS_IN_FLIGHT}))
out.close(); into.close(); ctx.term()
"""


def test_a_service_reads_page_runs_into_memory_it_already_has():
    """Without the raised thresholds, every run read out goes into memory glibc has just given
    back to the kernel, faulted in and cleared page by page before the copy."""
    done = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    faults_per_run = float(done.stdout)
    print(f"page faults per {RUN_BYTES >> 20} MiB run read: {faults_per_run:.1f}")
    assert faults_per_run < MOST_FAULTS_PER_RUN
