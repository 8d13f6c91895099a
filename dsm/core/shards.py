"""Which manager shard manages a page (IVY's fixed distributed manager).

Pages are dealt to the shards in stripes of ``STRIPE_PAGES`` consecutive pages: page ``p`` is
managed by shard ``(p // STRIPE_PAGES) % shards``. A stripe, not a single page (IVY's ``p mod
N``), so that a sequential scan's read-ahead batch stays one message to one shard: a request
never crosses a stripe's end. The stripe is as long as the agent's largest read-ahead window
(256 pages), so that striping never shortens a batch a single manager would have granted.
"""

from __future__ import annotations

#: consecutive pages one shard manages before the next shard's stripe begins
STRIPE_PAGES = 256


def shard_of(page: int, shards: int) -> int:
    """The shard that manages ``page`` among ``shards`` shards."""
    return (page // STRIPE_PAGES) % shards


def stripe_end(page: int, shards: int) -> int | None:
    """The first page after ``page``'s stripe, where another shard takes over; None with one
    shard (nothing to stop at)."""
    if shards <= 1:
        return None
    return (page // STRIPE_PAGES + 1) * STRIPE_PAGES
