"""A whole cluster on this machine: a ``dsm directory`` and N ``dsm run`` nodes, each child a
process in a session of its own, started, read and stopped with deadlines (``LocalCluster``).

This module owns the processes: their command lines, their output (each node's result line),
their logs and their stopping. What runs on them and what is made of their results is the
caller's: ``dsm demo`` (``dsm.commands.demo``: the workload, the numpy reference, the verdict and
the table), ``dsm litmus`` (``dsm.commands.litmus``) and ``dsm bench workloads``
(``dsm.bench.workloads``).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from dsm.commands.run import describe_status
from dsm.keys import OPEN_ANNOUNCED_ENV
from dsm.watchdog import process_stats

#: how long the directory may take to print its endpoint
DIRECTORY_START_TIMEOUT_S = 15.0
#: how long a stopping child may take before it is killed
STOP_TIMEOUT_S = 5.0
#: region size: enough for the arrays, small enough to be cheap
MIN_REGION_BYTES = 64 << 20
#: longest directory that can hold the Unix sockets (an agent's is DIR/dsm-XXXXXXXX/agent.sock)
SOCKET_DIR_MAX = 80


class DemoError(Exception):
    """The cluster could not be started or did not finish."""


class NodeCrashed(DemoError):
    """A node ended, exiting non-zero or killed, before it printed its result: the run stops
    there (the others would wait for it at their next barrier)."""

    def __init__(self, child: "Child"):
        super().__init__(how_it_ended(child))


def shell_status(returncode: int) -> int:
    """A child's exit status as a shell reports it (and ``describe_status`` reads it): 128 + N
    for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _killed(status: int) -> bool:
    try:
        signal.Signals(status - 128)
    except ValueError:
        return False
    return status > 128


def how_it_ended(child: "Child") -> str:
    """``node1 killed by SIGSEGV (status 139)``, ``node2 exited with status 2``: a node's
    ``dsm run`` reports its workload killed by signal N as 128 + N, as a shell does."""
    return f"{child.name} {describe_status(shell_status(child.proc.returncode))}"


# --- one child: started, read, stopped ----------------------------------------------------------
@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    log: IO
    out: list[str] = field(default_factory=list)


def _python() -> list[str]:
    return [sys.executable]


def _start(name: str, cmd: list[str], workdir: Path, env: dict) -> Child:
    log_path = workdir / f"{name}.log"
    log = open(log_path, "w")
    # a session of its own: one killpg reaches the node's workload too (its agent, in a session
    # of its own, exits with its `dsm run`), and a Ctrl-C in the terminal reaches only this
    # process, which then stops every child
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                            text=True, env=env, start_new_session=True)
    return Child(name, proc, log_path, log)


