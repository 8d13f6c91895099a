"""The deterministic simulator over the real node cores and page directory: many seeded
schedules (message orders FIFO per pair, nothing more; node deaths), invariants at every step."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from dsm import protocol as p
from dsm.core import node as core_node
from dsm.sim import world
from dsm.sim.world import SimulationFailure, World

pytestmark = pytest.mark.timeout(120)

#: (name, World keyword arguments, seeds), run under each manager: 1,354 seeds in all
CONFIGS = [
    ("3 nodes", dict(nodes=3), range(0, 125)),
    ("5 nodes, 2 threads, a death", dict(nodes=5, threads_per_node=2, deaths=1), range(0, 125)),
    ("4 nodes on 3 pages, 2 deaths", dict(nodes=4, pages=3, deaths=2), range(0, 125)),
    ("8 nodes, 3 deaths", dict(nodes=8, pages=4, threads_per_node=2, ops_per_thread=10, deaths=3),
     range(0, 75)),
    ("3 nodes on 2 pages, 3 threads", dict(nodes=3, pages=2, threads_per_node=3, ops_per_thread=30,
                                           deaths=1), range(0, 50)),
    ("bands of pages read then written, 4 nodes",
     dict(nodes=4, pages=12, ops_per_thread=40, deaths=1, bands=True), range(0, 75)),
    ("pages given back now and then, 4 nodes, a death",
     dict(nodes=4, pages=4, threads_per_node=2, deaths=1, give_backs=True), range(0, 100)),
    # one seed (since the heartbeats, 11-15 s each): the suite's 15 minutes are nearly spent
    ("256 nodes", dict(nodes=256, pages=16, ops_per_thread=2, deaths=2), range(0, 1)),
]


@pytest.fixture(autouse=True)
def _quiet_losses(caplog):
    caplog.set_level(logging.CRITICAL)  # the simulated losses log loudly, as they should


#: configurations this large (their heartbeats alone take seconds a seed) run in .ci/slow-check
SLOW_NODES = 256


def _marked(configs: list) -> list:
    """``configs`` as parameters, the largest marked slow."""
    return [pytest.param(*c, id=c[0], marks=[pytest.mark.slow]
                         if c[1].get("nodes", 3) >= SLOW_NODES else []) for c in configs]


@pytest.mark.parametrize("manager", ["relay", "central"])
@pytest.mark.parametrize("name,kwargs,seeds", _marked(CONFIGS))
def test_every_invariant_holds_on_every_seed(name, kwargs, seeds, manager):
    for seed in seeds:
        World(seed, manager=manager, **kwargs).run()


def test_a_failing_seed_replays_exactly():
    a, b = World(42, nodes=4, deaths=1), World(42, nodes=4, deaths=1)
    a.run()
    b.run()
    assert a.schedule == b.schedule and len(a.schedule) > 20


class _ForgetfulCore(core_node.NodeCore):
    """A broken node: it acknowledges an invalidation but keeps its read copy."""

    def invalidate(self, msg, reachable=lambda addr: True):
        ack = core_node.p.Invalidated(msg.txn, msg.page, msg.count, self.node)
        # to the writer, as a real holder does (or to the directory: a discard)
        return [core_node.Send(ack, peer=(msg.to_node, msg.to_addr)) if msg.to_node
                else core_node.Send(ack)]


@pytest.mark.parametrize("manager", ["relay", "central"])
def test_the_simulator_catches_a_node_that_keeps_a_stale_copy(monkeypatch, manager):
    monkeypatch.setattr(world, "NodeCore", _ForgetfulCore)
    with pytest.raises(SimulationFailure, match="seed .*: ") as caught:
        for seed in range(200):
            World(seed, nodes=3, pages=2, ops_per_thread=20, manager=manager).run()
    report = str(caught.value)
    assert "last write was" in report or "owned by" in report, report
    assert "deliver Invalidate" in report  # the schedule that led there


class _LatePunchCore(core_node.NodeCore):
    """A broken node: it takes pages that leave it out of its memory only after sending them
    (so a local read in between sees its old copy while the new owner writes)."""

    def fetch(self, msg, reachable=lambda addr: True):
        out = super().fetch(msg, reachable)
        punches = [a for a in out if isinstance(a, core_node.Punch)]
        return ([a for a in out if not isinstance(a, core_node.Punch)]
                + [core_node.Punch(a.first, a.count) for a in punches])


@pytest.mark.parametrize("manager", ["relay", "central"])
def test_the_simulator_catches_a_node_that_punches_pages_after_sending_them(monkeypatch,
                                                                            manager):
    # the agent may be descheduled between its actions: the schedules explore that window
    monkeypatch.setattr(world, "NodeCore", _LatePunchCore)
    with pytest.raises(SimulationFailure, match="seed .*: ") as caught:
        for seed in range(400):
            World(seed, nodes=3, pages=2, ops_per_thread=20, manager=manager).run()
    report = str(caught.value)
    assert "last write was" in report and "keep_copy=False" in report, report


def test_replay_from_the_command_line():
    out = subprocess.run([sys.executable, "-m", "dsm.sim", "--seed", "7", "--nodes", "4",
                          "--deaths", "1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every invariant held" in out.stdout


@pytest.mark.parametrize("manager", ["relay", "central"])
def test_the_schedules_reach_migratory_grants_and_their_mispredictions(manager):
    grants = mispredictions = 0
    for seed in range(60):
        w = World(seed, nodes=4, pages=3, manager=manager)
        w.run()
        grants += w.directory.counters["migratory_grants"]
        mispredictions += w.directory.counters["migratory_mispredictions"]
    assert grants and mispredictions  # both paths are explored by the seeds above


#: the distributed manager: 3 shards of 2-page stripes (the model's pages are few)
SHARDED = [
    ("3 nodes on 6 pages", dict(nodes=3, pages=6), range(0, 80)),
    ("5 nodes, 2 threads, a death", dict(nodes=5, pages=8, threads_per_node=2, deaths=1),
     range(0, 80)),
    ("pages given back, 2 deaths", dict(nodes=4, pages=8, deaths=2, give_backs=True),
     range(0, 80)),
    ("bands across stripes", dict(nodes=4, pages=12, ops_per_thread=40, deaths=1, bands=True),
     range(0, 60)),
    ("256 nodes on 4 shards", dict(nodes=256, pages=16, ops_per_thread=2, deaths=2, shards=4),
     range(0, 1)),
    # the cores and shards with pages node to node, as the distributed manager sends them
    ("shards with pages node to node", dict(nodes=5, pages=8, threads_per_node=2, deaths=1,
                                            give_backs=True, direct=True), range(0, 80)),
]


@pytest.mark.parametrize("name,kwargs,seeds", _marked(SHARDED))
def test_every_invariant_holds_under_the_distributed_manager(name, kwargs, seeds):
    kwargs = {"shards": 3, **kwargs}
    spread = [0] * kwargs["shards"]
    for seed in seeds:
        w = World(seed, manager="distributed", **kwargs)
        w.run()
        for k, d in enumerate(w.directories.values()):
            spread[k] += d.counters["grants"]
    assert all(spread), f"a shard granted nothing: {spread}"  # the stripes reach every shard


# --- release consistency: data-race-free programs on release pages, checked for DRF-SC ----------
#: (name, World keyword arguments, seeds), under one directory and under 3 shards: 460 seeds
RELEASE = [
    ("3 nodes, every page release", dict(nodes=3, pages=6, release_pages=6), range(0, 60)),
    ("5 nodes, 2 threads, release and sequential pages",
     dict(nodes=5, pages=8, release_pages=5, threads_per_node=2), range(0, 40)),
    ("8 nodes on 3 release pages", dict(nodes=8, pages=6, release_pages=3, ops_per_thread=8),
     range(0, 30)),
    ("4 nodes, 2 threads, pages given back",
     dict(nodes=4, pages=6, release_pages=6, threads_per_node=2, give_backs=True), range(0, 40)),
    # a death: its unreleased writes may read as lost or as before, its locks pass on broken,
    # the barrier breaks (the programs end there)
    ("4 nodes, 2 threads, a death", dict(nodes=4, pages=6, release_pages=6, threads_per_node=2,
                                         deaths=1), range(0, 30)),
    # deaths and give-backs: a private page's holder writes it back while a fetch of it is out,
    # then dies (seed 154: its waiting reader must get the written-back copy, not a loss)
    ("4 nodes, 2 of them die, pages given back",
     dict(nodes=4, release_pages=2, deaths=2, give_backs=True), range(140, 170)),
]
#: the managers the release pages run under: one directory, or 3 shards (the release waits
#: for the other shards' DiffApplied)
RELEASE_MANAGERS = {"1 directory": dict(manager="relay"),
                    "3 shards": dict(manager="distributed", shards=3)}
#: and under the dynamic manager, whose nodes ask the release pages' home for them as their
#: probable owner (the directory answers with a Grant) and sync through it as under the others
RELEASE_MANAGERS_WITH_DYNAMIC = {**RELEASE_MANAGERS, "dynamic": dict(manager="dynamic")}


@pytest.mark.parametrize("managed", list(RELEASE_MANAGERS_WITH_DYNAMIC))
@pytest.mark.parametrize("name,kwargs,seeds", RELEASE, ids=[c[0] for c in RELEASE])
def test_data_race_free_programs_see_sequential_consistency_on_release_pages(name, kwargs, seeds,
                                                                             managed):
    counters = {"twins": 0, "diffs": 0, "notices_invalidated": 0}
    for seed in seeds:
        w = World(seed, **RELEASE_MANAGERS_WITH_DYNAMIC[managed], **kwargs)
        w.run()
        for n in w.nodes.values():
            for key in counters:
                counters[key] += n.core.stats.counters[key]
    assert all(counters.values()), counters  # twins, diffs and notices are all exercised


class _DeafCore(core_node.NodeCore):
    """A broken node: its acquires ignore the write notices (it keeps its stale copies)."""

    def acquire_sync(self, notices, guarded=(), data=None, req=None):
        return []  # (nor does it install what a guarded lock's grant carries)


@pytest.mark.parametrize("managed", list(RELEASE_MANAGERS))
def test_the_simulator_catches_a_node_that_ignores_write_notices(monkeypatch, managed):
    monkeypatch.setattr(world, "NodeCore", _DeafCore)
    with pytest.raises(SimulationFailure, match="seed .*: ") as caught:
        for seed in range(100):
            World(seed, nodes=3, pages=6, release_pages=6, **RELEASE_MANAGERS[managed]).run()
    report = str(caught.value)
    assert "last write (happens-before: a DRF program) was" in report, report
    assert "deliver SyncReply" in report  # the schedule that led there


class _HastyCore(core_node.NodeCore):
    """A broken node: its releases go at once, without waiting for the other shards to apply
    its diffs (whoever acquires next may fetch a home copy without them)."""

    def release_sync(self, msg):
        out = self.release.release(msg)
        held = self.release._held
        while held:
            out.append(core_node.Send(held.popleft()[0]))
        self.release._unacked.clear()
        return out


def test_the_simulator_catches_a_release_that_does_not_wait_for_the_other_shards(monkeypatch):
    monkeypatch.setattr(world, "NodeCore", _HastyCore)
    with pytest.raises(SimulationFailure, match="seed .*: .*last write"):
        for seed in range(300):
            World(seed, nodes=4, pages=8, release_pages=8, threads_per_node=2,
                  **RELEASE_MANAGERS["3 shards"]).run()


def test_release_pages_replay_from_the_command_line():
    out = subprocess.run([sys.executable, "-m", "dsm.sim", "--seed", "5", "--nodes", "4",
                          "--pages", "8", "--threads", "2", "--release", "--manager",
                          "distributed", "--shards", "3"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every invariant held" in out.stdout


@pytest.mark.parametrize("manager", ["relay", "central"])
def test_the_schedules_reach_runs_of_untouched_pages(manager):
    runs = 0
    for seed in range(15):
        w = World(seed, nodes=4, pages=12, ops_per_thread=40, deaths=1, bands=True,
                  manager=manager)
        w.run()
        runs += w.directory.counters["untouched_runs"]
    assert runs  # bands written before they are read: first touches in order, granted in runs


def test_the_schedules_reach_read_runs_sent_with_and_without_a_home_copy(monkeypatch):
    """A read copy sent straight to its reader goes home too only for a short run
    (``NodeCore.home_copy_most_pages``, low in the model): the invariants are checked both
    ways, a home copy current and one whose read copies keep the pages."""
    fetch = core_node.NodeCore.fetch
    sent = {p.Payload.DATA: 0, p.Payload.NONE: 0}

    def counted(self, msg, *args, **kwargs):
        out = fetch(self, msg, *args, **kwargs)
        for action in out:
            m = getattr(action, "message", None)
            if type(m) is p.Fetched and m.sent and msg.keep_copy:
                sent[m.payload] += 1
        return out

    monkeypatch.setattr(core_node.NodeCore, "fetch", counted)
    for seed in range(15):
        World(seed, nodes=4, pages=12, ops_per_thread=40, deaths=1, bands=True,
              manager="central").run()
    assert sent[p.Payload.DATA] and sent[p.Payload.NONE], sent


# --- the shards are the directory state machine (dsm.directory.machine) --------------------------
def test_a_dead_nodes_late_message_reaches_its_shard_and_is_fenced_there():
    """The shards run the processes' own machine: a message the dead node sent before the death
    was noticed arrives after, and the machine's own check (no session) fences it."""
    from dsm import protocol as p
    from dsm.directory.machine import Directory
    from dsm.sim.network import DIRECTORY, sim_identity

    w = World(0, nodes=2, pages=2)
    shard = w.machines[DIRECTORY]
    assert isinstance(shard, Directory) and shard.pages is w.directory
    sent: list[tuple[bytes, p.Message]] = []
    forward = shard.transport.send
    shard.transport.send = lambda identity, msg, page=None: (  # type: ignore[method-assign]
        sent.append((identity, msg)) or forward(identity, msg, page))
    w._send("n0", DIRECTORY, p.Acquire(1, 1, True, False), None)  # on its way as n0 dies
    w.nodes["n0"].alive = False
    w.unnoticed_dead.append("n0")
    shard.declare_dead("n0", "silent past its deadline")  # as its deadline does
    w.timers.run(idle=True)  # which the world notices
    assert shard.sessions.get("n0") is None and "n0" not in w.unnoticed_dead
    assert [type(m) for _, m in sent] == [p.Fenced]  # the death's own word, if it listens
    sent.clear()
    w._deliver(("n0", DIRECTORY))
    assert [(i, type(m)) for i, m in sent] == [(sim_identity("n0"), p.Fenced)], sent
    assert w.directory.peek(1).owner is None and not w.directory.peek(1).busy
