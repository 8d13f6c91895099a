"""The directory's state machines for programs, one class at a time: the allocator with freeing,
who holds which array, atomic arrays, and the collectives of a job."""

from __future__ import annotations

import numpy as np
import pytest

from dsm import collectives
from dsm.consistency import META_KEY
from dsm.directory.allocations import AllocationError, Allocations
from dsm.directory.atomics import AtomicError, AtomicTable, wrapped
from dsm.directory.collectives import CollectiveTable
from dsm.directory.lifetimes import ArrayHolders
from dsm.layout import Layout
from dsm.protocol import AtomicKind, CollectiveKind, ReduceOp

PAGE = 4096
LAYOUT = Layout(0x7F0000000000, 16 * PAGE, PAGE)
RELEASE = {META_KEY: "release"}


def test_freed_memory_is_handed_out_again_and_neighbours_merge():
    allocs = Allocations(LAYOUT)
    a = allocs.find_or_create("a", 4 * PAGE, {})
    b = allocs.find_or_create("b", 4 * PAGE, {})
    c = allocs.find_or_create("c", 8 * PAGE, {})
    assert allocs.free_bytes() == 0
    with pytest.raises(AllocationError, match="has 0 of"):
        allocs.find_or_create("d", 1, {})
    for alloc in (a, b):
        allocs.unlink(alloc.name)
        allocs.reclaim(alloc)
    # a and b merged: an array of both their sizes fits where they were
    d = allocs.find_or_create("d", 8 * PAGE, {})
    assert d.offset == a.offset and allocs.free_bytes() == 0
    assert allocs.at(c.offset + 1) is c and allocs.at(d.offset + 5 * PAGE) is d
    assert [x.name for x in allocs.live()] == ["d", "c"]


def test_an_unlinked_array_keeps_its_memory_until_reclaimed_and_its_name_is_free():
    allocs = Allocations(LAYOUT)
    a = allocs.find_or_create("a", PAGE, {})
    allocs.unlink("a")
    assert allocs.get("a") is None and allocs.at(a.offset) is a  # still in use by its holders
    again = allocs.find_or_create("a", PAGE, {})
    assert again.offset != a.offset
    allocs.reclaim(a)
    assert allocs.get("a") is again  # reclaiming the old one leaves the new name alone


def test_create_true_and_false_refuse_naming_why():
    allocs = Allocations(LAYOUT)
    with pytest.raises(AllocationError, match="no array named 'x'.*create=False"):
        allocs.find_or_create("x", 8, {}, create=False)
    allocs.find_or_create("x", 8, {}, create=True)
    with pytest.raises(AllocationError, match="'x' exists already.*create=True"):
        allocs.find_or_create("x", 8, {}, create=True)
    assert allocs.find_or_create("x", 8, {}, create=False).name == "x"


