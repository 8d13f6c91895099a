"""``dsm launch -n N [--directory EP] -- COMMAND...``: N nodes of one's own program on this
machine, the local counterpart of ``mpiexec -n N``.

Without ``--directory`` it starts a directory for the job (``--manager``, ``--shards``,
``--region-size``) and stops it at the end. It starts N ``dsm run`` nodes, each running COMMAND
with its rank and the job's size (``DSM_RANK``, ``DSM_NODES``: ``node.rank``, ``node.size``) and
the job's name (``DSM_RUN``: a job's barriers break together when one of its nodes dies), and
prints every line they write prefixed with their rank (``[rank 2] ...``, as ``mpiexec
--tag-output``), standard error to standard error.

The exit status is 0 when every rank exits 0. When a rank fails, a line names it and how it
ended (``rank 2 exited with status 3``, ``rank 1 killed by SIGSEGV``), the other ranks are asked
to leave (a program waiting for the failed rank would otherwise wait forever, as ``mpiexec``
aborts a job), and the status is the first failing rank's. Ctrl-C asks every rank to leave as
Ctrl-C asks ``dsm run``: each rank's ``dsm run`` gets SIGINT and passes it on to its command, which
may unwind (``except KeyboardInterrupt``) before the node hands its pages back; the status is then
130. SIGTERM asks every rank to leave as ``docker stop`` does.
"""

from __future__ import annotations

import argparse
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dsm.agent.launch import AGENT_STOP_TIMEOUT_S, dsm_command, python_env
from dsm.commands.agent import endpoint_argument
from dsm.commands.local_cluster import DIRECTORY_START_TIMEOUT_S, DemoError, LocalCluster
from dsm.commands.run import COMMAND_STOP_TIMEOUT_S, INTERRUPT_GRACE_S, describe_status
from dsm.keys import announce_open
from dsm.launchers import RANK_ENV, RUN_ENV, SIZE_ENV
from dsm.managers import MANAGERS

#: the region of a directory the job starts for itself, unless --region-size says
DEFAULT_REGION_BYTES = 1 << 30
#: how long the ranks get to leave once asked before they are killed: each ``dsm run`` stops its
#: command (a SIGINT's grace, then COMMAND_STOP_TIMEOUT_S after SIGTERM), then its agent hands
#: the node's pages back (AGENT_STOP_TIMEOUT_S)
LEAVE_TIMEOUT_S = INTERRUPT_GRACE_S + COMMAND_STOP_TIMEOUT_S + AGENT_STOP_TIMEOUT_S
#: how much of a rank's output is read at once
READ_BYTES = 65536


