"""Data that travels with its lock (``node.lock(name, guards=...)``, ``dsm.guards``): on real
nodes, a grant carries the guarded pages' home copies and the agent installs them before the
acquire returns, so that updates under the lock are exact and fault on nothing over the network;
bad guards are refused with the reason, and a holder that dies holding the lock leaves nothing
hanging."""

import signal

import pytest

from tests.cluster import Directory, NodeProcess

pytestmark = pytest.mark.timeout(120)

NODES = 3
INCREMENTS = 40
HISTOGRAM_BINS = 64
VALUES_PER_NODE = 300

#: each node adds to a counter and to a histogram, each under its own lock guarding it; a fork
#: of every node does the same (a second process of the node, guards and all)
GUARDED_UPDATES = """
counter = node.array('g.counter', (1,), np.int64, consistency='release')
hist = node.array('g.hist', ({bins},), np.int64, consistency='release')
count_lock = node.lock('g.counter', guards=counter)
hist_lock = node.lock('g.hist', guards=[hist[:{bins} // 2], hist[{bins} // 2:]])
values = np.random.default_rng({seed}).integers(0, {bins}, {values})
node.barrier('g.start', {nodes}).wait()
def work(vals):
    for i in range({n}):
        with count_lock:
            counter[0] += 1
        with hist_lock:
            hist[vals[i % len(vals)]] += 1
pid = os.fork()
if pid == 0:
    try:
        work(values[::-1])
        os._exit(0)
    except BaseException:
        os._exit(1)
work(values)
_, status = os.waitpid(pid, 0)
assert status == 0, status
"""


def expected_histogram(seeds: list[int]) -> list[int]:
    import numpy as np
    hist = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
    for seed in seeds:
        values = np.random.default_rng(seed).integers(0, HISTOGRAM_BINS, VALUES_PER_NODE)
        for vals in (values, values[::-1]):
            for i in range(INCREMENTS):
                hist[vals[i % len(vals)]] += 1
    return hist.tolist()


def test_a_counter_and_a_histogram_under_guarded_locks_are_exact(make_node):
    nodes = [make_node(f"n{i}") for i in range(NODES)]
    for i, n in enumerate(nodes):
        n.send(GUARDED_UPDATES.format(bins=HISTOGRAM_BINS, seed=i, values=VALUES_PER_NODE,
                                      nodes=NODES, n=INCREMENTS))
    for n in nodes:
        n.wait(100)
    read = ("with count_lock:\n    c = int(counter[0])\n"
            "with hist_lock:\n    h = hist.tolist()\n")
    results = [n.run(read, "(c, h)") for n in nodes]
    total = NODES * 2 * INCREMENTS
    assert all(c == total for c, _ in results), [c for c, _ in results]
    assert all(h == expected_histogram(list(range(NODES))) for _, h in results)
    stats = [n.run("", "node.stats()")["counters"] for n in nodes]
    assert all(s.get("guarded_pages_in", 0) > 0 for s in stats), stats


#: node ``a`` updates the counter under the guarded lock, again and again, taking turns with
#: node ``b`` (a barrier between turns): every turn the page comes with the grant
TURNS = 20
TAKE_TURNS = """
counter = node.array('t.counter', (512,), np.int64, consistency='release')
lock = node.lock('t.counter', guards=counter)
turn = node.barrier('t.turn', 2)
with lock:
    counter[:] += 0  # a first touch of the page: granted by a fault, as without guards
turn.wait()
before = node.stats()['counters']
for t in range({turns}):
    if t % 2 == {me}:
        with lock:
            counter[t] = counter[t - 1] + 1 if t else 1
    turn.wait()
after = node.stats()['counters']
"""


def test_guarded_data_comes_with_the_grant_without_a_fault_over_the_network(make_node):
    a, b = make_node("a"), make_node("b")
    a.send(TAKE_TURNS.format(turns=TURNS, me=0))
    b.send(TAKE_TURNS.format(turns=TURNS, me=1))
    a.wait(100)
    b.wait(100)
    for node, me in ((a, 0), (b, 1)):
        before, after = node.run("", "(before, after)")
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        # its turns' reads of what the other wrote, and its writes: no page request at all
        # (the barriers' notices name the page; the lock's grant brings it back)
        assert delta.get("requests", 0) == 0, delta
        assert delta.get("guarded_pages_in", 0) >= TURNS // 2 - 1, delta
        assert delta.get("twins", 0) >= TURNS // 2, delta  # twinned as they came
    assert a.run("", "counter[:%d].tolist()" % TURNS) == list(range(1, TURNS + 1))


