"""Network faults for tests, on this host's real sockets: resets of a cluster's TCP connections
(``ss -K``, as a NAT timeout, a restarted proxy or a flapping switch port would do).

Only the connections of the cluster's own processes are reset (found by pid in ``ss -p``), so
tests running side by side under xdist never touch each other's links."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading

#: how long one ``ss`` call may take
SS_TIMEOUT_S = 5.0
_PID = re.compile(r"pid=(\d+)")


def have_ss_kill() -> str | None:
    """None if ``ss -K`` can reset connections here, else why not."""
    if shutil.which("ss") is None:
        return "ss (iproute2) is not installed"
    if os.geteuid() != 0:
        return "ss -K needs root (CAP_NET_ADMIN)"
    return None


def process_tree(roots: list[int]) -> set[int]:
    """``roots`` and every descendant of them (through /proc's children lists)."""
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return found


def local_ports(pids: set[int]) -> set[int]:
    """The local ports of the established TCP connections that ``pids`` hold."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True,
                         text=True, timeout=SS_TIMEOUT_S).stdout
    ports = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 4 or not any(int(m) in pids for m in _PID.findall(line)):
            continue
        ports.add(int(fields[2].rsplit(":", 1)[1]))
    return ports


def reset_connections(roots: list[int]) -> int:
    """Reset every established TCP connection of the process trees under ``roots`` (both ends,
    where both are theirs); how many local ends were found."""
    ports = local_ports(process_tree(roots))
    if not ports:
        return 0
    expr = " or ".join(f"sport = :{port}" for port in sorted(ports))
    subprocess.run(["ss", "-K", "-tnH", "state", "established", f"( {expr} )"],
                   capture_output=True, timeout=SS_TIMEOUT_S)
    return len(ports)


class Resetter:
    """A thread that resets the connections of ``roots()`` every ``period_s`` until stopped;
    ``resets``: how many rounds found connections to reset."""

    def __init__(self, roots, period_s: float):
        self._roots = roots
        self._period_s = period_s
        self._stop = threading.Event()
        self.resets = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Resetter":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(SS_TIMEOUT_S * 2)

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            if reset_connections(self._roots()):
                self.resets += 1


def bind_front(ctx):
    """A proxy's ROUTER for the agents, bound to a free loopback port: (socket, endpoint)."""
    import zmq

    front = ctx.socket(zmq.ROUTER)
    front.setsockopt(zmq.LINGER, 0)
    front.bind("tcp://127.0.0.1:*")
    return front, front.getsockopt_string(zmq.LAST_ENDPOINT)


class DroppingProxy(threading.Thread):
    """Stands between node agents and their directory (a ROUTER for the agents, a DEALER per
    agent to the directory, under the agent's own identity), forwards every message both ways,
    and drops the messages to a node that ``drop(frames)`` picks, as a reset connection would
    lose them. ``dropped``: how many it dropped."""

    POLL_MS = 20

    def __init__(self, directory: str, drop):
        super().__init__(daemon=True)
        import zmq

        self._zmq = zmq
        self.ctx = zmq.Context.instance()
        self.front, self.endpoint = bind_front(self.ctx)
        self.directory = directory
        self._drop = drop
        self.dropped = 0
        self._stopping = threading.Event()

    def __enter__(self) -> "DroppingProxy":
        self.start()
        return self

    def __exit__(self, *_) -> None:
        self._stopping.set()
        self.join(SS_TIMEOUT_S)

    def run(self) -> None:
        zmq = self._zmq
        backs: dict[bytes, object] = {}  # agent identity -> its DEALER to the directory
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                for sock, _ in poller.poll(self.POLL_MS):
                    if sock is self.front:
                        identity, *frames = self.front.recv_multipart()
                        back = backs.get(identity)
                        if back is None:
                            back = backs[identity] = self.ctx.socket(zmq.DEALER)
                            back.setsockopt(zmq.LINGER, 0)
                            back.setsockopt(zmq.IDENTITY, identity)
                            back.connect(self.directory)
                            poller.register(back, zmq.POLLIN)
                        back.send_multipart(frames)
                        continue
                    identity = sock.getsockopt(zmq.IDENTITY)
                    frames = sock.recv_multipart()
                    if self._drop(frames):
                        self.dropped += 1
                        continue
                    self.front.send_multipart([identity, *frames])
        finally:
            self.front.close(0)
            for back in backs.values():
                back.close(0)
