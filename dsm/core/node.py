"""The node's coherence core: which pages this node holds, what it asked the directory for, who
waits for what. No sockets and no kernel: every input (a fault, a directory message, a process
gone, the clock) returns the actions that carry it out (``dsm/core/actions.py``), in order.

The agent feeds it from its uffds (``dsm/agent/workloads.py``) and its DEALER, and carries the
actions out on the memfd and the sockets (``dsm/agent/messaging.py``); the simulator
(``dsm/sim/``) feeds it from a seeded scheduler and carries them out on a model of the memory.

Local page states: absent (invalid), SHARED (a read copy: write-protected in every local
process) and EXCLUSIVE (owned, writable). One request may cover a run of pages (read-ahead).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from dsm import bugs
from dsm import protocol as p
from dsm.core.acks import AwaitedAcks
from dsm.core.extents import Extents
from dsm.core.readahead import ReadAhead
from dsm.core.release import RELEASE, ReleasePages
from dsm.core.shards import STRIPE_PAGES, clip_to_stripe, split_at_stripes
from dsm.core.stats import NodeStats
from dsm.core.actions import (
    Action, Install, Kill, Poison, Protect, Punch, Send, Unprotect, Upgrade, Wake,
)
from dsm.core.states import OWNED, PageState, runs
from dsm.uffd.events import Access, FaultKind

log = logging.getLogger(__name__)

#: node-to-node transactions remembered as answered, so that a late Withdrawn for one of them
#: is not taken for one still open (far more than the requests a node has in flight)
ANSWERED_TXNS_REMEMBERED = 4096
#: the longest run whose read copy, sent straight to a reader, also goes to the directory as
#: the home copy (64 KiB). A home copy makes the next read of those pages 2 hops, not 3 through
#: a keeper: worth a copy more of a page or a few. A longer run is a stream (the read-ahead's),
#: its transfer longer than a hop; a second copy of it to the directory would double what the
#: owner sends and have the directory receive and store it: during a scan under the central
#: manager that was half the directory's CPU, the busiest process's
HOME_COPY_MOST_PAGES = 16

#: the counter of each kind of fault (named once: an f-string per fault costs)
_FAULT_COUNTER = {(kind, rw): f"faults_{kind.value}_{rw.value}"
                  for kind in FaultKind for rw in Access}

#: a tracer receives (page, event, node, old state, new state, **extra)
Tracer = Callable[..., None]


@dataclass
class Waiter:
    """A faulting thread, parked until its page is there."""

    proc: Any  #: the process it belongs to (opaque to the core: a handle of the loop's)
    addr: int  #: page-aligned address in ``proc``
    page: int
    write: bool
    thread_id: int
    t0: float


@dataclass
class Pending:
    """One request to the directory, for ``count`` pages from ``first``."""

    first: int
    count: int
    write: bool
    sent_at: float
    stream: Hashable | None  #: the read-ahead stream it belongs to
    waiters: list[Waiter] = field(default_factory=list)
    #: a read that asks for ownership (the dynamic manager's migratory prediction: the page is
    #: written after it is read here)
    owning: bool = False

    @property
    def owns(self) -> bool:
        """Whether the answer makes this node the pages' owner (a write, or an owning read)."""
        return self.write or self.owning


