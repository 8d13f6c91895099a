"""The deterministic simulator under IVY's dynamic distributed manager (``--manager dynamic``):
the real dynamic node cores (dsm/core/dynamic.py) and the directory's side
(dsm/directory/pages/dynamic.py), invariants at every step (one owner per page, every held copy
current, every read the last write or a loud loss, nothing hangs), and the chains' length."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from dsm.sim.links import Faults
from dsm.sim.world import World
from tests.test_simulation import CONFIGS as SIMULATION_CONFIGS

pytestmark = pytest.mark.timeout(120)

#: a message's forwards along the probable owners: Li and Hudak bound the chains by the
#: number of nodes (a request forwarded once by each node, and once by the directory). Pages
#: given back can exceed it, rarely: a give-back that crosses a request sends it round once more
#: (seed 1107 of "bands of pages, given back": 6 hops on 4 nodes; docs/architecture.md)
def hops_bound(nodes: int) -> int:
    return nodes + 1


#: (name, World keyword arguments, seeds)
CONFIGS = [
    ("3 nodes", dict(nodes=3), range(0, 100)),
    ("5 nodes, 2 threads", dict(nodes=5, threads_per_node=2), range(0, 100)),
    ("3 nodes on 2 pages, 3 threads", dict(nodes=3, pages=2, threads_per_node=3,
                                           ops_per_thread=30), range(0, 50)),
    ("8 nodes, 2 threads", dict(nodes=8, pages=4, threads_per_node=2, ops_per_thread=10),
     range(0, 50)),
    ("pages given back now and then, 4 nodes, 2 threads",
     dict(nodes=4, pages=4, threads_per_node=2, give_backs=True), range(0, 100)),
    ("bands of pages, given back, 4 nodes", dict(nodes=4, pages=12, ops_per_thread=40,
                                                 bands=True, give_backs=True), range(0, 50)),
    # runs of pages (PageRequest.count) handed over untouched and served as read copies, on
    # lossy links, with a death
    ("bands, 2 threads, a death, lossy links",
     dict(nodes=4, pages=16, ops_per_thread=40, bands=True, threads_per_node=2, deaths=1,
          give_backs=True, faults=Faults.everywhere(0.05)), range(0, 40)),
    ("a death", dict(nodes=3, deaths=1), range(0, 100)),
    ("4 nodes, 2 deaths", dict(nodes=4, deaths=2), range(0, 100)),
    ("a death, pages given back", dict(nodes=3, deaths=1, give_backs=True), range(0, 100)),
    ("5 nodes, 2 threads, a death", dict(nodes=5, threads_per_node=2, deaths=1), range(0, 60)),
    ("everything at once", dict(nodes=3, threads_per_node=2, deaths=1, give_backs=True,
                                faults=Faults.everywhere(0.05)), range(0, 100)),
    ("lossy links", dict(nodes=4, threads_per_node=2, faults=Faults.everywhere(0.05)),
     range(0, 60)),
    ("lossy links, a death", dict(nodes=3, deaths=1, faults=Faults.everywhere(0.05)),
     range(0, 60)),
]


@pytest.fixture(autouse=True)
def _quiet_losses(caplog):
    caplog.set_level(logging.CRITICAL)  # the simulated losses log loudly, as they should


@pytest.mark.parametrize("name,kwargs,seeds", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_every_invariant_holds_on_every_seed(name, kwargs, seeds):
    nodes = kwargs.get("nodes", 3)
    for seed in seeds:
        w = World(seed, manager="dynamic", **kwargs)
        w.run()
        hops = w.directory.counters["dynamic_max_hops"]
        assert hops <= hops_bound(nodes), f"seed {seed}: a request went {hops} hops"


def test_ownership_relayed_to_a_node_that_died_is_not_lost():
    # seed 871: an owner served a write of a node that had died and, unable to reach it,
    # relayed ownership through the directory, which dropped it; the gather then declared the
    # page lost though the directory had held its newest contents
    World(871, threads_per_node=2, deaths=1, give_backs=True, faults=Faults.everywhere(0.05),
          manager="dynamic").run()


def test_the_schedules_forward_serve_give_back_and_gather():
    counters = {"dynamic_served": 0, "dynamic_forwards": 0, "dynamic_given_back": 0,
                "dynamic_gathers": 0, "pages_lost": 0}
    for seed in range(40):
        w = World(seed, nodes=3, deaths=1, give_backs=True, manager="dynamic")
        w.run()
        for name in counters:
            counters[name] += w.directory.counters[name]
    assert all(counters.values()), counters


#: the relay and central managers' configurations this suite runs under the dynamic manager
#: too: all but the largest (256 nodes, whose gathers after each death hear every node: over a
#: minute of CPU a seed; .ci/dynamic-check runs it)
SMALL_SIMULATION_CONFIGS = [c for c in SIMULATION_CONFIGS if c[1].get("nodes", 3) <= 8]


@pytest.mark.parametrize("name,kwargs,seeds", SMALL_SIMULATION_CONFIGS,
                         ids=[c[0] for c in SMALL_SIMULATION_CONFIGS])
def test_the_other_managers_configurations_hold_too(name, kwargs, seeds):
    # the simulator's configurations for the relay and central managers (tests/test_simulation.py:
    # up to 8 nodes and 3 deaths), a sixth of their seeds each (the suite's 15 minutes are
    # nearly spent; .ci/dynamic-check runs 500 seeds of the mix of everything)
    for seed in seeds[::6]:
        World(seed, manager="dynamic", **kwargs).run()


def test_the_command_line_runs_the_dynamic_manager():
    out = subprocess.run([sys.executable, "-m", "dsm.sim", "--seed", "3", "--manager", "dynamic",
                          "--deaths", "1", "--give-backs"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every invariant held" in out.stdout
