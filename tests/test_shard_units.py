"""The distributed manager's pieces without processes: which shard serves a message, requests
that stop at stripe ends (node core and page directory), the agent's routing, the flags of
``dsm directory``, and ``dsm top``'s map put together from the shards."""

from __future__ import annotations

import argparse

import pytest

from dsm import protocol as p
from dsm.linkwire import DealerLink
from dsm.reliability import has_session, strip
from dsm.agent.links import ShardLinks, resolve_endpoint
from dsm.commands import directory as cmd
from dsm.managers import DEFAULT_MANAGER
from dsm.core import actions as act
from dsm.core.node import NodeCore
from dsm.core.readahead import ReadAhead
from dsm.core.shards import STRIPE_PAGES, clip_to_stripe, shard_of, split_at_stripes, stripe_end
from dsm.core.states import PageState
from dsm.directory.pages import PageDirectory
from dsm.directory.shard import WrongShard, check_shard
from dsm.directory.shardprocs import local_endpoint, shard_listen_endpoint, shard_trace_path
from dsm.directory.stats import stitch_arrays
from dsm.errors import ConfigError
from dsm.layout import Layout
from dsm.libc import PAGE_SIZE
from dsm.uffd.events import Access, FaultKind

S = STRIPE_PAGES
LAYOUT = Layout(0x6000_0000_0000, 8 * S * PAGE_SIZE)


# --- stripes ----------------------------------------------------------------------------------
def test_runs_are_cut_where_a_stripe_ends_and_only_with_shards():
    assert clip_to_stripe(S - 3, 10, 2) == 3 and clip_to_stripe(S - 3, 2, 2) == 2
    assert clip_to_stripe(S - 3, 10, 1) == 10  # one directory: nothing to stop at
    assert list(split_at_stripes([(S - 2, 4), (0, 1)], 4)) == [(S - 2, 2), (S, 2), (0, 1)]
    assert list(split_at_stripes([(0, 3 * S)], 3)) == [(0, S), (S, S), (2 * S, S)]
    assert {shard_of(q, 3) for q, _ in split_at_stripes([(0, 3 * S)], 3)} == {0, 1, 2}
    assert stripe_end(S + 5, 2) == 2 * S and stripe_end(5, 1) is None


def test_the_node_core_asks_for_no_run_that_crosses_a_stripe_end():
    core = NodeCore("n", LAYOUT.num_pages, PAGE_SIZE, ReadAhead(S))
    core.set_shards(2)
    proc = object()
    out = []
    for page in range(S - 8, S + 2):  # a sequential reader: its window grows across the end
        if page not in core.pending:  # (a fault on a page asked for waits for it)
            out += core.fault(proc, LAYOUT.base + page * PAGE_SIZE, page, Access.READ,
                              FaultKind.MISSING, 1, 0.0)
    acquires = [a.message for a in out if isinstance(a, act.Send)]
    assert acquires and all(isinstance(m, p.Acquire) for m in acquires)
    for m in acquires:
        assert shard_of(m.page, 2) == shard_of(m.page + m.count - 1, 2), m
    assert any(m.page < S and m.page + m.count == S for m in acquires)  # cut at the end
    assert any(m.page == S and m.count > 1 for m in acquires)  # and on in the next stripe


def test_an_upgrade_run_stops_at_a_stripe_end():
    core = NodeCore("n", LAYOUT.num_pages, PAGE_SIZE, ReadAhead(S))
    core.set_shards(4)
    for page in range(S - 4, S + 4):
        core.state[page] = PageState.SHARED
    out = []
    for page in range(S - 4, S - 1):  # a sequential writer of read copies
        out += core.fault("proc", LAYOUT.base + page * PAGE_SIZE, page, Access.WRITE,
                          FaultKind.WRITE_PROTECTED, 1, 0.0)
        core.pending.clear()
    for m in (a.message for a in out if isinstance(a, act.Send)):
        assert m.have_copy and m.page + m.count <= S, m


