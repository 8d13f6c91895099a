"""What every benchmark shares: progress lines, the environment, a session (log directory, child
processes, cleanup), and the summary rows of the combined table (``dsm bench``).

A summary row is one measurement beside its baseline::

    {"bench": "scan", "key": "scan", "label": "...", "unit": "MB/s", "n": 3,
     "median": ..., "p90": ..., "p99": ..., "ratio": 0.45, "baseline": "stream",
     "target": ">=0.4x", "verdict": "ok" | "MISSED" | "report" | "baseline"}

``ratio`` is the measurement's median over its baseline's (for a rate, the measurement's rate
over the baseline's: higher is better), each measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from dsm.extras import MissingExtra, check
from dsm.layout import DEFAULT_REGION_BYTES

#: percentiles shown in every table
PERCENTILES = (50, 90, 99)
NS_PER_US = 1_000
NS_PER_S = 1_000_000_000
US_PER_S = 1_000_000
BYTES_PER_MB = 1_000_000
#: the region of the lock and sharing benchmarks: the one users get by default, so that a cost
#: that grows with the region shows (the write notices once cost a millisecond per acquire at
#: this size, and 44 us at the 64 MiB these benchmarks used)
SYNC_REGION_BYTES = DEFAULT_REGION_BYTES
BYTES_PER_MIB = 1 << 20
#: what needs matplotlib, in the error when it is missing
PLOT_FEATURE = "--plot"
#: the agents' message counters that add up to the cluster's traffic (``NodeStats``): every
#: message is one an agent sent or received, ``messages_DIRECTION`` and ``bytes_DIRECTION``
TRAFFIC_DIRECTIONS = ("to_directory", "from_directory", "to_peers")

#: verdicts of a summary row
OK, MISSED, REPORT, BASELINE = "ok", "MISSED", "report", "baseline"


class BenchError(RuntimeError):
    """A benchmark saw something wrong or could not run (the message says what)."""


class Progress:
    """Progress lines on stderr, stamped with the seconds since the start."""

    def __init__(self, prefix: str = "") -> None:
        self.t0 = time.monotonic()
        self.prefix = prefix

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f} s] {self.prefix}{text}", file=sys.stderr,
              flush=True)

    def sub(self, prefix: str) -> "Progress":
        """The same clock, each line prefixed (a benchmark of the suite)."""
        child = Progress(self.prefix + prefix)
        child.t0 = self.t0
        return child


def message_traffic(counters: dict) -> tuple[int, int]:
    """The messages and bytes an agent's counters (``node.stats()["counters"]``) add up to."""
    return (sum(counters.get(f"messages_{d}", 0) for d in TRAFFIC_DIRECTIONS),
            sum(counters.get(f"bytes_{d}", 0) for d in TRAFFIC_DIRECTIONS))


