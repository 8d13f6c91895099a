"""Invalidation acknowledgements straight to the writer (issue 24): the directory grants a write
at once, naming the holders whose copies it invalidates (``Grant.acks``); each holder
acknowledges to the writer (``Invalidated``, node to node), which installs only once all have,
then confirms (``Received``). The directory's page-state machine and the node core alone, inputs
in, messages and actions out; the whole flow runs in the simulator (tests/test_simulation*.py)
and between real processes (tests/test_coherence.py, tests/test_central_manager.py)."""

from __future__ import annotations

import pytest

from dsm import protocol as p
from dsm.core import actions as act
from dsm.core.node import ANSWERED_TXNS_REMEMBERED, NodeCore
from dsm.core.readahead import ReadAhead
from dsm.core.states import PageState
from dsm.directory.pages import OnLoss, PageDirectory
from dsm.layout import Layout
from dsm.uffd.events import Access, FaultKind

pytestmark = pytest.mark.timeout(30)

PAGE = 4096
LAYOUT = Layout(0x6000_0000_0000, 64 * PAGE)
READAHEAD_PAGES = 4


def directory(direct: bool = False, on_loss: OnLoss = OnLoss.POISON,
              clock=None) -> PageDirectory:
    kwargs = {} if clock is None else {"clock": clock}
    d = PageDirectory(LAYOUT, direct=direct, on_loss=on_loss, **kwargs)
    for n in "abc":
        d.node_joined(n, peer=f"tcp://{n}:1")
    return d


def shared_by(d: PageDirectory, page: int, nodes: str) -> None:
    for n in nodes:
        d.acquire(n, page, 1, False, False)
    assert d.entry(page).copyset == set(nodes)


def by_type(sends, kind):
    return [s for s in sends if isinstance(s.message, kind)]


# --- the directory -----------------------------------------------------------------------------
@pytest.mark.parametrize("direct", [False, True], ids=["relay", "central"])
def test_an_upgrade_is_granted_at_once_and_each_holder_acknowledges_to_the_writer(direct):
    d = directory(direct)
    shared_by(d, 3, "abc")
    sends = d.acquire("a", 3, 1, True, True)
    invalidates = by_type(sends, p.Invalidate)
    assert sorted(s.node for s in invalidates) == ["b", "c"]
    assert all((s.message.to_node, s.message.to_addr) == ("a", "tcp://a:1") for s in invalidates)
    [grant] = by_type(sends, p.Grant)
    txn = invalidates[0].message.txn
    assert grant.node == "a" and grant.message == p.Grant(3, 1, True, p.Payload.NONE, False, txn,
                                                          ["b", "c"])
    assert sends.index(grant) == len(sends) - 1  # the invalidations first: the critical path
    # the page stays busy until the writer confirms: a read of it queues
    assert d.acquire("b", 3, 1, False, False) == []
    assert d.entry(3).busy is not None
    after = d.received("a", txn, 3, 1, True)
    assert d.entry(3).owner == "a" and d.entry(3).copyset == set()
    [fetch] = after  # b's read starts only now
    assert fetch.node == "a" and isinstance(fetch.message, p.Fetch)


def test_a_write_to_a_page_others_share_is_granted_from_home_while_they_are_invalidated():
    d = directory()
    shared_by(d, 5, "bc")
    d.home.put(5, 1, p.Payload.DATA, b"\x05" * PAGE)
    sends = d.acquire("a", 5, 1, True, False)
    [grant] = by_type(sends, p.Grant)
    assert grant.message.payload == p.Payload.DATA and grant.page == b"\x05" * PAGE
    assert grant.message.acks == ["b", "c"] and len(by_type(sends, p.Invalidate)) == 2
    assert d.received("a", grant.message.txn, 5, 1, True) == []
    assert d.entry(5).owner == "a" and not d.entry(5).home_current


