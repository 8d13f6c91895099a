"""IVY's managers (Li and Hudak, 1989), as ``dsm directory --manager`` names them.

- ``relay``: every page travels through the directory, which keeps the home copy of every
  read-shared page. The nodes need no address the others can reach (NAT): the baseline.
- ``central``: IVY's centralized manager. The directory knows each page's owner and copy set and
  serializes requests per page; the pages travel node to node (``dsm.directory.pages``).
- ``distributed``: IVY's fixed distributed manager: the central algorithm split over shards by
  page stripes (``dsm.core.shards``), each shard its own process.
- ``dynamic``: IVY's dynamic distributed manager: every node asks a page's probable owner
  straight, node to node, and the owner serves the requester; the directory is the home of
  untouched pages and the fallback after a death (``dsm.core.dynamic``,
  ``dsm.directory.pages.dynamic``); release-consistency arrays have their home at the
  directory, as under the other managers. No cluster-wide discard of a page a node does not
  own (release-consistency pages: as under the other managers).
"""

from __future__ import annotations

import enum

MANAGER_ENV = "DSM_MANAGER"
#: the distributed manager's number of shards (``dsm directory --shards``/``--of``); several
#: imply ``distributed``
SHARDS_ENV = "DSM_SHARDS"


class Manager(enum.Enum):
    RELAY = "relay"
    CENTRAL = "central"
    DISTRIBUTED = "distributed"
    DYNAMIC = "dynamic"

    @property
    def direct(self) -> bool:
        """Whether pages travel node to node under this manager."""
        return self is not Manager.RELAY


#: their names, as ``--manager`` takes them
MANAGERS = tuple(m.value for m in Manager)

#: the default: on ``dsm bench --manager all`` (README) the central manager runs the workloads
#: (jacobi, sort, counter) and the scan faster than the relay one; the relay one serves reads
#: of read-shared pages faster (2 hops, from its copy) and needs no reachable nodes (NAT)
DEFAULT_MANAGER = Manager.CENTRAL
