"""The directory's side of the dynamic manager alone (no sockets; dsm/directory/pages/dynamic.py):
it hands out the pages it owns, forwards requests along its probable owner, owns a page again
when its owner gives it back, and after a death gathers the live nodes' owned pages, holding
the requests meanwhile, then declares the pages no live node owns lost."""

from __future__ import annotations

import logging

import pytest

from dsm import protocol as p
from dsm.directory.pages import PageDirectory
from dsm.directory.pages.dynamic import DynamicPages
from dsm.layout import Layout

pytestmark = pytest.mark.timeout(30)

PAGE_SIZE = 4096
PAGES = 16
LAYOUT = Layout(0x7000_0000_0000, PAGES * PAGE_SIZE, PAGE_SIZE)
PAGE = 5
NODES = ("a", "b", "c")


@pytest.fixture(autouse=True)
def _quiet_losses(caplog):
    caplog.set_level(logging.CRITICAL)  # a loss logs loudly, as it should


def directory() -> DynamicPages:
    pages = PageDirectory(LAYOUT, direct=True)
    for n in NODES:
        pages.node_joined(n, f"tcp://{n}:7401")
    return DynamicPages(pages)


def request(req: int, node: str, write: bool, page: int = PAGE, hops: int = 0,
            have_copy: bool = False) -> p.PageRequest:
    return p.PageRequest(req, page, write, node, f"tcp://{node}:7401", hops, have_copy)


def deliver(d: DynamicPages, node: str, msg: p.Message, data=None) -> list:
    return d.handlers()[type(msg)](node, msg, data)


def test_an_untouched_page_is_handed_over_with_zeros_and_later_requests_are_forwarded():
    d = directory()
    out = deliver(d, "a", request(1, "a", write=False))
    # ownership, read or write alike: the directory serializes no read copies of its own
    assert [(s.node, s.message) for s in out] == [
        ("a", p.Served(1, PAGE, 1, True, p.Payload.ZERO, "", "", [], [("a", 1)], 1))]
    assert deliver(d, "a", p.Taken(1, PAGE, "a", True)) == []
    out = deliver(d, "b", request(1, "b", write=False))
    assert [(s.node, s.message) for s in out] == [("a", request(1, "b", False, hops=1))]
    assert d.last_owner[PAGE] == "a"  # a read leaves the owner where it is
    out = deliver(d, "c", request(1, "c", write=True))
    assert [(s.node, s.message.hops) for s in out] == [("a", 1)]
    assert d.last_owner[PAGE] == "a"  # (no path compression: a stale copy would mislead it)


def test_a_page_given_back_is_owned_by_the_directory_with_its_copies_and_served_requests():
    d = directory()
    deliver(d, "a", request(1, "a", write=True))
    data = bytes([7]) * PAGE_SIZE
    back = p.Served(0, PAGE, 1, True, p.Payload.DATA, "a", "tcp://a:7401",
                    [("b", "tcp://b:7401")], [("a", 1), ("b", 4)])
    assert deliver(d, "a", back, data) == []
    assert PAGE not in d.last_owner
    # b's request 4 was served already (re-sent at a death): dropped
    assert deliver(d, "b", request(4, "b", write=True)) == []
    out = deliver(d, "c", request(2, "c", write=True))
    [send] = out
    assert send.node == "c" and send.message.payload == p.Payload.DATA and send.page == data
    # the new owner invalidates the copy the old owner left
    assert send.message.copyset == [("b", "tcp://b:7401")]
    assert dict(send.message.served) == {"a": 1, "b": 4, "c": 2}


def test_a_writer_holding_a_copy_the_directory_knows_of_gets_no_bytes():
    d = directory()
    deliver(d, "a", request(1, "a", write=True))
    deliver(d, "a", p.Served(0, PAGE, 1, True, p.Payload.DATA, "a", "",
                             [("b", "tcp://b:7401")], []), bytes(PAGE_SIZE))
    [send] = deliver(d, "b", request(2, "b", write=True, have_copy=True))
    assert send.message.payload == p.Payload.NONE and send.message.copyset == []


def test_a_give_back_of_a_page_the_directory_owns_is_ignored():
    d = directory()
    assert deliver(d, "a", p.Served(0, PAGE, 1, True, p.Payload.DATA, "a", ""),
                   bytes(PAGE_SIZE)) == []
    assert d.pages.home.get(PAGE, 1)[0] == p.Payload.ZERO  # (untouched: zeros)