@pytest.mark.parametrize("guards, complaint", [
    ("seq", "sequentially consistent: its pages have one owner at a time"),
    ("np.zeros(4)", "lies outside the shared region"),
    ("np.frombuffer(node.memoryview(), np.uint8)[-8:]",
     "not within one array this process got from node.array"),
    ("'counter'", "guards must be a numpy array or a list of them, got one of type 'str'"),
    ("[rel, 3]", "guards[1] is of type 'int': a lock guards numpy arrays"),
    ("big", "guards cover 1025 pages; a lock guards at most 1024"),
])
def test_bad_guards_are_refused_with_the_reason(make_node, guards, complaint):
    a = make_node("a")
    out = a.run("seq = node.array('b.seq', (8,), np.int64)\n"
                "rel = node.array('b.rel', (8,), np.int64, consistency='release')\n"
                "big = node.array('b.big', (1025 * 4096,), np.uint8, consistency='release')\n"
                "try:\n"
                f"    node.lock('b.lock', guards={guards})\n"
                "    r = ''\n"
                "except ValueError as e:\n"
                "    r = str(e)\n", "r")
    assert complaint in out, out
    assert "b.lock" in out, out


def test_a_slice_guards_only_its_pages_and_the_lock_still_works(make_node):
    a, b = make_node("a"), make_node("b")
    code = ("x = node.array('s.x', (4, 512), np.int64, consistency='release')\n"
            "lock = node.lock('s.lock', guards=x[2])\n")
    a.run(code + "with lock:\n    x[2, :] = 7\n")
    assert b.run(code + "with lock:\n    s = int(x[2].sum())\n", "s") == 7 * 512
    assert b.run("", "node.stats()['counters'].get('guarded_pages_in', 0)") == 1


def test_a_holder_that_dies_holding_a_guarded_lock_passes_it_on_broken(make_node):
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    setup = ("x = node.array('d.x', (8,), np.int64, consistency='release')\n"
             "lock = node.lock('d.lock', guards=x)\n")
    a.run(setup + "with lock:\n    x[0] = 41\n")  # released: at home
    a.run("lock.acquire()\nx[0] = 99\n")  # never released
    b.send(setup + "lock.acquire()\n")
    a.kill()
    b.wait(60)
    assert b.run("", "lock.previous_holder_died") is True
    # the data may be half-updated (the dead holder's process unmapped the region as it died,
    # which sends its changes home): the last release's value or the dead holder's, nothing
    # else, and the lock goes on carrying what its holders write
    assert b.run("", "int(x[0])") in (41, 99)
    b.run("x[0] = 7\nlock.release()\n")
    assert c.run(setup + "with lock:\n    v = int(x[0])\n", "v") == 7
    assert c.run("", "node.stats()['counters'].get('guarded_pages_in', 0)") == 1


def test_guards_of_another_shards_pages_are_fetched_at_a_fault(tmp_path):
    """With shards, a grant carries the coordinator's pages only; the rest fault as before."""
    directory = Directory(tmp_path, shards=2)
    nodes = []
    try:
        nodes = [NodeProcess(directory.endpoint, f"n{i}", tmp_path, wait=False)
                 for i in range(2)]
        for n in nodes:
            n.wait_attached()
        code = ("x = node.array('sh.x', (2 * 256 * 512,), np.int64, consistency='release')\n"
                "lock = node.lock('sh.lock', guards=[x[:512], x[256 * 512:257 * 512]])\n"
                "for _ in range(10):\n"
                "    with lock:\n"
                "        x[0] += 1\n        x[256 * 512] += 1\n")
        for n in nodes:
            n.send(code)
        for n in nodes:
            n.wait(100)
        assert nodes[0].run("with lock:\n    v = (int(x[0]), int(x[256 * 512]))\n",
                            "v") == [20, 20]
    finally:
        for n in nodes:
            n.kill()
        directory.kill()


# --- the directory's side alone: SyncRequests with a carry that records what it was asked -----
def _requests():
    from dsm.directory.syncrequests import SyncRequests
    from dsm.layout import DEFAULT_BASE_ADDRESS, PAGE_SIZE, Layout
    asked = []

    def carry(node, lock, guards, broken):
        asked.append((node, guards, broken))
        return guards, b"\x07" * (PAGE_SIZE * sum(guards[1::2]))
    layout = Layout(DEFAULT_BASE_ADDRESS, 64 * PAGE_SIZE, PAGE_SIZE)
    return SyncRequests(layout, lambda: 0.0, carry), asked


