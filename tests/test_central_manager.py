"""The page-state machine under a direct manager (central, and each shard of the distributed
one): pages travel node to node, the directory keeps no copy for read sharing, and deaths in the
middle of a transfer are told apart from completed ones. No sockets: inputs in, messages out."""

import pytest

from dsm.directory.pages import OnLoss, PageDirectory
from dsm.layout import Layout
from dsm.protocol import Fetch, Grant, Invalidate, Lost, Payload, Withdrawn

PAGE = 4096
LAYOUT = Layout(0x6000_0000_0000, 64 * PAGE)


def only(sends, node=None):
    assert len(sends) == 1, sends
    if node is not None:
        assert sends[0].node == node, sends
    return sends[0].message


@pytest.fixture
def d():
    directory = PageDirectory(LAYOUT, direct=True)
    for n in "abcd":
        directory.node_joined(n, f"tcp://10.0.0.{ord(n) - 96}:7411")
    return directory


def owned_by(d, node, page):
    assert only(d.acquire(node, page, 1, True, False), node) == Grant(page, 1, True, Payload.ZERO)


def transfer(d, requester, page, write, source):
    """A node-to-node transfer, both answers in: returns the Fetch the source got."""
    fetch = only(d.acquire(requester, page, 1, write, False), source)
    assert fetch.to_node == requester and fetch.to_addr == d.peers[requester]
    assert fetch.keep_copy is (not write)
    assert d.fetched(source, fetch.txn, page, 1, Payload.NONE, None, [], sent=True) == []
    assert d.received(requester, fetch.txn, page, 1, True) == []
    return fetch


def test_an_owned_page_goes_straight_to_a_reader_and_no_copy_stays_here(d):
    owned_by(d, "a", 1)
    transfer(d, "b", 1, write=False, source="a")
    e = d.entry(1)
    assert e.owner is None and e.copyset == {"a", "b"} and not e.home_current
    assert d.home.get(1, 1)[0] == Payload.ZERO  # nothing kept: the copies hold the contents


def test_a_read_copy_is_served_by_a_keeper_not_by_the_directory(d):
    owned_by(d, "a", 1)
    transfer(d, "b", 1, write=False, source="a")
    fetch = transfer(d, "c", 1, write=False, source="a")  # the keeper: the first copy holder
    assert fetch.keep_copy and d.entry(1).copyset == {"a", "b", "c"}


def test_the_transaction_ends_only_when_both_sides_answered(d):
    owned_by(d, "a", 2)
    fetch = only(d.acquire("b", 2, 1, True, False), "a")
    assert d.acquire("c", 2, 1, False, False) == []  # queued behind the transfer
    assert d.received("b", fetch.txn, 2, 1, True) == []
    assert d.entry(2).busy is not None  # the owner has not said it sent them
    follow = only(d.fetched("a", fetch.txn, 2, 1, Payload.NONE, None, [], sent=True), "b")
    assert isinstance(follow, Fetch) and follow.to_node == "c"  # the new owner serves c
    assert d.entry(2).busy is not None


def test_a_write_to_a_page_one_other_node_shares_moves_its_copy(d):
    owned_by(d, "a", 3)
    transfer(d, "b", 3, write=False, source="a")
    d.entry(3).home_current = False  # (as if a's copy for the manager never came)
    # c writes: copies at a and b, none here: a home fetch first, then the grant from it and
    # the invalidations at once, acknowledged to c
    fetch = only(d.acquire("c", 3, 1, True, False), "a")
    assert fetch.to_node == "" and fetch.keep_copy
    sends = d.fetched("a", fetch.txn, 3, 1, Payload.DATA, b"z" * PAGE, [])
    invalidates = [s for s in sends if isinstance(s.message, Invalidate)]
    assert sorted(s.node for s in invalidates) == ["a", "b"]
    assert all(s.message.to_node == "c" for s in invalidates)
    [grant] = [s for s in sends if isinstance(s.message, Grant)]
    txn = invalidates[0].message.txn
    assert grant.node == "c" and grant.message == Grant(3, 1, True, Payload.DATA, False, txn,
                                                        ["a", "b"])
    assert grant.page == b"z" * PAGE
    assert d.received("c", txn, 3, 1, True) == []  # every acknowledgement came to c
    assert d.entry(3).owner == "c"


