"""The processes of a benchmark: a directory, the baselines' servers (echo, pull), node workers.
Every start and every answer waits with a deadline; ``Processes.close()`` kills whatever is still
alive."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import zmq

from dsm.keys import KEYS_ENV
from dsm.launchers import ATOMICS_ENDPOINT_ENV, RANK_ENV, RUN_ENV, SIZE_ENV
from dsm.trace import TRACE_ENV

START_TIMEOUT_S = 20.0
#: deadline of one worker command unless the caller gives one
COMMAND_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0


class BenchProcessError(RuntimeError):
    pass


class Child:
    """A child process in its own session (so that its own children, a node's agent, die with
    it), its stderr in a log file."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, stdin: bool = False,
                 env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self._log, start_new_session=True, env=env,
        )
        self._buf = b""
        #: where a baseline server listens (set once it said so)
        self.endpoint: str | None = None

    def line(self, timeout_s: float, what: str | None = None) -> str:
        """The next line of the child's stdout, within ``timeout_s``."""
        what = what or self.name
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                raise BenchProcessError(f"{what}: no answer within {timeout_s:.0f} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                code = self.proc.poll()
                raise BenchProcessError(f"{what}: the process closed its output (exit status {code})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def kill(self) -> None:
        """SIGKILL the child's whole session, reap the child, close our ends."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session; a node's agent exits with it
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._log.close()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text()[-chars:]
        except OSError:
            return ""


class Driven(Child):
    """A child that answers commands: one JSON object a line on its stdin, one JSON reply a
    line on its stdout (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``)."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path,
                 env: dict[str, str] | None = None):
        super().__init__(name, cmd, log_dir, stdin=True, env=env)

    def send(self, op: str, **args: Any) -> None:
        self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self.proc.stdin.flush()

    def wait(self, timeout_s: float = COMMAND_TIMEOUT_S) -> dict:
        reply = json.loads(self.line(timeout_s, self.name))
        if not reply.pop("ok"):
            raise BenchProcessError(f"{self.name} failed:\n{reply.get('error')}")
        return reply

    def call(self, op: str, deadline_s: float = COMMAND_TIMEOUT_S, **args: Any) -> dict:
        """Run one command; its answer must come within ``deadline_s``."""
        self.send(op, **args)
        return self.wait(deadline_s)


class Worker(Driven):
    """A node process running ``dsm.bench.worker``."""

    def __init__(self, directory: str, name: str, log_dir: Path, keys_dir: str | None = None,
                 trace_path: Path | None = None, job: dict[str, str] | None = None):
        """``job``: the rank variables (``DSM_RANK``, ``DSM_NODES``, ``DSM_RUN``) that make it a
        rank of a job."""
        # the worker's agent takes its keys (None: it runs open) and its trace file from the
        # environment
        env = {k: v for k, v in os.environ.items() if k not in (KEYS_ENV, TRACE_ENV)}
        if keys_dir is not None:
            env[KEYS_ENV] = str(keys_dir)
        if trace_path is not None:
            env[TRACE_ENV] = str(trace_path)
        env.update(job or {})
        if keys_dir is None:  # its atomics go straight to the directory, as under dsm run
            env[ATOMICS_ENDPOINT_ENV] = directory
        super().__init__(f"node-{name}", [sys.executable, "-m", "dsm.bench.worker", directory,
                                          name], log_dir, env)
        self.node = name
        self.agent_pid: int | None = None

    def wait_attached(self, timeout_s: float = START_TIMEOUT_S) -> None:
        reply = json.loads(self.line(timeout_s, f"node {self.node} attach"))
        if not reply.get("ok"):
            raise BenchProcessError(f"node {self.node} could not attach:\n{reply.get('error')}")
        self.agent_pid = find_child(self.proc.pid, "agent")


def find_child(pid: int, word: str) -> int | None:
    """The child of ``pid`` whose command line holds ``word`` (``dsm agent``: the node's agent)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return None
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if word.encode() in argv:
            return child
    return None


def children_of(pid: int) -> list[int]:
    """The child processes of ``pid`` (a coordinator's shards)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def cpu_ns(pid: int | None) -> int:
    """CPU time used so far by every thread of ``pid`` (libzmq's I/O threads too), in ns."""
    return sched_ns(pid)[0]


def sched_ns(pid: int | None) -> tuple[int, int, int]:
    """What every thread of ``pid`` (libzmq's I/O threads too) has had of the CPUs so far: its
    time on a CPU and its time runnable but waiting for one (the run queue: on a loaded
    machine, each thread a message wakes waits there before it runs), in ns, and how many times
    a thread of it was put on a CPU (its wake-ups: each costs a context switch, and a message
    through ZeroMQ wakes its I/O thread and then the receiving thread)."""
    if pid is None:
        return 0, 0, 0
    running = waiting = slices = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0, 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                on_cpu, queued, timeslices = f.read().split()[:3]
            running, waiting = running + int(on_cpu), waiting + int(queued)
            slices += int(timeslices)
        except (OSError, ValueError):
            pass
    return running, waiting, slices


class Processes:
    """Every child of one benchmark run; ``close()`` in a ``finally``."""

    def __init__(self, log_dir: Path, trace_dir: Path | None = None):
        self.log_dir = log_dir
        #: where the directory and the nodes write their protocol traces (None: no trace)
        self.trace_dir = trace_dir
        self.children: list[Child] = []
        self.directory: Child | None = None
        self.echo: Child | None = None
        self.pull: Child | None = None

    def start_directory(self, listen: str, region_bytes: int, keys_dir: str | None = None,
                        name: str = "directory", manager: str | None = None,
                        shards: int = 1) -> str:
        """A directory (``keys_dir``: serving with those keys, else open; ``manager`` and
        ``shards``: ``dsm directory``'s flags, the shards its children); its endpoint.
        ``self.directory`` is the first one started."""
        cmd = [sys.executable, "-m", "dsm", "directory", "--listen", listen,
               "--region-size", str(region_bytes)]
        if manager is not None:
            cmd += ["--manager", manager]
        if shards > 1:
            cmd += ["--shards", str(shards)]
        if self.trace_dir:
            cmd += ["--trace", str(self.trace_dir / f"{name}.trace")]
        env = {k: v for k, v in os.environ.items() if k != KEYS_ENV}
        if keys_dir is not None:
            cmd += ["--keys", str(keys_dir)]
        child = Child(name, cmd, self.log_dir, env=env)
        self.children.append(child)
        if self.directory is None:
            self.directory = child
        line = child.line(START_TIMEOUT_S, "directory start")
        if not line.startswith("directory listening on "):
            raise BenchProcessError(f"unexpected first line from the directory: {line!r}")
        return line.rsplit(" ", 1)[-1].replace("0.0.0.0", "127.0.0.1")

    def start_echo(self, listen: str) -> str:
        """The round-trip baseline's ROUTER echo server; its bound endpoint."""
        self.echo = self._start_baseline("echo", [], listen)
        return self.echo.endpoint

    def start_pull(self, listen: str) -> str:
        """The streaming baseline's PULL end (``self.pull``: its per-stream reports come as
        lines, read with ``self.pull.line(timeout)``); its bound endpoint."""
        self.pull = self._start_baseline("pull", ["--pull"], listen)
        return self.pull.endpoint

    def _start_baseline(self, kind: str, flags: list[str], listen: str) -> Child:
        child = Child(kind, [sys.executable, "-m", "dsm.bench.echo", *flags, listen], self.log_dir)
        self.children.append(child)
        line = child.line(START_TIMEOUT_S, f"{kind} server start")
        if not line.startswith(f"{kind} listening on "):
            raise BenchProcessError(f"unexpected first line from the {kind} server: {line!r}")
        child.endpoint = line.rsplit(" ", 1)[-1]
        return child

    def start_workers(self, directory: str, names: list[str], keys_dir: str | None = None,
                      job: str | None = None) -> dict[str, Worker]:
        """Start the nodes together (their agents start in parallel), then wait for each.
        ``job``: the nodes are the ranks of a job of that name, in the order of ``names``."""
        workers = {}
        for rank, name in enumerate(names):
            trace = self.trace_dir / f"{name}.trace" if self.trace_dir else None
            ranks = None if job is None else {RANK_ENV: str(rank), SIZE_ENV: str(len(names)),
                                              RUN_ENV: job}
            w = Worker(directory, name, self.log_dir, keys_dir, trace, ranks)
            self.children.append(w)
            workers[name] = w
        for w in workers.values():
            w.wait_attached()
        return workers

    def start_driven(self, name: str, cmd: list[str]) -> Driven:
        """Another child that answers commands (see ``Driven``)."""
        child = Driven(name, cmd, self.log_dir)
        self.children.append(child)
        return child

    def close(self) -> None:
        """Kill every child with its session (a node's agent and watchdog too): a benchmark's
        pages need no orderly give-back, and the agents' would take seconds."""
        for child in reversed(self.children):
            try:
                child.kill()
            except Exception:  # keep killing the others
                pass

    def logs(self) -> str:
        return "\n".join(f"----- {c.log_path.name} -----\n{c.log_tail()}" for c in self.children)


def run_with_processes(log_dir: Path, progress: Callable[[str], None],
                       bench: Callable[["Processes"], dict],
                       trace_dir: Path | None = None) -> dict:
    """Run ``bench(procs)`` with child processes that log into ``log_dir``: any failure becomes
    a BenchError carrying their logs, and every child is stopped at the end."""
    from dsm.bench.common import BenchError

    procs = Processes(log_dir, trace_dir)
    try:
        return bench(procs)
    except (BenchProcessError, BenchError, OSError, zmq.ZMQError) as exc:
        raise BenchError(f"{exc}\n{procs.logs()}") from None
    finally:
        progress("stopping the processes")
        procs.close()
