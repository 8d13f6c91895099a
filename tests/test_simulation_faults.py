"""The simulator with the real session layer on every link, over channels that drop, duplicate,
swap and reset (``dsm/sim/links.py``): seeds across managers, shards, deaths and release pages
keep every invariant; a session layer that does not replay, or a delivery table with a swapped
field, is caught; a failing seed (a real one, with a bug switched on) replays exactly."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from dsm import protocol as p
from dsm.reliability import ReliableLink
from dsm.sim import world
from dsm.sim.links import Faults
from dsm.sim.world import SimulationFailure, World

pytestmark = pytest.mark.timeout(120)

#: every kind of fault at this rate per message (a reset a tenth as often, per step)
RATE = 0.15
#: (name, World keyword arguments, seeds): 1,100 seeds with every fault on
CONFIGS = [
    ("relay, 3 nodes", dict(manager="relay"), range(200)),
    ("central, 3 nodes", dict(manager="central"), range(200)),
    ("distributed, 2 shards", dict(manager="distributed", shards=2), range(200)),
    ("central, a death", dict(manager="central", deaths=1, nodes=4), range(150)),
    ("relay, release pages and a death", dict(release_pages=3, deaths=1), range(150)),
    ("central, bands, give-backs, 2 threads",
     dict(manager="central", bands=True, give_backs=True, threads_per_node=2, pages=8,
          ops_per_thread=16), range(100)),
    ("distributed, 3 shards, release pages", dict(manager="distributed", shards=3,
                                                  release_pages=2), range(100)),
]


@pytest.fixture(autouse=True)
def _quiet_losses(caplog):
    caplog.set_level(logging.CRITICAL)  # the simulated losses log loudly, as they should


@pytest.mark.parametrize("name,kwargs,seeds", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_every_invariant_holds_with_faults_on_every_link(name, kwargs, seeds):
    faults = {"dropped": 0, "duplicated": 0, "swapped": 0, "resets": 0, "replayed": 0}
    for seed in seeds:
        w = World(seed, faults=Faults.everywhere(RATE), **kwargs)
        w.run()
        for kind in faults:
            faults[kind] += w.links.counters[kind]
    # every kind of fault struck, and the sessions replayed what it cost
    assert all(faults.values()), faults


def _first_failure(seeds, **kwargs) -> str | None:
    for seed in seeds:
        try:
            World(seed, faults=Faults.everywhere(RATE), **kwargs).run()
        except SimulationFailure as exc:
            return str(exc)
    return None


def test_a_session_layer_that_never_replays_is_caught(monkeypatch):
    monkeypatch.setattr(ReliableLink, "_replay", lambda self, now: [])
    failure = _first_failure(range(50))
    assert failure is not None and ("hangs" in failure or "livelock" in failure), failure


def test_a_delivery_table_with_two_fields_swapped_is_caught(monkeypatch):
    real = world.page_handlers

    def swapped(pages, page_size):
        table = real(pages, page_size)
        # an invalidation's page and count swapped: the directory waits on the wrong page
        table[p.Invalidated] = lambda n, m, d: pages.invalidated(n, m.txn, m.count, m.page)
        return table

    monkeypatch.setattr(world, "page_handlers", swapped)
    assert _first_failure(range(50)) is not None


def test_a_real_failing_seed_replays_the_same_failure_from_the_command_line():
    run = [sys.executable, "-m", "dsm.sim", "--seed", "3", "--faults", str(RATE),
           "--bug", "stale-copy"]
    first = subprocess.run(run, capture_output=True, text=True, timeout=60)
    second = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert first.returncode == 1, first.stdout + first.stderr
    assert first.stdout == second.stdout and "seed 3: " in first.stdout
