"""The dynamic manager's node core alone (no sockets, no kernel; dsm/core/dynamic.py): requests
go to probable owners and are forwarded along the hints, the owner serves straight to the
requester one transfer at a time, ownership carries its copy set and the requests it served,
and a death repairs the chains through the directory. The cores' messages are delivered by
hand between them, through the table the agent and the simulator use; the test plays the
directory."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsm import protocol as p
from dsm.core import actions as act
from dsm.core.dynamic import DynamicNodeCore
from dsm.core.inputs import core_handlers
from dsm.core.readahead import ReadAhead
from dsm.core.states import PageState, ascending_runs, runs
from dsm.libc import PAGE_SIZE
from dsm.uffd.events import Access, FaultKind

pytestmark = pytest.mark.timeout(30)

PAGES = 16
READAHEAD_PAGES = 4
PAGE = 3
#: each node's first request number (the agent passes its start time in ns)
FIRST_REQ = 1000
DIRECTORY = "directory"


class Cluster:
    """Dynamic node cores and the messages between them; what goes to the directory is kept
    in ``to_directory`` for the test to answer."""

    def __init__(self, *names: str):
        self.cores = {n: DynamicNodeCore(n, PAGES, PAGE_SIZE, ReadAhead(READAHEAD_PAGES),
                                         f"tcp://{n}:7401", FIRST_REQ) for n in names}
        self.handlers = {n: core_handlers(c, lambda: 0.0, lambda m: (lambda a: True))
                         for n, c in self.cores.items()}
        #: (sender, receiver, message)
        self.wire: deque[tuple[str, str, p.Message]] = deque()
        self.to_directory: list[tuple[str, p.Message]] = []
        self.actions: dict[str, list] = {n: [] for n in names}

    def carry(self, node: str, out: list) -> list:
        self.actions[node] += out
        for a in out:
            if isinstance(a, act.Send):
                if a.peer is None:
                    self.to_directory.append((node, a.message))
                else:
                    self.wire.append((node, a.peer[0], a.message))
        return out

    def fault(self, node: str, page: int, write: bool, kind=FaultKind.MISSING) -> list:
        core = self.cores[node]
        return self.carry(node, core.fault(node, page * PAGE_SIZE, page,
                                           Access.WRITE if write else Access.READ, kind, 1, 0.0))

    def deliver(self, node: str, msg: p.Message, sender: str = DIRECTORY) -> list:
        return self.carry(node, self.handlers[node][type(msg)](msg, None))

    def run(self) -> list[tuple[str, str, p.Message]]:
        """Deliver every message between the nodes, in order; what was delivered."""
        done = []
        while self.wire:
            sender, to, msg = self.wire.popleft()
            done.append((sender, to, msg))
            self.deliver(to, msg, sender)
        return done

    def directory_grants(self, node: str, page: int) -> None:
        """The directory, owner of an untouched page, hands it to the request it holds."""
        sender, req = self.to_directory.pop()
        assert sender == node and isinstance(req, p.PageRequest) and req.page == page
        self.deliver(node, p.Served(req.req, page, 1, True, p.Payload.ZERO, ""))
        # ownership arrived: the directory stops counting it as on its way
        assert self.to_directory.pop() == (node, p.Taken(req.req, page, node, True))


def owned_by(nodes: Cluster, owner: str) -> Cluster:
    nodes.fault(owner, PAGE, write=True)
    nodes.directory_grants(owner, PAGE)
    assert nodes.cores[owner].state[PAGE] is PageState.EXCLUSIVE
    return nodes


def test_an_untouched_page_is_asked_of_the_directory_and_owned_from_its_answer():
    nodes = Cluster("a")
    out = nodes.fault("a", PAGE, write=True)
    assert [type(a) for a in out] == [act.Send] and out[0].peer is None
    assert nodes.to_directory[-1][1] == p.PageRequest(FIRST_REQ + 1, PAGE, True, "a",
                                                      "tcp://a:7401")
    nodes.directory_grants("a", PAGE)
    a = nodes.cores["a"]
    installs = [x for x in nodes.actions["a"] if isinstance(x, act.Install)]
    assert installs and installs[0].writable
    assert PAGE in a.owned and PAGE not in a.pending and not nodes.to_directory


def test_a_read_of_an_owned_page_is_served_straight_to_the_reader_and_then_takes_2_hops():
    nodes = owned_by(Cluster("a", "b"), "a")
    nodes.fault("b", PAGE, write=False)
    _, req = nodes.to_directory.pop()
    # the directory forwards it to the last owner it knows
    out = nodes.deliver("a", p.replace(req, hops=1))
    assert nodes.actions["a"].index(next(x for x in out if isinstance(x, act.Protect))) < \
        nodes.actions["a"].index(next(x for x in out if isinstance(x, act.Send)))
    hops = nodes.run()
    assert [type(m) for _, _, m in hops] == [p.Served, p.Taken]
    b = nodes.cores["b"]
    assert b.state[PAGE] is PageState.SHARED and b.hint[PAGE] == ("a", "tcp://a:7401")
    assert nodes.cores["a"].state[PAGE] is PageState.SHARED  # the owner keeps a read copy
    assert nodes.cores["a"].owned[PAGE].copyset == {"b": "tcp://b:7401"}
    # the reader's copy invalidated, its next read goes straight to the owner: 2 hops
    nodes.deliver("b", p.Invalidate(7, PAGE, 1, "a", "tcp://a:7401"))
    nodes.wire.clear()
    nodes.fault("b", PAGE, write=False)
    hops = nodes.run()
    assert [(s, t, type(m)) for s, t, m in hops] == [
        ("b", "a", p.PageRequest), ("a", "b", p.Served), ("b", "a", p.Taken)]
    assert not nodes.to_directory


def test_the_owner_serves_one_transfer_at_a_time():
    nodes = owned_by(Cluster("a", "b", "c"), "a")
    a = nodes.cores["a"]
    nodes.deliver("a", p.PageRequest(FIRST_REQ + 1, PAGE, False, "b", "tcp://b:7401"))
    # c's write must not be served before b has installed its copy: c's Invalidate to b
    # could overtake the copy on another pair of sockets
    assert nodes.deliver("a", p.PageRequest(FIRST_REQ + 1, PAGE, True, "c", "tcp://c:7401")) == []
    assert len(a.queued[PAGE]) == 1
    out = nodes.deliver("a", p.Taken(FIRST_REQ + 1, PAGE, "b", True))
    served = next(x for x in out if isinstance(x, act.Send) and isinstance(x.message, p.Served))
    assert served.peer == ("c", "tcp://c:7401") and served.message.owner
    # b's copy invalidated from here, beside the transfer, naming c: b acknowledges to c
    assert served.message.copyset == [("b", "tcp://b:7401")] and served.message.invalidated
    [inval] = [x for x in out if isinstance(x, act.Send) and isinstance(x.message, p.Invalidate)]
    assert inval.peer == ("b", "tcp://b:7401") and inval.message == p.Invalidate(
        FIRST_REQ + 1, PAGE, 1, "c", "tcp://c:7401")
    # (with a's own request, which made it the owner)
    assert dict(served.message.served) == {"a": FIRST_REQ + 1, "b": FIRST_REQ + 1,
                                           "c": FIRST_REQ + 1}
    # gone from here before it is sent, and the chain points at the new owner
    punch = next(i for i, x in enumerate(out) if isinstance(x, act.Punch))
    assert punch < out.index(served) and out[punch].keep
    assert PAGE not in a.state and a.hint[PAGE] == ("c", "tcp://c:7401")
    assert a.handing[PAGE] == ("c", FIRST_REQ + 1, 1) and PAGE not in a.queued


def test_the_old_owner_invalidates_the_copies_beside_the_transfer_and_the_new_installs_once_all_acknowledged():
    nodes = owned_by(Cluster("a", "b", "c"), "a")
    nodes.fault("b", PAGE, write=False)
    nodes.deliver("a", nodes.to_directory.pop()[1])
    nodes.run()
    nodes.cores["c"].hint[PAGE] = ("b", "tcp://b:7401")  # a stale hint: b only reads it
    nodes.fault("c", PAGE, write=True)
    hops = nodes.run()
    assert [(s, t, type(m)) for s, t, m in hops] == [
        ("c", "b", p.PageRequest),  # b forwards it along its hint
        ("b", "a", p.PageRequest),
        ("a", "b", p.Invalidate),  # naming c: b acknowledges straight to it
        ("a", "c", p.Served),  # ownership, b in its copy set (invalidated already)
        ("b", "c", p.Invalidated),  # (here before the ownership: kept for it)
        ("c", "a", p.Taken)]
    c = nodes.cores["c"]
    assert hops[1][2].hops == 1
    installs = [x for x in nodes.actions["c"] if isinstance(x, act.Install)]
    assert installs and installs[0].writable and c.state[PAGE] is PageState.EXCLUSIVE
    assert not any(isinstance(x, act.Send) and isinstance(x.message, p.Invalidate)
                   for x in nodes.actions["c"])
    assert PAGE not in nodes.cores["b"].state
    # every hint now leads to c
    assert nodes.cores["b"].hint[PAGE][0] == "c" and nodes.cores["a"].hint[PAGE][0] == "c"
    assert not nodes.cores["a"].handing and not nodes.to_directory


def shared_by_a_and_b() -> Cluster:
    """a owns the page and b read it (its first request through the directory)."""
    nodes = owned_by(Cluster("a", "b"), "a")
    nodes.fault("b", PAGE, write=False)
    nodes.deliver("a", nodes.to_directory.pop()[1])
    nodes.run()
    return nodes


def upgrading_with_a_copy_out() -> Cluster:
    """The page shared by a and b (``shared_by_a_and_b``), and a writes it: a's upgrade
    awaits b's acknowledgement."""
    nodes = shared_by_a_and_b()
    nodes.fault("a", PAGE, write=True, kind=FaultKind.WRITE_PROTECTED)
    return nodes


