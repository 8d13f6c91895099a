"""The node's inbox (``dsm/core/inbox.py``), the one dispatch the agent and the simulator deliver
through, on a real node core with its ports recorded: what each side may send, the checks made
before anything changes, an acquire's notices handled before its answer, the directory's
Fenced, Closing and heartbeats. (The simulator runs it under every seed: its mutants are in
``tests/test_simulation_faults.py``; the Fenced path is here, since the model's live nodes are
never fenced, which fails a run by itself.)"""

from __future__ import annotations

import pytest

from dsm import protocol as p
from dsm.core.actions import Punch
from dsm.core.inbox import COORDINATOR_SHARD, Inbox
from dsm.core.node import NodeCore
from dsm.core.readahead import ReadAhead
from dsm.core.states import PageState
from dsm.errors import DsmError, ProtocolError
from dsm.layout import PAGE_SIZE, Layout

pytestmark = pytest.mark.timeout(10)

PAGES = 8
#: another shard than the coordinator
OTHER_SHARD = COORDINATOR_SHARD + 1
#: a clock sample's round trip: when it started (s), the directory's clock (ns)
ECHO_NS, CLOCK_NS = 2_000_000_000, 5_000_000_000


class Ports:
    """The inbox's ports, recording what it asked of them, in order."""

    def __init__(self, answered: bool = True):
        self.calls: list[tuple] = []
        self.answered = answered

    def carry_out(self, actions: list) -> None:
        self.calls.append(("carry_out", actions))

    def answer(self, msg: p.Message) -> bool:
        self.calls.append(("answer", msg))
        return self.answered

    def cut_off(self, why: str) -> None:
        self.calls.append(("cut_off", why))

    def clock_sample(self, t0_s: float, clock_ns: int) -> None:
        self.calls.append(("clock_sample", t0_s, clock_ns))


@pytest.fixture
def ports() -> Ports:
    return Ports()


@pytest.fixture
def core() -> NodeCore:
    return NodeCore("n0", PAGES, PAGE_SIZE, ReadAhead(1))


@pytest.fixture
def inbox(core: NodeCore, ports: Ports) -> Inbox:
    return Inbox(core, Layout(0x6000_0000_0000, PAGES * PAGE_SIZE), now=lambda: 0.0,
                 reachable=lambda msg: lambda addr: True, carry_out=ports.carry_out,
                 answer=ports.answer, cut_off=ports.cut_off, clock_sample=ports.clock_sample)


def test_an_acquire_invalidates_the_noticed_copies_before_the_answer_goes_on(inbox, core, ports):
    core.state[2] = PageState.CLEAN
    reply = p.SyncReply(1, p.SyncStatus.GRANTED, "", notices=[2, 1])
    inbox.from_directory(COORDINATOR_SHARD, reply, None)
    assert ports.calls == [("carry_out", [Punch(2, 1)]), ("answer", reply)]
    assert 2 not in core.state


@pytest.mark.parametrize("runs", [[2], [2, 0], [PAGES - 1, 2]], ids=["odd", "empty run", "past"])
def test_notices_that_are_not_runs_of_the_region_change_nothing(inbox, core, ports, runs):
    core.state[2] = PageState.CLEAN
    with pytest.raises(ProtocolError):
        inbox.from_directory(COORDINATOR_SHARD,
                             p.SyncReply(1, p.SyncStatus.GRANTED, "", notices=runs), None)
    assert ports.calls == [] and core.state == {2: PageState.CLEAN}


def test_an_allocation_outside_the_region_is_answered_an_error(inbox, core, ports):
    inbox.from_directory(COORDINATOR_SHARD, p.Allocated(3, PAGES * PAGE_SIZE - 8, 16, {}), None)
    [(kind, answer)] = ports.calls
    assert kind == "answer" and type(answer) is p.Error and answer.req == 3
    inbox.from_directory(COORDINATOR_SHARD, p.Allocated(4, 0, 16, {}), None)
    assert ports.calls[-1] == ("answer", p.Allocated(4, 0, 16, {}))


def test_a_fenced_cuts_the_node_off_unless_it_said_bye(inbox, ports):
    inbox.said_bye = True  # a late message of its own fenced after its Bye: expected
    inbox.from_directory(COORDINATOR_SHARD, p.Fenced(1, "left"), None)
    assert ports.calls == []
    inbox.said_bye = False
    inbox.from_directory(OTHER_SHARD, p.Fenced(1, "declared dead"), None)
    [(kind, why)] = ports.calls
    assert kind == "cut_off" and "declared dead" in why


def test_a_closing_is_noted_and_only_the_coordinators_heartbeat_is_a_clock_sample(inbox, ports):
    inbox.from_directory(COORDINATOR_SHARD, p.Closing("stopping"), None)
    assert inbox.directory_closing == "stopping"
    inbox.from_directory(OTHER_SHARD, p.Heartbeat(CLOCK_NS, ECHO_NS), None)
    inbox.from_directory(COORDINATOR_SHARD, p.Heartbeat(CLOCK_NS, 0), None)  # not an answer
    assert ports.calls == []
    inbox.from_directory(COORDINATOR_SHARD, p.Heartbeat(CLOCK_NS, ECHO_NS), None)
    assert ports.calls == [("clock_sample", ECHO_NS / 1e9, CLOCK_NS)]


def test_what_a_side_never_sends_is_refused_before_anything_changes(inbox, core, ports):
    core.state[1] = PageState.SHARED
    with pytest.raises(ProtocolError):  # pages from the directory come as Grants
        inbox.from_directory(COORDINATOR_SHARD,
                             p.PeerPage(1, 1, 1, False, p.Payload.NONE, "n1"), None)
    with pytest.raises(ProtocolError):  # only a directory grants
        inbox.from_peer(p.Grant(1, 1, False, p.Payload.NONE), None)
    with pytest.raises(DsmError):  # outside the region
        inbox.from_peer(p.Invalidated(1, PAGES - 1, 2, "n1"), None)
    assert ports.calls == [] and core.state == {1: PageState.SHARED}