def environment() -> dict:
    import zmq

    return {
        "python": platform.python_version(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "numpy": np.__version__,
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def endpoint(transport: str, sock_dir: Path, name: str) -> str:
    """Where a benchmark's server binds: any free tcp loopback port, or an ipc path."""
    if transport == "tcp":
        return "tcp://127.0.0.1:*"
    return f"ipc://{sock_dir}/{name}.ipc"


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """n, median, p90, p99 of the samples (NaN when there are none)."""
    a = np.asarray(samples, dtype=np.float64)
    if not len(a):
        return {"n": 0, "median": float("nan"), "p90": float("nan"), "p99": float("nan")}
    p50, p90, p99 = np.percentile(a, PERCENTILES)
    return {"n": int(len(a)), "median": float(p50), "p90": float(p90), "p99": float(p99)}


def summary_row(bench: str, key: str, label: str, unit: str, samples: Sequence[float],
                ratio: float | None = None, baseline: str | None = None,
                at_most: float | None = None, at_least: float | None = None,
                n: int | None = None, is_baseline: bool = False) -> dict:
    """A row of the combined table. ``at_most``/``at_least``: the target on ``ratio`` (a
    latency's ratio must stay at most, a rate's at least this), or with no baseline on the
    median itself; neither: reported only. ``is_baseline``: the row is others' baseline."""
    st = percentiles(samples)
    if n is not None:
        st["n"] = n
    target, verdict = None, REPORT
    if is_baseline:
        verdict = BASELINE
    if at_most is not None:
        target = f"<={at_most:g}x" if ratio is not None or baseline else f"<={at_most:g}"
        value = ratio if ratio is not None else st["median"]
        verdict = OK if value == value and value <= at_most else MISSED
    elif at_least is not None:
        target = f">={at_least:g}x" if ratio is not None or baseline else f">={at_least:,.0f}"
        value = ratio if ratio is not None else st["median"]
        verdict = OK if value == value and value >= at_least else MISSED
    return {"bench": bench, "key": key, "label": label, "unit": unit, **st,
            "ratio": ratio, "baseline": baseline, "target": target, "verdict": verdict}


def _number(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if abs(x) >= 0.1 or x == 0 else f"{x:.3g}"


def format_summary(rows: list[dict], title: str) -> str:
    """The combined table: measurement, n, median, p90, p99, unit, ratio, target, verdict."""
    header = ["measurement", "n", "median", "p90", "p99", "unit", "ratio", "target", "verdict"]
    lines = []
    for r in rows:
        ratio = "-" if r["ratio"] is None or r["ratio"] != r["ratio"] else f"{r['ratio']:.2f}x"
        lines.append([r["label"], str(r["n"]), _number(r["median"]), _number(r["p90"]),
                      _number(r["p99"]), r["unit"], ratio, r["target"] or "-", r["verdict"]])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    right = {1, 2, 3, 4, 6}

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    out = [title, fmt(header), fmt(["-" * w for w in widths])]
    bench = None
    for r, line in zip(rows, lines):
        if bench is not None and r["bench"] != bench:
            out.append("")
        bench = r["bench"]
        out.append(fmt(line))
    return "\n".join(out)


@contextmanager
def echo_dealer(endpoint: str) -> Iterator[Any]:
    """A DEALER connected to the echo server at ``endpoint`` (for ``round_trips``), closed
    with its context afterwards, unsent messages dropped."""
    import zmq

    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(endpoint)
        yield dealer
    finally:
        dealer.close(0)
        ctx.term()


def round_trips(dealer, payload: bytes, n: int, timeout_s: float) -> list[int]:
    """``n`` timed round trips of ``payload`` through an echo server (a connected DEALER), in
    ns; each answer must come within ``timeout_s``."""
    pc = time.perf_counter_ns
    out = [0] * n
    timeout_ms = int(timeout_s * 1000)
    for i in range(n):
        t0 = pc()
        dealer.send(payload)
        if not dealer.poll(timeout_ms):
            raise BenchError(f"the echo server did not answer within {timeout_s:g} s")
        reply = dealer.recv(copy=False)
        out[i] = pc() - t0
        if len(reply) != len(payload):
            raise BenchError(f"the echo server sent {len(reply)} bytes back, not {len(payload)}")
    return out


# --- a benchmark's session -------------------------------------------------------------------------
def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE",
                        help="write the raw samples, the summary and the environment here")
    parser.add_argument("--plot", metavar="FILE",
                        help="draw the latency distributions and the rates as a PNG "
                             "(matplotlib: the plot extra)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the processes' logs (their directory is printed)")


def add_transport_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transport", choices=["tcp", "ipc"], default="tcp",
                        help="ZeroMQ transport of the directory and of the baselines (default tcp "
                             "loopback; ipc for one-host clusters)")


class Interrupted(BaseException):
    """SIGTERM or Ctrl-C: the benchmark unwinds (every child is killed on the way)."""


@contextmanager
def environment_set(values: dict[str, str]) -> Iterator[None]:
    """While inside, these environment variables hold ``values`` (the processes started then
    inherit them); as they were afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def terminable() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C while the block runs, so that its ``finally`` clauses kill
    every child."""

    def on_sigterm(signum, frame):
        raise Interrupted

    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class LogDirectory:
    """A fresh directory for the processes' logs (and ipc sockets), as a context: removed on the
    way out unless ``keep`` is set (by the caller, or ``--keep-logs``) or the block failed; a kept
    one's path is printed."""

    def __init__(self, name: str, keep: bool = False):
        self.name = name
        self.keep = keep
        self.path = Path(tempfile.mkdtemp(prefix=f"dsm-bench-{name}-"))

    def __enter__(self) -> "LogDirectory":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.keep or exc_type is not None:
            print(f"dsm bench {self.name}: logs in {self.path}", file=sys.stderr)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def write_outputs(result: dict, args: argparse.Namespace, progress: Progress) -> None:
    """``--json`` and ``--plot``, for any benchmark's result (one, or the suite's)."""
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(result, f)
        progress(f"raw samples written to {args.json}")
    if getattr(args, "plot", None):
        from dsm.bench.plot import plot

        plot(result, args.plot)
        progress(f"plot drawn to {args.plot}")


def plot_problem(args: argparse.Namespace) -> str | None:
    """Why ``--plot`` cannot draw on this install (matplotlib missing), said before the run
    rather than after it; None when it can, or when no plot was asked for."""
    if getattr(args, "plot", None):
        try:
            check("matplotlib", PLOT_FEATURE)
        except MissingExtra as exc:
            return str(exc)
    return None


def run_benchmark(name: str, args: argparse.Namespace,
                  check_arguments: Callable[[argparse.Namespace], str | None],
                  measure: Callable[[argparse.Namespace, Progress, Path], dict],
                  format_table: Callable[[dict], str],
                  failed: Callable[[dict], bool] | None = None) -> int:
    """The command around one benchmark: check its flags (2 on a bad one), measure with progress
    under a log directory (kept on failure or with --keep-logs), print its table, write --json and
    --plot. 1 when it failed (``failed(result)``, or an error), 130 when interrupted, 3 with
    --fail-on-target when a target was missed, else 0."""
    prog = f"dsm bench {name}"
    problem = check_arguments(args) or plot_problem(args)
    if problem:
        print(f"{prog}: {problem}", file=sys.stderr)
        return 2
    progress = Progress()
    try:
        with terminable(), LogDirectory(name, args.keep_logs) as logs:
            result = measure(args, progress, logs.path)
            bad = failed is not None and failed(result)
            logs.keep |= bad  # the failed runs' logs
    except BenchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    print(format_table(result))
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    write_outputs(result, args, progress)
    if bad:
        return 1
    rows: list[dict[str, Any]] = result.get("rows", [])
    if getattr(args, "fail_on_target", False) and any(r.get("meets_target") is False for r in rows):
        return 3
    return 0


def text_table(header: list[str], lines: list[list[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned, a rule
    under the header."""
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])
