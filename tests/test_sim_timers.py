"""The simulator's liveness timers (``dsm.sim.timers``): the shards' own deadlines declare a
killed node dead once it has been silent past NODE_TIMEOUT_S, and a live node declared dead
fails the run."""

from __future__ import annotations

import logging

import pytest

from dsm.liveness import NODE_TIMEOUT_S
from dsm.sim.model import SimulationFailure
from dsm.sim.network import sim_identity
from dsm.sim.world import World

pytestmark = pytest.mark.timeout(60)

#: seeds searched for a run in which a node is killed (most of them kill one)
SEEDS = range(20)


@pytest.fixture(autouse=True)
def _quiet_losses(caplog):
    caplog.set_level(logging.CRITICAL)  # the simulated deaths log loudly, as they should


def test_a_killed_node_is_declared_dead_by_its_silence_past_the_deadline():
    for seed in SEEDS:
        world = World(seed, deaths=1)
        heard: dict[str, float] = {}
        real_heard = world.machines["directory"].heard

        def noting(identity: bytes, world=world) -> None:  # when a word last came from each node
            heard[identity.decode()] = world.clock
            real_heard(identity)

        world.machines["directory"].heard = noting
        declared: dict[str, float] = {}
        real_notice = world._notice_death

        def noticing(name: str, world=world) -> None:
            declared[name] = world.clock
            real_notice(name)

        world._notice_death = noticing
        world.run()
        dead = [n for n in world.nodes.values() if not n.alive]
        if not dead:
            continue
        name = dead[0].name
        why = world.machines["directory"].sessions.why_fenced(sim_identity(name))
        assert "silent for" in why or "unanswered" in why, why  # the machine's own deadlines
        if "silent for" in why:
            assert declared[name] - heard.get(sim_identity(name).decode(), 0.0) > NODE_TIMEOUT_S
        return
    pytest.fail(f"no node was killed in seeds {SEEDS}")


def test_a_live_node_declared_dead_fails_the_run():
    world = World(0, deaths=0)
    for _ in range(5):
        world.step()
    world.machines["directory"].declare_dead("n1", "a test's own doing")
    world.clock += 1.0  # the shards' and the nodes' timers are looked at
    with pytest.raises(SimulationFailure, match="n1, alive, was declared dead"):
        world.timers.run(idle=True)
