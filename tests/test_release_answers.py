"""One request for release pages, one answer: the home answers each node's request with one
grant from the first page it asked for, and a node never installs a home copy over a copy of
its own (``dsm.directory.release``, ``dsm.core.node``). A second grant for a page a node had
since written replaced its writes with the old home copy, and its diff then carried the old
bytes home: another node's bytes of the page were lost (CI, ``test_release``)."""

from __future__ import annotations

from dsm import protocol as p
from dsm.core import actions as act
from dsm.core.node import NodeCore, Waiter
from dsm.core.readahead import ReadAhead
from dsm.core.states import PageState
from dsm.directory.home import HomeStore
from dsm.directory.release import ReleaseHomes
from dsm.layout import DEFAULT_BASE_ADDRESS, Layout
from dsm.libc import PAGE_SIZE
from dsm.uffd.events import Access, FaultKind

PAGES = 16


def usable(page: int) -> bool:
    return True


def homes() -> ReleaseHomes:
    return ReleaseHomes(HomeStore(Layout(DEFAULT_BASE_ADDRESS, PAGES * PAGE_SIZE, PAGE_SIZE)),
                        lambda page: True)


def grants_to(sends: list, node: str) -> list[tuple[int, int, bool]]:
    return [(m.page, m.count, m.write) for n, m, _ in sends if n == node]


def fetch_txn(sends: list) -> int:
    (_, fetch, _), = sends
    assert isinstance(fetch, p.Fetch), sends
    return fetch.txn


def test_a_request_whose_pages_end_up_private_and_shared_is_answered_by_one_grant():
    h = homes()
    assert grants_to(h.read("n0", 2, 2, usable, write=True), "n0") == [(2, 2, True)]
    # n2 writes both: asked of n0, their private holder; n1 reads page 3 meanwhile
    (holder, fetch, _), = h.read("n2", 2, 2, usable, write=True)
    assert holder == "n0" and (fetch.page, fetch.count) == (2, 2)
    assert h.read("n1", 3, 1, usable) == []
    sends = h.fetched("n0", fetch.txn, 2, 2, p.Payload.DATA, bytes(2 * PAGE_SIZE))
    # page 2 alone would be n2's private page, page 3 is shared: n2's one request gets one
    # grant of both, shared (two would answer it, the second one asked for by nobody)
    assert grants_to(sends, "n2") == [(2, 2, False)]
    assert grants_to(sends, "n1") == [(3, 1, False)]
    assert not h.private and {2, 3} <= h.shared


def test_requests_of_one_node_for_neighbouring_pages_are_answered_apart():
    h = homes()
    h.read("n0", 2, 2, usable, write=True)
    txn = fetch_txn(h.read("n1", 2, 2, usable, write=True))  # the Fetch of both
    assert h.read("n2", 2, 1, usable) == [] and h.read("n2", 3, 1, usable) == []
    sends = h.fetched("n0", txn, 2, 2, p.Payload.DATA, bytes(2 * PAGE_SIZE))
    assert sorted(grants_to(sends, "n2")) == [(2, 1, False), (3, 1, False)]
    assert grants_to(sends, "n1") == [(2, 2, False)]


def test_a_lone_writer_of_a_fetched_run_takes_it_over_privately():
    h = homes()
    h.read("n0", 2, 2, usable, write=True)
    txn = fetch_txn(h.read("n2", 2, 2, usable, write=True))
    sends = h.fetched("n0", txn, 2, 2, p.Payload.DATA, bytes(2 * PAGE_SIZE))
    assert grants_to(sends, "n2") == [(2, 2, True)]
    assert h.private == {2: "n2", 3: "n2"}


def test_a_node_asking_again_for_a_page_it_still_waits_for_gets_it_once():
    """Seed 258 of the simulator's sweeps with pages given back: n3's request of pages 2-5
    waited on their private holder; page 2 came first (given back), which answered it, and
    n3 asked again from page 3. The home granted page 3 to both requests."""
    h = homes()
    h.read("n1", 2, 4, usable, write=True)
    txn = fetch_txn(h.read("n3", 2, 4, usable, write=True))  # the Fetch of 2-5 from n1
    assert grants_to(h.written_back("n1", 2, 1, p.Payload.DATA, bytes(PAGE_SIZE)),
                     "n3") == [(2, 1, True)]
    assert h.read("n3", 3, 4, usable, write=True) == []  # waits, in place of its first request
    sends = h.fetched("n1", txn, 2, 4, p.Payload.DATA, bytes(4 * PAGE_SIZE), not_held=[2])
    pages = [q for q0, n, _ in grants_to(sends, "n3") for q in range(q0, q0 + n)]
    assert sorted(pages) == [3, 4, 5], sends


def test_pages_their_holder_gave_back_meanwhile_keep_the_contents_it_gave_back():
    h = homes()
    h.read("n1", 2, 2, usable, write=True)
    txn = fetch_txn(h.read("n3", 2, 2, usable, write=True))  # the Fetch of 2-3 from n1
    given = bytes([7]) * PAGE_SIZE
    h.written_back("n1", 3, 1, p.Payload.DATA, given)
    h.fetched("n1", txn, 2, 2, p.Payload.DATA, bytes([9]) * PAGE_SIZE + bytes(PAGE_SIZE),
              not_held=[3])
    payload, data = h.home.get(2, 2)
    assert bytes(data) == bytes([9]) * PAGE_SIZE + given


