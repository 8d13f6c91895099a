"""The exhaustive exploration of small scopes (``dsm/sim/explore.py``, ``python -m dsm.sim
--exhaustive``): every schedule of the real world, states deduplicated by fingerprint; a bug
switched on is found with a shortest schedule that replays to the same failure; a failing
random seed replays the same failure and the same schedule tail from the command line."""

from __future__ import annotations

import dataclasses
import logging
import shlex
import subprocess
import sys

import pytest

from dsm import bugs
from dsm.sim.explore import Replay, Schedule, Scope, explore, next_plan, replay
from dsm.sim.fingerprint import fingerprint
from dsm.sim.world import STEP_S
from dsm.sim import world
from dsm.sim.world import SimulationFailure, World

pytestmark = pytest.mark.timeout(120)

#: fewer distinct states than this would mean the exploration hardly branched
MIN_STATES = 1000
#: the central manager's small scope is explored to this many steps in the suite (every
#: schedule of the whole scope is .ci/explore's: well over 100,000 states)
CENTRAL_DEPTH = 14
#: the relay manager's, to this many (about 5,900 states, 15 s here); its whole scope, about
#: 23,000 states and a minute, is .ci/explore-check's (acknowledgements that overtake their grant,
#: and the writer's confirmation, tripled it from 7,138: too long for the suite's budget)
RELAY_DEPTH = 24
#: the scopes with a lost message or a reset allowed are explored to this many steps here
FAULT_DEPTH = 6
#: the steps explored by one process and by two workers, to compare them
WORKERS_DEPTH = 12
#: the random seeds searched for one that fails with a bug on
SEEDS = range(20)


@pytest.fixture(autouse=True)
def _quiet_losses(caplog):
    caplog.set_level(logging.CRITICAL)  # the simulated losses log loudly, as they should


@pytest.fixture
def switch():
    yield bugs.switch_on
    bugs.switch_on(None)


def test_every_short_schedule_of_the_small_scope_holds_under_the_relay_manager():
    found = explore(Scope(manager="relay", faults=0), max_depth=RELAY_DEPTH)
    assert found.violation is None and found.max_depth == RELAY_DEPTH
    assert found.states >= MIN_STATES, found
    assert found.transitions > found.states  # states were reached along several schedules


def test_every_short_schedule_of_the_small_scope_holds_under_the_central_manager():
    found = explore(Scope(manager="central", faults=0), max_depth=CENTRAL_DEPTH)
    assert found.violation is None and found.max_depth == CENTRAL_DEPTH
    assert found.states >= MIN_STATES, found


@pytest.mark.parametrize("manager", ["relay", "central"])
def test_every_short_schedule_with_a_lost_message_or_a_reset_holds(manager):
    with_fault = explore(Scope(manager=manager, faults=1), max_depth=FAULT_DEPTH)
    without = explore(Scope(manager=manager, faults=0), max_depth=FAULT_DEPTH)
    assert with_fault.violation is None and with_fault.max_depth == FAULT_DEPTH
    # where the one fault strikes is enumerated: it multiplies the states
    assert with_fault.states > 10 * without.states, (with_fault, without)


#: one node, so that the whole scope with a fault allowed is a few hundred states every way
TINY_FAULT_SCOPE = Scope(nodes=1, pages=1, ops_per_thread=2, faults=1)


def test_the_resend_timer_reduction_merges_states_and_keeps_every_outcome():
    reduced = explore(TINY_FAULT_SCOPE)
    full = explore(dataclasses.replace(TINY_FAULT_SCOPE, reduction=False))
    assert TINY_FAULT_SCOPE.reduction  # (the explorer's default)
    assert not reduced.incomplete and not full.incomplete
    assert reduced.violation is None and full.violation is None
    assert reduced.states < full.states, (reduced, full)  # it merged states
    assert reduced.outcomes == full.outcomes and reduced.outcomes, (reduced, full)


def _keys(run: Replay) -> tuple[bytes, bytes]:
    """A state's fingerprint with every resend timer, and with the reduction's."""
    full = fingerprint(run.world, STEP_S, run.faults.left, run.faulted, faults_left=None)
    return full, run.fingerprint()


def _steps_from(scope: Scope, schedule: Schedule):
    """Each next step from the state ``schedule`` reaches: (its schedule, the replay after it),
    or a SimulationFailure."""
    plan: tuple[int, ...] | None = ()
    while plan is not None:
        run = Replay(scope)
        run.follow(schedule)
        rests = not run.step(plan)
        yield schedule + (run.taken,), run, rests
        plan = next_plan(run.draws.made)


