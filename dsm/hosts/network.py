"""Namespace hosts on one machine: one network namespace per host, all joined by a bridge, each
with an ``/etc/hosts`` naming the others, as a compose network does.

Everything a run makes is private to it and named after it (``dsmh-<owner pid>x<random>-...``):

* a *switch* namespace holding the bridge ``br0`` and one veth port per host (``h1``, ``h2``...):
  no link is ever added to the caller's namespace, so parallel runs cannot collide;
* one namespace per host, with ``lo`` up and ``eth0`` (the other end of its port) holding an
  address in a ``10.A.B.0/24`` subnet drawn per run, used only between these namespaces;
* ``/etc/netns/<namespace>/hosts``, which ``ip netns exec`` bind-mounts over ``/etc/hosts``.

``destroy()`` kills every process still inside the run's namespaces (found through
``/proc/PID/ns/net``, so even those that started sessions of their own), deletes the namespaces
and the hosts files. ``sweep_stale()`` does the same for runs whose owner process is gone.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from dsm.errors import DsmError

log = logging.getLogger(__name__)

PREFIX = "dsmh-"
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
#: how long processes get to die after SIGKILL before the namespace is removed anyway
KILL_TIMEOUT_S = 5.0
IP_TIMEOUT_S = 10.0
MAX_HOSTS = 250


class NetworkError(DsmError):
    """A namespace, link or address could not be set up."""


def ip(*args: str, namespace: str | None = None) -> str:
    cmd = ["ip", *(["-n", namespace] if namespace else []), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    except FileNotFoundError:
        raise NetworkError("the `ip` command (iproute2) is not installed") from None
    except subprocess.TimeoutExpired:
        raise NetworkError(f"`{' '.join(cmd)}` did not finish within {IP_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise NetworkError(f"`{' '.join(cmd)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def namespace_id(namespace: str) -> tuple[int, int] | None:
    try:
        st = os.stat(NETNS_DIR / namespace)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pids_in(namespace: str) -> list[int]:
    """Every process whose network namespace is ``namespace``."""
    ns = namespace_id(namespace)
    if ns is None:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ns:
            pids.append(int(entry))
    return pids


def kill_namespace_processes(namespace: str, sig: int = signal.SIGKILL,
                             timeout_s: float = KILL_TIMEOUT_S) -> list[int]:
    """Signal every process in the namespace until none is left; the pids that would not die."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = [pid for pid in pids_in(namespace) if not _is_zombie(pid)]
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def delete_namespace(namespace: str) -> list[int]:
    """Kill what runs in the namespace, delete it and its hosts file; the pids that would not
    die (none, normally)."""
    leftover = kill_namespace_processes(namespace)
    if leftover:
        log.error("processes %s in namespace %s would not die", leftover, namespace)
    if namespace_id(namespace) is not None:
        try:
            ip("netns", "del", namespace)
        except NetworkError as exc:
            log.error("%s", exc)
    shutil.rmtree(ETC_NETNS / namespace, ignore_errors=True)
    return leftover


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    #: the bridge port of this host, in the switch namespace
    port: str
    aliases: list[str] = field(default_factory=list)


class Network:
    """The namespaces and links of one run."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id or f"{os.getpid()}x{secrets.token_hex(3)}"
        self.prefix = f"{PREFIX}{self.run_id}-"
        self.switch = self.prefix + "sw"
        rng = random.Random(secrets.randbits(32))
        self.subnet = f"10.{rng.randrange(16, 255)}.{rng.randrange(0, 256)}"
        self.hosts: dict[str, Host] = {}
        self._created = False
        #: processes that survived SIGKILL in ``destroy`` (none, normally)
        self.leftover: list[int] = []

    def namespaces(self) -> list[str]:
        return [h.namespace for h in self.hosts.values()] + ([self.switch] if self._created else [])

    def create(self) -> None:
        ip("netns", "add", self.switch)
        self._created = True
        ip("link", "add", "br0", "type", "bridge", namespace=self.switch)
        ip("link", "set", "br0", "up", namespace=self.switch)
        ip("link", "set", "lo", "up", namespace=self.switch)

    def add_host(self, name: str, aliases: list[str] = ()) -> Host:
        """A new namespace host on the bridge; its /etc/hosts is written by ``write_hosts``."""
        if not self._created:
            raise NetworkError("create() the network first")
        if name in self.hosts:
            raise NetworkError(f"host {name!r} exists already")
        index = len(self.hosts) + 1
        if index > MAX_HOSTS:
            raise NetworkError(f"at most {MAX_HOSTS} hosts per run")
        host = Host(name, self.prefix + name, f"{self.subnet}.{index + 1}", f"h{index}",
                    list(aliases))
        ip("netns", "add", host.namespace)
        self.hosts[name] = host
        # both ends are made in the switch namespace, then eth0 moves into the host's
        ip("link", "add", host.port, "type", "veth", "peer", "name", "eth0",
           "netns", host.namespace, namespace=self.switch)
        ip("link", "set", host.port, "master", "br0", "up", namespace=self.switch)
        ip("link", "set", "lo", "up", namespace=host.namespace)
        ip("addr", "add", f"{host.address}/24", "dev", "eth0", namespace=host.namespace)
        ip("link", "set", "eth0", "up", namespace=host.namespace)
        (ETC_NETNS / host.namespace).mkdir(parents=True, exist_ok=True)
        return host

    def write_hosts(self) -> None:
        """Every host's /etc/hosts: localhost, itself, and every host of the run by its name
        and aliases (a service name maps to each of its replicas). Written in place: a file
        already bind-mounted over /etc/hosts in a running host shows the new contents."""
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        for h in self.hosts.values():
            lines.append(f"{h.address}\t{' '.join([h.name, *h.aliases])}")
        text = "\n".join(lines) + "\n"
        for h in self.hosts.values():
            path = ETC_NETNS / h.namespace / "hosts"
            with open(path, "a+") as f:
                f.seek(0)
                f.truncate()
                f.write(text)

    def set_link(self, name: str, up: bool) -> None:
        """Cut (or restore) a host's cable: its port on the bridge goes down (or up)."""
        host = self.hosts[name]
        ip("link", "set", host.port, "up" if up else "down", namespace=self.switch)

    def destroy(self) -> None:
        for host in list(self.hosts.values()):
            self.leftover += delete_namespace(host.namespace)
        if self._created:
            self.leftover += delete_namespace(self.switch)
        self.hosts.clear()
        self._created = False


def owner_alive(run_id: str) -> bool:
    pid_text = run_id.split("x", 1)[0]
    if not pid_text.isdigit():
        return True  # not ours to judge
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_runs() -> dict[str, list[str]]:
    """Run id -> its namespaces (and leftover /etc/netns entries), for every run on the machine."""
    names: set[str] = set()
    for d in (NETNS_DIR, ETC_NETNS):
        try:
            names.update(n for n in os.listdir(d) if n.startswith(PREFIX))
        except FileNotFoundError:
            pass
    runs: dict[str, list[str]] = {}
    for name in sorted(names):
        run_id = name[len(PREFIX):].split("-", 1)[0]
        runs.setdefault(run_id, []).append(name)
    return runs


def destroy_run(run_id: str) -> list[str]:
    names = list_runs().get(run_id, [])
    # hosts first, the switch last
    for name in sorted(names, key=lambda n: n.endswith("-sw")):
        delete_namespace(name)
    return names


def sweep_stale() -> list[str]:
    """Remove the namespaces of every run whose owner process has exited."""
    removed = []
    for run_id in list_runs():
        if not owner_alive(run_id):
            removed += destroy_run(run_id)
    return removed