def test_the_owner_upgrades_its_shared_page_with_no_request():
    nodes = upgrading_with_a_copy_out()
    hops = nodes.run()
    assert [(s, t, type(m)) for s, t, m in hops] == [("a", "b", p.Invalidate),
                                                     ("b", "a", p.Invalidated)]
    assert any(isinstance(x, act.Upgrade) for x in nodes.actions["a"])
    assert nodes.cores["a"].state[PAGE] is PageState.EXCLUSIVE and not nodes.to_directory


def test_a_node_about_to_own_a_page_queues_the_requests_forwarded_to_it():
    nodes = owned_by(Cluster("a", "b", "c"), "a")
    nodes.fault("b", PAGE, write=True)
    b_req = nodes.to_directory.pop()[1]
    # c's request reaches b before b's own write is served (b's hint is a's forward)
    nodes.fault("c", PAGE, write=False)
    c_req = p.replace(nodes.to_directory.pop()[1], hops=2)
    assert nodes.deliver("b", c_req) == []
    nodes.deliver("a", b_req)
    hops = nodes.run()
    assert [(s, t, type(m)) for s, t, m in hops] == [
        ("a", "b", p.Served), ("b", "a", p.Taken), ("b", "c", p.Served), ("c", "b", p.Taken)]
    assert nodes.cores["c"].state[PAGE] is PageState.SHARED
    assert nodes.cores["b"].owned[PAGE].copyset == {"c": "tcp://c:7401"}


