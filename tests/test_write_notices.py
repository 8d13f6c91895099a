"""The coordinator's write notices (``dsm.directory.notices``) alone: what an acquire must
invalidate is every run another node released since the node's last acquire, merged; it costs
what was released, not the region; and a node that never acquires keeps a bounded list."""

from __future__ import annotations

import pytest

from dsm.directory import notices as n
from dsm.directory.notices import WriteNotices, merged_runs

pytestmark = pytest.mark.timeout(30)

def test_an_acquire_takes_the_others_releases_merged_and_forgets_them():
    w = WriteNotices()
    for node in "abc":
        w.joined(node)
    w.released("a", [10, 2, 40, 1])
    w.released("b", [11, 3, 39, 1])
    assert w.take("c") == [10, 4, 39, 2]  # 10-11 and 11-13 joined; 39 and 40 adjacent
    assert w.take("c") == []  # taken
    assert w.take("a") == [11, 3, 39, 1]  # its own releases are not noticed to it
    assert w.take("b") == [10, 2, 40, 1]
    assert w.counters == {"notices_released": 7, "notices_delivered": 6 + 4 + 3}


def test_a_node_that_never_acquires_keeps_its_runs_merged_not_one_per_release():
    w = WriteNotices()
    w.joined("idle")
    for i in range(10 * n.MERGE_AFTER_RUNS):
        w.released("busy", [i % 8, 1])  # the same 8 pages, released again and again
    assert len(w.pending["idle"]) <= n.MERGE_AFTER_RUNS
    assert w.take("idle") == [0, 8]


def test_a_node_gone_is_forgotten_and_one_joining_late_notices_from_then_on():
    w = WriteNotices()
    w.joined("a")
    w.released("b", [5, 1])  # b joins at its first release
    w.gone("a")
    assert w.take("a") == []
    w.joined("c")
    w.released("b", [6, 1])
    assert w.take("c") == [6, 1]


@pytest.mark.parametrize("runs,merged", [
    ([], []),
    ([(3, 1)], [(3, 1)]),
    ([(5, 2), (1, 2)], [(1, 2), (5, 2)]),
    ([(1, 2), (3, 1)], [(1, 3)]),  # adjacent
    ([(1, 5), (2, 1)], [(1, 5)]),  # inside
    ([(1, 3), (2, 5), (9, 1)], [(1, 6), (9, 1)]),
])
def test_runs_merge_sorted_with_overlapping_and_adjacent_ones_joined(runs, merged):
    assert merged_runs(runs) == merged
