"""Release-consistency arrays on real nodes: many writers per page between synchronization
points, twins and diffs merged at the home, write notices with lock grants and barrier
departures (``dsm.core.release``, ``dsm.directory.release``)."""

import pytest

pytestmark = pytest.mark.timeout(120)

NODES = 3
INCREMENTS = 30

COUNT_UNDER_LOCK = """
counter = node.array('counter', (1,), np.int64, consistency='release')
lock = node.lock('counter')
def work():
    for _ in range({n}):
        with lock:
            counter[0] += 1
pid = os.fork()
if pid == 0:
    try:
        work()
        os._exit(0)
    except BaseException:
        os._exit(1)
work()
_, status = os.waitpid(pid, 0)
assert status == 0, status
"""

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
    for n in nodes:
        n.send(COUNT_UNDER_LOCK.format(n=INCREMENTS))
    for n in nodes:
        n.wait(100)
    total = NODES * 2 * INCREMENTS
    lock_then_read = "with node.lock('counter'):\n    v = int(counter[0])\n"
    assert [n.run(lock_then_read, "v") for n in nodes] == [total] * NODES
    stats = nodes[0].run("", "node.stats()")["counters"]
    assert stats["twins"] > 0 and stats["diffs"] > 0 and stats["notices_invalidated"] > 0, stats


def test_disjoint_bytes_of_one_page_written_by_every_node_are_all_merged(make_node):
    nodes = [make_node(f"n{i}") for i in range(NODES)]
    for i, n in enumerate(nodes):
        n.send(FALSE_SHARING.format(nodes=NODES, rounds=5, i=i))
    for n in nodes:
        n.wait(100)
    # no ping-pong: the pages were written on every node at once, without a fault per write
    stats = [n.run("", "node.stats()")["counters"] for n in nodes]
    assert all(s.get("upgrades", 0) == 0 for s in stats), stats


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
