"""A randomized coherence test: several nodes, several processes per node (a parent and a forked
child), random reads and writes of words on a few shared pages, every operation recorded with its
invoke and response times, and the whole history of each word checked for linearizability
(tests/linearizability.py): no lost write, no stale read, no value out of nowhere, no two
readers disagreeing on the order of writes.

Each page holds one word per actor that only that actor writes (a single-writer register, as in
the first version of this test) and a few words that every actor writes (multi-writer registers:
the interesting case for the checker). time.monotonic_ns() is one clock for every process of this
host, so the times of all nodes can be compared."""

import json
import random
import time

import pytest

from tests.linearizability import Op, check_history

pytestmark = pytest.mark.timeout(180)

NODES = 3
PROCS_PER_NODE = 2
PAGES = 4
OPS_PER_PROC = 250
#: words of each page that every actor writes (after the actors' single-writer words)
SHARED_WORDS = 2
WORDS_PER_PAGE = 4096 // 8  # one row of the array is one page
#: write-heavy (pages move on most operations) and read-mostly (read copies live long and
#: many reads hit them without a fault: a copy left behind by a lost invalidation would show)
WRITE_FRACTIONS = {"write-heavy": 0.5, "read-mostly": 0.1}
#: of the writes, this fraction goes to a shared word rather than the actor's own
SHARED_WRITE_FRACTION = 0.5
#: a written value is (actor + 1) * VALUE_STRIDE + sequence number: unique in the whole run, so
#: a read names the one write it saw; never 0, the initial value
VALUE_STRIDE = 1_000_000
#: a short pause between operations, so that the actors interleave at fine grain
THINK_TIME_S = 0.0002
#: the deadline of one node's share of the run
RUN_TIMEOUT_S = 150.0
#: the process id of the test's own final reads in the history
FINAL_READER = "final"

LOOP = """
import json, os, random, time
# page k of the run is row k * stride (a stride past a manager's stripe puts the pages on
# different shards)
slots = node.array('slots', ({pages} * {stride_pages}, {words_per_page}), np.int64)[::{stride_pages}]
def actor(actor_id, seed, path):
    rng = random.Random(seed)
    # every actor starts at once: the barrier, not a delay, lines them up
    node.barrier('start', {actors}).wait()
    log, seq = [], 0
    for _ in range({ops}):
        page = rng.randrange({pages})
        time.sleep({think})
        if rng.random() < {write_fraction}:
            seq += 1
            value = (actor_id + 1) * {stride} + seq
            word = actor_id if rng.random() >= {shared_write_fraction} else rng.randrange({actors}, {words})
            t0 = time.monotonic_ns(); slots[page, word] = value; t1 = time.monotonic_ns()
            log.append(('w', page, word, value, t0, t1))
        else:
            word = rng.randrange({words})
            t0 = time.monotonic_ns(); value = int(slots[page, word]); t1 = time.monotonic_ns()
            log.append(('r', page, word, value, t0, t1))
    with open(path, 'w') as f:
        json.dump(log, f)
"""
#: the second actor of a node: a forked child of the first
FORKED_ACTOR = """
pid = os.fork()
if pid == 0:
    try:
        actor({child_actor}, {child_seed}, {child_path!r})
        os._exit(0)
    except BaseException:
        os._exit(1)
actor({parent_actor}, {parent_seed}, {parent_path!r})
_, status = os.waitpid(pid, 0)
assert status == 0, status
"""
ONE_ACTOR = """
actor({parent_actor}, {parent_seed}, {parent_path!r})
"""


def history_from_logs(logs, final=None, final_times=None):
    """The per-word history for the checker: {(page, word): [Op]} from the actors' logs (log i
    is actor i's), plus, if given, the final contents read by the test after every actor
    finished (``final[page][word]``, read between the two ``final_times``)."""
    history = {}
    for actor_id, log in enumerate(logs):
        for kind, page, word, value, t0, t1 in log:
            history.setdefault((page, word), []).append(Op(kind, value, t0, t1, actor_id))
    if final is not None:
        t0, t1 = final_times
        for page, row in enumerate(final):
            for word, value in enumerate(row):
                history.setdefault((page, word), []).append(Op("r", value, t0, t1, FINAL_READER))
    return history


def spans_overlap(logs) -> list[tuple[int, int]]:
    """The pairs of actors whose runs did not overlap in time (empty if all ran concurrently)."""
    spans = [(log[0][4], log[-1][5]) for log in logs]
    return [(a, b) for a in range(len(spans)) for b in range(a + 1, len(spans))
            if spans[a][1] < spans[b][0] or spans[b][1] < spans[a][0]]


