"""The register linearizability checker (tests/linearizability.py) on hand-made histories, on
random tiny histories against a brute-force checker, and on long generated histories."""

import itertools
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.linearizability import (
    INITIAL_VALUE, CheckerGaveUp, Op, check_history, check_location,
)

pytestmark = pytest.mark.timeout(60)

#: tiny random histories: few enough ops that all permutations can be tried
MAX_TINY_OPS = 6
TINY_TIMES = 12
TINY_DURATION = 5
TINY_VALUES = 3
TINY_PROCESSES = 3
HYPOTHESIS_EXAMPLES = 400
#: long generated histories: the checker must handle this many ops of one location quickly
LONG_OPS = 4000
LONG_PROCESSES = 6
LONG_CHECK_BUDGET_S = 10.0


def w(value, invoke, response, process=0):
    return Op("w", value, invoke, response, process)


def r(value, invoke, response, process=1):
    return Op("r", value, invoke, response, process)


# --- linearizable histories ----------------------------------------------------------------------

def test_an_empty_history_and_a_read_of_the_initial_value_are_linearizable():
    assert check_location([]) is None
    assert check_location([r(INITIAL_VALUE, 0, 1)]) is None


def test_sequential_write_then_read_is_linearizable():
    assert check_location([w(1, 0, 1), r(1, 2, 3)]) is None


@pytest.mark.parametrize("first_read, second_read", [(1, 2), (2, 1)])
def test_overlapping_writes_may_be_read_in_either_order(first_read, second_read):
    # both writes overlap each other, and the first read; the second read comes after both
    # writes, so whichever value it sees must be the last write in the order the first read
    # revealed; a single later read sees the write that was ordered last
    history = [w(1, 0, 10, process=0), w(2, 0, 10, process=1),
               r(first_read, 5, 6, process=2), r(second_read, 11, 12, process=2)]
    assert check_location(history) is None


@pytest.mark.parametrize("seen", [INITIAL_VALUE, 1])
def test_a_read_concurrent_with_a_write_may_see_the_old_or_the_new_value(seen):
    assert check_location([w(1, 0, 10), r(seen, 5, 15)]) is None


def test_operations_at_the_same_instant_overlap():
    # the read is invoked when the write responds: the clock cannot order them
    assert check_location([w(1, 0, 5), r(INITIAL_VALUE, 5, 6)]) is None


# --- non-linearizable histories ------------------------------------------------------------------

def test_a_stale_read_after_a_newer_write_completed_is_caught():
    history = [w(1, 0, 10), w(2, 20, 30), r(1, 40, 50, process=1)]
    problem = check_location(history, location="x")
    assert problem is not None
    assert "'x'" in problem
    # the failing window is the read alone, starting from the value 2 the second write left
    assert "1 ops" in problem and "p1 r->1 [40, 50]" in problem
    assert "2  (from p0 w:=2 [20, 30])" in problem


def test_two_sequential_reads_seeing_new_then_old_are_caught():
    history = [w(1, 0, 100), r(1, 10, 20, process=1), r(INITIAL_VALUE, 30, 40, process=1)]
    problem = check_location(history)
    assert problem is not None
    assert "p1 r->1 [10, 20]" in problem and "p1 r->0 [30, 40]" in problem


def test_a_read_of_a_value_never_written_is_caught():
    problem = check_location([w(1, 0, 10), r(7, 5, 15)])
    assert problem is not None and "r->7" in problem


def test_a_lost_write_shows_in_a_final_read():
    # the write completed, yet a read long after it sees the initial value
    assert check_location([w(5, 0, 1), r(INITIAL_VALUE, 100, 101)]) is not None


def test_check_history_checks_each_location_alone_and_names_the_failing_one():
    good = [w(1, 0, 10), r(1, 20, 30)]
    bad = [w(1, 0, 10), r(INITIAL_VALUE, 20, 30)]
    assert check_history({"a": good, "b": good}) is None
    problem = check_history({"a": good, "b": bad})
    assert problem is not None and "'b'" in problem and "'a'" not in problem


def test_the_failing_window_is_the_small_one_not_the_whole_history():
    # a long healthy history, then one stale read: the explanation points at that read only
    history, t = [], 0
    for value in range(1, 200):
        history += [w(value, t, t + 1), r(value, t + 2, t + 3)]
        t += 10
    history.append(r(1, t, t + 1))
    problem = check_location(history)
    assert problem is not None
    assert "window 398" in problem and f"[{t}, {t + 1}]" in problem


