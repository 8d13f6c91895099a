"""``dsm trace FILE...``: merge protocol traces (directory and agents) into one timeline.

Each trace line is one protocol step: ``{"t", "who", "node", "page", "event", "old", "new"}``
(plus ``count`` for a run of pages). Merged by time, filtered by page, they show a page move from
node to node: who asked, what the directory did, who gave it up.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from typing import Iterator, TextIO


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("trace", help="merge protocol traces into one timeline")
    parser.add_argument("files", nargs="+", help="trace files written with --trace")
    parser.add_argument("--page", type=int, help="only steps that involve this page")
    parser.add_argument("--node", help="only steps by or for this node")
    parser.add_argument("--limit", type=int, default=0, help="stop after this many lines")
    parser.set_defaults(func=run)


def read_trace(path: str) -> Iterator[dict]:
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                float(record["t"])
            except (ValueError, KeyError, TypeError):
                print(f"dsm trace: {path}:{number}: not a trace line, skipped", file=sys.stderr)
                continue
            yield record


def involves(record: dict, page: int | None, node: str | None) -> bool:
    if node is not None and node not in (record.get("node"), record.get("who")):
        return False
    if page is None:
        return True
    first = record.get("page", -1)
    return first <= page < first + record.get("count", 1)


def render(records: Iterator[dict], out: TextIO, limit: int = 0) -> int:
    t0 = None
    shown = 0
    for r in records:
        t0 = r["t"] if t0 is None else t0
        pages = f"{r.get('page')}" + (f"+{r['count']}" if r.get("count", 1) > 1 else "")
        out.write(
            f"{(r['t'] - t0) * 1e3:10.3f} ms  {r.get('who', '?'):>10}  page {pages:<10} "
            f"{r.get('event', '?'):<10} {r.get('node', '?'):<10} {r.get('old', '')} -> {r.get('new', '')}\n"
        )
        shown += 1
        if limit and shown >= limit:
            break
    return shown


def run(args: argparse.Namespace) -> int:
    try:
        streams = [
            (r for r in read_trace(path) if involves(r, args.page, args.node)) for path in args.files
        ]
        merged = heapq.merge(*streams, key=lambda r: r["t"])
        shown = render(merged, sys.stdout, args.limit)
    except OSError as exc:
        print(f"dsm trace: {exc}", file=sys.stderr)
        return 2
    if not shown:
        print("dsm trace: no steps matched", file=sys.stderr)
    return 0
