"""A node's counters and its fault-latency histogram (what ``node.stats()`` returns)."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

#: histogram buckets: upper bounds in microseconds, powers of two up to ~1 s
LATENCY_BUCKETS_US = [2**i for i in range(21)]


#: the counter names of each direction a message travels (named once)
_MESSAGE_COUNTERS = {d: (f"messages_{d}", f"bytes_{d}")
                     for d in ("to_directory", "from_directory", "to_peers")}


class NodeStats:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self._latency_counts = [0] * (len(LATENCY_BUCKETS_US) + 1)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def count_message(self, direction: str, frames: list) -> None:
        """A protocol message and its bytes (all frames), by ``direction``: ``to_directory``,
        ``from_directory`` or ``to_peers``. Every message is one an agent sent or received, so
        the agents' counts add up to the cluster's traffic (``dsm bench --manager``)."""
        names = _MESSAGE_COUNTERS[direction]
        self.counters[names[0]] += 1
        self.counters[names[1]] += sum(len(f) for f in frames)

    def record_fault_latency(self, seconds: float) -> None:
        # the first bucket whose bound is >= the latency; past the last bound, the overflow
        self._latency_counts[bisect_left(LATENCY_BUCKETS_US, seconds * 1e6)] += 1

    def median_fault_latency_us(self) -> float | None:
        total = sum(self._latency_counts)
        if not total:
            return None
        seen = 0
        for i, n in enumerate(self._latency_counts):
            seen += n
            if seen * 2 >= total:
                return float(LATENCY_BUCKETS_US[min(i, len(LATENCY_BUCKETS_US) - 1)])
        return None

    def snapshot(self) -> dict:
        return {
            "counters": dict(self.counters),
            "latency_buckets_us": LATENCY_BUCKETS_US,
            "latency_counts": list(self._latency_counts),
            "median_fault_latency_us": self.median_fault_latency_us(),
        }


def quantile_text(counts: list[int], bounds: list[int], q: float) -> str:
    """The ``q`` quantile of a histogram of ``counts`` over the upper ``bounds`` (one more count
    than bounds: the overflow), as the bucket's bound in text (``≤256``); "-" without samples."""
    total = sum(counts)
    if not total:
        return "-"
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= q * total:
            return f"≤{bounds[i]}" if i < len(bounds) else f">{bounds[-1]}"
    return "-"
