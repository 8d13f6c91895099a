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


def test_ping_pong_writes_to_one_page(make_node):
    nodes = [make_node(n) for n in "abc"]
    for n in nodes:
        n.run("c = node.array('c', (1,), np.int64)")
    for i in range(30):
        for n in nodes:
            n.run("c[0] += 1")
    for n in nodes:
        assert n.run("", "int(c[0])") == 90


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
