"""Every schedule of a small scope, as a model checker explores them: ``python -m dsm.sim
--exhaustive`` (2 nodes, 2 pages, 2 operations per thread, at most one message lost or one
connection reset, by default).

It drives the real ``World`` (``dsm.sim.world``: the real node cores, page directory and
session layer), with no model of its own. Every choice the world makes comes from its ``rng``;
here a ``Draws`` stands in for it: each draw is a choice among its alternatives (a
``choice`` among the pairs that may deliver, the threads that may step and the agents that may
go on; a ``randrange``; a ``random()`` that strikes or not), taken from a recorded plan while
the plan lasts and the first alternative after it, each recorded with how many there were. A
schedule is the list of each step's draws, so it replays exactly.

The exploration is breadth first over steps: from each state at depth d, every combination of
the next step's draws is run (an odometer over them): the first on the world that reached the
state, kept alive, the others each on a world rebuilt and replayed to it (``dsm.sim.frontier``,
which also spreads a depth over worker processes). Measured on the small scope 15 steps in
(on a loaded machine): a copy of a world costs more than a replay to it (a deep copy 10 ms, a
pickle that carries its closures 3 ms to save and 3 ms to load; building a world and replaying
15 steps 4 ms), and a replay is exact by construction. Measured again, best of several on a
loaded machine, with the collector tuned (``GC_THRESHOLDS``): building a world 0.3 ms, a step
0.06 ms, a fingerprint 0.4 ms; under cProfile, the relay's one-fault scope to 8 steps spent
three fifths of its time rebuilding and replaying worlds and a third fingerprinting (the
invariants' checks, a few percent). Each state reached is fingerprinted
(``dsm.sim.fingerprint``) and explored only the first time, so the first violation found has a
shortest schedule in steps: no schedule of fewer steps reaches one.

No partial-order reduction: two steps rarely lead to the same state in either order, because
every step advances the clock by a millisecond and the sessions' timers are kept as ages in
steps (an acknowledgement owed goes out ``ACK_DELAY_S`` after the delivery that owed it): a
delivery taken a step later leaves a timer a step younger. Measured on the relay's fault-free
scope (the first 14 steps, 60 states a depth): of the pairs of a delivery and a thread's step
at disjoint parties, 28 of 121 commuted; of two deliveries (in the relay, every pair of them
shares the directory), 7 of 82; only the two nodes' threads' steps always did (82 of 82), and
a run has few of those (2 operations per node, and their retries) among its 40 steps.

Enumerated: which pair of parties delivers its next packet, which thread runs its next
operation, whether an agent is descheduled after a send and when it goes on, and, for each
fault allowed, whether it strikes on each message sent (a loss) or at each step (a reset: of
which connection, and how much of each direction's packets in flight it loses).
Fixed by the scope: the threads' programs (``programs``: each node writes its own page, then
reads another's, and so on: store buffering for 2 ops), the values written (unique per write),
no node deaths and no pages given back; the faults are losses and resets (duplicates and swaps
are the random mode's: ``--faults RATE``); time as the world counts it (a millisecond a step).
Bounded: an access that faults again more than ``Scope.refaults`` times (its page taken away
each time before its thread retried: a ping-pong an adversarial scheduler keeps up for ever, so
that without a bound the scope has no end) is cut there, and the cuts are counted.
"""

from __future__ import annotations

import gc
import hashlib
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from dsm.liveness import ACK_TIMEOUT_S, HEARTBEAT_INTERVAL_S
from dsm.sim.fingerprint import DIGEST_BYTES, fingerprint
from dsm.sim.links import NO_FAULTS, Faults
from dsm.sim.model import SLOTS_PER_PAGE
from dsm.sim.world import STEP_S, SimulationFailure, World

#: what a ``random()`` draw returns: a chance that strikes (below any probability) or one that
#: spares (at or above any probability below 1), in the order of their alternatives
SPARED, STRIKES = math.nextafter(1.0, 0.0), 0.0
#: the probability the world is given for each allowed fault kind: any above 0 makes it draw
FAULT_ODDS = 0.5
#: the separators of a schedule written out: between steps, and between a step's draws
STEP_SEP, DRAW_SEP = "/", "."

