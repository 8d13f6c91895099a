"""The consistency models an array may have (``node.array(..., consistency=...)``).

- ``sequential`` (the default): one writer or many readers per page at any time; every read
  returns the last write anywhere. False sharing costs a fault and an invalidation per write.
- ``release``: home-based lazy release consistency (``dsm.core.release``,
  ``dsm.directory.release``). Writes stay local between synchronization points and pages may
  have several writers at once; a lock release or a barrier arrival sends the changed bytes
  home, a lock grant or a barrier departure invalidates what others changed. A data-race-free
  program (every pair of conflicting accesses ordered by locks or barriers) sees sequentially
  consistent results.

The model is part of the array's allocation (its ``meta``): every node, and the manager, learn
it from the allocation table; asking for an existing array with the other model is an error.
"""

from __future__ import annotations

import enum

#: the allocation meta key that holds an array's model
META_KEY = "consistency"


class Consistency(enum.Enum):
    SEQUENTIAL = "sequential"
    RELEASE = "release"


#: their names, as node.array and the command lines take them
CONSISTENCIES = tuple(c.value for c in Consistency)
