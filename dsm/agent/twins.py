"""Twins and diffs of release-consistency pages (``dsm.core.release``), on the node's memfd.

A twin is the page's bytes at its first write since the last release or acquire; the diff is
every byte that differs now, as (start, length) spans of the run and their bytes one after
another. Byte granularity (not words): two nodes writing neighbouring bytes of one word
between the same synchronization points must both be merged.
"""

from __future__ import annotations

import os

import numpy as np

from dsm.protocol import SPAN_DTYPE


class Twins:
    def __init__(self, memfd: int, page_size: int):
        self._memfd = memfd
        self.page_size = page_size
        self._twins: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._twins)

    def make(self, first: int, count: int) -> None:
        size = self.page_size
        run = os.pread(self._memfd, count * size, first * size)
        for i in range(count):
            self._twins[first + i] = run[i * size:(i + 1) * size]

    def drop(self, first: int, count: int) -> None:
        for q in range(first, first + count):
            self._twins.pop(q, None)

    def clear(self) -> None:
        self._twins.clear()

    def diff(self, first: int, count: int) -> tuple[bytes, bytes]:
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


def changed_spans(was: np.ndarray, now: np.ndarray) -> tuple[bytes, bytes]:
    """The byte ranges where ``now`` differs from ``was``, packed as a Diff's spans
    (``protocol.SPAN_DTYPE`` pairs of start, length), and those bytes of ``now`` one after
    another."""
    changed = np.empty(len(now) + 2, dtype=np.int8)
    changed[0] = changed[-1] = 0
    mask = changed[1:-1].view(bool)
    np.not_equal(was, now, out=mask)
    edges = np.flatnonzero(np.diff(changed))
    spans = np.empty((len(edges) // 2, 2), dtype=SPAN_DTYPE)
    spans[:, 0], spans[:, 1] = edges[0::2], edges[1::2] - edges[0::2]
    return spans.tobytes(), now[mask].tobytes()
