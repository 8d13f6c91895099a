"""Named allocations in the shared region: the first caller creates, every later caller finds.

A bump allocator over whole pages (so that two arrays never share a page by accident): arrays are
never freed, which keeps every address valid for the life of the cluster.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from dsm.consistency import META_KEY, Consistency
from dsm.errors import DsmError
from dsm.layout import Layout


class AllocationError(DsmError):
    """A named allocation could not be made or does not match what exists."""


@dataclass(frozen=True)
class Allocation:
    name: str
    offset: int
    nbytes: int
    meta: dict


class Allocations:
    def __init__(self, layout: Layout):
        self.layout = layout
        self._by_name: dict[str, Allocation] = {}
        #: every allocation by offset (the bump allocator appends in increasing order)
        self._offsets: list[int] = []
        self._by_offset: list[Allocation] = []
        self._next_offset = 0
        #: per region page, whether a release-consistency array holds it (asked at every
        #: acquire: a lookup, not a search)
        self._release_pages = np.zeros(layout.num_pages, dtype=bool)

    def find_or_create(self, name: str, nbytes: int, meta: dict) -> Allocation:
        if not name:
            raise AllocationError("an allocation needs a non-empty name")
        if nbytes <= 0:
            raise AllocationError(f"allocation {name!r}: size must be positive, got {nbytes}")
        existing = self._by_name.get(name)
        if existing is not None:
            if existing.nbytes != nbytes or existing.meta != meta:
                raise AllocationError(
                    f"allocation {name!r} exists as {existing.meta} ({existing.nbytes} bytes); "
                    f"asked for {meta} ({nbytes} bytes)"
                )
            return existing
        page = self.layout.page_size
        rounded = (nbytes + page - 1) // page * page
        free = self.layout.size - self._next_offset
        if rounded > free:
            raise AllocationError(
                f"allocation {name!r} needs {rounded} bytes but the region has {free} of "
                f"{self.layout.size} bytes free"
            )
        alloc = Allocation(name, self._next_offset, nbytes, dict(meta))
        self._by_name[name] = alloc
        self._offsets.append(alloc.offset)
        self._by_offset.append(alloc)
        self._next_offset += rounded
        if alloc.meta.get(META_KEY) == Consistency.RELEASE.value:
            first = alloc.offset // page
            self._release_pages[first : first + rounded // page] = True
        return alloc

    def all(self) -> list[Allocation]:
        """Every allocation, in address order."""
        return list(self._by_offset)

    def get(self, name: str) -> Allocation | None:
        return self._by_name.get(name)

    def at(self, offset: int) -> Allocation | None:
        """The allocation whose pages hold region byte ``offset``, if any."""
        i = bisect.bisect_right(self._offsets, offset) - 1
        if i < 0:
            return None
        alloc = self._by_offset[i]
        page = self.layout.page_size
        return alloc if offset < alloc.offset + (alloc.nbytes + page - 1) // page * page else None

    def is_release(self, page: int) -> bool:
        """Whether region page ``page`` belongs to a release-consistency array."""
        # a page outside the region is no array's (callers check the range after asking)
        return 0 <= page < len(self._release_pages) and bool(self._release_pages[page])

    def locate_page(self, page: int) -> tuple[str, int]:
        """(name of the allocation holding region page ``page`` or "", its index there)."""
        alloc = self.at(page * self.layout.page_size)
        if alloc is None:
            return "", page
        return alloc.name, page - alloc.offset // self.layout.page_size

    def __len__(self) -> int:
        return len(self._by_name)
