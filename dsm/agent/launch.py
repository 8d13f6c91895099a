"""Starting a node agent as a child process and waiting, with a deadline, until it serves."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from dsm.errors import ConfigError, DsmError

#: how long a starting agent may take to join the directory and listen
AGENT_START_TIMEOUT_S = 10.0
#: how long a failed agent may take to exit after closing its ready pipe
AGENT_EXIT_GRACE_S = 2.0
#: how long a stopping agent may take to hand its pages back
AGENT_STOP_TIMEOUT_S = 10.0
#: the most an agent writes on its ready pipe: "ready", or "error KIND: why it did not start"
READY_LINE_MAX_BYTES = 4096


class AgentStartError(DsmError):
    """The node agent did not start (the directory unreachable, a bad flag, ...)."""

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        #: the agent's own name for its failure (``AuthenticationFailed``, ``KeysError``, ...)
        self.kind = kind


@dataclass
class StartedAgent:
    proc: subprocess.Popen
    socket_path: str
    #: the private directory made for the socket, removed on stop
    tmpdir: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int:
        """SIGTERM: the agent hands every page back, then exits; killed if it takes too long."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(AGENT_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        return self.proc.returncode


def check_endpoint(endpoint: str, what: str = "the directory's endpoint") -> str:
    """``endpoint`` if it is a ZeroMQ endpoint a node can connect to (``tcp://HOST:PORT`` or
    ``ipc://PATH``); ConfigError naming what was given otherwise."""
    scheme, sep, rest = endpoint.partition("://")
    if sep and scheme == "ipc" and rest:
        return endpoint
    if sep and scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if colon and host and port.isdigit() and 0 < int(port) < 65536:
            return endpoint
    raise ConfigError(f"{what}: expected tcp://HOST:PORT or ipc://PATH, got {endpoint!r}")


def start_agent(directory: str, node_name: str, socket_path: str | None = None,
                trace_path: str | None = None, keys_dir: str | None = None,
                metrics_port: int | None = None, peer_listen: str | None = None,
                advertise: str | None = None) -> StartedAgent:
    """Start ``dsm agent`` and return once it is ready to serve.

    The agent runs in a session of its own, so that no signal meant for the workload reaches
    it: a terminal's Ctrl-C (SIGINT to its foreground process group), ``kill -- -PGID`` of the
    workload's group. Whoever started it stops it with ``StartedAgent.stop()``, after the
    workload (``dsm run`` does). It exits when this process dies (``--parent-pid``): a killpg
    of this process's group, or a SIGKILL of this process alone, leaves no agent behind."""
    check_endpoint(directory)
    tmpdir = None if socket_path else tempfile.mkdtemp(prefix="dsm-")
    path = socket_path or os.path.join(tmpdir, "agent.sock")
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "dsm", "agent", "--directory", directory, "--node", node_name,
           "--socket", path, "--ready-fd", str(write_fd), "--parent-pid", str(os.getpid())]
    if trace_path:
        cmd += ["--trace", trace_path]
    if keys_dir:
        cmd += ["--keys", str(keys_dir)]
    if metrics_port is not None:
        cmd += ["--metrics", str(metrics_port)]
    if peer_listen:
        cmd += ["--peer-listen", peer_listen]
    if advertise:
        cmd += ["--advertise", advertise]
    proc = subprocess.Popen(cmd, pass_fds=[write_fd], start_new_session=True)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], AGENT_START_TIMEOUT_S)
        line = os.read(read_fd, READY_LINE_MAX_BYTES) if ready else b""
        if not line.startswith(b"ready"):
            try:  # an agent that failed closes the pipe as it exits: collect its status
                code = proc.wait(AGENT_EXIT_GRACE_S)
            except subprocess.TimeoutExpired:
                code = None
            if line.startswith(b"error "):  # the agent said why
                kind, _, why = line[len(b"error "):].decode(errors="replace").partition(": ")
                raise AgentStartError(f"the node agent for directory {directory} did not "
                                      f"start: {why.strip()}", kind)
            why = f"exited with status {code}" if code is not None else "did not become ready"
            raise AgentStartError(
                f"the node agent for directory {directory} {why} within {AGENT_START_TIMEOUT_S} s"
            )
    except BaseException:
        proc.kill()
        proc.wait()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    finally:
        os.close(read_fd)
    return StartedAgent(proc, path, tmpdir)
