"""Write notices of release-consistency pages, kept by the coordinator (the directory that
serves locks and barriers). A state machine with no sockets.

A release (``LockRelease``, ``BarrierWait``) names the pages its node changed since its last
release; their diffs are at their homes before the release is sent. Every *other* node must
invalidate its copies of those pages at its next acquire (a lock grant, a barrier departure),
so that its next access fetches the merged home copy. Rather than vector timestamps (TreadMarks),
each node has a mask of the pages noticed since its last acquire: an acquire takes them all,
which is a superset of the releases that happen before it (invalidating more is always allowed:
a page fetched again is the merge of every release so far). The masks are bounded by the
region, not by time, and a node that never acquires costs one mask.
"""

from __future__ import annotations

import numpy as np


def runs_of(mask: np.ndarray) -> list[int]:
    """The set entries of a boolean mask as flat ``[first, count, ...]`` runs."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).view(np.int8)))
    out = np.empty(len(edges), dtype=np.int64)
    out[0::2], out[1::2] = edges[0::2], edges[1::2] - edges[0::2]
    return out.tolist()


class WriteNotices:
    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        #: node -> a mask of the pages other nodes released since its last acquire (a mask, so
        #: that a release costs a slice per run and node, whatever the runs' lengths)
        self.pending: dict[str, np.ndarray] = {}
        self.counters = {"notices_released": 0, "notices_delivered": 0}

    def joined(self, node: str) -> None:
        if node not in self.pending:
            self.pending[node] = np.zeros(self.num_pages, dtype=bool)

    def gone(self, node: str) -> None:
        self.pending.pop(node, None)

    def released(self, node: str, notices: list[int]) -> None:
        """``node`` released the pages of ``notices`` (runs, checked to lie in the region)."""
        if not notices:
            return
        self.joined(node)
        for first, count in zip(notices[::2], notices[1::2]):
            self.counters["notices_released"] += count
            for other, pending in self.pending.items():
                if other != node:
                    pending[first:first + count] = True

    def take(self, node: str) -> list[int]:
        """What ``node``'s acquire must invalidate (runs), forgotten here."""
        pending = self.pending.get(node)
        if pending is None or not pending.any():
            return []
        out = runs_of(pending)
        self.counters["notices_delivered"] += int(pending.sum())
        pending[:] = False
        return out
