"""``python -m dsm.sim --exhaustive [--nodes 2 --pages 2 --ops 2 --manager relay
--faults-allowed 1 --refaults 1] [--bug NAME] [--replay SCHEDULE]``: every schedule of a small
scope (``dsm.sim.explore``), and what it found: the states explored, the transitions, the
deepest step, the time, and every invariant held, or the first violation with a shortest
schedule, step by step, and the command that replays it. Exit status 1 on a violation.

``--replay SCHEDULE`` runs one schedule of the scope (as a violation's report writes it) and
prints its steps and the failure it ends in."""

from __future__ import annotations

import argparse

from dsm import bugs
from dsm.sim.explore import (Exploration, Scope, explore, format_schedule, parse_schedule,
                             replay)

#: what the exploration enumerates and what it fixes, said with every report
ENUMERATED = ("enumerated: which pair delivers its next packet, which thread runs its next "
              "operation, whether an agent is descheduled after a send and when it goes on, "
              "and where each allowed fault strikes (which message sent or replayed is lost; "
              "which connection resets, and how much of each direction in flight it loses)")
FIXED = ("fixed: the programs ({programs}), the values written (unique per write); no node "
         "deaths, no pages given back, no kernel faults, no duplicated or swapped messages")


def parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(prog="python -m dsm.sim --exhaustive", description=__doc__)
    out.add_argument("--exhaustive", action="store_true", required=True,
                     help="explore every schedule of a small scope (dsm/sim/explore.py), "
                          "breadth first, each state once")
    out.add_argument("--nodes", type=int, default=Scope.nodes)
    out.add_argument("--pages", type=int, default=Scope.pages)
    out.add_argument("--ops", type=int, default=Scope.ops_per_thread,
                     help="operations per thread (one thread per node)")
    out.add_argument("--manager", choices=("relay", "central"), default=Scope.manager)
    out.add_argument("--faults-allowed", type=int, default=Scope.faults, metavar="N",
                     help="messages lost or connections reset, at most, in a schedule")
    out.add_argument("--refaults", type=int, default=Scope.refaults, metavar="N",
                     help="times an access may fault again after its page came, before the "
                          "schedule is cut (a page's ping-pong never ends under an adversarial "
                          "scheduler)")
    out.add_argument("--max-states", type=int, default=None, metavar="N",
                     help="stop after N states (the report says it is incomplete)")
    out.add_argument("--max-depth", type=int, default=None, metavar="STEPS",
                     help="explore schedules of at most STEPS steps")
    out.add_argument("--no-reduction", dest="reduction", action="store_false",
                     help="keep the sessions' resend timers in every state's fingerprint (by "
                          "default they leave it once no gap can come: fewer states, the same "
                          "futures; dsm/sim/fingerprint.py)")
    out.add_argument("--workers", type=int, default=1, metavar="N",
                     help="processes that run the steps of each depth (dsm/sim/frontier.py)")
    out.add_argument("--progress", action="store_true",
                     help="print the new states and the time after each depth")
    out.add_argument("--replay", metavar="SCHEDULE",
                     help="run this one schedule of the scope (as a violation's report "
                          "writes it)")
    bugs.add_argument(out)
    return out


def scope_of(args: argparse.Namespace) -> Scope:
    return Scope(nodes=args.nodes, pages=args.pages, ops_per_thread=args.ops,
                 manager=args.manager, faults=args.faults_allowed, refaults=args.refaults,
                 reduction=args.reduction)


def describe_programs(scope: Scope) -> str:
    return "; ".join(f"n{i}/t1: " + ", ".join(f"{kind} loc {loc}" for kind, loc in ops)
                     for i, ops in enumerate(scope.programs()))


def replay_command(scope: Scope, schedule_text: str) -> str:
    bug = f" --bug {bugs.ACTIVE}" if bugs.ACTIVE else ""
    return f"python -m dsm.sim --exhaustive {scope.arguments()}{bug} --replay {schedule_text}"


def format_steps(steps: list[list[str]]) -> list[str]:
    """Each step numbered, with what the world's schedule says it did."""
    return [f"  {i:3d}. " + ("; ".join(lines) if lines else
                            "(nothing: a deferred chance that did not strike)")
            for i, lines in enumerate(steps, 1)]


def report(found: Exploration) -> str:
    scope = found.scope
    lines = [f"every schedule of {scope.describe()}",
             "  " + ENUMERATED, "  " + FIXED.format(programs=describe_programs(scope)),
             f"states {found.states} (distinct, by fingerprint"
             f"{', resend timers merged once no gap can come' if scope.reduction else ''}), "
             f"transitions {found.transitions}, max depth {found.max_depth} steps, at rest "
             f"{found.at_rest} ({len(found.outcomes)} distinct outcomes), cut at the refault "
             f"bound {found.cut}, {found.seconds:.1f} s"]
    if found.incomplete:
        lines.append(f"INCOMPLETE: {found.stopped}; no violation so far")
    v = found.violation
    if v is None:
        if not found.incomplete:
            lines.append("no violation: every invariant held in every state")
        return "\n".join(lines)
    text = format_schedule(v.schedule)
    lines += [f"VIOLATION after {v.depth} steps (breadth first: no schedule of fewer steps "
              f"breaks an invariant): {v.message}", "the schedule:", *format_steps(v.steps),
              f"replay: {replay_command(scope, text)}"]
    return "\n".join(lines)


def print_progress(found: Exploration) -> None:
    print(f"  depth {found.max_depth}: {found.levels[-1]} new states, {found.states} in all, "
          f"{found.transitions} transitions, {found.seconds:.0f} s", flush=True)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    ended = bugs.from_arguments(args, "python -m dsm.sim --exhaustive")
    if ended is not None:
        return ended
    scope = scope_of(args)
    if args.replay is not None:
        steps, failure = replay(scope, parse_schedule(args.replay))
        print("\n".join(format_steps(steps)))
        print(failure if failure is not None else "every invariant held")
        return 1 if failure is not None else 0
    found = explore(scope, max_states=args.max_states, max_depth=args.max_depth,
                    progress=print_progress if args.progress else None, workers=args.workers)
    print(report(found))
    return 1 if found.violation is not None else 0