def test_a_death_gathers_the_owners_holds_requests_and_loses_the_pages_nobody_owns():
    d = directory()
    for page, node in ((1, "a"), (2, "b"), (3, "c"), (4, "c"), (6, "c")):
        deliver(d, node, request(1, node, write=True, page=page))
    out = d.node_lost("c")
    assert sorted((s.node, type(s.message)) for s in out) == [("a", p.OwnerDead),
                                                              ("b", p.OwnerDead)]
    gather = out[0].message.gather
    # held until every live node has answered: the owners are not known yet
    assert deliver(d, "a", request(2, "a", write=False, page=2)) == []
    # a owns page 1 and has sent page 4 (c's once) on to b; page 6 was on its way to c
    # (each handed out by the directory as version 1)
    assert deliver(d, "a", p.OwnedPages(gather, "c", [(1, 1)], [(4, "b", 3), (6, "c", 3)])
                   ) == []
    out = deliver(d, "b", p.OwnedPages(gather, "c", [(2, 1)]))
    assert d.last_owner == {1: "a", 2: "b", 4: "b"}
    assert sorted(d.pages.lost) == [3, 6]
    # the held request goes on, to the owner b reported
    assert [(s.node, s.message.requester) for s in out] == [("b", "a")]
    [lost] = deliver(d, "a", request(3, "a", write=False, page=3))
    assert isinstance(lost.message, p.Lost) and lost.message.dead_node == "c"


def test_a_node_dying_before_it_answers_a_gather_has_it_replaced_by_the_next():
    d = directory()
    deliver(d, "a", request(1, "a", write=True))
    deliver(d, "b", request(1, "b", write=True, page=PAGE + 1))
    out = d.node_lost("c")
    first = out[0].message.gather
    # b dies before answering: it may have handed a page to a node that had answered, and
    # only its report would have said so. The first gather decides nothing
    deliver(d, "a", p.OwnedPages(first, "c", [(PAGE, 1)]))
    out = d.node_lost("b")
    assert list(d.gathers) != [first] and [s.node for s in out] == ["a"]
    second = out[0].message.gather
    assert not d.pages.lost
    deliver(d, "a", p.OwnedPages(second, "b", [(PAGE, 1)]))
    # b's page is lost, told as the first death's (whose gather found it out)
    assert d.gathers == {} and d.last_owner == {PAGE: "a"} and d.pages.lost == {PAGE + 1: "c"}
    # a late answer to the replaced gather changes nothing
    assert deliver(d, "a", p.OwnedPages(first, "c", [])) == []


def test_the_newest_version_reported_tells_and_a_late_confirmation_does_not_mislead():
    d = directory()
    deliver(d, "a", request(1, "a", write=True))  # version 1
    [ask, _] = d.node_lost("c")
    gather = ask.message.gather
    # a handed version 2 to b and its confirmation is late; b handed version 3 on to c, now
    # dead, and had it confirmed: the page may have been written there
    deliver(d, "a", p.OwnedPages(gather, "c", [], [(PAGE, "b", 2)]))
    deliver(d, "b", p.OwnedPages(gather, "c", [], [], [(PAGE, 3)]))
    assert d.pages.lost == {PAGE: "c"} and PAGE not in d.last_owner


def test_a_page_handed_out_that_nobody_reports_newer_is_lost():
    d = directory()
    deliver(d, "a", request(1, "a", write=True))
    deliver(d, "a", p.Served(0, PAGE, 1, True, p.Payload.DATA, "a", "", [], [], 4),
            bytes(PAGE_SIZE))
    deliver(d, "b", request(1, "b", write=True))  # version 5
    [ask, _] = d.node_lost("c")
    # (a report older than what the directory handed out: a stale one)
    deliver(d, "a", p.OwnedPages(ask.message.gather, "c", [], [(PAGE, "b", 4)]))
    deliver(d, "b", p.OwnedPages(ask.message.gather, "c", []))
    assert PAGE in d.pages.lost


def test_a_request_of_the_node_the_directory_takes_as_owner_waits_for_a_gather():
    d = directory()
    deliver(d, "a", request(1, "a", write=True))
    # a handed the page on and could not reach its own probable owner, or the request is a
    # copy re-sent at a death: a gather with no death tells
    out = deliver(d, "a", request(2, "a", write=True))
    assert sorted((s.node, s.message.node) for s in out) == [("a", ""), ("b", ""), ("c", "")]
    gather = out[0].message.gather
    deliver(d, "a", p.OwnedPages(gather, "", [], [], [(PAGE, 2)]))
    deliver(d, "b", p.OwnedPages(gather, "", [(PAGE, 2)]))
    out = deliver(d, "c", p.OwnedPages(gather, "", []))
    assert [(s.node, s.message.requester) for s in out] == [("b", "a")]  # forwarded to b


def test_a_request_of_the_owner_the_gather_confirms_is_dropped():
    d = directory()
    deliver(d, "a", request(1, "a", write=True))
    out = deliver(d, "a", request(1, "a", write=True))  # a copy, re-sent at a death
    for s in out:
        assert deliver(d, s.node, p.OwnedPages(s.message.gather, "",
                                               [(PAGE, 1)] if s.node == "a" else [])) == []
    assert d.last_owner == {PAGE: "a"} and not d.gathers


