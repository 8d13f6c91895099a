"""What the page-state machine records and answers: a page's entry, a request, a transaction on a
run of pages, and each message out (``Send``), plus what becomes of pages a node's death lost
(``OnLoss``). Plain data: the rules that change them are in ``transactions`` and ``inputs``.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from dsm.protocol import Message


class Send(NamedTuple):
    """A message for ``node``; ``page`` is the bytes that go with it (None: none)."""

    node: str
    message: Message
    page: Any = None


class OnLoss(enum.Enum):
    """What becomes of the pages whose newest contents died with a node."""

    POISON = "poison"  #: lost: every access fails until the program forgets them
    LAST_COPY = "last-copy"  #: the last home copy is served again (logged and counted)


class Kind(enum.Enum):
    READ = "read"
    WRITE = "write"
    DISCARD = "discard"


#: the requester of a freed array's DISCARDs: no node (every holder's copy is invalidated)
RECLAIMER = ""


@dataclass
class Request:
    kind: Kind
    node: str
    page: int
    count: int = 1  #: pages wanted from ``page``; only ``page`` itself is required
    have_copy: bool = False
    #: a write: pages from ``page`` it takes if untouched (``Acquire.untouched``)
    untouched: int = 1


@dataclass
class Txn:
    id: int
    request: Request
    count: int  #: pages covered, from request.page
    waiting: set[str]
    source: str | None = None  #: the owner the pages are fetched from
    fetched: tuple[int, Any, frozenset] | None = None  #: (payload, data, pages not held)
    started_s: float = 0.0  #: when the directory asked (its clock)
    #: node to node: the source sends the pages to the requester, both answer
    direct: bool = False
    keep_copy: bool = False  #: the source keeps a read copy (a read transfer)
    #: at its end the request starts over (the pages did not move as planned)
    restart: bool = False
    #: pages the source gave up while the transaction ran (its Drop came meanwhile)
    source_dropped: set[int] = field(default_factory=set)
    #: pages the requester, having them already, gave back before the transaction ended
    requester_gave_back: set[int] = field(default_factory=set)
    withdrawn: bool = False  #: the source died and the requester was asked whether they came
    refused: bool = False  #: the requester did not take the pages (it no longer wanted them)
    #: a write granted at its start, its invalidations acknowledged straight to the requester,
    #: which confirms (``Received``) once it has them all: it waits for the requester only
    acked: bool = False
    #: of those holders, the ones whose acknowledgement this directory has not seen (one that
    #: could not reach the requester sends it here; it is forwarded): told to the requester
    #: as acknowledged if they die
    unacked: set[str] = field(default_factory=set)

    def describe(self) -> str:
        """What the transaction is and whom it waits for, for a log line that declares a node
        dead over it (which message was left unanswered is what a reader needs to know)."""
        req = self.request
        what = f"a {req.kind.value} of pages {req.page}+{self.count} by {req.node or 'nobody'}"
        if self.source is not None:
            what += f", from {self.source}" + (" node to node" if self.direct else "")
        if self.withdrawn:
            what += ", its source gone"
        waits = sorted(self.unacked if self.acked and self.unacked else self.waiting)
        return f"{what}; waiting for {', '.join(waits) or 'nobody'}"


@dataclass(slots=True)  # (slots: a fresh array's first touch makes thousands at once)
class PageEntry:
    owner: str | None = None
    copyset: set[str] = field(default_factory=set)
    busy: Txn | None = None
    #: requests waiting for the page: None until one does (a deque per page costs its making
    #: and some 600 bytes, and a scan makes an entry for each of thousands of pages at once)
    queue: deque[Request] | None = None
    #: the home copy is the page's current contents (zeros when never written); false while a
    #: node owns the page, and under a direct manager while only read copies hold it
    home_current: bool = True
    last_writer: str | None = None  #: the node last granted it for writing
    #: read, then written, by one node after another: reads are granted for writing
    migratory: bool = False

    @classmethod
    def written_by(cls, node: str) -> "PageEntry":
        """The entry of a page just granted to ``node`` for writing (a run of untouched pages):
        made positionally, in this field order, about twice as fast as with keywords."""
        return cls(node, set(), None, None, False, node)

    def describe(self) -> str:
        if self.owner is not None:
            return f"owned:{self.owner}"
        return "home{" + ",".join(sorted(self.copyset)) + "}"


#: a tracer receives (page, event, node, old state, new state, **extra)
Tracer = Callable[..., None]
#: page -> (name of the array it belongs to or "", its page index within the array)
Locator = Callable[[int], tuple[str, int]]
