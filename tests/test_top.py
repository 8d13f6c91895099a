"""``dsm top`` under a pseudo-terminal: it shows every node of a running cluster, their counters
move, and q quits; with its output in a pipe, or ``--once``, one plain-text snapshot of 80
columns."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from dsm.commands.top import StatsClient
from dsm.managers import Manager
from dsm.topview import DYNAMIC_LEGEND

pytestmark = pytest.mark.timeout(90)

#: how long the view may take to show what is awaited
SCREEN_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 10.0
#: how often the wait for its exit looks again when it prints nothing
EXIT_POLL_S = 0.1
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
#: the workload: node a writes this many new pages per snippet
PAGES_PER_STEP = 64


class Screen:
    """``dsm top`` on a pseudo-terminal; what it printed, escape sequences removed."""

    def __init__(self, endpoint: str):
        self.master, slave = pty.openpty()
        env = {**os.environ, "COLUMNS": "140", "LINES": "40", "TERM": "xterm"}
        self.proc = subprocess.Popen([sys.executable, "-m", "dsm", "top", "--directory", endpoint,
                                      "--interval", "0.3"], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.text = ""

    def wait_for(self, predicate, what: str) -> None:
        deadline = time.monotonic() + SCREEN_TIMEOUT_S
        while not predicate(self.text):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"dsm top did not show {what} within {SCREEN_TIMEOUT_S} s; "
                                     f"it showed:\n{self.text[-3000:]}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the program exited
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"dsm top exited before showing {what}:\n{self.text}")
                self.text += ANSI.sub(b"", chunk).decode(errors="replace")

    def press(self, key: bytes) -> None:
        os.write(self.master, key)

    def wait_exit(self, timeout_s: float) -> int:
        """Its exit status, reading what it still prints meanwhile: a terminal nobody reads
        fills up, and a program blocked writing to it never reads the key that quits it."""
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"dsm top did not exit within {timeout_s} s")
            ready, _, _ = select.select([self.master], [], [], min(left, EXIT_POLL_S))
            if ready:
                try:
                    os.read(self.master, 65536)
                except OSError:  # it exited
                    pass
        return self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        os.close(self.master)


#: the node table's columns up to "pages in" (dsm.topview.node_table)
PAGES_IN_COLUMN = 6


def rows_of(text: str, node: str) -> list[list[str]]:
    """Every drawing of ``node``'s row: its cells after the name."""
    return [line.split()[1:] for line in text.splitlines()
            if re.match(rf"^\s*{node}\s+\d+\s", line)]


def pages_in(text: str, node: str) -> list[int]:
    return [int(r[PAGES_IN_COLUMN - 1]) for r in rows_of(text, node) if len(r) >= PAGES_IN_COLUMN]


def test_top_shows_every_node_and_their_counters_move(make_node, directory):
    a, b = make_node("a"), make_node("b")
    a.run("x = node.array('top', (4096, 512), np.int64); k = 0")
    b.run("x = node.array('top', (4096, 512), np.int64); v = int(x[0, 0])")
    screen = Screen(directory.endpoint)
    try:
        screen.wait_for(lambda t: pages_in(t, "a") and pages_in(t, "b"), "both nodes")
        assert "top: pages 0-" in screen.text  # the array's map
        first = pages_in(screen.text, "a")[-1]
        # a writes pages it never held: each comes in (read-ahead may fetch several a fault)
        a.run(f"x[k:k + {PAGES_PER_STEP}, 0] = 1; k += {PAGES_PER_STEP}")
        screen.wait_for(lambda t: pages_in(t, "a")[-1] >= first + PAGES_PER_STEP,
                        "node a's pages-in counter grow")
        screen.press(b"q")
        assert screen.wait_exit(EXIT_TIMEOUT_S) == 0
    finally:
        screen.close()


def test_the_stats_query_needs_no_session_and_reports_arrays(make_node, directory):
    a = make_node("a")
    a.run("x = node.array('s', (8, 512), np.int64); x[0, 0] = 1")
    client = StatsClient(directory.endpoint)
    try:
        report = client.query()
    finally:
        client.close()
    assert report is not None and "a" in report["nodes"]
    [(name, first, count, runs)] = report["arrays"]
    assert name == "s" and count == 8
    assert runs[0] == [1, "owned", ["a"]] and sum(r[0] for r in runs) == 8


def _snapshot_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_top_prints_one_plain_snapshot_of_80_columns_when_its_output_is_not_a_terminal(
        make_node, directory):
    a, b = make_node("a"), make_node("b")
    a.run("x = node.array('snap', (64, 512), np.int64); x[:32] = 1")
    b.run("x = node.array('snap', (64, 512), np.int64); v = int(x[0, 0]); x[32:] = 2")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run([sys.executable, "-m", "dsm", "top", "--directory", directory.endpoint,
                           "--interval", "0.3"], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=SCREEN_TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert not ANSI.search(out.encode()), out  # plain text: no colours, no cursor moves
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert "rates over" in out and "(q quits)" not in out
    # the latency columns are bucket bounds, and the header says so
    assert "≤1024: at most 1024 µs" in out.replace("\n", " "), out
    for node in ("a", "b"):
        [row] = rows_of(out, node)
        assert len(row) == 11 and row[-3].startswith(("≤", ">", "-")), row
    # the map marks each page with its owner's number in the table (a first, b second), read
    # copies with "=" (b read page 0). The dynamic manager's directory knows no copies (the
    # owners do) and marks whom it handed each page to, and says so: every page to a (a writer
    # in order is handed the array's untouched run whole), b took its half from a, unseen
    lines = _snapshot_lines(out)
    snap = lines[lines.index(next(line for line in lines if line.startswith("snap: pages"))) + 1]
    if directory.manager is Manager.DYNAMIC:
        assert snap == "0" * 64, out
        assert " ".join(DYNAMIC_LEGEND.split()) in " ".join(out.split()), out
    else:
        assert snap == "=" + "0" * 31 + "1" * 32, out


def test_top_once_on_a_terminal_prints_one_snapshot_and_exits(make_node, directory):
    a = make_node("a")
    a.run("x = node.array('once', (8, 512), np.int64); x[:] = 1")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "dsm", "top", "--once", "--directory",
                                 directory.endpoint, "--interval", "0.2"], stdin=slave,
                                stdout=slave, stderr=slave, start_new_session=True,
                                env={**os.environ, "COLUMNS": "80", "TERM": "xterm"})
        os.close(slave)
        try:
            assert proc.wait(EXIT_TIMEOUT_S + SCREEN_TIMEOUT_S) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out = b""
        while select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        text = out.decode(errors="replace")
        assert rows_of(text, "a") and "once: pages 0-7" in text, text
        assert "(q quits)" not in text
    finally:
        os.close(master)
