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
    assert only(d.acquire("a", 0, False, False), "a") == Grant(0, False, Payload.ZERO)
    assert d.entry(0).copyset == {"a"}


def test_write_invalidates_every_reader_and_waits_for_all_acks(d):
    for n in "abc":
        d.acquire(n, 3, False, False)
    sends = d.acquire("a", 3, True, True)
    assert sorted(s.node for s in sends) == ["b", "c"]
    assert all(isinstance(s.message, Invalidate) for s in sends)
    txn = sends[0].message.txn
    assert d.invalidated("b", txn, 3) == []  # not yet: c has not acknowledged
    grant = only(d.invalidated("c", txn, 3), "a")
    assert grant == Grant(3, True, Payload.NONE)  # a had a current copy: an upgrade
    assert d.entry(3).owner == "a" and not d.entry(3).copyset


def test_read_of_an_owned_page_fetches_from_the_owner_and_shares_it(d):
    d.acquire("a", 1, True, False)
    fetch = only(d.acquire("b", 1, False, False), "a")
    assert isinstance(fetch, Fetch) and fetch.keep_copy
    page = b"x" * PAGE
    send = d.fetched("a", fetch.txn, 1, Payload.DATA, page)[0]
    assert send.node == "b" and send.message == Grant(1, False, Payload.DATA) and send.page == page
    assert d.entry(1).owner is None and d.entry(1).copyset == {"a", "b"}
    assert d.home_copy(1) == page


def test_write_of_an_owned_page_moves_ownership_with_the_data(d):
    d.acquire("a", 2, True, False)
    fetch = only(d.acquire("b", 2, True, False), "a")
    assert not fetch.keep_copy
    send = d.fetched("a", fetch.txn, 2, Payload.DATA, b"y" * PAGE)[0]
    assert send.message == Grant(2, True, Payload.DATA) and send.page == b"y" * PAGE
    assert d.entry(2).owner == "b"


def test_conflicting_requests_for_one_page_queue_and_other_pages_go_on(d):
    d.acquire("a", 0, True, False)
    fetch = only(d.acquire("b", 0, False, False), "a")
    assert d.acquire("c", 0, True, False) == []  # queued behind b's read
    assert only(d.acquire("c", 5, True, False), "c") == Grant(5, True, Payload.ZERO)
    sends = d.fetched("a", fetch.txn, 0, Payload.DATA, b"z" * PAGE)
    # b's read is granted, then c's write starts by invalidating a and b
    assert sends[0].node == "b" and isinstance(sends[0].message, Grant)
    assert sorted((s.node, type(s.message).__name__) for s in sends[1:]) == [
        ("a", "Invalidate"), ("b", "Invalidate")]


def test_writeback_crossing_a_fetch_uses_the_written_back_contents(d):
    d.acquire("a", 4, True, False)
    fetch = only(d.acquire("b", 4, False, False), "a")
    d.writeback("a", 4, Payload.DATA, b"w" * PAGE)  # a gave it back before it saw the fetch
    send = d.fetched("a", fetch.txn, 4, Payload.NONE, None)[0]
    assert send.node == "b" and send.page == b"w" * PAGE
    assert d.entry(4).copyset == {"b"}


def test_discard_invalidates_all_holders_and_zeroes_the_page(d):
    d.acquire("a", 6, True, False)
    d.writeback("a", 6, Payload.DATA, b"q" * PAGE)
    d.acquire("b", 6, False, False)
    d.acquire("a", 6, False, False)
    inv = only(d.discard("a", 6), "b")
    assert d.invalidated("b", inv.txn, 6) == []
    assert only(d.acquire("c", 6, False, False)) == Grant(6, False, Payload.ZERO)


def test_a_lost_node_releases_the_transactions_waiting_for_it(d):
    d.acquire("a", 7, False, False)
    d.acquire("b", 7, False, False)
    sends = d.acquire("c", 7, True, False)
    assert len(sends) == 2
    d.invalidated("a", sends[0].message.txn, 7)
    grant = only(d.node_lost("b"), "c")
    assert grant.write


def test_answers_for_unknown_transactions_are_ignored(d):
    assert d.invalidated("a", 999, 0) == []
    assert d.fetched("a", 999, 0, Payload.DATA, b"") == []


def test_out_of_range_page_is_an_address_error(d):
    with pytest.raises(AddressError, match="outside the region"):
        d.acquire("a", 64, False, False)


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
