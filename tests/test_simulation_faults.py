"""The simulator with the real session layer on every link, over channels that drop, duplicate,
swap and reset (``dsm/sim/links.py``), and nodes whose kernel fails calls (EAGAIN, ENOMEM, a
forked child gone: ESRCH) and whose peers cannot always be reached (``dsm/sim/agent.py``): seeds
across managers, shards, deaths and release pages keep every invariant; a session layer that
does not replay, a delivery table with a swapped field, a runner that forgets to send a page
home when its peer could not be reached, a kernel call whose EAGAIN or ENOMEM is taken for
done, or a node's inbox (the agent's own dispatch) that drops an acquire's write notices or
checks a peer's pages off by one, is caught; a failing seed (a real one, with a bug switched on) replays exactly."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
from collections import deque

import pytest

from dsm import protocol as p
from dsm.core import node as core_node
from dsm.core.carryout import ActionRunner
from dsm.core.inbox import Inbox
from dsm.core.kernel import TRANSIENT, KernelCalls
from dsm.directory import machine
from dsm.directory.pages import PageDirectory
from dsm.managers import Manager
from dsm.reliability import ReliableLink
from dsm.liveness import NODE_TIMEOUT_S
from dsm.sim import nodes, partitions, world
from dsm.sim.links import Faults, SimLinks
from dsm.sim.timers import HEARTBEATS_PER_JUMP
from dsm.sim.world import SimulationFailure, World

pytestmark = pytest.mark.timeout(120)

#: every kind of fault at this rate per message (a reset a tenth as often, per step)
RATE = 0.15
#: partitions alone, per step: about one in each run of a few hundred steps
PARTITION_RATE = 0.005
#: what a transaction left stuck ends in: a thread that hangs once nothing is in flight, or,
#: when time passes first, the transaction's deadline declaring a live node dead
STUCK = ("hangs", "alive, was declared dead")
#: (name, World keyword arguments, seeds): 950 seeds with every fault on
CONFIGS = [
    ("relay, 3 nodes", dict(manager="relay"), range(150)),
    ("central, 3 nodes", dict(manager="central"), range(150)),
    ("distributed, 2 shards", dict(manager="distributed", shards=2), range(150)),
    ("central, a death", dict(manager="central", deaths=1, nodes=4), range(150)),
    ("relay, release pages and a death", dict(release_pages=3, deaths=1), range(150)),
    ("central, bands, give-backs, 2 threads",
     dict(manager="central", bands=True, give_backs=True, threads_per_node=2, pages=8,
          ops_per_thread=16), range(100)),
    ("distributed, 3 shards, release pages", dict(manager="distributed", shards=3,
                                                  release_pages=2), range(100)),
]


#: seeds the faults once failed on, each with what it found (the simulator's own accounting of
#: what a death may lose, both times)
REGRESSIONS = [
    # a node killed just after its page send to an unreachable peer, before it sent the pages
    # home: what its agent had not sent yet died with it, unaccounted
    ("an unsent page home", 348, dict(manager="central", nodes=3, pages=2, threads_per_node=3,
                                      ops_per_thread=30, deaths=1)),
    # a dead node's Fetched taken after a gap (a message before it dropped): the replay that
    # would deliver it never comes
    ("a dead node's message after a gap", 302, dict(manager="relay", nodes=5,
                                                   threads_per_node=2, deaths=1)),
]


@pytest.fixture(autouse=True)
def _quiet_losses(caplog):
    caplog.set_level(logging.CRITICAL)  # the simulated losses log loudly, as they should


@pytest.mark.parametrize("name,kwargs,seeds", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_every_invariant_holds_with_faults_on_every_link(name, kwargs, seeds):
    faults = {"dropped": 0, "duplicated": 0, "swapped": 0, "resets": 0, "replayed": 0}
    agent_faults = {"eagain": 0, "enomem": 0, "exited": 0}
    if Manager(kwargs.get("manager", "relay")).direct:  # pages node to node
        agent_faults["unreachable"] = 0
    for seed in seeds:
        w = World(seed, faults=Faults.everywhere(RATE), **kwargs)
        w.run()
        for kind in faults:
            faults[kind] += w.links.counters[kind]
        for kind in agent_faults:
            agent_faults[kind] += w.agent_faults.counters[kind]
    # every kind of fault struck, and the sessions replayed what it cost
    assert all(faults.values()), faults
    assert all(agent_faults.values()), agent_faults


@pytest.mark.parametrize("name,seed,kwargs", REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_seeds_that_once_failed_keep_every_invariant(name, seed, kwargs):
    World(seed, faults=Faults.everywhere(RATE), **kwargs).run()


def _first_failure(seeds, **kwargs) -> str | None:
    for seed in seeds:
        try:
            World(seed, faults=Faults.everywhere(RATE), **kwargs).run()
        except SimulationFailure as exc:
            return str(exc)
    return None


class _HastyCore(core_node.NodeCore):
    """A broken writer: it uses a write granted while copies are invalidated at once, without
    waiting for the holders' acknowledgements."""

    def grant(self, msg, data, now):
        if not msg.acks:
            return super().grant(msg, data, now)
        self._remember_answered((msg.txn, msg.page))
        return self._install(msg, data, now) + [
            core_node.Send(p.Received(msg.txn, msg.page, msg.count, True))]


