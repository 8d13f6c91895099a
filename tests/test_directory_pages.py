"""The directory's page-state machine on its own: no sockets, inputs in, messages out."""

import pytest

from dsm.directory.allocations import AllocationError, Allocations
from dsm.directory.pages import PageDirectory
from dsm.layout import AddressError, Layout
from dsm.protocol import Fetch, Grant, Invalidate, Payload

PAGE = 4096
LAYOUT = Layout(0x6000_0000_0000, 64 * PAGE)


def only(sends, node=None):
    assert len(sends) == 1, sends
    if node is not None:
        assert sends[0].node == node
    return sends[0].message


@pytest.fixture
def d():
    return PageDirectory(LAYOUT)


def test_untouched_page_is_granted_as_zero(d):
    assert only(d.acquire("a", 0, 1, False, False), "a") == Grant(0, 1, False, Payload.ZERO)
    assert d.entry(0).copyset == {"a"}


def test_write_invalidates_every_reader_and_waits_for_all_acks(d):
    for n in "abc":
        d.acquire(n, 3, 1, False, False)
    sends = d.acquire("a", 3, 1, True, True)
    assert sorted(s.node for s in sends) == ["b", "c"]
    assert all(isinstance(s.message, Invalidate) for s in sends)
    txn = sends[0].message.txn
    assert d.invalidated("b", txn, 3, 1) == []  # not yet: c has not acknowledged
    grant = only(d.invalidated("c", txn, 3, 1), "a")
    assert grant == Grant(3, 1, True, Payload.NONE)  # a had a current copy: an upgrade
    assert d.entry(3).owner == "a" and not d.entry(3).copyset


def test_read_of_an_owned_page_fetches_from_the_owner_and_shares_it(d):
    d.acquire("a", 1, 1, True, False)
    fetch = only(d.acquire("b", 1, 1, False, False), "a")
    assert isinstance(fetch, Fetch) and fetch.keep_copy
    page = b"x" * PAGE
    send = d.fetched("a", fetch.txn, 1, 1, Payload.DATA, page, [])[0]
    assert send.node == "b" and send.message == Grant(1, 1, False, Payload.DATA) and send.page == page
    assert d.entry(1).owner is None and d.entry(1).copyset == {"a", "b"}
    assert d.home.get(1, 1) == (Payload.DATA, page)


def test_write_of_an_owned_page_moves_ownership_with_the_data(d):
    d.acquire("a", 2, 1, True, False)
    fetch = only(d.acquire("b", 2, 1, True, False), "a")
    assert not fetch.keep_copy
    send = d.fetched("a", fetch.txn, 2, 1, Payload.DATA, b"y" * PAGE, [])[0]
    assert send.message == Grant(2, 1, True, Payload.DATA) and send.page == b"y" * PAGE
    assert d.entry(2).owner == "b"


def test_conflicting_requests_for_one_page_queue_and_other_pages_go_on(d):
    d.acquire("a", 0, 1, True, False)
    fetch = only(d.acquire("b", 0, 1, False, False), "a")
    assert d.acquire("c", 0, 1, True, False) == []  # queued behind b's read
    assert only(d.acquire("c", 5, 1, True, False), "c") == Grant(5, 1, True, Payload.ZERO)
    sends = d.fetched("a", fetch.txn, 0, 1, Payload.DATA, b"z" * PAGE, [])
    # b's read is granted, then c's write starts by invalidating a and b
    assert sends[0].node == "b" and isinstance(sends[0].message, Grant)
    assert sorted((s.node, type(s.message).__name__) for s in sends[1:]) == [
        ("a", "Invalidate"), ("b", "Invalidate")]


def test_writeback_crossing_a_fetch_uses_the_written_back_contents(d):
    d.acquire("a", 4, 1, True, False)
    fetch = only(d.acquire("b", 4, 1, False, False), "a")
    d.writeback("a", 4, 1, Payload.DATA, b"w" * PAGE)  # a gave it back before it saw the fetch
    send = d.fetched("a", fetch.txn, 4, 1, Payload.NONE, None, [])[0]
    assert send.node == "b" and send.page == b"w" * PAGE
    assert d.entry(4).copyset == {"b"}


