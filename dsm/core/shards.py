"""Which manager shard manages a page (IVY's fixed distributed manager).

Pages are dealt to the shards in stripes of ``STRIPE_PAGES`` consecutive pages: page ``p`` is
managed by shard ``(p // STRIPE_PAGES) % shards``. A stripe, not a single page (IVY's ``p mod
N``), so that a sequential scan's read-ahead batch stays one message to one shard: a request
never crosses a stripe's end. The stripe is as long as the agent's largest read-ahead window
(256 pages), so that striping never shortens a batch a single manager would have granted.
"""

from __future__ import annotations

from typing import Iterable, Iterator

#: consecutive pages one shard manages before the next shard's stripe begins
STRIPE_PAGES = 256
#: the shard that coordinates (locks, barriers, allocations), or the one directory: releases
#: go to it, so a diff to it needs no answer before its node's release follows on the same pipe
COORDINATOR_SHARD = 0


def shard_of(page: int, shards: int, stripe: int = STRIPE_PAGES) -> int:
    """The shard that manages ``page`` among ``shards`` shards (``stripe``: pages per stripe,
    another only in the simulator, whose regions are a few pages)."""
    return (page // stripe) % shards


def stripe_end(page: int, shards: int, stripe: int = STRIPE_PAGES) -> int | None:
    """The first page after ``page``'s stripe, where another shard takes over; None with one
    shard (nothing to stop at)."""
    if shards <= 1:
        return None
    return (page // stripe + 1) * stripe


def clip_to_stripe(page: int, count: int, shards: int, stripe: int = STRIPE_PAGES) -> int:
    """``count`` cut so that the run from ``page`` ends at its stripe's end at the latest."""
    end = stripe_end(page, shards, stripe)
    return count if end is None else min(count, end - page)


def split_at_stripes(runs: Iterable[tuple[int, int]], shards: int,
                     stripe: int = STRIPE_PAGES) -> Iterator[tuple[int, int]]:
    """The ``(first, count)`` runs cut where a stripe ends: each piece is one shard's."""
    for first, count in runs:
        while count > 0:
            n = clip_to_stripe(first, count, shards, stripe)
            yield first, n
            first, count = first + n, count - n


def shard_name(index: int) -> str:
    """How shard ``index`` is named in traces and on their links ("directory" for shard 0, the
    coordinator, or the one directory)."""
    return "directory" if index == COORDINATOR_SHARD else f"directory.shard{index}"