@pytest.mark.parametrize("manager", ["relay", "central"])
def test_a_writer_that_does_not_wait_for_the_acknowledgements_is_caught(monkeypatch, manager):
    monkeypatch.setattr(world, "NodeCore", _HastyCore)
    failure = _first_failure(range(50), manager=manager)
    assert failure is not None and ("owned by" in failure or "last write was" in failure), failure


def test_a_dead_holder_not_told_to_its_writer_is_caught(monkeypatch):
    real = PageDirectory.node_lost

    def forgetful(self, node):  # the directory forgets that the writer waits for the dead one
        for txn in self._txns.values():
            txn.unacked.discard(node)
        return real(self, node)

    monkeypatch.setattr(PageDirectory, "node_lost", forgetful)
    failure = _first_failure(range(100), manager="central", deaths=1, nodes=4)
    assert failure is not None and any(s in failure for s in STUCK), failure


def test_a_directory_that_does_not_forward_an_acknowledgement_is_caught(monkeypatch):
    real = PageDirectory.invalidated

    def dropping(self, node, txn_id, page, count):  # one that could not reach its writer
        txn = self._txns.get(txn_id)
        return [] if txn is not None and txn.acked else real(self, node, txn_id, page, count)

    monkeypatch.setattr(PageDirectory, "invalidated", dropping)
    failure = _first_failure(range(50), manager="relay")
    assert failure is not None and any(s in failure for s in STUCK), failure


def test_a_session_layer_that_never_replays_is_caught(monkeypatch):
    monkeypatch.setattr(ReliableLink, "_replay", lambda self, now: [])
    failure = _first_failure(range(50))
    assert failure is not None and any(s in failure for s in (*STUCK, "livelock")), failure


def test_a_delivery_table_with_two_fields_swapped_is_caught(monkeypatch):
    real = machine.page_handlers  # the shards' table: the directory state machine's

    def swapped(pages, page_size):
        table = real(pages, page_size)
        # an invalidation's page and count swapped: the directory waits on the wrong page
        table[p.Invalidated] = lambda n, m, d: pages.invalidated(n, m.txn, m.count, m.page)
        return table

    monkeypatch.setattr(machine, "page_handlers", swapped)
    assert _first_failure(range(50)) is not None


class _ForgetfulRunner(ActionRunner):
    """A broken agent: after a page send to a peer fails, its Fetched still says SENT."""

    @staticmethod
    def _send_home_instead(carrying, txn):
        pass


def test_a_runner_that_forgets_the_pages_of_a_failed_peer_send_is_caught(monkeypatch):
    monkeypatch.setattr(nodes, "ActionRunner", _ForgetfulRunner)
    failure = _first_failure(range(50), manager="central")
    assert failure is not None and any(s in failure for s in STUCK), failure


class _HastyKernelCalls(KernelCalls):
    """A broken agent: a write protection or a poison the kernel answered EAGAIN (events
    pending) or ENOMEM is taken for done."""

    def _retried(self, proc, call, what):
        err = call()
        return 0 if err in TRANSIENT else err


def test_a_kernel_call_that_failed_taken_for_done_is_caught(monkeypatch):
    monkeypatch.setattr(nodes, "KernelCalls", _HastyKernelCalls)
    assert _first_failure(range(50)) is not None


