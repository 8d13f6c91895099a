"""``dsm directory``: run the owner directory."""

from __future__ import annotations

import argparse
import os
import sys

from dsm.directory.pages import OnLoss
from dsm.directory.service import run_directory
from dsm.keys import KeysError, add_keys_argument, keys_dir_from, load_server_keys
from dsm.layout import DEFAULT_BASE_ADDRESS, DEFAULT_REGION_BYTES, Layout

LISTEN_ENV = "DSM_LISTEN"
DEFAULT_LISTEN = "tcp://0.0.0.0:7400"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("directory", help="run the owner directory of a cluster")
    parser.add_argument("--listen", default=os.environ.get(LISTEN_ENV, DEFAULT_LISTEN),
                        help=f"ZeroMQ endpoint to bind (env {LISTEN_ENV}, default {DEFAULT_LISTEN})")
    parser.add_argument("--region-size", type=int, default=DEFAULT_REGION_BYTES,
                        help="bytes of shared region (default 1 GiB)")
    parser.add_argument("--base", type=lambda s: int(s, 0), default=DEFAULT_BASE_ADDRESS,
                        help=f"cluster-wide base address (default {DEFAULT_BASE_ADDRESS:#x})")
    parser.add_argument("--trace", help="write the protocol trace (JSON lines) to this file")
    parser.add_argument(
        "--on-loss", choices=[m.value for m in OnLoss], default=OnLoss.POISON.value,
        help="pages whose newest contents died with a node: 'poison' (default) makes every "
             "access fail loudly until the program calls node.forget_lost; 'last-copy' serves "
             "their last home copy again (older data; every fallback is logged and counted)")
    add_keys_argument(parser, "serve with DIR/directory.key_secret and accept only the nodes "
                              "whose public key (DIR/*.key) is in DIR")
    parser.add_argument("--metrics", type=int, metavar="PORT",
                        help="serve Prometheus metrics over HTTP on this port")
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    layout = Layout(args.base, args.region_size)
    keys_dir = keys_dir_from(args.keys)
    try:
        keys = load_server_keys(keys_dir) if keys_dir is not None else None
    except KeysError as exc:
        print(f"dsm directory: {exc}", file=sys.stderr)
        return 2
    return run_directory(args.listen, layout, args.trace, args.ready_fd, OnLoss(args.on_loss),
                         keys, args.metrics)
