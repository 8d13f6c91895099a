"""A fresh array's first touch on real clusters: a node writing it in order is granted runs of
untouched pages (zeros, no bytes: ``Acquire.untouched``), far fewer requests than pages, under
every manager; and a page another node holds is never in such a run (its contents survive)."""

from __future__ import annotations

import pytest

from tests.cluster import Directory, NodeProcess

pytestmark = pytest.mark.timeout(60)

#: the fresh array: 8 MiB of int64, 2,048 pages of 4 KiB
WORDS = 1 << 20
WORDS_PER_PAGE = 512
PAGES = WORDS // WORDS_PER_PAGE
#: pages a request brings at least, on average, to a node writing a fresh array in order (a
#: run is up to 1,024 pages; a shard's stripe, 256)
AT_LEAST_PAGES_PER_REQUEST = 64


@pytest.fixture(params=["relay", "central", "2 shards"])
def cluster_directory(request, tmp_path):
    if request.param == "2 shards":
        d = Directory(tmp_path, shards=2)
    else:
        d = Directory(tmp_path, extra=["--manager", request.param])
    yield d
    d.kill()


def test_a_node_writing_a_fresh_array_in_order_asks_for_runs_not_pages(cluster_directory,
                                                                         tmp_path):
    node = NodeProcess(cluster_directory.endpoint, "a", tmp_path)
    try:
        counters = node.run(
            f"x = node.array('fresh', ({WORDS},), np.int64)\n"
            "before = node.stats()['counters']\n"
            "x[:] = 7\n"
            "after = node.stats()['counters']\n"
            "delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}\n"
            "delta['ok'] = bool((x == 7).all())\n", "delta")
    finally:
        node.close()
    assert counters["ok"]
    assert counters["pages_in"] == PAGES
    assert 0 < counters["requests"] <= PAGES // AT_LEAST_PAGES_PER_REQUEST, counters


def test_pages_another_node_holds_are_never_in_a_run_of_untouched_pages(tmp_path):
    directory = Directory(tmp_path)
    a = b = None
    try:
        a = NodeProcess(directory.endpoint, "a", tmp_path)
        b = NodeProcess(directory.endpoint, "b", tmp_path)
        # b writes the second half first: it owns those pages
        b.run(f"x = node.array('shared', ({WORDS},), np.int64)\nx[{WORDS // 2}:] = 5")
        # a writes the first half in order: its runs must stop where b's pages begin
        a.run(f"x = node.array('shared', ({WORDS},), np.int64)\n"
              f"before = node.stats()['counters'].get('requests', 0)\nx[:{WORDS // 2}] = 3\n"
              "requests = node.stats()['counters']['requests'] - before")
        # had a run of a's taken b's pages, a would hold zeros there: it reads b's fives
        first_half, second_half = a.run(
            "", f"[int((x[:{WORDS // 2}] == 3).sum()), int((x[{WORDS // 2}:] == 5).sum())]")
        assert (first_half, second_half) == (WORDS // 2, WORDS // 2)
        assert b.run("", f"bool((x[{WORDS // 2}:] == 5).all())")
        assert a.run("", "requests") <= PAGES // 2 // AT_LEAST_PAGES_PER_REQUEST
    finally:
        for node in (a, b):
            if node is not None:
                node.close()
        directory.kill()
