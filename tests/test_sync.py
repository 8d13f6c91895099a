"""Locks and barriers across real nodes and processes."""

import os
import signal
import time

import pytest

from dsm.liveness import NODE_TIMEOUT_S
from dsm.sync import LOCK_ANSWER_MARGIN_S
from tests.cluster import NodeProcess

pytestmark = pytest.mark.timeout(120)

NODES = 3
INCREMENTS = 40

#: (``{array_args}``: more arguments of the counter's node.array, e.g. its consistency)
COUNT_UNDER_LOCK = """
counter = node.array('counter', (1,), np.int64{array_args})
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


def test_lock_gives_mutual_exclusion_across_nodes_and_processes(make_node):
    nodes = [make_node(f"n{i}") for i in range(NODES)]
    for n in nodes:
        n.send(COUNT_UNDER_LOCK.format(n=INCREMENTS, array_args=""))
    for n in nodes:
        n.wait(100)
    assert nodes[0].run("", "int(counter[0])") == NODES * 2 * INCREMENTS


def wait_for_waiters(node, name, count, timeout_s=20):
    """Wait until ``count`` requests are queued for lock ``name`` (asked through ``node``)."""
    node.run(
        "import time\n"
        f"deadline = time.monotonic() + {timeout_s}\n"
        f"while len(node.lock({name!r}).status()[1]) < {count}:\n"
        "    assert time.monotonic() < deadline, 'the lock requests did not arrive'\n"
        "    time.sleep(0.01)\n"
    )


def test_lock_is_granted_in_fifo_order(make_node):
    holder, *waiters = [make_node(f"n{i}") for i in range(4)]
    holder.run("order = node.array('order', (8,), np.int64); lk = node.lock('fifo'); lk.acquire()")
    for i, w in enumerate(waiters):
        w.send(
            "order = node.array('order', (8,), np.int64)\n"
            "with node.lock('fifo'):\n"
            f"    order[order[7]] = {i + 1}; order[7] += 1\n"
        )
        wait_for_waiters(holder, "fifo", i + 1)  # each request is queued before the next is sent
    assert [h.split(":")[0] for h in holder.run("", "lk.status()[1]")] == ["n1", "n2", "n3"]
    holder.run("lk.release()")
    for w in waiters:
        w.wait(30)
    assert holder.run("", "order[:3].tolist()") == [1, 2, 3]


def test_acquire_with_timeout_returns_false_at_the_deadline(make_node):
    a, b = make_node("a"), make_node("b")
    a.run("lk = node.lock('t'); lk.acquire()")
    took = b.run(
        "import time\nt0 = time.monotonic()\ngot = node.lock('t').acquire(timeout=0.5)\n"
        "took = time.monotonic() - t0", "[got, took]")
    assert took[0] is False and 0.4 < took[1] < 5
    assert b.run("", "node.lock('t').acquire(blocking=False)") is False
    a.run("lk.release()")
    assert b.run("", "node.lock('t').acquire(timeout=5)") is True


def test_release_of_a_lock_not_held_is_an_error(make_node):
    a, b = make_node("a"), make_node("b")
    a.run("lk = node.lock('r'); lk.acquire()")
    err = b.run("try:\n    node.lock('r').release()\n    e = None\n"
                "except dsm.DsmError as x:\n    e = str(x)\n", "e")
    assert "does not hold it" in err and "r" in err


#: a forked child of the node takes lock {lock} and idles; the parent returns once it holds it
_CHILD_HOLDS_LOCK = (
    "import signal, time\n"
    "flag = node.array('{flag}', (1,), np.int64)\n"
    "child = os.fork()\n"
    "if child == 0:\n"
    "    node.lock('{lock}').acquire(); flag[0] = 1\n"
    "    time.sleep(600)\n"
    "    os._exit(0)\n"
    "deadline = time.monotonic() + 20\n"
    "while flag[0] != 1 and time.monotonic() < deadline:\n"
    "    time.sleep(0.01)\n"
    "assert flag[0] == 1\n"
)


def test_holder_killed_with_sigkill_releases_the_lock_to_the_next(make_node):
    a, b = make_node("a"), make_node("b")
    a.run(_CHILD_HOLDS_LOCK.format(lock="k", flag="held"))
    b.send("lk = node.lock('k'); lk.acquire()", "lk.previous_holder_died")
    wait_for_waiters(a, "k", 1)  # b's request is queued behind the child
    a.run("os.kill(child, signal.SIGKILL); os.waitpid(child, 0)")
    assert b.wait(20) is True


def test_a_holder_killed_before_anyone_waits_is_told_to_the_next_acquirer(make_node):
    a, b = make_node("a"), make_node("b")
    a.run(_CHILD_HOLDS_LOCK.format(lock="k2", flag="held2")
          + "os.kill(child, signal.SIGKILL); os.waitpid(child, 0)\n")
    # whether b's request comes before the directory hears of the death or after, b learns
    # that the data the lock protects may be half-updated
    assert b.run("lk = node.lock('k2'); lk.acquire()", "lk.previous_holder_died") is True
    assert b.run("lk.release(); lk.acquire()", "lk.previous_holder_died") is False


def test_barrier_is_reusable_and_orders_memory(make_node):
    nodes = [make_node(f"n{i}") for i in range(NODES)]
    for i, n in enumerate(nodes):
        n.send(
            f"slots = node.array('bslots', ({NODES},), np.int64)\n"
            f"bar = node.barrier('iter', {NODES})\n"
            "for it in range(1, 21):\n"
            f"    slots[{i}] = it\n"
            "    bar.wait()\n"
            "    assert slots.tolist() == [it] * %d, (it, slots.tolist())\n"
            "    bar.wait()\n" % NODES
        )
    for n in nodes:
        n.wait(100)


def test_a_killed_party_breaks_the_barrier_for_the_others(make_node):
    a, b = make_node("a"), make_node("b")
    # a forked child of a joins the barrier, publishes its pid in shared memory, then idles
    a.run(
        "import time\n"
        "ready = node.array('ready', (2,), np.int64)\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    node.barrier('broken', 3); ready[1] = os.getpid(); ready[0] = 1\n"
        "    time.sleep(600)\n"
        "    os._exit(0)\n"
        "deadline = time.monotonic() + 20\n"
        "while ready[0] != 1 and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "assert ready[0] == 1\n"
    )
    child = b.run("ready = node.array('ready', (2,), np.int64)", "int(ready[1])")
    code = ("try:\n    node.barrier('broken', 3).wait()\n    r = 'passed'\n"
            "except dsm.sync.BarrierBroken as e:\n    r = str(e)\n")
    b.send(code, "r")
    a.send(code, "r")
    os.kill(child, signal.SIGKILL)
    assert "broken" in b.wait(20)
    assert "broken" in a.wait(20)


_WAIT_AND_SAY = ("import time\n"
                 "t0 = time.monotonic()\n"
                 "try:\n    node.barrier('{name}', {parties}).wait({timeout})\n    r = 'passed'\n"
                 "except dsm.sync.BarrierBroken as e:\n    r = str(e)\n"
                 "took = time.monotonic() - t0\n")


def test_a_job_member_killed_before_the_last_barrier_breaks_it_for_the_others(directory,
                                                                              tmp_path):
    """The members of a job (rank and size from DSM_RANK/DSM_NODES, named by DSM_RUN) wait at the
    job's last barrier, which the killed member never reached: it breaks for them, naming the
    dead node and its rank, once the directory declares it dead (its silence's deadline)."""
    def env(rank):
        return {**os.environ, "DSM_RANK": str(rank), "DSM_NODES": "3", "DSM_RUN": "job-kill"}
    nodes = [NodeProcess(directory.endpoint, f"j{r}", tmp_path, env=env(r)) for r in range(3)]
    try:
        nodes[2].kill()  # SIGKILL, agent and all: nobody says goodbye
        t0 = time.monotonic()
        for n in nodes[:2]:
            n.send(_WAIT_AND_SAY.format(name="job.end", parties=3, timeout=""), "r")
        results = [n.wait(NODE_TIMEOUT_S + 20) for n in nodes[:2]]
        elapsed = time.monotonic() - t0
        for r in results:
            assert "node j2 (rank 2 of 3 of job job-kill) died" in r, r
        assert elapsed < NODE_TIMEOUT_S + 1.0, elapsed
    finally:
        for n in nodes:
            n.kill()


def test_a_barrier_wait_with_a_timeout_breaks_the_barrier_at_it(make_node):
    a, b = make_node("a"), make_node("b")
    took, why = a.run(_WAIT_AND_SAY.format(name="slow", parties=2, timeout="timeout=1.0"),
                      "[took, r]")
    assert "waited 1.0 s, its timeout" in why, why
    assert 1.0 <= took < 1.0 + LOCK_ANSWER_MARGIN_S, took
    # as threading.Barrier: broken for every party from then on
    assert "broken" in b.run(_WAIT_AND_SAY.format(name="slow", parties=2, timeout=""), "r")