def test_a_write_to_a_page_held_by_one_copy_takes_that_copy_along(d):
    owned_by(d, "a", 4)
    transfer(d, "b", 4, write=False, source="a")
    d.node_lost("a")  # b's copy is the only one left, and none is kept here
    fetch = only(d.acquire("c", 4, 1, True, False), "b")
    assert fetch.to_node == "c" and not fetch.keep_copy
    d.fetched("b", fetch.txn, 4, 1, Payload.NONE, None, [], sent=True)
    d.received("c", fetch.txn, 4, 1, True)
    assert d.entry(4).owner == "c" and not d.entry(4).copyset and 4 not in d.lost


def test_the_last_read_copy_given_up_comes_home_with_its_contents(d):
    owned_by(d, "a", 5)
    transfer(d, "b", 5, write=False, source="a")
    d.drop("a", 5, 1, Payload.DATA, b"1" * PAGE)
    assert d.entry(5).copyset == {"b"}
    d.drop("b", 5, 1, Payload.DATA, b"1" * PAGE)
    assert d.entry(5).home_current and not d.entry(5).copyset
    grant = d.acquire("c", 5, 1, False, False)[0]
    assert grant.message == Grant(5, 1, False, Payload.DATA) and bytes(grant.page) == b"1" * PAGE


def test_a_copy_given_back_before_its_transfer_ended_keeps_the_page_when_its_source_dies(d):
    # found by the simulator: b drops the read copy it just got (with its contents) before a's
    # Fetched came; a then dies. b's copy was current: it is the page's home copy now
    owned_by(d, "a", 9)
    fetch = only(d.acquire("b", 9, 1, False, False), "a")
    assert d.received("b", fetch.txn, 9, 1, True) == []
    d.drop("b", 9, 1, Payload.DATA, b"2" * PAGE)
    d.node_lost("a")
    assert 9 not in d.lost and d.entry(9).home_current
    grant = only(d.acquire("c", 9, 1, False, False), "c")
    assert grant == Grant(9, 1, False, Payload.DATA)
    assert bytes(d.acquire("d", 9, 1, False, False)[0].page) == b"2" * PAGE


def test_a_source_that_dies_mid_transfer_is_withdrawn_and_the_requester_decides(d):
    owned_by(d, "a", 6)
    fetch = only(d.acquire("b", 6, 1, False, False), "a")
    d.fetched("a", fetch.txn, 6, 1, Payload.NONE, None, [], sent=True)
    # a dies: its pages may be on the wire, or may have died in its queue
    assert only(d.node_lost("a"), "b") == Withdrawn(fetch.txn, 6, 1, "a")
    assert 6 not in d.lost  # not decided yet
    lost = only(d.received("b", fetch.txn, 6, 1, False), "b")
    assert isinstance(lost, Lost) and lost.dead_node == "a" and 6 in d.lost


def test_pages_that_arrived_before_their_source_died_are_not_lost(d):
    owned_by(d, "a", 7)
    fetch = only(d.acquire("b", 7, 1, True, False), "a")
    d.node_lost("a")
    assert d.received("b", fetch.txn, 7, 1, True) == []
    assert 7 not in d.lost and d.entry(7).owner == "b"


def test_a_read_copy_source_that_dies_leaves_the_other_copies_to_serve(d):
    owned_by(d, "a", 8)
    transfer(d, "b", 8, write=False, source="a")
    fetch = only(d.acquire("c", 8, 1, False, False), "a")
    only(d.node_lost("a"), "c")
    again = only(d.received("c", fetch.txn, 8, 1, False), "b")  # asked of the other copy
    assert isinstance(again, Fetch) and again.to_node == "c" and 8 not in d.lost