class NodeCore:
    def __init__(self, node: str, num_pages: int, page_size: int, readahead: ReadAhead,
                 tracer: Tracer | None = None, stats: NodeStats | None = None):
        self.node = node
        self.num_pages = num_pages
        self.page_size = page_size
        self.readahead = readahead
        self.extents = Extents(page_size)
        self.stats = stats or NodeStats()
        self._trace = tracer or (lambda *a, **k: None)
        #: describing states costs: only when someone reads the trace
        self._tracing = bool(getattr(tracer, "enabled", tracer is not None))
        self.state: dict[int, PageState] = {}
        self.pending: dict[int, Pending] = {}
        #: pages travel node to node (the directory's Welcome says): Fetches name the
        #: requester, read copies are given back with their contents
        self.direct = False
        #: the longest read run sent straight to a reader whose copy also goes home (the
        #: simulator's nodes, whose runs are short, set theirs lower to check both ways)
        self.home_copy_most_pages = HOME_COPY_MOST_PAGES
        #: node-to-node transactions answered (installed, or refused after a Withdrawn), as
        #: (txn, first page): a transaction number alone could be a stray's
        self._answered: set[tuple[int, int]] = set()
        self._answered_order: deque[tuple[int, int]] = deque()
        #: of those, the ones refused: their pages, should they still come, are ignored
        self._refused: set[tuple[int, int]] = set()
        #: writes granted while copies are invalidated, and the holders' acknowledgements
        self.acks = AwaitedAcks(ANSWERED_TXNS_REMEMBERED)
        #: requests given up (REQUEST_TIMEOUT_S), by first page: a late answer to one is
        #: installed, never refused (the directory's transaction counts it as taken)
        self._given_up: dict[int, Pending] = {}
        #: pages granted for writing at a read (the directory found them migratory), installed
        #: write-protected, and not written yet: a Fetch says so (a wrong prediction)
        self._unwritten: set[int] = set()
        #: the directory's manager shards (dsm.core.shards): no request crosses a stripe's end
        self.shards = 1
        self.stripe = STRIPE_PAGES  #: pages per stripe (fewer only in the simulator)
        #: the pages of release-consistency arrays: twins, diffs, write notices
        self.release = ReleasePages(node, num_pages, self.state, self.stats, self._trace,
                                    self._tracing, page_size)
        self.release.stripe = self.stripe

    def set_shards(self, shards: int, stripe: int = STRIPE_PAGES) -> None:
        """The directory's manager shards, and their stripe (fewer pages only in the
        simulator)."""
        self.shards = self.release.shards = shards
        self.stripe = self.release.stripe = stripe

    # --- faults ------------------------------------------------------------------------------------
    def fault(self, proc: Any, addr: int, page: int, rw: Access, kind: FaultKind, thread_id: int,
              now: float, resident: bool = True) -> list[Action]:
        """A process faulted. ``resident``: whether the node's memory holds the page's data (the
        loop says, for a missing-page fault on a page this core holds; it has already discarded
        the pages a Remove event of this node's processes punched)."""
        write = rw is Access.WRITE
        self.stats.count(_FAULT_COUNTER[kind, rw])
        st = self.state.get(page)
        if kind is FaultKind.WRITE_PROTECTED and st is PageState.CLEAN:
            if not write:
                return [Wake(proc, addr)]
            self.stats.count("faults_local")
            return self.release.first_write(page, self._clean_run(proc, page))
        if kind is FaultKind.WRITE_PROTECTED and st in (PageState.DIRTY, PageState.PRIVATE):
            self.stats.count("faults_local")
            return [Unprotect(proc, page)]  # a stale marker (left from its clean copy)
        if kind is FaultKind.WRITE_PROTECTED and st is PageState.EXCLUSIVE:
            if write:
                self._unwritten.discard(page)  # a migratory prediction come true
            self.stats.count("faults_local")
            self.stats.record_fault_latency(0.0)
            return [Unprotect(proc, page)]  # a stale marker (left from a read copy)
        out: list[Action] = []
        if kind is FaultKind.MISSING and st is not None and page not in self.pending:
            if not resident:
                # held here, yet the memory has a hole, and no Remove event named the page: never
                # guess (inferring a discard would zero the page cluster-wide); fail this access
                log.error("page %d is %s here but the node's memory holds no data for it, and "
                          "no Remove event of this node's processes named it: an invariant "
                          "violation; the access fails (SIGBUS) rather than read zeros", page,
                          st.value)
                self.stats.count("invariant_violations")
                return [Poison(Waiter(proc, addr, page, write, thread_id, now))]
            if not write or st is not PageState.SHARED:  # a write to it faults again
                self.stats.count("faults_local")
                return [Wake(proc, addr)]  # raised before the page arrived
        if kind is FaultKind.WRITE_PROTECTED and st is PageState.SHARED and not write:
            return [Wake(proc, addr)]
        waiter = Waiter(proc, addr, page, write, thread_id, now)
        pend = self.pending.get(page)
        if pend is not None:
            # a request for this page is on its way: wait for it (a writer behind a read request
            # refaults on the read copy and asks for the upgrade then)
            pend.waiters.append(waiter)
            return out
        if st is PageState.SHARED:  # an upgrade: of a run of read copies, for a sequential writer
            stream = (proc, True)
            window = self.readahead.on_fault(stream, page)
            return out + self._request_upgrade(page, window, waiter, now)
        stream = (proc, write)
        window = self.readahead.on_fault(stream, page)
        untouched = self.readahead.untouched_run(stream) if write else 1
        out += self._request(page, window, write, [waiter], stream, now, untouched)
        return out + self._request_ahead(stream, now)

    def _request(self, page: int, window: int, write: bool, waiters: list[Waiter],
                 stream: Hashable | None, now: float, untouched: int = 1) -> list[Action]:
        """Ask for ``page`` and up to ``window - 1`` following pages this node neither holds nor
        awaits (not past the end of the array); a writer also for up to ``untouched`` such pages
        if nobody has touched them yet (``Acquire.untouched``: the directory grants only
        those). The request awaits them all: a grant of fewer refaults the rest."""
        end = self.extents.end_of(page) or self.num_pages
        count = self._free_run(page, min(window, end - page))
        run = self._free_run(page, min(untouched, end - page)) if untouched > count else count
        pend = Pending(page, run, write, now, stream, waiters)
        self.pending.update(dict.fromkeys(range(page, page + run), pend))  # (a run: 1,024 pages)
        have_copy = self.state.get(page) is PageState.SHARED
        self.stats.count("requests")
        if self._tracing:
            self._trace(page, "ACQUIRE", self.node, _name(self.state.get(page)),
                        "write" if write else "read", count=count, untouched=run)
        return [Send(p.Acquire(page, count, write, have_copy, run if write else 1))]

    def _free_run(self, page: int, most: int) -> int:
        """``page`` and the following pages this node neither holds nor awaits, at most ``most``
        (nor more than a message names, nor past the stripe)."""
        limit = clip_to_stripe(page, min(most, p.MAX_BATCH_PAGES), self.shards, self.stripe)
        count = 1
        while count < limit and page + count not in self.state and page + count not in self.pending:
            count += 1
        return count

    def _clean_run(self, proc: Any, page: int) -> int:
        """How many pages from ``page`` to twin at once: as many CLEAN ones as the process's
        write stream's window (one for a random writer; a sequential one's window grows). Not
        from a remembered run: a twinned page counts as changed until its release, and is lost
        if this node dies first, so only pages a sequential writer is going through are."""
        window = self.readahead.on_fault((proc, True), page, recall=False)
        return self._run_from(page, window, lambda q: self.state.get(q) is PageState.CLEAN)

    def _run_from(self, page: int, most: int, fits: Callable[[int], bool]) -> int:
        """``page`` and the pages after it while ``fits(q)`` holds: at most ``most``, within
        the page's array, as many as a message names, and not past the manager shard's stripe."""
        if most <= 1:
            return 1
        end = self.extents.end_of(page) or self.num_pages
        limit = clip_to_stripe(page, min(most, p.MAX_BATCH_PAGES, end - page), self.shards,
                               self.stripe)
        count = 1
        while count < limit and fits(page + count):
            count += 1
        return count

    def _request_upgrade(self, page: int, window: int, waiter: Waiter, now: float) -> list[Action]:
        """Ask to own ``page`` and up to ``window - 1`` following pages this node holds read
        copies of and awaits nothing for (a band read, then written, costs one round trip)."""
        count = self._run_from(page, window, lambda q: self.state.get(q) is PageState.SHARED
                               and q not in self.pending)
        pend = Pending(page, count, True, now, None, [waiter])
        for q in range(page, page + count):
            self.pending[q] = pend
        self.stats.count("requests")
        if self._tracing:
            self._trace(page, "ACQUIRE", self.node, "shared", "write", count=count)
        return [Send(p.Acquire(page, count, True, True))]

    def _request_ahead(self, stream: Hashable | None, now: float) -> list[Action]:
        """Keep a sequential reader's requests ahead of its faults. Never a writer's: pages
        asked for ahead are pages nobody here has touched yet, and taking them for writing
        takes them from the nodes that do write them (a band's writer would reach into its
        neighbour's band, whose release pages would then stay shared, twinned at every
        barrier; sequential ones would move twice)."""
        out: list[Action] = []
        if stream is None or stream[1]:
            return out
        while (ahead := self.readahead.next_ahead(stream)) is not None:
            page, window = ahead
            end = self.extents.end_of(self.readahead.last_fault(stream)) or self.num_pages
            if page >= end or page in self.state or page in self.pending:
                return out
            self.stats.count("readahead_requests")
            out += self._request(page, window, stream[1], [], stream, now)
        return out

    def _take_pending(self, first: int) -> Pending | None:
        """The request answered by a message for pages from ``first``, no longer pending."""
        pend = self.pending.get(first)
        if pend is None or pend.first != first:
            return None
        for q in range(pend.first, pend.first + pend.count):
            if self.pending.get(q) is pend:
                del self.pending[q]
        return pend

    def _refault(self, pend: Pending, answered: range, now: float) -> list[Action]:
        """Ask again, page by page, for what the waiters of ``pend`` wait for outside
        ``answered`` (read-ahead the directory did not add)."""
        left: dict[int, list[Waiter]] = {}
        for w in pend.waiters:
            if w.page not in answered:
                left.setdefault(w.page, []).append(w)
        out: list[Action] = []
        for page, waiters in left.items():
            out += self._request(page, 1, pend.write and any(w.write for w in waiters), waiters,
                                 None, now)
        return out

    # --- the directory's messages ------------------------------------------------------------------
    def grant(self, msg: p.Grant, data: Any, now: float) -> list[Action]:
        """Pages granted. A write granted while other nodes' copies are invalidated
        (``msg.acks``) is installed only once each of those holders has acknowledged (it may
        have already: ``invalidated``), then confirmed to the directory."""
        if msg.acks:
            key = (msg.txn, msg.page)
            if key in self._answered or self.acks.holds(key):  # (a stray: never twice)
                return []
            if self.acks.granted(key, msg, data):
                return self._grant_acked(msg, data, now)
            if self._tracing:
                self._trace(msg.page, "GRANT", self.node, _name(self.state.get(msg.page)),
                            "awaiting acks", count=msg.count,
                            acks=sorted(self.acks.waiting_for(key)))
            return []
        return self._install(msg, data, now)

    def invalidated(self, msg: p.Invalidated, now: float) -> list[Action]:
        """A holder's copies of a transaction's pages are gone (straight from it, or from the
        directory: forwarded, or the holder died). Counted once per holder; the last one
        releases the grant. One for a transaction finished here changes nothing; one before
        its grant is kept for it."""
        key = (msg.txn, msg.page)
        if key in self._answered:  # late, or a duplicate
            return []
        done = self.acks.acknowledged(key, msg.holder)
        return [] if done is None else self._grant_acked(*done, now)

    def _grant_acked(self, msg: p.Grant, data: Any, now: float) -> list[Action]:
        """Every acknowledgement of ``msg`` came: install, then tell the directory, which ends
        the transaction on it."""
        key = (msg.txn, msg.page)
        self._remember_answered(key)
        return self._install(msg, data, now) + [Send(p.Received(msg.txn, msg.page, msg.count,
                                                                True))]

    def _install(self, msg: p.Grant, data: Any, now: float) -> list[Action]:
        pend = self._take_pending(msg.page)
        if pend is None:
            if msg.release:
                return self._install_unasked(msg, data, now)
            log.warning("grant of pages %d+%d that were not asked for: installed anyway",
                        msg.page, msg.count)
            pend = Pending(msg.page, msg.count, msg.write, now, None)
        return self._install_answer(pend, msg, data, now)

    def _install_unasked(self, msg: p.Grant, data: Any, now: float) -> list[Action]:
        """Release pages' home copies that answer no request of their own. Pages another
        request of this node awaits are a part of its answer, sent apart (their home granted
        them when their private holder gave them back, the rest after): installed, and their
        waiters woken and taken out of that request. The others are dropped: a late answer to
        a request this node dropped (answered in part), whose copy may predate what this node
        wrote since, installed over its copy (its writes thrown away, and its diff carrying the
        old bytes home) or after it gave the page back (its own writes read as older ones).
        Nothing is lost so: the page's home has it, and this node asks again when it faults."""
        size = self.page_size
        view = memoryview(data) if data is not None else None  # (None: ZERO)
        awaited = [q for q in range(msg.page, msg.page + msg.count)
                   if q in self.pending and q not in self.state]
        if len(awaited) < msg.count:
            log.info("grant of release pages %d+%d answering no request: %d of them dropped "
                     "(held here, or awaited by no request now)", msg.page, msg.count,
                     msg.count - len(awaited))
        out: list[Action] = []
        for first, count in runs(awaited, p.MAX_BATCH_PAGES):
            part = Pending(first, count, msg.write, now, None, self._take_waiters(first, count))
            at = (first - msg.page) * size
            out += self._install_answer(part, p.replace(msg, page=first, count=count),
                                        None if view is None else view[at:at + count * size],
                                        now)
        return out

    def _take_waiters(self, first: int, count: int) -> list[Waiter]:
        """Take the ``count`` pages from ``first`` out of the requests awaiting them: their
        waiters, which those requests no longer wake."""
        taken: list[Waiter] = []
        for q in range(first, first + count):
            pend = self.pending.pop(q, None)
            if pend is not None:
                taken += [w for w in pend.waiters if w.page == q]
                pend.waiters = [w for w in pend.waiters if w.page != q]
        return taken

    def _install_answer(self, pend: Pending, msg: p.Grant, data: Any,
                        now: float) -> list[Action]:
        """Install the pages of ``msg`` answering request ``pend``, and ask again for the
        pages its waiters still wait for."""
        first, count = msg.page, msg.count
        granted = range(first, first + count)
        stale = self.release.stale_on_arrival
        if msg.release and stale and not stale.isdisjoint(granted):
            # an acquire named them since they were asked for: they may predate its release
            stale.difference_update(granted)
            return self._refault(pend, range(0), now)
        old = self.state.get(first)
        new = ((PageState.PRIVATE if msg.write else PageState.CLEAN) if msg.release else
               PageState.EXCLUSIVE if msg.write else PageState.SHARED)
        ready = [w for w in pend.waiters if w.page in granted]
        out: list[Action] = []
        if msg.payload == p.Payload.NONE:  # an upgrade, or a page the node owns already
            self.stats.count("upgrades")
            out.append(Upgrade(first, count, tuple(ready)))  # the lift wakes the waiters
            new = PageState.EXCLUSIVE
        else:
            self.stats.count("pages_in", count)
            installer = next((w for w in ready if w.page == first), None)
            # granted for writing at a read: migratory. Installed write-protected all the same,
            # so that the write (a local fault) tells whether the prediction was right
            migratory = msg.write and not pend.write and not msg.release
            if migratory:
                self.stats.count("migratory_grants")
                self._unwritten.update(granted)
            out.append(Install(first, count, data, msg.write and not migratory, installer,
                               tuple(ready)))
        self.state.update(dict.fromkeys(granted, new))
        if self._tracing:
            self._trace(first, "GRANT", self.node, _name(old), _name(new), count=count)
        for w in ready:
            self.stats.record_fault_latency(now - w.t0)
        out += self._refault(pend, granted, now)
        return out + self._request_ahead(pend.stream, now)

    def lost(self, msg: p.Lost, now: float) -> list[Action]:
        """The pages asked for are lost (their newest contents died with a node): every process
        waiting on one of them is made to fail, after a log line that says what was lost."""
        first, count = msg.page, msg.count
        pend = self._take_pending(first)
        if pend is None:
            log.warning("lost answer for pages %d+%d that were not asked for: ignored", first, count)
            return []
        lost = range(first, first + count)
        victims = [w for w in pend.waiters if w.page in lost]
        self.stats.count("lost_faults", len(victims))
        if self._tracing:
            self._trace(first, "LOST", self.node, "invalid", "lost", count=count)
        array = repr(msg.array) if msg.array else "(outside every array)"
        log.error(
            "pages %d-%d of array %s are LOST: their newest contents died with node %s; "
            "%d process(es) touching them get SIGBUS (node.lost() lists the lost ranges, "
            "node.forget_lost(name) zero-fills them)", msg.array_page, msg.array_page + count - 1,
            array, msg.dead_node, len({id(w.proc) for w in victims}))
        return [Poison(w) for w in victims] + self._refault(pend, lost, now)

    def fetch(self, msg: p.Fetch, reachable: Callable[[str], bool] = lambda addr: True
              ) -> list[Action]:
        """The directory wants pages this node holds: local writers are stopped first, so that
        what is sent is what stays; then the pages become read copies (``keep_copy``) or leave.
        They go to the directory, or straight to the requester the Fetch names, if this node
        holds them all and can reach it (``reachable``: the loop's knowledge of its peers)."""
        first, count = msg.page, msg.count
        pages = range(first, first + count)
        held = [q for q in pages if q in self.state]
        if not held:  # every page was given back (a Writeback crossed this Fetch): say so
            return [Send(p.Fetched(msg.txn, first, count, p.Payload.NONE, []))]
        not_held = [q for q in pages if q not in self.state]
        owned = any(self.state[q] in OWNED for q in held)
        unwritten = [q for q in held if q in self._unwritten]
        self._unwritten.difference_update(unwritten)
        out: list[Action] = [Protect(first, count)] if owned else []
        if not msg.keep_copy:  # gone from here before the requester can have them
            out.append(Punch(first, count, keep=True))
        if msg.to_node and not not_held and reachable(msg.to_addr):
            # a read copy kept: the directory gets a copy too (its home copy current again),
            # unless the run is a stream's (the pages' copies here and there stay their keepers)
            copy = (p.Payload.DATA if msg.keep_copy and count <= self.home_copy_most_pages
                    else p.Payload.NONE)
            out += [Send(p.PeerPage(msg.txn, first, count, not msg.keep_copy, p.Payload.DATA,
                                    self.node), pages=(first, count),
                         peer=(msg.to_node, msg.to_addr)),
                    Send(p.Fetched(msg.txn, first, count, copy, [], unwritten, sent=True),
                         pages=(first, count) if copy == p.Payload.DATA else None)]
        else:
            out.append(Send(p.Fetched(msg.txn, first, count, p.Payload.DATA, not_held, unwritten),
                            pages=(first, count)))
        if msg.keep_copy:  # (a private release page stays as a clean release copy)
            for q in held:
                self.state[q] = (PageState.CLEAN if self.state[q] is PageState.PRIVATE
                                 else PageState.SHARED)
        else:
            for q in held:
                del self.state[q]
        self.stats.count("pages_out", len(held))
        self.stats.count("downgrades" if msg.keep_copy else "invalidations", len(held))
        if self._tracing:
            self._trace(first, "FETCH", self.node, "exclusive" if owned else "shared",
                        _name(self.state.get(first)), count=count, to=msg.to_node or "directory")
        return out

    def peer_page(self, msg: p.PeerPage, data: Any, now: float) -> list[Action]:
        """Pages the directory had a holder send straight here: installed like a grant, then
        confirmed to the directory (which ends the transaction only on that)."""
        key = (msg.txn, msg.page)
        if key in self._refused or key in self._answered:  # withdrawn, or installed already
            return []
        pend = self.pending.get(msg.page)
        late = self._given_up.get(msg.page) if pend is None else None
        if late is not None and msg.count <= late.count and not any(
                q in self.state for q in range(msg.page, msg.page + msg.count)):
            # late: this node's request for them was given up (its waiters failed at
            # REQUEST_TIMEOUT_S) while the directory still served it, and its transaction
            # counts the pages as coming here: installed and confirmed, never refused and lost
            del self._given_up[msg.page]
            log.warning("pages %d+%d from %s came after their request was given up: installed",
                        msg.page, msg.count, msg.sender)
            out = self.grant(p.Grant(msg.page, msg.count, msg.write, msg.payload), data, now)
            self._remember_answered(key)
            return out + [Send(p.Received(msg.txn, msg.page, msg.count, True))]
        if pend is None or pend.first != msg.page or msg.count > pend.count:
            # not asked for: never installed, since pages the directory does not know to be here
            # would be written unseen; the directory learns they were not taken
            log.warning("pages %d+%d from %s were not asked for: refused", msg.page, msg.count,
                        msg.sender)
            self._remember_answered(key)
            self._refused.add(key)
            return [Send(p.Received(msg.txn, msg.page, msg.count, False))]
        out = self.grant(p.Grant(msg.page, msg.count, msg.write, msg.payload), data, now)
        self._remember_answered(key)
        return out + [Send(p.Received(msg.txn, msg.page, msg.count, True))]

    def withdrawn(self, msg: p.Withdrawn) -> list[Action]:
        """The holder that was to send pages here is gone: say whether they came."""
        key = (msg.txn, msg.page)
        if key in self._answered:  # they came, and the directory was told so
            return []
        pend = self.pending.get(msg.page)
        if pend is not None and pend.first == msg.page:  # still awaited: refuse them from now
            self._remember_answered(key)
            self._refused.add(key)
        # else nothing here awaits them any more (the request was given up): no page to refuse
        if self._tracing:
            self._trace(msg.page, "WITHDRAWN", self.node, "invalid", "invalid", count=msg.count,
                        source=msg.source)
        return [Send(p.Received(msg.txn, msg.page, msg.count, False))]

    def _remember_answered(self, key: tuple[int, int]) -> None:
        self._answered.add(key)
        self._answered_order.append(key)
        if len(self._answered_order) > ANSWERED_TXNS_REMEMBERED:
            old = self._answered_order.popleft()
            self._answered.discard(old)
            self._refused.discard(old)

    def invalidate(self, msg: p.Invalidate, reachable: Callable[[str], bool] = lambda addr: True
                   ) -> list[Action]:
        """Drop the run (read copies, or owned pages being discarded), then acknowledge: to the
        writer the Invalidate names, if it can be reached (``reachable``: the loop's knowledge
        of its peers), else to the directory (which forwards it)."""
        first, count = msg.page, msg.count
        ack = p.Invalidated(msg.txn, first, count, self.node)
        if msg.to_node and reachable(msg.to_addr):
            # (the runner sends it to the directory instead if the send fails)
            done = Send(ack, peer=(msg.to_node, msg.to_addr))
        else:
            done = Send(ack)
        if bugs.ACTIVE == bugs.STALE_COPY:  # the bug switch (dsm/bugs.py): keep the copy
            return [done]
        dropped = [q for q in range(first, first + count) if self.state.pop(q, None) is not None]
        self._unwritten.difference_update(dropped)
        out: list[Action] = [Punch(first, count)] if dropped else []
        self.stats.count("invalidations", len(dropped))
        if self._tracing:
            self._trace(first, "INVALIDATE", self.node, "held" if dropped else "invalid", "invalid",
                        count=count)
        return out + [done]

    def in_flight(self) -> bool:
        """Whether a transaction of this node's is unfinished: a leave waits for them (to a
        deadline) before it hands the pages back (``give_back`` keeps those they involve)."""
        return bool(self.pending)

    def allocated(self, offset: int, nbytes: int) -> None:
        self.extents.add(offset, nbytes)

    # --- giving pages up ---------------------------------------------------------------------------
    def discard(self, pages: list[int]) -> list[Action]:
        """Pages the workload removed (MADV_REMOVE): zeros everywhere. A page this node owns is
        the only copy: it stays here, zeros from now on (the directory need not know; a Discard
        of it would cross a Fetch of it, which the node, no longer holding it, would answer
        with nothing, again and again). The others are discarded cluster-wide."""
        self._unwritten.difference_update(pages)
        owned = {pg for pg in pages if self.state.get(pg) is PageState.EXCLUSIVE}
        out: list[Action] = [Install(first, count, None, True, None, ())
                             for first, count in runs(list(owned), p.MAX_BATCH_PAGES)]
        self.stats.count("discards", len(pages))
        rest = [pg for pg in pages if pg not in owned]
        if not rest:
            return out
        out += self.release.discarded(rest)
        for pg in rest:
            old = self.state.pop(pg, None)
            if self._tracing:
                self._trace(pg, "DISCARD", self.node, _name(old), "invalid")
        return out + [Send(p.Discard(sorted(rest)))]

    def give_back(self, pages: list[int]) -> list[Action]:
        """Hand pages back (not those a request is out for): owned ones with their contents,
        write-protected first so that no write lands between the read and the punch; read
        copies as a drop. One message per run."""
        by_state: dict[PageState, list[int]] = {st: [] for st in GIVE_BACK_ORDER}
        for page in pages:
            st = self.state.get(page)
            if st is not None and page not in self.pending:
                by_state[st].append(page)
        out: list[Action] = []
        for st, group in by_state.items():
            for first, count in split_at_stripes(runs(group, p.MAX_BATCH_PAGES), self.shards,
                                                  self.stripe):
                if st in RELEASE:  # to the home, changes only
                    out += self.release.give_back(first, count)
                    self.stats.count("givebacks", count)
                    continue
                # gone from here before the directory can hand them to anyone else
                if st in OWNED:  # a hole (discarded locally) reads as zeros
                    out += [Protect(first, count), Punch(first, count, keep=True),
                            Send(p.Writeback(first, count, p.Payload.DATA), pages=(first, count))]
                    self.stats.count("writebacks", count)
                elif self.direct:  # the copy may be the last one: its contents go with it
                    out += [Punch(first, count, keep=True),
                            Send(p.Drop(first, count, p.Payload.DATA), pages=(first, count))]
                else:
                    out += [Punch(first, count), Send(p.Drop(first, count))]
                for q in range(first, first + count):
                    del self.state[q]
                    self._unwritten.discard(q)
                if self._tracing:
                    self._trace(first, "GIVEBACK", self.node, "held", "invalid", count=count)
        return out

    def read_copies(self) -> list[int]:
        """The pages write-protected in every local process (read copies, clean release
        copies)."""
        return [pg for pg, st in self.state.items() if st.protected]

    # --- release consistency (dsm.core.release) ----------------------------------------------------
    def release_sync(self, msg: p.LockRelease | p.BarrierWait) -> list[Action]:
        """A lock release or barrier arrival: diffs home first, then ``msg``, with the notices."""
        return self.release.release(msg)

    def releases_held(self) -> bool:
        """Whether a release waits behind diffs another shard has not acknowledged yet."""
        return self.release.holding()

    def lock_requested(self, req: int) -> None:
        """Lock request ``req`` goes to the coordinator now (``ReleasePages.lock_requested``)."""
        self.release.lock_requested(req)

    def acquire_sync(self, notices: list[int], guarded: list[int] = (),
                     data: Any = None, req: int | None = None) -> list[Action]:
        """A lock grant or barrier departure: the pages other nodes' releases changed; a grant
        of a lock with guards also carries the guarded pages' home copies (``guarded``, runs;
        ``data``, their bytes), for lock request ``req``."""
        mark = self.release.request_mark(req)
        if bugs.ACTIVE == bugs.IGNORE_NOTICES:  # the bug switch (dsm/bugs.py)
            notices = []
        if not notices and not guarded:
            return []
        return self.release.acquired(notices, self.pending, guarded, data, mark)

    def diff_applied(self, msg: p.DiffApplied) -> list[Action]:
        return self.release.diff_applied(msg)

    # --- processes and time ------------------------------------------------------------------------
    def process_gone(self, proc: Any) -> None:
        """Forget what ``proc`` waited for and its read-ahead streams."""
        for pend in self.pending.values():
            pend.waiters = [w for w in pend.waiters if w.proc is not proc]
        self.readahead.forget((proc, False), (proc, True))

    def overdue(self, now: float, timeout_s: float) -> list[Action]:
        """Requests unanswered for ``timeout_s``: their waiters are killed, loudly."""
        overdue = {id(pend): pend for pend in self.pending.values()
                   if now - pend.sent_at >= timeout_s}
        out: list[Action] = []
        for pend in overdue.values():
            self._take_pending(pend.first)
            self._given_up[pend.first] = pend  # its answer, should it still come, is taken
            while len(self._given_up) > ANSWERED_TXNS_REMEMBERED:
                del self._given_up[next(iter(self._given_up))]
            out += [Kill(w, f"the request for page {w.page} was not answered within "
                            f"{timeout_s:.0f} s") for w in pend.waiters]
        return out

    def cut_off(self) -> None:
        """The directory has given this node up: nothing here is current any more."""
        self.pending.clear()
        self.state.clear()
        self._unwritten.clear()
        self._given_up.clear()
        self.acks.clear()
        self.release.clear()


#: owned pages first: what only this node holds goes home soonest
GIVE_BACK_ORDER = (PageState.EXCLUSIVE, PageState.PRIVATE, PageState.SHARED, PageState.DIRTY,
                   PageState.CLEAN)


def _name(state: PageState | None) -> str:
    return state.value if state is not None else "invalid"
