"""``dsm bench``: benchmarks, each measured beside its baseline in the same run.

    dsm bench fault [--pages N] [--transport tcp|ipc] [--json FILE] ...
    dsm bench lock [--acquires N] [--contended N] [--nodes N] [--json FILE] ...
    dsm bench workloads [--workloads jacobi,matmul,sort,counter] [--nodes 1,2,3] [--json FILE] ...
"""

from __future__ import annotations

import argparse

from dsm.bench import fault, lock, workloads


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure the DSM against its baselines (ratios, not bare times)"
    )
    benches = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    fault_parser = benches.add_parser(
        "fault",
        help="page-fault latency (read from home, from an owner, write invalidating copies, "
             "local) beside a bare ZeroMQ round trip",
        description="What one page fault costs, beside a bare ZeroMQ round trip measured in the "
                    "same run: each row as a ratio to the round trip.",
    )
    fault.add_arguments(fault_parser)
    fault_parser.set_defaults(func=fault.run)
    lock_parser = benches.add_parser(
        "lock",
        help="lock acquire/release round trips, uncontended and contended, beside a bare ZeroMQ "
             "round trip",
        description=lock.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lock.add_arguments(lock_parser)
    lock_parser.set_defaults(func=lock.run)
    workloads_parser = benches.add_parser(
        "workloads",
        help="the parallel programs of nodes/ on 1, 2 and 3 nodes beside plain numpy in one "
             "process, with the DSM traffic they caused",
        description=workloads.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    workloads.add_arguments(workloads_parser)
    workloads_parser.set_defaults(func=workloads.run)
