"""IVY's dynamic distributed manager (``--manager dynamic``) with real processes: the agents'
peer endpoints carry the requests along the probable owners and the pages straight from their
owners; the directory hands out untouched pages and turns a death into a loud loss."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.cluster import ClusterProcessError, NodeProcess
from tests.test_loss import NOTICE_DEADLINE_S, STOPPED_LOUDLY, _kill_whole_node

pytestmark = pytest.mark.timeout(90)

#: int64 slots per page
SLOTS = 512
#: how long two nodes' peer links may take to connect on a loaded machine
PEER_LINKS_DEADLINE_S = 30


@pytest.fixture
def manager():
    return "dynamic"


def _counters(node: NodeProcess) -> dict:
    return node.run("", "node.stats()")["counters"]


def test_reads_see_the_last_write_and_writes_invalidate_across_three_nodes(make_node):
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    a.run(f"x = node.array('x', (4 * {SLOTS},), np.int64); x[:] = np.arange(4 * {SLOTS})")
    for reader in (b, c):
        total = reader.run(f"x = node.array('x', (4 * {SLOTS},), np.int64)", "int(x.sum())")
        assert total == 4 * SLOTS * (4 * SLOTS - 1) // 2
    a.run("x[:] = 7")  # the owner invalidates the copies it handed out
    for reader in (b, c):
        assert reader.run("", "int(x.sum())") == 7 * 4 * SLOTS
        assert _counters(reader).get("invalidations", 0) >= 1
    c.run(f"x[{SLOTS}] = 9")  # ownership of one page moves to c, a's and b's copies go
    for reader in (a, b):
        assert reader.run("", f"int(x[{SLOTS}])") == 9
    assert a.run("", f"int(x[{SLOTS} + 1])") == 7


def test_a_read_of_a_page_its_owner_holds_is_two_hops_node_to_node(make_node):
    a, b = make_node("a"), make_node("b")
    a.run(f"x = node.array('x', ({SLOTS},), np.int64); x[:] = 1")
    assert b.run(f"x = node.array('x', ({SLOTS},), np.int64)", "int(x[0])") == 1
    a.run("x[:] = 2")  # b's copy invalidated: b knows a as the page's probable owner now
    # the steady state: both peer links connected. A first connection that takes longer than
    # the agent waits for one (a loaded machine) sends that transfer through the directory
    # (correct, a hop longer), so each round here writes, reads, and checks that b's request
    # went straight to a, until one does (ZeroMQ keeps connecting in the background)
    deadline = time.monotonic() + PEER_LINKS_DEADLINE_S
    value = 2
    while _counters(b).get("messages_to_peers", 0) == 0 or \
            _counters(a).get("messages_to_peers", 0) == 0:
        assert time.monotonic() < deadline, "the peer links did not connect"
        assert b.run("", "int(x[0])") == value
        value += 1
        a.run(f"x[:] = {value}")
    before_a, before_b = _counters(a), _counters(b)
    assert b.run("", "int(x[0])") == value
    after_a, after_b = _counters(a), _counters(b)
    # b: one request, straight to a (a PageRequest and its Taken); a: the Served back
    assert after_b["requests"] - before_b["requests"] == 1
    assert after_b["messages_to_peers"] - before_b["messages_to_peers"] == 2
    assert after_a["messages_to_peers"] - before_a["messages_to_peers"] == 1


def test_a_killed_owners_pages_are_lost_loudly_and_the_others_carry_on(directory, tmp_path):
    a = NodeProcess(directory.endpoint, "a", tmp_path)
    b = NodeProcess(directory.endpoint, "b", tmp_path)
    c = NodeProcess(directory.endpoint, "c", tmp_path)
    try:
        make = f"x = node.array('x', (2 * {SLOTS},), np.int64)"
        a.run(f"{make}; x[:{SLOTS}] = 1")  # a owns page 0
        b.run(f"{make}; x[{SLOTS}:] = 2")  # b owns page 1
        _kill_whole_node(a)
        with pytest.raises(ClusterProcessError):
            c.run(make, "int(x[0])", timeout_s=NOTICE_DEADLINE_S + 10)
        assert c.proc.wait(10) in STOPPED_LOUDLY
        assert "LOST" in c.log_path.read_text()
        assert "LOST" in directory.log_path.read_text()
        # b's page lives on: b writes it, a new node reads it
        b.run(f"x[{SLOTS}] = 3")
        d = NodeProcess(directory.endpoint, "d", tmp_path)
        try:
            assert d.run(make, f"int(x[{SLOTS}]) + int(x[{SLOTS} + 1])") == 5
        finally:
            d.kill()
    finally:
        for n in (a, b, c):
            n.kill()


# Release-consistency arrays have their home at the directory under this manager too: the
# release tests' own programs, run here (this module's ``manager``): twins, diffs and write
# notices; sequential pages beside them, node to node; a death losing unreleased changes loudly;
# a lock's grant carrying the bytes it guards; a fork, a MADV_REMOVE (zeros at the home) and an
# unmap of release pages
from tests.test_guarded_locks import (  # noqa: E402
    test_guarded_data_comes_with_the_grant_without_a_fault_over_the_network as
    test_release_guarded_data_comes_with_the_grant)
from tests.test_release import (  # noqa: E402
    test_a_counter_under_a_lock_counts_every_increment as test_release_counter_under_a_lock,
    test_a_node_killed_with_changes_it_never_released_loses_those_pages_loudly as
    test_release_changes_never_released_by_a_killed_node_are_lost_loudly,
    test_fork_remove_and_unmap_work_on_release_arrays as
    test_release_fork_remove_and_unmap,
    test_sequential_and_release_arrays_live_in_one_program as
    test_release_and_sequential_arrays_in_one_program)


def test_a_freed_arrays_memory_never_brings_its_bytes_to_a_new_array(make_node):
    # the nodes keep owning a freed array's pages (no directory transaction zeroes them): its
    # addresses are retired, so a new array finds zeros, not the old array's bytes
    a, b = make_node("a"), make_node("b")
    a.run(f"x = node.array('x', ({SLOTS},), np.int64); x[:] = 5")
    assert b.run(f"x = node.array('x', ({SLOTS},), np.int64)", "int(x[1])") == 5
    for n in (a, b):
        n.run("node.free('x'); del x")
    for n in (a, b):
        assert n.run(f"y = node.array('y', ({SLOTS},), np.int64)", "int(y.sum())") == 0


def test_an_owners_madv_remove_reaches_the_other_nodes_as_zeros(make_node):
    a, b = make_node("a"), make_node("b")
    a.run(f"x = node.array('m', (3 * {SLOTS},), np.int64); x[:] = 9")
    assert b.run(f"x = node.array('m', (3 * {SLOTS},), np.int64)", "int(x.sum())") == 9 * 3 * SLOTS
    a.run(f"x[{SLOTS}:] = 3")  # a owns pages 1 and 2 alone, page 0 shared with b
    a.run("libc.madvise(node.address_of(x), 2 * 4096, libc.MADV_REMOVE)")
    # b's copy of page 0 is invalidated once a's agent has told the remove from a DONTNEED
    # (before a touches the page again: its next owner would invalidate the copy too)
    b.run(
        "import time\n"
        "deadline = time.monotonic() + 5\n"
        f"while x[:{SLOTS}].any() and time.monotonic() < deadline:\n"
        "    time.sleep(0.001)\n"
    )
    assert b.run("", f"x[:2 * {SLOTS}].tolist()") == [0] * 2 * SLOTS
    assert b.run("", f"int(x[2 * {SLOTS}:].sum())") == 3 * SLOTS
    assert a.run("", f"x[:2 * {SLOTS}].tolist()") == [0] * 2 * SLOTS


def test_a_node_without_a_peer_endpoint_refuses_to_start_naming_why(directory, tmp_path):
    # never a silent fallback to another manager's core: the dynamic one needs a peer endpoint
    node = NodeProcess(directory.endpoint, "a", tmp_path,
                       env={**os.environ, "DSM_PEER_LISTEN": "none"}, wait=False)
    try:
        with pytest.raises(AssertionError):
            node.wait_attached()
        assert "needs a peer endpoint" in node.log_path.read_text()
    finally:
        node.kill()


from dsm.managers import MANAGER_ENV  # noqa: E402
from tests.test_netns_cluster import hosts, namespaces  # noqa: E402,F401 (fixtures)
from tests.test_netns_cluster import (  # noqa: E402
    test_node_leaving_on_sigterm_hands_its_pages_back as _leave_on_namespace_hosts)


def test_a_node_leaving_waits_for_its_transfers_in_flight_and_loses_no_page(hosts, monkeypatch):
    # the gather program's nodes share its "done" page: the leaver may still own it, a read
    # copy of it on its way to a reader (unconfirmed) as it leaves. It hands the page back once
    # the reader confirmed; before, it left with it and the page was declared lost (a late
    # node's read of it: SIGBUS)
    monkeypatch.setenv(MANAGER_ENV, "dynamic")
    _leave_on_namespace_hosts(hosts)


def test_dsm_top_shows_whom_the_directory_handed_each_page_to(make_node, directory):
    from dsm.commands.top import StatsClient
    from dsm.topview import DYNAMIC_LEGEND
    a = make_node("a")
    a.run(f"x = node.array('s', (8, {SLOTS}), np.int64); x[:] = 1")
    client = StatsClient(directory.endpoint)
    try:
        report = client.query()
    finally:
        client.close()
    [(name, first, count, runs)] = report["arrays"]
    # a wrote every page: the directory handed them all to a (not "at home", as before)
    assert name == "s" and runs == [[8, "owned", ["a"]]], runs
    done = subprocess.run([sys.executable, "-m", "dsm", "top", "--directory", directory.endpoint,
                           "--interval", "0.3"], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert " ".join(DYNAMIC_LEGEND.split()) in " ".join(done.stdout.split()), done.stdout
