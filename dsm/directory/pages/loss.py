"""The pages whose newest contents died with a node: which they are, what a request for one is
told, and how the program gives them up.

The pages a node owned when it died (or left without handing them back) held contents no one
else has. By default (``OnLoss.POISON``) they become *lost*: every later request for them is
answered with ``Lost``, never with zeros or an older copy, until the program forgets them
(``forget``). ``OnLoss.LAST_COPY`` falls back to their last home copy instead, logging and
counting every fallback. Which pages a death loses is decided where the death is learnt
(``PageDirectory.node_lost``, or a transaction whose pages no live node holds at its end); this
class keeps the verdicts.
"""

from __future__ import annotations

import logging
from typing import Callable

from dsm.directory.home import HomeStore
from dsm.directory.pages.state import Locator, OnLoss, PageEntry, Send, Tracer
from dsm.layout import Layout
from dsm.protocol import Lost

log = logging.getLogger(__name__)

#: the dead node named when no one can tell whose death it was
UNKNOWN_NODE = "(unknown)"
#: runs of lost pages named in the log line of one loss (the rest are counted)
LOGGED_RUNS = 8


class LostPages:
    def __init__(self, layout: Layout, on_loss: OnLoss, home: HomeStore,
                 entry: Callable[[int], PageEntry], counters: dict[str, int], locate: Locator,
                 trace: Tracer | None):
        self.layout = layout
        self.on_loss = on_loss
        self.home = home
        self._entry = entry  #: a page's entry at the directory (made if it has none)
        self._counters = counters  #: the directory's ("pages_lost", "fallbacks", "lost_answers")
        self._locate = locate
        self._trace = trace  #: None while nobody reads the trace
        #: lost page -> the node whose death lost it
        self.pages: dict[int, str] = {}

    def record(self, node: str, pages: list[int]) -> None:
        """``node`` died holding the only current contents of ``pages``."""
        runs = self._runs_by_array(pages)
        where = "; ".join(f"array {name or '(none)'!r} pages {lo}-{hi}"
                          for name, lo, hi in runs[:LOGGED_RUNS])
        more = f" and {len(runs) - LOGGED_RUNS} more runs" if len(runs) > LOGGED_RUNS else ""
        if self.on_loss is OnLoss.LAST_COPY:
            for page in pages:
                self._entry(page).home_current = True  # what is served from now on
            self._counters["fallbacks"] += len(pages)
            log.error("node %s is gone owning %d pages (%s%s): they fall back to their last home "
                      "copy (--on-loss last-copy); writes made since that copy are lost",
                      node, len(pages), where, more)
            return
        for page in pages:
            self.pages[page] = node
        self.home.clear_pages(pages)
        self._counters["pages_lost"] += len(pages)
        log.error("node %s is gone owning %d pages (%s%s): they are LOST; every access to them "
                  "fails until the program calls node.forget_lost(name)", node, len(pages), where,
                  more)

    def _runs_by_array(self, pages: list[int]) -> list[tuple[str, int, int]]:
        """Sorted pages as (array, first, last) runs, counted within each array."""
        runs: list[tuple[str, int, int]] = []
        for page in sorted(pages):
            name, index = self._locate(page)
            if runs and runs[-1][0] == name and runs[-1][2] + 1 == index:
                runs[-1] = (name, runs[-1][1], index)
            else:
                runs.append((name, index, index))
        return runs

    def runs(self, first: int = 0, count: int | None = None) -> list[tuple[int, int, str]]:
        """The lost pages in [first, first+count) as (first, count, dead node) runs."""
        end = self.layout.num_pages if count is None else first + count
        out: list[tuple[int, int, str]] = []
        for page in sorted(q for q in self.pages if first <= q < end):
            node = self.pages[page]
            if out and out[-1][0] + out[-1][1] == page and out[-1][2] == node:
                out[-1] = (out[-1][0], out[-1][1] + 1, node)
            else:
                out.append((page, 1, node))
        return out

    def forget(self, first: int, count: int) -> list[tuple[int, int, str]]:
        """The program gives up the lost pages in [first, first+count): they read as zeros from
        now on. Returns the runs forgotten."""
        runs = self.runs(first, count)
        for start, n, _ in runs:
            for q in range(start, start + n):
                del self.pages[q]
                self._entry(q).home_current = True  # zeros
            self.home.clear(start, n)
        return runs

    def answer(self, node: str, page: int, limit: int) -> Send:
        """What ``node``'s request of lost ``page`` (and up to ``limit - 1`` more) is told: the
        run of pages from ``page`` that the same death lost."""
        dead = self.pages[page]
        n = 1
        while n < limit and self.pages.get(page + n) == dead:
            n += 1
        self._counters["lost_answers"] += 1
        name, index = self._locate(page)
        if self._trace is not None:
            self._trace(page, "LOST", node, "lost", "lost", count=n)
        return Send(node, Lost(page, n, dead, name, index))
