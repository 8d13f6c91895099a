"""Named allocations in the shared region: the first caller creates, every later caller finds,
and a freed array's pages go back to the region.

Every array starts on a page of its own (so that two arrays never share a page by accident).
Space is handed out first-fit from a list of free page runs. A name can be *unlinked*
(``node.free``): it is gone at once for new callers (the next ``array`` of that name creates a
new one), while the memory stays valid for the nodes that still hold it; the directory
*reclaims* it (``reclaim``) when the last of them has dropped it (``dsm/directory/lifetimes.py``).

The pages of a freed release-consistency array are never handed out again (``retired``): a node
may keep a stale copy of such a page mapped until its next acquire, and a new array placed there
would read the old array's bytes instead of zeros. Their home copies are still cleared. Under
the dynamic manager every freed array's pages are retired (``retire_freed``): their owners and
the copies they handed out keep them, and no directory transaction zeroes them.
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

    def pages(self, page_size: int) -> tuple[int, int]:
        """(first region page, number of pages)."""
        return self.offset // page_size, max(1, -(-self.nbytes // page_size))

    @property
    def release(self) -> bool:
        return self.meta.get(META_KEY) == Consistency.RELEASE.value


class Allocations:
    def __init__(self, layout: Layout):
        self.layout = layout
        #: the live names (unlinked arrays are not here, though their memory may still be held)
        self._by_name: dict[str, Allocation] = {}
        #: every allocation whose memory is in use, by offset (sorted)
        self._offsets: list[int] = []
        self._by_offset: list[Allocation] = []
        #: free runs of the region as [offset, bytes], sorted by offset, neighbours merged
        self._free: list[list[int]] = [[0, layout.size]]
        #: bytes of freed release-consistency arrays, never handed out again (module docstring)
        self.retired_bytes = 0
        #: every freed array's pages are retired, not only release-consistency ones' (the
        #: dynamic manager's: module docstring)
        self.retire_freed = False
        #: per region page, whether a release-consistency array holds it (asked at every
        #: acquire: a lookup, not a search)
        self._release_pages = np.zeros(layout.num_pages, dtype=bool)

    def _rounded(self, nbytes: int) -> int:
        page = self.layout.page_size
        return (nbytes + page - 1) // page * page

    def find_or_create(self, name: str, nbytes: int, meta: dict,
                       create: bool | None = None) -> Allocation:
        """The live array ``name``, made if there is none. ``create``: True fails if it exists,
        False fails if it does not (None: either)."""
        if not name:
            raise AllocationError("an allocation needs a non-empty name")
        if nbytes <= 0:
            raise AllocationError(f"allocation {name!r}: size must be positive, got {nbytes}")
        existing = self._by_name.get(name)
        if existing is not None:
            if create:
                raise AllocationError(f"array {name!r} exists already (create=True asks for a "
                                      "new one: free it first, or pass create=None to attach)")
            if existing.nbytes != nbytes or existing.meta != meta:
                raise AllocationError(
                    f"allocation {name!r} exists as {existing.meta} ({existing.nbytes} bytes); "
                    f"asked for {meta} ({nbytes} bytes)"
                )
            return existing
        if create is False:
            raise AllocationError(f"there is no array named {name!r} (create=False attaches to "
                                  "an existing one only)")
        rounded = self._rounded(nbytes)
        run = next((r for r in self._free if r[1] >= rounded), None)
        if run is None:
            free = sum(r[1] for r in self._free)
            largest = max((r[1] for r in self._free), default=0)
            raise AllocationError(
                f"allocation {name!r} needs {rounded} bytes but the region has {free} of "
                f"{self.layout.size} bytes free (the largest free run: {largest} bytes)"
            )
        alloc = Allocation(name, run[0], nbytes, dict(meta))
        run[0] += rounded
        run[1] -= rounded
        if not run[1]:
            self._free.remove(run)
        self._insert(alloc)
        return alloc

    def place(self, name: str, offset: int, nbytes: int, meta: dict) -> Allocation:
        """Record array ``name`` where the coordinator put it (a shard's copy of the table)."""
        existing = self._by_name.get(name)
        if existing is not None and existing.offset == offset:
            return existing
        if existing is not None:
            raise AllocationError(f"array {name!r} is at {existing.offset:#x} here, at "
                                  f"{offset:#x} on the coordinator: the tables diverged")
        rounded = self._rounded(nbytes)
        i = bisect.bisect_right([r[0] for r in self._free], offset) - 1
        if i < 0 or offset + rounded > self._free[i][0] + self._free[i][1]:
            raise AllocationError(f"array {name!r} at {offset:#x}+{rounded:#x} overlaps memory "
                                  "in use here: the allocation tables diverged")
        start, size = self._free.pop(i)
        tail = start + size - (offset + rounded)
        self._free[i:i] = [r for r in ([start, offset - start], [offset + rounded, tail]) if r[1]]
        alloc = Allocation(name, offset, nbytes, dict(meta))
        self._insert(alloc)
        return alloc

    def _insert(self, alloc: Allocation) -> None:
        self._by_name[alloc.name] = alloc
        i = bisect.bisect_left(self._offsets, alloc.offset)
        self._offsets.insert(i, alloc.offset)
        self._by_offset.insert(i, alloc)
        if alloc.release:
            first, count = alloc.pages(self.layout.page_size)
            self._release_pages[first : first + count] = True

    def unlink(self, name: str) -> Allocation | None:
        """Forget the name (its memory stays in use until ``reclaim``)."""
        return self._by_name.pop(name, None)

    def reclaim(self, alloc: Allocation) -> None:
        """``alloc``'s memory is no longer used by anyone: it goes back to the free runs (a
        release-consistency array's, or any under ``retire_freed``, is retired instead, see the
        module docstring)."""
        if self._by_name.get(alloc.name) is alloc:
            del self._by_name[alloc.name]
        i = bisect.bisect_left(self._offsets, alloc.offset)
        if i == len(self._offsets) or self._by_offset[i] is not alloc:
            return
        del self._offsets[i], self._by_offset[i]
        rounded = self._rounded(alloc.nbytes)
        if alloc.release or self.retire_freed:
            self.retired_bytes += rounded
            return
        j = bisect.bisect_left([r[0] for r in self._free], alloc.offset)
        self._free.insert(j, [alloc.offset, rounded])
        for k in (j, j - 1):  # merge with the following run, then the preceding one
            if 0 <= k < len(self._free) - 1 and sum(self._free[k]) == self._free[k + 1][0]:
                self._free[k][1] += self._free.pop(k + 1)[1]

    def free_bytes(self) -> int:
        return sum(r[1] for r in self._free)

    def all(self) -> list[Allocation]:
        """Every allocation whose memory is in use, in address order."""
        return list(self._by_offset)

    def live(self) -> list[Allocation]:
        """The arrays a new caller can find by name, in address order."""
        return [a for a in self._by_offset if self._by_name.get(a.name) is a]

    def get(self, name: str) -> Allocation | None:
        return self._by_name.get(name)

    def at(self, offset: int) -> Allocation | None:
        """The allocation whose pages hold region byte ``offset``, if any."""
        i = bisect.bisect_right(self._offsets, offset) - 1
        if i < 0:
            return None
        alloc = self._by_offset[i]
        return alloc if offset < alloc.offset + self._rounded(alloc.nbytes) else None

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
