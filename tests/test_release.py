"""Release-consistency arrays on real nodes: many writers per page between synchronization
points, twins and diffs merged at the home, write notices with lock grants and barrier
departures (``dsm.core.release``, ``dsm.directory.release``)."""

import json
import signal
import time

import pytest

from dsm.viz.ownership import parse_state
from tests.test_sync import COUNT_UNDER_LOCK

pytestmark = pytest.mark.timeout(120)

NODES = 3
INCREMENTS = 30
#: the directory's trace is flushed every half second
TRACE_FLUSH_WAIT_S = 5.0


#: each node writes its own bytes of every page of one array, between barriers, again and again
FALSE_SHARING = """
x = node.array('shared', (4, 4096), np.uint8, consistency='release')
b = node.barrier('rounds', {nodes})
for r in range({rounds}):
    x[:, {i}::{nodes}] = r + 1 + {i}
    b.wait()
    # every node's bytes of the round are here now
    for j in range({nodes}):
        assert (x[:, j::{nodes}] == r + 1 + j).all(), (r, j, x[:, j::{nodes}][:2, :8])
    b.wait()
"""


def test_a_counter_under_a_lock_counts_every_increment(make_node):
    nodes = [make_node(f"n{i}") for i in range(NODES)]
    # all start together: a node done before the others begin would hold the counter's page
    # privately (no twins, no diffs, no notices) all along
    start_together = f"node.barrier('start', {NODES}).wait()\n"
    for n in nodes:
        n.send(start_together + COUNT_UNDER_LOCK.format(n=INCREMENTS,
                                                        array_args=", consistency='release'"))
    for n in nodes:
        n.wait(100)
    total = NODES * 2 * INCREMENTS
    lock_then_read = "with node.lock('counter'):\n    v = int(counter[0])\n"
    assert [n.run(lock_then_read, "v") for n in nodes] == [total] * NODES
    stats = [n.run("", "node.stats()")["counters"] for n in nodes]
    for counter in ("twins", "diffs", "notices_invalidated"):
        assert sum(s.get(counter, 0) for s in stats) > 0, (counter, stats)


def test_disjoint_bytes_of_one_page_written_by_every_node_are_all_merged(make_node, directory):
    nodes = [make_node(f"n{i}") for i in range(NODES)]
    for i, n in enumerate(nodes):
        n.send(FALSE_SHARING.format(nodes=NODES, rounds=5, i=i))
    for n in nodes:
        n.wait(100)
    # no ping-pong: the pages were written on every node at once, without a fault per write
    stats = [n.run("", "node.stats()")["counters"] for n in nodes]
    assert all(s.get("upgrades", 0) == 0 for s in stats), stats
    # the manager's trace shows the diffs merged at the home, and the views read its states
    deadline = time.monotonic() + TRACE_FLUSH_WAIT_S
    while "DIFF" not in directory.trace_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    # the directory still writes its trace: a last line without its newline is not whole yet
    steps = [json.loads(line) for line in directory.trace_path.read_text().splitlines(True)
             if line.endswith("\n")]
    diffs = [r for r in steps if r.get("event") == "DIFF"]
    assert diffs and all(r["bytes"] > 0 for r in diffs), diffs[:3]
    assert all(parse_state(r["new"]) is not None for r in diffs), diffs[:3]


def test_an_array_asked_for_with_the_other_consistency_is_an_error(make_node):
    a = make_node("a")
    a.run("x = node.array('kind', (8,), np.int64, consistency='release')")
    out = a.run("try:\n    node.array('kind', (8,), np.int64)\n    r = ''\n"
                "except Exception as e:\n    r = str(e)\n", "r")
    assert "kind" in out and "release" in out, out
    out = a.run("try:\n    node.array('k2', (8,), np.int64, consistency='weak')\n    r = ''\n"
                "except ValueError as e:\n    r = str(e)\n", "r")
    assert "sequential" in out and "release" in out and "weak" in out, out


def test_sequential_and_release_arrays_live_in_one_program(make_node):
    a, b = make_node("a"), make_node("b")
    code = ("s = node.array('seq', (512,), np.int64)\n"
            "r = node.array('rel', (512,), np.int64, consistency='release')\n"
            "bar = node.barrier('mix', 2)\n")
    a.send(code + "s[:] = 7\nr[:] = 9\nbar.wait()\n")
    assert b.run(code + "bar.wait()\n", "[int(s.sum()), int(r.sum())]") == [7 * 512, 9 * 512]
    a.wait()


# --- synchronized litmus tests: only sequentially consistent outcomes ---------------------------
ROUNDS = 20

MP_WRITER = """
data = node.array('mp.data', ({rounds}, 512), np.int64, consistency='release')
flag = node.array('mp.flag', ({rounds}, 512), np.int64, consistency='release')
lock = node.lock('mp')
for k in range({rounds}):
    data[k, 0] = k + 1
    with lock:
        flag[k, 0] = 1
"""

MP_READER = """
data = node.array('mp.data', ({rounds}, 512), np.int64, consistency='release')
flag = node.array('mp.flag', ({rounds}, 512), np.int64, consistency='release')
lock = node.lock('mp')
seen = []
for k in range({rounds}):
    while True:
        with lock:
            if flag[k, 0] == 1:
                seen.append(int(data[k, 0]))
                break
"""

SB = """
x = node.array('sb', ({rounds}, 2, 512), np.int64, consistency='release')
b = node.barrier('sb', 2)
got = []
for k in range({rounds}):
    x[k, {me}, 0] = 1
    b.wait()
    got.append(int(x[k, {other}, 0]))
"""


