"""``dsm hosts``: run the compose project on namespace hosts of this machine (needs root and
iproute2), as ``docker compose`` would on a compose network, without Docker.

    dsm hosts up [-f docker-compose.yml] [--scale node=3] [--keys DIR] [SERVICE...]
    dsm hosts down --state FILE | --run ID | --stale | --all
    dsm hosts ls

``up`` starts every service (each replica on a host of its own, see ``dsm/hosts/runner.py``),
echoes their output prefixed with the replica's name, waits until every replica of the
``--until`` services (default: those no other service depends on, i.e. the nodes) has exited,
then stops the rest and removes every namespace, link and process. Its exit status is 0 iff
those replicas all exited 0. ``SIGTERM`` / Ctrl-C tears everything down too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from dsm.errors import DsmError
from dsm.keys import KEYS_ENV

DEFAULT_FILE = "docker-compose.yml"
#: how long ``down --state`` waits for the runner to tear its run down
DOWN_TIMEOUT_S = 60.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hosts", help="run the compose project on network-namespace hosts of this machine",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="hosts_command", required=True, metavar="ACTION")

    up = sub.add_parser("up", help="start the project, wait for its nodes, tear it down")
    up.add_argument("-f", "--file", default=DEFAULT_FILE,
                    help=f"the compose file (default {DEFAULT_FILE})")
    up.add_argument("--scale", action="append", default=[], metavar="SERVICE=N",
                    help="replicas of a service (overrides scale / deploy.replicas)")
    up.add_argument("--until", action="append", default=None, metavar="SERVICE",
                    help="wait for every replica of SERVICE to exit (default: the services no "
                         "other service depends on)")
    up.add_argument("--timeout", type=float, default=None,
                    help="seconds the whole run may take (default: no limit)")
    up.add_argument("--ready-timeout", type=float, default=60.0,
                    help="seconds a dependency may take to become ready (default 60)")
    up.add_argument("--log-dir", help="also write each replica's output to DIR/NAME.log")
    up.add_argument("--state", help="write the run's id, pid and hosts to this JSON file "
                                    "(for `dsm hosts down --state`)")
    up.add_argument("--keys", metavar="DIR", default=None,
                    help="the cluster's CurveZMQ keys (`dsm keygen DIR`): sets DSM_KEYS=DIR for "
                         "the compose file, which mounts it into every service (default: "
                         "$DSM_KEYS; without either the cluster runs open)")
    up.add_argument("services", nargs="*", help="services to start (default: all)")
    up.set_defaults(func=run_up)

    down = sub.add_parser("down", help="tear a run down")
    which = down.add_mutually_exclusive_group(required=True)
    which.add_argument("--state", help="the run whose `up --state` wrote this file")
    which.add_argument("--run", help="the run with this id (see `dsm hosts ls`)")
    which.add_argument("--stale", action="store_true",
                       help="every run whose runner process has exited")
    which.add_argument("--all", action="store_true", help="every run on this machine")
    down.set_defaults(func=run_down)

    ls = sub.add_parser("ls", help="list the runs on this machine and their namespaces")
    ls.set_defaults(func=run_ls)


def _preflight() -> str | None:
    if os.geteuid() != 0:
        return "namespace hosts need root (ip netns add): run it with sudo"
    if shutil.which("ip") is None:
        return "the `ip` command is missing: install iproute2 (apt-get install -y iproute2)"
    return None


def _parse_scale(items: list[str]) -> dict[str, int]:
    scale = {}
    for item in items:
        name, sep, count = item.partition("=")
        if not sep or not count.isdigit():
            raise DsmError(f"--scale wants SERVICE=N, got {item!r}")
        scale[name] = int(count)
    return scale


def run_up(args: argparse.Namespace) -> int:
    from dsm.hosts.compose import load
    from dsm.hosts.runner import Cluster, ClusterError

    problem = _preflight()
    if problem:
        print(f"dsm hosts: {problem}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if args.keys:  # compose takes a relative path from the compose file's directory: not this
        env[KEYS_ENV] = str(Path(args.keys).resolve())
    try:
        project = load(args.file, env, _parse_scale(args.scale))
    except DsmError as exc:
        print(f"dsm hosts: {exc}", file=sys.stderr)
        return 2
    unknown = [s for s in (args.until or []) + args.services if s not in project.services]
    if unknown:
        print(f"dsm hosts: no service {', '.join(unknown)} in {args.file}", file=sys.stderr)
        return 2
    started = set(args.services or project.services)
    for name in list(started):
        stack = [name]
        while stack:
            for dep in project.services[stack.pop()].depends_on:
                if dep not in started:
                    started.add(dep)
                    stack.append(dep)
    depended_on = {d for s in started for d in project.services[s].depends_on}
    until = args.until or [s for s in project.services if s in started and s not in depended_on]

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    old = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    cluster = Cluster(project, log_dir=args.log_dir)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    status = 1
    try:
        cluster.up(args.services or None, ready_timeout_s=args.ready_timeout)
        if args.state:
            Path(args.state).write_text(json.dumps(cluster.state(), indent=2) + "\n")
        waited = [i for s in until for i in cluster.replicas(s)]
        codes = {}
        for inst in waited:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            codes[inst.name] = cluster.wait(inst, left)
        bad = {n: c for n, c in codes.items() if c != 0}
        summary = ", ".join(f"{n} {c}" for n, c in codes.items()) or "nothing to wait for"
        print(f"dsm hosts: exit statuses: {summary}", flush=True)
        status = 1 if bad else 0
    except ClusterError as exc:
        print(f"dsm hosts: {exc}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("dsm hosts: interrupted: tearing the hosts down", file=sys.stderr, flush=True)
        status = 130
    finally:
        for s, h in old.items():  # a second Ctrl-C must not stop the teardown half-way
            signal.signal(s, signal.SIG_IGN)
        cluster.down()
        for s, h in old.items():
            signal.signal(s, h)
        if args.state:
            Path(args.state).unlink(missing_ok=True)
    print(f"dsm hosts: run {cluster.network.run_id} torn down", flush=True)
    return status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def run_down(args: argparse.Namespace) -> int:
    from dsm.hosts import network

    problem = _preflight()
    if problem:
        print(f"dsm hosts: {problem}", file=sys.stderr)
        return 2
    removed: list[str] = []
    if args.state:
        try:
            state = json.loads(Path(args.state).read_text())
        except FileNotFoundError:
            print(f"dsm hosts: no run state in {args.state} (nothing running?)")
            return 0
        pid, run_id = int(state["pid"]), str(state["run_id"])
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)  # the runner stops its replicas in order
            deadline = time.monotonic() + DOWN_TIMEOUT_S
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        removed = network.destroy_run(run_id)  # whatever the runner left
        Path(args.state).unlink(missing_ok=True)
    elif args.run:
        removed = network.destroy_run(args.run)
    elif args.stale:
        removed = network.sweep_stale()
    else:
        for run_id in network.list_runs():
            removed += network.destroy_run(run_id)
    print(f"dsm hosts: removed {len(removed)} namespace(s)" +
          (f": {', '.join(removed)}" if removed else ""))
    return 0


def run_ls(args: argparse.Namespace) -> int:
    from dsm.hosts import network

    runs = network.list_runs()
    if not runs:
        print("no namespace-host runs")
    for run_id, names in runs.items():
        owner = "running" if network.owner_alive(run_id) else "stale (its runner exited)"
        print(f"{run_id}: {owner}: {' '.join(names)}")
    return 0