def test_an_acknowledgement_that_could_not_reach_the_writer_is_forwarded_once():
    d = directory()
    shared_by(d, 3, "abc")
    txn = by_type(d.acquire("a", 3, 1, True, True), p.Grant)[0].message.txn
    [fwd] = d.invalidated("b", txn, 3, 1)
    assert fwd.node == "a" and fwd.message == p.Invalidated(txn, 3, 1, "b")
    assert d.invalidated("b", txn, 3, 1) == []  # a duplicate
    assert d.invalidated("a", txn, 3, 1) == []  # not a holder
    assert d.entry(3).busy is not None  # the writer's confirmation ends it, nothing else


def test_a_holder_that_dies_before_acknowledging_is_counted_as_acknowledged():
    d = directory()
    shared_by(d, 3, "abc")
    txn = by_type(d.acquire("a", 3, 1, True, True), p.Grant)[0].message.txn
    out = d.node_lost("b")
    assert [(s.node, s.message) for s in out] == [("a", p.Invalidated(txn, 3, 1, "b"))]
    d.received("a", txn, 3, 1, True)
    assert d.entry(3).owner == "a"


@pytest.mark.parametrize("direct", [False, True], ids=["relay", "central"])
def test_a_writer_that_dies_before_confirming_takes_the_page_along(direct):
    d = directory(direct)
    shared_by(d, 3, "abc")
    d.acquire("a", 3, 1, True, True)
    d.node_lost("a")  # it may have installed it and written: the home copy is not current
    assert 3 in d.lost
    assert d.entry(3).busy is None and d.entry(3).copyset == set()
    [lost] = d.acquire("b", 3, 1, False, False)
    assert isinstance(lost.message, p.Lost) and lost.message.dead_node == "a"


def test_under_last_copy_a_writer_that_dies_before_confirming_falls_back_to_the_home_copy():
    d = directory(on_loss=OnLoss.LAST_COPY)
    shared_by(d, 3, "abc")
    d.acquire("a", 3, 1, True, True)
    d.node_lost("a")
    assert 3 not in d.lost and d.counters["fallbacks"] == 1
    [grant] = d.acquire("b", 3, 1, False, False)
    assert isinstance(grant.message, p.Grant)


def test_the_silent_party_of_an_unconfirmed_write_is_a_holder_not_heard_from():
    now = [0.0]
    d = directory(clock=lambda: now[0])
    shared_by(d, 3, "abc")
    txn = by_type(d.acquire("a", 3, 1, True, True), p.Grant)[0].message.txn
    d.invalidated("c", txn, 3, 1)  # c's came through here
    now[0] = 100.0
    assert set(d.silent_nodes(10.0)) == {"b"}


def test_a_writer_without_a_peer_endpoint_is_granted_once_the_acknowledgements_came_here():
    d = PageDirectory(LAYOUT)
    d.node_joined("a")  # behind NAT: no peer endpoint
    for n in "bc":
        d.node_joined(n, peer=f"tcp://{n}:1")
    shared_by(d, 3, "abc")
    sends = d.acquire("a", 3, 1, True, True)
    assert not by_type(sends, p.Grant) and all(s.message.to_node == "" for s in sends)
    assert d.invalidated("b", sends[0].message.txn, 3, 1) == []
    [grant] = d.invalidated("c", sends[0].message.txn, 3, 1)
    assert grant.message == p.Grant(3, 1, True, p.Payload.NONE)


# --- the node core -----------------------------------------------------------------------------
def writer(pages=range(3, 4)) -> NodeCore:
    """A core holding read copies of ``pages`` and asking to upgrade the first."""
    core = NodeCore("a", 16, PAGE, ReadAhead(READAHEAD_PAGES))
    for q in pages:
        core.state[q] = PageState.SHARED
    out = core.fault("proc", pages[0] * PAGE, pages[0], Access.WRITE,
                     FaultKind.WRITE_PROTECTED, 1, 0.0)
    assert any(isinstance(a, act.Send) and isinstance(a.message, p.Acquire) for a in out)
    return core


def upgraded(out) -> bool:
    return any(isinstance(a, act.Upgrade) for a in out)


def confirmation(out):
    return [a.message for a in out if isinstance(a, act.Send) and isinstance(a.message, p.Received)]


