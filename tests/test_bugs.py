"""The bug switch (``dsm/bugs.py``): each named bug is caught, by the simulator's invariants and,
where the window is wide enough, by the litmus tests on a real cluster; with the switch off the
same schedules pass."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dsm import bugs
from dsm.sim.processes import KernelEvents
from dsm.sim.world import SimulationFailure, World

pytestmark = pytest.mark.timeout(120)

#: seeds each bug must be caught within, in the simulator
SEEDS = range(20)
#: what each bug breaks in the simulator, and the world that shows it
CAUGHT_BY = {
    bugs.STALE_COPY: ({}, "while held by"),
    bugs.EARLY_GRANT: ({}, "while held by"),
    bugs.IGNORE_NOTICES: ({"release_pages": 6}, "the last write (happens-before"),
    bugs.KEEP_REMOVED: ({"kernel_events": KernelEvents.everywhere(0.05)},
                        "with a hole after its Remove was told apart"),
    # the shards' own path for a death (dsm.directory.machine), which the simulator runs
    bugs.KEEP_DEAD_LOCKS: ({"release_pages": 6, "deaths": 1}, "with no message in flight"),
    # the shards' deadlines and the nodes' timers (dsm.sim.timers), on the clock a death lets run
    bugs.SHORT_TRANSACTIONS: ({"deaths": 1}, "alive, was declared dead"),
    bugs.SILENT_HEARTBEATS: ({"deaths": 1}, "with nothing lost or on its way"),
}


@pytest.fixture
def switch():
    yield bugs.switch_on
    bugs.switch_on(None)


def _first_failure(world_args: dict) -> tuple[int, str] | None:
    for seed in SEEDS:
        try:
            World(seed, **world_args).run()
        except SimulationFailure as exc:
            return seed, str(exc)
    return None


@pytest.mark.parametrize("bug", list(bugs.BUGS))
def test_each_bug_is_caught_by_the_simulator_and_absent_without_the_switch(bug, switch):
    world_args, complaint = CAUGHT_BY[bug]
    assert _first_failure(world_args) is None  # the same seeds pass without the bug
    switch(bug)
    caught = _first_failure(world_args)
    assert caught is not None, f"{bug} went unnoticed over seeds {SEEDS}"
    assert complaint in caught[1], caught


def test_the_stale_copy_bug_shows_forbidden_outcomes_on_a_real_cluster(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dsm", "litmus", "SB", "--warm", "--rounds",
                           "30", "--bug", "stale-copy"], capture_output=True, text=True,
                          timeout=100, cwd=tmp_path)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "FORBIDDEN" in done.stdout and "NOT sequentially consistent" in done.stdout
    assert "runs with the bug 'stale-copy' switched on, on purpose" in done.stderr


def test_the_bugs_are_listed_and_an_unknown_one_is_one_line():
    listed = subprocess.run([sys.executable, "-m", "dsm.sim", "--seed", "0", "--bug", "list"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(bugs.BUGS)
    unknown = subprocess.run([sys.executable, "-m", "dsm", "litmus", "--bug", "nope"],
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2
    assert unknown.stdout.strip() == ("dsm litmus: no bug named 'nope' (known: "
                                      f"{', '.join(bugs.BUGS)})")


def test_no_bug_is_on_unless_switched_on(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != bugs.BUG_ENV}
    out = subprocess.run([sys.executable, "-c", "from dsm import bugs; print(bugs.ACTIVE)"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.strip() == "None"
    # a name that is no bug switches nothing on, and says so
    env[bugs.BUG_ENV] = "typo"
    out = subprocess.run([sys.executable, "-m", "dsm", "trace", str(tmp_path / "none.trace")],
                         capture_output=True, text=True, timeout=60, env=env)
    assert "DSM_BUG='typo' names no bug" in out.stderr