#: the cyclic garbage collector's thresholds while exploring (``gc.set_threshold``: allocations
#: between two runs of its youngest generation, and runs of each between two of the next;
#: Python's are 700, 10, 10): the worlds kept alive for the next depth are thousands of objects
#: each, and every run of the older generations walks them all. With Python's, the collector
#: took a fifth to two fifths of the CPU time of the relay's one-fault scope to 7 steps (best of
#: three on a loaded machine: 6.5 s, 5.2 s with these); the worlds rebuilt and let go are
#: cycles, so it must still run
GC_THRESHOLDS = (100_000, 50, 100)

Schedule = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Scope:
    """What the exploration covers (``python -m dsm.sim --exhaustive --help``)."""

    nodes: int = 2
    pages: int = 2
    ops_per_thread: int = 2
    manager: str = "relay"
    #: messages lost or connections reset, at most, in one schedule
    faults: int = 1
    #: times an access may fault again after its page came (taken away before the thread
    #: retried: a ping-pong an adversarial scheduler can repeat for ever, so it is bounded)
    refaults: int = 1
    #: the resend timers leave the fingerprint once no gap can come (``dsm.sim.fingerprint``):
    #: fewer states after a fault (tests/test_simulation_explore.py checks on a small scope's
    #: whole graph that the states it merges have the same next states)
    reduction: bool = True

    def programs(self) -> list[list[tuple[str, int]]]:
        """Each node's one thread: writes at even steps, reads at odd ones, its k-th
        operation on page (node + k) mod pages (2 nodes, 2 ops: store buffering)."""
        return [[("w" if k % 2 == 0 else "r", (i + k) % self.pages * SLOTS_PER_PAGE)
                 for k in range(self.ops_per_thread)] for i in range(self.nodes)]

    def describe(self) -> str:
        fault = (f"at most {self.faults} message(s) lost or connection(s) reset" if self.faults
                 else "no faults")
        return (f"{self.nodes} nodes, {self.pages} pages, {self.ops_per_thread} operations "
                f"per thread, the {self.manager} manager, {fault}, an access faulting again "
                f"at most {self.refaults} time(s)")

    def arguments(self) -> str:
        """The command-line options that give this scope."""
        return (f"--nodes {self.nodes} --pages {self.pages} --ops {self.ops_per_thread} "
                f"--manager {self.manager} --faults-allowed {self.faults} "
                f"--refaults {self.refaults}")


class ScheduleMismatch(ValueError):
    """A recorded schedule does not fit the world it is replayed on (another scope, or a
    changed protocol)."""


class Draws:
    """In place of the world's ``random.Random``: each draw is a choice, from ``plan`` while it
    lasts, then the first alternative; ``made`` records (choice, alternatives) per draw."""

    def __init__(self) -> None:
        self.plan: tuple[int, ...] = ()
        self.made: list[tuple[int, int]] = []

    def start(self, plan: tuple[int, ...]) -> None:
        self.plan, self.made = plan, []

    def draw(self, alternatives: int) -> int:
        i = len(self.made)
        k = self.plan[i] if i < len(self.plan) else 0
        if not 0 <= k < alternatives:
            raise ScheduleMismatch(f"draw {i + 1} of the step is {k}, of {alternatives} "
                                   "alternatives")
        self.made.append((k, alternatives))
        return k

    def choice(self, seq):
        return seq[self.draw(len(seq))]

    def randrange(self, stop: int) -> int:
        return self.draw(stop)

    def random(self) -> float:
        return (SPARED, STRIKES)[self.draw(2)]


class FaultDraws:
    """The links' draws: a ``random()`` there is a fault striking, drawn only while the scope
    allows one more (a fault that struck counts, even a reset that found nothing to lose)."""

    def __init__(self, draws: Draws, allowed: int):
        self.draws = draws
        self.left = allowed

    def random(self) -> float:
        if not self.left:
            return SPARED
        chance = self.draws.random()
        if chance == STRIKES:
            self.left -= 1
        return chance

    def choice(self, seq):
        return self.draws.choice(seq)

    def randrange(self, stop: int) -> int:
        return self.draws.randrange(stop)


