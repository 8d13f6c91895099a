"""The kernel's non-cooperative events inside a workload, each with its effect seen on another node."""

import pytest

pytestmark = pytest.mark.timeout(90)

PAGE = 4096
WORDS = PAGE // 8  # int64 words per page


def test_os_fork_child_shares_the_nodes_pages(make_node):
    a, b = make_node("a"), make_node("b")
    a.run("x = node.array('x', (4 * 512,), np.int64); x[:512] = 5")
    a.run(
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    x[512:] = x[0] + 1  # the child reads the parent's page and writes new ones\n"
        "    os._exit(0)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "assert status == 0, status\n"
    )
    assert a.run("", "int(x[512])") == 6
    assert b.run("x = node.array('x', (4 * 512,), np.int64)", "x.tolist()") == [5] * 512 + [6] * 1536


def test_multiprocessing_fork_children_write_for_another_node(make_node):
    a, b = make_node("a"), make_node("b")
    a.run(
        "import multiprocessing as mp\n"
        "x = node.array('mp', (4, 512), np.int64)\n"
        "def work(i):\n"
        "    x[i, :] = i + 1\n"
        "ctx = mp.get_context('fork')\n"
        "ps = [ctx.Process(target=work, args=(i,)) for i in range(4)]\n"
        "[p.start() for p in ps]\n"
        "[p.join(30) for p in ps]\n"
        "assert all(p.exitcode == 0 for p in ps), [p.exitcode for p in ps]\n"
    )
    rows = b.run("x = node.array('mp', (4, 512), np.int64)", "x[:, 0].tolist()")
    assert rows == [1, 2, 3, 4]


def test_remap_moves_addresses_not_pages(make_node):
    a, b = make_node("a"), make_node("b")
    a.run("x = node.array('r', (8 * 512,), np.int64)")
    # move two pages of the region elsewhere in a's address space, then write through the new place
    a.run(
        "import ctypes\n"
        "src = node.address_of(x) + 2 * 4096\n"
        "spare = libc.mmap_at(0, 2 * 4096, 0, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)\n"
        "dst = libc.mremap(src, 2 * 4096, 2 * 4096, libc.MREMAP_MAYMOVE | libc.MREMAP_FIXED, spare)\n"
        "moved = np.ndarray((2 * 512,), np.int64, buffer=(ctypes.c_char * 8192).from_address(dst))\n"
        "moved[:] = 42\n"
    )
    got = b.run("x = node.array('r', (8 * 512,), np.int64)", "x[:].tolist()")
    assert got == [0] * 1024 + [42] * 1024 + [0] * 2048


def test_madv_remove_discards_cluster_wide_and_dontneed_keeps(make_node):
    a, b = make_node("a"), make_node("b")
    a.run("x = node.array('m', (4 * 512,), np.int64); x[:] = 9")
    b.run("x = node.array('m', (4 * 512,), np.int64)")
    assert b.run("", "int(x.sum())") == 9 * 2048  # b holds read copies now, a too
    a.run("base = node.address_of(x); libc.madvise(base, 4096, libc.MADV_DONTNEED)")
    assert a.run("", "int(x[:512].sum())") == 9 * 512  # DONTNEED on shared memory keeps data
    a.run("x[512:1024] = 3")  # a owns page 1 exclusively, page 0 shared
    a.run("libc.madvise(base, 2 * 4096, libc.MADV_REMOVE)")
    # the removing process sees zeros at once ...
    assert a.run("", "x[:1024].tolist()") == [0] * 1024
    # ... the other nodes once the discard reached them: the kernel releases madvise as soon as
    # the agent has read the Remove event, before the agent can tell REMOVE from DONTNEED
    b.run(
        "import time\n"
        "deadline = time.monotonic() + 5\n"
        "while x[:1024].any() and time.monotonic() < deadline:\n"
        "    time.sleep(0.001)\n"
    )
    assert b.run("", "x[:1024].tolist()") == [0] * 1024
    assert b.run("", "int(x[1024:].sum())") == 9 * 1024


def test_unmap_gives_pages_back_with_their_contents(make_node):
    a, b = make_node("a"), make_node("b")
    a.run("x = node.array('u', (4 * 512,), np.int64); x[:] = 11")
    a.run("libc.munmap(node.address_of(x), 4 * 4096)")
    stats = a.run("", "node.stats()")
    assert stats["counters"].get("writebacks", 0) == 4
    assert b.run("x = node.array('u', (4 * 512,), np.int64)", "x.tolist()") == [11] * 2048
