"""Starting a node agent as a child process and waiting, with a deadline, until it serves."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
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
#: where a node serves pages to the others, and the address they reach it at (``dsm agent
#: --peer-listen``, ``--advertise``)
PEER_LISTEN_ENV = "DSM_PEER_LISTEN"
ADVERTISE_ENV = "DSM_ADVERTISE"
#: the value of --peer-listen that serves no peer endpoint (relay manager only, e.g. behind NAT)
NO_PEER_ENDPOINT = "none"
#: exit statuses of an agent that could not leave cleanly (``dsm/agent/run.py``; here, where
#: ``dsm run`` reads them without importing the agent)
EXIT_CUT_OFF = 3
EXIT_LEAVE_UNACKNOWLEDGED = 4
#: ... or did not try: the process it belongs to (``--parent-pid``) died, so it died with it
EXIT_PARENT_GONE = 5
#: the exit status of an agent that could not start
EXIT_NOT_STARTED = 2


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


#: the environment variable of the directories Python searches for modules
PYTHONPATH_ENV = "PYTHONPATH"
#: the directory that holds the package ``dsm`` this process runs (site-packages; the checkout of
#: an editable install): this file is ``dsm/agent/launch.py`` in it
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def python_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (this process's by default) for a Python process that dsm starts: its agent, a
    rank's ``dsm run``, and the command a node runs. ``import dsm`` in it finds this very
    package, even when the current directory or the script's holds a folder named ``dsm``.

    What goes wrong without it: an editable install (``pip install -e``) is found by a finder
    on ``sys.meta_path``, which the import system asks only after every ``sys.path`` entry has
    been searched; and ``python prog.py``, ``python -c`` and ``python -m`` put the script's
    directory, or the current one, first on ``sys.path``. A folder named ``dsm`` there with no
    ``__init__.py`` (a checkout named ``dsm``, run from its parent directory) is then imported
    as a namespace package: ``dsm.attach`` does not exist. But a regular package found on any
    ``sys.path`` entry beats namespace folders, wherever they are: so the directory that holds
    this package goes last on ``PYTHONPATH``, unless it is on the path already (an ordinary
    install: site-packages). The user's modules beside the script stay first (``import
    helper`` works, and a ``dsm.py`` of the user's own still shadows, as Python users expect),
    which ``PYTHONSAFEPATH`` (no script directory at all) would break. Processes of dsm's own
    are started with ``-P`` as well (``dsm_command``)."""
    out = dict(os.environ if env is None else env)
    # this process's sys.path minus the entry python put first (the script's directory, or
    # the current one), which a child need not share
    searched = sys.path if sys.flags.safe_path else sys.path[1:]
    if os.path.realpath(PACKAGE_ROOT) in {os.path.realpath(p) for p in searched if p}:
        return out
    parts = [p for p in out.get(PYTHONPATH_ENV, "").split(os.pathsep) if p]
    out[PYTHONPATH_ENV] = os.pathsep.join([*parts, PACKAGE_ROOT])
    return out


def dsm_command(*args: str) -> list[str]:
    """``python -m dsm ARGS...`` for a process of dsm's own: with ``-P`` (Python >= 3.11), so
    that a folder named ``dsm`` in the current directory is not looked at (see ``python_env``,
    which its environment comes from)."""
    return [sys.executable, "-P", "-m", "dsm", *args]


def unblocked_signals() -> Callable[[], None] | None:
    """For ``Popen(preexec_fn=...)``: a child that must start with no signal blocked, started
    by a thread that blocks some (``dsm run`` blocks SIGINT, SIGTERM and SIGCHLD and takes
    them with ``sigtimedwait``, to learn who sent each); the mask is inherited across exec.
    None when nothing is blocked, as in any other process (and there ``preexec_fn``, unsafe
    in a process with threads, is not used): ``dsm run`` has one thread."""
    if not signal.pthread_sigmask(signal.SIG_BLOCK, []):
        return None
    return lambda: signal.pthread_sigmask(signal.SIG_SETMASK, [])


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
    cmd = dsm_command("agent", "--directory", directory, "--node", node_name, "--socket", path,
                      "--ready-fd", str(write_fd), "--parent-pid", str(os.getpid()))
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
    proc = subprocess.Popen(cmd, pass_fds=[write_fd], start_new_session=True, env=python_env(),
                            preexec_fn=unblocked_signals())
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
