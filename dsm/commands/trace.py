"""``dsm trace FILE...``: merge protocol traces (directory and agents) into one timeline.

Each trace line is a protocol step (``{"t", "who", "node", "page", "event", "old", "new"}``, plus
``count`` for a run of pages) or a message sent or received (``{"t", "who", "peer", "dir",
"msg", "id", ...}``); ``dsm.trace`` describes them all. The files are merged on the directory's
clock (each agent's clock estimates applied, every receive after its send: ``dsm.viz.model``),
filtered by page or node (a page's filter keeps the lock and barrier messages that carry its
write notices: ``dsm.viz.sync``). As text they show a page move from node to node: who asked,
what the directory did, who gave it up. ``--html OUT`` writes the space-time diagram and the
ownership timeline as one page that works offline; ``--png OUT`` draws the diagram for slides,
of a time window (``--from``/``--to``), saying what it left out.

The simulator writes the same traces (``python -m dsm.sim --seed N --trace DIR``): a simulated
schedule is drawn as a real run is.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable, TextIO

from dsm.viz.model import Timeline, kind_of, merge, read_trace

__all__ = ["involves", "read_trace", "render", "register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("trace", help="merge protocol traces into one timeline",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="trace files written with --trace")
    parser.add_argument("--page", type=int, help="only steps and messages that involve this page")
    parser.add_argument("--node", help="only steps and messages by, for or to this node")
    parser.add_argument("--messages", action="store_true",
                        help="text: show the messages too (by default only the steps)")
    parser.add_argument("--limit", type=int, default=0, help="text: stop after this many lines")
    parser.add_argument("--html", metavar="OUT.html",
                        help="write the space-time diagram and ownership timeline to this page")
    parser.add_argument("--png", metavar="OUT.png",
                        help="draw the space-time diagram into this picture (for slides)")
    parser.add_argument("--from", dest="from_ms", type=float, metavar="MS",
                        help="png: from this time, in ms from the trace's start")
    parser.add_argument("--to", dest="to_ms", type=float, metavar="MS",
                        help="png: up to this time, in ms from the trace's start")
    parser.add_argument("--joins", action="store_true",
                        help="png: draw the joins and heartbeats too (Hello, Welcome, Heartbeat, "
                             "NodeReport; the page has a checkbox)")
    parser.set_defaults(func=run)


def involves(record: dict, page: int | None, node: str | None) -> bool:
    if node is not None and node not in (record.get("node"), record.get("who"), record.get("peer")):
        return False
    if page is None:
        return True
    first = record.get("page", -1)
    if not isinstance(first, int):
        return False
    count = record.get("count", 1)
    return first <= page < first + (count if isinstance(count, int) else 1)


def filtered(timeline: Timeline, page: int | None, node: str | None) -> list[dict]:
    """The records that involve ``page`` and ``node``, with the lock and barrier messages that
    matter to the page (their write notices name it), and those that name processes."""
    keep_ids: set[int] = set()
    if page is not None:
        from dsm.viz.sync import matters, related_pages
        for i, runs in related_pages(timeline).items():
            if matters(runs, page):
                m = timeline.messages[i]
                keep_ids.update(id(r) for r in (m.send, m.recv) if r is not None)
    return [r for r in timeline.records if kind_of(r) in ("start", "clock", "array")
            or involves(r, page, node) or id(r) in keep_ids and involves(r, None, node)]


def _pages(r: dict) -> str:
    if "page" not in r:
        return ""
    return f"{r.get('page')}" + (f"+{r['count']}" if isinstance(r.get("count"), int)
                                 and r["count"] > 1 else "")


def render(records: Iterable[dict], out: TextIO, limit: int = 0, messages: bool = False) -> int:
    t0 = None
    shown = 0
    for r in records:
        kind = kind_of(r)
        if kind in ("start", "clock") or (kind == "msg" and not messages):
            continue
        if kind == "array":
            t0 = r.get("ts", r["t"]) if t0 is None else t0
            out.write(f"{(r.get('ts', r['t']) - t0) * 1e3:10.3f} ms  {r['who']:>10}  page "
                      f"{_pages(r):<10} array {r['array']!r}\n")
            shown += 1
            continue
        ts = r.get("ts", r["t"])
        t0 = ts if t0 is None else t0
        stamp = f"{(ts - t0) * 1e3:10.3f} ms  {r.get('who', '?'):>10}  "
        if kind == "msg":
            arrow = "->" if r["dir"] == "send" else "<-"
            out.write(f"{stamp}page {_pages(r):<10} {r['dir']:<4} {r['msg']:<11} "
                      f"{arrow} {r.get('peer', '?'):<10} {r['id']}\n")
        else:
            out.write(f"{stamp}page {_pages(r):<10} {r.get('event', '?'):<10} "
                      f"{r.get('node', '?'):<10} {r.get('old', '')} -> {r.get('new', '')}\n")
        shown += 1
        if limit and shown >= limit:
            break
    return shown


def run(args: argparse.Namespace) -> int:
    if args.png:
        from dsm.extras import MissingExtra, check
        from dsm.viz.png import FEATURE
        try:
            check("matplotlib", FEATURE)
        except MissingExtra as exc:
            print(f"dsm trace: {exc}", file=sys.stderr)
            return 2
    try:
        timeline = merge(args.files)
    except OSError as exc:
        print(f"dsm trace: {exc}", file=sys.stderr)
        return 2
    if args.page is not None or args.node is not None:
        keep = filtered(timeline, args.page, args.node)
        if args.html or args.png:
            from dsm.viz.model import build
            timeline = build(keep)
        else:
            timeline.records = keep
    if args.html:
        from dsm.viz import html
        html.write(timeline, args.files, args.html)
        print(f"dsm trace: wrote {args.html} ({len(timeline.messages)} messages, "
              f"{len(timeline.lanes)} lanes)")
    if args.png:
        from dsm.viz import png
        drawn = png.write(timeline, args.png, args.from_ms, args.to_ms, args.joins)
        print(f"dsm trace: wrote {args.png}: {drawn.summary()}")
    if args.html or args.png:
        return 0
    shown = render(timeline.records, sys.stdout, args.limit, args.messages)
    if not shown:
        print("dsm trace: no steps matched", file=sys.stderr)
    return 0
