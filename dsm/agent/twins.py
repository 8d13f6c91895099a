"""Twins and diffs of release-consistency pages (``dsm.core.release``), on the node's memfd.

A twin is the page's bytes at its first write since the last release or acquire; the diff is
every byte that differs now, said as (start, length) spans of the run or as a bit mask of it,
whichever is shorter (``protocol.DiffEncoding``), and those bytes one after another. Byte
granularity (not words): two nodes writing neighbouring bytes of one word between the same
synchronization points must both be merged, so a diff never carries an unchanged byte.
"""

from __future__ import annotations

import os

import numpy as np

from dsm.protocol import SPAN_BYTES, SPAN_DTYPE, SPAN_STRUCT, DiffEncoding

#: a diff of at most this many changed bytes finds its spans in Python (``changed_bytes``)
FEW_CHANGED_BYTES = 16


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

    def diff(self, first: int, count: int) -> tuple[DiffEncoding, bytes, bytes]:
        """The changes to ``count`` pages from ``first`` since their twins (a page without a
        twin counts as changed everywhere), and the twins dropped."""
        size = self.page_size
        now = np.frombuffer(os.pread(self._memfd, count * size, first * size), dtype=np.uint8)
        if len(now) < count * size:  # past the memfd's end: never written, zeros
            now = np.concatenate([now, np.zeros(count * size - len(now), dtype=np.uint8)])
        twins = [self._twins.pop(q, None) for q in range(first, first + count)]
        if None not in twins:  # the common case: one copy of them all
            return changed_bytes(np.frombuffer(b"".join(twins), dtype=np.uint8), now)
        was = np.empty(count * size, dtype=np.uint8)
        for i, twin in enumerate(twins):
            if twin is None:
                was[i * size:(i + 1) * size] = ~now[i * size:(i + 1) * size]
            else:
                was[i * size:(i + 1) * size] = np.frombuffer(twin, dtype=np.uint8)
        return changed_bytes(was, now)


def changed_bytes(was: np.ndarray, now: np.ndarray) -> tuple[DiffEncoding, bytes, bytes]:
    """Where ``now`` differs from ``was``, as a Diff says it (its encoding and ``changes``:
    spans or a mask, whichever is shorter), and those bytes of ``now`` one after another."""
    changed = np.empty(len(now) + 2, dtype=np.int8)
    changed[0] = changed[-1] = 0
    mask = changed[1:-1].view(bool)
    np.not_equal(was, now, out=mask)
    if np.count_nonzero(mask) <= FEW_CHANGED_BYTES:
        # a lock's counter, a few fields: the spans found in Python from the changed bytes'
        # offsets, where the general way below makes a dozen numpy calls
        where = np.flatnonzero(mask)
        spans: list[list[int]] = []
        for i in where.tolist():
            if spans and spans[-1][0] + spans[-1][1] == i:
                spans[-1][1] += 1
            else:
                spans.append([i, 1])
        if len(spans) * SPAN_BYTES <= len(now) // 8:
            return (DiffEncoding.SPANS, b"".join(SPAN_STRUCT.pack(*span) for span in spans),
                    now[where].tobytes())
    data = now[mask].tobytes()
    # a span starts at every changed byte after an unchanged one (counted without listing them)
    span_count = int(mask[0]) + np.count_nonzero(mask[1:] > mask[:-1])
    if span_count * SPAN_BYTES > len(now) // 8:
        return DiffEncoding.MASK, np.packbits(mask).tobytes(), data
    edges = np.flatnonzero(np.diff(changed))
    spans = np.empty((len(edges) // 2, 2), dtype=SPAN_DTYPE)
    spans[:, 0], spans[:, 1] = edges[0::2], edges[1::2] - edges[0::2]
    return DiffEncoding.SPANS, spans.tobytes(), data