def test_discard_invalidates_all_holders_and_zeroes_the_page(d):
    d.acquire("a", 6, 1, True, False)
    d.writeback("a", 6, 1, Payload.DATA, b"q" * PAGE)
    d.acquire("b", 6, 1, False, False)
    d.acquire("a", 6, 1, False, False)
    inv = only(d.discard("a", 6), "b")
    assert d.invalidated("b", inv.txn, 6, 1) == []
    assert only(d.acquire("c", 6, 1, False, False)) == Grant(6, 1, False, Payload.ZERO)


def test_a_lost_node_releases_the_transactions_waiting_for_it(d):
    d.acquire("a", 7, 1, False, False)
    d.acquire("b", 7, 1, False, False)
    sends = d.acquire("c", 7, 1, True, False)
    assert len(sends) == 2
    d.invalidated("a", sends[0].message.txn, 7, 1)
    grant = only(d.node_lost("b"), "c")
    assert grant.write


def test_answers_for_unknown_transactions_are_ignored(d):
    assert d.invalidated("a", 999, 0, 1) == []
    assert d.fetched("a", 999, 0, 1, Payload.DATA, b"", []) == []


def test_out_of_range_page_is_an_address_error(d):
    with pytest.raises(AddressError, match="outside the region"):
        d.acquire("a", 64, 1, False, False)


def test_allocations_find_or_create_and_report_clashes():
    allocs = Allocations(LAYOUT)
    a = allocs.find_or_create("a", 10, {"shape": [10], "dtype": "|u1"})
    b = allocs.find_or_create("b", PAGE + 1, {"shape": [PAGE + 1], "dtype": "|u1"})
    assert a.offset == 0 and b.offset == PAGE  # page aligned, never sharing a page
    assert allocs.find_or_create("a", 10, {"shape": [10], "dtype": "|u1"}) == a
    with pytest.raises(AllocationError, match=r"exists as .*\[10\].*asked for .*\[5\]"):
        allocs.find_or_create("a", 5, {"shape": [5], "dtype": "|u1"})
    with pytest.raises(AllocationError, match="free"):
        allocs.find_or_create("big", 64 * PAGE, {})


def test_layout_rejects_bad_geometry():
    with pytest.raises(AddressError, match="not page aligned"):
        Layout(0x1001, PAGE)
    with pytest.raises(AddressError, match="multiple of the page size"):
        Layout(0, PAGE + 1)
    with pytest.raises(AddressError, match="outside the region"):
        LAYOUT.check_offset(63 * PAGE, 2 * PAGE)


def test_read_ahead_adds_the_following_free_pages_and_stops_at_a_different_one(d):
    d.acquire("a", 10, 1, True, False)  # page 10 owned by a: a read-ahead from 8 stops there
    grant = only(d.acquire("b", 8, 6, False, False), "b")
    assert grant == Grant(8, 2, False, Payload.ZERO)
    fetch = only(d.acquire("b", 10, 4, False, False), "a")
    assert (fetch.page, fetch.count) == (10, 1)  # 11.. are at home: not fetched from a


