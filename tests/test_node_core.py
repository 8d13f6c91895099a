"""The node core alone (no sockets, no kernel): the order of what it asks its loop to do when
pages leave the node. Pages must be gone from the node's memory before any message that lets
another node have them is sent: the agent may be descheduled between two actions, and a local
read in that window would see the old copy while the new owner already writes its own."""

from __future__ import annotations

import pytest

from dsm import protocol as p
from dsm.core import actions as act
from dsm.core.node import NodeCore
from dsm.core.readahead import ReadAhead
from dsm.core.states import PageState
from dsm.libc import PAGE_SIZE

PAGES = 16
READAHEAD_PAGES = 4


def core_holding(state: PageState, pages: range, direct: bool) -> NodeCore:
    core = NodeCore("n", PAGES, PAGE_SIZE, ReadAhead(READAHEAD_PAGES))
    core.direct = direct
    for q in pages:
        core.state[q] = state
    return core


def first_index(out: list, kind: type) -> int:
    return next(i for i, a in enumerate(out) if isinstance(a, kind))


def page_sends(out: list) -> list[int]:
    """Where the sends that carry the pages, or hand them on, are."""
    return [i for i, a in enumerate(out) if isinstance(a, act.Send)
            and (a.pages is not None or isinstance(a.message, p.Drop))]


@pytest.mark.parametrize("direct", [False, True], ids=["relay", "node to node"])
@pytest.mark.parametrize("state", [PageState.EXCLUSIVE, PageState.SHARED])
def test_pages_fetched_away_are_punched_before_they_are_sent(direct, state):
    core = core_holding(state, range(4, 7), direct)
    out = core.fetch(p.Fetch(9, 4, 3, keep_copy=False,
                             to_node="m" if direct else "", to_addr="tcp://m:1" if direct else ""))
    punch = out[first_index(out, act.Punch)]
    assert (punch.first, punch.count, punch.keep) == (4, 3, True)
    sends = page_sends(out)
    assert sends and all(first_index(out, act.Punch) < i for i in sends), out
    if state is PageState.EXCLUSIVE:  # local writers stopped before the contents are read
        assert first_index(out, act.Protect) < first_index(out, act.Punch)
    assert not any(q in core.state for q in range(4, 7))


def test_pages_fetched_as_read_copies_stay_and_are_protected_before_they_are_sent():
    core = core_holding(PageState.EXCLUSIVE, range(4, 6), direct=True)
    out = core.fetch(p.Fetch(9, 4, 2, keep_copy=True, to_node="m", to_addr="tcp://m:1"))
    assert not any(isinstance(a, act.Punch) for a in out)
    assert first_index(out, act.Protect) < min(page_sends(out))
    assert all(core.state[q] is PageState.SHARED for q in (4, 5))


@pytest.mark.parametrize("direct", [False, True], ids=["relay", "node to node"])
@pytest.mark.parametrize("state", [PageState.EXCLUSIVE, PageState.SHARED])
def test_pages_given_back_are_punched_before_they_are_sent(direct, state):
    core = core_holding(state, range(2, 5), direct)
    out = core.give_back([2, 3, 4])
    sends = page_sends(out)
    assert sends and all(first_index(out, act.Punch) < i for i in sends), out
    punch = out[first_index(out, act.Punch)]
    # contents kept for the send whenever they travel with it
    assert punch.keep == (state is PageState.EXCLUSIVE or direct)
    assert not core.state


# --- read-ahead: readers are served ahead of their faults, writers never ------------------------

def _scan(write: bool) -> tuple[list[int], list[int]]:
    """A process faulting pages 0, 1, 2, ... in turn, every request granted at once: (the pages
    it faulted, the first page of every Acquire)."""
    from dsm.uffd.events import Access, FaultKind

    pages = 4096
    core = NodeCore("n", pages, PAGE_SIZE, ReadAhead(256))
    faulted, asked = [], []
    page = 0
    while page < 2048:
        faulted.append(page)
        rw = Access.WRITE if write else Access.READ
        out = core.fault("proc", page * PAGE_SIZE, page, rw, FaultKind.MISSING, 1, 0.0)
        for action in out:
            if isinstance(action, act.Send) and isinstance(action.message, p.Acquire):
                acq = action.message
                asked.append(acq.page)
                core.grant(p.Grant(acq.page, acq.count, write, p.Payload.ZERO), None, 0.0)
        page = next(q for q in range(page + 1, pages) if q not in core.state)
    return faulted, asked


def test_a_sequential_reader_is_asked_for_ahead_of_its_faults():
    faulted, asked = _scan(write=False)
    assert any(q not in faulted for q in asked)  # requests for pages it has not reached


def test_a_sequential_writer_is_never_asked_for_pages_it_has_not_faulted():
    # pages ahead of a writer are nobody's here yet: taken for writing, they would be taken
    # from the nodes that write them (a neighbour's band)
    faulted, asked = _scan(write=True)
    assert set(asked) <= set(faulted)
    assert len(faulted) < 2048 // 8  # the window still grows: few faults for the whole run


