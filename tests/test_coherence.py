"""Coherence across real nodes: a directory and node processes over tcp loopback and ipc."""

import pytest

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=["tcp", "ipc"])
def transport(request):
    return request.param


def test_read_sharing_then_one_write_invalidates_every_copy(make_node):
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    a.run("x = node.array('x', (4096,), np.int64); x[:] = np.arange(4096)")
    for reader in (b, c):
        total = reader.run("x = node.array('x', (4096,), np.int64)", "int(x.sum())")
        assert total == 4096 * 4095 // 2
    a.run("x[:] = 7")
    for reader in (b, c):
        assert reader.run("", "int(x.sum())") == 7 * 4096
        stats = reader.run("", "node.stats()")
        assert stats["counters"].get("invalidations", 0) >= 1


#: the concurrent-writers test: rounds, each started by a barrier, and the unlocked increments
#: every node makes to its own word of the shared page in one round (each followed by a locked
#: increment of the shared word)
WRITER_NODES = 3
ROUNDS = 20
INCREMENTS_PER_ROUND = 10
WORDS_PER_PAGE = 4096 // 8
#: the word of the page that holds the counter shared by all nodes, under a lock
SHARED_WORD = WORDS_PER_PAGE - 1
#: the deadline of one node's share of the concurrent writes
WRITERS_TIMEOUT_S = 60.0
WRITERS = """
words = node.array('pingpong', ({words},), np.int64)   # one page: every word below shares it
bar = node.barrier('pingpong', {nodes})
lock = node.lock('pingpong')
violations = []
for k in range({rounds}):
    bar.wait()
    # what every node wrote before the barrier is visible; nobody is past the next barrier,
    # so each counter lies between what this round started with and what it ends with
    for j in range({nodes}):
        seen = int(words[j])
        if not k * {inc} <= seen <= (k + 1) * {inc}:
            violations.append(f'round {{k}}: node {{j}} counter {{seen}}')
    shared = int(words[{shared}])
    if not k * {nodes} * {inc} <= shared <= (k + 1) * {nodes} * {inc}:
        violations.append(f'round {{k}}: shared counter {{shared}}')
    for _ in range({inc}):
        words[{me}] += 1          # no lock: a lost invalidation or a stale copy loses this
        with lock:                # the others' unlocked writes hit this page meanwhile
            words[{shared}] += 1
bar.wait()
"""


def test_concurrent_writers_on_one_page_lose_no_write(make_node):
    nodes = [make_node(f"w{i}") for i in range(WRITER_NODES)]
    # every node gets its work before any is waited for: they write the page at the same time
    for me, n in enumerate(nodes):
        n.send(WRITERS.format(nodes=WRITER_NODES, rounds=ROUNDS, inc=INCREMENTS_PER_ROUND,
                              words=WORDS_PER_PAGE, shared=SHARED_WORD, me=me))
    for n in nodes:
        n.wait(WRITERS_TIMEOUT_S)
    for n in nodes:
        assert n.run("", "violations") == []
    expected_own = ROUNDS * INCREMENTS_PER_ROUND
    for n in nodes:
        own = n.run("", f"words[:{WRITER_NODES}].tolist()")
        shared = n.run("", f"int(words[{SHARED_WORD}])")
        assert own == [expected_own] * WRITER_NODES
        assert shared == sum(own)  # one locked increment for each unlocked one
    # the page really went back and forth: each node asked the directory for it over and over
    for n in nodes:
        page_requests = n.run("", "node.stats()")["counters"].get("requests", 0)
        assert page_requests >= ROUNDS, page_requests


def test_false_sharing_loses_no_write(make_node):
    nodes = [make_node(n) for n in "abc"]
    for n in nodes:
        n.run("w = node.array('w', (3,), np.int64)")
    # the nodes hammer different words of the same page at the same time
    for i, n in enumerate(nodes):
        n.send(f"for i in range(300): w[{i}] += 1")
    for n in nodes:
        n.wait(60)
    for n in nodes:
        assert n.run("", "w.tolist()") == [300, 300, 300]


def test_a_process_attaching_late_cannot_write_a_read_copy_silently(make_node, tmp_path):
    a, b = make_node("a"), make_node("b")
    a.run("x = node.array('late', (512,), np.int64); x[0] = 1")
    b.run("x = node.array('late', (512,), np.int64)")
    assert b.run("", "int(x[0])") == 1  # b holds a read copy now
    # a second process attaches to b's agent and writes the page b only has a copy of
    b.run(
        "import subprocess, sys\n"
        "code = ('import dsm, numpy as np; n = dsm.attach(socket_path=%r); '\n"
        "        'y = n.array(\"late\", (512,), np.int64); y[0] = 2; n.close()')\n"
        "subprocess.run([sys.executable, '-c', code % node._sock.getpeername()], check=True, timeout=30)\n"
    )
    assert a.run("", "int(x[0])") == 2
    assert b.run("", "int(x[0])") == 2
