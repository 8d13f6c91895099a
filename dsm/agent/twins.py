"""Twins and diffs of release-consistency pages (``dsm.core.release``), on the node's memfd.

A twin is the page's bytes at its first write since the last release or acquire; the diff is
every byte that differs now, as ``[start, length, ...]`` spans of the run and their bytes one
after another. Byte granularity (not words): two nodes writing neighbouring bytes of one word
between the same synchronization points must both be merged.
"""

from __future__ import annotations

import os

import numpy as np


class Twins:
    def __init__(self, memfd: int, page_size: int):
        self._memfd = memfd
        self.page_size = page_size
        self._twins: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._twins)

    def make(self, page: int) -> None:
        self._twins[page] = os.pread(self._memfd, self.page_size, page * self.page_size)

    def drop(self, first: int, count: int) -> None:
        for q in range(first, first + count):
            self._twins.pop(q, None)

    def clear(self) -> None:
        self._twins.clear()

    def diff(self, first: int, count: int) -> tuple[list[int], bytes]:
        """The changes to ``count`` pages from ``first`` since their twins (a page without a
        twin counts as changed everywhere), and the twins dropped."""
        size = self.page_size
        now = np.frombuffer(os.pread(self._memfd, count * size, first * size), dtype=np.uint8)
        if len(now) < count * size:  # past the memfd's end: never written, zeros
            now = np.concatenate([now, np.zeros(count * size - len(now), dtype=np.uint8)])
        was = np.empty(count * size, dtype=np.uint8)
        for i in range(count):
            twin = self._twins.pop(first + i, None)
            if twin is None:
                was[i * size:(i + 1) * size] = ~now[i * size:(i + 1) * size]
            else:
                was[i * size:(i + 1) * size] = np.frombuffer(twin, dtype=np.uint8)
        return changed_spans(was, now)


def changed_spans(was: np.ndarray, now: np.ndarray) -> tuple[list[int], bytes]:
    """The byte ranges where ``now`` differs from ``was`` as flat ``[start, length, ...]``, and
    those bytes of ``now`` one after another."""
    changed = np.empty(len(now) + 2, dtype=np.int8)
    changed[0] = changed[-1] = 0
    np.not_equal(was, now, out=changed[1:-1].view(bool))
    edges = np.flatnonzero(np.diff(changed))
    starts, ends = edges[0::2], edges[1::2]
    spans = np.empty(2 * len(starts), dtype=np.int64)
    spans[0::2], spans[1::2] = starts, ends - starts
    data = b"".join(now[s:e].tobytes() for s, e in zip(starts.tolist(), ends.tolist()))
    return spans.tolist(), data
