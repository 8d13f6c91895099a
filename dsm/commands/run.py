"""``dsm run --directory ENDPOINT -- COMMAND...``: start this node's agent and run COMMAND
attached to it; the exit status is COMMAND's.

``SIGTERM`` (``docker stop``) or ``SIGINT`` means *leave the cluster*: COMMAND gets ``SIGTERM``
(and ``SIGKILL`` after ``COMMAND_STOP_TIMEOUT_S``), then the agent hands every page it holds
back to the directory, owned pages with their contents, and the exit status is 0 if it did.

Under a launcher (``srun``, ``mpirun``, a PMI launcher) and without ``DSM_NODES``, COMMAND gets the
launcher's rank and size as ``DSM_RANK`` and ``DSM_NODES`` (and ``DSM_RUN``, from the job's id),
which the workloads of ``dsm.workloads`` and ``node.rank``/``node.size`` read
(``dsm/launchers.py``).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

from dsm import local
from dsm.agent.launch import AgentStartError, StartedAgent, start_agent
from dsm.commands.agent import add_directory_arguments, default_node_name
from dsm.clusterstop import EXIT_CLUSTER_STOPPED, stopped_with_cluster
from dsm.errors import ConfigError
from dsm.launchers import RUN_ENV, placement, workload_env

#: how long the command may take to exit after the SIGTERM of a leave
COMMAND_STOP_TIMEOUT_S = 10.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run a command as a workload on a new node")
    add_directory_arguments(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    parser.set_defaults(func=run)


class Departure:
    """While active, SIGTERM and SIGINT do not kill this process: they ask it to leave (and
    are passed on to the command, once there is one, as SIGTERM).

    The order of a leave is this process's to decide: the command is stopped first, then the
    agent hands the pages back. The agent runs in a session of its own (``start_agent``), so
    that a Ctrl-C, which reaches every process of the terminal's foreground group, reaches
    this process and the command but not the agent."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: int | None = None  #: the signal that asked to leave
        self.child: subprocess.Popen | None = None
        #: the signal that killed the command, if one did
        self.killed_by: int | None = None
        self._old: dict[int, Any] = {}
        #: written by the signal handler: wakes ``wait_child`` so that it starts its deadline
        self._wake_r, self._wake_w = -1, -1

    def __enter__(self) -> "Departure":
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._old = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = signum
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:  # full: a wake-up is pending anyway
            pass
        self.terminate_child()

    def terminate_child(self) -> None:
        if self.child is not None and self.child.poll() is None:
            try:
                self.child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def start(self, command: list[str], **popen: Any) -> subprocess.Popen:
        self.child = subprocess.Popen(command, **popen)
        if self.requested is not None:  # the signal came while the command was starting
            self.terminate_child()
        return self.child

    def wait_child(self) -> int:
        """The command's exit status (``128 + N`` for a signal N, as a shell says), bounded by
        ``COMMAND_STOP_TIMEOUT_S`` once a leave was asked for (SIGKILL then), even if it was
        asked for during the wait."""
        child = self.child
        pidfd = os.pidfd_open(child.pid)  # readable once it exits (it is ours to reap: not yet)
        try:
            deadline = None
            while child.poll() is None:
                if self.requested is not None and deadline is None:
                    deadline = time.monotonic() + COMMAND_STOP_TIMEOUT_S
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    child.kill()
                    child.wait()
                    break
                ready, _, _ = select.select([pidfd, self._wake_r], [], [], left)
                if self._wake_r in ready:
                    os.read(self._wake_r, 64)
        finally:
            os.close(pidfd)
        status = child.returncode
        if status < 0:
            self.killed_by = -status
        return status if status >= 0 else 128 - status


def describe_status(status: int) -> str:
    """How a command ended, in words, from the status a shell (and ``dsm run``) reports: a
    command killed by signal N is 128 + N."""
    if status > 128:
        try:
            return f"killed by {signal.Signals(status - 128).name} (status {status})"
        except ValueError:
            pass
    return f"exited with status {status}"


def run_attached(agent: StartedAgent, command: list[str], leave: Departure, prog: str,
                 env: dict[str, str] | None = None) -> int:
    """Run ``command`` attached to ``agent``, then stop the agent (it hands its pages back).
    The command's status; 0 after a clean leave (the agent exited 0), 1 otherwise."""
    status = 0
    try:
        if leave.requested is None:
            child_env = {**(env if env is not None else os.environ),
                         local.AGENT_SOCKET_ENV: agent.socket_path}
            try:
                leave.start(command, env=child_env)
            except OSError as exc:
                print(f"{prog}: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
                return 127
            status = leave.wait_child()
            if leave.killed_by is not None and leave.requested is None:
                print(f"{prog}: {command[0]} was {describe_status(status)}", file=sys.stderr,
                      flush=True)
    finally:
        agent_status = agent.stop()
    if agent_status == EXIT_CLUSTER_STOPPED:  # its directory stopped too (dsm/clusterstop.py)
        how = "" if leave.requested is None else f" while leaving on {signal.Signals(leave.requested).name}"
        print(f"{prog}: {stopped_with_cluster(how)}", file=sys.stderr, flush=True)
        return 0 if leave.requested is not None else status
    if leave.requested is not None:
        how = signal.Signals(leave.requested).name
        if agent_status == 0:
            print(f"{prog}: left the cluster on {how}: every page handed back to the directory",
                  file=sys.stderr, flush=True)
            return 0
        print(f"{prog}: the node agent exited with status {agent_status} while leaving on {how}",
              file=sys.stderr, flush=True)
        return 1
    if agent_status != 0:  # the command ended, but the node could not leave cleanly
        print(f"{prog}: the node agent exited with status {agent_status}: the directory did not "
              "confirm this node's leave (see the agent's log)", file=sys.stderr, flush=True)
        return status or 1
    return status


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("dsm run: no command given (dsm run --directory ENDPOINT -- COMMAND...)",
              file=sys.stderr)
        return 2
    try:
        launcher_env = workload_env(placement())
    except ConfigError as exc:
        print(f"dsm run: {exc}", file=sys.stderr)
        return 2
    if os.environ.get(RUN_ENV):
        launcher_env.pop(RUN_ENV, None)  # the user named the run
    with Departure() as leave:
        try:
            agent = start_agent(args.directory, args.node or default_node_name(),
                                trace_path=args.trace, keys_dir=args.keys,
                                metrics_port=args.metrics, peer_listen=args.peer_listen,
                                advertise=args.advertise)
        except AgentStartError as exc:
            print(f"dsm run: {exc}", file=sys.stderr)
            return 0 if leave.requested is not None else 2
        return run_attached(agent, command, leave, "dsm run", {**os.environ, **launcher_env})