def _read_first_line(child: Child, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    buf = b""
    fd = child.proc.stdout.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DemoError(f"{child.name} printed nothing within {timeout_s:g} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            status = child.proc.wait()
            raise DemoError(f"{child.name} exited with status {status} before it started")
        buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def _live_members(pgid: int) -> list[int]:
    """The processes of a process group that have not exited (zombies do not count: an agent
    orphaned by its `dsm run` may wait a while for a reaper)."""
    return [pid for pid, fields in process_stats()
            if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid]


def _signal_group(child: Child, sig: int) -> None:
    try:
        os.killpg(child.proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_all(children: list[Child]) -> None:
    """SIGTERM to each child's whole session (a node's agent then hands its pages back), wait
    for every process of it to exit, SIGKILL what is left after ``STOP_TIMEOUT_S``."""
    for child in children:
        if _live_members(child.proc.pid):
            _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        while True:
            child.proc.poll()  # reap our own child, so that it does not count as a member
            if not _live_members(child.proc.pid) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        _signal_group(child, signal.SIGKILL)
        child.proc.wait()
        if child.proc.stdout is not None:
            child.proc.stdout.close()
        child.log.close()


def _collect(nodes: list[Child], deadline: float) -> None:
    """Read every node's stdout until all have exited, or until one has failed."""
    open_fds = {c.proc.stdout.fileno(): c for c in nodes}
    partial = {fd: b"" for fd in open_fds}
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            waiting = ", ".join(sorted(c.name for c in open_fds.values()))
            raise DemoError(f"the nodes did not finish in time (still running: {waiting})")
        ready, _, _ = select.select(list(open_fds), [], [], min(left, 0.5))
        for fd in ready:
            chunk = os.read(fd, 65536)
            child = open_fds[fd]
            if chunk:
                partial[fd] += chunk
                *lines, partial[fd] = partial[fd].split(b"\n")
                child.out.extend(line.decode(errors="replace") for line in lines)
            else:
                if partial[fd]:
                    child.out.append(partial[fd].decode(errors="replace"))
                del open_fds[fd]
                code = child.proc.wait()
                if code != 0:
                    # the others would wait for it at their next barrier: stop here
                    if _result_of(child) is None:
                        raise NodeCrashed(child)
                    return


def _result_of(child: Child) -> dict | None:
    from dsm.workloads.common import RESULT_PREFIX

    for line in reversed(child.out):
        if line.startswith(RESULT_PREFIX):
            try:
                return json.loads(line[len(RESULT_PREFIX):])
            except json.JSONDecodeError:
                return None
    return None


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# --- a cluster on this machine -----------------------------------------------------------------
def region_bytes_for(spec, nodes: int, size: int, iterations: int) -> int:
    """The shared region a run needs: the workload's arrays with room to spare, in whole MiB."""
    need = spec.region_bytes(nodes, size, iterations) + (nodes + 64) * 4096 + (1 << 20)
    return max(MIN_REGION_BYTES, need // (1 << 20) * (1 << 20) + (1 << 20))


class LocalCluster:
    """A directory and N ``dsm run`` nodes on this machine, each child in a session of its own
    (one killpg reaches a node's workload too; its agent exits with its ``dsm run``). ``stop()``
    in a ``finally``."""

    def __init__(self, workdir: Path, env: dict, transport: str = "tcp",
                 trace_dir: Path | None = None, keys_dir: str | None = None,
                 manager: str | None = None, shards: int = 1):
        self.workdir = workdir
        #: the directory's --manager and --shards (its shards are its children)
        self.manager = manager
        self.shards = shards
        #: the cluster's CurveZMQ keys (None: it runs open)
        self.keys_dir = str(Path(keys_dir).resolve()) if keys_dir else None
        self.env = dict(env)
        self.env.pop("DSM_AGENT_SOCKET", None)
        self.transport = transport
        self.trace_dir = trace_dir
        self.children: list[Child] = []
        self.nodes: list[Child] = []
        self.endpoint: str | None = None
        self._extra_dirs: list[Path] = []
        # Unix socket paths (the agents' sockets, an ipc endpoint) must fit in 108 bytes
        self.sock_dir = workdir
        if len(str(workdir)) > SOCKET_DIR_MAX:
            self.sock_dir = Path(tempfile.mkdtemp(prefix="dsm-", dir="/tmp"))
            self._extra_dirs.append(self.sock_dir)

    def start_directory(self, region_bytes: int, timeout_s: float) -> str:
        if self.transport == "tcp":
            listen = "tcp://127.0.0.1:*"
        else:
            listen = f"ipc://{self.sock_dir}/directory.ipc"
        cmd = [*_python(), "-m", "dsm", "--log-level", "INFO", "directory", "--listen", listen,
               "--region-size", str(region_bytes)]
        if self.trace_dir is not None:
            cmd += ["--trace", str(self.trace_dir / "directory.trace")]
        if self.keys_dir is not None:
            cmd += ["--keys", self.keys_dir]
        if self.manager is not None:
            cmd += ["--manager", self.manager]
        if self.shards > 1:
            cmd += ["--shards", str(self.shards)]
        directory = _start("directory", cmd, self.workdir, self.env)
        self.children.append(directory)
        line = _read_first_line(directory, min(DIRECTORY_START_TIMEOUT_S, timeout_s))
        if not line.startswith("directory listening on "):
            raise DemoError(f"unexpected first line from the directory: {line!r}")
        self.endpoint = line.rsplit(" ", 1)[-1].replace("0.0.0.0", "127.0.0.1")
        return self.endpoint

    def start_nodes(self, spec, nodes: int, size: int, iterations: int, timeout_s: float,
                    expect: str | None = None, consistency: str | None = None) -> None:
        """``dsm run`` one node per rank, each running the workload's module (its data arrays
        in ``consistency``; None: the module's default)."""
        for k in range(nodes):
            name = f"node{k}"
            cmd = [*_python(), "-m", "dsm", "run", "--directory", self.endpoint, "--node", name]
            if self.trace_dir is not None:
                cmd += ["--trace", str(self.trace_dir / f"{name}.trace")]
            if self.keys_dir is not None:
                cmd += ["--keys", self.keys_dir]
            cmd += ["--", *_python(), "-m", spec.module, "--rank", str(k), "--nodes", str(nodes),
                    "--size", str(size), "--iterations", str(iterations)]
            if expect is not None and spec.takes_expect:
                cmd += ["--expect", expect]
            if consistency is not None:
                cmd += ["--consistency", consistency]
            if spec.node_args is not None:
                cmd += spec.node_args(timeout_s)
            self.start_node(name, cmd)

    def start_node(self, name: str, cmd: list[str]) -> Child:
        """Start one node's command (a ``dsm run``); collected with the others."""
        # TMPDIR: `dsm run` makes its agent's socket directory there, removed in stop();
        # a node runs open only if the directory does, which said so for the whole cluster
        env = {**self.env, "TMPDIR": str(self.sock_dir), OPEN_ANNOUNCED_ENV: "1"}
        child = _start(name, cmd, self.workdir, env)
        self.children.append(child)
        self.nodes.append(child)
        return child

    def collect(self, deadline: float) -> None:
        _collect(self.nodes, deadline)

    def results(self, want: str) -> tuple[list[dict], list[str]]:
        """Each node's result (a stand-in for a node without one) and what went wrong."""
        results = []
        problems = []
        for child in self.nodes:
            res = _result_of(child)
            if res is None:
                status = child.proc.poll()
                problems.append(f"{child.name}: no result (" + (
                    "stopped after another node failed" if status is None
                    else f"exit status {status}") + ")")
                res = {"node": child.name}
            elif "error" in res:
                problems.append(f"{child.name}: {res['error']}")
            elif res.get("digest") != want or not res.get("match"):
                problems.append(f"{child.name}: " + (
                    f"{res['mismatches']} of {res.get('values', '?')} values differ from numpy"
                    if "mismatches" in res else
                    f"read digest {res.get('digest')}, numpy's is {want}"))
            elif child.proc.returncode != 0:
                problems.append(f"{child.name}: exit status {child.proc.returncode}")
            res.setdefault("node", child.name)
            results.append(res)
        return results, problems

    def crashed(self) -> list[str]:
        """How each node that crashed ended (``node1 killed by SIGSEGV (status 139)``): it exited
        non-zero without its result, or after a result that matched, or was killed by a signal.
        A node whose result does not match, or says what error it caught, exits 1 and is not
        one."""
        crashes = []
        for child in self.nodes:
            code = child.proc.poll()
            if code is None or code == 0:
                continue
            result = _result_of(child)
            if result is None:
                crashes.append(how_it_ended(child))
            elif result.get("match") or _killed(shell_status(code)):
                crashes.append(f"{how_it_ended(child)} after its result")
        return crashes

    def stop(self) -> None:
        """The nodes first (their agents hand pages back to the directory), then the directory."""
        _stop_all(self.children[1:])
        _stop_all(self.children[:1])
        for d in self._extra_dirs:
            shutil.rmtree(d, ignore_errors=True)

    def log_tails(self) -> str:
        parts = []
        for child in self.children:
            tail = _tail(child.log_path)
            if tail:
                parts.append(f"----- {child.name} ({child.log_path}) -----\n{tail}")
        return "\n".join(parts)
