"""``dsm run --directory ENDPOINT -- COMMAND...``: start this node's agent and run COMMAND
attached to it; the exit status is COMMAND's.

``SIGTERM`` (``docker stop``) means *leave the cluster*: COMMAND gets ``SIGTERM`` (and ``SIGKILL``
after ``COMMAND_STOP_TIMEOUT_S``), then the agent hands every page it holds back to the
directory, owned pages with their contents, and the exit status is 0 if it did.

``SIGINT`` (Ctrl-C) is the same leave, but COMMAND is interrupted as it would be if it ran alone:
it gets ``SIGINT`` (a Python program raises ``KeyboardInterrupt`` and runs its ``except`` and
``finally`` blocks), ``SIGTERM`` only if it still runs ``INTERRUPT_GRACE_S`` later, and the exit
status is COMMAND's own (130 if SIGINT ended it), once the pages are handed back.

Under a launcher (``srun``, ``mpirun``, a PMI launcher) and without ``DSM_NODES``, COMMAND gets the
launcher's rank and size as ``DSM_RANK`` and ``DSM_NODES`` (and ``DSM_RUN``, from the job's id),
which the workloads of ``dsm.workloads`` and ``node.rank``/``node.size`` read
(``dsm/launchers.py``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

from dsm.agent.launch import (EXIT_CUT_OFF, EXIT_LEAVE_UNACKNOWLEDGED, AgentStartError,
                              StartedAgent, python_env, start_agent)
from dsm.commands.agent import add_directory_arguments, default_node_name
from dsm.clusterstop import EXIT_CLUSTER_STOPPED, stopped_with_cluster
from dsm.errors import ConfigError
from dsm.launchers import (AGENT_SOCKET_ENV, ATOMICS_ENDPOINT_ENV, RUN_ENV, placement,
                           workload_env)

#: how long the command may take to exit after the SIGTERM of a leave
COMMAND_STOP_TIMEOUT_S = 10.0
#: how long the command may take to exit after a SIGINT (Ctrl-C) before it gets the SIGTERM of
#: a leave (and COMMAND_STOP_TIMEOUT_S later SIGKILL). Python raises KeyboardInterrupt at the
#: next bytecode, so a program's ``except KeyboardInterrupt`` and ``finally`` blocks start at
#: once, and closing its files and its node, or saving a last result, takes well under a second;
#: a program inside a long C call (a numpy operation on a large array, a page fault whose page
#: is on its way) sees the signal when the call returns, a few seconds at most. 5 s lets both
#: unwind, and is about as long as someone at a terminal waits before pressing Ctrl-C again.
INTERRUPT_GRACE_S = 5.0
#: ``si_code`` of a signal the kernel sent on its own (``SI_KERNEL``, <asm-generic/siginfo.h>):
#: what a terminal's Ctrl-C is (the tty driver signals the foreground process group); ``kill``
#: is ``SI_USER`` (0)
SI_KERNEL = 0x80
#: what the agent exits with when it has said why itself (its log): dsm run does not repeat it
AGENT_SAID_WHY = (EXIT_CUT_OFF, EXIT_LEAVE_UNACKNOWLEDGED)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run a command as a workload on a new node")
    add_directory_arguments(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    parser.set_defaults(func=run)


def shell_status(returncode: int) -> int:
    """A ``Popen.returncode`` as a shell reports it: ``128 + N`` for a process killed by
    signal N."""
    return returncode if returncode >= 0 else 128 - returncode


class Departure:
    """While active, SIGTERM and SIGINT do not kill this process: they ask it to leave, and
    are passed on to the command, once there is one.

    SIGTERM: the command gets SIGTERM, and SIGKILL ``COMMAND_STOP_TIMEOUT_S`` later. SIGINT: the
    command gets SIGINT, then, if it still runs ``INTERRUPT_GRACE_S`` later, what SIGTERM gives
    it. A terminal's Ctrl-C reaches the command by itself (the terminal signals its whole
    foreground process group, which the command shares with this process): then it is not
    passed on, since a second SIGINT would interrupt the program's ``except KeyboardInterrupt``
    block. Only a SIGINT sent by a process (``kill``, ``dsm launch``) is. To tell them apart the
    signals are blocked while this is active and taken with ``sigtimedwait``, whose siginfo
    says who sent each (``SI_KERNEL``: the terminal); SIGCHLD, blocked too, wakes the wait
    for the command. The children start with nothing blocked (``preexec_fn``: this process
    has one thread).

    The order of a leave is this process's to decide: the command is stopped first, then the
    agent hands the pages back. The agent runs in a session of its own (``start_agent``), so
    that a Ctrl-C, which reaches every process of the terminal's foreground group, reaches
    this process and the command but not the agent."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    _BLOCKED = (*SIGNALS, signal.SIGCHLD)

    def __init__(self) -> None:
        self._requested: int | None = None
        self.child: subprocess.Popen | None = None
        #: the signal that killed the command, if one did
        self.killed_by: int | None = None
        self._old_mask: set[signal.Signals] = set()
        #: when the command gets SIGTERM (a SIGINT's grace ends), and when SIGKILL
        self._term_at: float | None = None
        self._kill_at: float | None = None

    def __enter__(self) -> "Departure":
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._BLOCKED)
        return self

    def __exit__(self, *exc: object) -> None:
        self._take(self._BLOCKED)  # not left pending, for the old mask to deliver
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)

    @property
    def requested(self) -> int | None:
        """The signal that asked to leave: SIGTERM once one came, else SIGINT; None if none
        has (the signals that came since the last look are taken now)."""
        self._take(self.SIGNALS)
        return self._requested

    def _take(self, signals: tuple[int, ...]) -> None:
        while (info := signal.sigtimedwait(signals, 0)) is not None:
            self._on_signal(info)

    def _running(self) -> bool:
        return self.child is not None and self.child.poll() is None

    def _on_signal(self, info: Any) -> None:
        if info.si_signo == signal.SIGTERM:
            self._requested = signal.SIGTERM
            if self._running():
                self._stop_child()
        elif info.si_signo == signal.SIGINT:
            if self._requested is None:
                self._requested = signal.SIGINT
            if self._running():
                if not self._child_had(info):
                    self._signal_child(signal.SIGINT)
                if self._term_at is None and self._kill_at is None:
                    self._term_at = time.monotonic() + INTERRUPT_GRACE_S
        # SIGCHLD: a child exited; the wait looks

    def _child_had(self, info: Any) -> bool:
        """Whether the SIGINT ``info`` describes reached the command too: a terminal's, to a
        process group the command is still in."""
        if info.si_code != SI_KERNEL:
            return False
        try:
            return os.getpgid(self.child.pid) == os.getpgrp()
        except ProcessLookupError:
            return True  # gone: nothing to pass on

    def _signal_child(self, signum: int) -> None:
        try:
            self.child.send_signal(signum)
        except ProcessLookupError:
            pass

    def _stop_child(self) -> None:
        """SIGTERM to the command, SIGKILL ``COMMAND_STOP_TIMEOUT_S`` after the first."""
        self._term_at = None
        if self._kill_at is None:
            self._kill_at = time.monotonic() + COMMAND_STOP_TIMEOUT_S
        self._signal_child(signal.SIGTERM)

    def start(self, command: list[str], **popen: Any) -> subprocess.Popen:
        old_mask = self._old_mask

        def as_a_program_expects() -> None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            # the signals this process passes on must reach it, even if this process was started
            # with them ignored (``cmd &`` in a script ignores SIGINT): a Python program installs
            # its KeyboardInterrupt only over SIGINT's default
            for signum in self.SIGNALS:
                signal.signal(signum, signal.SIG_DFL)

        self.child = subprocess.Popen(command, preexec_fn=as_a_program_expects, **popen)
        self._take(self.SIGNALS)  # what came while it started is passed on
        return self.child

    def wait_child(self, name: str = "the command",
                   say: Callable[[str], None] | None = None) -> int:
        """The command's exit status (``128 + N`` for a signal N, as a shell says), bounded
        once a leave was asked for, even during the wait: SIGKILL ``COMMAND_STOP_TIMEOUT_S``
        after its SIGTERM, which a SIGINT gives it ``INTERRUPT_GRACE_S`` after its SIGINT (and
        ``say`` says so, naming the command ``name``)."""
        child = self.child
        while True:
            self._take(self._BLOCKED)
            if child.poll() is not None:
                break
            now = time.monotonic()
            if self._kill_at is not None and now >= self._kill_at:
                child.kill()
                child.wait()
                break
            if self._term_at is not None and now >= self._term_at:
                if say is not None:
                    say(f"{name} still runs {INTERRUPT_GRACE_S:g} s after SIGINT: sending SIGTERM")
                self._stop_child()
                continue
            due = min((t for t in (self._term_at, self._kill_at) if t is not None), default=None)
            # a SIGCHLD that came since the poll above is pending: the wait returns at once
            if due is None:
                info = signal.sigwaitinfo(self._BLOCKED)
            else:
                info = signal.sigtimedwait(self._BLOCKED, max(0.0, due - now))
            if info is not None:
                self._on_signal(info)
        if child.returncode < 0:
            self.killed_by = -child.returncode
        return shell_status(child.returncode)


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
                 env: dict[str, str] | None = None, *, interrupted_status: bool = False) -> int:
    """Run ``command`` attached to ``agent``, then stop the agent (it hands its pages back).

    The status: the command's; 1 if it was 0 but the agent did not leave cleanly. After a
    leave asked for by a signal, 0 if the agent left cleanly, 1 otherwise; but with
    ``interrupted_status`` (``dsm run``), after SIGINT the command's own, as without dsm (130
    if SIGINT ended it; the 130 of a shell if the command never started)."""
    say = lambda line: print(f"{prog}: {line}", file=sys.stderr, flush=True)  # noqa: E731
    status: int | None = None
    try:
        if leave.requested is None:
            child_env = python_env({**(env if env is not None else os.environ),
                                    AGENT_SOCKET_ENV: agent.socket_path})
            try:
                leave.start(command, env=child_env)
            except OSError as exc:
                say(f"cannot run {command[0]!r}: {exc.strerror}")
                return 127
            status = leave.wait_child(command[0], say)
            if leave.killed_by is not None and leave.requested is None:
                say(f"{command[0]} was {describe_status(status)}")
    finally:
        agent_status = agent.stop()
    requested = leave.requested
    how = "" if requested is None else f" while leaving on {signal.Signals(requested).name}"
    left = agent_status == 0
    if agent_status == EXIT_CLUSTER_STOPPED:  # its directory stopped too (dsm/clusterstop.py)
        say(stopped_with_cluster(how))
        left = True
    elif left and requested is not None:
        say(f"left the cluster on {signal.Signals(requested).name}: every page handed back to "
            "the directory")
    elif not left and agent_status not in AGENT_SAID_WHY:  # else its line above says why
        say(f"the node agent {describe_status(shell_status(agent_status))}{how}: the directory "
            "did not confirm this node's leave")
    if requested == signal.SIGINT and interrupted_status:
        status = 128 + signal.SIGINT if status is None else status
    elif requested is not None:
        return 0 if left else 1
    return status if left else status or 1


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
            if leave.requested == signal.SIGINT:
                return 128 + signal.SIGINT
            return 0 if leave.requested is not None else 2
        # the workload may reach the directory itself for atomics (dsm/atomics.py): where it is
        env = {**os.environ, **launcher_env}
        env.pop(ATOMICS_ENDPOINT_ENV, None)
        if not args.keys:  # a workload holds no keys: with them, its atomics go via the agent
            env[ATOMICS_ENDPOINT_ENV] = args.directory
        return run_attached(agent, command, leave, "dsm run", env, interrupted_status=True)
