"""``python -m dsm.sim --seed N [--nodes K ...] [--release] [--events RATE] [--trace DIR]``: run (or replay) one
simulated schedule and print it; exit status 1 if an invariant failed. ``--trace DIR`` writes the
schedule as protocol traces (``DIR/directory.trace``, ``DIR/NODE.trace``), failing or not, for
``dsm trace DIR/*.trace --html OUT`` to draw as it draws a real run.

``python -m dsm.sim --exhaustive [...]`` explores every schedule of a small scope instead
(``dsm.sim.exhaustive``; ``--exhaustive --help`` for its options)."""

from __future__ import annotations

import argparse
import sys

from dsm import bugs
from dsm.sim import exhaustive
from dsm.sim.links import Faults
from dsm.sim.processes import KernelEvents
from dsm.sim.programs import DEFAULT_PHASES
from dsm.sim.world import SimulationFailure, World


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--exhaustive" in argv:  # every schedule of a small scope: options of its own
        return exhaustive.main(argv)
    parser = argparse.ArgumentParser(prog="python -m dsm.sim", description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--pages", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="threads per node")
    parser.add_argument("--ops", type=int, default=12, help="operations per thread")
    parser.add_argument("--deaths", type=int, default=0, help="nodes that may be killed")
    parser.add_argument("--manager", choices=("relay", "central", "distributed", "dynamic"),
                        default="relay",
                        help="pages through the directory (relay) or node to node (central); "
                             "dynamic: IVY's dynamic distributed manager (probable owners)")
    parser.add_argument("--bands", action="store_true",
                        help="threads read runs of pages, then write them (read-ahead, upgrades)")
    parser.add_argument("--shards", type=int, default=1,
                        help="the distributed manager's shards (stripes of 2 pages here)")
    parser.add_argument("--give-backs", action="store_true",
                        help="nodes hand pages back now and then (unmaps, leaves)")
    parser.add_argument("--release-pages", type=int, default=0, metavar="K",
                        help="pages 0..K-1 are release-consistency pages, run by data-race-free "
                             "programs (locks, barriers) and checked for DRF-SC")
    parser.add_argument("--release", action="store_true",
                        help="every page is a release-consistency page (--release-pages all)")
    parser.add_argument("--phases", type=int, default=DEFAULT_PHASES,
                        help="barrier phases of the data-race-free programs")
    parser.add_argument("--sweeps", action="store_true",
                        help="the release pages' programs sweep bands of pages in order "
                             "(read-ahead runs of another node's private pages) rather than "
                             "touch random locations")
    parser.add_argument("--bursts", type=int, default=1, metavar="N",
                        help="a thread the scheduler picks runs up to N operations in a row "
                             "(ahead of the messages on their way to its node)")
    parser.add_argument("--faults", type=float, default=0.0, metavar="RATE",
                        help="drop, duplicate and swap each message with this probability, and "
                             "reset a connection now and then (a tenth as often), cut a node "
                             "off from every other party for up to 2 s (a twentieth as often, "
                             "dsm/sim/partitions.py): the real session layer replays "
                             "(dsm/sim/links.py); fail the nodes' kernel "
                             "calls (EAGAIN, ENOMEM, a forked child's ESRCH) and page sends to "
                             "peers with it too (dsm/sim/agent.py)")
    parser.add_argument("--events", type=float, default=0.0, metavar="RATE",
                        help="the kernel's userfaultfd events on the nodes' processes, each kind "
                             "with this probability per step: forks, unmaps and remaps of a "
                             "page or two, and madvise removals (MADV_REMOVE or DONTNEED), "
                             "handled by the agent's code (dsm/sim/processes.py)")
    parser.add_argument("--print", action="store_true", help="print the whole schedule")
    parser.add_argument("--trace", metavar="DIR",
                        help="write the schedule as protocol traces into DIR (dsm trace draws them)")
    bugs.add_argument(parser)
    args = parser.parse_args(argv)
    ended = bugs.from_arguments(args, "python -m dsm.sim")
    if ended is not None:
        return ended
    world = World(args.seed, nodes=args.nodes, pages=args.pages,
                  threads_per_node=args.threads, ops_per_thread=args.ops, deaths=args.deaths,
                  manager=args.manager, bands=args.bands, give_backs=args.give_backs,
                  shards=args.shards, phases=args.phases,
                  release_pages=args.pages if args.release else args.release_pages,
                  faults=Faults.everywhere(args.faults),
                  kernel_events=KernelEvents.everywhere(args.events), sweeps=args.sweeps,
                  bursts=args.bursts)
    traces = None
    if args.trace:
        from dsm.sim.tracing import SimTrace
        traces = SimTrace(world, args.trace).attach()
    try:
        world.run()
    except SimulationFailure as exc:
        print(exc)
        return 1
    finally:
        if traces is not None:
            traces.close()
            print(f"traces in {args.trace}: dsm trace {args.trace}/*.trace --html OUT.html")
    if args.print:
        print("\n".join(world.schedule))
    print(f"seed {args.seed}: {len(world.schedule)} steps, every invariant held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