def test_the_writer_installs_only_once_every_holder_has_acknowledged():
    core = writer()
    assert core.grant(p.Grant(3, 1, True, p.Payload.NONE, False, 7, ["b", "c"]), None, 1.0) == []
    assert core.invalidated(p.Invalidated(7, 3, 1, "b"), 1.0) == []
    assert core.state[3] is PageState.SHARED and 3 in core.pending
    out = core.invalidated(p.Invalidated(7, 3, 1, "c"), 1.0)
    assert upgraded(out) and core.state[3] is PageState.EXCLUSIVE
    assert confirmation(out) == [p.Received(7, 3, 1, True)]
    # its confirmation comes after the protection is lifted
    assert [type(a) for a in out].index(act.Upgrade) < [type(a) for a in out].index(act.Send)


def test_acknowledgements_before_the_grant_are_kept_for_it():
    core = writer()
    assert core.invalidated(p.Invalidated(7, 3, 1, "c"), 1.0) == []
    assert core.invalidated(p.Invalidated(7, 3, 1, "b"), 1.0) == []
    out = core.grant(p.Grant(3, 1, True, p.Payload.NONE, False, 7, ["b", "c"]), None, 1.0)
    assert upgraded(out) and confirmation(out) == [p.Received(7, 3, 1, True)]


def test_duplicated_and_late_acknowledgements_change_nothing():
    core = writer()
    core.grant(p.Grant(3, 1, True, p.Payload.NONE, False, 7, ["b", "c"]), None, 1.0)
    core.invalidated(p.Invalidated(7, 3, 1, "b"), 1.0)
    assert core.invalidated(p.Invalidated(7, 3, 1, "b"), 1.0) == []  # b again: c still owed
    out = core.invalidated(p.Invalidated(7, 3, 1, "c"), 1.0)
    assert upgraded(out)
    for holder in "bc":  # late (replayed after a reset, or forwarded after a death)
        assert core.invalidated(p.Invalidated(7, 3, 1, holder), 1.0) == []
    assert not core.acks.early  # nothing kept for a transaction that is over


def test_concurrent_transactions_count_their_own_acknowledgements():
    core = writer(range(3, 4))
    core.state[9] = PageState.SHARED
    core.fault("proc", 9 * PAGE, 9, Access.WRITE, FaultKind.WRITE_PROTECTED, 2, 0.0)
    core.grant(p.Grant(3, 1, True, p.Payload.NONE, False, 7, ["b"]), None, 1.0)
    core.grant(p.Grant(9, 1, True, p.Payload.NONE, False, 8, ["b"]), None, 1.0)
    out = core.invalidated(p.Invalidated(8, 9, 1, "b"), 1.0)
    assert confirmation(out) == [p.Received(8, 9, 1, True)]
    assert core.state[3] is PageState.SHARED  # txn 7 still waits for its own
    assert confirmation(core.invalidated(p.Invalidated(7, 3, 1, "b"), 1.0)) == [
        p.Received(7, 3, 1, True)]


def test_acknowledgements_kept_for_grants_that_never_come_are_bounded():
    core = writer()
    for txn in range(ANSWERED_TXNS_REMEMBERED + 10):
        core.invalidated(p.Invalidated(1000 + txn, 3, 1, "b"), 1.0)
    assert core.acks.early == ANSWERED_TXNS_REMEMBERED


@pytest.mark.parametrize("reachable", [True, False])
def test_a_holder_punches_then_acknowledges_to_the_writer_or_the_directory(reachable):
    core = NodeCore("b", 16, PAGE, ReadAhead(READAHEAD_PAGES))
    core.state[3] = PageState.SHARED
    out = core.invalidate(p.Invalidate(7, 3, 1, "a", "tcp://a:1"), lambda addr: reachable)
    assert isinstance(out[0], act.Punch) and 3 not in core.state
    send = out[-1]
    assert send.message == p.Invalidated(7, 3, 1, "b")
    assert send.peer == (("a", "tcp://a:1") if reachable else None)


def test_a_grant_without_acknowledgements_is_installed_at_once():
    core = writer()
    out = core.grant(p.Grant(3, 1, True, p.Payload.NONE), None, 1.0)
    assert upgraded(out) and not confirmation(out)
