"""``dsm agent``: run a node agent (``dsm run`` starts one for you)."""

from __future__ import annotations

import argparse
import os
import socket

from dsm.agent.launch import ADVERTISE_ENV, NO_PEER_ENDPOINT, PEER_LISTEN_ENV, check_endpoint
from dsm.errors import ConfigError
from dsm.keys import add_keys_argument
from dsm.trace import TRACE_ENV

DIRECTORY_ENV = "DSM_DIRECTORY"
NODE_ENV = "DSM_NODE"
METRICS_ENV = "DSM_METRICS_PORT"


def endpoint_argument(value: str) -> str:
    """An argparse type: a directory endpoint, refused in one line when malformed."""
    try:
        return check_endpoint(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_directory_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--directory", default=os.environ.get(DIRECTORY_ENV),
                        type=endpoint_argument, required=DIRECTORY_ENV not in os.environ,
                        help=f"the directory's ZeroMQ endpoint (env {DIRECTORY_ENV})")
    parser.add_argument("--node", default=os.environ.get(NODE_ENV),
                        help=f"this node's name (env {NODE_ENV}; default host-pid)")
    parser.add_argument("--trace", default=os.environ.get(TRACE_ENV) or None,
                        help="write this node's protocol trace (JSON lines) to this file "
                             f"(env {TRACE_ENV})")
    parser.add_argument("--metrics", type=int, metavar="PORT",
                        default=int(os.environ[METRICS_ENV]) if os.environ.get(METRICS_ENV) else None,
                        help=f"serve the agent's Prometheus metrics on this port (env {METRICS_ENV})")
    parser.add_argument("--peer-listen", default=os.environ.get(PEER_LISTEN_ENV) or None,
                        metavar="ENDPOINT",
                        help="where this node serves pages to the other nodes (central and "
                             f"distributed managers; env {PEER_LISTEN_ENV}; default a free port "
                             "on every interface, tcp://0.0.0.0:*; '" + NO_PEER_ENDPOINT +
                             "' for none: behind NAT, only the relay manager can serve the node)")
    parser.add_argument("--advertise", default=os.environ.get(ADVERTISE_ENV) or None,
                        metavar="HOST",
                        help="the address the other nodes reach this node at (env "
                             f"{ADVERTISE_ENV}; default the address of the interface that routes "
                             "to the directory; in compose, the container's address)")
    add_keys_argument(parser, "connect with DIR/NODE.key_secret (else DIR/node.key_secret) and "
                              "accept only the directory whose public key is DIR/directory.key")


def default_node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("agent", help="run a node agent")
    add_directory_arguments(parser)
    parser.add_argument("--socket", required=True, help="Unix socket path workloads attach to")
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int,
                        help="exit, as if killed, when the process PID exits (it must be this "
                             "agent's parent; dsm run passes its own)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here: ``dsm run`` and ``dsm launch`` take their arguments from this module, and
    # need not load the agent (numpy, the protocol, the node core: 0.2-0.3 s of their start)
    from dsm.agent.run import run_agent

    return run_agent(args.directory, args.node or default_node_name(), args.socket, args.trace,
                     args.ready_fd, args.parent_pid, args.keys, args.metrics,
                     args.peer_listen, args.advertise)