@pytest.mark.parametrize("write_fraction", WRITE_FRACTIONS.values(), ids=WRITE_FRACTIONS.keys())
def test_every_words_history_is_linearizable(write_fraction, make_node, tmp_path):
    nodes = [make_node(f"n{i}") for i in range(NODES)]
    check_random_histories(nodes, tmp_path, write_fraction)


def check_random_histories(nodes, tmp_path, write_fraction: float,
                           procs_per_node: int = PROCS_PER_NODE, pages: int = PAGES,
                           page_stride: int = 1, ops: int = OPS_PER_PROC,
                           think_s: float = THINK_TIME_S, timeout_s: float = RUN_TIMEOUT_S,
                           min_request_fraction: float = 0.1) -> None:
    """Run the random reads and writes on ``nodes`` (``procs_per_node`` actors each: 1 or 2)
    over ``pages`` pages ``page_stride`` pages apart, and check every word's history."""
    assert procs_per_node in (1, 2)
    actors = len(nodes) * procs_per_node
    words = actors + SHARED_WORDS
    assert words <= WORDS_PER_PAGE
    paths = [str(tmp_path / f"log{actor}.json") for actor in range(actors)]
    # send every node its work first, collect afterwards: the nodes run at the same time
    for i, node in enumerate(nodes):
        parent, child = procs_per_node * i, procs_per_node * i + 1
        node.send((LOOP + (FORKED_ACTOR if procs_per_node == 2 else ONE_ACTOR)).format(
            pages=pages, stride_pages=page_stride, words_per_page=WORDS_PER_PAGE, ops=ops,
            actors=actors, words=words, think=think_s, write_fraction=write_fraction,
            shared_write_fraction=SHARED_WRITE_FRACTION, stride=VALUE_STRIDE,
            parent_actor=parent, parent_seed=random.randrange(1 << 30), parent_path=paths[parent],
            child_actor=child, child_seed=random.randrange(1 << 30),
            child_path=paths[child] if procs_per_node == 2 else "",
        ))
    for node in nodes:
        node.wait(timeout_s)
    logs = [json.load(open(p)) for p in paths]
    assert sum(len(log) for log in logs) == actors * ops
    # had the harness run the nodes one after another, this history would prove little
    assert not spans_overlap(logs), f"actors that did not run concurrently: {spans_overlap(logs)}"
    t0 = time.monotonic_ns()
    final = nodes[0].run("", "slots[:, :%d].tolist()" % words)
    t1 = time.monotonic_ns()
    problem = check_history(history_from_logs(logs, final, (t0, t1)))
    assert problem is None, problem
    # the pages really moved: most operations on these shared pages needed the network
    requests = sum(n.run("", "node.stats()")["counters"].get("requests", 0) for n in nodes)
    assert requests > actors * ops * min_request_fraction, requests
    # the same final state on every node
    for node in nodes[1:]:
        assert node.run("", "slots[:, :%d].tolist()" % words) == final


# --- the helpers: a bad history must fail --------------------------------------------------------

def healthy_logs():
    """Two actors on word (0, 2): actor 0 writes 1 then 2, actor 1 reads 1 in between and 2
    after."""
    return [
        [("w", 0, 2, 1, 0, 10), ("w", 0, 2, 2, 20, 30)],
        [("r", 0, 2, 1, 12, 18), ("r", 0, 2, 2, 40, 50)],
    ]


def test_a_healthy_recorded_history_passes():
    assert check_history(history_from_logs(healthy_logs(), [[0, 0, 2]], (60, 70))) is None


def test_an_injected_stale_read_fails_the_check():
    logs = healthy_logs()
    logs[1].append(("r", 0, 2, 1, 55, 58))  # the old value, after the newer write completed
    problem = check_history(history_from_logs(logs, [[0, 0, 2]], (60, 70)))
    assert problem is not None and "(0, 2)" in problem and "p1 r->1 [55, 58]" in problem


def test_a_lost_write_fails_the_check_through_the_final_read():
    problem = check_history(history_from_logs(healthy_logs(), [[0, 0, 1]], (60, 70)))
    assert problem is not None and f"p{FINAL_READER} r->1" in problem


def test_a_serialized_run_is_noticed():
    logs = [[("w", 0, 0, 1, 0, 10)], [("w", 0, 1, 1, 20, 30)]]
    assert spans_overlap(logs) == [(0, 1)]
    assert spans_overlap(healthy_logs()) == []
