"""The namespace-host runner: every replica of every compose service on a host of its own.

``Cluster(project).up()`` makes the network (``network.py``), then starts the services in
``depends_on`` order, waiting for each condition with a deadline (``service_started``: the
process is running; ``service_healthy``: the service's healthcheck passes in its host, polled at
``start_interval`` during ``start_period``, then at ``interval``; ``service_completed_successfully``:
every replica exited 0). Replica K of service S runs in host ``S-K`` (its hostname too), and the
name S resolves to each of S's replicas, as on a compose network.

A replica runs ``ip netns exec NAMESPACE hostexec.py S-K ENTRYPOINT... COMMAND...`` in a session
of its own, with this machine's environment (minus ``DSM_*``) plus the service's ``environment``
(where a bind volume's target is named, its source: see ``compose.py``).
``python``/``python3`` as a command name means this interpreter, and a console script of the
package (``dsm``, ``dsm-entrypoint``, ``dsm-node``) ``python -m`` its module on it; this install's
scripts directory comes first on ``PATH`` too: the image's install is this machine's. Standard output and error are merged, kept per
replica, and echoed with a ``S-K | `` prefix.

``stop()`` sends the service's ``stop_signal`` to the replica's process (what ``docker stop``
sends to a container's PID 1) and waits ``stop_grace_period``; then, and in ``down()``, every
process left in the host's namespace is killed. ``down()`` also runs at interpreter exit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable

from dsm.errors import DsmError
from dsm.hosts.compose import Project, Service
from dsm.hosts.network import Host, Network, kill_namespace_processes

HOSTEXEC = str(Path(__file__).with_name("hostexec.py"))
#: default deadline for a service's dependencies to become ready
READY_TIMEOUT_S = 60.0
#: how often the runner re-checks a condition that it cannot wait on directly
POLL_S = 0.05
#: how long the runner waits for a killed replica's output to end
STOP_JOIN_S = 10.0


class ClusterError(DsmError):
    """A service did not start, become healthy, or say what was expected in time."""


@dataclass
class Instance:
    service: Service
    index: int
    host: Host
    proc: subprocess.Popen | None = None
    lines: list[str] = field(default_factory=list)
    started_at: float | None = None
    exited_at: float | None = None
    returncode: int | None = None
    healthy: bool | None = None
    reader: threading.Thread | None = None
    waiter: threading.Thread | None = None

    def join(self, timeout_s: float | None) -> bool:
        """Wait until the process has exited and its output is all read."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for t in (self.waiter, self.reader):
            if t is not None:
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.returncode is not None and not (self.reader and self.reader.is_alive())

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def running(self) -> bool:
        return self.proc is not None and self.returncode is None