# --- the core never guesses ---------------------------------------------------------------------
@pytest.mark.parametrize("state", [PageState.EXCLUSIVE, PageState.SHARED])
def test_a_hole_in_a_held_page_no_remove_explains_fails_the_access_instead_of_zeroing(state):
    """A lost write Grant once ended here: the core found a hole in a page it thought it held,
    inferred MADV_REMOVE, and discarded the page cluster-wide (zeros). Now the loop says whether
    the memory holds it, and a hole nothing explains fails the access loudly."""
    from dsm.uffd.events import Access, FaultKind

    core = core_holding(state, range(3, 4), direct=False)
    out = core.fault("proc", 3 * PAGE_SIZE, 3, Access.READ, FaultKind.MISSING, 7, 0.0,
                     resident=False)
    assert [type(a) for a in out] == [act.Poison]
    assert out[0].waiter.page == 3 and out[0].waiter.thread_id == 7
    assert core.state[3] is state  # nothing handed on, nothing discarded
    assert core.stats.counters["invariant_violations"] == 1


def test_pages_that_come_after_their_request_was_given_up_are_installed_and_confirmed():
    from dsm.uffd.events import Access, FaultKind

    core = core_holding(PageState.SHARED, range(0), direct=True)
    core.fault("proc", 5 * PAGE_SIZE, 5, Access.WRITE, FaultKind.MISSING, 1, 0.0)
    killed = core.overdue(100.0, 10.0)  # the request's waiters are failed
    assert [type(a) for a in killed] == [act.Kill] and not core.pending
    page = bytes(PAGE_SIZE)
    out = core.peer_page(p.PeerPage(77, 5, 1, True, p.Payload.DATA, "m"), page, 101.0)
    assert any(isinstance(a, act.Install) for a in out)
    confirm = out[-1].message
    assert isinstance(confirm, p.Received) and confirm.installed and confirm.txn == 77
    assert core.state[5] is PageState.EXCLUSIVE
    assert core.peer_page(p.PeerPage(77, 5, 1, True, p.Payload.DATA, "m"), page, 102.0) == []


def test_pages_nobody_asked_for_are_refused_even_with_no_request_pending():
    """Only this node's own given-up request makes a late transfer welcome: a stray one (a
    forged or misrouted PeerPage) is never installed where the directory does not know it."""
    core = core_holding(PageState.SHARED, range(0), direct=True)
    out = core.peer_page(p.PeerPage(5, 9, 1, True, p.Payload.DATA, "m"), bytes(PAGE_SIZE), 0.0)
    assert [type(a) for a in out] == [act.Send]
    assert out[0].message == p.Received(5, 9, 1, False)
    assert 9 not in core.state


# --- a writer in order asks for runs of untouched pages -----------------------------------------
def _write_fault(core: NodeCore, page: int, thread_id: int = 1) -> list:
    from dsm.uffd.events import Access, FaultKind

    return core.fault("proc", page * PAGE_SIZE, page, Access.WRITE, FaultKind.MISSING, thread_id,
                      0.0)


def _acquires(out: list) -> list[p.Acquire]:
    return [a.message for a in out if isinstance(a, act.Send) and isinstance(a.message, p.Acquire)]


def test_a_writer_in_order_asks_for_a_run_of_untouched_pages_and_awaits_all_of_them():
    from dsm.core.readahead import UNTOUCHED_RUN_PAGES

    core = NodeCore("n", 4 * UNTOUCHED_RUN_PAGES, PAGE_SIZE, ReadAhead(256))
    assert _acquires(_write_fault(core, 0)) == [p.Acquire(0, 1, True, False, 1)]  # one write
    core.grant(p.Grant(0, 1, True, p.Payload.ZERO), None, 0.0)
    # the second in order: the run (its window still one page)
    assert _acquires(_write_fault(core, 1)) == [p.Acquire(1, 1, True, False, UNTOUCHED_RUN_PAGES)]
    assert core.pending[UNTOUCHED_RUN_PAGES].first == 1  # awaited: another thread there waits
    assert _write_fault(core, 500, thread_id=2) == []
    # the directory granted fewer (page 301 was someone else's): installed writable, zeros;
    # the waiter past them asks again
    out = core.grant(p.Grant(1, 300, True, p.Payload.ZERO), None, 0.0)
    install = out[first_index(out, act.Install)]
    assert (install.first, install.count, install.data, install.writable) == (1, 300, None, True)
    assert all(core.state[q] is PageState.EXCLUSIVE for q in range(1, 301))
    assert _acquires(out) == [p.Acquire(500, 1, True, False, 1)]
    assert 301 not in core.pending and 301 not in core.state


