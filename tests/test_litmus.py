"""The cross-location promises of sequential consistency, as classic litmus tests run across
nodes: store buffering (SB), message passing (MP), independent reads of independent writes
(IRIW) and load buffering (LB).

Each test is data (LITMUS_TESTS): its variables, each thread's code (stores of constants and
loads into registers) and which node runs each thread, and its forbidden outcome. A run does
many rounds; round k uses fresh variables (row k of an array, each variable on a page of its
own, never touched before: zero, with no reset to race with), and every thread waits on one
cluster barrier before each round so that the threads start the round together (then each waits
a random moment, so that their relative timing varies). The variables start either on untouched
pages or on pages every node holds a read copy of (MODES). A second thread
on a node is a forked process (two Python threads would share one GIL, and a thread stuck in a
page fault holds it). Every outcome observed must be one that some interleaving of the threads
allows (sequential consistency), the forbidden one in particular never.

``pytest -s`` prints each test's histogram of outcomes; a failure's message has it too.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from typing import NamedTuple

import pytest

pytestmark = pytest.mark.timeout(60)

#: rounds of each litmus test in each mode: a few seconds per test, the file well under a minute
ROUNDS = 100
#: how the round's variables start: "cold", on pages no node has touched (every access faults
#: and goes to the directory), or "warm", every thread having read every variable before the
#: round (each node holds read copies: a store upgrades and must invalidate the others' copies,
#: a load of a copy still held does not fault at all)
MODES = ("cold", "warm")
#: before its code, each thread waits a random time up to this, drawn anew each round, so that
#: the threads' relative timing (a local load takes nanoseconds, a remote store milliseconds)
#: varies and the rounds explore many interleavings, as litmus7's random delays do
MAX_JITTER_S = 0.003
#: a run that shows a single outcome had its threads in one fixed order every round: it tested
#: no interleaving at all (the observed runs show three or more)
MIN_DISTINCT_OUTCOMES = 2
#: one variable is one page: the array's last axis is one page of int64 words
WORDS_PER_PAGE = 4096 // 8
INITIAL_VALUE = 0
#: the deadline of one node's share of a run
RUN_TIMEOUT_S = 45.0


class Litmus(NamedTuple):
    name: str
    description: str
    variables: tuple[str, ...]
    #: per thread: its instructions, ("st", variable, value) or ("ld", variable, register)
    threads: tuple[tuple[tuple[str, str, object], ...], ...]
    #: per thread: the index of the node that runs it
    placement: tuple[int, ...]
    #: the outcome sequential consistency forbids, as register -> value (all must hold)
    forbidden: dict[str, int]


LITMUS_TESTS = (
    Litmus(
        "SB", "store buffering: each thread stores, then loads the other's variable",
        ("x", "y"),
        ((("st", "x", 1), ("ld", "y", "r1")),
         (("st", "y", 1), ("ld", "x", "r2"))),
        (0, 1),
        {"r1": 0, "r2": 0},
    ),
    Litmus(
        "MP", "message passing: data then flag; whoever sees the flag must see the data",
        ("data", "flag"),
        ((("st", "data", 1), ("st", "flag", 1)),
         (("ld", "flag", "r1"), ("ld", "data", "r2"))),
        (0, 1),
        {"r1": 1, "r2": 0},
    ),
    Litmus(
        "IRIW", "independent reads of independent writes: two readers must agree on the order "
                "of two writes to different variables",
        ("x", "y"),
        ((("st", "x", 1),),
         (("st", "y", 1),),
         (("ld", "x", "r1"), ("ld", "y", "r2")),
         (("ld", "y", "r3"), ("ld", "x", "r4"))),
        (0, 1, 2, 0),  # the readers on different nodes, each remote from one writer at least
        {"r1": 1, "r2": 0, "r3": 1, "r4": 0},
    ),
    Litmus(
        "LB", "load buffering: each thread loads, then stores the other's variable",
        ("x", "y"),
        ((("ld", "x", "r1"), ("st", "y", 1)),
         (("ld", "y", "r2"), ("st", "x", 1))),
        (0, 1),
        {"r1": 1, "r2": 1},
    ),
)


def registers(test: Litmus) -> list[str]:
    return [arg for thread in test.threads for op, _, arg in thread if op == "ld"]


def outcome_key(test: Litmus, regs: dict) -> tuple:
    return tuple((r, regs[r]) for r in registers(test))


def _interleavings(sequences):
    """Every interleaving of the sequences that keeps each one's own order."""
    if all(not s for s in sequences):
        yield ()
        return
    for i, s in enumerate(sequences):
        if s:
            rest = list(sequences)
            rest[i] = s[1:]
            for tail in _interleavings(rest):
                yield (s[0],) + tail


def _outcomes(thread_orders) -> set[tuple]:
    found = set()
    for order in _interleavings(thread_orders):
        memory, regs = {}, {}
        for op, var, arg in order:
            if op == "st":
                memory[var] = arg
            else:
                regs[arg] = memory.get(var, INITIAL_VALUE)
        found.add(tuple(sorted(regs.items())))
    return found


def sc_outcomes(test: Litmus) -> set[tuple]:
    """The outcomes sequential consistency allows: those of some interleaving of the threads
    (each outcome as sorted (register, value) pairs)."""
    return _outcomes([tuple(t) for t in test.threads])


