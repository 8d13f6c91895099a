"""The exhaustive exploration's next depth (``dsm.sim.explore``): every step from each state of
the current one, on one process or spread over worker processes (``--workers``).

An ``Expander`` takes the states of a depth (their schedules) and runs each one's next steps:
the first on the world that reached the state, if it kept it alive, the others on worlds
rebuilt and replayed to it (a world cannot be copied cheaply: ``dsm.sim.explore``). It answers
with each step's schedule, fingerprint and whether the run came to rest or went beyond the
refault bound, and keeps the worlds of the states not seen before, as the explorer tells it,
for their next depth: up to ``LIVE_WORLDS`` of them (a world of the small scope holds about
80 KiB).

(``dsm.sim.explore`` imports this module when it explores, and this one its ``Replay`` when it
runs steps: each needs the other, so neither imports the other at the top.)

With workers, each is a forked process with its own ``Expander``; the explorer (one process,
which holds the fingerprints seen) hands each worker the states whose worlds it keeps, so most
first steps need no replay, and moves states from the busier worker to the other when their
shares differ by more than ``IMBALANCE`` (those are replayed there). The states reached at each
depth are the same whatever the split: breadth first, a depth is done before the next begins.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, field

from dsm.sim.world import SimulationFailure

#: worlds kept alive across one depth, by all workers together (about 80 KiB each: 1.6 GB; a
#: worker held 790 MB with its half, 12 steps into the relay's one-fault scope; while a depth is
#: explored the worlds of the next one are kept beside those of this one, up to twice as many)
LIVE_WORLDS = 20_000
#: the share of a depth's states by which one worker may exceed the even split before states
#: move to another (they are replayed there: a move costs a replay)
IMBALANCE = 0.1


@dataclass
class Successor:
    """One step from a state: its schedule, the fingerprint of the state it reached (None: cut
    at the refault bound), whether the run came to rest there, and then what it left
    (``Replay.outcome``)."""

    schedule: tuple
    key: bytes | None
    rests: bool
    outcome: bytes | None = None


@dataclass
class Expanded:
    """What an expander found from its share of a depth."""

    successors: list[Successor] = field(default_factory=list)
    transitions: int = 0
    violation: object | None = None  #: a ``dsm.sim.explore.Violation``


class Expander:
    """Runs the next steps from states of ``scope``; keeps the worlds it is told to."""

    def __init__(self, scope, live_worlds: int):
        from dsm.sim.explore import Replay
        self.scope = scope
        self.live_worlds = live_worlds
        first = Replay(scope)
        #: the worlds of this depth's states, by schedule
        self.live: dict[tuple, object] = {(): first}
        #: the worlds reached this depth, by schedule, until the explorer says which to keep
        self.reached: dict[tuple, object] = {}

    def expand(self, schedules: list[tuple]) -> Expanded:
        """Every next step from the states ``schedules`` reach, in order; stops at a
        violation."""
        out = Expanded()
        seen_here: set[bytes] = set()
        for schedule in schedules:
            for successor, run in self._successors(schedule, out):
                if out.violation is not None:
                    return out
                out.successors.append(successor)
                key = successor.key
                if (key is not None and not successor.rests and key not in seen_here
                        and len(self.reached) < self.live_worlds):
                    seen_here.add(key)
                    self.reached[successor.schedule] = run
        return out

    def keep(self, schedules: list[tuple]) -> None:
        """The worlds of ``schedules`` (the states new at this depth it is to explore next)
        stay alive; the others are let go."""
        reached = self.reached
        self.live = {s: reached[s] for s in schedules if s in reached}
        self.reached = {}

    def _successors(self, schedule: tuple, out: Expanded):
        from dsm.sim.explore import Replay, Violation, next_plan
        world = self.live.pop(schedule, None)
        plan: tuple[int, ...] | None = ()
        while plan is not None:
            if world is not None:
                run, world = world, None
            else:
                run = Replay(self.scope)
                run.follow(schedule)
            out.transitions += 1
            try:
                rests = not run.step(plan)
            except SimulationFailure as exc:
                child = schedule + (run.taken,)
                out.violation = Violation(str(exc), child, run.steps)
                yield Successor(child, None, False), run
                return
            child = schedule + (run.taken,)
            key = None if run.beyond_bound else run.fingerprint()
            yield Successor(child, key, rests, run.outcome() if rests else None), run
            plan = next_plan(run.draws.made)


def _serve(scope, live_worlds: int, conn) -> None:
    """A worker: expands what it is sent, keeps what it is told, until told to stop."""
    expander = Expander(scope, live_worlds)
    while True:
        command, schedules = conn.recv()
        if command == "expand":
            conn.send(expander.expand(schedules))
        elif command == "keep":
            expander.keep(schedules)
        else:
            conn.close()
            return


class Workers:
    """``count`` expanders: in this process for one, else in forked processes."""

    def __init__(self, scope, count: int):
        self.count = count
        share = LIVE_WORLDS // count
        if count == 1:
            self.local: Expander | None = Expander(scope, share)
            self.processes: list = []
            self.conns: list = []
            return
        self.local = None
        context = multiprocessing.get_context("fork")
        self.conns, self.processes = [], []
        for _ in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(scope, share, theirs), daemon=True)
            process.start()
            theirs.close()
            self.conns.append(ours)
            self.processes.append(process)

    def expand(self, shares: list[list[tuple]]) -> list[Expanded]:
        """Each worker's share of a depth expanded (shares in the workers' order)."""
        if self.local is not None:
            return [self.local.expand(shares[0])]
        for conn, share in zip(self.conns, shares):
            conn.send(("expand", share))
        return [conn.recv() for conn in self.conns]

    def keep(self, shares: list[list[tuple]]) -> None:
        if self.local is not None:
            self.local.keep(shares[0])
            return
        for conn, share in zip(self.conns, shares):
            conn.send(("keep", share))

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("stop", None))
                conn.close()
            except OSError:
                pass  # it ended already
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


def balanced(shares: list[list[tuple]]) -> list[list[tuple]]:
    """``shares`` with states moved from the busiest worker to the idlest while they differ by
    more than ``IMBALANCE`` of the depth (the states moved are replayed where they go)."""
    total = sum(map(len, shares))
    if len(shares) < 2 or not total:
        return shares
    shares = [list(s) for s in shares]
    slack = max(1, int(IMBALANCE * total))
    while True:
        busiest = max(range(len(shares)), key=lambda i: len(shares[i]))
        idlest = min(range(len(shares)), key=lambda i: len(shares[i]))
        excess = (len(shares[busiest]) - len(shares[idlest])) // 2
        if len(shares[busiest]) - len(shares[idlest]) <= slack or excess <= 0:
            return shares
        moved = shares[busiest][-excess:]
        del shares[busiest][-excess:]
        shares[idlest].extend(moved)