def test_a_random_writer_and_a_reader_ask_for_no_untouched_run():
    from dsm.uffd.events import Access, FaultKind

    core = NodeCore("n", PAGES, PAGE_SIZE, ReadAhead(READAHEAD_PAGES))
    for page in (9, 2, 12):
        assert [a.untouched for a in _acquires(_write_fault(core, page))] == [1]
    for page in (4, 5, 6):
        out = core.fault("proc", page * PAGE_SIZE, page, Access.READ, FaultKind.MISSING, 1, 0.0)
        assert all(a.untouched == 1 for a in _acquires(out))
        core.grant(p.Grant(page, 1, False, p.Payload.ZERO), None, 0.0)


# --- guarded locks and releases --------------------------------------------------------------
#: two shards with stripes of 2 pages: page 2 is the second shard's
STRIPE = 2


def _guarded_grant(core: NodeCore, page: int) -> list:
    return core.acquire_sync([], [page, 1], bytes(PAGE_SIZE))


def test_a_guarded_grant_installs_its_pages_twinned_and_writable_at_once():
    core = NodeCore("n", PAGES, PAGE_SIZE, ReadAhead(READAHEAD_PAGES))
    out = _guarded_grant(core, 3)
    kinds = [type(a) for a in out]
    # installed write-protected, twinned, then lifted: no write fault to come, and no Dirtied
    # (the grant dirtied the page at its home)
    assert kinds == [act.Install, act.Twin, act.Upgrade], out
    assert core.state[3] is PageState.DIRTY
    release = core.release_sync(p.LockRelease(1, "lk", "n:1:1", answered=True))
    # the release carries the diff: one message
    assert [type(a) for a in release] == [act.Protect, act.SendRelease], release
    assert [run[1:] for run in release[-1].runs] == [(3, 1)]
    assert release[-1].message.answered and release[-1].message.notices == [3, 1]


def test_a_release_held_back_behind_another_shards_diff_is_not_answered_by_the_agent():
    core = NodeCore("n", PAGES, PAGE_SIZE, ReadAhead(READAHEAD_PAGES))
    core.set_shards(2, STRIPE)
    _guarded_grant(core, STRIPE)  # the second shard's page: its diff is awaited
    release = core.release_sync(p.LockRelease(1, "lk", "n:1:1", answered=True))
    assert not any(isinstance(a, act.Send) for a in release) and core.releases_held()
    (diff,) = [a for a in release if isinstance(a, act.SendDiff)]
    (sent,) = core.diff_applied(p.DiffApplied(diff.req, STRIPE))
    # its thread waits for the directory's answer: the release must not say it was answered
    assert isinstance(sent.message, p.LockRelease) and not sent.message.answered


def test_a_guarded_grant_does_not_install_a_page_whose_diff_went_after_the_request():
    """Another thread's writes to the page (under another lock guarding other bytes of it) went
    home as a diff after this lock was asked for (given back): the grant's copy may predate
    them, so the page is left to fault for the merged copy (seed 4 of the simulator's
    '4 nodes, 2 threads, pages given back')."""
    core = NodeCore("n", PAGES, PAGE_SIZE, ReadAhead(READAHEAD_PAGES))
    core.acquire_sync([], [3, 1], bytes(PAGE_SIZE), req=1)  # twinned and writable: written
    core.lock_requested(2)
    give_back = core.give_back([3])
    assert any(isinstance(a, act.SendDiff) for a in give_back) and 3 not in core.state
    assert core.acquire_sync([], [3, 1], bytes(PAGE_SIZE), req=2) == []
    assert 3 not in core.state
    # a request that went after that diff gets it in its grant's copy: installed
    core.lock_requested(3)
    out = core.acquire_sync([], [3, 1], bytes(PAGE_SIZE), req=3)
    assert isinstance(out[0], act.Install) and core.state[3] is PageState.DIRTY


@pytest.mark.parametrize("notices", [
    [3, 2, 9, 1],  # fewer pages than the node holds: found from the notices
    [0, PAGES, 0, PAGES, 0, PAGES],  # overlapping, more than it holds: found from what it holds
], ids=["few notices", "overlapping notices"])
def test_an_acquire_drops_the_noticed_release_copies_and_keeps_the_rest(notices):
    core = NodeCore("n", PAGES, PAGE_SIZE, ReadAhead(READAHEAD_PAGES))
    for q in range(PAGES):  # sequential pages, and release copies on 3, 4, 8 and 9
        core.state[q] = PageState.CLEAN if q in (3, 4, 8, 9) else PageState.EXCLUSIVE
    out = core.acquire_sync(notices)
    dropped = sorted(q for a in out if isinstance(a, act.Punch)
                     for q in range(a.first, a.first + a.count))
    expected = [3, 4, 9] if len(notices) == 4 else [3, 4, 8, 9]
    assert dropped == expected
    assert all(core.state.get(q) is None for q in expected)
    assert sum(st is PageState.EXCLUSIVE for st in core.state.values()) == PAGES - 4