def relaxed_outcomes(test: Litmus) -> set[tuple]:
    """The outcomes if each thread's instructions could be reordered (they touch different
    variables): what a machine without sequential consistency may show."""
    found = set()
    for orders in itertools.product(*(itertools.permutations(t) for t in test.threads)):
        found |= _outcomes(list(orders))
    return found


def forbidden_key(test: Litmus) -> tuple:
    return tuple(sorted(test.forbidden.items()))


# --- what a node runs ----------------------------------------------------------------------------

RUNNER = """
import json, os, random, time
litmus = node.array({array!r}, ({rounds}, {nvars}, {words}), np.int64)
def run_thread(code, path, seed):
    rng = random.Random(seed)
    bar = node.barrier({barrier!r}, {parties})
    results = []
    for k in range({rounds}):
        if {warm}:
            for var in range({nvars}):
                int(litmus[k, var, 0])
        bar.wait()  # the threads start each round together
        until = time.monotonic() + rng.uniform(0, {jitter})
        while time.monotonic() < until:  # a busy wait: a sleep would be far coarser
            pass
        regs = {{}}
        for op, var, arg in code:
            if op == 'st':
                litmus[k, var, 0] = arg
            else:
                regs[arg] = int(litmus[k, var, 0])
        results.append(regs)
    with open(path, 'w') as f:
        json.dump(results, f)
threads = json.loads({threads_json!r})
children = []
for code, path, seed in threads[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            run_thread(code, path, seed)
            os._exit(0)
        except BaseException:
            import traceback; traceback.print_exc()
            os._exit(1)
    children.append(pid)
run_thread(*threads[0])
for pid in children:
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
"""


def run_litmus(test: Litmus, nodes, tmp_path, mode: str, rounds: int = ROUNDS) -> Counter:
    """Run ``rounds`` rounds of ``test`` on ``nodes`` (all started before any is waited for),
    its variables ``mode`` (see MODES), and return the histogram of outcomes."""
    assert mode in MODES, mode
    var_index = {v: i for i, v in enumerate(test.variables)}
    rng = random.Random()
    paths = [str(tmp_path / f"{test.name}-thread{t}.json") for t in range(len(test.threads))]
    busy = []
    for n, node in enumerate(nodes):
        mine = [([(op, var_index[var], arg) for op, var, arg in code], paths[t], rng.random())
                for t, code in enumerate(test.threads) if test.placement[t] == n]
        if not mine:
            continue
        node.send(RUNNER.format(
            array=f"litmus-{test.name}", rounds=rounds, warm=mode == "warm", jitter=MAX_JITTER_S, nvars=len(test.variables),
            words=WORDS_PER_PAGE, barrier=f"litmus-{test.name}", parties=len(test.threads),
            threads_json=json.dumps(mine),
        ))
        busy.append(node)
    for node in busy:
        node.wait(RUN_TIMEOUT_S)
    per_thread = [json.load(open(p)) for p in paths]
    histogram = Counter()
    for k in range(rounds):
        regs = {}
        for results in per_thread:
            regs.update(results[k])
        histogram[tuple(sorted(regs.items()))] += 1
    return histogram


def format_histogram(test: Litmus, histogram: Counter, mode: str = "") -> str:
    allowed = sc_outcomes(test)
    lines = [f"{test.name} {mode} ({test.description}), {sum(histogram.values())} rounds:"]
    for outcome, count in sorted(histogram.items()):
        text = " ".join(f"{r}={v}" for r, v in outcome)
        verdict = ("FORBIDDEN" if outcome == forbidden_key(test)
                   else "allowed" if outcome in allowed else "NOT SC")
        lines.append(f"  {text:<24} {count:>5}  {verdict}")
    return "\n".join(lines)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("test", LITMUS_TESTS, ids=lambda t: t.name)
def test_litmus_outcomes_across_nodes_are_sequentially_consistent(test, mode, make_node, tmp_path):
    nodes = [make_node(f"n{i}") for i in range(max(test.placement) + 1)]
    histogram = run_litmus(test, nodes, tmp_path, mode)
    report = format_histogram(test, histogram, mode)
    print("\n" + report)
    assert sum(histogram.values()) == ROUNDS
    assert histogram[forbidden_key(test)] == 0, report
    not_sc = set(histogram) - sc_outcomes(test)
    assert not not_sc, report
    assert len(histogram) >= MIN_DISTINCT_OUTCOMES, report


# --- the table itself ----------------------------------------------------------------------------

@pytest.mark.parametrize("test", LITMUS_TESTS, ids=lambda t: t.name)
def test_each_forbidden_outcome_is_exactly_what_reordering_would_allow(test):
    # the run can fail: the forbidden outcome is one a machine that reorders would show,
    # and no interleaving produces it
    assert set(test.forbidden) == set(registers(test))
    assert forbidden_key(test) not in sc_outcomes(test)
    assert forbidden_key(test) in relaxed_outcomes(test)
    assert len(test.placement) == len(test.threads)


def test_the_histogram_flags_a_forbidden_outcome():
    sb = LITMUS_TESTS[0]
    report = format_histogram(sb, Counter({(("r1", 0), ("r2", 0)): 1, (("r1", 0), ("r2", 1)): 3}))
    assert "FORBIDDEN" in report and "allowed" in report
