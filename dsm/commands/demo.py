"""``dsm demo``: a whole cluster on this machine, a workload that shares pages, and a verdict.

Starts ``dsm directory`` and N nodes (``dsm run ... -- python -m nodes.demo_workload``), each a
separate set of processes talking over tcp loopback (or ipc). The nodes compute rows of shared
arrays from rows the other nodes wrote, and write words of a page the other nodes write too
(see ``nodes/demo_workload.py``). This process computes the same thing with plain numpy and
compares; it prints a table of each node's counters and a line saying whether the results
matched. The exit status is 0 if and only if they matched.
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


#: the workload's defaults (nodes/demo_workload.py; not imported here: every `dsm` command
#: builds this parser, and the workload module imports numpy)
DEFAULT_SIZE = 96
DEFAULT_ROUNDS = 6


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run a directory and N nodes on this machine and check a shared computation",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES,
                        help=f"how many nodes (default {DEFAULT_NODES})")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"rows of the shared arrays, 3 KiB each (default {DEFAULT_SIZE})")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"rounds of the computation (default {DEFAULT_ROUNDS})")
    parser.add_argument("--transport", choices=["tcp", "ipc"], default="tcp",
                        help="how the nodes reach the directory: tcp loopback or ipc (default tcp)")
    parser.add_argument("--trace", metavar="DIR",
                        help="write the protocol traces (directory.trace, NODE.trace) into DIR")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds the whole run may take (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the processes' logs (they are kept anyway when the run fails)")
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
    # a session of its own: one killpg reaches the node's agent and workload too, and a Ctrl-C in
    # the terminal reaches only this process, which then stops every child
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
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


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
    from nodes.demo_workload import RESULT_PREFIX

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
    total = sum(counts)
    if not total:
        return "-"
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen * 2 >= total:
            return f"≤{bounds[i]}" if i < len(bounds) else f">{bounds[-1]}"
    return "-"


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


# --- the command --------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from nodes.demo_workload import COLUMNS as ROW_WORDS
    from nodes.demo_workload import digest, reference

    if args.nodes < 1:
        print("dsm demo: --nodes must be at least 1", file=sys.stderr)
        return 2
    if args.size < args.nodes:
        print(f"dsm demo: --size must be at least --nodes ({args.nodes})", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("dsm demo: --rounds must be at least 1", file=sys.stderr)
        return 2

    t0 = time.monotonic()
    deadline = t0 + args.timeout
    nodes_text = f"{args.nodes} node{'s' if args.nodes != 1 else ''}"
    workdir = Path(tempfile.mkdtemp(prefix="dsm-demo-"))
    trace_dir = Path(args.trace).resolve() if args.trace else None
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    extra_dirs: list[Path] = []
    ok = False

    def on_sigterm(signum, frame):  # stop the children on `kill` as on Ctrl-C
        raise KeyboardInterrupt

    old_handler = signal.signal(signal.SIGTERM, on_sigterm)
    env = dict(os.environ)
    env.pop("DSM_AGENT_SOCKET", None)
    # the workload module lives next to the dsm package: make it importable from any directory
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        array_bytes = args.size * ROW_WORDS * 8
        region = max(MIN_REGION_BYTES, (3 * array_bytes + (args.nodes + 4) * 4096 + (1 << 20))
                     // (1 << 20) * (1 << 20) + (1 << 20))
        # Unix socket paths (the agents' sockets, an ipc endpoint) must fit in 108 bytes
        sock_dir = workdir
        if len(str(workdir)) > SOCKET_DIR_MAX:
            sock_dir = Path(tempfile.mkdtemp(prefix="dsm-", dir="/tmp"))
            extra_dirs.append(sock_dir)
        if args.transport == "tcp":
            listen = "tcp://127.0.0.1:*"
        else:
            listen = f"ipc://{sock_dir}/directory.ipc"
        cmd = [*_python(), "-m", "dsm", "--log-level", "INFO", "directory", "--listen", listen,
               "--region-size", str(region)]
        if trace_dir is not None:
            cmd += ["--trace", str(trace_dir / "directory.trace")]
        directory = _start("directory", cmd, workdir, env)
        children.append(directory)
        line = _read_first_line(directory, min(DIRECTORY_START_TIMEOUT_S, args.timeout))
        if not line.startswith("directory listening on "):
            raise DemoError(f"unexpected first line from the directory: {line!r}")
        endpoint = line.rsplit(" ", 1)[-1].replace("0.0.0.0", "127.0.0.1")
        print(f"dsm demo: directory on {endpoint}, {nodes_text} over {args.transport}; "
              f"{args.size} rows x {ROW_WORDS} int64 ({array_bytes // 1024} KiB) per array, "
              f"{args.rounds} rounds", flush=True)

        nodes: list[Child] = []
        for k in range(args.nodes):
            name = f"node{k}"
            cmd = [*_python(), "-m", "dsm", "run", "--directory", endpoint, "--node", name]
            if trace_dir is not None:
                cmd += ["--trace", str(trace_dir / f"{name}.trace")]
            cmd += ["--", *_python(), "-m", "nodes.demo_workload", "--rank", str(k),
                    "--nodes", str(args.nodes), "--size", str(args.size),
                    "--rounds", str(args.rounds),
                    "--barrier-timeout", str(max(5.0, args.timeout))]
            # TMPDIR: `dsm run` makes its agent's socket directory there, removed below
            child = _start(name, cmd, workdir, {**env, "TMPDIR": str(sock_dir)})
            children.append(child)
            nodes.append(child)

        _collect(nodes, deadline)
        elapsed = time.monotonic() - t0
        # the same computation with plain numpy in this one process
        want_final, want_hist = reference(args.nodes, args.size, args.rounds)
        want = digest(want_final, want_hist)

        results = []
        problems = []
        for child in nodes:
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
                problems.append(f"{child.name}: {res.get('mismatches', '?')} of "
                                f"{res.get('values', '?')} values differ from numpy")
            elif child.proc.returncode != 0:
                problems.append(f"{child.name}: exit status {child.proc.returncode}")
            res.setdefault("node", child.name)
            results.append(res)

        print()
        print(format_table(results))
        print()
        seconds = [r["seconds"] for r in results if "seconds" in r]
        if seconds:
            print(f"compute {max(s['compute'] for s in seconds):.2f} s, "
                  f"verify {max(s['verify'] for s in seconds):.2f} s, "
                  f"whole run {elapsed:.2f} s")
        if trace_dir is not None:
            print(f"traces in {trace_dir}")
        values = want_final.size + want_hist.size
        if not problems:
            ok = True
            print(f"result: MATCH ({nodes_text}, {values} values after {args.rounds} rounds "
                  f"checked against numpy in one process: digest {want})")
        else:
            print(f"result: MISMATCH ({'; '.join(problems)})")
    except DemoError as exc:
        print(f"dsm demo: {exc}", file=sys.stderr)
        print("result: MISMATCH (the run did not complete)")
    except KeyboardInterrupt:
        print("dsm demo: interrupted, stopping every process", file=sys.stderr)
        ok = False
    finally:
        # the nodes first (their agents hand pages back to the directory), then the directory
        _stop_all(children[1:])
        _stop_all(children[:1])
        signal.signal(signal.SIGTERM, old_handler)
        for d in extra_dirs:
            shutil.rmtree(d, ignore_errors=True)
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            if not ok:
                for child in children:
                    tail = _tail(child.log_path)
                    if tail:
                        print(f"----- {child.name} ({child.log_path}) -----\n{tail}",
                              file=sys.stderr)
            print(f"dsm demo: logs in {workdir}", file=sys.stderr)
    return 0 if ok else 1
