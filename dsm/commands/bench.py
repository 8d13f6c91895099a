"""``dsm bench``: benchmarks, each measured beside its baseline in the same run.

    dsm bench [--json FILE] [--plot FILE] [--transport tcp|ipc] [--quick] ...   (all: one table)
    dsm bench all ...                                       (the same)
    dsm bench fault [--pages N] [--transport tcp|ipc] [--json FILE] [--plot FILE] ...
    dsm bench lock [--acquires N] [--contended N] [--nodes N] ...
    dsm bench sharing [--operations N] [--tasks N] [--collectives N] [--nodes N] ...
    dsm bench scan [--mib N] [--repeats N] [--random-pages N] ...
    dsm bench directory [--clients N] [--in-flight N] [--requests N] ...
    dsm bench workloads [--workloads jacobi,matmul,sort,counter] [--nodes 1,2,3] ...
    dsm bench jacobi [--size N] [--iterations N] [--nodes N] ...
"""

from __future__ import annotations

import argparse

from dsm.bench import directory, fault, jacobi, lock, scan, sharing, suite, workloads

#: name -> (module, one line of help); the module's docstring is the description
BENCHMARKS = {
    "fault": (fault, "page-fault latency (read from home, from an owner, write invalidating "
                     "copies, local) beside a bare ZeroMQ round trip"),
    "lock": (lock, "lock acquire/release round trips, uncontended and contended, beside a bare "
                   "ZeroMQ round trip"),
    "sharing": (sharing, "atomic counters, a work queue with a lock and with an atomic, and "
                         "collectives (allreduce, bcast, allgather) beside a bare ZeroMQ round trip"),
    "scan": (scan, "sequential read of a large array written by another node beside a bare "
                   "ZeroMQ stream, and random page reads beside one page per round trip"),
    "directory": (directory, "page requests per second one directory serves to clients with "
                             "requests in flight"),
    "workloads": (workloads, "the parallel programs of dsm/workloads/ on 1, 2 and 3 nodes beside plain "
                             "numpy in one process, with the DSM traffic they caused"),
    "jacobi": (jacobi, "one Jacobi iteration (1024x1024 float64) on 2 nodes beside plain numpy"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure the DSM against its baselines (ratios, not bare times)",
        description=suite.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # no benchmark named: the whole suite, with the suite's options
    suite.add_arguments(parser)
    parser.set_defaults(func=suite.run)
    benches = parser.add_subparsers(dest="bench", metavar="BENCHMARK")
    all_parser = benches.add_parser("all", help="every benchmark in sequence, one table",
                                    description=suite.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    suite.add_arguments(all_parser)
    all_parser.set_defaults(func=suite.run)
    for name, (module, text) in BENCHMARKS.items():
        sub = benches.add_parser(name, help=text, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)
