"""A node's page states, and runs of pages."""

from __future__ import annotations

import enum


class PageState(enum.Enum):
    SHARED = "shared"  #: a read copy, write-protected in every local process
    EXCLUSIVE = "exclusive"  #: owned: the only copy, writable


def runs(pages: list[int], max_len: int) -> list[tuple[int, int]]:
    """Sorted pages as (first, count) runs of consecutive pages, at most ``max_len`` long."""
    out: list[tuple[int, int]] = []
    for pg in sorted(pages):
        if out and out[-1][0] + out[-1][1] == pg and out[-1][1] < max_len:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((pg, 1))
    return out