def test_a_run_owned_by_one_node_is_fetched_in_one_message(d):
    grant = only(d.acquire("a", 0, 8, True, False), "a")
    assert grant == Grant(0, 8, True, Payload.ZERO)
    fetch = only(d.acquire("b", 0, 8, False, False), "a")
    assert (fetch.page, fetch.count, fetch.keep_copy) == (0, 8, True)
    data = bytes(range(8)) * (PAGE // 8) * 8
    (send,) = d.fetched("a", fetch.txn, 0, 8, Payload.DATA, data, [3])
    assert send.message == Grant(0, 8, False, Payload.DATA)
    # page 3 was not held by a any more (written back before): its bytes come from home (zero)
    assert send.page[3 * PAGE : 4 * PAGE] == bytes(PAGE)
    assert send.page[:PAGE] == data[:PAGE]
    assert d.entry(2).copyset == {"a", "b"} and d.entry(3).copyset == {"b"}


def test_a_write_batch_invalidates_a_run_of_shared_pages_at_once(d):
    for n in "bc":
        d.acquire(n, 20, 4, False, False)
    sends = d.acquire("a", 20, 4, True, False)
    assert sorted((s.node, s.message.count) for s in sends) == [("b", 4), ("c", 4)]
    for s in sends:
        out = d.invalidated(s.node, s.message.txn, 20, 4)
    assert only(out, "a") == Grant(20, 4, True, Payload.ZERO)


# --- loss: pages whose newest contents died with a node ----------------------------------------
from dsm.directory.pages import OnLoss  # noqa: E402
from dsm.protocol import Lost  # noqa: E402


def _owned_by_b_after_a_wrote(d):
    """a writes page 5 and hands it back (home copy 'a'); b takes it for writing."""
    d.acquire("a", 5, 1, True, False)
    d.writeback("a", 5, 1, Payload.DATA, b"a" * PAGE)
    only(d.acquire("b", 5, 1, True, False), "b")


def test_pages_owned_by_a_dead_node_are_lost_not_served_as_zeros_or_old_copies(d):
    _owned_by_b_after_a_wrote(d)
    d.node_lost("b")
    assert d.lost == {5: "b"}
    assert only(d.acquire("c", 5, 1, False, False), "c") == Lost(5, 1, "b", "", 5)
    assert only(d.acquire("c", 5, 1, True, False), "c") == Lost(5, 1, "b", "", 5)
    # read-ahead never reaches into lost pages: a grant of page 4 stops before page 5
    assert only(d.acquire("c", 4, 4, False, False), "c") == Grant(4, 1, False, Payload.ZERO)


def test_a_fetch_from_an_owner_that_dies_meanwhile_is_answered_lost(d):
    d.acquire("b", 7, 1, True, False)
    fetch = only(d.acquire("c", 7, 1, False, False), "b")
    assert isinstance(fetch, Fetch)
    assert only(d.node_lost("b"), "c") == Lost(7, 1, "b", "", 7)


def test_forgetting_lost_pages_makes_them_zero(d):
    _owned_by_b_after_a_wrote(d)
    d.node_lost("b")
    assert d.lost_runs() == [(5, 1, "b")]
    assert d.forget_lost(0, 64) == [(5, 1, "b")]
    assert d.lost == {}
    assert only(d.acquire("c", 5, 1, False, False), "c") == Grant(5, 1, False, Payload.ZERO)


def test_last_copy_mode_keeps_the_home_copy_at_a_write_grant_and_falls_back_to_it():
    d = PageDirectory(LAYOUT, on_loss=OnLoss.LAST_COPY)
    _owned_by_b_after_a_wrote(d)
    assert d.home.get(5, 1) == (Payload.DATA, b"a" * PAGE)  # kept while b owns the page
    d.node_lost("b")
    assert d.lost == {} and d.counters["fallbacks"] == 1
    send = d.acquire("c", 5, 1, False, False)[0]
    assert send.message == Grant(5, 1, False, Payload.DATA) and send.page == b"a" * PAGE


def test_a_transaction_left_unanswered_names_its_silent_node():
    now = [100.0]
    d = PageDirectory(LAYOUT, clock=lambda: now[0])
    d.acquire("b", 9, 1, True, False)
    only(d.acquire("c", 9, 1, False, False), "b")
    assert d.silent_nodes(5.0) == {}
    now[0] += 6.0
    assert list(d.silent_nodes(5.0)) == ["b"]


def test_lost_pages_are_located_in_their_array():
    allocs = Allocations(LAYOUT)
    allocs.find_or_create("first", 3 * PAGE, {})
    allocs.find_or_create("second", 2 * PAGE + 1, {})
    d = PageDirectory(LAYOUT, locate=allocs.locate_page)
    d.acquire("b", 4, 1, True, False)
    d.node_lost("b")
    assert only(d.acquire("c", 4, 1, False, False)) == Lost(4, 1, "b", "second", 1)
    assert allocs.locate_page(40) == ("", 40)


def test_a_write_for_a_node_that_died_meanwhile_leaves_no_stale_copy_set(d):
    """Found by the simulator: the invalidations done for a requester that died before its grant
    must still empty the copy set, or a later upgrade of an invalidated copy is granted as if
    that node still had the page (it has a hole: zeros)."""
    d.home.put(2, 1, Payload.DATA, b"v" * PAGE)
    d.acquire("a", 2, 1, False, False)
    d.acquire("b", 2, 1, False, False)
    sends = d.acquire("c", 2, 1, True, False)  # c wants to write: a and b are invalidated
    txn = sends[0].message.txn
    d.invalidated("a", txn, 2, 1)
    d.node_lost("c")  # c dies before b acknowledges
    assert d.invalidated("b", txn, 2, 1) == []
    assert d.entry(2).copyset == set() and d.entry(2).owner is None
    send = only(d.acquire("b", 2, 1, True, True), "b")  # b's upgrade: it has no copy any more
    assert send == Grant(2, 1, True, Payload.DATA)


def test_an_upgrade_covers_a_run_of_pages_held_by_the_same_nodes(d):
    """A band read, then written: one request, one invalidation per other holder, one grant."""
    for node in "ab":
        for page in (20, 21, 22):
            d.acquire(node, page, 1, False, False)
    d.acquire("c", 23, 1, False, False)  # page 23 has other holders: not in the run
    d.acquire("a", 23, 1, False, False)
    sends = d.acquire("a", 20, 4, True, True)
    assert [(s.node, s.message) for s in sends] == [("b", Invalidate(sends[0].message.txn, 20, 3))]
    grant = only(d.invalidated("b", sends[0].message.txn, 20, 3), "a")
    assert grant == Grant(20, 3, True, Payload.NONE)
    assert all(d.entry(q).owner == "a" and not d.entry(q).copyset for q in (20, 21, 22))
    assert d.entry(23).copyset == {"a", "c"}


# --- migratory pages -------------------------------------------------------------------------------
def _turn(d, node, page, last_writer):
    """``node`` reads the page ``last_writer`` owns (the directory fetches it), then writes it."""
    fetch = only(d.acquire(node, page, 1, False, False), last_writer)
    sends = d.fetched(last_writer, fetch.txn, page, 1, Payload.DATA, b"m" * PAGE, [])
    return fetch, sends


def test_a_page_read_then_written_in_turn_is_granted_for_writing_at_the_next_read(d):
    d.acquire("a", 5, 1, True, False)  # a writes the counter
    fetch, sends = _turn(d, "b", 5, "a")  # b reads it (a keeps a copy) ...
    assert fetch.keep_copy and only(sends, "b") == Grant(5, 1, False, Payload.DATA)
    inval = only(d.acquire("b", 5, 1, True, True), "a")  # ... and upgrades: it migrates
    assert d.entry(5).migratory
    only(d.invalidated("a", inval.txn, 5, 1), "b")
    fetch, sends = _turn(d, "c", 5, "b")  # c's read is granted for writing
    assert not fetch.keep_copy and only(sends, "c") == Grant(5, 1, True, Payload.DATA)
    assert d.entry(5).owner == "c" and d.counters["migratory_grants"] == 1


def test_a_migratory_grant_left_unwritten_ends_the_prediction(d):
    d.acquire("a", 6, 1, True, False)
    _turn(d, "b", 6, "a")
    inval = only(d.acquire("b", 6, 1, True, True), "a")
    d.invalidated("a", inval.txn, 6, 1)
    _turn(d, "c", 6, "b")  # granted for writing; c only reads it
    fetch = only(d.acquire("a", 6, 1, False, False), "c")
    assert not fetch.keep_copy  # still predicted
    d.fetched("c", fetch.txn, 6, 1, Payload.DATA, b"m" * PAGE, [], unwritten=[6])
    assert not d.entry(6).migratory and d.counters["migratory_mispredictions"] == 1
    fetch = only(d.acquire("b", 6, 1, False, False), "a")
    assert fetch.keep_copy  # read-shared again


def test_a_producer_and_its_reader_are_not_migratory(d):
    d.acquire("a", 7, 1, True, False)
    _turn(d, "b", 7, "a")  # b reads what a produced
    inval = only(d.acquire("a", 7, 1, True, True), "b")  # a writes again: it was the writer
    d.invalidated("b", inval.txn, 7, 1)
    assert not d.entry(7).migratory


def test_migratory_detection_can_be_turned_off():
    d = PageDirectory(LAYOUT, migratory=False)
    d.acquire("a", 5, 1, True, False)
    _turn(d, "b", 5, "a")
    d.acquire("b", 5, 1, True, True)
    assert not d.entry(5).migratory


# --- runs of untouched pages: a fresh array's first touch ---------------------------------------
def test_a_write_to_an_untouched_page_is_granted_with_the_untouched_pages_after_it(d):
    sends = d.acquire("a", 0, 1, True, False, untouched=8)
    assert len(sends) == 1 and sends[0].page is None  # zeros: no bytes travel
    assert sends[0].message == Grant(0, 8, True, Payload.ZERO)
    assert all(d.entry(q).owner == "a" and not d.entry(q).home_current for q in range(8))
    assert d.peek(8).owner is None  # nothing past the run the node asked for
    assert d.counters["untouched_runs"] == 1 and d.counters["untouched_run_pages"] == 8


def test_an_untouched_run_never_takes_a_page_another_node_holds_or_has_held(d):
    d.acquire("b", 5, 1, False, False)  # b holds a read copy of 5
    assert only(d.acquire("a", 0, 1, True, False, untouched=8)) == Grant(0, 5, True, Payload.ZERO)
    d.acquire("b", 13, 1, False, False)
    d.drop("b", 13, 1)  # b held 13 and gave it up: zeros at home, no copies, yet not untouched
    assert d.peek(13).owner is None and not d.peek(13).copyset
    assert only(d.acquire("a", 10, 1, True, False, untouched=8)) == Grant(10, 3, True, Payload.ZERO)
    d.acquire("b", 20, 1, True, False)  # b owns 20
    assert only(d.acquire("a", 18, 1, True, False, untouched=8)) == Grant(18, 2, True, Payload.ZERO)
    assert d.entry(20).owner == "b"


def test_a_page_touched_before_is_not_granted_as_untouched(d):
    d.acquire("b", 3, 1, False, False)
    d.drop("b", 3, 1)
    # the first page has been held: the ordinary rules, the read-ahead window alone
    assert only(d.acquire("a", 3, 1, True, False, untouched=8)) == Grant(3, 1, True, Payload.ZERO)
    assert d.counters["untouched_runs"] == 0


def test_reads_are_never_granted_untouched_runs(d):
    assert only(d.acquire("a", 0, 1, False, False, untouched=8)) == Grant(0, 1, False, Payload.ZERO)


def test_an_untouched_run_stays_in_its_array_and_its_stripe():
    allocs = Allocations(LAYOUT)
    allocs.find_or_create("x", 3 * PAGE, {})
    allocs.find_or_create("y", 20 * PAGE, {})  # pages 3..22
    d = PageDirectory(LAYOUT, locate=allocs.locate_page)
    assert only(d.acquire("a", 0, 1, True, False, untouched=16)) == Grant(0, 3, True, Payload.ZERO)
    assert d.peek(3).owner is None  # y's first page: another array's
    sharded = PageDirectory(LAYOUT, shards=2, stripe=8)
    assert only(sharded.acquire("a", 2, 1, True, False, untouched=16)) == Grant(2, 6, True,
                                                                                 Payload.ZERO)


def test_an_untouched_run_is_bounded_by_its_constant(d):
    from dsm.core.readahead import UNTOUCHED_RUN_PAGES

    big = Layout(0x6000_0000_0000, 4 * UNTOUCHED_RUN_PAGES * PAGE)
    d = PageDirectory(big)
    grant = only(d.acquire("a", 0, 1, True, False, untouched=4 * UNTOUCHED_RUN_PAGES))
    assert grant.count == UNTOUCHED_RUN_PAGES


def test_release_pages_are_never_in_an_untouched_run():
    d = PageDirectory(LAYOUT, is_release=lambda page: page >= 4)
    assert only(d.acquire("a", 0, 1, True, False, untouched=8)) == Grant(0, 4, True, Payload.ZERO)


def test_pages_of_a_freed_array_are_untouched_again_once_reclaimed(d):
    d.acquire("a", 0, 1, True, False, untouched=4)  # a owns 0..3
    d.acquire("b", 4, 1, False, False)  # b reads 4
    invalidations = d.reclaim(0, 8)
    assert {s.node for s in invalidations} == {"a", "b"}  # (an invalidation per page)
    for s in invalidations:
        d.invalidated(s.node, s.message.txn, s.message.page, s.message.count)
    assert not d.granted[:8].any()
    assert only(d.acquire("c", 0, 1, True, False, untouched=8)) == Grant(0, 8, True, Payload.ZERO)
    assert all(d.entry(q).owner == "c" for q in range(8))


def test_an_entry_made_for_a_writer_positionally_is_the_one_keywords_make():
    from dsm.directory.pages import PageEntry

    assert PageEntry.written_by("a") == PageEntry("a", home_current=False, last_writer="a")


def test_the_pages_of_an_untouched_run_are_owned_like_any_other(d):
    d.acquire("a", 0, 1, True, False, untouched=8)
    fetch = only(d.acquire("b", 2, 4, False, False), "a")  # the owner serves the read-ahead
    assert isinstance(fetch, Fetch) and (fetch.page, fetch.count, fetch.keep_copy) == (2, 4, True)
    assert d.peek(7).owner == "a" and d.peek(8).owner is None
    d.node_lost("a")  # what it owned died with it, the run's pages included
    assert set(range(8)) <= set(d.lost)
