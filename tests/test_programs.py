"""Programs written as the README shows, run as a user runs them (`dsm launch -n 3`) against a
long-lived directory, and checked against numpy in one process: a work queue taken with an
atomic counter, a histogram merged with ``allreduce``; arrays freed at the end of a run, so that
the next run starts from fresh arrays and the directory does not fill up; atomics that stay
linearizable from threads and forked children; a collective that a departed rank fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsm.managers import Manager
from tests.cluster import Directory, environment_without_manager_defaults, manager_of

pytestmark = pytest.mark.timeout(180)

#: how long a launched job may take
LAUNCH_TIMEOUT_S = 120
#: the results array takes most of the region: a run that did not free it would leave no room
#: for the next one
REGION_BYTES = 4 << 20
RESULT_ELEMENTS = (3 << 20) // 8

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example(mark: str) -> str:
    text = README.read_text()
    return text.split(f"<!-- the {mark} example: tests/test_programs.py runs it -->\n```python\n",
                      1)[1].split("```", 1)[0]


#: the README's programs
README_WORK_QUEUE = _readme_example("work-queue")
README_HISTOGRAM = _readme_example("histogram")
README_GUARDED_LOCK = _readme_example("guarded-lock")
#: the guarded-lock example's updates per rank, and its ranks
GUARDED_UPDATES = 100
GUARDED_RANKS = 3
README_TASKS = 2000
README_VALUES = 300_000

#: a work queue whose results take most of the region: a run that did not free them would leave
#: no room for the next one
REUSE_TASKS = 200
REUSE = f"""
import numpy as np
import dsm

node = dsm.attach()
if node.rank == 0:
    node.array("reuse.results", ({RESULT_ELEMENTS},), np.int64, create=True)
node.barrier("reuse.created", node.size).wait()
results = node.array("reuse.results", ({RESULT_ELEMENTS},), np.int64, create=False)
next_task = node.atomic("reuse.next")
while (i := next_task[0].fetch_add(1)) < {REUSE_TASKS}:
    results[i] = i + 1
node.barrier("reuse.done", node.size).wait()
if node.rank == 0:
    print("sum", int(results.sum()), "rest", int(results[{REUSE_TASKS}:].any()))
    node.free("reuse.next")
node.barrier("reuse.read", node.size).wait()
node.free("reuse.results")
"""


def _launch(tmp_path, program: str, directory: Directory | None = None
            ) -> subprocess.CompletedProcess:
    """``program`` on 3 ranks: against ``directory``, or one the job starts for itself."""
    path = tmp_path / "program.py"
    path.write_text(program)
    joins = ["--directory", directory.endpoint] if directory else []
    return subprocess.run([sys.executable, "-m", "dsm", "launch", "-n", "3", *joins,
                           "--", sys.executable, str(path)],
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
                          env=environment_without_manager_defaults(), cwd=tmp_path)


def _line(done: subprocess.CompletedProcess, word: str) -> str:
    lines = [line for line in done.stdout.splitlines() if line.startswith(f"[rank 0] {word} ")]
    assert len(lines) == 1, (done.returncode, done.stdout, done.stderr)
    return lines[0].split(" ", 3)[3]


@pytest.fixture(params=[1, 2], ids=["one manager", "2 shards"])
def directory(request, tmp_path):
    """One manager (the suite's), or a distributed one of 2 shards. The dynamic manager does
    not reuse a freed array's addresses (README, its limits: the owners of its pages keep them;
    tests/test_dynamic_manager.py checks that no new array reads them): under it, the one
    manager is the central one."""
    pinned = (["--manager", Manager.CENTRAL.value]
              if request.param == 1 and manager_of() is Manager.DYNAMIC else [])
    d = Directory(tmp_path, region_bytes=REGION_BYTES, shards=request.param, extra=pinned)
    yield d
    d.kill()


def test_the_readmes_work_queue_runs_again_on_fresh_arrays(tmp_path):
    directory = Directory(tmp_path)
    try:
        for run in range(2):  # create=True: the second run fails if the first left its array
            done = _launch(tmp_path, README_WORK_QUEUE, directory)
            assert done.returncode == 0, (run, done.stdout, done.stderr)
            taken, total = _line(done, "tasks").removeprefix("per rank [").split("] sum of squares ")
            assert sum(int(t) for t in taken.split(",")) == README_TASKS  # each task taken once
            assert int(total) == int((np.arange(README_TASKS, dtype=np.int64) ** 2).sum())
    finally:
        directory.kill()


def test_the_readmes_histogram_matches_numpy_run_after_run(tmp_path):
    values = np.concatenate([np.random.default_rng(r).integers(0, 256, README_VALUES // 3)
                             for r in range(3)])
    hist = np.bincount(values, minlength=256)
    directory = Directory(tmp_path)
    try:
        for run in range(2):  # the collectives of one job leave nothing behind for the next
            done = _launch(tmp_path, README_HISTOGRAM, directory)
            assert done.returncode == 0, (run, done.stdout, done.stderr)
            assert _line(done, "values").split() == [str(len(values)), "weighted",
                                                     str(int(hist @ np.arange(256))), "max",
                                                     str(values.max())]
    finally:
        directory.kill()


def test_the_readmes_guarded_lock_counts_exactly_with_the_pages_in_the_grants(tmp_path):
    directory = Directory(tmp_path)
    try:
        done = _launch(tmp_path, README_GUARDED_LOCK, directory)
        assert done.returncode == 0, (done.stdout, done.stderr)
        words = _line(done, "updates").split()
        assert words[:4] == [str(GUARDED_RANKS * GUARDED_UPDATES), "rank", "sum",
                             str(GUARDED_UPDATES * sum(range(GUARDED_RANKS)))], words
        assert int(words[-1]) > 0, words  # the page came with rank 0's grants
    finally:
        directory.kill()


def test_freed_arrays_make_room_for_the_next_run(tmp_path, directory):
    for run in range(2):
        done = _launch(tmp_path, REUSE, directory)
        assert done.returncode == 0, (run, done.stdout, done.stderr)
        assert _line(done, "sum").split() == [str(REUSE_TASKS * (REUSE_TASKS + 1) // 2), "rest",
                                              "0"]


ATOMIC_FROM_THREADS_AND_CHILDREN = """
import os, threading
import numpy as np
import dsm