def test_a_node_whose_read_is_out_forwards_requests_and_a_forwarded_write_leaves_its_hint():
    nodes = owned_by(Cluster("a", "b", "c"), "a")
    nodes.cores["b"].hint[PAGE] = ("a", "tcp://a:7401")
    nodes.fault("b", PAGE, write=False)
    out = nodes.deliver("b", p.PageRequest(FIRST_REQ + 1, PAGE, True, "c", "tcp://c:7401"))
    assert [a.peer for a in out] == [("a", "tcp://a:7401")] and out[0].message.hops == 1
    # no path compression: the request may be a stale copy, re-sent at a death, and c may
    # never be the owner from it
    assert nodes.cores["b"].hint[PAGE] == ("a", "tcp://a:7401")


def test_a_request_the_owner_served_already_is_not_served_again():
    nodes = owned_by(Cluster("a", "b"), "a")
    req = p.PageRequest(FIRST_REQ + 1, PAGE, False, "b", "tcp://b:7401")
    nodes.deliver("a", req)
    nodes.deliver("a", p.Taken(req.req, PAGE, "b", True))
    assert nodes.deliver("a", req) == []  # re-sent after a death


def test_a_read_copy_nobody_asked_for_is_refused_and_the_owner_forgets_the_copy():
    nodes = owned_by(Cluster("a", "b"), "a")
    nodes.deliver("a", p.PageRequest(FIRST_REQ + 5, PAGE, False, "b", "tcp://b:7401"))
    nodes.run()
    assert PAGE not in nodes.cores["b"].state
    assert nodes.cores["a"].owned[PAGE].copyset == {} and nodes.cores["a"].owned[PAGE].busy is None


def test_a_death_repairs_the_chains_reports_the_owned_pages_and_resends_the_requests():
    nodes = owned_by(Cluster("a", "b", "c"), "a")
    b, c = nodes.cores["b"], nodes.cores["c"]
    # b reads the page; c's write request is on its way through a, who dies with it
    nodes.fault("b", PAGE, write=False)
    nodes.deliver("a", nodes.to_directory.pop()[1])
    nodes.run()
    c.hint[PAGE] = ("a", "tcp://a:7401")
    nodes.fault("c", PAGE, write=True)
    nodes.wire.clear()
    b.owned[PAGE + 1] = type(nodes.cores["a"].owned[PAGE])()  # b owns another page
    b.state[PAGE + 1] = PageState.EXCLUSIVE
    out = nodes.deliver("b", p.OwnerDead(4, "a"))
    assert [m for m in out if isinstance(m.message, p.OwnedPages)][0].message == p.OwnedPages(
        4, "a", [(PAGE + 1, 0)])
    assert PAGE not in b.hint  # the directory repairs the chain
    out = nodes.deliver("c", p.OwnerDead(4, "a"))
    assert [(x.peer, type(x.message)) for x in out] == [(None, p.OwnedPages),
                                                         (None, p.PageRequest)]
    assert out[1].message.req == c.req_of[PAGE] and out[1].message.write
    # whatever still comes from the dead node is not taken
    assert nodes.deliver("c", p.Served(c.req_of[PAGE], PAGE, 1, True, p.Payload.DATA, "a")) == []
    assert PAGE in c.pending


