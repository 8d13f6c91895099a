"""What the directory answers about arrays as a whole (``ArrayRequests``): their allocation
(``Alloc``), their reclaiming once freed and held by no node, the lost-page questions
(``LostQuery``, ``ForgetLost``: the runs of every shard merged) and ``dsm top``'s report.

A part of the directory state machine (``machine.py``), which it serves through: its tables, its
role (the shards must know an array before a node is told of it) and its sending.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dsm import protocol as p
from dsm.directory.allocations import Allocation
from dsm.directory.pages import Send
from dsm.directory.stats import report as stats_report
from dsm.errors import DsmError

if TYPE_CHECKING:
    from dsm.directory.machine import Directory

log = logging.getLogger(__name__)

#: what an Alloc's create mode asks of ``Allocations.find_or_create`` (None: either)
_CREATE = {p.CreateMode.EITHER: None, p.CreateMode.ATTACH: False, p.CreateMode.CREATE: True}


class ArrayRequests:
    """The directory's answers about arrays (see the module docstring)."""

    def __init__(self, directory: "Directory"):
        self.directory = directory

    def on_alloc(self, node: str, msg: p.Alloc, _: Any) -> list[Send]:
        d = self.directory
        count_before = len(d.allocations)
        create = _CREATE[p.CreateMode(msg.create)]
        try:
            if d.allocations.get(msg.name) is None:
                d.programs.check_new_name(msg.name)
            a = d.allocations.find_or_create(msg.name, msg.nbytes, msg.meta, create)
        except DsmError as exc:
            return [Send(node, p.Error(msg.req, str(exc)))]
        d.programs.attached(node, a)

        def answer(why: str | None) -> None:
            d.send_all([Send(node, p.Error(msg.req, why) if why else
                             p.Allocated(msg.req, a.offset, a.nbytes, a.meta))])

        if len(d.allocations) > count_before:
            self.traced_array(a)
            d.role.allocated(a, answer)  # the shards know the array first
        else:
            d.role.when_known(a.name, answer)
        return []

    def traced_array(self, a: Allocation) -> None:
        tracer = self.directory.tracer
        if tracer.enabled:  # names the pages for the views (dsm trace --html)
            size = self.directory.layout.page_size
            tracer.array(a.name, a.offset // size, max(1, (a.nbytes + size - 1) // size))

    def reclaim(self, alloc: Allocation) -> list[Send]:
        """A freed array nobody holds: its pages become zeros everywhere, every shard is told,
        and its memory is free for the next array."""
        d = self.directory
        first, count = alloc.pages(d.layout.page_size)
        out = d.pages.reclaim(first, count)
        d.role.freed(alloc)
        d.allocations.reclaim(alloc)
        log.info("array %r reclaimed: %d pages at %#x are free again%s", alloc.name, count,
                 alloc.offset, " (a release-consistency array's addresses are not reused)"
                 if alloc.release else "")
        return out

    def on_forget_lost(self, node: str, msg: p.ForgetLost, _: Any) -> list[Send]:
        d = self.directory
        alloc = d.allocations.get(msg.name)
        if alloc is None:
            return [Send(node, p.Error(msg.req, f"forget_lost: there is no array named {msg.name!r}"))]
        size = d.layout.page_size
        return d.role.lost(node, msg.req, alloc.offset // size,
                           (alloc.nbytes + size - 1) // size, msg.name)

    def lost_answer(self, node: str, req: int, runs: list[tuple[int, int, str]],
                    forgot: str | None) -> list[Send]:
        """The LostReport of ``runs`` (from every shard: merged here), forgotten from array
        ``forgot`` (ForgetLost) or not (LostQuery)."""
        runs = _merged(runs)
        if forgot and runs:
            log.warning("node %s forgot the lost pages of array %r (%d pages): they read as "
                        "zeros from now on", node, forgot, sum(n for _, n, _ in runs))
        return [Send(node, p.LostReport(req, self._lost_ranges(runs)))]

    def _lost_ranges(self, runs: list[tuple[int, int, str]]) -> list[list]:
        """Lost page runs as [array, start byte, end byte, dead node], per array."""
        size = self.directory.layout.page_size
        allocations = self.directory.allocations
        out: list[list] = []
        for first, count, dead in runs:
            page = first
            while page < first + count:
                alloc = allocations.at(page * size)
                if alloc is None:  # pages outside every array: named by region offset
                    out.append(["", page * size, (page + 1) * size, dead])
                    page += 1
                    continue
                end_page = min(first + count, (alloc.offset + alloc.nbytes + size - 1) // size)
                start = page * size - alloc.offset
                out.append([alloc.name, start, min(end_page * size - alloc.offset, alloc.nbytes),
                            dead])
                page = end_page
        return out

    def stats_report(self, req: int) -> p.StatsReport:
        """What ``dsm top`` is told, from this process's pages (the coordinator adds the other
        shards')."""
        d = self.directory
        return stats_report(req, d.node_reports, sorted(d.sessions.by_node), d.pages,
                            d.allocations, d.layout.page_size, d.manager.value,
                            d.dynamic.last_owner if d.dynamic is not None else None)


def _merged(runs: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Lost runs sorted, neighbours of one dead node joined (each shard's end at stripes)."""
    out: list[tuple[int, int, str]] = []
    for first, count, dead in sorted(tuple(r) for r in runs):
        if out and out[-1][0] + out[-1][1] == first and out[-1][2] == dead:
            out[-1] = (out[-1][0], out[-1][1] + count, dead)
        else:
            out.append((first, count, dead))
    return out
