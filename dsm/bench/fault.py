"""``dsm bench fault``: what one page fault costs, beside the bare network round trip.

One run starts a directory, a bare ZeroMQ echo server, the floors' processes (``dsm.bench.floor``)
and three nodes (A, B, C), each node a worker process attached with ``dsm.attach`` (so with its
own agent). Every measurement times one plain numpy access per page *in the faulting process*,
one fault per page, on its own set of pages prepared beforehand:

=============  ==========================================================================
round trip     the baseline: a bare pyzmq DEALER (this process) / ROUTER (an echo child)
               round trip of a 4 KiB message, over the same transport
floor, home    the least a Python handler does to serve a remote fault, each party its own
               process: a faulter's uffd read by a minimal handler, which asks a ROUTER for
               the page over a DEALER, gets 4 KiB back and UFFDIO_COPYs them (2 messages)
floor, 3 hops  the same handler, its request going to a manager that forwards it to the
               page's owner, which sends the page straight to the handler (3 messages)
home read      B reads a page that A wrote and C then read: the directory holds the home
               copy and grants it at once
owned read     B reads a page A wrote and still owns: the directory fetches it from A
write upgrade  A writes a page it holds a read copy of, as do B and C: the directory
               invalidates B's and C's copies before it grants
write miss     A writes a page it does not hold, of which B and C hold read copies: the
               same two invalidations, and the page from home
local fault    a forked child of C writes a page C owns, through a write-protect marker
               left from an earlier read copy: the agent alone serves it, no network
resident read  B reads a page it holds: no fault, the timing loop's own cost
=============  ==========================================================================

The measurements are interleaved in rounds (a share of every measurement per round) so that a
noisy stretch of the machine touches them all alike; each fault time is reported as a ratio to
the round trip's median (``/ rtt``) and, where one applies, to its floor's (``/ floor``): a home
read against the 2-hop floor, a read of a page another node owns against the 3-hop one. What the
DSM costs above its floor is its own machinery; the floor above the round trip is what any
Python handler pays (the uffd event, the copy, one more process woken per fault).

With ``--keys DIR`` a second cluster runs beside the first in the same run: a directory serving
with those CurveZMQ keys and nodes ka, kb, kc joining with them. Every round measures each fault
on both, and each keyed fault is reported as a ratio to the same fault of the open cluster:
what CURVE (encryption and authentication of every message) costs per fault.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dsm.bench import common, profile
from dsm.bench.common import Progress
from dsm.bench.fault_measure import FaultBench
from dsm.bench.fault_rows import FAULT_ROWS, FLOOR_KEYS, FLOOR_OF, ROWS, format_table, summary
from dsm.bench.procs import run_with_processes
from dsm.keys import add_keys_argument, keys_dir_from

# This module owns the command: its options and its run. Starting the clusters and timing the
# faults is dsm.bench.fault_measure's; the rows, their targets and floors, the result and the
# table are dsm.bench.fault_rows's (the names below are re-exported: the tests and `dsm bench`
# use them as dsm.bench.fault's).
__all__ = ["FAULT_ROWS", "FLOOR_KEYS", "FLOOR_OF", "ROWS", "add_arguments", "check_arguments",
           "format_table", "measure", "run", "summary"]

DEFAULT_PAGES = 1000
DEFAULT_ROUNDS = 10
DEFAULT_MESSAGE_BYTES = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pages", type=int, default=DEFAULT_PAGES,
                        help=f"pages (one fault each) per measurement (default {DEFAULT_PAGES})")
    parser.add_argument("--round-trips", type=int,
                        help="bare round trips measured (default: as many as --pages)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"interleaved rounds the measurements are split into "
                             f"(default {DEFAULT_ROUNDS})")
    parser.add_argument("--transport", choices=["tcp", "ipc"], default="tcp",
                        help="ZeroMQ transport of the directory and of the baseline (default tcp "
                             "loopback)")
    parser.add_argument("--message-bytes", type=int, default=DEFAULT_MESSAGE_BYTES,
                        help=f"size of the baseline's message (default {DEFAULT_MESSAGE_BYTES}, "
                             "one page)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the page order (pages are visited in random order)")
    parser.add_argument("--trace", metavar="DIR",
                        help="trace the directory and the nodes into DIR (to measure what "
                             "tracing costs per fault: run once with it and once without)")
    common.add_output_arguments(parser)
    profile.add_argument(parser)
    parser.add_argument("--fail-on-target", action="store_true",
                        help="exit with status 3 when a row misses its target")
    add_keys_argument(parser, "a second, keyed cluster runs beside the open one and every fault "
                              "is measured on both (CURVE's cost per fault)")


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, or None."""
    round_trips = args.round_trips if args.round_trips is not None else args.pages
    if min(args.pages, args.rounds, args.message_bytes, round_trips) < 1:
        return "--pages, --round-trips, --rounds and --message-bytes must be positive"
    return profile.check(getattr(args, "profile", None))


def measure(args: argparse.Namespace, progress: Progress, log_dir: Path) -> dict:
    """Run the benchmark (its processes log into ``log_dir``); its result. Raises BenchError."""
    round_trips = args.round_trips if args.round_trips is not None else args.pages
    rounds = min(args.rounds, args.pages, round_trips)
    keys_dir = keys_dir_from(getattr(args, "keys", None))
    return run_with_processes(log_dir, progress, lambda procs: FaultBench(
        procs, args.pages, round_trips, rounds, args.transport, args.message_bytes, args.seed,
        progress, keys_dir, getattr(args, "profile", None)).run(), trace_dir=_trace_dir(args))


def _trace_dir(args: argparse.Namespace) -> Path | None:
    if not getattr(args, "trace", None):
        return None
    path = Path(args.trace).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(args: argparse.Namespace) -> int:
    return common.run_benchmark("fault", args, check_arguments, measure,
                                profile.with_profile(format_table))
