"""The cyclic garbage collector's settings for a long-running service (the directory, a node's
agent): what they keep is large and lives long, what they make per message is short-lived.

Python's collector runs its youngest generation every 700 allocations of container objects and
an older one every 10 runs of the one below, and each run of an older generation walks every
object that survived into it. A service keeps an entry per page it has seen (the directory: a
``PageEntry`` with its copy set and queue per page; an agent: its page states), so a 256 MiB
scan makes some 200,000 containers in a second, and every tenth young collection then walks
them all: py-spy found a third of the directory's samples during a scan in the line that makes
an entry. ``tune_for_service`` freezes what the start-up made (imports, the tables: never
garbage) out of the collector's sight and collects far less often; what a service lets go is
mostly freed by reference counting, and the collector still runs for the cycles.
"""

from __future__ import annotations

import gc

#: (allocations between two young collections, young collections between two of the middle
#: generation, middle between two of the oldest): Python's are (700, 10, 10)
SERVICE_GC_THRESHOLDS = (100_000, 50, 100)


def tune_for_service() -> None:
    """Call once the service has started (its imports and tables made)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVICE_GC_THRESHOLDS)