def test_pages_handed_back_go_in_runs_of_one_stripe():
    core = NodeCore("n", LAYOUT.num_pages, PAGE_SIZE, ReadAhead(4))
    core.set_shards(2)
    core.state.update({q: PageState.EXCLUSIVE for q in range(S - 2, S + 2)})
    core.state.update({q: PageState.SHARED for q in range(2 * S - 1, 2 * S + 1)})
    sends = [a.message for a in core.give_back(list(core.state)) if isinstance(a, act.Send)]
    assert [(type(m).__name__, m.page, m.count) for m in sends] == [
        ("Writeback", S - 2, 2), ("Writeback", S, 2), ("Drop", 2 * S - 1, 1), ("Drop", 2 * S, 1)]


def test_the_page_directory_adds_no_page_of_the_next_stripe():
    d = PageDirectory(LAYOUT)
    d.shards = 2
    (send,) = d.acquire("a", S - 3, 16, False, False)
    assert (send.message.page, send.message.count) == (S - 3, 3)
    d1 = PageDirectory(LAYOUT)  # one directory: the run goes on
    (send,) = d1.acquire("a", S - 3, 16, False, False)
    assert send.message.count == 16


# --- which shard serves what --------------------------------------------------------------------
@pytest.mark.parametrize("msg,index,count,complaint", [
    (p.Acquire(S, 1, False, False), 0, 2, "page 256 is managed by shard 1"),
    (p.Acquire(S - 1, 2, True, False), 0, 2, "crosses into shard 1's stripe"),
    (p.Fetched(1, 2 * S, 1, p.Payload.NONE, []), 1, 4, "is managed by shard 2"),
    (p.Invalidated(1, 0, 1), 3, 4, "is managed by shard 0"),
    (p.Drop(S, 3), 0, 4, "is managed by shard 1"),
    (p.Discard([S, 0]), 1, 2, "names page 0, which shard 0 manages"),
    (p.LockAcquire(1, "l", "n:1:1", -1), 1, 2, "only the coordinator (shard 0) serves it"),
    (p.LostQuery(1), 2, 4, "only the coordinator"),
])
def test_a_message_for_another_shard_is_refused_saying_which(msg, index, count, complaint):
    with pytest.raises(WrongShard, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        check_shard(msg, index, count)


@pytest.mark.parametrize("msg,index,count", [
    (p.Acquire(S, 4, False, False), 1, 2),
    (p.Writeback(2 * S, S, p.Payload.ZERO), 0, 2),
    (p.Discard([S, S + 9, 3 * S]), 1, 2),
    (p.Heartbeat(), 3, 4),
    (p.Bye(), 1, 4),
    (p.Alloc(1, "x", 8, {}), 0, 4),
])
def test_a_message_for_this_shard_passes(msg, index, count):
    check_shard(msg, index, count)


class _FakeDealer:
    def __init__(self):
        self.sent = []

    def send_multipart(self, frames, copy=True):
        assert has_session(frames[0])  # every message on a link carries its session's
        self.sent.append(p.decode(strip(frames), PAGE_SIZE, p.Direction.TO_DIRECTORY)[0])


def _links(count: int) -> ShardLinks:
    links = object.__new__(ShardLinks)
    links.dealers = [_FakeDealer() for _ in range(count)]
    links.sessions = [DealerLink(d, f"shard {i}", 0.0, watch=False)
                      for i, d in enumerate(links.dealers)]
    links.coordinator = links.dealers[0]
    links.last_sent_s = [0.0] * count
    return links


def test_the_agent_sends_each_message_to_its_shard(monkeypatch):
    # the links send below pyzmq's Python layer (dsm.wire): to the fakes, as a send_multipart
    monkeypatch.setattr("dsm.linkwire.send_frames",
                        lambda sock, frames, nonblocking=False: sock.send_multipart(frames))
    links = _links(3)
    for msg in (p.Acquire(S + 1, 4, False, False), p.Writeback(2 * S, 2, p.Payload.ZERO),
                p.Fetched(1, 3 * S, 1, p.Payload.NONE, []), p.Invalidated(2, 5, 1),
                p.Drop(4 * S, 1), p.Discard([1, S, S + 1, 2 * S, 5 * S]), p.Heartbeat(),
                p.Bye(), p.Alloc(1, "x", 8, {}), p.LostQuery(2), p.NodeReport({}, [], 1)):
        links.send(msg, p.encode(msg))
    sent = [[type(m).__name__ + (f"@{m.page}" if hasattr(m, "page") else "") +
             (f"{m.pages}" if isinstance(m, p.Discard) else "") for m in d.sent]
            for d in links.dealers]
    assert sent == [
        ["Fetched@768", "Invalidated@5", "Discard[1]", "Heartbeat", "Bye", "Alloc", "LostQuery",
         "NodeReport"],
        ["Acquire@257", "Drop@1024", "Discard[256, 257]", "Heartbeat", "Bye"],
        ["Writeback@512", "Discard[512, 1280]", "Heartbeat", "Bye"],
    ]
    assert min(links.last_sent_s) > 0  # every shard heard a heartbeat


def test_an_advertised_wildcard_is_the_coordinators_host_as_the_node_knows_it():
    assert resolve_endpoint("tcp://0.0.0.0:7401", "tcp://directory:7400") == "tcp://directory:7401"
    assert resolve_endpoint("tcp://*:7402", "tcp://10.0.0.5:7400") == "tcp://10.0.0.5:7402"
    assert resolve_endpoint("tcp://[::]:7401", "tcp://[fe80::1]:7400") == "tcp://[fe80::1]:7401"
    assert resolve_endpoint("tcp://10.1.1.1:7401", "tcp://d:7400") == "tcp://10.1.1.1:7401"
    assert resolve_endpoint("ipc:///tmp/d-shard1", "ipc:///tmp/d") == "ipc:///tmp/d-shard1"


def test_one_host_shards_listen_on_the_ports_after_the_coordinators():
    assert shard_listen_endpoint("tcp://0.0.0.0:7400", 3) == "tcp://0.0.0.0:7403"
    assert shard_listen_endpoint("tcp://127.0.0.1:*", 2) == "tcp://127.0.0.1:*"
    assert shard_listen_endpoint("ipc:///tmp/x/d.ipc", 1) == "ipc:///tmp/x/d.ipc-shard1"
    with pytest.raises(ValueError, match="tcp:// or ipc://"):
        shard_listen_endpoint("inproc://d", 1)
    assert local_endpoint("tcp://0.0.0.0:7400") == "tcp://127.0.0.1:7400"
    assert shard_trace_path("/t/directory.trace", 2) == "/t/directory.shard2.trace"


# --- dsm directory's flags ----------------------------------------------------------------------
def _plan(monkeypatch, *argv, env=None):
    for var in (cmd.MANAGER_ENV, cmd.SHARDS_ENV):
        monkeypatch.delenv(var, raising=False)
    for var, value in (env or {}).items():
        monkeypatch.setenv(var, value)
    parser = argparse.ArgumentParser()
    subs = parser.add_subparsers()
    cmd.register(subs)
    return cmd.shard_plan(parser.parse_args(["directory", *argv]))


def test_directory_flags_make_the_plan(monkeypatch):
    manager, plan = _plan(monkeypatch)
    assert manager == DEFAULT_MANAGER.value and plan.count == 1 and plan.coordinator is None
    assert _plan(monkeypatch, "--manager", "central")[0] == "central"
    manager, plan = _plan(monkeypatch, "--shards", "4")
    assert manager == "distributed" and plan.count == 4 and plan.local
    manager, plan = _plan(monkeypatch, env={cmd.SHARDS_ENV: "2", cmd.MANAGER_ENV: "distributed"})
    assert (manager, plan.count, plan.local) == ("distributed", 2, True)
    # a manager asked for on the command line wins over the environment's shard count
    manager, plan = _plan(monkeypatch, "--manager", "relay", env={cmd.SHARDS_ENV: "2"})
    assert (manager, plan.count) == ("relay", 1)
    manager, plan = _plan(monkeypatch, "--shard", "0", "--of", "3")
    assert (plan.count, plan.local, plan.index) == (3, False, 0)
    manager, plan = _plan(monkeypatch, "--shard", "2", "--of", "3", "--coordinator", "tcp://c:1")
    assert (plan.index, plan.count, plan.coordinator) == (2, 3, "tcp://c:1")
    manager, plan = _plan(monkeypatch, "--shard", "auto", "--coordinator", "tcp://c:1")
    assert plan.index is None and plan.count == 0  # the coordinator's count


@pytest.mark.parametrize("argv,env,complaint", [
    (["--manager", "relay", "--shards", "2"], {}, "2 shards make a distributed manager"),
    (["--manager", "central", "--shards", "2"], {}, "--manager central runs one directory"),
    (["--shard", "1"], {}, "give its endpoint with --coordinator"),
    (["--shard", "auto"], {}, "give its endpoint with --coordinator"),
    (["--coordinator", "tcp://c:1"], {}, "give --shard"),
    (["--shard", "3", "--of", "3", "--coordinator", "tcp://c:1"], {}, "the shards are 0..2"),
    (["--shards", "2", "--shard", "0"], {}, "not both"),
    (["--shards", "2", "--of", "2"], {}, "--of goes with --shard"),
    (["--advertise", "tcp://x:1"], {}, "--advertise is for a shard"),
    ([], {cmd.SHARDS_ENV: "many"}, "DSM_SHARDS"),
    ([], {cmd.MANAGER_ENV: "static"}, "expected one of relay, central, distributed, dynamic"),
])
def test_directory_flags_that_disagree_are_refused_saying_why(monkeypatch, argv, env, complaint):
    with pytest.raises(ConfigError, match=complaint):
        _plan(monkeypatch, *argv, env=env)


# --- the link between the shards --------------------------------------------------------------
#: how long a test waits for a message on a local socket
RECEIVE_DEADLINE_MS = 5000


def test_what_the_coordinator_tells_a_shard_after_its_welcome_is_numbered(tmp_path):
    """The coordinator tells a shard that just joined the nodes it admits at once, before the
    shard's first session header came: numbered on the shard's session (replayed after a reset),
    not sent bare, which a reset there would lose silently."""
    import zmq

    from dsm.directory.service import DirectoryService
    from dsm.directory.shard import Coordinator
    from dsm.reliability import parse

    service = DirectoryService(f"ipc://{tmp_path}/directory", LAYOUT, role=Coordinator(2))
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(service.endpoint)
    try:
        dealer.send_multipart(p.encode(p.ShardHello(1, 2, "ipc://shard1", 1)))
        assert service.socket.poll(RECEIVE_DEADLINE_MS)
        service._handle(service.socket.recv_multipart(copy=False))
        service.directory.role.admitted("n0", 7)  # a node admitted before the shard speaks
        assert dealer.poll(RECEIVE_DEADLINE_MS)
        welcome = dealer.recv_multipart()
        assert not has_session(welcome[0])  # the handshake: read before any session
        assert isinstance(p.decode(welcome, PAGE_SIZE, p.Direction.TO_NODE)[0], p.ShardWelcome)
        assert dealer.poll(RECEIVE_DEADLINE_MS)
        told = dealer.recv_multipart()
        assert has_session(told[0]) and parse(told[0])[0] == 1, told[0]
        msg, _ = p.decode(strip(told), PAGE_SIZE, p.Direction.TO_NODE)
        assert msg == p.NodeAdmitted("n0", 7)
    finally:
        dealer.close(0)
        service.socket.close(0)
        service.security.close()


# --- dsm top over the shards ----------------------------------------------------------------------
def test_the_map_of_an_array_takes_each_stripe_from_its_shard():
    first, pages = S - 2, 2 * S + 4  # from the end of stripe 0 to the start of stripe 3
    views = {  # each shard sees its own stripes; the others' pages read as home
        0: [["x", first, pages, [[1, "home", []], [1, "owned", ["a"]], [2 * S + 2, "home", []]]]],
        1: [["x", first, pages, [[2, "home", []], [S, "shared", ["a", "b"]], [S + 2, "home", []]]]],
    }
    (stitched,) = stitch_arrays(views, 2)
    assert stitched == ["x", first, pages, [
        [1, "home", []], [1, "owned", ["a"]],   # stripe 0, from shard 0
        [S, "shared", ["a", "b"]],              # stripe 1, from shard 1
        [S + 2, "home", []],                    # stripe 2 (shard 0) and 3 (shard 1): home
    ]]


def test_shards_asked_for_make_a_distributed_manager_whatever_dsm_manager_says(monkeypatch):
    # $DSM_MANAGER is a default, for one directory: a number of shards given wins over it
    manager, plan = _plan(monkeypatch, "--shards", "2", env={cmd.MANAGER_ENV: "central"})
    assert manager == "distributed" and plan.count == 2
    manager, plan = _plan(monkeypatch, env={cmd.MANAGER_ENV: "central"})
    assert manager == "central" and plan.count == 1
