"""The named allocations this node's workloads use, as page extents: read-ahead stops at the end
of the array it reads, so that a scan of one array never takes pages of the next one (which
another node may be writing). The agent learns them from the allocation answers it forwards."""

from __future__ import annotations

import bisect


class Extents:
    def __init__(self, page_size: int):
        self.page_size = page_size
        self._starts: list[int] = []  # first pages, sorted
        self._ends: dict[int, int] = {}  # first page -> end page (exclusive)

    def add(self, offset: int, nbytes: int) -> None:
        first = offset // self.page_size
        if first in self._ends:
            return
        bisect.insort(self._starts, first)
        self._ends[first] = (offset + nbytes + self.page_size - 1) // self.page_size

    def end_of(self, page: int) -> int | None:
        """The end page of the extent holding ``page``; None outside every known extent."""
        start = self.start_of(page)
        return None if start is None else self._ends[start]

    def start_of(self, page: int) -> int | None:
        """The first page of the extent holding ``page``; None outside every known extent."""
        i = bisect.bisect_right(self._starts, page) - 1
        if i < 0:
            return None
        start = self._starts[i]
        return start if page < self._ends[start] else None
