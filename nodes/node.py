"""A node that runs a named workload: what a host, or a compose service scaled to N replicas,
runs (``python -m nodes.node``).

1. Starts this node's agent and joins the directory (``--directory``, env ``DSM_DIRECTORY``),
   retrying until ``--join-timeout``: in a compose project the directory may still be starting.
2. Learns its rank: it takes a ticket from a counter in shared memory, under a cluster-wide lock,
   so the nodes are numbered in the order they arrive. With ``--nodes N`` (env ``DSM_NODES``),
   ticket T gives rank ``T mod N`` in run ``T div N``: the first N nodes to arrive form run 0,
   the next N (the same project started again against a directory that kept running) run 1, and
   so on; each run's arrays have names of their own. A node arriving late still gets the next
   rank of its run, and reads everything the others wrote before it came.
3. Runs ``python -m nodes.WORKLOAD --rank R --nodes N [ARGS...]`` attached to the agent
   (``--workload``, env ``DSM_WORKLOAD``; ARGS after ``--``, or env ``DSM_WORKLOAD_ARGS``), with
   ``DSM_RANK``, ``DSM_NODES`` and ``DSM_RUN`` in its environment. The workload prints its result.
4. Stops the agent, which hands every page back to the directory; exits with the workload's
   status. ``SIGTERM`` (``docker stop``) at any point is a clean leave: the workload is stopped,
   the pages are handed back, and the exit status is 0.

The node's name is ``--node`` (env ``DSM_NODE``), else ``HOSTNAME-PID``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import sys
import time

#: agent start failures that a retry cannot cure (the agent's names for them)
NOT_RETRIED = ("AuthenticationFailed", "KeysError")
WORKLOAD_ENV = "DSM_WORKLOAD"
WORKLOAD_ARGS_ENV = "DSM_WORKLOAD_ARGS"
NODES_ENV = "DSM_NODES"
RANK_ENV = "DSM_RANK"
RUN_ENV = "DSM_RUN"
DEFAULT_WORKLOAD = "jacobi"
#: how long a node keeps trying to join a directory that does not answer yet
DEFAULT_JOIN_TIMEOUT_S = 60.0
#: pause between two attempts to join
JOIN_RETRY_S = 1.0
#: how long taking a ticket may wait for the lock
TICKET_LOCK_TIMEOUT_S = 30.0
TICKETS = "nodes.node.tickets"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from dsm.commands.agent import DIRECTORY_ENV, NODE_ENV

    parser = argparse.ArgumentParser(prog="python -m nodes.node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default=os.environ.get(WORKLOAD_ENV, DEFAULT_WORKLOAD),
                        help=f"module of nodes/ to run (env {WORKLOAD_ENV}, "
                             f"default {DEFAULT_WORKLOAD})")
    parser.add_argument("--nodes", type=int, default=_env_int(NODES_ENV),
                        help=f"how many nodes take part (env {NODES_ENV}; required)")
    parser.add_argument("--directory", default=os.environ.get(DIRECTORY_ENV),
                        help=f"the directory's ZeroMQ endpoint (env {DIRECTORY_ENV}; required)")
    parser.add_argument("--node", default=os.environ.get(NODE_ENV),
                        help=f"this node's name (env {NODE_ENV}; default HOSTNAME-PID)")
    parser.add_argument("--join-timeout", type=float, default=DEFAULT_JOIN_TIMEOUT_S,
                        help="seconds to keep trying to join the directory "
                             f"(default {DEFAULT_JOIN_TIMEOUT_S:g})")
    parser.add_argument("--trace", help="write this node's protocol trace to this file")
    parser.add_argument("args", nargs=argparse.REMAINDER,
                        help=f"-- ARGS for the workload (default: env {WORKLOAD_ARGS_ENV})")
    args = parser.parse_args(argv)
    if args.directory is None:
        parser.error(f"--directory (or ${DIRECTORY_ENV}) is required")
    if args.nodes is None or args.nodes < 1:
        parser.error(f"--nodes (or ${NODES_ENV}) must be given, at least 1")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.workload) or \
            importlib.util.find_spec(f"nodes.{args.workload}") is None:
        parser.error(f"no workload {args.workload!r}: it must be a module of nodes/ "
                     f"({', '.join(available_workloads())})")
    extra = args.args[1:] if args.args[:1] == ["--"] else args.args
    if not extra:
        extra = shlex.split(os.environ.get(WORKLOAD_ARGS_ENV, ""))
    args.args = extra
    return args


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    try:
        return int(value) if value else None
    except ValueError:
        sys.exit(f"python -m nodes.node: ${name} must be a whole number, got {value!r}")


def available_workloads() -> list[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    skip = {"__init__", "common", "node", "entrypoint", "directory"}
    return sorted(f[:-3] for f in os.listdir(here) if f.endswith(".py") and f[:-3] not in skip)


def take_ticket(node, nodes: int) -> tuple[int, int]:
    """(rank, run) of this node: ticket T of the counter shared by every node, under a lock."""
    import numpy as np

    counter = node.array(TICKETS, (1,), np.int64)
    lock = node.lock(TICKETS)
    if not lock.acquire(timeout=TICKET_LOCK_TIMEOUT_S):
        raise TimeoutError(f"the lock {TICKETS!r} was not granted within "
                           f"{TICKET_LOCK_TIMEOUT_S:g} s")
    try:
        ticket = int(counter[0])
        counter[0] = ticket + 1
    finally:
        lock.release()
    return ticket % nodes, ticket // nodes


def run_name(nodes: int, run: int) -> str:
    """The same on every node of a run; workloads name their arrays after it."""
    return f"{nodes}x{run}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import dsm
    from dsm.agent.launch import AgentStartError, start_agent
    from dsm.commands.agent import default_node_name
    from dsm.commands.run import Departure, run_attached

    prog = "node"
    name = args.node or default_node_name()
    with Departure() as leave:
        deadline = time.monotonic() + args.join_timeout
        while True:
            try:
                agent = start_agent(args.directory, name, trace_path=args.trace)
                break
            except AgentStartError as exc:
                if leave.requested is not None:
                    return 0
                if exc.kind in NOT_RETRIED:  # waiting does not change the keys
                    print(f"{prog} {name}: {exc}", file=sys.stderr, flush=True)
                    return 2
                if time.monotonic() + JOIN_RETRY_S > deadline:
                    print(f"{prog} {name}: {exc}; gave up after {args.join_timeout:g} s",
                          file=sys.stderr, flush=True)
                    return 2
                print(f"{prog} {name}: {exc}; trying again", file=sys.stderr, flush=True)
                time.sleep(JOIN_RETRY_S)
        try:
            with dsm.attach(socket_path=agent.socket_path) as node:
                rank, run = take_ticket(node, args.nodes)
        except Exception as exc:
            agent.stop()
            print(f"{prog} {name}: could not take a rank: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
            return 0 if leave.requested is not None else 2
        run_id = run_name(args.nodes, run)
        print(f"{prog} {name}: joined {args.directory} as rank {rank} of {args.nodes} "
              f"(run {run_id}); running {args.workload}", flush=True)
        command = [sys.executable, "-m", f"nodes.{args.workload}", "--rank", str(rank),
                   "--nodes", str(args.nodes), *args.args]
        env = {**os.environ, RANK_ENV: str(rank), NODES_ENV: str(args.nodes), RUN_ENV: run_id}
        status = run_attached(agent, command, leave, f"{prog} {name}", env)
        if leave.requested is None and status != 0:
            why = _status_text(status)
            print(f"{prog} {name}: {args.workload} failed ({why})", file=sys.stderr, flush=True)
        return status


def _status_text(status: int) -> str:
    import signal

    if status > 128:
        try:
            sig = signal.Signals(status - 128)
        except ValueError:
            return f"exit status {status}"
        if sig is signal.SIGBUS:
            return ("killed by SIGBUS: a page request went unanswered, the directory is "
                    "unreachable")
        if sig is signal.SIGKILL:
            return "killed by SIGKILL (its agent died, or it was killed)"
        return f"killed by {sig.name}"
    return f"exit status {status}"


if __name__ == "__main__":
    sys.exit(main())
