"""``dsm directory``: run the owner directory, or the shards of a distributed manager.

    dsm directory                                   one directory
    dsm directory --manager distributed --shards K  K manager shards on this host (ports P..P+K-1)
    dsm directory --shard 0 --of K                  shard 0, the coordinator, alone: the others
                                                    join it from other hosts
    dsm directory --shard I --of K --coordinator E  shard I (``auto``: any free one) on this host
"""

from __future__ import annotations

import argparse
import os
import sys

from dsm.directory.pages import OnLoss
from dsm.directory.run import ShardPlan, run_directory
from dsm.errors import ConfigError
from dsm.keys import KeysError, add_keys_argument, keys_dir_from, load_server_keys
from dsm.layout import DEFAULT_BASE_ADDRESS, DEFAULT_REGION_BYTES, Layout
from dsm.managers import DEFAULT_MANAGER, MANAGER_ENV, MANAGERS, SHARDS_ENV, Manager
from dsm.units import check_home_copy, check_region, format_size, parse_size

LISTEN_ENV = "DSM_LISTEN"
DEFAULT_LISTEN = "tcp://0.0.0.0:7400"
#: the managers that run one directory process
ONE_DIRECTORY_MANAGERS = (Manager.RELAY.value, Manager.CENTRAL.value,
                          Manager.DYNAMIC.value)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("directory", help="run the owner directory of a cluster",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
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
        "--migratory", action=argparse.BooleanOptionalAction, default=True,
        help="grant a page for writing at a read once nodes are seen to read and then write it "
             "in turn (a counter under a lock: one fault per turn, not two; default on)")
    add_keys_argument(parser, "serve with DIR/directory.key_secret and accept only the nodes "
                              "whose public key (DIR/*.key) is in DIR")
    parser.add_argument("--metrics", type=int, metavar="PORT",
                        help="serve Prometheus metrics over HTTP on this port (shard I of a "
                             "one-host manager: PORT+I)")
    shards = parser.add_argument_group(
        "managers", "IVY's managers: 'relay', 'central' and 'dynamic' run one directory; "
                    "'distributed' "
                    "splits the pages among K shards (stripes of 256 pages), shard 0 being "
                    "also the coordinator (membership, allocations, locks, barriers, lost pages)")
    shards.add_argument("--manager", choices=[m.value for m in Manager], default=None,
                        help=f"which manager (env {MANAGER_ENV}; default "
                             f"{DEFAULT_MANAGER.value}, or distributed with more than one "
                             "shard): 'relay' moves every page through the directory (nodes need "
                             "no reachable address: NAT); 'central' knows owners and copy sets "
                             "and has pages sent node to node; 'distributed' is central split "
                             "over shards; 'dynamic' has each node ask a page's probable "
                             "owner, node to node, with the directory off the fault's path "
                             "(release-consistency arrays at their home, the directory)")
    shards.add_argument("--shards", type=_count, default=None, metavar="K",
                        help=f"run K shards on this host: this process is shard 0 and starts "
                             f"shards 1..K-1 on ports P+1..P+K-1 of --listen's port P (env "
                             f"{SHARDS_ENV}, default 1)")
    shards.add_argument("--shard", type=_index, metavar="I",
                        help="run shard I only (0: the coordinator, which the others join; "
                             "'auto': any free shard, for a scaled service)")
    shards.add_argument("--of", type=_count, metavar="K",
                        help=f"with --shard: how many shards the manager has (env {SHARDS_ENV}; "
                             "a joining shard may leave it to the coordinator)")
    shards.add_argument("--coordinator", metavar="ENDPOINT",
                        help="with --shard I > 0: where shard 0 listens; the region, the manager "
                             "and --on-loss are the coordinator's")
    shards.add_argument("--advertise", metavar="ENDPOINT",
                        help="with --coordinator: the endpoint nodes reach this shard at "
                             "(default: what it binds; for a wildcard host, this host's "
                             "address towards the coordinator)")
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of shards, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"a manager has at least 1 shard, not {n}")
    return n


#: ``--shard auto``: any free shard
AUTO_SHARD = -1


def _index(text: str) -> int:
    if text == "auto":
        return AUTO_SHARD
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shard number or 'auto', got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"shards are numbered from 0, not {n}")
    return n