@dataclass
class Rank:
    rank: int
    proc: subprocess.Popen
    #: partial lines of stdout and stderr, by file descriptor
    pending: dict[int, bytes] = field(default_factory=dict)
    status: int | None = None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "launch", help="run N nodes of a program on this machine (like mpiexec -n N)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--nodes", type=int, required=True, metavar="N",
                        help="how many nodes (ranks 0..N-1)")
    parser.add_argument("--directory", default=None, metavar="ENDPOINT", type=endpoint_argument,
                        help="a running directory to join (default: start one for the job)")
    parser.add_argument("--manager", choices=MANAGERS, default=None,
                        help="the manager of the directory started for the job")
    parser.add_argument("--shards", type=int, default=1,
                        help="manager shards of the directory started for the job")
    parser.add_argument("--region-size", type=int, default=DEFAULT_REGION_BYTES,
                        metavar="BYTES", help="the region of the directory started for the job")
    parser.add_argument("--keys", default=None, metavar="DIR",
                        help="the cluster's CurveZMQ keys (dsm keygen)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    parser.set_defaults(func=launch)


class Launch:
    """The ranks of one job and their output; ``stop`` in a ``finally``."""

    def __init__(self, endpoint: str, nodes: int, command: list[str], keys: str | None):
        self.job = f"launch-{os.getpid()}-{secrets.token_hex(3)}"
        self.ranks: list[Rank] = []
        self.failed: Rank | None = None
        self.leaving_since: float | None = None
        #: the signal the ranks were asked to leave with
        self.asked: int | None = None
        for rank in range(nodes):
            env = python_env({**os.environ, RANK_ENV: str(rank), SIZE_ENV: str(nodes),
                              RUN_ENV: self.job})
            env.pop("DSM_AGENT_SOCKET", None)
            argv = dsm_command("run", "--directory", endpoint, "--node", f"{self.job}-{rank}")
            if keys is not None:
                argv += ["--keys", keys]
            # a session of its own: a Ctrl-C in the terminal reaches this process only, which
            # passes it on to every rank's dsm run (and only once to each command: dsm run
            # passes on a SIGINT a process sent, not a terminal's)
            proc = subprocess.Popen([*argv, "--", *command], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                    start_new_session=True)
            self.ranks.append(Rank(rank, proc))

    def run(self, stop_requested: Callable[[], int | None]) -> int:
        """Pump the ranks' output until every one has exited; the job's status.
        ``stop_requested``: the signal this process was asked to stop with, if any."""
        streams = {}
        for r in self.ranks:
            for stream in (r.proc.stdout, r.proc.stderr):
                streams[stream.fileno()] = (r, stream is r.proc.stderr)
        while streams:
            if stop_requested() is not None:
                self.ask_to_leave(stop_requested())
            if self.leaving_since is not None and \
                    time.monotonic() - self.leaving_since > LEAVE_TIMEOUT_S:
                self.kill()
            ready, _, _ = select.select(list(streams), [], [], 0.2)
            for fd in ready:
                rank, is_err = streams[fd]
                chunk = os.read(fd, READ_BYTES)
                if not chunk:
                    self._flush_partial(rank, fd, is_err)
                    del streams[fd]
                    continue
                self._write(rank, fd, chunk, is_err)
            self._reap()
        for r in self.ranks:
            r.status = r.proc.wait()
            self._note_exit(r)
        if stop_requested() is not None and self.failed is None:
            return 130  # as a shell reports a job interrupted by Ctrl-C
        return self.failed.status if self.failed is not None else 0

    def _write(self, rank: Rank, fd: int, chunk: bytes, is_err: bool) -> None:
        data = rank.pending.pop(fd, b"") + chunk
        *lines, rest = data.split(b"\n")
        if rest:
            rank.pending[fd] = rest
        out = sys.stderr if is_err else sys.stdout
        for line in lines:
            out.write(f"[rank {rank.rank}] {line.decode(errors='replace')}\n")
        out.flush()

    def _flush_partial(self, rank: Rank, fd: int, is_err: bool) -> None:
        rest = rank.pending.pop(fd, b"")
        if rest:
            self._write(rank, fd, rest + b"\n", is_err)

    def _reap(self) -> None:
        for r in self.ranks:
            if r.status is None and r.proc.poll() is not None:
                r.status = r.proc.returncode
                self._note_exit(r)

    def _note_exit(self, r: Rank) -> None:
        if r.status == 0 or self.failed is not None or self.leaving_since is not None:
            return
        self.failed = r
        print(f"dsm launch: rank {r.rank} {describe_status(r.status)}; asking the other ranks "
              "to leave", file=sys.stderr, flush=True)
        self.ask_to_leave()

    def ask_to_leave(self, signum: int = signal.SIGTERM) -> None:
        """``signum`` to every rank still running, unless they were asked already (SIGTERM
        after SIGINT still goes): its ``dsm run`` stops its command (SIGINT: passed on, and a
        grace to unwind), then hands the node's pages back."""
        if self.asked == signum or self.asked == signal.SIGTERM:
            return
        self.asked = signum
        if self.leaving_since is None:
            self.leaving_since = time.monotonic()
        for r in self.ranks:
            if r.proc.poll() is None:
                try:
                    r.proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    def kill(self) -> None:
        for r in self.ranks:
            try:
                os.killpg(r.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self) -> None:
        if any(r.proc.poll() is None for r in self.ranks):
            self.ask_to_leave()
            deadline = time.monotonic() + LEAVE_TIMEOUT_S
            while any(r.proc.poll() is None for r in self.ranks) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.kill()
        for r in self.ranks:
            r.proc.wait()
            for stream in (r.proc.stdout, r.proc.stderr):
                stream.close()


def launch(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("dsm launch: no command given (dsm launch -n N -- COMMAND...)", file=sys.stderr)
        return 2
    if args.nodes < 1:
        print(f"dsm launch: -n must be at least 1, got {args.nodes}", file=sys.stderr)
        return 2
    announce_open(args.keys, "this job's cluster")  # once for the job: its ranks do not repeat it
    stop: dict[str, int | None] = {"signal": None}

    def on_signal(signum: int, frame: Any) -> None:
        if stop["signal"] != signal.SIGTERM:  # SIGTERM after SIGINT hurries; not the reverse
            stop["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster = None
    job = None
    workdir = None
    try:
        endpoint = args.directory
        if endpoint is None:
            workdir = Path(tempfile.mkdtemp(prefix="dsm-launch-"))
            cluster = LocalCluster(workdir, dict(os.environ), keys_dir=args.keys,
                                   manager=args.manager, shards=args.shards)
            try:
                endpoint = cluster.start_directory(args.region_size, DIRECTORY_START_TIMEOUT_S)
            except DemoError as exc:
                print(f"dsm launch: the job's directory did not start: {exc}\n"
                      f"{cluster.log_tails()}", file=sys.stderr)
                return 1
        job = Launch(endpoint, args.nodes, command, args.keys)
        return job.run(lambda: stop["signal"])
    finally:
        if job is not None:
            job.stop()
        if cluster is not None:
            cluster.stop()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        for s, handler in old.items():
            signal.signal(s, handler)
