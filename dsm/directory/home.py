"""The directory's home copies: the contents of every page no node owns.

One anonymous mapping the size of the region (pages never written cost nothing, and none is
reserved up front: ``MAP_NORESERVE``, so a region larger than RAM is fine) and a bitmap of
the pages that hold data, so that a run of pages is sent as one contiguous slice and a run that
never held data is sent as "zero" without any bytes.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

from dsm.layout import Layout
from dsm.protocol import Changed, Payload

#: Linux's flag (x86-64, arm64) for a mapping that reserves no swap: Python 3.11's mmap module
#: does not name it (3.12 does), and passes the flags through to mmap(2)
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


class HomeStore:
    def __init__(self, layout: Layout):
        self.page_size = layout.page_size
        # unmapped with the store (a simulator makes thousands of directories in one process)
        self._memory = mmap.mmap(-1, layout.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                                 | MAP_NORESERVE)
        self._view = memoryview(self._memory)
        self._has_data = np.zeros(layout.num_pages, dtype=bool)

    def _any_data(self, page: int, count: int) -> bool:
        # one page is the common case: a numpy reduction over a slice costs microseconds
        if count == 1:
            return bool(self._has_data[page])
        return bool(self._has_data[page : page + count].any())

    def get(self, page: int, count: int) -> tuple[Payload, Any]:
        """The contents of ``count`` pages: (ZERO, None) when none holds data, else (DATA,
        bytes) — a copy, so that a later write here cannot change a message being sent."""
        if not self._any_data(page, count):
            return Payload.ZERO, None
        start = page * self.page_size
        return Payload.DATA, bytes(self._view[start : start + count * self.page_size])

    def put(self, page: int, count: int, payload: int, data: Any, skip: frozenset = frozenset()) -> None:
        """Store ``count`` pages from a DATA buffer, or zero them (ZERO); pages in ``skip`` keep
        what they had."""
        if payload == Payload.NONE:
            return
        if skip:
            for i in range(count):
                if page + i not in skip:
                    self.put(page + i, 1, payload, None if data is None else
                             memoryview(data)[i * self.page_size : (i + 1) * self.page_size])
            return
        start = page * self.page_size
        end = start + count * self.page_size
        if payload == Payload.DATA:
            self._view[start:end] = data
            self._has_data[page : page + count] = True
        else:
            self.clear(page, count)

    def patch(self, page: int, count: int, changed: Changed | None, data: Any) -> None:
        """Write a diff into ``count`` pages from ``page``: ``changed`` says which bytes of the
        run (``dsm.protocol.changed_in``: its spans, or a bool per byte; None: nothing
        changed), their new values one after another in ``data``."""
        if changed is None:
            return
        size = self.page_size
        if type(changed) is list:  # a few spans, ascending: each copied as it is
            view, has_data, base, at = self._view, self._has_data, page * size, 0
            for start, length in changed:
                view[base + start:base + start + length] = data[at:at + length]
                at += length
                has_data[page + start // size:page + (start + length - 1) // size + 1] = True
            return
        run = np.frombuffer(self._view[page * size:(page + count) * size], dtype=np.uint8)
        run[changed] = np.frombuffer(data, dtype=np.uint8)
        touched = np.flatnonzero(changed.reshape(count, size).any(axis=1))
        self._has_data[page + touched] = True

    def clear(self, page: int, count: int) -> None:
        """Forget ``count`` pages: they read as zero again and their memory is returned."""
        if not self._any_data(page, count):
            return
        self._memory.madvise(mmap.MADV_DONTNEED, page * self.page_size, count * self.page_size)
        self._has_data[page : page + count] = False

    def clear_pages(self, pages: list[int]) -> None:
        """Forget each of ``pages`` (in any order)."""
        for page in pages:
            self.clear(page, 1)
