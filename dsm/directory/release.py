"""The homes of release-consistency pages, at their manager (home-based lazy release
consistency, HLRC: Zhou, Iftode and Li, 1996). A state machine with no sockets.

An array made with ``consistency="release"`` has no owners: any node may hold a copy of any of
its pages and write it, several at once. This manager keeps each page's home copy, which is
always the merge of every release so far:

- a node that faults on a page gets the home copy (``Grant`` with ``release``), at once: no
  transaction, no invalidation;
- at a release (lock release, barrier arrival) a node sends the bytes it changed since its twin
  (``Diff``), which are written into the home copy in the order they arrive (the later release
  wins where two wrote the same bytes), and answered ``DiffApplied``;
- a node that twins a page says so first (``Dirtied``): should it die before its Diff, the
  page's newest contents died with it, and the page is lost, loudly, as an owned page would be;
- a Discard (MADV_REMOVE) zeroes the home copy at once.

Why the manager is the home (rather than a node, as in HLRC's papers): it holds every page's
home copy already (the relay manager's store, ``HomeStore``), it survives every node, and the
nodes need no address the others can reach. Which pages are release pages is the allocation
table's word (``is_release``), never a node's: at a sharded manager every shard knows an array
before any node can ask for one of its pages (``ArrayKnown``).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from dsm.directory.home import HomeStore
from dsm.protocol import DiffApplied, Grant


class ReleaseHomes:
    def __init__(self, home: HomeStore, is_release: Callable[[int], bool]):
        self.home = home
        self.covers = is_release
        #: page -> the nodes that twinned it and have not sent their diff yet
        self.dirty: dict[int, set[str]] = {}
        self.counters = {"release_reads": 0, "diffs": 0, "diff_bytes": 0}

    def read(self, page: int, count: int, usable: Callable[[int], bool]) -> tuple[Grant, Any]:
        """The grant of the home copy of ``page`` and of as many of the ``count - 1`` pages
        after it as are release pages too and ``usable`` (not lost), and its bytes."""
        n = 1
        while n < count and self.covers(page + n) and usable(page + n):
            n += 1
        payload, data = self.home.get(page, n)
        self.counters["release_reads"] += 1
        return Grant(page, n, False, payload, release=True), data

    def dirtied(self, node: str, pages: list[int]) -> None:
        for q in pages:
            self.dirty.setdefault(q, set()).add(node)

    def apply(self, node: str, req: int, page: int, count: int, spans: np.ndarray,
              data: Any) -> DiffApplied:
        """Write ``node``'s diff (``spans``: (start, length) rows) into the home copies; its
        pages are no longer dirty there."""
        self.home.patch(page, count, spans, data)
        for q in range(page, page + count):
            writers = self.dirty.get(q)
            if writers is not None:
                writers.discard(node)
                if not writers:
                    del self.dirty[q]
        self.counters["diffs"] += 1
        self.counters["diff_bytes"] += int(spans[:, 1].sum())
        return DiffApplied(req, page)

    def discard(self, page: int) -> None:
        self.home.clear(page, 1)

    def node_lost(self, node: str) -> list[int]:
        """``node`` is gone: the pages it was changing and had not sent the diff of."""
        lost = sorted(q for q, writers in self.dirty.items() if node in writers)
        for q in lost:
            self.dirty[q].discard(node)
            if not self.dirty[q]:
                del self.dirty[q]
        return lost

    def describe(self, page: int) -> str:
        writers = self.dirty.get(page)
        return "release home" + ("{" + ",".join(sorted(writers)) + " writing}" if writers else "")