def test_a_late_answer_to_an_earlier_fetch_from_the_same_holder_is_not_this_ones():
    """Seed 131 of the sweeps with give-backs, a death and faults on every link: n2 gave its
    private page back as a Fetch went to it, took it again and wrote it, and a second Fetch
    went; the first one's late answer (nothing held) ended the second, and the waiting node
    got the home copy without n2's write."""
    h = homes()
    h.read("n2", 0, 1, usable, write=True)
    first = fetch_txn(h.read("n0", 0, 1, usable, write=True))
    h.written_back("n2", 0, 1, p.Payload.DATA, bytes([1]) * PAGE_SIZE)  # n0 gets it
    second = fetch_txn(h.read("n2", 0, 1, usable, write=True))  # n2 again: from n0
    h.written_back("n0", 0, 1, p.Payload.DATA, bytes([1]) * PAGE_SIZE)  # n2 gets it
    third = fetch_txn(h.read("n0", 0, 1, usable, write=True))  # n0 again: from n2
    assert len({first, second, third}) == 3
    assert h.fetched("n2", first, 0, 1, p.Payload.NONE, None) == []  # late: nothing ends
    sends = h.fetched("n2", third, 0, 1, p.Payload.DATA, bytes([3]) * PAGE_SIZE)
    assert grants_to(sends, "n0") == [(0, 1, True)]
    assert bytes(h.home.get(0, 1)[1]) == bytes([3]) * PAGE_SIZE


# --- the node ----------------------------------------------------------------------------------

def release_grant(page: int, count: int, write: bool = False) -> p.Grant:
    return p.Grant(page, count, write, p.Payload.DATA, release=True)


def page_data(count: int) -> bytes:
    return bytes(range(256)) * (count * PAGE_SIZE // 256)


def fault(core: NodeCore, page: int, write: bool, kind=FaultKind.MISSING) -> list:
    return core.fault("proc", page * PAGE_SIZE, page, Access.WRITE if write else Access.READ,
                      kind, 1, 0.0)


def acquires(out: list) -> list[tuple[int, int]]:
    return [(a.message.page, a.message.count) for a in out
            if isinstance(a, act.Send) and isinstance(a.message, p.Acquire)]


def test_a_second_grant_of_a_page_written_since_is_not_installed_over_it():
    core = NodeCore("n", PAGES, PAGE_SIZE, ReadAhead(1))
    assert acquires(fault(core, 3, write=True)) == [(3, 1)]
    core.grant(release_grant(3, 1), page_data(1), 0.0)  # (a part of another answer, say)
    assert core.state[3] is PageState.CLEAN
    out = fault(core, 3, write=True, kind=FaultKind.WRITE_PROTECTED)  # twinned, written
    assert any(isinstance(a, act.Twin) for a in out) and core.state[3] is PageState.DIRTY
    out = core.grant(release_grant(3, 1), page_data(1), 0.0)  # the request's own answer
    assert not any(isinstance(a, act.Install) for a in out), out
    assert core.state[3] is PageState.DIRTY and 3 in core.release.dirty


def test_pages_of_a_request_granted_apart_wake_their_waiters_and_are_not_asked_again():
    core = NodeCore("n", PAGES, PAGE_SIZE, ReadAhead(1))
    on_2 = Waiter("proc", 2 * PAGE_SIZE, 2, True, 1, 0.0)
    on_3 = Waiter("proc", 3 * PAGE_SIZE, 3, True, 1, 0.0)
    out = core._request(2, 2, True, [on_2], None, 0.0)
    assert acquires(out) == [(2, 2)]
    core.pending[3].waiters.append(on_3)  # a fault on page 3 joins the request
    out = core.grant(release_grant(3, 1), page_data(1), 0.0)  # page 3 first, apart
    (install,) = [a for a in out if isinstance(a, act.Install)]
    assert (install.first, install.count, install.wake) == (3, 1, (on_3,))
    assert core.pending[2].waiters == [on_2] and 3 not in core.pending
    out = core.grant(release_grant(2, 1), page_data(1), 0.0)
    (install,) = [a for a in out if isinstance(a, act.Install)]
    assert (install.first, install.count, install.wake) == (2, 1, (on_2,))
    assert acquires(out) == [] and not core.pending  # page 3 is not asked for again


def test_an_unasked_grant_installs_only_the_pages_another_request_awaits():
    """Pages held are never written over, and pages no request awaits are dropped: a late
    answer's copy may predate what the node wrote since (seed 258 of the simulator's sweeps
    with pages given back: a node read its own write as an older value)."""
    core = NodeCore("n", PAGES, PAGE_SIZE, ReadAhead(1))
    core.state[5] = PageState.DIRTY
    core.release.dirty.add(5)
    on_6 = Waiter("proc", 6 * PAGE_SIZE, 6, False, 1, 0.0)
    core._request(6, 1, False, [on_6], None, 0.0)
    data = page_data(3)
    out = core.grant(release_grant(4, 3), data, 0.0)
    installs = [(a.first, a.count, bytes(a.data), a.wake) for a in out
                if isinstance(a, act.Install)]
    assert installs == [(6, 1, data[2 * PAGE_SIZE:], (on_6,))]
    assert core.state[5] is PageState.DIRTY and 4 not in core.state and not core.pending
