"""Test harness for real clusters: a directory process and node processes, each started with a
deadline, each killed in teardown, with their logs printed when a test fails."""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
from pathlib import Path

from dsm.managers import MANAGER_ENV, SHARDS_ENV, Manager

WORKER = str(Path(__file__).with_name("node_worker.py"))
START_TIMEOUT_S = 15.0
#: default deadline of one snippet run on a node
RUN_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


class ClusterProcessError(AssertionError):
    pass



def environment_without_manager_defaults() -> dict[str, str]:
    """This environment without the suite's $DSM_MANAGER / $DSM_SHARDS defaults, for tests that
    give a cluster its own shape (its flags, or a compose project's own values)."""
    return {k: v for k, v in os.environ.items() if k not in (MANAGER_ENV, SHARDS_ENV)}


def manager_of(flags: list[str] = ()) -> Manager:
    """The manager a directory started with these ``dsm directory`` flags runs, decided as the
    command decides it (so with the suite's $DSM_MANAGER / $DSM_SHARDS defaults): for a test
    whose assertions name the messages or counters of the manager actually running."""
    # imported here: the directory's modules take a fifth of a second, which only the tests
    # that ask pay
    from dsm.commands import directory as directory_command

    parser = argparse.ArgumentParser()
    directory_command.register(parser.add_subparsers())
    manager, _ = directory_command.shard_plan(parser.parse_args(["directory", *flags]))
    return Manager(manager)


def _read_line(proc: subprocess.Popen, timeout_s: float, what: str) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        raise ClusterProcessError(f"{what}: no answer within {timeout_s} s")
    line = proc.stdout.readline()
    if not line:
        raise ClusterProcessError(f"{what}: process exited with status {proc.wait(5)}")
    return line


class Directory:
    """A directory process; with ``shards`` > 1, a distributed manager of that many shards on
    this host (``--manager distributed --shards K``: the shards are the directory's children
    and log into its log, each line naming its shard)."""

    def __init__(self, tmp_path: Path, transport: str = "tcp", region_bytes: int = 64 << 20,
                 extra: list[str] = (), name: str = "directory", shards: int = 1,
                 host: str = "127.0.0.1", prefix: list[str] = ()):
        """``host``: the address to listen on; ``prefix``: what runs the directory (``ip netns
        exec NS``: on a namespace host)."""
        self.log_path = tmp_path / f"{name}.log"
        listen = f"tcp://{host}:*" if transport == "tcp" else f"ipc://{tmp_path}/directory.ipc"
        self.trace_path = tmp_path / f"{name}.trace"
        self.shards = shards
        manager = ["--manager", "distributed", "--shards", str(shards)] if shards > 1 else []
        self._flags = [*manager, *extra]
        self.log = open(self.log_path, "w")
        # a session of its own: teardown kills the shards with it, whatever became of it
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "dsm", "--log-level", "INFO", "directory",
             "--listen", listen,
             "--region-size", str(region_bytes), "--trace", str(self.trace_path), *manager,
             *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True,
        )
        # the shards start (and join) before the directory says it listens
        line = _read_line(self.proc, START_TIMEOUT_S + 5 * (shards - 1), "directory start")
        self.endpoint = line.strip().rsplit(" ", 1)[-1].replace("0.0.0.0", "127.0.0.1")

    @property
    def manager(self) -> Manager:
        """The manager it runs: its flags', else the suite's default (asked only by the tests
        that name a manager's messages: a test giving it flags to refuse never parses them)."""
        return manager_of(self._flags)

    def shard_pids(self) -> list[int]:
        """The pids of shards 1..K-1 (the coordinator's children), in shard order."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            children = [int(c) for c in f.read().split()]
        by_shard = {}
        for pid in children:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if b"--shard" in argv:
                by_shard[int(argv[argv.index(b"--shard") + 1])] = pid
        return [by_shard[i] for i in sorted(by_shard)]

    def kill(self) -> None:
        """SIGTERM first, so that the traces are flushed (the coordinator stops its shards);
        SIGKILL to the whole session if it lingers, and to any shard left behind."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S + 5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()


#: set, every test node writes its protocol trace
TEST_TRACE_ENV = "DSM_TEST_TRACE"


class NodeProcess:
    """A workload process attached to its own agent (started by ``dsm.attach(directory=...)``)."""

    def __init__(self, directory: str, name: str, tmp_path: Path, env: dict | None = None,
                 wait: bool = True, prefix: list[str] = ()):
        """``prefix``: what runs the node (``ip netns exec NS``: on a namespace host)."""
        self.name = name
        self.log_path = tmp_path / f"node-{name}.log"
        self.log = open(self.log_path, "w")
        # DSM_TEST_TRACE=1: every node writes its protocol trace beside its log (the directory
        # always does), for `dsm trace` over a failed test's tmp_path (pytest --basetemp)
        if os.environ.get(TEST_TRACE_ENV):
            env = dict(env or os.environ, DSM_TRACE=str(tmp_path / f"node-{name}.trace"))
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, WORKER, directory, name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            start_new_session=True, env=env,
        )
        if wait:
            self.wait_attached()

    def wait_attached(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the node has attached (``wait=False``: many nodes start side by side)."""
        reply = json.loads(_read_line(self.proc, timeout_s, f"node {self.name} attach"))
        assert reply["ok"], reply

    def send(self, code: str, result: str | None = None) -> None:
        """Start a snippet without waiting for it (collect with ``wait``)."""
        self.proc.stdin.write(json.dumps({"code": code, "result": result}) + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout_s: float = RUN_TIMEOUT_S):
        reply = json.loads(_read_line(self.proc, timeout_s, f"node {self.name}"))
        if not reply["ok"]:
            raise ClusterProcessError(f"node {self.name} failed:\n{reply['error']}")
        return reply["value"]

    def run(self, code: str, result: str | None = None, timeout_s: float = RUN_TIMEOUT_S):
        self.send(code, result)
        return self.wait(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout_s)
            except (subprocess.TimeoutExpired, OSError):
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)  # its agent exits with it (--parent-pid)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.log.close()


def dump_logs(tmp_path: Path) -> str:
    parts = []
    for path in sorted(tmp_path.glob("*.log")):
        parts.append(f"----- {path.name} -----\n{path.read_text()[-4000:]}")
    return "\n".join(parts)