def _env_shards() -> int | None:
    raw = os.environ.get(SHARDS_ENV, "")
    if not raw:
        return None
    try:
        return _count(raw)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"${SHARDS_ENV}: {exc}") from None


def shard_plan(args: argparse.Namespace) -> tuple[str, ShardPlan]:
    """The manager and this process's shard, from the flags; ConfigError if they disagree."""
    env = _env_shards()
    # $DSM_MANAGER is a default: a number of shards given here wins over it (they make a
    # distributed manager), where --manager would be a contradiction
    env_manager = os.environ.get(MANAGER_ENV) or None
    if env_manager is not None and env_manager not in MANAGERS:
        raise ConfigError(f"${MANAGER_ENV}={env_manager!r}: expected one of "
                          f"{', '.join(MANAGERS)}")
    shard = args.shard
    if args.coordinator is not None:  # a shard that joins its coordinator
        if shard is None or shard == 0:
            raise ConfigError("--coordinator is for shard I > 0 (or --shard auto), which joins "
                              "it: give --shard")
        if args.shards is not None:
            raise ConfigError("--shards K runs every shard here; --shard I runs one: not both")
        count = args.of if args.of is not None else (env or 0)
        if shard != AUTO_SHARD and count and shard >= count:
            raise ConfigError(f"--shard {shard} --of {count}: the shards are 0..{count - 1}")
        if args.manager not in (None, "distributed"):
            raise ConfigError(f"a shard belongs to a distributed manager, not --manager "
                              f"{args.manager}")
        return "distributed", ShardPlan(count, None if shard == AUTO_SHARD else shard,
                                        args.coordinator, False, args.advertise, args.parent_pid)
    if args.advertise is not None:
        raise ConfigError("--advertise is for a shard that joins a coordinator (--coordinator)")
    if shard is not None and shard != 0:
        raise ConfigError(f"--shard {'auto' if shard == AUTO_SHARD else shard} joins a "
                          "coordinator: give its endpoint with --coordinator")
    if shard == 0:  # the coordinator alone: the other shards join it
        if args.shards is not None:
            raise ConfigError("--shards K runs every shard here; --shard 0 --of K waits for "
                              "the others to join: not both")
        count, local = (args.of if args.of is not None else (env or 1)), False
    else:
        if args.of is not None:
            raise ConfigError("--of goes with --shard; --shards K runs K shards here")
        count, local = (args.shards if args.shards is not None else (env or 1)), True
        if args.shards is None and args.manager in ONE_DIRECTORY_MANAGERS:
            count = 1  # a manager asked for here wins over $DSM_SHARDS, a default
    manager = args.manager or ("distributed" if count > 1 else
                               env_manager or DEFAULT_MANAGER.value)
    if count > 1 and manager != "distributed":
        raise ConfigError(f"{count} shards make a distributed manager: --manager {manager} "
                          "runs one directory (use --manager distributed, or one shard)")
    return manager, ShardPlan(count, 0, None, local)


def run(args: argparse.Namespace) -> int:
    try:
        manager, plan = shard_plan(args)
    except ConfigError as exc:
        print(f"dsm directory: {exc}", file=sys.stderr)
        return 2
    layout = None
    if plan.coordinator is None:  # a joining shard takes the coordinator's region
        try:
            check_region(args.base, args.region_size)
            check_home_copy(args.region_size)
        except ConfigError as exc:
            print(f"dsm directory: --region-size: {exc}", file=sys.stderr)
            return 2
        layout = Layout(args.base, args.region_size)
    if Manager(manager).direct and args.on_loss == OnLoss.LAST_COPY.value:
        print("dsm directory: --on-loss last-copy falls back to the directory's copy of every "
              "page, which only --manager relay keeps", file=sys.stderr)
        return 2
    keys_dir = keys_dir_from(args.keys)
    try:
        keys = load_server_keys(keys_dir) if keys_dir is not None else None
    except KeysError as exc:
        print(f"dsm directory: {exc}", file=sys.stderr)
        return 2
    try:
        return run_directory(args.listen, layout, args.trace, args.ready_fd,
                             OnLoss(args.on_loss), keys, args.metrics, manager, plan,
                             str(keys_dir) if keys_dir is not None else None, args.migratory)
    except ConfigError as exc:  # the endpoint cannot be listened on (in use, malformed)
        print(f"dsm directory: {exc}", file=sys.stderr)
        return 2
