"""The directory's lock and barrier state machine on its own."""

import pytest

from dsm.directory import sync
from dsm.directory.sync import SyncError, SyncStatus, SyncTable

S = SyncStatus


def test_locks_are_granted_in_fifo_order():
    t = SyncTable()
    assert t.acquire("a", 1, "L", "a:1:1", None) == [("a", 1, S.GRANTED, "")]
    assert t.acquire("b", 2, "L", "b:2:1", None) == []
    assert t.acquire("c", 3, "L", "c:3:1", None) == []
    out = t.release("a", 4, "L", "a:1:1")
    assert out == [("a", 4, S.RELEASED, ""), ("b", 2, S.GRANTED, "")]
    assert t.release("b", 5, "L", "b:2:1")[1] == ("c", 3, S.GRANTED, "")


def test_release_of_a_lock_not_held_is_an_error_naming_the_holder():
    t = SyncTable()
    t.acquire("a", 1, "L", "a:1:1", None)
    with pytest.raises(SyncError, match="b:2:1, which does not hold it .held by a:1:1"):
        t.release("b", 2, "L", "b:2:1")
    with pytest.raises(SyncError, match="not reentrant"):
        t.acquire("a", 3, "L", "a:1:1", None)


def test_waiters_time_out_at_their_deadline():
    t = SyncTable()
    t.acquire("a", 1, "L", "a:1:1", None)
    t.acquire("b", 2, "L", "b:1:1", deadline=10.0)
    assert t.next_deadline() == 10.0
    assert t.expire(9.0) == []
    assert [r.status for r in t.expire(10.0)] == [S.TIMEOUT]
    assert t.release("a", 3, "L", "a:1:1") == [("a", 3, S.RELEASED, "")]


def test_a_departed_holder_passes_the_lock_on_marked_broken():
    t = SyncTable()
    t.acquire("a", 1, "L", "a:7:1", None)
    t.acquire("b", 2, "L", "b:1:1", None)
    t.acquire("a", 3, "L", "a:8:1", None)
    assert t.depart("a:7") == [("b", 2, S.GRANTED_BROKEN, "")]
    assert t.locks["L"].holder == "b:1:1"
    assert t.depart("a") == []  # the other waiter of node a is dropped
    assert not t.locks["L"].queue


def test_a_holder_that_departs_with_nobody_waiting_breaks_the_lock_for_its_next_acquirer():
    t = SyncTable()
    t.acquire("a", 1, "L", "a:7:1", None)
    assert t.depart("a:7") == []
    assert t.acquire("b", 2, "L", "b:1:1", None) == [("b", 2, S.GRANTED_BROKEN, "")]
    t.release("b", 3, "L", "b:1:1")  # told once: the lock is whole again
    assert t.locks == {}
    assert t.acquire("c", 4, "L", "c:1:1", None) == [("c", 4, S.GRANTED, "")]


def test_broken_locks_waiting_for_an_acquirer_are_kept_up_to_a_bound(monkeypatch):
    monkeypatch.setattr(sync, "ORPHANED_BROKEN_KEPT", 2)
    t = SyncTable()
    for i, name in enumerate(("L1", "L2", "L3")):
        t.acquire("c", i, name, "c:1:1", None)
    t.depart("c")
    assert sorted(t.locks) == ["L2", "L3"]  # the oldest forgotten
    assert t.acquire("a", 5, "L3", "a:1:1", None)[0].status is S.GRANTED_BROKEN
    assert t.acquire("a", 6, "L1", "a:1:1", None)[0].status is S.GRANTED


def test_barrier_completes_and_is_reusable():
    t = SyncTable()
    for gen in (1, 2):
        assert t.wait("a", 1, "B", 3, "a:1:1") == []
        assert t.wait("b", 2, "B", 3, "b:1:1") == []
        out = t.wait("c", 3, "B", 3, "c:1:1")
        assert sorted((r.node, r.status, r.detail) for r in out) == [
            ("a", S.PASSED, str(gen)), ("b", S.PASSED, str(gen)), ("c", S.PASSED, str(gen))]


def test_a_departed_member_breaks_the_barrier_now_and_later():
    t = SyncTable()
    t.join("c", 9, "B", 3, "c:1:1")
    t.wait("a", 1, "B", 3, "a:1:1")
    out = t.depart("c")
    assert [(r.node, r.status) for r in out] == [("a", S.BROKEN)]
    assert "c:1:1" in out[0].detail
    assert t.wait("b", 2, "B", 3, "b:1:1")[0].status is S.BROKEN


def test_a_party_that_departs_before_the_others_join_breaks_the_barrier_for_them():
    # the others had not joined yet when it died: they must not wait for it forever
    t = SyncTable()
    t.join("c", 9, "B", 3, "c:1:1")
    assert t.depart("c:1") == []
    t.join("a", 1, "B", 3, "a:1:1")
    out = t.wait("a", 2, "B", 3, "a:1:1")
    assert [(r.status, r.detail) for r in out] == [
        (S.BROKEN, "barrier 'B' is broken: party c:1:1 departed")]
    t.depart("a:1")  # the last party of the broken round is gone: the name starts afresh
    assert t.barriers == {}
    t.join("a", 3, "B", 1, "a:2:1")
    assert t.wait("a", 4, "B", 1, "a:2:1")[0].status is S.PASSED