def test_states_merged_by_their_fingerprints_have_the_same_next_states():
    # the whole reachable graph of a one-node scope with a fault allowed, each state by its
    # fingerprint with every timer (the full one) and by the reduction's; wherever either
    # merges two states (the full one: reached along two schedules, with the clock at other
    # times; the reduction: besides, with other resend timers), their next steps reach the same
    # merged states: a bisimulation, so that exploring one of them explores both
    scope = TINY_FAULT_SCOPE
    nexts: dict[Schedule, list[tuple[bytes, bytes]]] = {}

    def next_keys(schedule: Schedule) -> list[tuple[bytes, bytes]]:
        if schedule not in nexts:
            nexts[schedule] = [_keys(run) for _, run, _ in _steps_from(scope, schedule)]
        return nexts[schedule]

    first = Replay(scope)
    full_key, reduced_key = _keys(first)
    by_full: dict[bytes, list[Schedule]] = {full_key: [()]}
    by_reduced: dict[bytes, dict[bytes, Schedule]] = {reduced_key: {full_key: ()}}
    level = [()]
    while level:
        following = []
        for schedule in level:
            for child, run, rests in _steps_from(scope, schedule):
                full_key, reduced_key = _keys(run)
                if rests or run.beyond_bound:
                    continue
                if full_key not in by_full:
                    following.append(child)
                by_full.setdefault(full_key, []).append(child)
                by_reduced.setdefault(reduced_key, {}).setdefault(full_key, child)
        level = following
    full_classes = [schedules for schedules in by_full.values() if len(schedules) > 1]
    reduced_classes = [list(states.values()) for states in by_reduced.values()
                       if len(states) > 1]
    assert full_classes and reduced_classes, "no state of this scope was merged"
    for which, classes in (("full", full_classes), ("reduced", reduced_classes)):
        keep = 0 if which == "full" else 1
        for schedules in classes:
            following = {frozenset(keys[keep] for keys in next_keys(s)) for s in schedules}
            assert len(following) == 1, f"states merged by the {which} fingerprint part " \
                                        f"ways: {schedules}"


@pytest.mark.parametrize("bug,manager", [(bugs.EARLY_GRANT, "relay"), (None, "relay")])
def test_two_workers_explore_what_one_process_does(bug, manager, switch):
    switch(bug)
    scope = Scope(manager=manager, faults=0)
    one = explore(scope, max_depth=WORKERS_DEPTH)
    two = explore(scope, max_depth=WORKERS_DEPTH, workers=2)
    if bug is None:
        assert (one.levels, one.transitions, one.cut) == (two.levels, two.transitions, two.cut)
        return
    # a violation at the same depth (each worker stops at its first: the depth's counts differ,
    # and which of the depth's violations comes first may too)
    assert one.violation is not None and two.violation is not None
    assert one.levels[:-1] == two.levels[:-1]
    assert one.violation.depth == two.violation.depth
    assert replay(scope, two.violation.schedule)[1] == two.violation.message


@pytest.mark.parametrize("bug,manager", [(bugs.EARLY_GRANT, "relay"),
                                         (bugs.STALE_COPY, "central")])
def test_a_bug_is_found_with_a_shortest_schedule_that_replays(bug, manager, switch):
    switch(bug)
    scope = Scope(manager=manager, faults=0)
    found = explore(scope)
    v = found.violation
    assert v is not None and "while held by" in v.message, found
    # breadth first: found at its level, and nothing shorter breaks an invariant
    assert v.depth == found.max_depth == len(v.steps)
    shorter = explore(scope, max_depth=v.depth - 1)
    assert shorter.violation is None and shorter.incomplete
    steps, failure = replay(scope, v.schedule)
    assert failure == v.message and steps == v.steps


def test_a_run_longer_than_the_livelock_limit_is_a_violation(monkeypatch):
    # a limit of a step per operation: no run of the scope comes to rest within it
    monkeypatch.setattr(world, "MAX_STEPS_PER_OP", 1)
    scope = Scope(manager="relay", faults=0)
    found = explore(scope)
    v = found.violation
    limit = scope.nodes * scope.ops_per_thread
    assert v is not None and v.message == f"no quiescence after {limit} steps (a livelock?)"
    assert v.depth == limit == len(v.steps)


def test_the_command_line_prints_a_violation_and_its_replay_fails_the_same_way():
    run = [sys.executable, "-m", "dsm.sim", "--exhaustive", "--faults-allowed", "0",
           "--bug", bugs.EARLY_GRANT]
    out = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("every schedule of 2 nodes, 2 pages, 2 operations per thread")
    violation = next(line for line in lines if line.startswith("VIOLATION after "))
    message = violation.split("): ", 1)[1]
    command = next(line for line in lines if line.startswith("replay: ")).split(": ", 1)[1]
    again = subprocess.run([sys.executable, *shlex.split(command)[1:]], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 1 and again.stdout.splitlines()[-1] == message, again.stdout


def _failing_seed(bug: str) -> int:
    bugs.switch_on(bug)
    try:
        for seed in SEEDS:
            try:
                World(seed).run()
            except SimulationFailure:
                return seed
    finally:
        bugs.switch_on(None)
    raise AssertionError(f"{bug} failed no seed of {SEEDS}")


def test_a_failing_random_seed_replays_the_same_failure_and_schedule_tail():
    seed = _failing_seed(bugs.EARLY_GRANT)
    run = [sys.executable, "-m", "dsm.sim", "--seed", str(seed), "--bug", bugs.EARLY_GRANT]
    first = subprocess.run(run, capture_output=True, text=True, timeout=60)
    second = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert first.returncode == second.returncode == 1, first.stdout + first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith(f"seed {seed}: ") and "while held by" in first.stdout
    assert "\nlast 60 steps of " in first.stdout  # the schedule's tail, the same both times
