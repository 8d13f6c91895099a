"""A node that runs a named workload: what a host, a compose service scaled to N replicas, a pod
of the Kubernetes StatefulSet or a task of a Slurm or MPI job runs (``dsm-node``, or
``python -m dsm.programs.node``).

1. Starts this node's agent and joins the directory (``--directory``, env ``DSM_DIRECTORY``),
   retrying until ``--join-timeout``: in a compose project the directory may still be starting.
2. Learns its rank. Under a launcher (Slurm, Open MPI, PMI: ``dsm/launchers.py``), when
   ``DSM_NODES`` is not set, the launcher's rank and size are used, and the run is named after
   the launcher's job (a ticket when it names none). Otherwise it takes a ticket from a counter
   in shared memory, under a cluster-wide lock, so the nodes are numbered in the order they
   arrive. With ``--nodes N`` (env ``DSM_NODES``),
   ticket T gives rank ``T mod N`` in run ``T div N``: the first N nodes to arrive form run 0,
   the next N (the same project started again against a directory that kept running) run 1, and
   so on; each run's arrays have names of their own. A node arriving late still gets the next
   rank of its run, and reads everything the others wrote before it came.
3. Runs ``python -m dsm.workloads.WORKLOAD --rank R --nodes N [ARGS...]`` attached to the agent
   (``--workload``, env ``DSM_WORKLOAD``; ARGS after ``--``, or env ``DSM_WORKLOAD_ARGS``), with
   ``DSM_RANK``, ``DSM_NODES`` and ``DSM_RUN`` in its environment. The workload prints its result.
4. Stops the agent, which hands every page back to the directory; exits with the workload's
   status. ``SIGTERM`` (``docker stop``) at any point is a clean leave: the workload is stopped,
   the pages are handed back, and the exit status is 0.

The node's name is ``--node`` (env ``DSM_NODE``), else ``HOSTNAME-PID``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from dsm.errors import ConfigError
from dsm.launchers import NODES_ENV_HELP, RANK_ENV, RUN_ENV, SIZE_ENV as NODES_ENV, placement
from dsm.workloads import WORKLOADS, module_of

#: agent start failures that a retry cannot cure (the agent's names for them)
NOT_RETRIED = ("AuthenticationFailed", "KeysError", "UffdUnavailable")
WORKLOAD_ENV = "DSM_WORKLOAD"
WORKLOAD_ARGS_ENV = "DSM_WORKLOAD_ARGS"
DEFAULT_WORKLOAD = "jacobi"
#: how long a node keeps trying to join a directory that does not answer yet
DEFAULT_JOIN_TIMEOUT_S = 60.0
#: pause between two attempts to join
JOIN_RETRY_S = 1.0
#: how long taking a ticket may wait for the lock
TICKET_LOCK_TIMEOUT_S = 30.0
#: the array and lock of the tickets (the name they had when this program was nodes/node.py)
TICKETS = "nodes.node.tickets"
PROG = "dsm-node"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from dsm.commands.agent import DIRECTORY_ENV, NODE_ENV

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default=os.environ.get(WORKLOAD_ENV, DEFAULT_WORKLOAD),
                        help=f"the workload to run: {', '.join(WORKLOADS)} (env {WORKLOAD_ENV}, "
                             f"default {DEFAULT_WORKLOAD})")
    parser.add_argument("--nodes", type=int, default=None,
                        help=f"how many nodes take part (env {NODES_ENV}, else {NODES_ENV_HELP}; "
                             "required)")
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
    try:
        args.placement = placement()
    except ConfigError as exc:
        parser.error(str(exc))
    if args.nodes is None and args.placement is not None:
        args.nodes = args.placement.size
    if args.directory is None:
        parser.error(f"--directory (or ${DIRECTORY_ENV}) is required")
    if args.nodes is None or args.nodes < 1:
        parser.error(f"--nodes (or ${NODES_ENV}, or a launcher's size: {NODES_ENV_HELP}) must be "
                     "given, at least 1")
    if args.placement is not None and args.placement.size != args.nodes:
        args.placement = None  # --nodes says otherwise: the launcher's rank means nothing here
    if args.workload not in WORKLOADS:
        parser.error(f"no workload {args.workload!r}: the workloads are "
                     f"{', '.join(available_workloads())}")
    extra = args.args[1:] if args.args[:1] == ["--"] else args.args
    if not extra:
        extra = shlex.split(os.environ.get(WORKLOAD_ARGS_ENV, ""))
    args.args = extra
    return args


def available_workloads() -> list[str]:
    return sorted(WORKLOADS)


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

    prog = "node"  # the lines a node prints start "node NAME:"
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
                if exc.kind in NOT_RETRIED:  # waiting changes neither the keys nor the kernel
                    print(f"{prog} {name}: {exc}", file=sys.stderr, flush=True)
                    return 2
                if time.monotonic() + JOIN_RETRY_S > deadline:
                    print(f"{prog} {name}: {exc}; gave up after {args.join_timeout:g} s",
                          file=sys.stderr, flush=True)
                    return 2
                print(f"{prog} {name}: {exc}; trying again", file=sys.stderr, flush=True)
                time.sleep(JOIN_RETRY_S)
        where = args.placement
        try:
            if where is not None and where.rank is not None and where.job is not None:
                # the launcher numbered the tasks and named the job: nothing to take
                rank, run_id = where.rank, f"{where.source}-{where.job}"
            else:
                with dsm.attach(socket_path=agent.socket_path) as node:
                    ticket_rank, run = take_ticket(node, args.nodes)
                rank = ticket_rank if where is None or where.rank is None else where.rank
                run_id = run_name(args.nodes, run)
        except Exception as exc:
            agent.stop()
            print(f"{prog} {name}: could not take a rank: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
            return 0 if leave.requested is not None else 2
        how = "" if where is None or where.rank is None else f" (from {where.source})"
        print(f"{prog} {name}: joined {args.directory} as rank {rank}{how} of {args.nodes} "
              f"(run {run_id}); running {args.workload}", flush=True)
        command = [sys.executable, "-m", module_of(args.workload), "--rank", str(rank),
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
