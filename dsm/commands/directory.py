"""``dsm directory``: run the owner directory."""

from __future__ import annotations

import argparse
import os
import sys

from dsm.directory.pages import OnLoss
from dsm.errors import ConfigError
from dsm.directory.service import run_directory
from dsm.keys import KeysError, add_keys_argument, keys_dir_from, load_server_keys
from dsm.layout import DEFAULT_BASE_ADDRESS, DEFAULT_REGION_BYTES, Layout
from dsm.managers import DEFAULT_MANAGER, MANAGER_ENV, Manager
from dsm.units import check_home_copy, check_region, format_size, parse_size

LISTEN_ENV = "DSM_LISTEN"
DEFAULT_LISTEN = "tcp://0.0.0.0:7400"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("directory", help="run the owner directory of a cluster")
    parser.add_argument("--listen", default=os.environ.get(LISTEN_ENV, DEFAULT_LISTEN),
                        help=f"ZeroMQ endpoint to bind (env {LISTEN_ENV}, default {DEFAULT_LISTEN})")
    parser.add_argument("--region-size", type=_size, default=DEFAULT_REGION_BYTES,
                        metavar="SIZE",
                        help="size of the shared region, in bytes or with a unit: 64GiB, "
                             f"512MiB, ... (default {format_size(DEFAULT_REGION_BYTES)})")
    parser.add_argument("--base", type=lambda s: int(s, 0), default=DEFAULT_BASE_ADDRESS,
                        help=f"cluster-wide base address (default {DEFAULT_BASE_ADDRESS:#x})")
    parser.add_argument("--trace", help="write the protocol trace (JSON lines) to this file")
    parser.add_argument(
        "--on-loss", choices=[m.value for m in OnLoss], default=OnLoss.POISON.value,
        help="pages whose newest contents died with a node: 'poison' (default) makes every "
             "access fail loudly until the program calls node.forget_lost; 'last-copy' serves "
             "their last home copy again (older data; every fallback is logged and counted)")
    parser.add_argument(
        "--manager", choices=[m.value for m in Manager if m is not Manager.DISTRIBUTED],
        default=os.environ.get(MANAGER_ENV) or DEFAULT_MANAGER.value,
        help="IVY's manager (env " + MANAGER_ENV + f", default {DEFAULT_MANAGER.value}): "
             "'relay' moves every page through the directory (nodes need no reachable address: "
             "NAT); 'central' knows owners and copy sets and has pages sent node to node")
    parser.add_argument(
        "--migratory", action=argparse.BooleanOptionalAction, default=True,
        help="grant a page for writing at a read once nodes are seen to read and then write it "
             "in turn (a counter under a lock: one fault per turn, not two; default on)")
    add_keys_argument(parser, "serve with DIR/directory.key_secret and accept only the nodes "
                              "whose public key (DIR/*.key) is in DIR")
    parser.add_argument("--metrics", type=int, metavar="PORT",
                        help="serve Prometheus metrics over HTTP on this port")
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    try:
        check_region(args.base, args.region_size)
        check_home_copy(args.region_size)
    except ConfigError as exc:
        print(f"dsm directory: --region-size: {exc}", file=sys.stderr)
        return 2
    layout = Layout(args.base, args.region_size)
    manager = Manager(args.manager)
    if manager.direct and args.on_loss == OnLoss.LAST_COPY.value:
        print("dsm directory: --on-loss last-copy falls back to the directory's copy of every "
              "page, which only --manager relay keeps", file=sys.stderr)
        return 2
    keys_dir = keys_dir_from(args.keys)
    try:
        keys = load_server_keys(keys_dir) if keys_dir is not None else None
    except KeysError as exc:
        print(f"dsm directory: {exc}", file=sys.stderr)
        return 2
    return run_directory(args.listen, layout, args.trace, args.ready_fd, OnLoss(args.on_loss),
                         keys, args.metrics, manager, args.migratory)