def test_an_upgrade_waiting_on_a_dead_holder_completes():
    nodes = upgrading_with_a_copy_out()
    nodes.wire.clear()  # b died before it acknowledged
    out = nodes.deliver("a", p.OwnerDead(5, "b"))
    assert any(isinstance(x, act.Upgrade) for x in out)
    assert nodes.cores["a"].state[PAGE] is PageState.EXCLUSIVE


def test_ownership_handed_to_a_node_that_dies_is_not_reported_owned():
    nodes = owned_by(Cluster("a", "b"), "a")
    nodes.deliver("a", p.PageRequest(FIRST_REQ + 1, PAGE, True, "b", "tcp://b:7401"))
    out = nodes.deliver("a", p.OwnerDead(6, "b"))
    # on its way to b: lost with b (it may have written it) unless a live node owns it now
    # (the test's directory handed a version 0: a hands b version 1)
    assert out[0].message == p.OwnedPages(6, "b", [], [(PAGE, "b", 1)])
    assert PAGE not in nodes.cores["a"].handing


def test_ownership_carries_its_version_and_a_gather_hears_the_last_one_handed_on():
    nodes = owned_by(Cluster("a", "b"), "a")
    assert nodes.cores["a"].owned[PAGE].version == 0  # (the test's directory sends none)
    nodes.deliver("a", p.PageRequest(FIRST_REQ + 1, PAGE, True, "b", "tcp://b:7401"))
    hops = nodes.run()
    assert hops[0][2].version == 1 and nodes.cores["b"].owned[PAGE].version == 1
    # a had its confirmation: it reports what it handed on, so that an older report of the
    # page on its way (one whose confirmation is late) cannot pass for the newest
    out = nodes.deliver("a", p.OwnerDead(7, "c"))
    assert out[0].message == p.OwnedPages(7, "c", [], [], [(PAGE, 1)])
    out = nodes.deliver("b", p.OwnerDead(7, "c"))
    assert out[0].message == p.OwnedPages(7, "c", [(PAGE, 1)])


def test_an_owner_gives_a_shared_page_back_to_the_directory_with_its_copy_set():
    nodes = shared_by_a_and_b()
    a = nodes.cores["a"]
    assert a.state[PAGE] is PageState.SHARED
    out = nodes.carry("a", a.give_back([PAGE]))
    # stopped, taken out, then sent: the ownership, not a Drop that would lose it
    assert [type(x) for x in out] == [act.Protect, act.Punch, act.Send]
    assert out[1].keep and out[2].peer is None and out[2].pages == (PAGE, 1)
    back = out[2].message
    assert isinstance(back, p.Served) and back.owner and back.payload == p.Payload.DATA
    assert back.copyset == [("b", "tcp://b:7401")]  # b's copy stays valid
    assert PAGE not in a.owned and PAGE not in a.state
    assert a.hint[PAGE] is None  # the directory, known: no guess for its next request


def test_a_read_copy_is_given_up_without_a_word_and_a_later_write_asks_for_the_bytes():
    nodes = shared_by_a_and_b()
    b = nodes.cores["b"]
    assert [type(x) for x in b.give_back([PAGE])] == [act.Punch]
    nodes.fault("b", PAGE, write=True)
    hops = nodes.run()
    assert not hops[0][2].have_copy  # a's copy set still names b: the bytes must come
    served = hops[1][2]
    assert served.owner and served.payload == p.Payload.DATA


def test_an_owner_with_a_transfer_in_flight_keeps_the_page():
    nodes = owned_by(Cluster("a", "b"), "a")
    a = nodes.cores["a"]
    nodes.deliver("a", p.PageRequest(FIRST_REQ + 1, PAGE, False, "b", "tcp://b:7401"))
    # b's copy is on its way: a later writer's invalidation could overtake it
    assert a.give_back([PAGE]) == [] and PAGE in a.owned


