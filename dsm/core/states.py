"""A node's page states, and runs of pages."""

from __future__ import annotations

import enum


class PageState(enum.Enum):
    SHARED = "shared"  #: a read copy, write-protected in every local process
    EXCLUSIVE = "exclusive"  #: owned: the only copy, writable
    #: release consistency (``dsm.core.release``): a copy, write-protected, not twinned
    CLEAN = "clean"
    #: release consistency: twinned at its first write since, writable (other nodes may write
    #: their own copies of it meanwhile)
    DIRTY = "dirty"
    #: release consistency: a page no other node has asked for, writable, never twinned (the
    #: manager asks for it when another node does: it becomes CLEAN here)
    PRIVATE = "private"

    @property
    def protected(self) -> bool:
        """Whether the page is write-protected in every local process (a write faults)."""
        return self is PageState.SHARED or self is PageState.CLEAN


#: the states of pages whose only current copy is this node's (written back with contents;
#: lost if the node dies)
OWNED = (PageState.EXCLUSIVE, PageState.PRIVATE)


def runs(pages: list[int], max_len: int) -> list[tuple[int, int]]:
    """Sorted pages as (first, count) runs of consecutive pages, at most ``max_len`` long."""
    out: list[tuple[int, int]] = []
    for pg in sorted(pages):
        if out and out[-1][0] + out[-1][1] == pg and out[-1][1] < max_len:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((pg, 1))
    return out


def ascending_runs(pages: list[int], max_len: int) -> list[tuple[int, int]]:
    """``runs`` of pages already in strictly ascending order (a run's pages collected in order):
    one run when they are consecutive, found without a sort or a loop."""
    if pages and pages[-1] - pages[0] + 1 == len(pages) <= max_len:
        return [(pages[0], len(pages))]
    return runs(pages, max_len)


#: the longest run ``pack_runs`` makes (a message's page count bounds nothing here: the runs
#: of write notices are numbers in a list)
PACKED_RUN_PAGES = 1 << 20


def pack_runs(pages) -> list[int]:
    """Pages (any order, no repeats) as flat ``[first, count, ...]`` runs, ascending."""
    return [x for first, count in runs(list(pages), PACKED_RUN_PAGES) for x in (first, count)]


def unpack_runs(packed: list[int]) -> set[int]:
    """The pages flat ``[first, count, ...]`` runs name (``pack_runs``'s inverse; runs may
    overlap)."""
    return {q for first, count in zip(packed[::2], packed[1::2])
            for q in range(first, first + count)}