def test_a_node_to_node_message_its_sender_could_not_deliver_is_relayed():
    d = directory()
    taken = p.Taken(3, PAGE, "b", True, [], "a")
    assert [(s.node, s.message) for s in deliver(d, "b", taken)] == [
        ("a", p.replace(taken, relay_to=""))]
    data = bytes([1]) * PAGE_SIZE
    served = p.Served(3, PAGE, 1, True, p.Payload.DATA, "a", "", [], [], 2, "b")
    [send] = deliver(d, "a", served, data)
    assert send.node == "b" and send.page == data and not send.message.relay_to
    assert PAGE not in d.last_owner  # relayed, not given back
    d.node_lost("c")
    assert deliver(d, "a", p.Invalidate(4, PAGE, 1, "a", "", "c")) == []  # (gone)


def test_ownership_relayed_to_a_dead_node_is_taken_by_the_directory_not_lost():
    # (the simulator's seed 871: a's write was declared lost, though its bytes reached here)
    d = directory()
    deliver(d, "a", request(1, "a", write=True))  # version 1
    [ask, _] = d.node_lost("c")
    data = bytes([9]) * PAGE_SIZE
    # a served c's write before it heard of the death, could not reach c, and relayed it
    served = p.Served(7, PAGE, 1, True, p.Payload.DATA, "a", "", [("b", "tcp://b:7401")],
                      [("a", 1), ("c", 7)], 2, "c")
    assert deliver(d, "a", served, data) == []
    # a reports the page on its way to c: the directory has it, nothing is lost
    deliver(d, "a", p.OwnedPages(ask.message.gather, "c", [], [(PAGE, "c", 2)]))
    deliver(d, "b", p.OwnedPages(ask.message.gather, "c", []))
    assert not d.pages.lost and PAGE not in d.last_owner
    [send] = deliver(d, "b", request(2, "b", write=True))
    assert send.node == "b" and send.page == data and send.message.version == 3
    assert send.message.copyset == []  # (b asks: its copy is the one it replaces)


def test_ownership_relayed_to_a_dead_node_without_bytes_died_with_it():
    d = directory()
    deliver(d, "a", request(1, "a", write=True))
    [ask, _] = d.node_lost("c")
    # c held the current copy, so a sent no bytes: the page's contents died with c
    served = p.Served(7, PAGE, 1, True, p.Payload.NONE, "a", "", [], [("c", 7)], 2, "c")
    assert deliver(d, "a", served) == []
    deliver(d, "a", p.OwnedPages(ask.message.gather, "c", [], [(PAGE, "c", 2)]))
    deliver(d, "b", p.OwnedPages(ask.message.gather, "c", []))
    assert d.pages.lost == {PAGE: "c"}


def test_a_run_request_is_handed_the_untouched_pages_from_its_first_to_the_first_touched():
    d = directory()
    deliver(d, "b", request(1, "b", write=True, page=PAGE + 3))  # b owns page 8
    run = p.replace(request(2, "a", write=True, page=PAGE), count=6)
    [send] = deliver(d, "a", run)
    # pages 5-7, untouched: ownership of all three at once, zeros, nobody else served
    assert send.node == "a" and send.message == p.Served(
        2, PAGE, 3, True, p.Payload.ZERO, "", "", [], [("a", 2)], 1)
    assert [d.last_owner[q] for q in range(PAGE, PAGE + 4)] == ["a", "a", "a", "b"]
    assert all(d.version[q] == 1 for q in range(PAGE, PAGE + 3))
    # a run whose first page has an owner goes to it, whole: the owner serves what it can
    [fwd] = deliver(d, "c", p.replace(request(1, "c", write=False, page=PAGE), count=4))
    assert fwd.node == "a" and fwd.message.count == 4 and fwd.message.hops == 1


def test_a_run_request_stops_at_a_page_given_back_and_takes_one_page_given_back():
    d = directory()
    deliver(d, "a", request(1, "a", write=True, page=PAGE + 2))
    deliver(d, "a", p.Served(0, PAGE + 2, 1, True, p.Payload.DATA, "a", "", [], [("a", 1)], 1),
            bytes([3]) * PAGE_SIZE)
    [send] = deliver(d, "b", p.replace(request(1, "b", write=True, page=PAGE), count=4))
    assert (send.message.page, send.message.count) == (PAGE, 2)  # not the page given back
    # a run from a page given back: that page alone, with its contents and its history
    [send] = deliver(d, "c", p.replace(request(1, "c", write=True, page=PAGE + 2), count=4))
    assert (send.message.page, send.message.count, send.message.version) == (PAGE + 2, 1, 2)
    assert send.page == bytes([3]) * PAGE_SIZE


def test_an_acquire_of_a_page_nodes_own_is_refused_and_hands_nothing_out():
    """A peer that speaks the central manager's protocol (an Acquire of a sequential page)
    was granted the page for writing, though another node owned it: two writers."""
    from dsm.errors import ProtocolError

    d = directory()
    deliver(d, "a", request(1, "a", write=True))  # a owns the page
    with pytest.raises(ProtocolError, match="PageRequest"):
        d.service_handlers()[p.Acquire]("b", p.Acquire(PAGE, 1, True, False), None)
    assert d.last_owner[PAGE] == "a"