def test_an_inbox_that_drops_an_acquires_notices_is_caught(monkeypatch):
    real = Inbox._on_answer

    def forgetful(self, msg, data):  # the copies other nodes' releases changed are kept
        if type(msg) is p.SyncReply:
            msg = p.replace(msg, notices=[])
        return real(self, msg, data)

    monkeypatch.setattr(Inbox, "_on_answer", forgetful)
    failure = _first_failure(range(5), release_pages=3)
    assert failure is not None and "the last write" in failure, failure


def test_an_inbox_whose_check_of_a_peers_pages_is_off_by_one_is_caught(monkeypatch):
    def strict(self, msg, data):  # a page message naming the region's last page is refused
        deliver = self.expect_from_peer(msg)
        self.layout.check_page(msg.page + getattr(msg, "count", 1))
        deliver(msg, data)

    monkeypatch.setattr(Inbox, "from_peer", strict)
    failure = _first_failure(range(5), manager="central")
    assert failure is not None and "refused a message" in failure, failure


def test_a_real_failing_seed_replays_the_same_failure_from_the_command_line():
    run = [sys.executable, "-m", "dsm.sim", "--seed", "3", "--faults", str(RATE),
           "--bug", "stale-copy"]
    first = subprocess.run(run, capture_output=True, text=True, timeout=60)
    second = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert first.returncode == 1, first.stdout + first.stderr
    assert first.stdout == second.stdout and "seed 3: " in first.stdout


def test_a_heartbeat_after_a_jump_of_the_clock_stands_for_every_interval_it_skipped(monkeypatch):
    # a node waiting at a barrier says nothing but its heartbeats while the directory replays an
    # answer whose acknowledgement was lost; the clock jumps by the replay timer (ACK_TIMEOUT_S),
    # past every other heartbeat the agent sends, and four lost in a row once made a live node
    # silent for NODE_TIMEOUT_S (seed 123 of this configuration, before the shards joined
    # through their roles): the heartbeat after a jump is lost only if all it stands for are
    sent: list[int] = []
    send = World._send

    def recording(self, src, dst, msg, data, copies=1):
        if isinstance(msg, p.Heartbeat) and src in self.nodes:
            sent.append(copies)
        return send(self, src, dst, msg, data, copies)

    monkeypatch.setattr(World, "_send", recording)
    for seed in range(5):
        World(seed, release_pages=3, faults=Faults.everywhere(RATE)).run()
    assert max(sent) == HEARTBEATS_PER_JUMP == 2, sorted(set(sent))
    # one draw for the copies: lost with the chance that every one of them is
    links = SimLinks(random.Random(0), Faults(drop=RATE))
    links.rng = type("Draw", (), {"random": staticmethod(lambda: RATE ** 2 * 1.5)})()
    assert not links._put(deque(), None)
    assert links._put(deque(), None, copies=2)


def test_a_node_partitioned_for_a_short_outage_loses_nothing_and_is_not_declared_dead():
    # partitions alone, then with every other fault: each heals with its connections reset
    struck = 0
    for seed in range(12):
        for faults in (Faults(partition=PARTITION_RATE), Faults.everywhere(RATE)):
            w = World(seed, release_pages=2, deaths=0, faults=faults)
            w.run()
            struck += w.partitions.count
    assert struck >= 6, struck  # the partitions did strike


def test_a_partition_longer_than_the_cut_off_is_a_death_the_node_makes_itself(monkeypatch):
    # the partition reaches the real timers: past NODE_CUT_OFF_S the node's agent cuts itself
    # off (its workload stops, as a kill), its shards declare it dead once silent past
    # NODE_TIMEOUT_S, and what it held is lost loudly, never read wrong
    monkeypatch.setattr(partitions, "PARTITION_MIN_S", NODE_TIMEOUT_S + 1.0)
    monkeypatch.setattr(partitions, "PARTITION_MAX_S", NODE_TIMEOUT_S + 2.0)
    cut_off = 0
    for seed in range(12):
        w = World(seed, faults=Faults(partition=PARTITION_RATE))
        w.run()
        cut_off += any("cuts itself off" in step for step in w.schedule)
    assert cut_off >= 3, cut_off