def test_a_freed_release_arrays_pages_are_retired_not_reused():
    allocs = Allocations(LAYOUT)
    r = allocs.find_or_create("r", 2 * PAGE, RELEASE)
    allocs.unlink("r")
    allocs.reclaim(r)
    assert allocs.retired_bytes == 2 * PAGE and allocs.is_release(r.offset // PAGE)
    assert allocs.find_or_create("s", PAGE, {}).offset == r.offset + 2 * PAGE


def test_under_retire_freed_every_freed_arrays_pages_are_retired():
    # (the dynamic manager: the nodes that own a freed array's pages keep them, so a new
    # array placed there would read the old one's bytes)
    allocs = Allocations(LAYOUT)
    allocs.retire_freed = True
    x = allocs.find_or_create("x", PAGE, {})
    allocs.unlink("x")
    allocs.reclaim(x)
    assert allocs.retired_bytes == PAGE
    assert allocs.find_or_create("y", PAGE, {}).offset == x.offset + PAGE


def test_a_shard_places_arrays_where_the_coordinator_did():
    coordinator, shard = Allocations(LAYOUT), Allocations(LAYOUT)
    made = [coordinator.find_or_create(n, PAGE * (i + 1), {}) for i, n in enumerate("abc")]
    coordinator.unlink("b")
    coordinator.reclaim(made[1])
    made.append(coordinator.find_or_create("d", PAGE, {}))
    for alloc in made[:3]:
        shard.place(alloc.name, alloc.offset, alloc.nbytes, alloc.meta)
    shard.unlink("b")
    shard.reclaim(shard.at(made[1].offset))
    placed = shard.place("d", made[3].offset, PAGE, {})
    assert placed.offset == made[3].offset
    with pytest.raises(AllocationError, match="overlaps"):
        shard.place("e", made[0].offset, PAGE, {})


def test_memory_is_reclaimed_when_the_last_holder_drops_it():
    allocs = Allocations(LAYOUT)
    holders = ArrayHolders(allocs)
    a = allocs.find_or_create("a", PAGE, {})
    for node in ("n0", "n1", "n2"):
        holders.attached(node, a)
    assert holders.free("n0", "a") == (a, [])  # unlinked: n1 and n2 still hold it
    assert allocs.get("a") is None
    b = allocs.find_or_create("a", PAGE, {})  # a new array of the name
    holders.attached("n0", b)
    assert holders.free("n1", "a") == (a, [])  # n1 drops the one it holds, not the new one
    assert allocs.get("a") is b
    assert holders.node_gone("n2") == [a]  # the last holder left: reclaim it
    assert holders.node_gone("n0") == []  # b was never freed: it lives on


def test_free_of_a_name_nobody_has_is_an_error():
    holders = ArrayHolders(Allocations(LAYOUT))
    with pytest.raises(AllocationError, match="no array named 'nope'"):
        holders.free("n0", "nope")


def test_atomic_operations_return_the_value_before_and_wrap_as_int64():
    table = AtomicTable()
    assert table.apply("c", 2, 1, AtomicKind.FETCH_ADD, 5, 0) == 0
    assert table.apply("c", 2, 1, AtomicKind.EXCHANGE, 9, 0) == 5
    assert table.apply("c", 2, 1, AtomicKind.COMPARE_EXCHANGE, 1, 8) == 9  # not 8: unchanged
    assert table.apply("c", 2, 1, AtomicKind.COMPARE_EXCHANGE, 1, 9) == 9
    assert table.apply("c", 2, 1, AtomicKind.LOAD, 0, 0) == 1
    table.apply("c", 2, 0, AtomicKind.STORE, 2**63 - 1, 0)
    assert table.apply("c", 2, 0, AtomicKind.FETCH_ADD, 1, 0) == 2**63 - 1
    assert table.apply("c", 2, 0, AtomicKind.LOAD, 0, 0) == -(2**63) == wrapped(2**63)
    with pytest.raises(AtomicError, match="has 2 elements; used with size 3"):
        table.apply("c", 3, 0, AtomicKind.LOAD, 0, 0)
    assert table.free("c") and not table.free("c")
    assert table.apply("c", 3, 0, AtomicKind.LOAD, 0, 0) == 0  # a fresh one


def _all_in(table, kind, values, root=0, op=ReduceOp.NONE, job="j", seq=1):
    out = []
    for rank, value in enumerate(values):
        out += table.contribute(f"n{rank}", 100 + rank, job, rank, len(values), seq, kind, root,
                                op, collectives.encode(value))
    return out


def test_a_collective_answers_every_rank_once_all_parts_are_in():
    table = CollectiveTable()
    answers = _all_in(table, CollectiveKind.ALLREDUCE,
                      [np.arange(3), np.arange(3) * 2, np.ones(3, dtype=np.int64)],
                      op=ReduceOp.SUM)
    assert [a.node for a in answers] == ["n0", "n1", "n2"]
    for a in answers:
        assert a.error is None
        np.testing.assert_array_equal(collectives.decode(a.value), [1, 4, 7])
    gathered = _all_in(table, CollectiveKind.GATHER, [1, "two", [3]], root=1, seq=2)
    assert [a.value for a in gathered][0] is None and gathered[2].value is None
    assert [collectives.decode(v) for v in gathered[1].value] == [1, "two", [3]]
    assert table.completed == 2


def test_ranks_that_disagree_fail_the_operation_for_every_rank():
    table = CollectiveTable()
    first = table.contribute("n0", 1, "j", 0, 2, 1, CollectiveKind.BCAST, 0, ReduceOp.NONE,
                             collectives.encode(1))
    assert first == []
    answers = table.contribute("n1", 2, "j", 1, 2, 1, CollectiveKind.ALLREDUCE, 0, ReduceOp.MAX,
                               collectives.encode(1))
    assert {a.node for a in answers} == {"n0", "n1"}
    assert all("rank 1 called allreduce(max), rank 0 bcast(root=0)" in a.error for a in answers)


def test_a_rank_that_leaves_fails_the_operations_waiting_for_it():
    table = CollectiveTable()
    table.contribute("n0", 1, "j", 0, 3, 7, CollectiveKind.ALLGATHER, 0, ReduceOp.NONE,
                     collectives.encode(0))
    answers = table.rank_gone("j", 2, "n2", "left the cluster")
    assert [a.node for a in answers] == ["n0"]
    assert "rank 2 (node n2) left the cluster before giving its part" in answers[0].error
    late = table.contribute("n1", 2, "j", 1, 3, 7, CollectiveKind.ALLGATHER, 0, ReduceOp.NONE,
                            collectives.encode(1))
    assert late[0].error == answers[0].error  # a late rank hears it too, at once


def test_allreduce_refuses_mismatched_shapes_naming_the_rank():
    with pytest.raises(collectives.CollectiveError, match="rank 1 gave int64\\[2\\]"):
        collectives.reduce_values([np.zeros(3, np.int64), np.zeros(2, np.int64)], ReduceOp.SUM)
    assert collectives.reduce_values([1, 2.5, 3], ReduceOp.SUM) == 6.5
    assert collectives.reduce_values([np.float32(1), np.float32(4)], ReduceOp.MAX) == 4