node = dsm.attach()
counter = node.atomic("lin.counter")
PER_WORKER = 150
taken = []

def work():
    for _ in range(PER_WORKER):
        taken.append(counter.fetch_add(0, 1))

threads = [threading.Thread(target=work) for _ in range(2)]
for t in threads:
    t.start()
read, write = os.pipe()
child = os.fork()
if child == 0:  # a forked child of the workload: its own connection to the agent
    mine = [counter.fetch_add(0, 1) for _ in range(PER_WORKER)]
    os.write(write, (",".join(map(str, mine)) + "\\n").encode())
    os._exit(0)
for t in threads:
    t.join()
os.waitpid(child, 0)
os.close(write)
with os.fdopen(read) as f:
    taken += [int(v) for v in f.read().split(",")]
everything = node.gather(taken)
if node.rank == 0:
    flat = sorted(v for part in everything for v in part)
    print("values", len(flat), "distinct", len(set(flat)), "range", flat[0], flat[-1],
          "final", counter.load(0))
"""


def test_atomics_from_threads_and_forked_children_of_every_node_are_linearizable(tmp_path):
    done = _launch(tmp_path, ATOMIC_FROM_THREADS_AND_CHILDREN)
    assert done.returncode == 0, (done.stdout, done.stderr)
    total = 3 * 3 * 150  # 3 nodes, each 2 threads and a child
    # every fetch_add got a value no other got, and together they are 0..total-1
    assert _line(done, "values").split() == [str(total), "distinct", str(total), "range", "0",
                                             str(total - 1), "final", str(total)]


RANK_1_LEAVES = """
import dsm
from dsm.collectives import CollectiveError

node = dsm.attach()
if node.rank == 1:
    raise SystemExit(0)  # leaves the job without joining the allreduce
try:
    node.allreduce(1)
except CollectiveError as exc:
    print("failed:", exc)
"""


def test_a_rank_that_leaves_before_a_collective_fails_it_for_the_others(tmp_path):
    done = _launch(tmp_path, RANK_1_LEAVES)
    failures = [line for line in done.stdout.splitlines() if "failed:" in line]
    assert len(failures) == 2, (done.stdout, done.stderr)
    for line in failures:
        # whether it left before or after the others arrived, they hear who and why
        assert "rank 1 (node" in line and "before giving its part" in line, line


def test_free_and_arrays_and_create_from_one_node(tmp_path):
    """The lifetime calls from one process: a listing with sizes and holders, a freed name gone
    at once, its memory read as zeros by the next array of the name."""
    directory = Directory(tmp_path)
    program = tmp_path / "one.py"
    program.write_text("""
import numpy as np
import dsm

node = dsm.attach()
a = node.array("one.a", (1000,), np.float32)
a[:] = 7
counter = node.atomic("one.n", 4)
print("listed", sorted((x.name, x.nbytes, x.consistency, x.holders) for x in node.arrays()))
print("holders after free", node.free("one.a"))
print("listed after", [x.name for x in node.arrays()])
b = node.array("one.a", (1000,), np.float32, create=True)
print("fresh sum", float(b.sum()))
try:
    node.array("one.missing", (3,), create=False)
except dsm.DsmError as exc:
    print("missing:", exc)
""")
    try:
        done = subprocess.run([sys.executable, "-m", "dsm", "run", "--directory",
                               directory.endpoint, "--", sys.executable, str(program)],
                              capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
                              env=environment_without_manager_defaults(), cwd=tmp_path)
    finally:
        directory.kill()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "listed [('one.a', 4000, 'sequential', 1), ('one.n', 32, 'atomic', 0)]" in out, out
    assert "holders after free 0" in out and "listed after ['one.n']" in out, out
    assert "fresh sum 0.0" in out, out
    assert "missing: there is no array named 'one.missing'" in out, out


def test_a_workloads_atomic_sent_again_straight_to_the_directory_is_done_once(tmp_path):
    """The direct path (``dsm/atomics.py``): a request sent twice (its answer lost, say) gets
    the same answer twice, and the counter moves once."""
    import zmq

    from dsm import protocol as p

    directory = Directory(tmp_path)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        sock.connect(directory.endpoint)
        add = p.Atomic(1, "direct.n", 1, 0, int(p.AtomicKind.FETCH_ADD), 5)
        answers = []
        for _ in range(2):
            sock.send_multipart(p.encode(add))
            answers.append(p.decode(sock.recv_multipart(), 4096, p.Direction.TO_NODE)[0])
        sock.send_multipart(p.encode(p.Atomic(2, "direct.n", 1, 0, int(p.AtomicKind.LOAD))))
        load = p.decode(sock.recv_multipart(), 4096, p.Direction.TO_NODE)[0]
    finally:
        sock.close()
        directory.kill()
    assert answers == [p.AtomicResult(1, 0), p.AtomicResult(1, 0)]
    assert load == p.AtomicResult(2, 5)
