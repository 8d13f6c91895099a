"""``dsm demo``: a whole cluster on this machine, a parallel program on shared pages, a verdict.

Starts ``dsm directory`` and N nodes (``dsm run ... -- python -m dsm.workloads.WORKLOAD``),
each a separate set of processes talking over tcp loopback (or ipc), runs one of the workloads
of ``dsm/workloads/`` on them, computes the same thing with plain numpy in this one process and
compares: it prints a table of each node's counters and a line saying whether the results
matched. The exit status is 0 if and only if they matched.

Workloads (``--workload``):
  rows     (default) row blocks computed from every row, a falsely shared histogram
  jacobi   Jacobi relaxation of a 2-D grid, a band of rows per node, a barrier per iteration
  matmul   blocked C = A·B, A and B written by one node and read by all
  sort     bucket sort of integer keys, a shared histogram updated under locks
  counter  N nodes x M increments of shared counters under locks
"""

from __future__ import annotations

import argparse
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

from dsm.consistency import CONSISTENCIES
from dsm.core.stats import quantile_text
from dsm.managers import MANAGERS
from dsm.keys import add_keys_argument
from dsm.watchdog import process_stats
from dsm.workloads import CHECKED, WORKLOADS as WORKLOAD_MODULES, load

#: how long the directory may take to print its endpoint
DIRECTORY_START_TIMEOUT_S = 15.0
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_NODES = 3
#: how long a stopping child may take before it is killed
STOP_TIMEOUT_S = 5.0
#: region size: enough for the arrays, small enough to be cheap
MIN_REGION_BYTES = 64 << 20
#: longest directory that can hold the Unix sockets (an agent's is DIR/dsm-XXXXXXXX/agent.sock)
SOCKET_DIR_MAX = 80


class DemoError(Exception):
    """The cluster could not be started or did not finish."""


