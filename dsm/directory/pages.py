"""The directory's page-state machine (IVY's manager), with no sockets.

For every page it records the owner (a node holding the only, writable copy) or, when there is
none, the home copy kept here plus the copy set of nodes holding read copies. Requests for one page
are serialized: while a transaction on a page waits for a node (a fetch from the owner, the
invalidation acknowledgements), later requests for that page queue behind it; other pages go on.
A write is granted only after every read copy has acknowledged its invalidation.

A request names the page that faulted and, as read-ahead, how many pages after it the node would
also like. The directory adds the following pages that are in the same situation as the first
(same owner to fetch from, or at home with the same copies to invalidate) and not busy, so that a
sequential scan moves many pages per message; a page it cannot add is simply not granted.

Every method takes one input and returns the messages to send, as ``Send(node, message, page)``;
the ZeroMQ loop around it (``service.py``) only moves bytes.

Two ways for pages to travel (``direct``). The relay manager moves every page through here: an
owner's pages come in a ``Fetched`` and leave in a ``Grant``, and the home copy of every
read-shared page is kept here. The central manager (and each shard of the distributed one) moves
pages node to node: a ``Fetch`` names the requester, the holder sends the pages straight to it
(``PeerPage``) and says so (``Fetched`` with SENT), and the requester confirms (``Received``);
the transaction ends on both, so that nothing sent to the requester afterwards overtakes its
pages, and nothing is decided about a holder's pages before it has answered. A read-shared page's
contents then live only in its copies (``home_current`` false): a read is served by one of them
(the *keeper*), and the last copy given up comes back with its contents. A write to a page that
several other nodes share, by a node without a copy, first fetches a copy home (a rare case:
then it is as under the relay manager), so that no invalidation can destroy the only copies.

Migratory pages (Stenström, Brorsson and Sandberg 1993; Cox and Fowler 1993): a page that nodes
read and then write in turn (a counter under a lock) costs two faults per turn, a read and an
upgrade. A page whose upgrade comes from the one reader of the last writer's page is marked
migratory; a read of a migratory page another node owns is then granted for writing (the owner
gives it up), and the requester installs it write-protected, so that its write costs only a
local fault. A holder that gives such a page up unwritten says so (``Fetched.unwritten``): the
prediction was wrong, and the page is read-shared again.

Loss: the pages a node owned when it died (or left without handing them back) held contents no
one else has. By default (``OnLoss.POISON``) they become *lost*: every later request for them is
answered with ``Lost``, never with zeros or an older copy, until the program forgets them
(``forget_lost``). ``OnLoss.LAST_COPY`` keeps the home copy even while a node owns the page, and
falls back to it, logging and counting every fallback.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from dsm.core.shards import STRIPE_PAGES, clip_to_stripe
from dsm.directory.home import HomeStore
from dsm.directory.release import ReleaseHomes
from dsm.errors import ProtocolError
from dsm.layout import Layout
from dsm.protocol import Fetch, Grant, Invalidate, Lost, Message, Payload, Withdrawn

log = logging.getLogger(__name__)


class Send(NamedTuple):
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


@dataclass
class Request:
    kind: Kind
    node: str
    page: int
    count: int = 1  #: pages wanted from ``page``; only ``page`` itself is required
    have_copy: bool = False


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


@dataclass
class PageEntry:
    owner: str | None = None
    copyset: set[str] = field(default_factory=set)
    busy: Txn | None = None
    queue: deque[Request] = field(default_factory=deque)
    #: the home copy is the page's current contents (zeros when never written); false while a
    #: node owns the page, and under a direct manager while only read copies hold it
    home_current: bool = True
    last_writer: str | None = None  #: the node last granted it for writing
    #: read, then written, by one node after another: reads are granted for writing
    migratory: bool = False

    def describe(self) -> str:
        if self.owner is not None:
            return f"owned:{self.owner}"
        return "home{" + ",".join(sorted(self.copyset)) + "}"


_FREE = PageEntry()  # what a page never asked for looks like (never modified)

#: a tracer receives (page, event, node, old state, new state, **extra)
Tracer = Callable[..., None]
#: page -> (name of the array it belongs to or "", its page index within the array)
Locator = Callable[[int], tuple[str, int]]


class PageDirectory:
    def __init__(self, layout: Layout, tracer: Tracer | None = None,
                 on_loss: OnLoss = OnLoss.POISON, locate: Locator | None = None,
                 clock: Callable[[], float] = time.monotonic, direct: bool = False,
                 shard: int = 0, shards: int = 1, migratory: bool = True,
                 stripe: int = STRIPE_PAGES, is_release: Callable[[int], bool] | None = None):
        if direct and on_loss is OnLoss.LAST_COPY:
            raise ValueError("--on-loss last-copy falls back to the directory's copy of every "
                             "page, which only the relay manager keeps: use --manager relay")
        self.layout = layout
        self.on_loss = on_loss
        #: pages travel node to node (central, distributed) rather than through here (relay)
        self.direct = direct
        #: node -> its peer endpoint (direct managers send it with every Fetch)
        self.peers: dict[str, str] = {}
        #: whether migratory pages are detected (``--no-migratory``: every turn two faults)
        self.detect_migratory = migratory
        #: the shards' stripes: no request covers pages past its stripe (``dsm.core.shards``)
        self.shard, self.shards, self.stripe = shard, shards, stripe
        self._locate = locate or (lambda page: ("", page))
        self._clock = clock
        #: lost page -> the node whose death lost it
        self.lost: dict[int, str] = {}
        self._entries: dict[int, PageEntry] = {}
        self.home = HomeStore(layout)
        #: the pages of release-consistency arrays: no owners, their home here merges diffs
        self.release = ReleaseHomes(self.home, is_release or (lambda page: False))
        self._txns: dict[int, Txn] = {}
        self._next_txn = 1
        self._dead: set[str] = set()
        self._trace = tracer or (lambda *a, **k: None)
        #: describing states costs: only when someone reads the trace
        self._tracing = bool(getattr(tracer, "enabled", tracer is not None))
        self.counters = {"grants": 0, "pages_granted": 0, "fetches": 0, "invalidations": 0,
                         "writebacks": 0, "queued": 0, "pages_lost": 0, "lost_answers": 0,
                         "fallbacks": 0, "migratory_grants": 0, "migratory_mispredictions": 0}

    # --- queries (tests, stats) --------------------------------------------------------------------
    def entry(self, page: int) -> PageEntry:
        self.layout.check_page(page)
        e = self._entries.get(page)
        if e is None:
            e = self._entries[page] = PageEntry()
        return e

    def peek(self, page: int) -> PageEntry:
        """The entry of ``page`` as it is, without creating one (read-only: ``dsm top``)."""
        return self._entries.get(page, _FREE)

    def _peek(self, page: int) -> PageEntry:
        return self._entries.get(page, _FREE)

    # --- inputs ------------------------------------------------------------------------------------
    def acquire(self, node: str, page: int, count: int, write: bool, have_copy: bool) -> list[Send]:
        if self.release.covers(page):  # the home copy, for reading and for writing alike
            self.layout.check_page(page)
            if page in self.lost:
                return [self._lost_answer(node, page, count)]
            limit = clip_to_stripe(page, min(count, self.layout.num_pages - page), self.shards,
                                   self.stripe)
            old = self.release.describe(page) if self._tracing else ""
            out = [Send(*s) for s in self.release.read(node, page, limit,
                                                       lambda q: q not in self.lost, write)]
            if self._tracing:
                self._trace(page, "WRITE" if out and getattr(out[0].message, "write", False)
                            else "READ", node, old, self.release.describe(page))
            return out
        kind = Kind.WRITE if write else Kind.READ
        return self._submit(Request(kind, node, page, max(1, count), have_copy))

    def discard(self, node: str, page: int) -> list[Send]:
        if self.release.covers(page):  # zeros from now on; the others learn at their acquire
            self.layout.check_page(page)
            self.lost.pop(page, None)
            self.release.discard(node, page)
            return []
        return self._submit(Request(Kind.DISCARD, node, page))

    def diff(self, node: str, req: int, page: int, count: int, spans: Any,
             data: Any) -> list[Send]:
        """A node's changes to release pages (at its release): into their home copies
        (``spans``: (start, length) rows, checked by the protocol)."""
        self.layout.check_page(page + count - 1)
        for q in range(page, page + count):
            if not self.release.covers(q):
                raise ProtocolError(f"Diff of page {q}, which is not in a release-consistency "
                                    "array")
        applied = self.release.apply(node, req, page, count, spans, data)
        if self._tracing:
            self._trace(page, "DIFF", node, "", self.release.describe(page), count=count,
                        bytes=int(spans[:, 1].sum()))
        return [Send(node, applied)]

    def dirtied(self, node: str, page: int, count: int) -> list[Send]:
        self.layout.check_page(page + count - 1)
        self.release.dirtied(node, [q for q in range(page, page + count)
                                    if self.release.covers(q)])
        return []

    def fetched(self, node: str, txn_id: int, page: int, count: int, payload: int, data: Any,
                not_held: list[int], unwritten: list[int] = ()) -> list[Send]:
        if self.release.covers(page):  # a private release page, asked of its holder
            self.layout.check_page(page + count - 1)
            return [Send(*s) for s in self.release.fetched(node, page, count, payload, data)]
        txn = self._txn_waiting_for(txn_id, page, node)
        if txn is None:
            return []
        for q in unwritten:  # granted for writing at a read, and not written: not migratory
            if page <= q < page + txn.count and self._entries[q].migratory:
                self._entries[q].migratory = False
                self.counters["migratory_mispredictions"] += 1
        if count != txn.count:
            log.warning("fetch answer from %s covers %d pages, asked %d: ignored", node, count, txn.count)
            return []
        if payload == Payload.SENT:
            if not txn.direct:
                log.warning("fetch answer from %s says it sent txn %d's pages to the requester, "
                            "which it was not asked to: ignored", node, txn_id)
                return []
            txn.waiting.discard(node)  # the pages are on their way to the requester
            return self._maybe_finish(txn)
        if self.direct:
            self._take_home(txn, payload, data, frozenset(not_held))
            return self._maybe_finish(txn)
        txn.fetched = (payload, data, frozenset(not_held))
        txn.waiting.discard(node)
        return self._maybe_finish(txn)

    def _take_home(self, txn: Txn, payload: int, data: Any, not_held: frozenset) -> None:
        """Direct managers: the source sent the pages here, not to the requester (it fetched
        them home on purpose, or it no longer held them all, or it could not reach the
        requester). What it held becomes the home copy; the request starts over from there."""
        source, first = txn.source, txn.request.page
        view = memoryview(data) if data is not None else None
        size = self.layout.page_size
        for i in range(txn.count):
            q = first + i
            e = self._entries[q]
            if q in not_held or payload == Payload.NONE:
                e.copyset.discard(source)  # it has none: never ask it again for this one
                continue
            if e.owner == source:
                e.owner = None
            if txn.keep_copy:
                e.copyset.add(source)
            else:
                e.copyset.discard(source)
            self.home.put(q, 1, payload, view[i * size:(i + 1) * size] if view is not None else None)
            e.home_current = True
        txn.waiting.discard(source)
        txn.waiting.discard(txn.request.node)  # it gets nothing from the source
        txn.restart = True

    def received(self, node: str, txn_id: int, page: int, count: int,
                 installed: bool) -> list[Send]:
        """The requester of a node-to-node transaction has its pages (``installed``) or, told
        that their source is gone, says they never came."""
        txn = self._txn_waiting_for(txn_id, page, node)
        if txn is None:
            return []
        if not txn.direct or node != txn.request.node:
            log.warning("Received from %s for txn %d, which it did not request: ignored",
                        node, txn_id)
            return []
        txn.waiting.discard(node)
        if not installed and txn.withdrawn:  # the source died before its pages came
            self._lose_orphans(txn.request.page, txn.count, txn.source)
            txn.restart = True
        elif not installed:  # it did not take them: the transfer ends without it
            txn.refused = True
        return self._maybe_finish(txn)

    def invalidated(self, node: str, txn_id: int, page: int, count: int) -> list[Send]:
        txn = self._txn_waiting_for(txn_id, page, node)
        if txn is None:
            return []
        txn.waiting.discard(node)
        return self._maybe_finish(txn)

    def writeback(self, node: str, page: int, count: int, payload: int, data: Any) -> list[Send]:
        """The owner gives pages back. Applied at once, even while a transaction on them waits:
        the owner's answer to that transaction's fetch will list them as not held."""
        self.layout.check_page(page + count - 1)
        if self.release.covers(page):  # a private release page's holder
            self.release.written_back(node, page, count, payload, data)
            return []
        view = memoryview(data) if data is not None else None
        size = self.layout.page_size
        for i in range(count):
            q = page + i
            e = self.entry(q)
            if e.owner != node:
                txn = e.busy
                if txn is not None and self._received_by(txn, node):
                    # it owns the page already, though the transaction has not ended
                    txn.requester_gave_back.add(q)
                else:
                    log.warning("writeback of page %d from %s, which does not own it (%s): "
                                "ignored", q, node, e.describe())
                    continue
            self.home.put(q, 1, payload, view[i * size : (i + 1) * size] if view is not None else None)
            e.owner = None
            e.home_current = True
        self.counters["writebacks"] += count
        if self._tracing:
            self._trace(page, "WRITEBACK", node, f"owned:{node}", "home{}", count=count)
        return []

    def drop(self, node: str, page: int, count: int, payload: int = Payload.NONE,
             data: Any = None) -> list[Send]:
        """A node gives up read copies. Under a direct manager they come with their contents:
        a read copy is current, so it becomes the home copy whenever the home copy is not
        (the last copy of a page must not vanish with it)."""
        self.layout.check_page(page + count - 1)
        view = memoryview(data) if data is not None and payload == Payload.DATA else None
        size = self.layout.page_size
        for i, q in enumerate(range(page, page + count)):
            e = self._entries.get(q)
            if e is None:
                continue
            e.copyset.discard(node)
            txn = e.busy
            if txn is not None and txn.source == node:
                txn.source_dropped.add(q)
            if txn is not None and self._received_by(txn, node):
                txn.requester_gave_back.add(q)  # its copy came, and went
            # current: a copy nobody owns; the source's, as it downgrades to a read copy; the
            # read copy a requester got node to node, given back before its transaction ended
            # (the source keeps the same contents, and may die before its Fetched arrives)
            if (view is not None and not e.home_current
                    and (e.owner is None
                         or txn is not None and (e.owner == node and txn.source == node
                                                 and txn.keep_copy
                                                 or self._received_by(txn, node)
                                                 and txn.request.kind is Kind.READ))):
                self.home.put(q, 1, Payload.DATA, view[i * size:(i + 1) * size])
                e.home_current = True
        if self._tracing:
            self._trace(page, "DROP", node, "", "", count=count)
        return []

    def node_lost(self, node: str) -> list[Send]:
        """A node is gone (left or declared dead): forget its copies, give up waiting for it.
        The pages it owned are lost, or fall back to their last home copy (``OnLoss``)."""
        self._dead.add(node)
        self.peers.pop(node, None)
        out: list[Send] = []
        lost = []
        for page, e in self._entries.items():
            e.copyset.discard(node)
            if e.queue:
                e.queue = deque(r for r in e.queue if r.node != node)
            if e.busy is not None and e.busy.direct and e.busy.source == node:
                continue  # its pages may have reached the requester: it says (Withdrawn)
            if e.owner == node:
                lost.append(page)
                e.owner = None
            elif (self.direct and e.owner is None and not e.home_current and not e.copyset
                  and page not in self.lost):
                lost.append(page)  # its read copy was the last one
        # release pages it changed and never released, or held privately
        release_lost, release_waiting = self.release.node_lost(node)
        lost += release_lost
        if lost:
            self._record_loss(node, lost)
        for waiting, q in release_waiting:  # (--on-loss last-copy: the home copy is served)
            if waiting not in self._dead:
                out.append(self._lost_answer(waiting, q, 1) if q in self.lost
                           else Send(waiting, *self.release.home_grant(q)))
        for txn in list(self._txns.values()):
            requester = txn.request.node
            if txn.direct and node == txn.source and requester in txn.waiting:
                # did its pages get there before it died? only the requester can tell (even
                # after its Fetched: the pages may have died in its queue)
                txn.waiting.discard(node)
                txn.withdrawn = True
                txn.started_s = self._clock()  # the requester's own deadline to answer starts
                out.append(Send(requester, Withdrawn(txn.id, txn.request.page, txn.count, node)))
                continue
            if node not in txn.waiting:
                continue
            txn.waiting.discard(node)
            out += self._maybe_finish(txn)
        return out

    @staticmethod
    def _received_by(txn: Txn, node: str) -> bool:
        """Whether ``node`` requested ``txn``'s pages node to node and has them already."""
        return txn.direct and txn.request.node == node and node not in txn.waiting

    def node_joined(self, node: str, peer: str = "") -> None:
        self._dead.discard(node)
        if peer:
            self.peers[node] = peer

    def _lose_orphans(self, first: int, count: int, dead: str | None) -> None:
        """Pages of a transaction that no live node holds any more, and whose home copy is not
        current: their contents died (with ``dead``)."""
        orphans = []
        for q in range(first, first + count):
            e = self._entries[q]
            if e.owner is not None and e.owner in self._dead:
                e.owner = None
            if e.owner is None and not e.home_current and not e.copyset and q not in self.lost:
                orphans.append(q)
        if orphans:
            self._record_loss(dead or "(unknown)", orphans)

    def _record_loss(self, node: str, pages: list[int]) -> None:
        runs = self._runs_by_array(pages)
        where = "; ".join(f"array {name or '(none)'!r} pages {lo}-{hi}" for name, lo, hi in runs[:8])
        more = f" and {len(runs) - 8} more runs" if len(runs) > 8 else ""
        if self.on_loss is OnLoss.LAST_COPY:
            for page in pages:
                self.entry(page).home_current = True  # what is served from now on
            self.counters["fallbacks"] += len(pages)
            log.error("node %s is gone owning %d pages (%s%s): they fall back to their last home "
                      "copy (--on-loss last-copy); writes made since that copy are lost",
                      node, len(pages), where, more)
            return
        for page in pages:
            self.lost[page] = node
        self.home.clear_pages(pages)
        self.counters["pages_lost"] += len(pages)
        log.error("node %s is gone owning %d pages (%s%s): they are LOST; every access to them "
                  "fails until the program calls node.forget_lost(name)", node, len(pages), where,
                  more)

    def _runs_by_array(self, pages: list[int]) -> list[tuple[str, int, int]]:
        """Sorted pages as (array, first, last) runs, counted within each array."""
        runs: list[tuple[str, int, int]] = []
        for page in sorted(pages):
            name, index = self._locate(page)
            if runs and runs[-1][0] == name and runs[-1][2] + 1 == index:
                runs[-1] = (name, runs[-1][1], index)
            else:
                runs.append((name, index, index))
        return runs

    # --- lost pages --------------------------------------------------------------------------------
    def lost_runs(self, first: int = 0, count: int | None = None) -> list[tuple[int, int, str]]:
        """The lost pages in [first, first+count) as (first, count, dead node) runs."""
        end = self.layout.num_pages if count is None else first + count
        out: list[tuple[int, int, str]] = []
        for page in sorted(q for q in self.lost if first <= q < end):
            node = self.lost[page]
            if out and out[-1][0] + out[-1][1] == page and out[-1][2] == node:
                out[-1] = (out[-1][0], out[-1][1] + 1, node)
            else:
                out.append((page, 1, node))
        return out

    def forget_lost(self, first: int, count: int) -> list[tuple[int, int, str]]:
        """The program gives up the lost pages in [first, first+count): they read as zeros from
        now on. Returns the runs forgotten."""
        runs = self.lost_runs(first, count)
        for start, n, _ in runs:
            for q in range(start, start + n):
                del self.lost[q]
                self.entry(q).home_current = True  # zeros
            self.home.clear(start, n)
        return runs

    def _lost_answer(self, node: str, page: int, limit: int) -> Send:
        dead = self.lost[page]
        n = 1
        while n < limit and self.lost.get(page + n) == dead:
            n += 1
        self.counters["lost_answers"] += 1
        name, index = self._locate(page)
        if self._tracing:
            self._trace(page, "LOST", node, "lost", "lost", count=n)
        return Send(node, Lost(page, n, dead, name, index))

    # --- deadlines ---------------------------------------------------------------------------------
    def silent_nodes(self, timeout_s: float) -> dict[str, Txn]:
        """Nodes that left a transaction unanswered longer than ``timeout_s``, each with one
        such transaction (for the log)."""
        now = self._clock()
        silent: dict[str, Txn] = {}
        for txn in self._txns.values():
            if now - txn.started_s > timeout_s:
                waiting = txn.waiting
                if txn.direct and txn.source in waiting:
                    # the requester waits on the source: the source is the silent one
                    waiting = {txn.source}
                for node in waiting:
                    silent.setdefault(node, txn)
        return silent

    # --- transactions ------------------------------------------------------------------------------
    def _submit(self, request: Request) -> list[Send]:
        self.layout.check_page(request.page)
        e = self.entry(request.page)
        if e.busy is not None:
            e.queue.append(request)
            self.counters["queued"] += 1
            return []
        return self._start(request)

    def _extend(self, req: Request, fits: Callable[[PageEntry], bool]) -> int:
        """How many pages from req.page the request covers: the first, plus the following pages
        that are free (not busy, nobody queued) and ``fits``."""
        n = 1
        limit = clip_to_stripe(req.page, min(req.count, self.layout.num_pages - req.page),
                               self.shards, self.stripe)
        while n < limit:
            e = self._peek(req.page + n)
            if e.busy is not None or e.queue or not fits(e) or (req.page + n) in self.lost:
                break
            n += 1
        return n

    def _start(self, req: Request) -> list[Send]:
        e = self.entry(req.page)
        node, owner = req.node, e.owner
        if req.kind is Kind.DISCARD:
            self.lost.pop(req.page, None)  # discarded: zeros from now on, by the program's will
            holders = (e.copyset | ({owner} if owner else set())) - {node}
            if not holders:
                return self._finish(Txn(0, req, 1, set()))
            return self._begin(req, 1, holders, Invalidate(0, req.page, 1))
        if self.lost and req.page in self.lost:
            return [self._lost_answer(node, req.page, req.count)]
        if owner == node:  # the requester owns it already: nothing moves
            return [Send(node, Grant(req.page, 1, True, Payload.NONE))]
        if (req.kind is Kind.WRITE and req.have_copy and self.detect_migratory
                and e.last_writer not in (None, node) and e.copyset == {node, e.last_writer}):
            e.migratory = True  # the last writer's one reader now writes it: it migrates
        if owner is not None:
            if req.kind is Kind.READ and e.migratory:  # it will write it next: let it now
                req = Request(Kind.WRITE, node, req.page, req.count)
                self.counters["migratory_grants"] += 1
            n = self._extend(req, lambda q: q.owner == owner and q.migratory == e.migratory)
            if self.direct:
                return self._begin_direct(req, n, owner, keep_copy=req.kind is Kind.READ)
            fetch = Fetch(0, req.page, n, req.kind is Kind.READ)
            return self._begin(req, n, {owner}, fetch, source=owner)
        if self.direct and not e.home_current:
            return self._start_from_copies(req, e)
        if req.kind is Kind.READ:
            n = self._extend(req, lambda q: q.owner is None and q.home_current)
            return self._finish(Txn(0, req, n, set()))
        others = e.copyset - {node}
        if req.have_copy and node in e.copyset:
            # an upgrade: the node has the contents, it needs only the others gone; the run
            # goes on over the following pages held by the same nodes (one invalidation each)
            n = self._extend(req, lambda q: q.owner is None and q.copyset == e.copyset)
        else:
            n = self._extend(req, lambda q: q.owner is None and q.copyset == e.copyset
                             and node not in q.copyset and q.home_current)
        if not others:
            return self._finish(Txn(0, req, n, set()))
        return self._begin(req, n, others, Invalidate(0, req.page, n))

    def _start_from_copies(self, req: Request, e: PageEntry) -> list[Send]:
        """Direct managers: a page whose contents live only in read copies."""
        node = req.node
        others = e.copyset - {node}
        if req.kind is Kind.WRITE and req.have_copy and node in e.copyset:
            # an upgrade: only the others must go (the run over pages held by the same nodes)
            n = self._extend(req, lambda q: q.owner is None and q.copyset == e.copyset)
            if not others:
                return self._finish(Txn(0, req, n, set()))
            return self._begin(req, n, others, Invalidate(0, req.page, n))
        if not others:  # no live copy: the loss rules should have caught it; fail loudly
            log.error("page %d has neither a current home copy nor a live copy: lost", req.page)
            self._record_loss("(unknown)", [req.page])
            return [self._lost_answer(node, req.page, 1)]
        keeper = min(others)  # any copy is current; the same one for a run of pages
        if req.kind is Kind.READ:
            n = self._extend(req, lambda q: q.owner is None and not q.home_current
                             and keeper in q.copyset and node not in q.copyset)
            return self._begin_direct(req, n, keeper, keep_copy=True)
        n = self._extend(req, lambda q: q.owner is None and not q.home_current
                         and q.copyset == e.copyset)
        if others == {keeper}:  # the one copy moves to the writer
            return self._begin_direct(req, n, keeper, keep_copy=False)
        # several copies, none here: fetch one home first, so that invalidating the others
        # cannot destroy every copy if the one chosen dies meanwhile; then start over
        txn = self._new_txn(req, n, {keeper}, keeper)
        txn.keep_copy, txn.restart = True, True
        self.counters["fetches"] += 1
        return [Send(keeper, Fetch(txn.id, req.page, n, True))]

    def _begin_direct(self, req: Request, n: int, source: str, keep_copy: bool) -> list[Send]:
        """The source sends the pages straight to the requester; both answer. A requester
        without a peer endpoint (behind NAT) gets them through here: fetched home, then
        granted from the home copy."""
        if req.node not in self.peers:
            txn = self._new_txn(req, n, {source}, source)
            txn.keep_copy, txn.restart = keep_copy, True
            self.counters["fetches"] += 1
            return [Send(source, Fetch(txn.id, req.page, n, keep_copy))]
        txn = self._new_txn(req, n, {source, req.node}, source)
        txn.direct, txn.keep_copy = True, keep_copy
        self.counters["fetches"] += 1
        if self._tracing:
            self._trace(req.page, req.kind.name, req.node, self._peek(req.page).describe(), "busy",
                        count=n, source=source)
        return [Send(source, Fetch(txn.id, req.page, n, keep_copy, req.node,
                                   self.peers[req.node]))]

    def _new_txn(self, req: Request, n: int, waiting: set[str], source: str | None) -> Txn:
        txn = Txn(self._next_txn, req, n, set(waiting), source, started_s=self._clock())
        self._next_txn += 1
        self._txns[txn.id] = txn
        for q in range(req.page, req.page + n):
            self.entry(q).busy = txn
        return txn

    def _begin(self, req: Request, n: int, nodes: set[str], template: Message,
               source: str | None = None) -> list[Send]:
        txn = Txn(self._next_txn, req, n, set(nodes), source, started_s=self._clock())
        self._next_txn += 1
        self._txns[txn.id] = txn
        for q in range(req.page, req.page + n):
            self.entry(q).busy = txn
        msg = type(template)(**{**template.__dict__, "txn": txn.id})
        kind = "fetches" if isinstance(msg, Fetch) else "invalidations"
        self.counters[kind] += len(nodes)
        if self._tracing:
            self._trace(req.page, req.kind.name, req.node, self._peek(req.page).describe(), "busy",
                    count=n)
        return [Send(target, msg) for target in sorted(nodes)]

    def _txn_waiting_for(self, txn_id: int, page: int, node: str) -> Txn | None:
        txn = self._txns.get(txn_id)
        if txn is None or txn.request.page != page or node not in txn.waiting:
            log.warning("unexpected answer from %s for txn %d page %d: ignored", node, txn_id, page)
            return None
        return txn

    def _maybe_finish(self, txn: Txn) -> list[Send]:
        if txn.waiting:
            return []
        del self._txns[txn.id]
        first = txn.request.page
        for q in range(first, first + txn.count):
            self._entries[q].busy = None
        if txn.restart:  # the pages did not move as planned: ask again from where they are
            out = [] if txn.request.node in self._dead else self._start(txn.request)
        elif txn.direct:
            out = self._finish_direct(txn)
        else:
            out = self._finish(txn)
        for q in range(first, first + txn.count):
            out += self._drain_queue(q)
        return out

    def _drain_queue(self, page: int) -> list[Send]:
        e = self._entries[page]
        out: list[Send] = []
        while e.queue and e.busy is None:
            out += self._start(e.queue.popleft())
        return out

    def _finish_direct(self, txn: Txn) -> list[Send]:
        """A node-to-node transaction is over: the pages are at the requester (if it lives)."""
        req, n, source = txn.request, txn.count, txn.source
        first, node = req.page, req.node
        write = req.kind is Kind.WRITE
        old = self._peek(first).describe() if self._tracing else ""
        gave_back = txn.requester_gave_back
        gone = node in self._dead or txn.refused  # the pages are not at the requester
        for q in range(first, first + n):
            e = self._entries[q]
            if e.owner == source:
                e.owner = None
            if write:
                e.copyset.clear()
                if q not in gave_back:  # else its writeback made the home copy current
                    e.home_current = False
            elif source not in self._dead and q not in txn.source_dropped:
                e.copyset.add(source)  # the old owner keeps a read copy
            if gone or q in gave_back:
                continue
            if write:
                e.owner = e.last_writer = node
            else:
                e.copyset.add(node)
        if gone:  # what it was sent died with it (or was refused), unless a copy is left
            self._lose_orphans(first, n, node)
            if self._tracing:
                self._trace(first, req.kind.name, node, old, "requester gone", count=n)
            return []
        if write and self.on_loss is OnLoss.POISON:
            self.home.clear_pages([q for q in range(first, first + n) if q not in gave_back])
        self.counters["grants"] += 1
        self.counters["pages_granted"] += n
        if self._tracing:
            self._trace(first, req.kind.name, node, old, self._peek(first).describe(), count=n,
                        source=source)
        return []

    def _finish(self, txn: Txn) -> list[Send]:
        req, n = txn.request, txn.count
        first, node = req.page, req.node
        old = ("busy" if txn.id else self._peek(first).describe()) if self._tracing else ""
        held: frozenset = frozenset()
        if txn.fetched is not None:  # the owner's contents become the home copy
            payload, data, not_held = txn.fetched
            self.home.put(first, n, payload, data, skip=not_held)
            for q in range(first, first + n):
                self._entries[q].home_current = True
            held = frozenset(range(first, first + n)) - not_held if payload != Payload.NONE else held
        entries = [self.entry(q) for q in range(first, first + n)]
        if req.kind is Kind.DISCARD:
            for e in entries:
                e.owner = None
                e.copyset.clear()
                e.home_current = True  # zeros
            self.home.clear(first, n)
            if self._tracing:
                self._trace(first, "DISCARD", node, old, entries[0].describe())
            return []
        if self.lost:  # the owner fetched from died meanwhile: its pages are lost
            lost_at = next((i for i in range(n) if first + i in self.lost), None)
            if lost_at == 0:
                for q in range(first, first + n):
                    if txn.source is not None and self._entries[q].owner == txn.source:
                        self._entries[q].owner = None
                return [] if node in self._dead else [self._lost_answer(node, first, n)]
            if lost_at is not None:
                n = lost_at  # grant the pages before the first lost one; the rest is refused
                entries = entries[:n]
        write = req.kind is Kind.WRITE
        already_current = write and req.have_copy and all(node in e.copyset for e in entries)
        for q, e in zip(range(first, first + n), entries):
            if txn.source is not None:
                e.owner = None
                if not write and q in held:
                    e.copyset.add(txn.source)  # the old owner keeps a read copy
            if node in self._dead:
                if write:  # the copies were invalidated for it all the same: none is left
                    e.copyset.clear()
                continue
            if write:
                e.owner = e.last_writer = node
                e.copyset.clear()
                e.home_current = False
            else:
                e.copyset.add(node)
        if node in self._dead:
            if self.direct:  # an upgrade's only copy may have been its own
                self._lose_orphans(first, n, node)
            if self._tracing:
                self._trace(first, req.kind.name, node, old, "requester gone", count=n)
            return []
        self.counters["grants"] += 1
        self.counters["pages_granted"] += n
        if already_current:
            grant = Send(node, Grant(first, n, True, Payload.NONE))
        elif (txn.fetched is not None and txn.fetched[0] == Payload.DATA and not txn.fetched[2]
              and n == txn.count):
            # the owner's buffer is the grant as it is: no copy
            grant = Send(node, Grant(first, n, write, Payload.DATA), txn.fetched[1])
        else:
            payload, data = self.home.get(first, n)
            grant = Send(node, Grant(first, n, write, payload), data)
        if write and self.on_loss is OnLoss.POISON:
            # the node's copy is the only current one: the home copy is stale from here on
            # (under LAST_COPY it is kept, as the copy to fall back to)
            self.home.clear(first, n)
        if self._tracing:
            self._trace(first, req.kind.name, node, old, entries[0].describe(), count=n)
        return [grant]