def test_message_passing_through_a_lock_always_sees_the_data(make_node):
    a, b = make_node("a"), make_node("b")
    b.send(MP_READER.format(rounds=ROUNDS), "seen")
    a.run(MP_WRITER.format(rounds=ROUNDS))
    # the flag was seen under the lock, so the data written before its release must be seen
    assert b.wait(100) == list(range(1, ROUNDS + 1))


def test_store_buffering_with_a_barrier_sees_both_stores(make_node):
    a, b = make_node("a"), make_node("b")
    a.send(SB.format(rounds=ROUNDS, me=0, other=1), "got")
    b.send(SB.format(rounds=ROUNDS, me=1, other=0), "got")
    assert a.wait(100) == [1] * ROUNDS and b.wait(100) == [1] * ROUNDS


def test_overlapping_writes_between_the_same_barriers_end_as_the_later_release_wrote(make_node):
    # both nodes write all of the same bytes; the later diff to arrive at the home wins whole
    # (each node's diff is applied as one): never a mix of the two within what both wrote
    a, b = make_node("a"), make_node("b")
    code = ("x = node.array('ww', (512,), np.int64, consistency='release')\n"
            "bar = node.barrier('ww', 2)\n"
            "x[:] = {v}\nbar.wait()\nfinal = x.tolist()\nbar.wait()\n")
    a.send(code.format(v=1), "final")
    b.send(code.format(v=2), "final")
    fa, fb = a.wait(100), b.wait(100)
    assert fa == fb and fa in ([1] * 512, [2] * 512), (fa[:4], fb[:4])


# --- leaving, dying, and the kernel's events --------------------------------------------------------
def test_a_node_that_leaves_sends_its_changes_home_first(make_node):
    a = make_node("a")
    a.run("x = node.array('leave', (4 * 512,), np.int64, consistency='release'); x[:] = 3")
    a.close()  # no release: the leave flushes the diffs
    b = make_node("b")
    assert b.run("x = node.array('leave', (4 * 512,), np.int64, consistency='release')",
                 "int(x.sum())") == 3 * 4 * 512


def test_a_node_killed_with_changes_it_never_released_loses_those_pages_loudly(directory,
                                                                              tmp_path):
    from tests.cluster import ClusterProcessError, NodeProcess
    from tests.test_loss import _kill_whole_node

    make = "x = node.array('dies', (4 * 512,), np.int64, consistency='release')\n"
    a = NodeProcess(directory.endpoint, "a", tmp_path)
    c = NodeProcess(directory.endpoint, "c", tmp_path)
    a.run(make + "x[:] = 1\nnode.barrier('dies', 1).wait()\n")  # released
    # c reads them: shared pages now (while only a had them they were a's private pages,
    # whose only current copy is a's, as an owned sequential page's is)
    assert c.run(make, "int(x.sum())") == 4 * 512
    a.run("x[:512] = 2")  # page 0 changed and never released
    # a round trip of a's agent to the directory, on the link its Dirtied went out on before
    # the write went on: the directory knows page 0 has unreleased changes before a dies (a
    # kill can otherwise beat the Dirtied out of a's socket: CI's run saw it)
    a.run("node.arrays()")
    _kill_whole_node(a)
    c.kill()
    d = NodeProcess(directory.endpoint, "d", tmp_path)  # no copies of its own
    try:
        # the directory declares a dead once it is silent for its deadline; reading page 0
        # fails from then on (before that it still reads the last released contents)
        d.send(make + "import time\ndeadline = time.monotonic() + 30\n"
               "while not node.lost() and time.monotonic() < deadline:\n    time.sleep(0.2)\n",
               "{k: [list(r) for r in v] for k, v in node.lost().items()}")
        assert d.wait(40) == {"dies": [[0, 4096, "a"]]}
        assert d.run("", "int(x[512:].sum())") == 3 * 512  # the released pages are intact
        with pytest.raises(ClusterProcessError):
            d.run("", "int(x[0])")
        assert d.proc.wait(10) == -signal.SIGBUS
        assert "LOST" in d.log_path.read_text()
    finally:
        d.kill()


def test_fork_remove_and_unmap_work_on_release_arrays(make_node):
    a, b = make_node("a"), make_node("b")
    make = "x = node.array('ev', (4 * 512,), np.int64, consistency='release')\n"
    bar = "node.barrier('ev', 2).wait()\n"
    # a forked child writes page 1; the parent, page 0; both are released by the parent's
    # barrier (the child's writes are in the node's memory, twinned by the node)
    a.send(make + "x[:] = 5\npid = os.fork()\nif pid == 0:\n    x[512:1024] = 6\n    os._exit(0)\n"
           "os.waitpid(pid, 0)\n" + bar)
    assert b.run(make + bar, "x[:1024].tolist()") == [5] * 512 + [6] * 512
    a.wait()
    # MADV_REMOVE on a: zeros there at once, and at home: b sees them after its next acquire
    a.send("libc.madvise(node.address_of(x), 4096, libc.MADV_REMOVE)\n"
           "assert not x[:512].any()\n" + bar)
    assert b.run(bar, "int(x[:512].sum())") == 0
    a.wait()
    # an unmap of a's changed pages sends them home
    a.send("x[1024:] = 8\nlibc.munmap(node.address_of(x) + 2 * 4096, 2 * 4096)\n" + bar)
    assert b.run(bar, "int(x[1024:].sum())") == 8 * 1024
    a.wait()
