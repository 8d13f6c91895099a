"""Write notices of release-consistency pages, kept by the coordinator (the directory that
serves locks and barriers). A state machine with no sockets.

A release (``LockRelease``, ``BarrierWait``) names the pages its node changed since its last
release; their diffs are at their homes before the release is sent. Every *other* node must
invalidate its copies of those pages at its next acquire (a lock grant, a barrier departure),
so that its next access fetches the merged home copy. Rather than vector timestamps (TreadMarks),
each node has the runs of pages noticed since its last acquire: an acquire takes them all,
which is a superset of the releases that happen before it (invalidating more is always allowed:
a page fetched again is the merge of every release so far).

The runs are kept as released and merged when taken: an acquire costs what was released since,
not the region (a mask of the region's pages cost a millisecond per acquire in the default
1 GiB region). A node that does not acquire for long has its runs merged every
``MERGE_AFTER_RUNS``: what it keeps is bounded by the region's runs, not by time.
"""

from __future__ import annotations

#: a node's pending runs are merged once this many have been added since the last merge
MERGE_AFTER_RUNS = 1024


def merged_runs(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``runs`` of pages as (first, count), sorted, with overlapping and adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for first, count in sorted(runs):
        end = first + count
        if out and first <= out[-1][0] + out[-1][1]:
            last_first, last_count = out[-1]
            out[-1] = (last_first, max(last_first + last_count, end) - last_first)
        else:
            out.append((first, count))
    return out


class WriteNotices:
    def __init__(self) -> None:
        #: node -> the runs of pages other nodes released since its last acquire, as released
        #: (merged when taken, or when many)
        self.pending: dict[str, list[tuple[int, int]]] = {}
        #: node -> how many runs were added to its pending since they were last merged
        self._added: dict[str, int] = {}
        self.counters = {"notices_released": 0, "notices_delivered": 0}

    def joined(self, node: str) -> None:
        if node not in self.pending:
            self.pending[node] = []
            self._added[node] = 0

    def gone(self, node: str) -> None:
        self.pending.pop(node, None)
        self._added.pop(node, None)

    def released(self, node: str, notices: list[int]) -> None:
        """``node`` released the pages of ``notices`` (runs, checked to lie in the region)."""
        if not notices:
            return
        self.joined(node)
        runs = list(zip(notices[::2], notices[1::2]))
        self.counters["notices_released"] += sum(count for _, count in runs)
        for other, pending in self.pending.items():
            if other == node:
                continue
            pending += runs
            self._added[other] += len(runs)
            if self._added[other] >= MERGE_AFTER_RUNS:
                pending[:] = merged_runs(pending)
                self._added[other] = 0

    def take(self, node: str) -> list[int]:
        """What ``node``'s acquire must invalidate (runs, flat: ``[first, count, ...]``),
        forgotten here."""
        pending = self.pending.get(node)
        if not pending:
            return []
        runs = merged_runs(pending)
        pending.clear()
        self._added[node] = 0
        self.counters["notices_delivered"] += sum(count for _, count in runs)
        return [x for run in runs for x in run]