@pytest.mark.parametrize("guards, complaint", [
    ([3], "guards must be [first, count, ...] runs: 1 numbers"),
    ([3, 0], "has a run of no pages"),
    ([0, 2000], "names 2000 pages; a lock guards at most 1024"),
    ([60, 8], "67"),  # past the region's 64 pages: the page it names
])
def test_a_malformed_guards_list_is_refused_and_changes_nothing(guards, complaint):
    from dsm import protocol as p
    from dsm.errors import DsmError
    requests, asked = _requests()
    acquire = requests.handlers()[p.LockAcquire]
    with pytest.raises(DsmError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        acquire("a", p.LockAcquire(1, "l", "a:1:1", -1, guards), None)
    assert requests.sync.status("l") == ("", []) and not asked
    # the lock is as free as before: a good request is granted, its guards carried
    (grant,) = acquire("a", p.LockAcquire(2, "l", "a:1:1", -1, [5, 2]), None)
    assert grant.message.guarded == [5, 2] and grant.message.payload == p.Payload.DATA
    assert len(grant.page) == 2 * 4096 and asked == [("a", [5, 2], False)]


def test_a_waiters_guards_are_carried_at_its_grant_and_forgotten_when_it_departs():
    from dsm import protocol as p
    requests, asked = _requests()
    handlers = requests.handlers()
    handlers[p.LockAcquire]("a", p.LockAcquire(1, "l", "a:1:1", -1, [1, 1]), None)
    assert handlers[p.LockAcquire]("b", p.LockAcquire(1, "l", "b:1:1", -1, [1, 1]), None) == []
    handlers[p.LockAcquire]("c", p.LockAcquire(1, "l", "c:1:1", -1, [2, 1]), None)
    handlers[p.Departed]("b", p.Departed("b:1"), None)  # b's waiter goes, with its guards
    released, granted = handlers[p.LockRelease]("a", p.LockRelease(2, "l", "a:1:1"), None)
    assert granted.node == "c" and granted.message.guarded == [2, 1]
    assert not released.message.guarded and asked[-1] == ("c", [2, 1], False)
    assert not requests._guards
    # a holder's death passes the lock on broken: the carry is told so
    handlers[p.LockAcquire]("a", p.LockAcquire(3, "l", "a:1:1", -1, [1, 1]), None)
    (broken,) = requests.gone("c")
    assert broken.message.status == p.SyncStatus.GRANTED_BROKEN and asked[-1][2] is True


@pytest.mark.timeout(30)
def test_a_grant_dirties_the_pages_it_carries_until_their_diff_or_the_locks_release():
    """The holder installs the carried pages twinned without a Dirtied each: the grant is their
    Dirtied at the home. A death before their Diff or the lock's release loses them (loudly);
    the release ends what the holder never twinned; a Dirtied of the holder's own outlives it."""
    from dsm.directory.home import HomeStore
    from dsm.directory.release import ReleaseHomes
    from dsm.layout import DEFAULT_BASE_ADDRESS, PAGE_SIZE, Layout
    homes = ReleaseHomes(HomeStore(Layout(DEFAULT_BASE_ADDRESS, 64 * PAGE_SIZE, PAGE_SIZE)),
                         lambda q: True)
    runs, data = homes.carry("a", "l", [1, 3], lambda q: True)
    assert runs == [1, 3] and len(data) == 3 * PAGE_SIZE
    assert all(homes.dirty[q] == {"a"} for q in (1, 2, 3))
    homes.apply("a", 1, 1, 1, None, None)  # page 1's Diff: clean, whatever the lock does
    homes.explicitly_dirtied("a", [2])  # a wrote page 2 itself: its Diff alone ends that
    homes.released("a", "m")  # another lock's release changes nothing
    assert set(homes.dirty) == {2, 3}
    homes.released("a", "l")
    assert homes.dirty == {2: {"a"}} and not homes.carried
    homes.carry("b", "l", [5, 1], lambda q: True)
    lost, _ = homes.node_lost("b")  # b dies holding the lock: what it carried is lost
    assert lost == [5] and homes.dirty == {2: {"a"}} and not homes.carried
