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
state, kept alive (``LIVE_WORLDS``), the others each on a world rebuilt and replayed to it.
Measured on the small scope: a deep copy of a world costs 1.4 ms (and must rebuild its
closures and its home store's mapping), building one 0.13 ms and a step about 0.05 ms, so a
replay of a 25-step prefix costs what a copy does, and is exact by construction. Each state
reached is fingerprinted (``dsm.sim.fingerprint``, 0.25 ms) and explored only the first time,
so the first violation found has a shortest schedule in steps: no schedule of fewer steps
reaches one.

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

import math
import time
from dataclasses import dataclass, field

from dsm.liveness import ACK_TIMEOUT_S, HEARTBEAT_INTERVAL_S
from dsm.sim.fingerprint import fingerprint
from dsm.sim.links import NO_FAULTS, Faults
from dsm.sim.model import SLOTS_PER_PAGE
from dsm.sim.world import STEP_S, SimulationFailure, World

#: what a ``random()`` draw returns: a chance that strikes (below any probability) or one that
#: spares (at or above any probability below 1), in the order of their alternatives
SPARED, STRIKES = math.nextafter(1.0, 0.0), 0.0
#: the probability the world is given for each allowed fault kind: any above 0 makes it draw
FAULT_ODDS = 0.5
#: worlds kept alive at each depth for their first next step (the others are replayed from
#: the start; a world of the small scope holds about 100 KiB)
LIVE_WORLDS = 1000
#: the separators of a schedule written out: between steps, and between a step's draws
STEP_SEP, DRAW_SEP = "/", "."

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
        return fingerprint(self.world, STEP_S, self.faults.left, self.faulted)


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


def explore(scope: Scope, max_states: int | None = None,
            max_depth: int | None = None) -> Exploration:
    """Every schedule of ``scope`` (of at most ``max_depth`` steps), breadth first, each state
    once: the first violation, with a shortest schedule, or none."""
    started = time.perf_counter()
    out = Exploration(scope)
    first = Replay(scope)
    seen = {first.fingerprint()}
    rested: set[bytes] = set()
    # each state to explore: its schedule, and its world if kept alive (the first next step is
    # taken on it, the others on worlds replayed to it)
    level: list[tuple[Schedule, Replay | None]] = [((), first)]
    limit = first.world.step_limit
    # the fingerprint keeps the acknowledgement timeout and the heartbeats' as "expired or not":
    # a run must stay shorter than them in steps (only a jump of the clock expires them), as
    # the livelock limit does
    horizon = min(limit, int(min(ACK_TIMEOUT_S, HEARTBEAT_INTERVAL_S) / STEP_S))
    while level and out.violation is None:
        depth = len(level[0][0]) + 1
        if max_depth is not None and depth > max_depth:
            out.stopped = f"every schedule of up to {max_depth} steps, not beyond (--max-depth)"
            break
        if depth > horizon:
            message = (f"no quiescence after {limit} steps (a livelock?)" if depth > limit else
                       f"runs longer than {horizon} steps: the fingerprint's timers no longer hold")
            out.violation = Violation(message, level[0][0], replay(scope, level[0][0])[0])
            break
        out.max_depth = depth
        following: list[tuple[Schedule, Replay | None]] = []
        alive = 0
        for schedule, world in level:
            for child, run, rests in _successors(scope, schedule, world, out):
                if out.violation is not None:
                    break
                if run.beyond_bound:
                    out.cut += 1
                    continue
                key = run.fingerprint()
                if rests:  # (the state it rests in was seen: resting changes nothing)
                    rested.add(key)
                elif key not in seen:
                    seen.add(key)
                    keep = alive < LIVE_WORLDS
                    alive += keep
                    following.append((child, run if keep else None))
            if out.violation is not None:
                break
            if max_states and len(seen) >= max_states:
                out.stopped = f"stopped at {len(seen)} states (--max-states)"
                break
        out.levels.append(len(following))
        level = [] if out.incomplete else following
    out.states = len(seen)
    out.at_rest = len(rested)
    out.seconds = time.perf_counter() - started
    return out


def _successors(scope: Scope, schedule: Schedule, world: Replay | None, out: Exploration):
    """Each next step from the state ``schedule`` reaches (``world``: one there already, or
    None): (the longer schedule, the replay after it, whether the run came to rest); a
    violation is put in ``out``."""
    plan: tuple[int, ...] | None = ()
    while plan is not None:
        if world is not None:
            replay, world = world, None
        else:
            replay = Replay(scope)
            replay.follow(schedule)
        out.transitions += 1
        try:
            rests = not replay.step(plan)
        except SimulationFailure as exc:
            out.violation = Violation(str(exc), schedule + (replay.taken,), replay.steps)
            yield schedule + (replay.taken,), replay, False
            return
        yield schedule + (replay.taken,), replay, rests
        plan = next_plan(replay.draws.made)


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