def test_a_write_transfer_to_a_requester_that_dies_loses_the_page_loudly(d):
    owned_by(d, "a", 9)
    fetch = only(d.acquire("b", 9, 1, True, False), "a")
    d.node_lost("b")
    d.fetched("a", fetch.txn, 9, 1, Payload.NONE, None, [], sent=True)  # a gave it up, to a dead node
    assert d.lost.get(9) == "b"
    assert isinstance(only(d.acquire("c", 9, 1, False, False), "c"), Lost)


def test_the_last_copy_dying_loses_the_page_but_another_copy_keeps_it(d):
    owned_by(d, "a", 10)
    transfer(d, "b", 10, write=False, source="a")
    d.node_lost("a")
    assert 10 not in d.lost  # b still has it
    d.node_lost("b")
    assert d.lost.get(10) == "b"


def test_a_holder_that_no_longer_has_the_pages_answers_as_to_the_relay_manager(d):
    owned_by(d, "a", 11)
    fetch = only(d.acquire("b", 11, 1, False, False), "a")
    d.writeback("a", 11, 1, Payload.DATA, b"w" * PAGE)  # crossed the Fetch
    grant = d.fetched("a", fetch.txn, 11, 1, Payload.NONE, None, [])[0]  # "held none"
    assert grant.node == "b" and grant.message == Grant(11, 1, False, Payload.DATA)
    assert bytes(grant.page) == b"w" * PAGE


def test_an_unreachable_requester_gets_its_pages_through_the_directory(d):
    owned_by(d, "a", 12)
    fetch = only(d.acquire("b", 12, 1, False, False), "a")
    # a could not reach b: it sends the pages here, as to the relay manager
    grant = d.fetched("a", fetch.txn, 12, 1, Payload.DATA, b"r" * PAGE, [])[0]
    assert grant.node == "b" and bytes(grant.page) == b"r" * PAGE
    assert d.entry(12).copyset == {"a", "b"}


def test_last_copy_mode_needs_the_relay_manager():
    with pytest.raises(ValueError, match="relay"):
        PageDirectory(LAYOUT, direct=True, on_loss=OnLoss.LAST_COPY)


def test_a_requester_without_a_peer_endpoint_gets_its_pages_through_the_directory(d):
    d.node_joined("nat")  # behind NAT: no address the others can reach
    owned_by(d, "a", 13)
    fetch = only(d.acquire("nat", 13, 1, False, False), "a")
    assert fetch.to_node == "" and fetch.keep_copy  # to the directory, as under relay
    grant = d.fetched("a", fetch.txn, 13, 1, Payload.DATA, b"n" * PAGE, [])[0]
    assert grant.node == "nat" and bytes(grant.page) == b"n" * PAGE
    assert d.entry(13).copyset == {"a", "nat"}


def test_a_requester_that_refuses_the_pages_is_left_out_and_nothing_starts_over(d):
    owned_by(d, "a", 14)
    fetch = only(d.acquire("b", 14, 1, False, False), "a")
    d.fetched("a", fetch.txn, 14, 1, Payload.NONE, None, [], sent=True)
    assert d.received("b", fetch.txn, 14, 1, False) == []  # b no longer wanted them
    e = d.entry(14)
    assert e.busy is None and e.copyset == {"a"} and 14 not in d.lost


def test_a_refused_write_transfer_loses_the_page_loudly(d):
    owned_by(d, "a", 15)
    fetch = only(d.acquire("b", 15, 1, True, False), "a")
    d.fetched("a", fetch.txn, 15, 1, Payload.NONE, None, [], sent=True)  # a gave it up
    d.received("b", fetch.txn, 15, 1, False)
    assert d.lost.get(15) == "b"