class Replay:
    """A world of ``scope`` with its draws in our hands, stepped along a schedule."""

    def __init__(self, scope: Scope):
        faults = Faults(drop=FAULT_ODDS, reset=FAULT_ODDS) if scope.faults else NO_FAULTS
        self.world = World(0, nodes=scope.nodes, pages=scope.pages,
                           ops_per_thread=scope.ops_per_thread, manager=scope.manager,
                           faults=faults, fixed_programs=scope.programs())
        self.draws = Draws()
        self.faults = FaultDraws(self.draws, scope.faults)
        self.world.rng = self.draws  # type: ignore[assignment]
        self.world.links.rng = self.faults  # type: ignore[assignment]
        agent_faults = getattr(self.world, "agent_faults", None)
        if agent_faults is not None:  # the kernels' faults: none in the scope (never drawn)
            agent_faults.rng = self.faults
        self.threads = [t for n in self.world.nodes.values() for t in n.threads]
        #: each thread's faults on its current operation
        self.faulted = [0] * len(self.threads)
        self.refaults = scope.refaults
        self.reduction = scope.reduction
        #: the lines of the world's schedule each step wrote
        self.steps: list[list[str]] = []

    def step(self, plan: tuple[int, ...]) -> bool:
        """One step along ``plan`` (its draws; the first alternatives after it): whether the
        run goes on (False: it came to rest, checked). SimulationFailure if an invariant
        broke."""
        self.draws.start(plan)
        before = len(self.world.schedule)
        was = [(t.next_op, t.blocked_on) for t in self.threads]
        try:
            return self.world.step()
        finally:
            self.steps.append(self.world.schedule[before:])
            for i, t in enumerate(self.threads):
                op, blocked = was[i]
                if t.next_op != op:
                    self.faulted[i] = 0
                if t.blocked_on is not None and blocked is None:
                    self.faulted[i] += 1

    @property
    def beyond_bound(self) -> bool:
        """Whether an access has faulted again more often than the scope allows."""
        return max(self.faulted, default=0) > 1 + self.refaults

    def follow(self, schedule: Schedule) -> None:
        for plan in schedule:
            self.step(plan)
            if len(self.draws.made) != len(plan):
                raise ScheduleMismatch(f"step {len(self.steps)} made {len(self.draws.made)} "
                                       f"draws, the schedule has {len(plan)}")

    @property
    def taken(self) -> tuple[int, ...]:
        """The draws of the last step."""
        return tuple(k for k, _ in self.draws.made)

    def fingerprint(self) -> bytes:
        return fingerprint(self.world, STEP_S, self.faults.left, self.faulted,
                           faults_left=self.faults.left if self.reduction else None)

    def outcome(self) -> bytes:
        """What the run leaves that its programs could observe, once at rest: the last write
        of each location, and each live node's pages, their states and bytes (the same
        whatever the fingerprint leaves out)."""
        pages = [(n.name, sorted((q, st.name) for q, st in n.core.state.items()),
                  sorted((q, bytes(m)) for q, m in n.memory.items()))
                 for n in self.world.nodes.values() if n.alive]
        return hashlib.blake2b(repr((self.world.truth, pages)).encode(),
                               digest_size=DIGEST_BYTES).digest()


def next_plan(made: list[tuple[int, int]]) -> tuple[int, ...] | None:
    """The next combination of a step's draws after ``made`` (an odometer: the last draw
    that has an alternative left moves on, the ones after it start again), None after the
    last."""
    for i in range(len(made) - 1, -1, -1):
        k, alternatives = made[i]
        if k + 1 < alternatives:
            return tuple(c for c, _ in made[:i]) + (k + 1,)
    return None


@dataclass
class Violation:
    message: str
    schedule: Schedule
    steps: list[list[str]]

    @property
    def depth(self) -> int:
        return len(self.schedule)


@dataclass
class Exploration:
    scope: Scope
    states: int = 0
    transitions: int = 0
    #: distinct states in which the run came to rest (nothing in flight, every thread done)
    at_rest: int = 0
    #: what the runs that came to rest left (``Replay.outcome``)
    outcomes: set[bytes] = field(default_factory=set)
    #: steps not followed: an access faulted again more often than the scope allows
    cut: int = 0
    max_depth: int = 0  #: the deepest step taken
    seconds: float = 0.0
    violation: Violation | None = None
    #: why it stopped before the end ("": it did not)
    stopped: str = ""
    levels: list[int] = field(default_factory=list)  #: new states per depth

    @property
    def incomplete(self) -> bool:
        return bool(self.stopped)