def test_an_owners_discard_invalidates_its_copies_and_gives_the_zeros_back():
    nodes = shared_by_a_and_b()
    a = nodes.cores["a"]
    out = nodes.carry("a", a.discard([PAGE]))
    # b's copy goes (as for the owner's own write), then the page, punched here, goes home
    assert [type(x) for x in out] == [act.Send, act.Protect, act.Punch, act.Send]
    assert isinstance(out[0].message, p.Invalidate) and out[0].peer[0] == "b"
    back = out[3].message
    assert isinstance(back, p.Served) and back.owner and back.copyset == []
    assert PAGE not in a.owned and PAGE not in a.state
    hops = nodes.run()  # b drops its copy and acknowledges to a, which takes it as late
    assert [(s, t, type(m)) for s, t, m in hops] == [("a", "b", p.Invalidate),
                                                     ("b", "a", p.Invalidated)]
    assert PAGE not in nodes.cores["b"].state and not a.acks.runs()


def test_a_discard_of_a_read_copy_only_drops_it():
    nodes = shared_by_a_and_b()
    b = nodes.cores["b"]
    assert [type(x) for x in nodes.carry("b", b.discard([PAGE]))] == [act.Punch]
    assert PAGE not in b.state and not nodes.wire
    assert nodes.cores["a"].state[PAGE] is PageState.SHARED  # the owner's contents stay


def _write_in_order(nodes: Cluster, node: str, pages: range) -> list[p.PageRequest]:
    """``node`` writes ``pages`` in order, the directory handing over what each request asks
    for (untouched pages); the requests."""
    asked = []
    for page in pages:
        if page in nodes.cores[node].state:
            continue
        nodes.fault(node, page, write=True)
        sender, req = nodes.to_directory.pop()
        asked.append(req)
        nodes.deliver(node, p.Served(req.req, page, req.count, True, p.Payload.ZERO, "", "",
                                     [], [(node, req.req)], 1))
        assert nodes.to_directory.pop() == (node, p.Taken(req.req, page, node, True,
                                                          count=req.count))
    return asked


def test_a_writer_in_order_asks_for_the_untouched_run_and_owns_it_whole():
    nodes = Cluster("a")
    asked = _write_in_order(nodes, "a", range(PAGES))
    # one page, then, the writes in order, the rest of the region in one request
    assert [(r.page, r.count) for r in asked] == [(0, 1), (1, PAGES - 1)]
    a = nodes.cores["a"]
    assert sorted(a.owned) == list(range(PAGES)) and not a.pending and not a.req_of
    assert all(a.state[q] is PageState.EXCLUSIVE for q in range(PAGES))
    installs = [x for x in nodes.actions["a"] if isinstance(x, act.Install)]
    assert (installs[-1].first, installs[-1].count, installs[-1].writable) == (1, PAGES - 1, True)


def test_a_run_answered_in_part_asks_again_for_what_its_threads_still_wait_for():
    nodes = Cluster("a")
    _write_in_order(nodes, "a", range(1))
    nodes.fault("a", 1, write=True)
    _, req = nodes.to_directory.pop()
    assert req.count == PAGES - 1
    nodes.fault("a", 3, write=True)  # a second thread, on a page of the run: it waits for it
    assert not nodes.to_directory
    # the directory hands over pages 1-2 alone (page 3 was touched by another node)
    out = nodes.deliver("a", p.Served(req.req, 1, 2, True, p.Payload.ZERO, "", "", [],
                                      [("a", req.req)], 1))
    again = [x.message for x in out if isinstance(x, act.Send)
             and isinstance(x.message, p.PageRequest)]
    assert [(r.page, r.count) for r in again] == [(3, 1)]
    a = nodes.cores["a"]
    # the run's other pages await nothing any more
    assert set(a.pending) == {3} and set(a.req_of) == {3}


def test_the_owner_serves_a_read_run_of_the_pages_it_owns_in_one_answer():
    nodes = Cluster("a", "b")
    _write_in_order(nodes, "a", range(PAGES))
    b = nodes.cores["b"]
    for page in range(3):  # b reads in order: its third fault asks for a run
        nodes.fault("b", page, write=False)
        _, req = nodes.to_directory.pop()
        nodes.deliver("a", p.replace(req, hops=1))  # (the directory forwards it to a)
        nodes.run()
    assert req.count == READAHEAD_PAGES
    a = nodes.cores["a"]
    out = nodes.actions["a"]
    served = [x for x in out if isinstance(x, act.Send) and isinstance(x.message, p.Served)]
    assert [(s.message.page, s.message.count) for s in served] == [(0, 1), (1, 1), (2, 4)]
    # every page of the run write-protected before the copy is read, then served as one
    protect = [i for i, x in enumerate(out) if isinstance(x, act.Protect)]
    assert protect[-1] < out.index(served[-1])
    assert {(x.first, x.count) for x in out if isinstance(x, act.Protect)} >= {(2, 1), (3, 3)}
    assert all(b.state[q] is PageState.SHARED and b.hint[q][0] == "a" for q in range(6))
    assert all(a.owned[q].copyset == {"b": "tcp://b:7401"} and a.owned[q].busy is None
               for q in range(6))  # the run's one Taken confirmed every copy
    # a page with a transfer in flight ends the run: the next run stops before it
    a.owned[8].busy = ("c", 1)
    nodes.deliver("a", p.replace(p.PageRequest(FIRST_REQ + 9, 6, False, "b", "tcp://b:7401"),
                                 count=4))
    assert nodes.wire[-1][2].count == 2  # pages 6 and 7


