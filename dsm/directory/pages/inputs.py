"""The page directory's inputs: one method for every page message a node sends (``Acquire``,
``Fetched``, ``Received``, ``Invalidated``, ``Writeback``, ``Drop``, ``Diff``, ``Dirtied``), for a
node's arrival and loss, and for the program's questions about lost pages. Each returns the
messages to send. Release-consistency pages go to their homes (``ReleaseHomes``); every other
page's request and answer to the transaction engine it builds on (``PageTransactions``).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable

from dsm.core.shards import COORDINATOR_SHARD, clip_to_stripe
from dsm.directory.pages.state import RECLAIMER, Kind, Request, Send, Txn
from dsm.directory.pages.transactions import PageTransactions
from dsm.errors import ProtocolError
from dsm.protocol import (Acquire, Diff, Dirtied, Drop, Fetched, Invalidated, Payload, Received,
                          Withdrawn, Writeback, changed_bytes_of, changed_in)

log = logging.getLogger(__name__)


class PageDirectory(PageTransactions):
    """The page-state machine (``dsm.directory.pages``): its transactions, and its inputs."""

    # --- inputs ------------------------------------------------------------------------------------
    def acquire(self, node: str, page: int, count: int, write: bool, have_copy: bool,
                untouched: int = 1) -> list[Send]:
        """A node asks for pages (``Acquire``); release-consistency pages are served by their
        home, with their own rules (``untouched`` is for the others)."""
        if self.release.covers(page):  # the home copy, for reading and for writing alike
            self.layout.check_page(page)
            if page in self.lost:
                return [self.losses.answer(node, page, count)]
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
        return self._submit(Request(kind, node, page, max(1, count), have_copy,
                                    max(1, untouched)))

    def discard(self, node: str, page: int) -> list[Send]:
        if self.release.covers(page):  # zeros from now on; the others learn at their acquire
            self.layout.check_page(page)
            self.lost.pop(page, None)
            self.release.discard(node, page)
            return []
        return self._submit(Request(Kind.DISCARD, node, page))

    def reclaim(self, first: int, count: int) -> list[Send]:
        """The ``count`` pages from ``first`` belong to a freed array that no node holds any
        more: zeros from now on, every copy invalidated (a DISCARD that no node asked for),
        nothing of them lost or kept."""
        end = first + count
        touched = sorted({q for q in self._entries if first <= q < end}
                         | {q for q in self._run_owners if first <= q < end}
                         | {q for q in self.lost if first <= q < end}
                         | {q for q in self.release.pages_held() if first <= q < end})
        out: list[Send] = []
        for page in touched:
            if self.release.covers(page):
                self.lost.pop(page, None)
                self.release.forget(page)
            else:
                out += self._submit(Request(Kind.DISCARD, RECLAIMER, page))
        return out

    def diff(self, node: str, req: int, page: int, count: int, changed: Any,
             data: Any) -> list[Send]:
        """A node's changes to release pages (at its release): into their home copies
        (``changed``: a bool per byte of the run, ``Diff.changed``, checked by the protocol).
        Answered (``DiffApplied``) only by a shard other than the coordinator: the release
        that follows a diff to the coordinator (or the one directory) comes on the same pipe
        after it, so it is applied before anyone can acquire; only a diff to another shard
        must be known applied before the node's release goes."""
        self.layout.check_page(page + count - 1)
        for q in range(page, page + count):
            if not self.release.covers(q):
                raise ProtocolError(f"Diff of page {q}, which is not in a release-consistency "
                                    "array")
        applied = self.release.apply(node, req, page, count, changed, data)
        if self._tracing:
            self._trace(page, "DIFF", node, "", self.release.describe(page), count=count,
                        bytes=len(data) if data is not None else 0)
        return [Send(node, applied)] if self.shard != COORDINATOR_SHARD else []

    def carried_diffs(self, node: str, diffs: list, data: Any,
                      homed_here: Callable[[int], bool]) -> list[Send]:
        """The diffs a release carries (``LockRelease.diffs``), into their home copies before
        the release is handled, each as its Diff would be; every one checked before any is
        applied: release pages, and pages this directory is the home of (``homed_here``: with
        shards, the coordinator's; the others' diffs go to them ahead)."""
        page_size = self.layout.page_size
        sizes = []
        for i, (page, count, encoding, changes) in enumerate(diffs):
            self.layout.check_page(page + count - 1)
            for q in range(page, page + count):
                if not self.release.covers(q):
                    raise ProtocolError(f"a release carries a diff of page {q}, which is not in "
                                        "a release-consistency array")
                if not homed_here(q):
                    raise ProtocolError(f"a release carries a diff of page {q}, whose home is "
                                        "another shard (its Diff goes there)")
            sizes.append(changed_bytes_of(count, encoding, changes, page_size, f"diffs[{i}]"))
        out: list[Send] = []
        view, at = (memoryview(data) if data is not None else None), 0
        for (page, count, encoding, changes), size in zip(diffs, sizes):
            changed = changed_in(count, encoding, changes, page_size) if size else None
            out += self.diff(node, 0, page, count, changed, view[at:at + size] if size else None)
            at += size
        return out

    def dirtied(self, node: str, page: int, count: int) -> list[Send]:
        self.layout.check_page(page + count - 1)
        self.release.explicitly_dirtied(node, [q for q in range(page, page + count)
                                               if self.release.covers(q)])
        return []

    def fetched(self, node: str, txn_id: int, page: int, count: int, payload: int, data: Any,
                not_held: list[int], unwritten: list[int] = (), sent: bool = False) -> list[Send]:
        if self.release.covers(page):  # a private release page, asked of its holder
            self.layout.check_page(page + count - 1)
            return [Send(*s) for s in self.release.fetched(node, txn_id, page, count, payload,
                                                           data, not_held)]
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
        if sent:
            if not txn.direct:
                log.warning("fetch answer from %s says it sent txn %d's pages to the requester, "
                            "which it was not asked to: ignored", node, txn_id)
                return []
            if payload == Payload.DATA and txn.keep_copy:  # the home copy, at the end
                txn.fetched = (payload, data, frozenset())
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

    def _txn_waiting_for(self, txn_id: int, page: int, node: str) -> Txn | None:
        txn = self._txns.get(txn_id)
        if txn is None or txn.request.page != page or node not in txn.waiting:
            log.warning("unexpected answer from %s for txn %d page %d: ignored", node, txn_id, page)
            return None
        return txn

    def received(self, node: str, txn_id: int, page: int, count: int,
                 installed: bool) -> list[Send]:
        """The requester of a node-to-node transaction has its pages (``installed``) or, told
        that their source is gone, says they never came."""
        txn = self._txn_waiting_for(txn_id, page, node)
        if txn is None:
            return []
        if not (txn.direct or txn.acked) or node != txn.request.node:
            log.warning("Received from %s for txn %d, which it did not request: ignored",
                        node, txn_id)
            return []
        txn.waiting.discard(node)
        if txn.acked:  # every acknowledgement came: the pages are installed
            if not installed:  # (a node never says so: then it holds none of them)
                log.warning("%s says txn %d's pages, granted to it, are not installed", node,
                            txn_id)
                txn.refused = True
            return self._maybe_finish(txn)
        if not installed and txn.withdrawn:  # the source died before its pages came
            self._lose_orphans(txn.request.page, txn.count, txn.source)
            txn.restart = True
        elif not installed:  # it did not take them: the transfer ends without it
            txn.refused = True
        return self._maybe_finish(txn)

    def invalidated(self, node: str, txn_id: int, page: int, count: int) -> list[Send]:
        """A holder's copies are gone. For a write granted at its start (``Txn.acked``) the
        holder could not reach the requester: forwarded to it, which counts it."""
        txn = self._txns.get(txn_id)
        if txn is not None and txn.acked and txn.request.page == page and txn.count == count:
            if node not in txn.unacked:  # a duplicate, or not a holder of these pages
                log.warning("unexpected acknowledgement from %s for txn %d page %d: ignored",
                            node, txn_id, page)
                return []
            txn.unacked.discard(node)
            return [Send(txn.request.node, Invalidated(txn.id, page, count, node))]
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
            return [Send(*s) for s in self.release.written_back(node, page, count, payload,
                                                                 data)]
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

    # --- nodes -------------------------------------------------------------------------------------
    def node_lost(self, node: str) -> list[Send]:
        """A node is gone (left or declared dead): forget its copies, give up waiting for it.
        The pages it owned are lost, or fall back to their last home copy (``OnLoss``)."""
        self._dead.add(node)
        self.peers.pop(node, None)
        out: list[Send] = []
        lost = []
        self._make_run_entries(node)  # its pages of runs of untouched pages, too
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
            self.losses.record(node, lost)
        for waiting, q in release_waiting:  # (--on-loss last-copy: the home copy is served)
            if waiting not in self._dead:
                out.append(self.losses.answer(waiting, q, 1) if q in self.lost
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
            if txn.acked and node in txn.unacked:
                # it may have acknowledged straight to the requester or not: either way its
                # copy is gone with it, which the requester is told (once more is harmless)
                txn.unacked.discard(node)
                if requester not in self._dead:
                    out.append(Send(requester, Invalidated(txn.id, txn.request.page, txn.count,
                                                           node)))
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

    # --- lost pages --------------------------------------------------------------------------------
    def lost_runs(self, first: int = 0, count: int | None = None) -> list[tuple[int, int, str]]:
        """The lost pages in [first, first+count) as (first, count, dead node) runs."""
        return self.losses.runs(first, count)

    def forget_lost(self, first: int, count: int) -> list[tuple[int, int, str]]:
        """The program gives up the lost pages in [first, first+count): they read as zeros from
        now on. Returns the runs forgotten."""
        return self.losses.forget(first, count)

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
                elif txn.acked and txn.unacked:
                    # a live requester confirms as soon as its last acknowledgement comes:
                    # the holders it may still wait for are the silent ones (each one's
                    # death counts as its acknowledgement)
                    waiting = txn.unacked
                for node in waiting:
                    silent.setdefault(node, txn)
        return silent



def page_handlers(pages: PageDirectory, page_size: int) -> dict[type, Any]:
    """What the page directory does with each page message from a node: ``(node, message,
    page data) -> the messages to send``. The one table the directory service and the simulator
    both deliver through."""
    return {
        Acquire: lambda n, m, d: pages.acquire(n, m.page, m.count, m.write, m.have_copy,
                                               m.untouched),
        Fetched: lambda n, m, d: pages.fetched(n, m.txn, m.page, m.count, m.payload, d,
                                               m.not_held, m.unwritten, m.sent),
        Invalidated: lambda n, m, d: pages.invalidated(n, m.txn, m.page, m.count),
        Writeback: lambda n, m, d: pages.writeback(n, m.page, m.count, m.payload, d),
        Drop: lambda n, m, d: pages.drop(n, m.page, m.count, m.payload, d),
        Received: lambda n, m, d: pages.received(n, m.txn, m.page, m.count, m.installed),
        Diff: lambda n, m, d: pages.diff(n, m.req, m.page, m.count, m.changed(page_size), d),
        Dirtied: lambda n, m, d: pages.dirtied(n, m.page, m.count),
    }