@contextmanager
def _seldom_collected():
    """The cyclic garbage collector runs seldom meanwhile (``GC_THRESHOLDS``; the workers are
    forked within: theirs too)."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def explore(scope: Scope, max_states: int | None = None, max_depth: int | None = None,
            progress: Callable[[Exploration], None] | None = None,
            workers: int = 1) -> Exploration:
    """Every schedule of ``scope`` (of at most ``max_depth`` steps), breadth first, each state
    once: the first violation, with a shortest schedule, or none. ``progress`` is told the
    exploration so far after each depth (its ``levels`` and ``seconds``); ``workers``
    processes run the steps (``dsm.sim.frontier``)."""
    with _seldom_collected():
        return _explore(scope, max_states, max_depth, progress, workers)


def _explore(scope: Scope, max_states: int | None, max_depth: int | None,
             progress: Callable[[Exploration], None] | None, workers: int) -> Exploration:
    from dsm.sim.frontier import Workers, balanced

    started = time.perf_counter()
    out = Exploration(scope)
    first = Replay(scope)
    seen = {first.fingerprint()}
    rested: set[bytes] = set()
    limit = first.world.step_limit
    # the fingerprint keeps the acknowledgement timeout and the heartbeats' as "expired or not":
    # a run must stay shorter than them in steps (only a jump of the clock expires them), as
    # the livelock limit does
    horizon = min(limit, int(min(ACK_TIMEOUT_S, HEARTBEAT_INTERVAL_S) / STEP_S))
    pool = Workers(scope, workers)
    # each worker's states of the depth to explore (their schedules): the worlds it keeps
    shares: list[list[Schedule]] = [[()]] + [[] for _ in range(workers - 1)]
    try:
        depth = 0
        while any(shares) and out.violation is None:
            depth += 1
            if max_depth is not None and depth > max_depth:
                out.stopped = f"every schedule of up to {max_depth} steps, not beyond (--max-depth)"
                break
            if depth > horizon:
                deepest = next(s for share in shares for s in share)
                message = (f"no quiescence after {limit} steps (a livelock?)" if depth > limit
                           else f"runs longer than {horizon} steps: the fingerprint's timers "
                                "no longer hold")
                out.violation = Violation(message, deepest, replay(scope, deepest)[0])
                break
            out.max_depth = depth
            following: list[list[Schedule]] = [[] for _ in range(workers)]
            for owner, found in enumerate(pool.expand(balanced(shares))):
                out.transitions += found.transitions
                for successor in found.successors:
                    if successor.key is None:
                        out.cut += 1
                    elif successor.rests:  # (the state it rests in was seen: resting changes
                        rested.add(successor.key)  # nothing)
                        out.outcomes.add(successor.outcome)
                    elif successor.key not in seen and not out.incomplete:
                        seen.add(successor.key)
                        following[owner].append(successor.schedule)
                        if max_states and len(seen) >= max_states:
                            out.stopped = f"stopped at {len(seen)} states (--max-states)"
                if found.violation is not None and out.violation is None:
                    out.violation = found.violation
            out.levels.append(sum(map(len, following)))
            shares = [[] for _ in range(workers)] if out.incomplete else following
            pool.keep(shares)
            if progress is not None:
                out.states, out.seconds = len(seen), time.perf_counter() - started
                progress(out)
    finally:
        pool.close()
    out.states = len(seen)
    out.at_rest = len(rested)
    out.seconds = time.perf_counter() - started
    return out


def replay(scope: Scope, schedule: Schedule) -> tuple[list[list[str]], str | None]:
    """Each step's lines along ``schedule``, and the failure it ends in (None: none)."""
    run = Replay(scope)
    try:
        run.follow(schedule)
    except SimulationFailure as exc:
        return run.steps, str(exc)
    return run.steps, None


def format_schedule(schedule: Schedule) -> str:
    return STEP_SEP.join(DRAW_SEP.join(map(str, plan)) for plan in schedule)


def parse_schedule(text: str) -> Schedule:
    return tuple(tuple(int(k) for k in step.split(DRAW_SEP) if k)
                 for step in text.split(STEP_SEP))