def test_a_run_asked_for_is_of_the_pages_whose_probable_owner_is_the_first_pages():
    nodes = Cluster("a", "b", "c")
    b = nodes.cores["b"]
    # a stencil's halo row: b read a's pages 0-3 before, a wrote them since (b's copies gone)
    b.hint.update({q: ("a", "tcp://a:7401") for q in range(4)})
    b.hint[4] = ("c", "tcp://c:7401")
    assert b._run_to_ask(0, 8) == 4  # a's four pages, in one request to a; not c's
    assert b._run_to_ask(0, 2) == 2
    assert b._run_to_ask(5, 8) == 8  # nobody's known: the directory's to route
    del b.hint[0]
    assert b._run_to_ask(0, 8) == 1  # an owner known for the next page, not for this one
    nodes.fault("b", 2, write=False)
    [(_, to, req)] = list(nodes.wire)
    assert to == "a" and req.page == 2


def test_a_writer_in_order_upgrades_the_run_of_its_pages_with_the_same_copies_at_once():
    nodes = Cluster("a", "b")
    _write_in_order(nodes, "a", range(PAGES))
    for page in range(3):  # b reads pages 0-5 (its third fault asks for a run)
        nodes.fault("b", page, write=False)
        _, req = nodes.to_directory.pop()
        nodes.deliver("a", p.replace(req, hops=1))
        nodes.run()
    a, b = nodes.cores["a"], nodes.cores["b"]
    a.owned[5].copyset["c"] = "tcp://c:7401"  # (page 5 has another copy: not in the run)
    invalidates = []
    for page in (0, 2):  # a writes in order (its write stream's window is 2, then 4)
        nodes.fault("a", page, write=True, kind=FaultKind.WRITE_PROTECTED)
        invalidates += [m for _, _, m in nodes.run() if isinstance(m, p.Invalidate)]
    # one Invalidate to b per run, each acknowledged once; page 5 (other copies) left out
    assert [(m.page, m.count) for m in invalidates] == [(0, 2), (2, 3)]
    upgrades = [(x.first, x.count) for x in nodes.actions["a"] if isinstance(x, act.Upgrade)]
    assert upgrades[-2:] == [(0, 2), (2, 3)]
    assert all(a.state[q] is PageState.EXCLUSIVE and not a.owned[q].copyset
               and a.owned[q].upgrading is None for q in range(5))
    assert not a.pending and not a.req_of and not nodes.to_directory
    assert a.state[5] is PageState.SHARED and a.owned[5].copyset  # its copies untouched
    assert all(q not in b.state and b.hint[q][0] == "a" for q in range(5))


def test_a_page_this_node_read_then_wrote_is_owned_at_its_next_read_and_written_locally():
    nodes = shared_by_a_and_b()
    b = nodes.cores["b"]
    assert PAGE not in b.migratory
    nodes.fault("b", PAGE, write=True, kind=FaultKind.WRITE_PROTECTED)  # read, then written
    assert PAGE in b.migratory
    nodes.run()
    assert PAGE in b.owned
    nodes.fault("a", PAGE, write=False)  # a reads it: a read copy (a has not written it)
    nodes.run()
    assert PAGE in nodes.cores["a"].state and PAGE not in nodes.cores["a"].owned
    nodes.deliver("b", p.Invalidate(9, PAGE, 1, "a", "tcp://a:7401"))  # (b loses its copy)
    nodes.cores["a"].owned[PAGE] = nodes.cores["b"].owned.pop(PAGE)  # (a took it over)
    nodes.cores["b"].hint[PAGE] = ("a", "tcp://a:7401")
    nodes.cores["a"].state[PAGE] = PageState.EXCLUSIVE
    nodes.wire.clear()
    # b reads it again: it asks for ownership, and its write that follows sends nothing
    nodes.fault("b", PAGE, write=False)
    sender, to, req = nodes.wire[0]
    assert (sender, to) == ("b", "a") and req.write and not b.pending[PAGE].write
    nodes.run()
    install = [x for x in nodes.actions["b"] if isinstance(x, act.Install)][-1]
    assert PAGE in b.owned and not install.writable  # write-protected: the write tells
    sent = len(nodes.wire) + len(nodes.to_directory)
    out = nodes.fault("b", PAGE, write=True, kind=FaultKind.WRITE_PROTECTED)
    assert [type(x) for x in out] == [act.Unprotect] and len(nodes.wire) + len(
        nodes.to_directory) == sent


