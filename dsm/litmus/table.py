"""The classic litmus tests as data, what sequential consistency allows of each, and their
histograms.

Each test (``Litmus``) names its variables, each thread's code (stores of constants and loads
into registers), the node each thread runs on, and the outcome sequential consistency forbids.
Some tests are decided by where memory ends up (2+2W): their ``finals`` variables are read after
every thread has finished the round, and appear in the outcome as ``[x]``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import NamedTuple

INITIAL_VALUE = 0


class Litmus(NamedTuple):
    name: str
    description: str
    variables: tuple[str, ...]
    #: per thread: its instructions, ("st", variable, value) or ("ld", variable, register)
    threads: tuple[tuple[tuple[str, str, object], ...], ...]
    #: per thread: the index of the node that runs it
    placement: tuple[int, ...]
    #: the outcome sequential consistency forbids, as register (or "[var]") -> value
    forbidden: dict[str, int]
    #: variables whose value after the round is part of the outcome
    finals: tuple[str, ...] = ()


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
    Litmus(
        "2+2W", "two writes each, in opposite orders: the last writes cannot both be the first",
        ("x", "y"),
        ((("st", "x", 1), ("st", "y", 2)),
         (("st", "y", 1), ("st", "x", 2))),
        (0, 1),
        {"[x]": 1, "[y]": 1},
        finals=("x", "y"),
    ),
    Litmus(
        "WRC", "write-to-read causality: a write seen by a thread that then writes must be seen "
               "by whoever sees that second write",
        ("x", "y"),
        ((("st", "x", 1),),
         (("ld", "x", "r1"), ("st", "y", 1)),
         (("ld", "y", "r2"), ("ld", "x", "r3"))),
        (0, 1, 2),
        {"r1": 1, "r2": 1, "r3": 0},
    ),
    Litmus(
        "CoRR", "coherence of read-read: two loads of one variable never see its writes go "
                "backwards",
        ("x",),
        ((("st", "x", 1),),
         (("ld", "x", "r1"), ("ld", "x", "r2"))),
        (0, 1),
        {"r1": 1, "r2": 0},
    ),
)

BY_NAME = {t.name: t for t in LITMUS_TESTS}


def registers(test: Litmus) -> list[str]:
    return [arg for thread in test.threads for op, _, arg in thread if op == "ld"]


def observed(test: Litmus) -> list[str]:
    """What an outcome is made of: the registers, then the final values ``[var]``."""
    return registers(test) + [f"[{v}]" for v in test.finals]


def nodes_needed(test: Litmus) -> int:
    return max(test.placement) + 1


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


def _outcomes(thread_orders, finals: tuple[str, ...]) -> set[tuple]:
    found = set()
    for order in _interleavings(thread_orders):
        memory, regs = {}, {}
        for op, var, arg in order:
            if op == "st":
                memory[var] = arg
            else:
                regs[arg] = memory.get(var, INITIAL_VALUE)
        for var in finals:
            regs[f"[{var}]"] = memory.get(var, INITIAL_VALUE)
        found.add(tuple(sorted(regs.items())))
    return found


def sc_outcomes(test: Litmus) -> set[tuple]:
    """The outcomes sequential consistency allows: those of some interleaving of the threads
    (each outcome as sorted (name, value) pairs)."""
    return _outcomes([tuple(t) for t in test.threads], test.finals)


def relaxed_outcomes(test: Litmus) -> set[tuple]:
    """The outcomes if each thread's instructions could be reordered: what a machine without
    sequential consistency (or, for CoRR, without coherence) may show."""
    found = set()
    for orders in itertools.product(*(itertools.permutations(t) for t in test.threads)):
        found |= _outcomes(list(orders), test.finals)
    return found


def forbidden_key(test: Litmus) -> tuple:
    return tuple(sorted(test.forbidden.items()))


def verdict(test: Litmus, outcome: tuple, release: bool = False) -> str:
    if outcome in sc_outcomes(test):
        return "allowed"
    if release and outcome in relaxed_outcomes(test):
        return "relaxed (allowed under release)"
    return "FORBIDDEN" if outcome == forbidden_key(test) else "NOT SC"


def allowed_outcomes(test: Litmus, release: bool = False) -> set[tuple]:
    """What the memory model allows: sequential consistency's outcomes, or, for arrays under
    release consistency (``release``), the relaxed ones: with no lock or barrier between its
    stores and the loads, a node may load its own stale copy, so any order of each thread's
    instructions may show; a value no thread stored never does."""
    return relaxed_outcomes(test) if release else sc_outcomes(test)


def violations(test: Litmus, histogram: Counter, release: bool = False) -> int:
    """Rounds whose outcome the memory model does not allow."""
    allowed = allowed_outcomes(test, release)
    return sum(n for outcome, n in histogram.items() if outcome not in allowed)


def format_histogram(test: Litmus, histogram: Counter, mode: str = "",
                     release: bool = False) -> str:
    """A litmus7-style report: each outcome seen, its count, allowed or not under SC (and,
    for release arrays, whether release consistency allows it)."""
    allowed = sc_outcomes(test)
    rounds = sum(histogram.values())
    lines = [f"Test {test.name}{' ' + mode if mode else ''} ({test.description})",
             f"Histogram ({len(histogram)} states, {rounds} rounds)"]
    for outcome, count in sorted(histogram.items()):
        text = " ".join(f"{r}={v};" for r, v in outcome)
        lines.append(f"  {count:>6} :> {text:<34} {verdict(test, outcome, release)}")
    not_sc = violations(test, histogram)
    forbidden = " /\\ ".join(f"{r}={v}" for r, v in forbidden_key(test))
    seen = histogram.get(forbidden_key(test), 0)
    if release:
        bad = violations(test, histogram, release=True)
        lines.append(f"{'No' if bad else 'Ok'}: SC-forbidden outcome ({forbidden}) seen {seen} "
                     f"times, {not_sc} of {rounds} rounds not sequentially consistent (release "
                     f"consistency allows them: no lock or barrier orders these accesses), "
                     f"{bad} allowed by no model")
    else:
        lines.append(f"{'No' if not_sc else 'Ok'}: forbidden outcome ({forbidden}) seen {seen} "
                     f"times, {not_sc} of {rounds} rounds not sequentially consistent "
                     f"({len(set(histogram) & allowed)} of {len(allowed)} allowed outcomes seen)")
    return "\n".join(lines)