#: the default workload's defaults (dsm/workloads/rows.py; not imported here: every `dsm`
#: command builds this parser, and the workload modules import numpy)
DEFAULT_SIZE = 96
DEFAULT_ROUNDS = 6
#: workload name -> the module run on each node (it defines ``WORKLOAD``, a
#: dsm.workloads.common.Workload)
WORKLOADS = {name: WORKLOAD_MODULES[name] for name in CHECKED}
DEFAULT_WORKLOAD = "rows"
#: one thread per node process (and in the numpy reference): BLAS threads would only fight over
#: the cores the nodes share
SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def load_workload(name: str):
    """The ``dsm.workloads.common.Workload`` of ``name``."""
    return load(name)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run a directory and N nodes on this machine and check a shared computation",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workload", choices=list(WORKLOADS), default=DEFAULT_WORKLOAD,
                        help=f"the program the nodes run (default {DEFAULT_WORKLOAD})")
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES,
                        help=f"how many nodes (default {DEFAULT_NODES})")
    parser.add_argument("--size", type=int, default=None,
                        help="the problem's size: rows of the arrays, grid or matrix side, keys, "
                             f"increments per node (default: the workload's; rows: {DEFAULT_SIZE})")
    parser.add_argument("--rounds", "--iterations", dest="rounds", type=int, default=None,
                        metavar="N",
                        help="rounds or iterations of the computation (default: the workload's; "
                             f"rows: {DEFAULT_ROUNDS})")
    parser.add_argument("--consistency", choices=CONSISTENCIES, default=None,
                        help="consistency model of the workload's data arrays (python -m "
                             "dsm.workloads.NAME --consistency; default: the nodes' default, "
                             "sequential; release: jacobi, matmul, sort, counter)")
    parser.add_argument("--transport", choices=["tcp", "ipc"], default="tcp",
                        help="how the nodes reach the directory: tcp loopback or ipc (default tcp)")
    parser.add_argument("--manager", choices=MANAGERS, default=None,
                        help="the directory's manager (dsm directory --manager; default relay, "
                             "distributed with --shards K > 1)")
    parser.add_argument("--shards", type=int, default=1, metavar="K",
                        help="the directory's manager shards (dsm directory --shards; default 1)")
    parser.add_argument("--trace", metavar="DIR",
                        help="write the protocol traces (directory.trace, NODE.trace) into DIR")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds the whole run may take (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the processes' logs (they are kept anyway when the run fails)")
    add_keys_argument(parser, "the directory and every node use them")
    parser.set_defaults(func=run)


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
                        raise DemoError(f"{child.name} exited with status {code} without a result")
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


# --- the report ---------------------------------------------------------------------------------
COLUMNS = [
    ("node", None),
    ("missing rd", "faults_missing_read"),
    ("missing wr", "faults_missing_write"),
    ("wp wr", "faults_wp_write"),
    ("requests", "requests"),
    ("pages in", "pages_in"),
    ("pages out", "pages_out"),
    ("invalidations", "invalidations"),
    ("median fault µs", None),
]


def _median(counts: list[int], bounds: list[int]) -> str:
    return quantile_text(counts, bounds, 0.5)


def format_table(results: list[dict]) -> str:
    rows = []
    totals: dict[str, int] = {}
    all_counts: list[int] = []
    bounds: list[int] = []
    for res in results:
        stats = res.get("stats")
        row = [res.get("node", f"node{res.get('rank')}")]
        if not stats:  # the node did not get as far as reporting
            rows.append(row + ["-"] * (len(COLUMNS) - 1))
            continue
        counters = stats.get("counters", {})
        for _, key in COLUMNS[1:-1]:
            row.append(str(counters.get(key, 0)))
            totals[key] = totals.get(key, 0) + counters.get(key, 0)
        counts = stats.get("latency_counts", [])
        bounds = stats.get("latency_buckets_us", bounds)
        all_counts = [a + b for a, b in zip(all_counts, counts)] if all_counts else list(counts)
        row.append(_median(counts, bounds))
        rows.append(row)
    rows.append(["all"] + [str(totals.get(key, 0)) for _, key in COLUMNS[1:-1]]
                + [_median(all_counts, bounds)])
    headers = [name for name, _ in COLUMNS]
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    sep = "  ".join("-" * w for w in widths)
    out = [line(headers), sep]
    out += [line(r) for r in rows[:-1]]
    out += [sep, line(rows[-1])]
    return "\n".join(out)


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
        # TMPDIR: `dsm run` makes its agent's socket directory there, removed in stop()
        child = _start(name, cmd, self.workdir, {**self.env, "TMPDIR": str(self.sock_dir)})
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


# --- the command --------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    spec = load_workload(args.workload)
    size = spec.default_size if args.size is None else args.size
    iterations = spec.default_iterations if args.rounds is None else args.rounds
    if args.nodes < 1:
        print("dsm demo: --nodes must be at least 1", file=sys.stderr)
        return 2
    if size < spec.min_size(args.nodes):
        print(f"dsm demo: --size must be at least {spec.min_size(args.nodes)} for {args.workload} "
              f"on {args.nodes} nodes", file=sys.stderr)
        return 2
    if iterations < 1:
        print("dsm demo: --rounds/--iterations must be at least 1", file=sys.stderr)
        return 2
    if args.consistency is not None and args.consistency not in spec.consistencies:
        print(f"dsm demo: {args.workload} runs under {', '.join(spec.consistencies)} "
              f"consistency, not {args.consistency}", file=sys.stderr)
        return 2
    if args.shards < 1 or (args.shards > 1 and args.manager not in (None, "distributed")):
        print(f"dsm demo: --shards {args.shards} needs a number of shards of at least 1, and "
              "several make --manager distributed", file=sys.stderr)
        return 2

    from dsm.workloads.common import digest, values_of

    t0 = time.monotonic()
    deadline = t0 + args.timeout
    nodes_text = f"{args.nodes} node{'s' if args.nodes != 1 else ''}"
    what = spec.describe(args.nodes, size, iterations)
    workdir = Path(tempfile.mkdtemp(prefix="dsm-demo-"))
    trace_dir = Path(args.trace).resolve() if args.trace else None
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
    ok = False

    def on_sigterm(signum, frame):  # stop the children on `kill` as on Ctrl-C
        raise KeyboardInterrupt

    old_handler = signal.signal(signal.SIGTERM, on_sigterm)
    env = {**SINGLE_THREAD_ENV, **os.environ}
    cluster = LocalCluster(workdir, env, args.transport, trace_dir, args.keys, args.manager,
                           args.shards)
    try:
        security = f" with CurveZMQ keys from {cluster.keys_dir}" if cluster.keys_dir else ""
        if args.shards > 1:
            security += f", a distributed manager of {args.shards} shards"
        endpoint = cluster.start_directory(region_bytes_for(spec, args.nodes, size, iterations),
                                           args.timeout)
        if args.workload == "rows":
            print(f"dsm demo: directory on {endpoint}, {nodes_text} over {args.transport}"
                  f"{security}; {what}", flush=True)
        else:
            print(f"dsm demo: directory on {endpoint}, {nodes_text} over {args.transport}"
                  f"{security}; workload {spec.name} ({spec.summary}): {what}"
                  + (f", {args.consistency} consistency" if args.consistency else ""), flush=True)
        want = want_values = None
        numpy_s = None
        if spec.takes_expect:
            # the nodes compare what they read with numpy's digest, computed here in one process
            t_ref = time.perf_counter()
            reference = spec.reference(args.nodes, size, iterations)
            numpy_s = time.perf_counter() - t_ref
            want, want_values = digest(reference), values_of(reference)
        cluster.start_nodes(spec, args.nodes, size, iterations, args.timeout, expect=want,
                            consistency=args.consistency)
        cluster.collect(deadline)
        elapsed = time.monotonic() - t0
        if want is None:
            # the same computation with plain numpy in this one process
            t_ref = time.perf_counter()
            reference = spec.reference(args.nodes, size, iterations)
            numpy_s = time.perf_counter() - t_ref
            want, want_values = digest(reference), values_of(reference)
        results, problems = cluster.results(want)

        print()
        print(format_table(results))
        print()
        if spec.takes_expect:
            print("counters: the run phase of each node (initialization and computation), "
                  "not the final check")
        seconds = [r["seconds"] for r in results if "seconds" in r]
        if seconds:
            print(f"compute {max(s['compute'] for s in seconds):.2f} s (slowest node), "
                  f"verify {max(s['verify'] for s in seconds):.2f} s, "
                  f"numpy in one process {numpy_s:.2f} s, whole run {elapsed:.2f} s")
        if trace_dir is not None:
            print(f"traces in {trace_dir}")
        remark = next((r["remark"] for r in results if r.get("remark")), None)
        if not problems:
            ok = True
            if args.workload == "rows":
                print(f"result: MATCH ({nodes_text}, {want_values} values after {iterations} "
                      f"rounds checked against numpy in one process: digest {want})")
            else:
                print(f"result: MATCH ({nodes_text}, {spec.name}, {want_values} values "
                      f"checked against numpy in one process: digest {want}"
                      + (f"; {remark}" if remark else "") + ")")
        else:
            print(f"result: MISMATCH ({'; '.join(problems)})")
    except DemoError as exc:
        print(f"dsm demo: {exc}", file=sys.stderr)
        print("result: MISMATCH (the run did not complete)")
    except KeyboardInterrupt:
        print("dsm demo: interrupted, stopping every process", file=sys.stderr)
        ok = False
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, old_handler)
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            if not ok:
                tails = cluster.log_tails()
                if tails:
                    print(tails, file=sys.stderr)
            print(f"dsm demo: logs in {workdir}", file=sys.stderr)
    return 0 if ok else 1