def test_a_page_owned_at_a_read_and_handed_on_unwritten_is_no_longer_migratory():
    nodes = owned_by(Cluster("a", "b"), "a")
    b = nodes.cores["b"]
    b.migratory.add(PAGE)
    nodes.fault("b", PAGE, write=False)
    nodes.deliver("a", p.replace(nodes.to_directory.pop()[1], hops=1))
    nodes.run()
    assert PAGE in b.owned and PAGE in b._unwritten
    nodes.deliver("b", p.PageRequest(FIRST_REQ + 7, PAGE, True, "a", "tcp://a:7401"))
    assert PAGE not in b.migratory  # a wrong prediction: its next read asks for a copy


def test_the_owner_hands_over_a_write_run_of_the_pages_it_was_handed_together():
    nodes = Cluster("a", "b")
    _write_in_order(nodes, "a", range(PAGES))  # pages 1-15 handed to a in one run
    a = nodes.cores["a"]
    a.owned[9].copyset["c"] = "tcp://c:7401"  # a copy out: the run stops before page 9
    out = nodes.deliver("a", p.replace(p.PageRequest(FIRST_REQ + 3, 4, True, "b",
                                                     "tcp://b:7401"), count=8))
    [served] = [x for x in out if isinstance(x, act.Send)]
    assert (served.message.page, served.message.count, served.message.version) == (4, 5, 2)
    assert served.pages == (4, 5) and served.message.copyset == []
    # written here: write-protected, then taken out, before the bytes leave
    kinds = [type(x) for x in out]
    assert kinds.index(act.Protect) < kinds.index(act.Punch) < kinds.index(act.Send)
    assert all(q not in a.owned and a.hint[q][0] == "b" for q in range(4, 9))
    assert 9 in a.owned
    nodes.carry("a", [])
    nodes.deliver("b", served.message)
    b = nodes.cores["b"]
    assert all(q in b.owned and b.owned[q].version == 2 for q in range(4, 9))
    # b's one Taken confirms the whole run: a reports none of it as on its way any more
    _, _, taken = nodes.wire[-1]
    assert taken.count == 5
    nodes.run()
    assert not a.handing and all(a.passed[q] == 2 for q in range(4, 9))


def test_invalidates_an_old_owner_sent_are_sent_again_by_the_new_one_if_it_dies():
    nodes = shared_by_a_and_b()
    nodes.cores["c"] = DynamicNodeCore("c", PAGES, PAGE_SIZE, ReadAhead(READAHEAD_PAGES),
                                       "tcp://c:7401", FIRST_REQ)
    nodes.handlers["c"] = core_handlers(nodes.cores["c"], lambda: 0.0, lambda m: (lambda a: True))
    nodes.actions["c"] = []
    nodes.cores["c"].hint[PAGE] = ("a", "tcp://a:7401")
    nodes.fault("c", PAGE, write=True)
    nodes.deliver("a", nodes.wire.popleft()[2])
    # a sent b's Invalidate and c's ownership, then died: only the ownership got out
    [(_, _, served)] = [m for m in nodes.wire if isinstance(m[2], p.Served)]
    nodes.wire.clear()
    nodes.deliver("c", served)
    c = nodes.cores["c"]
    assert c.acks.waiting_for((served.req, PAGE)) == {"b"} and PAGE not in c.state
    out = nodes.deliver("c", p.OwnerDead(1, "a"))
    assert [(x.peer, x.message) for x in out if isinstance(x, act.Send)
            and isinstance(x.message, p.Invalidate)] == [
        (("b", "tcp://b:7401"), p.Invalidate(served.req, PAGE, 1, "c", "tcp://c:7401"))]
    nodes.run()  # b acknowledges to c, which installs
    assert c.state[PAGE] is PageState.EXCLUSIVE and not c.invalidating


# --- guesses: a page of an array whose owner this node learned ---------------------------------
ARRAY_PAGES = 8


def with_array(nodes: Cluster) -> Cluster:
    """Every node's workloads allocated one array: pages 0 to ARRAY_PAGES - 1."""
    for core in nodes.cores.values():
        core.allocated(0, ARRAY_PAGES * PAGE_SIZE)
    return nodes