def test_broken_barriers_waiting_for_a_joiner_are_kept_up_to_a_bound(monkeypatch):
    monkeypatch.setattr(sync, "ORPHANED_BROKEN_KEPT", 2)
    t = SyncTable()
    for name in ("B1", "B2", "B3"):
        t.join("c", 1, name, 2, "c:1:1")
    t.depart("c")
    assert sorted(t.barriers) == ["B2", "B3"]  # the oldest forgotten
    assert t.wait("a", 2, "B3", 2, "a:1:1")[0].status is S.BROKEN
    assert t.wait("a", 3, "B1", 2, "a:1:1") == []  # forgotten: a new round


def test_barrier_parties_mismatch_names_both():
    t = SyncTable()
    t.join("a", 1, "B", 3, "a:1:1")
    with pytest.raises(SyncError, match="3 parties; asked for 4"):
        t.wait("b", 2, "B", 4, "b:1:1")


def test_status_lists_the_holder_and_the_waiters_in_grant_order():
    t = SyncTable()
    assert t.status("L") == ("", [])
    t.acquire("a", 1, "L", "a:1:1", None)
    t.acquire("b", 2, "L", "b:1:1", None)
    t.acquire("c", 3, "L", "c:1:1", None)
    assert t.status("L") == ("a:1:1", ["b:1:1", "c:1:1"])


def test_locks_and_barriers_nobody_uses_are_forgotten():
    t = SyncTable()
    t.acquire("a", 1, "L", "a:1:1", None)
    t.release("a", 2, "L", "a:1:1")
    assert t.locks == {}
    t.acquire("a", 3, "M", "a:1:1", None)
    t.acquire("b", 4, "M", "b:2:1", 0.0)
    t.expire(1.0)  # b gave up waiting; a still holds M
    assert list(t.locks) == ["M"]
    t.depart("a")
    assert list(t.locks) == ["M"]  # a died holding it: kept until someone is told
    t.acquire("c", 9, "M", "c:1:1", None)
    t.release("c", 10, "M", "c:1:1")
    assert t.locks == {}
    t.join("a", 5, "B", 2, "a:1:1")
    t.join("b", 6, "B", 2, "b:2:1")
    t.depart("a")
    assert list(t.barriers) == ["B"]  # b is still a member: it must learn the barrier broke
    t.depart("b")
    assert t.barriers == {}


def test_lock_and_barrier_waits_are_timed():
    now = [10.0]
    t = SyncTable(clock=lambda: now[0])
    t.acquire("a", 1, "L", "a:1:1", None)  # at once: a wait of 0
    t.acquire("b", 2, "L", "b:2:1", None)
    now[0] += 0.5
    t.release("a", 3, "L", "a:1:1")  # b waited 0.5 s
    assert sum(t.waits["lock"].counts) == 2 and t.waits["lock"].sum_s == 0.5
    t.wait("a", 4, "B", 2, "a:1:1")
    now[0] += 2.0
    t.wait("b", 5, "B", 2, "b:2:1")  # a waited 2 s, b not at all
    assert sum(t.waits["barrier"].counts) == 2 and t.waits["barrier"].sum_s == 2.0


def test_a_barrier_wait_past_its_deadline_breaks_the_barrier_for_every_party():
    now = [0.0]
    t = SyncTable(clock=lambda: now[0])
    assert t.wait("a", 1, "B", 3, "a:1:1", deadline=5.0) == []
    assert t.wait("b", 2, "B", 3, "b:1:1") == []
    assert t.next_deadline() == 5.0
    assert t.expire(4.9) == []
    now[0] = 5.0
    out = t.expire(5.0)
    assert [(r.node, r.status) for r in out] == [("a", S.BROKEN), ("b", S.BROKEN)]
    assert "a:1:1 waited 5.0 s, its timeout" in out[0].detail
    assert t.wait("c", 3, "B", 3, "c:1:1")[0].status is S.BROKEN  # and for later parties
    assert t.next_deadline() is None


def test_a_dead_node_of_a_job_breaks_every_barrier_of_the_job_naming_it_and_its_rank():
    t = SyncTable()
    for rank, node in enumerate(("n0", "n1", "n2")):
        t.enroll(node, "job-7", rank, 3)
    t.enroll("other", "job-8", 0, 1)
    assert t.wait("n1", 1, "end", 3, "n1:1:1") == []  # n0 never reached the last barrier
    assert t.wait("other", 2, "solo-2", 2, "other:1:1") == []
    out = t.job_member_died("n0", "silent for 5.0 s")
    assert [(r.node, r.status) for r in out] == [("n1", S.BROKEN)]  # not another job's
    assert "node n0 (rank 0 of 3 of job job-7) died: silent for 5.0 s" in out[0].detail
    t.depart("n0")
    later = t.wait("n2", 2, "end", 3, "n2:1:1")  # arrives after the death: told at once
    assert later[0].status is S.BROKEN and "rank 0 of 3" in later[0].detail
    fresh = t.wait("n2", 3, "another", 2, "n2:1:1")  # any barrier of the job
    assert fresh[0].status is S.BROKEN
    t.depart("n1")
    t.depart("n2")
    assert "job-7" not in t.jobs  # forgotten with its last node: a new run starts afresh
    for rank, node in enumerate(("n0", "n1")):
        t.enroll(node, "job-7", rank, 2)
    assert t.wait("n0", 4, "next", 2, "n0:1:1") == []


def test_a_node_outside_any_job_breaks_nothing_by_dying():
    t = SyncTable()
    t.wait("a", 1, "B", 2, "a:1:1")
    assert t.job_member_died("b", "silent") == []
