"""What the directory tells ``dsm top``: each node's last report and a map of every array's
pages (who owns them, who holds copies), as a ``StatsReport``; under a distributed manager, the
coordinator's map put together from every shard's (``stitch_arrays``: the coordinator's gather
is in ``dsm/directory/shard/coordinator.py``). Read-only: nothing here changes a page's state."""

from __future__ import annotations

import time
from typing import Any

from dsm import protocol as p
from dsm.core.shards import STRIPE_PAGES, shard_of
from dsm.core.stats import LATENCY_BUCKETS_US
from dsm.directory.allocations import Allocations
from dsm.directory.pages import PageDirectory

#: an array's map is cut into at most this many runs (a huge array with scattered states)
MAX_RUNS_PER_ARRAY = 4096


class NodeReports:
    """The last report of each node, with when it came."""

    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, p.NodeReport]] = {}

    def add(self, node: str, report: p.NodeReport) -> None:
        self._reports[node] = (time.monotonic(), report)

    def forget(self, node: str) -> None:
        self._reports.pop(node, None)

    def snapshot(self, live: list[str]) -> dict:
        now = time.monotonic()
        out = {}
        for node in live:
            got = self._reports.get(node)
            if got is None:
                out[node] = {"counters": {}, "latency_counts": [], "processes": 0, "age_s": -1.0}
                continue
            at, r = got
            out[node] = {"counters": r.counters, "latency_counts": r.latency_counts,
                         "processes": r.processes, "age_s": round(now - at, 3)}
        return out


def page_runs(pages: PageDirectory, first: int, count: int,
              owners: dict[int, str] | None = None) -> list[list]:
    """The states of ``count`` pages from ``first`` as runs ``[pages, kind, holders]``.
    ``owners``: under the dynamic manager, the node the directory last handed each page to
    (its ``last_owner``; ownership moves on node to node without it, and the copies are the
    owners' to know): those pages are shown owned by it, the others at home (the directory
    owns them)."""
    runs: list[list] = []
    for page in range(first, first + count):
        if page in pages.lost:
            state = ("lost", [])
        elif owners is not None:
            owner = owners.get(page)
            state = ("owned", [owner]) if owner is not None else ("home", [])
        else:
            e = pages.peek(page)
            if e.owner is not None:
                state = ("owned", [e.owner])
            elif e.copyset:
                state = ("shared", sorted(e.copyset))
            else:
                state = ("home", [])
        if runs and runs[-1][1] == state[0] and runs[-1][2] == state[1]:
            runs[-1][0] += 1
        elif len(runs) >= MAX_RUNS_PER_ARRAY:
            runs[-1][0] += 1  # the rest is drawn as the last run: a map, not an audit
        else:
            runs.append([1, state[0], state[1]])
    return runs


def report(req: int, reports: NodeReports, live: list[str], pages: PageDirectory,
           allocations: Allocations, page_size: int, manager: str,
           owners: dict[int, str] | None = None) -> p.StatsReport:
    """``manager``: the directory's page manager's name; ``owners``: the dynamic manager's
    (``page_runs``)."""
    arrays = []
    for alloc in allocations.all():
        first = alloc.offset // page_size
        count = max(1, (alloc.nbytes + page_size - 1) // page_size)
        arrays.append([alloc.name, first, count, page_runs(pages, first, count, owners)])
    return p.StatsReport(req, reports.snapshot(live), list(LATENCY_BUCKETS_US), arrays,
                         dict(pages.counters), manager)


# --- dsm top over the shards ------------------------------------------------------------------
def stitch_arrays(by_shard: dict[int, list[Any]], count: int) -> list[Any]:
    """Every array's page states (StatsReport.arrays) put together from each shard's view, each
    stripe from the shard that manages it (the others see it at home)."""
    views = {shard: {a[0]: a for a in arrays} for shard, arrays in by_shard.items()}
    out = []
    for name, first, pages, _ in by_shard[0]:
        cursors = {s: _RunCursor(v[name][3]) for s, v in views.items() if name in v}
        runs: list[list] = []
        offset = 0
        while offset < pages:
            page = first + offset
            stripe_left = STRIPE_PAGES - page % STRIPE_PAGES
            n = min(stripe_left, pages - offset)
            cursor = cursors.get(shard_of(page, count))
            pieces = cursor.take(offset, n) if cursor is not None else [[n, "home", []]]
            for piece in pieces:
                if runs and runs[-1][1:] == piece[1:]:
                    runs[-1][0] += piece[0]
                else:
                    runs.append(list(piece))
            offset += n
        out.append([name, first, pages, runs])
    return out


class _RunCursor:
    """Reads ``[pages, kind, holders]`` runs by page offset, offsets asked in increasing order."""

    def __init__(self, runs: list[list]):
        self._runs = runs
        self._i = 0
        self._start = 0  #: offset of run ``_i``

    def take(self, offset: int, n: int) -> list[list]:
        out: list[list] = []
        end = offset + n
        while self._i < len(self._runs) and self._start < end:
            length, kind, holders = self._runs[self._i]
            run_end = self._start + length
            if run_end <= offset:
                self._i += 1
                self._start = run_end
                continue
            lo, hi = max(offset, self._start), min(end, run_end)
            out.append([hi - lo, kind, holders])
            if run_end > end:
                break
            self._i += 1
            self._start = run_end
        covered = sum(r[0] for r in out)
        if covered < n:  # a view shorter than the array (capped runs): the rest as its last
            out.append([n - covered, out[-1][1] if out else "home", out[-1][2] if out else []])
        return out