def test_a_page_this_node_knows_nothing_of_is_asked_of_the_owner_it_learned_for_its_array():
    nodes = with_array(owned_by(Cluster("a", "b"), "a"))
    a_addr = ("a", "tcp://a:7401")
    nodes.fault("a", PAGE + 1, write=True)
    nodes.directory_grants("a", PAGE + 1)
    nodes.fault("b", PAGE, write=False)
    nodes.deliver("a", p.replace(nodes.to_directory.pop()[1], hops=1))
    nodes.run()
    assert nodes.cores["b"].array_owner == {0: a_addr}
    # b has never heard of PAGE + 1: asked of a, as a guess, and served in 2 hops
    out = nodes.fault("b", PAGE + 1, write=False)
    assert [(x.peer, x.message.guessed) for x in out] == [(a_addr, True)]
    hops = nodes.run()
    assert [(s, t, type(m)) for s, t, m in hops] == [
        ("b", "a", p.PageRequest), ("a", "b", p.Served), ("b", "a", p.Taken)]
    assert nodes.cores["b"].state[PAGE + 1] is PageState.SHARED
    assert nodes.cores["b"].stats.counters["guessed_requests"] == 1
    # outside the array: the directory, as before
    out = nodes.fault("b", ARRAY_PAGES + 1, write=False)
    assert [x.peer for x in out] == [None]


def test_a_wrong_guess_goes_on_to_the_directory_not_along_hints_nor_queued():
    nodes = with_array(owned_by(Cluster("a", "b", "c"), "a"))
    c = nodes.cores["c"]
    c.array_owner[0] = ("b", "tcp://b:7401")
    # b does not own the page and its own write of it is out (it is about to own it): a
    # request that followed hints would wait there; a guessed one goes to the directory
    nodes.fault("b", PAGE, write=True)
    nodes.to_directory.clear()
    out = nodes.fault("c", PAGE, write=True)
    assert out[0].peer == ("b", "tcp://b:7401") and out[0].message.guessed
    nodes.run()
    assert not nodes.cores["b"].queued
    (sender, fwd), = nodes.to_directory
    assert sender == "b" and fwd.requester == "c" and not fwd.guessed
    assert fwd.hops == 0  # the chain starts at the directory: a guess is no hop of it
    assert nodes.cores["b"].stats.counters["guesses_missed"] == 1


def test_a_page_given_back_is_asked_of_the_directory_not_guessed():
    nodes = with_array(owned_by(Cluster("a", "b"), "a"))
    b = nodes.cores["b"]
    b.array_owner[0] = ("a", "tcp://a:7401")
    nodes.fault("b", PAGE + 1, write=True)
    nodes.run()  # a guess: a forwards it to the directory, which grants it untouched
    (_, fwd), = nodes.to_directory[-1:]
    nodes.to_directory.clear()
    nodes.deliver("b", p.Served(fwd.req, PAGE + 1, 1, True, p.Payload.ZERO, ""))
    nodes.to_directory.clear()
    nodes.carry("b", b.give_back([PAGE + 1]))
    nodes.to_directory.clear()
    # the next request follows the page it gave back (node to directory, in order): a guess
    # could overtake it and find the directory not owning the page yet
    out = nodes.fault("b", PAGE + 1, write=False)
    assert [x.peer for x in out] == [None] and not out[0].message.guessed


def test_a_dead_nodes_guesses_are_forgotten():
    nodes = with_array(Cluster("a", "b"))
    b = nodes.cores["b"]
    b.array_owner[0] = ("a", "tcp://a:7401")
    nodes.deliver("b", p.OwnerDead(1, "a"))
    assert b.array_owner == {}


def test_a_leave_waits_for_an_owners_read_copy_in_flight():
    nodes = owned_by(Cluster("a", "b"), "a")
    a = nodes.cores["a"]
    assert not a.in_flight()
    nodes.deliver("a", p.PageRequest(FIRST_REQ + 1, PAGE, False, "b", "tcp://b:7401"))
    assert a.in_flight()  # the copy is unconfirmed: give_back would keep the page
    assert [type(x) for x in a.give_back([PAGE])] == []
    nodes.run()  # b installs, confirms
    assert not a.in_flight()
    assert any(isinstance(x, act.Send) and isinstance(x.message, p.Served)
               for x in a.give_back([PAGE]))


@given(st.sets(st.integers(0, 40)), st.integers(1, 12))
def test_ascending_runs_are_the_runs_of_pages_in_order(pages, max_len):
    """A run's pages collected in order skip the sort and the loop when they are consecutive;
    the runs are the same either way."""
    ordered = sorted(pages)
    assert ascending_runs(ordered, max_len) == runs(ordered, max_len)
