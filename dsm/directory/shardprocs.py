"""Starting the manager shards: where each listens and says it listens, how a shard joins its
coordinator, and the shard processes a coordinator starts on its own host (``dsm directory
--manager distributed --shards K``).

Endpoints. With ``--shards K`` shard I listens at the coordinator's ``--listen`` endpoint with
port P+I (``tcp://0.0.0.0:7400`` -> ``tcp://0.0.0.0:7401`` ...; a random port ``*`` stays random;
``ipc://PATH`` -> ``ipc://PATH-shardI``) and advertises what it bound: a wildcard host there means
the coordinator's host as each node reached it (``dsm.agent.links.resolve_endpoint``). A shard
started on another host (``--shard I --of K --coordinator ENDPOINT``) that binds a wildcard
advertises the address of its interface towards the coordinator, unless ``--advertise`` says
otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import zmq

from dsm import protocol as p
from dsm.linkwire import reconnect_promptly
from dsm.agent.links import WILDCARD_HOSTS
from dsm.directory.sessions import new_random_id
from dsm.directory.shard import ShardJoinError
from dsm.keys import OPEN_ANNOUNCED_ENV, ClientKeys, HandshakeWatch, ServerKeys, configure_client

log = logging.getLogger(__name__)

#: how long a shard waits for its coordinator's ShardWelcome
JOIN_TIMEOUT_S = 30.0
#: how long the coordinator gives its shard processes to stop after SIGTERM, before SIGKILL
STOP_TIMEOUT_S = 5.0


def shard_listen_endpoint(listen: str, index: int) -> str:
    """Where shard ``index`` of a one-host manager listens, from the coordinator's ``listen``."""
    scheme, sep, rest = listen.partition("://")
    if scheme == "ipc" and sep:
        return f"{listen}-shard{index}"
    if scheme != "tcp" or not sep:
        raise ValueError(f"shards need a tcp:// or ipc:// endpoint, not {listen!r}")
    host, colon, port = rest.rpartition(":")
    if not colon:
        raise ValueError(f"{listen!r} names no port")
    if port == "*":
        return listen
    try:
        return f"tcp://{host}:{int(port) + index}"
    except ValueError:
        raise ValueError(f"{listen!r}: the port must be a number or *") from None


def local_endpoint(bound: str) -> str:
    """``bound`` as a process of this host connects to it (a wildcard host -> loopback)."""
    scheme, sep, rest = bound.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme == "tcp" and colon and host in WILDCARD_HOSTS:
        return f"tcp://127.0.0.1:{port}"
    return bound


def advertised_endpoint(bound: str, coordinator: str, local: bool) -> str:
    """What a shard that bound ``bound`` tells the nodes: the bound endpoint if it runs on the
    coordinator's host (``local``) or bound a specific address; else, for a wildcard, the
    address of this host's interface towards the coordinator."""
    scheme, _, rest = bound.partition("://")
    host, _, port = rest.rpartition(":")
    if local or scheme != "tcp" or host not in WILDCARD_HOSTS:
        return bound
    target = urlsplit(coordinator)
    try:
        family = socket.AF_INET6 if ":" in (target.hostname or "") else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:  # sends nothing: a route lookup
            probe.connect((target.hostname, target.port or 1))
            address = probe.getsockname()[0]
    except OSError as exc:
        raise ShardJoinError(f"cannot tell this host's address towards the coordinator "
                             f"{coordinator} ({exc}): give it with --advertise") from None
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


def shard_client_keys(keys: ServerKeys | None) -> ClientKeys | None:
    """A shard connects to its coordinator with the directory's own keypair, pinning it."""
    if keys is None:
        return None
    return ClientKeys(keys.keys_dir, keys.own, keys.own.public)


def join_coordinator(ctx: zmq.Context, coordinator: str, hello: p.ShardHello,
                     keys: ServerKeys | None,
                     timeout_s: float = JOIN_TIMEOUT_S) -> tuple[zmq.Socket, p.ShardWelcome]:
    """A DEALER to the coordinator, joined: ShardJoinError if it refused or did not answer."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IDENTITY, f"shard:{os.getpid()}#{new_random_id():x}".encode())
    reconnect_promptly(dealer)  # a reset costs a replay, not ZeroMQ's 100 ms wait
    client_keys = shard_client_keys(keys)
    configure_client(dealer, client_keys)
    watch = HandshakeWatch(dealer, coordinator, client_keys)
    dealer.connect(coordinator)
    dealer.send_multipart(p.encode(hello))
    poller = zmq.Poller()
    poller.register(dealer, zmq.POLLIN)
    poller.register(watch.monitor, zmq.POLLIN)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise ShardJoinError(f"the coordinator {coordinator} did not answer within "
                                     f"{timeout_s:.0f} s ({watch.progress()})")
            ready = dict(poller.poll(max(1, int(left_s * 1000))))
            watch.check()
            if dealer in ready:
                break
        msg, _ = p.decode(dealer.recv_multipart(), 0, p.Direction.TO_NODE)
    except Exception:
        dealer.close(0)
        raise
    finally:
        watch.close()
    if isinstance(msg, p.Fenced):
        dealer.close(0)
        raise ShardJoinError(f"the coordinator {coordinator} refused this shard: {msg.reason}")
    if not isinstance(msg, p.ShardWelcome):
        dealer.close(0)
        raise ShardJoinError(f"expected ShardWelcome from the coordinator {coordinator}, got "
                             f"{type(msg).__name__}")
    return dealer, msg


class LocalShards:
    """Shards 1..K-1 as child processes of the coordinator, on its host. They stop when it
    does (``--parent-pid``: they watch it), and ``stop()`` stops them first."""

    def __init__(self, count: int, listen: str, coordinator: str, keys_dir: str | None,
                 trace_path: str | None, metrics_port: int | None):
        self.procs: list[subprocess.Popen] = []
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        for index in range(1, count):
            cmd = [sys.executable, "-m", "dsm", "--log-level", level, "directory",
                   "--manager", "distributed",  # not $DSM_MANAGER's, whatever it says
                   "--shard", str(index), "--of", str(count), "--coordinator", coordinator,
                   "--listen", shard_listen_endpoint(listen, index),
                   "--parent-pid", str(os.getpid())]
            if keys_dir is not None:
                cmd += ["--keys", keys_dir]
            if trace_path is not None:
                cmd += ["--trace", shard_trace_path(trace_path, index)]
            if metrics_port is not None:
                cmd += ["--metrics", str(metrics_port + index)]
            # their logs go where ours go; their stdout is not the coordinator's ready line
            # without keys, the coordinator has said the cluster runs open: once is enough
            env = None if keys_dir is not None else {**os.environ, OPEN_ANNOUNCED_ENV: "1"}
            self.procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, env=env))

    def exited(self) -> str | None:
        """Which shard process exited, if one did."""
        for index, proc in enumerate(self.procs, start=1):
            code = proc.poll()
            if code is not None:
                return f"shard {index} (pid {proc.pid}) exited with status {code}"
        return None

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def shard_trace_path(trace_path: str, index: int) -> str:
    """``directory.trace`` -> ``directory.shard1.trace``."""
    root, ext = os.path.splitext(trace_path)
    return f"{root}.shard{index}{ext}"