class Cluster:
    def __init__(self, project: Project, *, echo: bool = True, out: IO[str] | None = None,
                 log_dir: str | Path | None = None, base_env: dict[str, str] | None = None,
                 run_id: str | None = None):
        self.project = project
        self.network = Network(run_id)
        self.echo = echo
        self.out = out or sys.stdout
        self.log_dir = Path(log_dir) if log_dir else None
        self.instances: dict[str, Instance] = {}
        self._cond = threading.Condition()
        self._out_lock = threading.Lock()
        self._base_env = self._make_base_env(base_env if base_env is not None else dict(os.environ))
        self._width = max([len(s) + 3 for s in project.services] + [len("hosts")])
        self._down = False
        # at interpreter exit (a test run killed by its timeout, say): remove the namespaces,
        # which kills every process in them
        self._finalizer = weakref.finalize(self, self.network.destroy)

    # --- setting up ----------------------------------------------------------------------------
    @staticmethod
    def _make_base_env(env: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in env.items() if not k.startswith("DSM_")}
        # this install's console scripts (dsm, dsm-entrypoint) and interpreter come first
        first = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
        path = [*dict.fromkeys(first), *env.get("PATH", os.defpath).split(os.pathsep)]
        env["PATH"] = os.pathsep.join(p for p in path if p)
        return env

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self, services: Iterable[str] | None = None,
           ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the services (all by default) and their dependencies, in order."""
        wanted = set(services) if services is not None else set(self.project.services)
        for name in list(wanted):
            wanted |= self._dependencies(name)
        if not self.network.hosts:
            self.network.create()
        for name in self.project.start_order():
            if name not in wanted:
                continue
            svc = self.project.services[name]
            self._await_dependencies(svc, ready_timeout_s)
            for _ in range(svc.replicas):
                self._start(svc)

    def add(self, service: str, ready_timeout_s: float = READY_TIMEOUT_S) -> Instance:
        """One more replica of ``service`` (a node joining late), once its dependencies are
        ready."""
        svc = self.project.services[service]
        if not self.network.hosts:
            self.network.create()
        self._await_dependencies(svc, ready_timeout_s)
        return self._start(svc)

    def _dependencies(self, name: str) -> set[str]:
        out: set[str] = set()
        for dep in self.project.services[name].depends_on:
            out |= {dep} | self._dependencies(dep)
        return out

    def _await_dependencies(self, svc: Service, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for dep, condition in svc.depends_on.items():
            replicas = self.replicas(dep)
            if not replicas:
                raise ClusterError(f"{svc.name} depends on {dep}, which has no running replica")
            for inst in replicas:
                if condition == "service_healthy":
                    self._await_healthy(inst, deadline)
                elif condition == "service_completed_successfully":
                    code = self.wait(inst, max(0.0, deadline - time.monotonic()))
                    if code != 0:
                        raise ClusterError(f"{svc.name} needs {inst.name} to complete "
                                           f"successfully; it exited with status {code}")

    def _start(self, svc: Service) -> Instance:
        index = len(self.replicas(svc.name)) + 1
        name = f"{svc.name}-{index}"
        host = self.network.add_host(name, aliases=[svc.name])
        self.network.write_hosts()
        inst = Instance(svc, index, host)
        self.instances[name] = inst
        env = {**self._base_env, **self._host_paths(svc, svc.environment), "HOSTNAME": name}
        cmd = ["ip", "netns", "exec", host.namespace, sys.executable, "-I", HOSTEXEC, name,
               *self._resolve([svc.host_path(a) for a in svc.argv])]
        inst.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, cwd=self.project.path.parent, start_new_session=True,
        )
        inst.started_at = time.monotonic()
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{name}.log", "w")
        inst.reader = threading.Thread(target=self._pump, args=(inst, log), daemon=True,
                                       name=f"output of {name}")
        inst.waiter = threading.Thread(target=self._reap, args=(inst,), daemon=True,
                                       name=f"exit of {name}")
        inst.reader.start()
        inst.waiter.start()
        self._say(f"{name} started on {host.address} ({host.namespace}): {' '.join(svc.argv)}")
        return inst

    @staticmethod
    def _host_paths(svc: Service, environment: dict[str, str]) -> dict[str, str]:
        """The service's environment with its bind volumes' targets named by their sources (a
        namespace host has this machine's file system, not the container's mounts)."""
        return {k: svc.host_path(v) for k, v in environment.items()}

    @staticmethod
    def _resolve(argv: list[str]) -> list[str]:
        from dsm.programs import on_this_python

        return on_this_python(argv)

    def _pump(self, inst: Instance, log: IO[str] | None) -> None:
        prefix = f"{inst.name:<{self._width}} | "
        try:
            for raw in inst.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                with self._cond:
                    inst.lines.append(line)
                    self._cond.notify_all()
                if log is not None:
                    log.write(line + "\n")
                    log.flush()
                if self.echo:
                    with self._out_lock:
                        self.out.write(prefix + line + "\n")
                        self.out.flush()
        finally:
            inst.proc.stdout.close()
            if log is not None:
                log.close()
            with self._cond:
                self._cond.notify_all()

    def _reap(self, inst: Instance) -> None:
        """When the replica's process exits, what it left behind in its host is killed, as a
        container's processes die with its PID 1."""
        code = inst.proc.wait()
        with self._cond:
            inst.returncode = code
            inst.exited_at = time.monotonic()
            self._cond.notify_all()
        self._say(f"{inst.name} exited with status {code}")
        kill_namespace_processes(inst.host.namespace)

    def _say(self, text: str) -> None:
        if self.echo:
            with self._out_lock:
                self.out.write(f"{'hosts':<{self._width}} | {text}\n")
                self.out.flush()

    # --- health ---------------------------------------------------------------------------------
    def check_health(self, inst: Instance) -> bool:
        """Run the service's healthcheck once in the replica's host."""
        hc = inst.service.healthcheck
        if hc is None:
            return inst.running
        cmd = ["ip", "netns", "exec", inst.host.namespace, *self._resolve(hc.test)]
        env = {**self._base_env, **self._host_paths(inst.service, inst.service.environment),
               "HOSTNAME": inst.name}
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=env, timeout=hc.timeout_s,
                                  cwd=self.project.path.parent)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def _await_healthy(self, inst: Instance, deadline: float) -> None:
        hc = inst.service.healthcheck
        if inst.healthy:
            return
        if hc is None:
            raise ClusterError(f"{inst.name} is waited for as service_healthy, but its service "
                               "has no healthcheck")
        failures = 0
        while True:
            if not inst.running:
                raise ClusterError(f"{inst.name} exited with status {inst.returncode} before "
                                   f"it became healthy{self._tail(inst)}")
            if self.check_health(inst):
                inst.healthy = True
                self._say(f"{inst.name} is healthy")
                return
            now = time.monotonic()
            in_start_period = now - inst.started_at < hc.start_period_s
            if not in_start_period:
                failures += 1
                if failures >= hc.retries:
                    inst.healthy = False
                    raise ClusterError(f"{inst.name} is unhealthy: its healthcheck failed "
                                       f"{failures} times{self._tail(inst)}")
            if now > deadline:
                raise ClusterError(f"{inst.name} did not become healthy in time{self._tail(inst)}")
            pause = hc.interval_s
            if in_start_period and hc.start_interval_s is not None:
                pause = hc.start_interval_s
            until = min(now + pause, deadline)
            with self._cond:  # wakes early if the replica exits
                while inst.running and time.monotonic() < until:
                    self._cond.wait(until - time.monotonic())

    # --- looking at replicas ---------------------------------------------------------------------
    def replicas(self, service: str) -> list[Instance]:
        return [i for i in self.instances.values() if i.service.name == service]

    def __getitem__(self, name: str) -> Instance:
        return self.instances[name]

    def _tail(self, inst: Instance, n: int = 20) -> str:
        with self._cond:
            lines = inst.lines[-n:]
        return "" if not lines else "; its last output:\n  " + "\n  ".join(lines)

    def wait_for_line(self, inst: Instance | str, pattern: str, timeout_s: float) -> re.Match:
        """The first line of the replica's output matching ``pattern`` (a regex)."""
        inst = self.instances[inst] if isinstance(inst, str) else inst
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._cond:
            while True:
                for line in inst.lines[seen:]:
                    m = regex.search(line)
                    if m:
                        return m
                seen = len(inst.lines)
                if inst.returncode is not None and not inst.reader.is_alive():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        state = ("exited with status " + str(inst.returncode)) if inst.returncode is not None \
            else f"printed no such line within {timeout_s:g} s"
        raise ClusterError(f"{inst.name} {state} (waiting for /{pattern}/){self._tail(inst)}")

    def wait(self, inst: Instance | str, timeout_s: float | None) -> int:
        """The replica's exit status, once it has exited and its output is all read."""
        inst = self.instances[inst] if isinstance(inst, str) else inst
        if not inst.join(timeout_s):
            raise ClusterError(f"{inst.name} still runs after {timeout_s} s{self._tail(inst)}")
        return inst.returncode

    def wait_all(self, instances: Iterable[Instance], timeout_s: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout_s
        return {i.name: self.wait(i, max(0.0, deadline - time.monotonic())) for i in instances}

    # --- disturbing replicas ---------------------------------------------------------------------
    def stop(self, inst: Instance | str, timeout_s: float | None = None) -> int:
        """``docker stop``: the stop signal to the replica's process, then, after the grace
        period, SIGKILL to everything left in its host. Returns the exit status."""
        inst = self.instances[inst] if isinstance(inst, str) else inst
        grace = inst.service.stop_grace_s if timeout_s is None else timeout_s
        if inst.running:
            try:
                os.kill(inst.proc.pid, inst.service.stop_signal)
            except ProcessLookupError:
                pass
            inst.join(grace)
        kill_namespace_processes(inst.host.namespace)
        inst.join(STOP_JOIN_S)
        return inst.returncode

    def cut(self, inst: Instance | str) -> None:
        """``ip link set down`` on the replica's port: it can reach no other host."""
        inst = self.instances[inst] if isinstance(inst, str) else inst
        self.network.set_link(inst.name, up=False)
        self._say(f"{inst.name}: link cut")

    def restore(self, inst: Instance | str) -> None:
        inst = self.instances[inst] if isinstance(inst, str) else inst
        self.network.set_link(inst.name, up=True)
        self._say(f"{inst.name}: link restored")

    # --- tearing down ---------------------------------------------------------------------------
    def down(self) -> None:
        """Stop every replica (dependents first, each tier in parallel), then remove every
        namespace, link and hosts file of the run. Safe to call twice."""
        if self._down:
            return
        self._down = True
        try:
            for name in reversed(self.project.start_order()):
                tier = [i for i in self.replicas(name) if i.running]
                for inst in tier:
                    try:
                        os.kill(inst.proc.pid, inst.service.stop_signal)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + max([i.service.stop_grace_s for i in tier] + [0])
                for inst in tier:
                    inst.join(max(0.0, deadline - time.monotonic()))
                    kill_namespace_processes(inst.host.namespace)
        finally:
            self.network.destroy()
            for inst in self.instances.values():
                inst.join(STOP_JOIN_S)
            self._finalizer.detach()

    def state(self) -> dict:
        """What ``dsm hosts down`` needs to find this run."""
        return {
            "run_id": self.network.run_id,
            "pid": os.getpid(),
            "subnet": self.network.subnet + ".0/24",
            "instances": {
                i.name: {"namespace": i.host.namespace, "address": i.host.address,
                         "pid": i.proc.pid if i.proc else None}
                for i in self.instances.values()
            },
        }


def on_signals(handler: Callable[[int], None], signals=(signal.SIGTERM, signal.SIGINT)):
    """Install ``handler(signum)`` for the signals; returns a function restoring the old ones."""
    old = {s: signal.signal(s, lambda signum, frame: handler(signum)) for s in signals}
    return lambda: [signal.signal(s, h) for s, h in old.items()]
