"""A randomized coherence test: several nodes, several processes per node (a parent and a forked
child), random reads and writes of per-page counters, and a checker of the recorded history:
no lost write, no read of a value older than a write that completed before the read began."""

import json
import random
import time

import pytest

pytestmark = pytest.mark.timeout(180)

NODES = 3
PROCS_PER_NODE = 2
PAGES = 4
OPS_PER_PROC = 250
ACTORS = NODES * PROCS_PER_NODE
#: the actors start together this long after the test sends them their work
START_DELAY_S = 1.0

LOOP = """
import json, os, random, time
slots = node.array('slots', ({pages}, 512), np.int64)
def actor(actor_id, seed, path):
    rng = random.Random(seed)
    while time.monotonic_ns() < {start_ns}:  # every actor starts at once (one host: one clock)
        time.sleep(0.001)
    log, seq = [], 0
    for _ in range({ops}):
        page = rng.randrange({pages})
        if rng.random() < 0.5:
            seq += 1
            time.sleep(0.0002)  # let the other actors in between operations
            t0 = time.monotonic_ns(); slots[page, actor_id] = seq; t1 = time.monotonic_ns()
            log.append(('w', page, actor_id, seq, t0, t1))
        else:
            slot = rng.randrange({actors})
            time.sleep(0.0002)
            t0 = time.monotonic_ns(); v = int(slots[page, slot]); t1 = time.monotonic_ns()
            log.append(('r', page, slot, v, t0, t1))
    with open(path, 'w') as f:
        json.dump(log, f)
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


def check_history(logs, final):
    writes = {}  # (page, slot) -> list of (value, t_end)
    for log in logs:
        for kind, page, slot, value, t0, t1 in log:
            if kind == "w":
                writes.setdefault((page, slot), []).append((value, t0, t1))
    problems = []
    for log in logs:
        for kind, page, slot, value, t0, t1 in log:
            if kind != "r":
                continue
            written = writes.get((page, slot), [])
            if value and value not in {w[0] for w in written}:
                problems.append(f"read of never-written value {value} at {(page, slot)}")
            newer_done = [w for w in written if w[0] > value and w[2] < t0]
            if newer_done:
                problems.append(
                    f"stale read at {(page, slot)}: got {value} after write of {newer_done[0][0]} completed"
                )
    for (page, slot), ws in writes.items():
        last = max(w[0] for w in ws)
        if final[page][slot] != last:
            problems.append(f"lost write at {(page, slot)}: final {final[page][slot]}, last written {last}")
    return problems


def test_history_is_sequentially_consistent(make_node, tmp_path):
    nodes = [make_node(f"n{i}") for i in range(NODES)]
    paths = []
    start_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
    for i, node in enumerate(nodes):
        parent, child = 2 * i, 2 * i + 1
        ppath, cpath = str(tmp_path / f"log{parent}.json"), str(tmp_path / f"log{child}.json")
        paths += [ppath, cpath]
        node.send(LOOP.format(
            pages=PAGES, ops=OPS_PER_PROC, actors=ACTORS, start_ns=start_ns,
            parent_actor=parent, parent_seed=random.randrange(1 << 30), parent_path=ppath,
            child_actor=child, child_seed=random.randrange(1 << 30), child_path=cpath,
        ))
    for node in nodes:
        node.wait(150)
    logs = [json.load(open(p)) for p in paths]
    assert sum(len(log) for log in logs) == ACTORS * OPS_PER_PROC
    final = nodes[0].run("", "slots[:, :%d].tolist()" % ACTORS)
    problems = check_history(logs, final)
    assert not problems, "\n".join(problems[:20])
    # the pages really moved: most operations on these shared pages needed the network
    requests = sum(n.run("", "node.stats()")["counters"].get("requests", 0) for n in nodes)
    assert requests > ACTORS * OPS_PER_PROC // 10, requests
    # the same final state on every node
    for node in nodes[1:]:
        assert node.run("", "slots[:, :%d].tolist()" % ACTORS) == final


def test_checker_catches_a_stale_read_and_a_lost_write():
    logs = [[("w", 0, 0, 1, 0, 10), ("w", 0, 0, 2, 20, 30)], [("r", 0, 0, 1, 40, 50)]]
    problems = check_history(logs, final=[[1]])
    assert any("stale read" in p for p in problems)
    assert any("lost write" in p for p in problems)
