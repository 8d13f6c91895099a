"""Named allocations in the shared region: the first caller creates, every later caller finds.

A bump allocator over whole pages (so that two arrays never share a page by accident): arrays are
never freed, which keeps every address valid for the life of the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        self._next_offset = 0

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
        self._next_offset += rounded
        return alloc

    def __len__(self) -> int:
        return len(self._by_name)
