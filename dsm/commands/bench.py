"""``dsm bench``: benchmarks, each measured beside its baseline in the same run.

    dsm bench fault [--pages N] [--transport tcp|ipc] [--json FILE] ...
"""

from __future__ import annotations

import argparse

from dsm.bench import fault


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
