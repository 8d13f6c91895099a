"""The directory's page-state machine (IVY's manager), with no sockets.

For every page it records the owner (a node holding the only, writable copy) or, when there is
none, the home copy kept here plus the copy set of nodes holding read copies. Requests for one page
are serialized: while a transaction on a page waits for a node (a fetch from the owner, the
invalidation acknowledgements), later requests for that page queue behind it; other pages go on.
A write is granted only after every read copy has acknowledged its invalidation.

Every method takes one input and returns the messages to send, as ``Send(node, message, page)``;
the ZeroMQ loop around it (``service.py``) only moves bytes.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from dsm.layout import Layout
from dsm.protocol import Fetch, Grant, Invalidate, Message, Payload

log = logging.getLogger(__name__)


class Send(NamedTuple):
    node: str
    message: Message
    page: Any = None


class Kind(enum.Enum):
    READ = "read"
    WRITE = "write"
    DISCARD = "discard"


@dataclass
class Request:
    kind: Kind
    node: str
    have_copy: bool = False


@dataclass
class Txn:
    id: int
    page: int
    request: Request
    waiting: set[str]
    #: the fetched contents, when the owner sent them (None: use the home copy)
    data: Any = None
    fetched_payload: int = Payload.NONE


@dataclass
class PageEntry:
    owner: str | None = None
    copyset: set[str] = field(default_factory=set)
    busy: Txn | None = None
    queue: deque[Request] = field(default_factory=deque)

    def describe(self) -> str:
        if self.owner is not None:
            return f"owned:{self.owner}"
        return "home{" + ",".join(sorted(self.copyset)) + "}"


#: a tracer receives (page, event, node, old state, new state)
Tracer = Callable[[int, str, str, str, str], None]


class PageDirectory:
    def __init__(self, layout: Layout, tracer: Tracer | None = None):
        self.layout = layout
        self._entries: dict[int, PageEntry] = {}
        #: home copies of pages no node owns; absent means all zeros
        self._home: dict[int, Any] = {}
        self._txns: dict[int, Txn] = {}
        self._next_txn = 1
        self._dead: set[str] = set()
        self._trace = tracer or (lambda *a: None)
        self.counters = {"grants": 0, "fetches": 0, "invalidations": 0, "writebacks": 0, "queued": 0}

    # --- queries (tests, stats) --------------------------------------------------------------------
    def entry(self, page: int) -> PageEntry:
        self.layout.check_page(page)
        e = self._entries.get(page)
        if e is None:
            e = self._entries[page] = PageEntry()
        return e

    def home_copy(self, page: int) -> Any:
        return self._home.get(page)

    def pending_transactions(self) -> int:
        return len(self._txns)

    # --- inputs ------------------------------------------------------------------------------------
    def acquire(self, node: str, page: int, write: bool, have_copy: bool) -> list[Send]:
        kind = Kind.WRITE if write else Kind.READ
        return self._submit(page, Request(kind, node, have_copy))

    def discard(self, node: str, page: int) -> list[Send]:
        return self._submit(page, Request(Kind.DISCARD, node))

    def fetched(self, node: str, txn_id: int, page: int, payload: int, data: Any) -> list[Send]:
        txn = self._txn_waiting_for(txn_id, page, node)
        if txn is None:
            return []
        if payload != Payload.NONE:
            txn.data = data
            txn.fetched_payload = payload
        txn.waiting.discard(node)
        return self._maybe_finish(txn)

    def invalidated(self, node: str, txn_id: int, page: int) -> list[Send]:
        txn = self._txn_waiting_for(txn_id, page, node)
        if txn is None:
            return []
        txn.waiting.discard(node)
        return self._maybe_finish(txn)

    def writeback(self, node: str, page: int, payload: int, data: Any) -> list[Send]:
        """The owner gives the page back. Applied at once, even while a transaction on the page
        waits: the owner's answer to that transaction's fetch will say it no longer holds it."""
        e = self.entry(page)
        if e.owner != node:
            log.warning("writeback of page %d from %s, which does not own it (%s): ignored",
                        page, node, e.describe())
            return []
        old = e.describe()
        self._set_home(page, payload, data)
        e.owner = None
        self.counters["writebacks"] += 1
        self._trace(page, "WRITEBACK", node, old, e.describe())
        return []

    def drop(self, node: str, page: int) -> list[Send]:
        e = self.entry(page)
        old = e.describe()
        e.copyset.discard(node)
        self._trace(page, "DROP", node, old, e.describe())
        return []

    def node_lost(self, node: str) -> list[Send]:
        """A node is gone (left or declared dead): forget its copies, give up waiting for it.
        Pages it owned fall back to their last home copy: their newest contents are lost."""
        self._dead.add(node)
        out: list[Send] = []
        for page, e in self._entries.items():
            e.copyset.discard(node)
            if e.owner == node:
                log.error("node %s left owning page %d: its latest contents are lost", node, page)
                e.owner = None
            e.queue = deque(r for r in e.queue if r.node != node)
        for txn in list(self._txns.values()):
            if node in txn.waiting:
                txn.waiting.discard(node)
                out += self._maybe_finish(txn)
        return out

    def node_joined(self, node: str) -> None:
        self._dead.discard(node)

    # --- transactions ------------------------------------------------------------------------------
    def _submit(self, page: int, request: Request) -> list[Send]:
        e = self.entry(page)
        if e.busy is not None:
            e.queue.append(request)
            self.counters["queued"] += 1
            return []
        return self._start(page, e, request)

    def _start(self, page: int, e: PageEntry, request: Request) -> list[Send]:
        node = request.node
        if request.kind is Kind.READ:
            if e.owner is None or e.owner == node:
                return self._finish_read(page, e, request)
            return self._begin(page, e, request, [Fetch(0, page, True)], {e.owner})
        if request.kind is Kind.WRITE:
            if e.owner == node:
                return self._finish_write(page, e, request, None)
            if e.owner is not None:
                return self._begin(page, e, request, [Fetch(0, page, False)], {e.owner})
            others = e.copyset - {node}
            if not others:
                return self._finish_write(page, e, request, None)
            return self._begin(page, e, request, [Invalidate(0, page)], others)
        # DISCARD: everyone else drops the page; its contents become zero
        holders = (e.copyset | ({e.owner} if e.owner else set())) - {node}
        if not holders:
            return self._finish_discard(page, e, request)
        return self._begin(page, e, request, [Invalidate(0, page)], holders)

    def _begin(
        self, page: int, e: PageEntry, request: Request, templates: list[Message], nodes: set[str]
    ) -> list[Send]:
        txn = Txn(self._next_txn, page, request, set(nodes))
        self._next_txn += 1
        self._txns[txn.id] = txn
        e.busy = txn
        out = []
        for target in sorted(nodes):
            for template in templates:
                msg = type(template)(**{**template.__dict__, "txn": txn.id})
                kind = "fetches" if isinstance(msg, Fetch) else "invalidations"
                self.counters[kind] += 1
                out.append(Send(target, msg))
        self._trace(page, request.kind.name, request.node, e.describe(), "busy")
        return out

    def _txn_waiting_for(self, txn_id: int, page: int, node: str) -> Txn | None:
        txn = self._txns.get(txn_id)
        if txn is None or txn.page != page or node not in txn.waiting:
            log.warning("unexpected answer from %s for txn %d page %d: ignored", node, txn_id, page)
            return None
        return txn

    def _maybe_finish(self, txn: Txn) -> list[Send]:
        if txn.waiting:
            return []
        del self._txns[txn.id]
        e = self._entries[txn.page]
        e.busy = None
        req = txn.request
        if req.kind is Kind.READ:
            out = self._finish_read(txn.page, e, req, txn)
        elif req.kind is Kind.WRITE:
            out = self._finish_write(txn.page, e, req, txn)
        else:
            out = self._finish_discard(txn.page, e, req)
        return out + self._drain_queue(txn.page, e)

    def _drain_queue(self, page: int, e: PageEntry) -> list[Send]:
        out: list[Send] = []
        while e.queue and e.busy is None:
            out += self._start(page, e, e.queue.popleft())
        return out

    def _finish_read(self, page: int, e: PageEntry, req: Request, txn: Txn | None = None) -> list[Send]:
        old = "busy" if txn else e.describe()
        if txn is not None:
            # the owner answered: it keeps a read copy if it still had the page
            previous_owner = e.owner
            if txn.fetched_payload != Payload.NONE:
                self._set_home(page, txn.fetched_payload, txn.data)
                if previous_owner is not None:
                    e.copyset.add(previous_owner)
            e.owner = None
        if e.owner == req.node:  # the requester owns it already: nothing moves
            self._trace(page, "READ", req.node, old, e.describe())
            return [Send(req.node, Grant(page, True, Payload.NONE))]
        if req.node in self._dead:
            self._trace(page, "READ", req.node, old, e.describe())
            return []
        e.copyset.add(req.node)
        self.counters["grants"] += 1
        self._trace(page, "READ", req.node, old, e.describe())
        return [self._grant_from_home(req.node, page, write=False)]

    def _finish_write(self, page: int, e: PageEntry, req: Request, txn: Txn | None) -> list[Send]:
        old = "busy" if txn else e.describe()
        node = req.node
        if txn is not None and txn.fetched_payload != Payload.NONE:
            self._set_home(page, txn.fetched_payload, txn.data)
        if e.owner is not None and e.owner != node and txn is not None:
            e.owner = None  # the fetch took the page from its owner
        already_current = e.owner == node or (req.have_copy and node in e.copyset)
        if node in self._dead:
            e.copyset.discard(node)
            self._trace(page, "WRITE", node, old, e.describe())
            return []
        e.copyset.clear()
        e.owner = node
        self.counters["grants"] += 1
        if already_current:
            grant = Send(node, Grant(page, True, Payload.NONE))
        else:
            grant = self._grant_from_home(node, page, write=True)
        # the node's copy is now the only current one: the home copy is stale from here on
        self._home.pop(page, None)
        self._trace(page, "WRITE", node, old, e.describe())
        return [grant]

    def _finish_discard(self, page: int, e: PageEntry, req: Request) -> list[Send]:
        old = "busy" if e.busy else e.describe()
        e.owner = None
        e.copyset.clear()
        self._home.pop(page, None)
        self._trace(page, "DISCARD", req.node, old, e.describe())
        return []

    def _grant_from_home(self, node: str, page: int, write: bool) -> Send:
        data = self._home.get(page)
        if data is None:
            return Send(node, Grant(page, write, Payload.ZERO))
        return Send(node, Grant(page, write, Payload.DATA), data)

    def _set_home(self, page: int, payload: int, data: Any) -> None:
        if payload == Payload.DATA:
            self._home[page] = data
        else:
            self._home.pop(page, None)
