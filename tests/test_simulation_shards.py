"""The distributed manager's shards under simulation run the processes' own roles
(``dsm/directory/shard/``: shard 0 the ``Coordinator``, the others ``Member``s), joined with a
ShardHello and talking on the simulated network with every fault (``dsm/sim/shards.py``): a
death goes from the shard that declares it through the coordinator to every shard, and the
nodes' lost-page questions are answered by the coordinator's gather. A member that does not
pass a NodeDead on to its machine, or a coordinator whose gather answers before every part
came, is caught within a few seeds."""

from __future__ import annotations

import logging

import pytest

from dsm import protocol as p
from dsm.directory.shard import Coordinator, Member
from dsm.sim.links import Faults
from dsm.sim.world import SimulationFailure, World

pytestmark = pytest.mark.timeout(120)

#: every kind of fault at this rate per message (a reset a tenth as often, per step)
RATE = 0.15
#: a distributed manager of two shards whose nodes may die
SHARDED = dict(manager="distributed", shards=2, deaths=1, nodes=4)
#: how many seeds a mutant gets to be caught in
SEEDS = range(20)


@pytest.fixture(autouse=True)
def _quiet_losses(caplog):
    caplog.set_level(logging.CRITICAL)  # the simulated losses log loudly, as they should


def _first_failure(faults: Faults, **kwargs) -> str | None:
    for seed in SEEDS:
        try:
            World(seed, faults=faults, **kwargs).run()
        except SimulationFailure as exc:
            return str(exc)
    return None


def test_the_shards_are_the_real_roles_joined_and_talking_through_the_network():
    told = answered = 0
    for seed in range(8):  # (the lost-page questions come at random: none in some seeds)
        w = World(seed, faults=Faults.everywhere(RATE), **SHARDED)
        roles = [m.role for m in w.machines.values()]
        assert isinstance(roles[0], Coordinator) and roles[0].ready
        assert isinstance(roles[1], Member) and roles[1].index == 1
        assert roles[1].welcome.epoch == w.machines["directory0"].sessions.epoch
        w.run()
        told += sum(line.startswith("deliver NodeDead") for line in w.schedule)
        answered += w.lost_queries.answered_count
    assert told and answered  # deaths and lost-page questions went through the roles


def _deaf(self: Member, msg: p.NodeDead) -> None:
    self._admitted.pop(msg.node, None)  # a member that forgets to end the node's session here


@pytest.mark.parametrize("rate", [0.0, RATE], ids=["no faults", "faults"])
def test_a_member_that_does_not_pass_a_death_on_is_caught(monkeypatch, rate):
    monkeypatch.setattr(Member, "_on_node_dead", _deaf)
    failure = _first_failure(Faults.everywhere(rate), **SHARDED)
    assert failure is not None and "which another shard declared dead" in failure, failure


def test_a_coordinator_gather_that_answers_before_every_part_came_is_caught(monkeypatch):
    real = Coordinator._ask_all

    def hasty(self, make, done, failed):  # asks every shard, but answers with its own part
        real(self, make, lambda parts: None, failed)
        done({})

    monkeypatch.setattr(Coordinator, "_ask_all", hasty)
    # two deaths on four pages, half of them the member's: lost pages there, soon
    failure = _first_failure(Faults.everywhere(RATE), **{**SHARDED, "pages": 4, "deaths": 2,
                                                          "nodes": 5})
    assert failure is not None and "were lost at their shards" in failure, failure


#: seeds on which the coordinator once stopped the whole manager: the answer to a shard's
#: heartbeat could not be sent (its connection was down: the faults dropped it, which the ROUTER
#: reports as EHOSTUNREACH), and the coordinator took the shard for gone (``test_resets`` saw it
#: with real resets)
HEARTBEAT_ANSWER_REGRESSIONS = (2, 3)


@pytest.mark.parametrize("seed", HEARTBEAT_ANSWER_REGRESSIONS)
def test_a_heartbeat_answer_a_shard_could_not_take_stops_nothing(seed):
    World(seed, faults=Faults.everywhere(RATE), manager="distributed", shards=2, deaths=1,
          nodes=4).run()


def test_a_coordinator_that_takes_a_lost_heartbeat_answer_for_a_shard_gone_is_caught(monkeypatch):
    def strict(self, peer, msg):  # the coordinator as it was: any send it is told failed is fatal
        if not self.directory.send_to(peer.identity, msg):
            self.directory.fail(f"shard {peer.index} could not be sent a {type(msg).__name__}", 3)

    monkeypatch.setattr(Coordinator, "_send", strict)
    failure = _first_failure(Faults.everywhere(RATE), **SHARDED)
    assert failure is not None and "could not be sent a Heartbeat" in failure, failure
