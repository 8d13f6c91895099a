"""``dsm top --directory ENDPOINT``: a live view of a running cluster, in the terminal.

Every second it asks the directory for its statistics (a read-only StatsQuery: no session, no
effect on the cluster) and redraws: per node, faults per second by kind, pages in and out,
invalidations, median and p99 fault latency; per array, a map of its pages coloured by owner or
state (``dsm.topview``). ``q`` or Ctrl-C quits. It needs nothing but the directory's port, so it
works over ssh.

With ``--once``, or when its output is not a terminal (a file, a pipe, a notebook's cell), it
prints one plain-text snapshot instead: two reports ``--interval`` apart (the rates are over that
interval), no colours, then it exits (status 1 if the directory did not answer).
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import termios
import time
import tty

import zmq

from dsm import protocol as p
from dsm.commands.agent import DIRECTORY_ENV
from dsm.extras import MissingExtra, require

REFRESH_INTERVAL_S = 1.0
#: how long one answer may take before the view says the directory is not answering
ANSWER_TIMEOUT_S = 2.0
QUIT_KEYS = (b"q", b"Q")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("top", help="watch a running cluster live", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--directory", default=os.environ.get(DIRECTORY_ENV),
                        required=DIRECTORY_ENV not in os.environ,
                        help=f"the directory's ZeroMQ endpoint (env {DIRECTORY_ENV})")
    parser.add_argument("--interval", type=float, default=REFRESH_INTERVAL_S,
                        help=f"seconds between refreshes (default {REFRESH_INTERVAL_S:g})")
    parser.add_argument("--once", action="store_true",
                        help="print one plain-text snapshot and exit (the default when the "
                             "output is not a terminal)")
    parser.set_defaults(func=run)


class StatsClient:
    """A DEALER to the directory that asks for statistics, each answer within a deadline."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self._ctx = zmq.Context.instance()
        self._req = 0
        self._open()

    def _open(self) -> None:
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # a readable name in the directory's trace (one lane for this viewer)
        self.sock.setsockopt(zmq.IDENTITY, f"top-{os.getpid()}-{self._req}".encode())
        self.sock.connect(self.endpoint)

    def query(self, timeout_s: float = ANSWER_TIMEOUT_S) -> dict | None:
        """The directory's report as a dict, or None if it did not answer in time (the socket
        is then reopened, so that a late answer cannot be taken for the next one's)."""
        self._req += 1
        self.sock.send_multipart(p.encode(p.StatsQuery(self._req)))
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            msg, _ = p.decode(self.sock.recv_multipart(), 0, p.Direction.TO_NODE)
            if isinstance(msg, p.StatsReport) and msg.req == self._req:
                return {"nodes": msg.nodes, "latency_buckets_us": msg.latency_buckets_us,
                        "arrays": msg.arrays, "directory": msg.directory,
                        "manager": msg.manager}
        self.sock.close(0)
        self._open()
        return None

    def close(self) -> None:
        self.sock.close(0)


def _key_pressed(timeout_s: float) -> bytes | None:
    if not sys.stdin.isatty():
        time.sleep(timeout_s)  # nothing to read keys from: the refresh interval
        return None
    ready, _, _ = select.select([sys.stdin], [], [], timeout_s)
    return os.read(sys.stdin.fileno(), 16) if ready else None


def run(args: argparse.Namespace) -> int:
    try:
        require("rich", "the live view")
    except MissingExtra as exc:
        print(f"dsm top: {exc}", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from dsm.topview import render

    if args.interval <= 0:
        print(f"dsm top: --interval must be positive, got {args.interval}", file=sys.stderr)
        return 2
    if args.once or not sys.stdout.isatty():
        return snapshot(args)
    console = Console()
    client = StatsClient(args.directory)
    old_tty = None
    if sys.stdin.isatty():
        old_tty = termios.tcgetattr(sys.stdin)
        tty.setcbreak(sys.stdin.fileno())
    before, before_t = None, 0.0
    try:
        with Live(Text(f"dsm top: asking {args.directory}..."), console=console,
                  auto_refresh=False, screen=False) as live:
            while True:
                now = client.query()
                t = time.monotonic()
                if now is None:
                    live.update(Text(f"dsm top: the directory {args.directory} has not answered "
                                     f"for {ANSWER_TIMEOUT_S:g} s (q quits)", style="bold red"),
                                refresh=True)
                else:
                    live.update(render(now, before, t - before_t, args.directory,
                                       console.width), refresh=True)
                    before, before_t = now, t
                key = _key_pressed(max(0.0, args.interval - (time.monotonic() - t)))
                if key and key[:1] in QUIT_KEYS:
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if old_tty is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, old_tty)
        client.close()


def snapshot(args: argparse.Namespace) -> int:
    """One plain-text view: two reports ``--interval`` apart (the rates need both), printed
    without colours, as wide as $COLUMNS says (80 by default)."""
    from rich.console import Console

    from dsm.topview import render

    console = Console(no_color=True, highlight=False, emoji=False, force_terminal=False,
                      force_interactive=False, soft_wrap=False)
    client = StatsClient(args.directory)
    try:
        before = client.query()
        before_t = time.monotonic()
        if before is not None:
            time.sleep(args.interval)
        now = client.query() if before is not None else None
        if now is None:
            print(f"dsm top: the directory {args.directory} has not answered for "
                  f"{ANSWER_TIMEOUT_S:g} s", file=sys.stderr)
            return 1
        with console.capture() as captured:
            console.print(render(now, before, time.monotonic() - before_t, args.directory,
                                 console.width, live=False))
        print("\n".join(line.rstrip() for line in captured.get().splitlines()), flush=True)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