def test_malformed_operations_are_refused():
    with pytest.raises(ValueError):
        check_location([Op("x", 1, 0, 1, 0)])
    with pytest.raises(ValueError):
        check_location([w(1, 5, 4)])


def test_the_search_gives_up_loudly_past_its_state_budget():
    # many overlapping writes and a read nobody wrote: every order must be tried
    history = [w(v, 0, 100, process=v) for v in range(1, 12)] + [r(99, 0, 100, process=0)]
    with pytest.raises(CheckerGaveUp):
        check_location(history, max_states=1000)


# --- against a brute-force checker ---------------------------------------------------------------

def brute_force_linearizable(ops) -> bool:
    """Try every order: it must respect real time (a responded before b was invoked => a first)
    and the register's semantics."""
    for order in itertools.permutations(ops):
        position = {id(op): i for i, op in enumerate(order)}
        if any(a.response < b.invoke and position[id(a)] > position[id(b)]
               for a in ops for b in ops):
            continue
        value, legal = INITIAL_VALUE, True
        for op in order:
            if op.kind == "w":
                value = op.value
            elif op.value != value:
                legal = False
                break
        if legal:
            return True
    return False


@st.composite
def tiny_histories(draw):
    n = draw(st.integers(0, MAX_TINY_OPS))
    ops = []
    for _ in range(n):
        invoke = draw(st.integers(0, TINY_TIMES))
        response = invoke + draw(st.integers(0, TINY_DURATION))
        kind = draw(st.sampled_from("rw"))
        value = draw(st.integers(0 if kind == "r" else 1, TINY_VALUES - 1))
        ops.append(Op(kind, value, invoke, response, draw(st.integers(0, TINY_PROCESSES - 1))))
    return ops


@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None)
@given(tiny_histories())
def test_the_checker_agrees_with_brute_force_on_tiny_histories(ops):
    assert (check_location(ops) is None) == brute_force_linearizable(ops), ops


# --- long histories ------------------------------------------------------------------------------

def atomic_register_history(n_ops, n_processes, seed):
    """A history of a correct register: each op takes effect at a random instant inside its
    interval, in the order of those instants; processes issue their ops one after another."""
    rng = random.Random(seed)
    pending = []  # (effect time, process, kind, value, invoke, response)
    clock = [0] * n_processes
    next_value = 1
    for _ in range(n_ops):
        p = rng.randrange(n_processes)
        invoke = clock[p] + rng.randrange(1, 5)
        response = invoke + rng.randrange(1, 40)  # long ops: many overlap
        effect = rng.uniform(invoke, response)
        clock[p] = response
        if rng.random() < 0.5:
            pending.append((effect, p, "w", next_value, invoke, response))
            next_value += 1
        else:
            pending.append((effect, p, "r", None, invoke, response))
    ops, value = [], INITIAL_VALUE
    for effect, p, kind, v, invoke, response in sorted(pending):
        if kind == "w":
            value = v
        ops.append(Op(kind, value if kind == "r" else v, invoke, response, p))
    return ops


def test_a_long_correct_history_is_accepted_quickly():
    ops = atomic_register_history(LONG_OPS, LONG_PROCESSES, seed=1)
    start = time.monotonic()
    assert check_location(ops) is None
    assert time.monotonic() - start < LONG_CHECK_BUDGET_S


@pytest.mark.parametrize("where", ["middle", "end"])
def test_one_stale_read_in_a_long_history_is_found_quickly(where):
    ops = atomic_register_history(LONG_OPS, LONG_PROCESSES, seed=2)
    by_invoke = sorted(ops, key=lambda op: op.invoke)
    first = next(op.value for op in by_invoke if op.kind == "w")
    # a read of the first value written, long after newer writes completed
    at = by_invoke[len(ops) // 2].invoke if where == "middle" else max(op.response for op in ops) + 10
    assert any(op.kind == "w" and op.value != first and op.response < at for op in ops)
    start = time.monotonic()
    problem = check_location(ops + [Op("r", first, at, at + 1, 99)])
    assert time.monotonic() - start < LONG_CHECK_BUDGET_S
    assert problem is not None and f"p99 r->{first} [{at}, {at + 1}]" in problem
    assert f"no order lets p99 r->{first}" in problem
