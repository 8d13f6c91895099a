"""The page entries and the transactions on them: how a request becomes a transaction, and how a
transaction ends (IVY's manager, with no sockets; the package's docstring tells the protocol).

A request on a page that is busy queues behind its transaction; one on a free page starts at
once (``_start``): granted from here, or a transaction that waits for nodes (a fetch from the
owner, the invalidation acknowledgements) and covers the following pages in the same situation
(read-ahead). When the last node it waits for has answered (``_maybe_finish``), the pages are
granted (``_finish``: through here; ``_finish_direct``: they went node to node), and the
requests queued behind them start. A write to an untouched page (``granted``: never granted
since its array was allocated or freed) is granted at once, with the run of untouched pages after
it (``_grant_untouched``). The answers themselves come in through ``PageDirectory``
(``inputs``), which builds on this class.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

import numpy as np

from dsm import bugs
from dsm.core.readahead import UNTOUCHED_RUN_PAGES
from dsm.core.shards import STRIPE_PAGES, clip_to_stripe
from dsm.directory.home import HomeStore
from dsm.directory.pages.loss import UNKNOWN_NODE, LostPages
from dsm.directory.pages.state import (RECLAIMER, Kind, Locator, OnLoss, PageEntry, Request, Send,
                                       Tracer, Txn)
from dsm.directory.release import ReleaseHomes
from dsm.layout import Layout
from dsm.protocol import Fetch, Grant, Invalidate, Message, Payload, replace

log = logging.getLogger(__name__)

_FREE = PageEntry()  # what a page never asked for looks like (never modified)


class PageTransactions:
    """The directory's page state and the engine of its transactions; ``PageDirectory`` adds the
    inputs. A base class rather than a part of its own: every input reads and changes the same
    entries and transactions."""

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
        #: told each page discarded, once every copy of it is invalidated (the simulator's truth
        #: model: a discard is a write of zeros then)
        self.on_discarded: Callable[[int], None] | None = None
        #: pages travel node to node (central, distributed) rather than through here (relay)
        self.direct = direct
        #: node -> its peer endpoint (direct managers send it with every Fetch)
        self.peers: dict[str, str] = {}
        #: whether migratory pages are detected (``--no-migratory``: every turn two faults)
        self.detect_migratory = migratory
        #: the shards' stripes: no request covers pages past its stripe (``dsm.core.shards``)
        self.shard, self.shards, self.stripe = shard, shards, stripe
        self._clock = clock
        self._entries: dict[int, PageEntry] = {}
        #: page -> the node a run of untouched pages was granted to, for the pages of such runs
        #: whose entry is not made yet: each is ``PageEntry.written_by(node)``, made at the first
        #: look (``entry``, ``peek``, a node's loss, a reclaim), so that a grant of 1,024
        #: untouched pages is a dict update, not 1,024 entries
        self._run_owners: dict[int, str] = {}
        #: node -> what ``peek`` shows of a page of a run granted to it with no entry yet
        #: (read-only, never modified, as ``_FREE``)
        self._run_views: dict[str, PageEntry] = {}
        #: per page, whether it was granted to a node since its array was allocated or freed
        #: (``reclaim``); a page never granted is *untouched*: zeros at home, nobody holds it
        #: or has held it (a lookup per page, and a search of a run at once)
        self.granted = np.zeros(layout.num_pages, dtype=bool)
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
                         "fallbacks": 0, "migratory_grants": 0, "migratory_mispredictions": 0,
                         "untouched_runs": 0, "untouched_run_pages": 0}
        #: page -> (its array's name, its index there): runs of untouched pages stay in one array
        self._locate = locate or (lambda page: ("", page))
        self.losses = LostPages(layout, on_loss, self.home, self.entry, self.counters,
                                self._locate, self._trace if self._tracing else None)
        #: lost page -> the node whose death lost it (the losses' own dict, read at every request)
        self.lost = self.losses.pages

    # --- queries (tests, stats) --------------------------------------------------------------------
    def entry(self, page: int) -> PageEntry:
        self.layout.check_page(page)
        e = self._entries.get(page)
        if e is None:
            e = self._entries[page] = self._new_entry(page)
        return e

    def _new_entry(self, page: int) -> PageEntry:
        """The entry of a page that has none yet: one of a run of untouched pages granted to a
        node, or a page never asked for."""
        node = self._run_owners.pop(page, None)
        return PageEntry.written_by(node) if node is not None else PageEntry()

    def _entries_of(self, first: int, count: int) -> list[PageEntry]:
        """The entries of ``count`` pages from ``first``, made where there are none (one range
        check for them all: a run of pages makes many at once)."""
        self.layout.check_page(first + count - 1)
        entries, found = self._entries, self._entries.get
        out = []
        for q in range(first, first + count):
            e = found(q)
            if e is None:
                e = entries[q] = self._new_entry(q)
            out.append(e)
        return out

    def peek(self, page: int) -> PageEntry:
        """The entry of ``page`` as it is, without creating one (read-only: ``dsm top``, and
        the runs a request may extend over)."""
        e = self._entries.get(page)
        if e is not None:
            return e
        node = self._run_owners.get(page)
        if node is None:
            return _FREE
        # one shared view per owner, as _FREE is: a read of a run's pages (its transaction
        # extends over each of them) would otherwise make an entry per page only to drop it
        view = self._run_views.get(node)
        if view is None:
            view = self._run_views[node] = PageEntry.written_by(node)
        return view

    def _make_run_entries(self, node: str) -> None:
        """Make the entries of the pages of runs of untouched pages granted to ``node`` (a
        node's loss looks at every page it owns)."""
        for q in [q for q, owner in self._run_owners.items() if owner == node]:
            self.entry(q)

    # --- transactions ------------------------------------------------------------------------------
    def _submit(self, request: Request) -> list[Send]:
        self.layout.check_page(request.page)
        e = self.entry(request.page)
        if e.busy is not None:
            if e.queue is None:
                e.queue = deque()
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
            e = self.peek(req.page + n)
            if e.busy is not None or e.queue or not fits(e) or (req.page + n) in self.lost:
                break
            n += 1
        return n

    def _untouched_run(self, req: Request) -> int:
        """A write to an untouched page: how many pages from it are granted at once. The
        following untouched pages, up to the run the node asked for (``req.untouched``, or its
        read-ahead window ``req.count``, at most ``UNTOUCHED_RUN_PAGES``), in the same array
        and stripe, none with a request under way. Never a page another node holds or has
        held."""
        first = req.page
        most = min(max(req.count, min(req.untouched, UNTOUCHED_RUN_PAGES)),
                   self.layout.num_pages - first)
        limit = self._within_array(first, clip_to_stripe(first, most, self.shards, self.stripe))
        granted = self.granted[first + 1:first + limit]
        if granted.any():
            limit = 1 + int(granted.argmax())
        n, found, covers = 1, self._entries.get, self.release.covers
        while n < limit:  # (a page never granted has no owner, no copies, no lost contents)
            e = found(first + n)
            if e is not None and (e.busy is not None or e.queue) or covers(first + n):
                break
            n += 1
        return n

    def _grant_untouched(self, req: Request) -> list[Send]:
        """Grant a write to an untouched page, with the run of untouched pages after it: zeros,
        with no bytes. The pages with no entry (most) get theirs at the first look
        (``_run_owners``)."""
        node, first, n = req.node, req.page, self._untouched_run(req)
        entries = self._entries
        owners = dict.fromkeys(range(first, first + n), node)
        for q in [q for q in owners if q in entries]:  # reclaimed: no owner, no copies
            e = entries[q]
            e.owner = e.last_writer = node
            e.home_current = False
            del owners[q]
        self._run_owners.update(owners)
        self.granted[first:first + n] = True
        self.counters["grants"] += 1
        self.counters["pages_granted"] += n
        if n > req.count:
            self.counters["untouched_runs"] += 1
            self.counters["untouched_run_pages"] += n
        if self._tracing:
            self._trace(first, req.kind.name, node, "home{}", f"owned:{node}", count=n,
                        untouched=True)
        return [Send(node, Grant(first, n, True, Payload.ZERO))]

    def _within_array(self, page: int, count: int) -> int:
        """``count`` cut so that the run from ``page`` stays in ``page``'s array (arrays are
        contiguous: a binary search for the last page still in it)."""
        name, index = self._locate(page)
        lo, hi = 1, count  # the run of lo pages is in the array; of hi + 1, not (or too long)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._locate(page + mid - 1) == (name, index + mid - 1):
                lo = mid
            else:
                hi = mid - 1
        return lo

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
            return [self.losses.answer(node, req.page, req.count)]
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
        if req.kind is Kind.WRITE and not self.granted[req.page] and node not in self._dead:
            # zeros nobody holds or has held: the run goes at once, with no bytes
            return self._grant_untouched(req)
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
        if bugs.ACTIVE == bugs.EARLY_GRANT:  # the bug switch (dsm/bugs.py): grant, then invalidate
            return self._finish(Txn(0, req, n, set())) + [
                Send(o, Invalidate(0, req.page, n)) for o in sorted(others)]
        return self._begin_write(req, n, others)

    def _start_from_copies(self, req: Request, e: PageEntry) -> list[Send]:
        """Direct managers: a page whose contents live only in read copies."""
        node = req.node
        others = e.copyset - {node}
        if req.kind is Kind.WRITE and req.have_copy and node in e.copyset:
            # an upgrade: only the others must go (the run over pages held by the same nodes)
            n = self._extend(req, lambda q: q.owner is None and q.copyset == e.copyset)
            if not others:
                return self._finish(Txn(0, req, n, set()))
            return self._begin_write(req, n, others)
        if not others:  # no live copy: the loss rules should have caught it; fail loudly
            log.error("page %d has neither a current home copy nor a live copy: lost", req.page)
            self.losses.record(UNKNOWN_NODE, [req.page])
            return [self.losses.answer(node, req.page, 1)]
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
            self._trace(req.page, req.kind.name, req.node, self.peek(req.page).describe(), "busy",
                        count=n, source=source)
        return [Send(source, Fetch(txn.id, req.page, n, keep_copy, req.node,
                                   self.peers[req.node]))]

    def _begin_write(self, req: Request, n: int, holders: set[str]) -> list[Send]:
        """A write once ``holders``' read copies are gone. The requester is granted at once,
        told whose acknowledgements to await, and each holder acknowledges straight to it
        (3 hops: Acquire, Invalidate, Invalidated); the requester confirms (``Received``),
        which ends the transaction. A requester without a peer endpoint (behind NAT) is
        granted once the acknowledgements came here (4 hops)."""
        addr = self.peers.get(req.node)
        if addr is None:
            return self._begin(req, n, holders, Invalidate(0, req.page, n))
        txn = self._new_txn(req, n, {req.node}, None)
        txn.acked, txn.unacked = True, set(holders)
        self.counters["invalidations"] += len(holders)
        if self._tracing:
            self._trace(req.page, req.kind.name, req.node, self.peek(req.page).describe(), "busy",
                        count=n, acks=len(holders))
        # the invalidations first: they are on the critical path, the grant is not
        out = [Send(h, Invalidate(txn.id, req.page, n, req.node, addr)) for h in sorted(holders)]
        return out + [self._grant_of(txn, acks=sorted(holders))]

    def _grant_of(self, txn: Txn, acks: list[str] = ()) -> Send:
        """The grant of ``txn``'s pages as they are now: NONE to a writer that holds them all
        (an upgrade), else the home copy; naming the holders whose acknowledgements the
        requester awaits (``acks``)."""
        req, n = txn.request, txn.count
        first, node, write = req.page, req.node, req.kind is Kind.WRITE
        if write and req.have_copy and all(node in self._entries[q].copyset
                                           for q in range(first, first + n)):
            return Send(node, Grant(first, n, True, Payload.NONE, False, txn.id, list(acks)))
        payload, data = self.home.get(first, n)
        return Send(node, Grant(first, n, write, payload, False, txn.id, list(acks)), data)

    def _new_txn(self, req: Request, n: int, waiting: set[str], source: str | None) -> Txn:
        txn = Txn(self._next_txn, req, n, set(waiting), source, started_s=self._clock())
        self._next_txn += 1
        self._txns[txn.id] = txn
        for e in self._entries_of(req.page, n):
            e.busy = txn
        return txn

    def _begin(self, req: Request, n: int, nodes: set[str], template: Message,
               source: str | None = None) -> list[Send]:
        txn = self._new_txn(req, n, nodes, source)
        msg = replace(template, txn=txn.id)
        kind = "fetches" if isinstance(msg, Fetch) else "invalidations"
        self.counters[kind] += len(nodes)
        if self._tracing:
            self._trace(req.page, req.kind.name, req.node, self.peek(req.page).describe(), "busy",
                        count=n)
        return [Send(target, msg) for target in sorted(nodes)]


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
        elif txn.acked:  # granted at its start: the pages are the requester's now
            out = self._finish(txn, granted=True)
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
        old = self.peek(first).describe() if self._tracing else ""
        gave_back = txn.requester_gave_back
        gone = node in self._dead or txn.refused  # the pages are not at the requester
        if txn.fetched is not None:  # a read transfer's copy: current (nobody could write since)
            payload, data, _ = txn.fetched
            self.home.put(first, n, payload, data)
        for q in range(first, first + n):
            e = self._entries[q]
            if txn.fetched is not None:
                e.home_current = True
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
        self.granted[first:first + n] = True  # (held by the source before, at least)
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
            self._trace(first, req.kind.name, node, old, self.peek(first).describe(), count=n,
                        source=source)
        return []

    def _finish(self, txn: Txn, granted: bool = False) -> list[Send]:
        """The pages of ``txn`` are the requester's: recorded, and granted unless ``granted``
        (a write granted at its start, ``_begin_write``, whose requester has confirmed it
        installed them, or died)."""
        req, n = txn.request, txn.count
        first, node = req.page, req.node
        old = ("busy" if txn.id else self.peek(first).describe()) if self._tracing else ""
        held: frozenset = frozenset()
        if txn.fetched is not None:  # the owner's contents become the home copy
            payload, data, not_held = txn.fetched
            self.home.put(first, n, payload, data, skip=not_held)
            for q in range(first, first + n):
                self._entries[q].home_current = True
            held = frozenset(range(first, first + n)) - not_held if payload != Payload.NONE else held
        entries = self._entries_of(first, n)
        if req.kind is Kind.DISCARD:
            if self.on_discarded is not None:
                self.on_discarded(first)
            for e in entries:
                e.owner = None
                e.copyset.clear()
                e.home_current = True  # zeros
                if req.node == RECLAIMER:  # its array was freed: untouched again
                    e.last_writer, e.migratory = None, False
            self.home.clear(first, n)
            if req.node == RECLAIMER:
                self.granted[first:first + n] = False
            if self._tracing:
                self._trace(first, "DISCARD", node, old, entries[0].describe())
            return []
        if self.lost and not granted:  # the owner fetched from died meanwhile: its pages are lost
            lost_at = next((i for i in range(n) if first + i in self.lost), None)
            if lost_at == 0:
                for q in range(first, first + n):
                    if txn.source is not None and self._entries[q].owner == txn.source:
                        self._entries[q].owner = None
                return [] if node in self._dead else [self.losses.answer(node, first, n)]
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
            if node in self._dead or txn.refused:
                if write:  # the copies were invalidated for it all the same: none is left
                    e.copyset.clear()
                continue
            if write:
                e.owner = e.last_writer = node
                e.copyset.clear()
                e.home_current = False
            else:
                e.copyset.add(node)
        if node in self._dead or txn.refused:
            if granted:  # it may have installed and written them: no current copy is left
                for e in entries:
                    e.home_current = False
            if self.direct or granted:  # an upgrade's only copy may have been its own
                self._lose_orphans(first, n, node)
            if self._tracing:
                self._trace(first, req.kind.name, node, old, "requester gone", count=n)
            return []
        self.granted[first:first + n] = True
        self.counters["grants"] += 1
        self.counters["pages_granted"] += n
        grant: Send | None
        if granted:  # (the requester has them already)
            grant = None
        elif already_current:
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
        return [] if grant is None else [grant]

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
            self.losses.record(dead or UNKNOWN_NODE, orphans)

