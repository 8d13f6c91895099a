"""The node's side of IVY's dynamic distributed manager (``--manager dynamic``; Li and Hudak
1989): every node keeps a probable owner per page and asks it directly; a node that does not own
the page forwards the request along its own hint; the owner serves it straight to the requester.
No manager on a fault's path: the directory is the home of untouched pages, the hint of a node
that knows nothing better, and the fallback that repairs chains through a dead node
(docs/architecture.md, "The dynamic distributed manager").

``DynamicNodeCore`` is the node core (``dsm.core.node``) with requests sent to probable owners
instead of the directory, and the owner's duties added: its copy set, the requests it has
served, the one transfer of each page it lets be in flight. Release-consistency pages are asked
of the directory as before (their home): it answers them with a ``Grant``, so their hint never
changes.

A sequential fault asks for a run (``PageRequest.count``: the read-ahead window, or a writer's
untouched run) of pages this node neither holds, awaits nor knows an owner of but the first's.
The first page alone routes it; the pages of a run may have as many owners, so whoever serves
it serves what it can in one answer and no more: the directory a run of untouched pages (a
fresh array's first touch: ownership of them all at once), an owner a run of read copies of
pages it owns (a scan), and to a writer the pages it was handed together. The faulting threads
of the pages left out ask again (``dsm.core.dynamic_runs``).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from dsm import protocol as p
from dsm.core.actions import Action, Protect, Punch, Send
from dsm.core.dynamic_runs import DynamicRuns
from dsm.core.node import NodeCore, Pending, Waiter
from dsm.core.release import RELEASE
from dsm.core.states import PageState
from dsm.errors import ProtocolError
from dsm.uffd.events import Access, FaultKind

log = logging.getLogger(__name__)

#: a peer: (node name, peer endpoint)
Peer = tuple[str, str]
#: the states of release-consistency pages: given back to their home as by any node core
RELEASE_STATES = (*RELEASE, PageState.PRIVATE)
#: the latest gathers a Taken names (a gather stays open for a round trip to every live node:
#: older ones are long closed)
ANSWERED_GATHERS_TOLD = 8


@dataclass(slots=True)
class Ownership:
    """What this node knows as a page's owner."""

    #: the nodes holding read copies, with their peer endpoints (each acknowledges to the writer)
    copyset: dict[str, str] = field(default_factory=dict)
    #: the last request of each node served for the page: ownership carries it, so that a
    #: request re-sent after a death is never served twice
    served: dict[str, int] = field(default_factory=dict)
    #: a read copy sent and not confirmed yet (requester, request): the next request waits, so
    #: that no later writer's Invalidate overtakes the copy
    busy: tuple[str, int] | None = None
    #: this node's own upgrade, awaiting its copies' acknowledgements (its request)
    upgrading: int | None = None
    #: ownership's version (``Served.version``): one more at every transfer
    version: int = 0


class DynamicNodeCore(DynamicRuns, NodeCore):
    def __init__(self, node: str, num_pages: int, page_size: int, readahead: Any, addr: str,
                 first_req: int, tracer: Any = None, stats: Any = None):
        """``addr``: this node's peer endpoint (requesters and writers are answered there);
        ``first_req``: its first request number (the agent passes its start time in ns, so
        that a later incarnation of the same name never reuses one)."""
        super().__init__(node, num_pages, page_size, readahead, tracer, stats)
        self.direct = True
        self.addr = addr
        #: page -> probable owner; absent: the directory; None: the directory, known (this node
        #: handed the page back: its next request goes there, after the page, not to a guess)
        self.hint: dict[int, Peer | None] = {}
        #: array (its first page) -> the node this node last learned owning one of its pages:
        #: a page of it this node knows no probable owner of is asked of that node first, not
        #: of the directory (arrays are owned in blocks: a node reading another's array learns
        #: its owner once, not a page at a time through the directory). A guess: only this
        #: node's own requests follow it (``PageRequest.guessed``), never a forwarded one
        self.array_owner: dict[int, Peer] = {}
        self.owned: dict[int, Ownership] = {}
        #: ownership sent and not confirmed yet: page -> (new owner, its request). Reported to
        #: the directory at a death as owned here: it is owned by a live node either way
        self.handing: dict[int, tuple[str, int, int]] = {}  # (new owner, request, version)
        #: page -> the last version of it handed on and confirmed (reported at a gather: the
        #: newest version tells whether the page lives)
        self.passed: dict[int, int] = {}
        #: requests that wait for this node: it owns the page and a transfer is in flight, or
        #: its own write request is out (it is about to own the page)
        self.queued: dict[int, deque[p.PageRequest]] = {}
        #: nodes the directory declared dead: nothing from them is taken any more
        self.dead: set[str] = set()
        #: page -> the number of this node's request out for it
        self.req_of: dict[int, int] = {}
        self._next_req = first_req
        #: node -> the last request of each (page, requester) forwarded to it: re-sent to the
        #: directory if it dies (it may have died before handling them)
        self.forwarded: dict[str, dict[tuple[int, str], p.PageRequest]] = {}
        #: the gathers (``OwnerDead``) this node has answered, in order
        self.answered: list[int] = []
        #: gather -> {page: the node it was handed to}, taken by a node that had answered the
        #: gather, this node not yet: reported to it as on its way (the taker did not report it)
        self.late: dict[int, dict[int, tuple[str, int]]] = {}
        #: pages this node wrote after reading them (a read copy upgraded, or ownership taken
        #: at a read and then written): its next read miss of one asks for ownership. One
        #: handed on unwritten since is a wrong prediction: forgotten
        self.migratory: set[int] = set()
        #: ownership awaiting acknowledgements of Invalidates its old owner sent
        #: (``Served.invalidated``): (request, page) -> (that owner, the holders). Should it die,
        #: they may never have left it: this node sends them again
        self.invalidating: dict[tuple[int, int], tuple[str, list[Peer]]] = {}

    def handlers(self, now: Callable[[], float]) -> dict[type, Callable[[Any, Any], list[Action]]]:
        """The dynamic manager's messages, for ``dsm.core.inputs.core_handlers``."""
        return {
            p.PageRequest: lambda m, d: self.page_request(m, now()),
            p.Served: lambda m, d: self.served(m, d, now()),
            p.Taken: lambda m, d: self.taken(m, now()),
            p.OwnerDead: lambda m, d: self.owner_dead(m, now()),
        }

    # --- this node's requests ------------------------------------------------------------------
    def fault(self, proc: Any, addr: int, page: int, rw: Access, kind: FaultKind, thread_id: int,
              now: float, resident: bool = True) -> list[Action]:
        """As any node core; a write to a page owned since a read (installed write-protected)
        makes the page migratory here."""
        if (kind is FaultKind.WRITE_PROTECTED and rw is Access.WRITE
                and page in self._unwritten):
            self.migratory.add(page)
        return super().fault(proc, addr, page, rw, kind, thread_id, now, resident)

    def _request(self, page: int, window: int, write: bool, waiters: list[Waiter],
                 stream: Hashable | None, now: float, untouched: int = 1) -> list[Action]:
        """Ask the page's probable owner for it and, after a sequential fault, for the run of
        pages after it this node knows nothing of (see the module's docstring)."""
        have_copy = self.state.get(page) is PageState.SHARED  # a write to a read copy
        count = 1 if have_copy else self._run_to_ask(page, max(window, untouched))
        # a read of a page this node writes after reading it: ownership at once (installed
        # write-protected, its write a local fault), not a read copy and then an upgrade
        owning = not write and count == 1 and page in self.migratory
        pend = Pending(page, count, write, now, stream, waiters, owning)
        req = self._new_req()
        if count == 1:
            self.pending[page] = pend
            self.req_of[page] = req
        else:
            run = range(page, page + count)
            self.pending.update(dict.fromkeys(run, pend))
            self.req_of.update(dict.fromkeys(run, req))
        self.stats.count("requests")
        if self._tracing:
            self._trace(page, "ACQUIRE", self.node, _name(self.state.get(page)),
                        "write" if write else "read", count=count, to=self._hint_name(page))
        if owning:
            self.stats.count("migratory_requests")
        msg = p.PageRequest(req, page, write or owning, self.node, self.addr,
                            have_copy=have_copy, count=count)
        if page in self.hint:
            return [self._to_hint(msg)]
        guess = self._array_owner_of(page)
        if guess is None:
            return [Send(msg)]  # to the directory
        self.stats.count("guessed_requests")
        return [Send(p.replace(msg, guessed=True), peer=guess)]

    def _request_upgrade(self, page: int, window: int, waiter: Waiter, now: float
                         ) -> list[Action]:
        """A write to a read copy: the owner invalidates its copy set itself (no request
        leaves the node but the Invalidates); any other node asks the owner for ownership."""
        own = self.owned.get(page)
        if own is None:
            self.migratory.add(page)  # read here, then written: its next read asks to own it
            return self._request(page, 1, True, [waiter], None, now)
        count = self._upgrade_run(page, window, own)
        pend = Pending(page, count, True, now, None, [waiter])
        req = self._new_req()
        for q in range(page, page + count):
            self.pending[q] = pend
            self.req_of[q] = req
        mine = p.PageRequest(req, page, True, self.node, self.addr)
        if own.busy is not None or own.upgrading is not None:  # after the transfer in flight
            self.queued.setdefault(page, deque()).append(mine)
            return []
        return self._upgrade_owned(page, req, own, now, count)

    def _upgrade_run(self, page: int, window: int, own: Ownership) -> int:
        """``page`` and the pages after it (at most the write stream's ``window``, within its
        array) that this node owns as read-shared pages with exactly ``page``'s copies, and
        where nothing is in flight: one upgrade invalidates them all (a band's edge row, read
        by the neighbour in the last iteration, written again in this one: one round trip to
        the neighbour, not one per page)."""
        if window <= 1 or own.busy is not None or own.upgrading is not None:
            return 1

        def fits(q: int) -> bool:
            other = self.owned.get(q)
            return (other is not None and self.state.get(q) is PageState.SHARED
                    and other.copyset == own.copyset and other.busy is None
                    and other.upgrading is None and q not in self.pending
                    and not self.queued.get(q))
        return self._run_from(page, window, fits)

    def _new_req(self) -> int:
        self._next_req += 1
        return self._next_req

    def _to_hint(self, msg: p.PageRequest) -> Send:
        hint = self.hint.get(msg.page)
        return Send(msg) if hint is None else Send(msg, peer=hint)

    def _hint_name(self, page: int) -> str:
        """Where this node's request for ``page`` goes."""
        hint = self.hint[page] if page in self.hint else self._array_owner_of(page)
        return hint[0] if hint is not None else "directory"

    def _array_owner_of(self, page: int) -> Peer | None:
        """The node this node last learned owning a page of ``page``'s array (None: none, or
        outside every array it knows)."""
        start = self.extents.start_of(page)
        return None if start is None else self.array_owner.get(start)

    def _learn_owner(self, page: int, count: int, owner: Peer) -> None:
        """``owner`` owns ``page`` and the ``count - 1`` pages after it now (or will): the
        probable owner of each, and the guess for the rest of their array."""
        self.hint.update(dict.fromkeys(range(page, page + count), owner))
        start = self.extents.start_of(page)
        if start is not None:
            self.array_owner[start] = owner

    # --- requests that reach this node ---------------------------------------------------------
    def page_request(self, msg: p.PageRequest, now: float) -> list[Action]:
        """Serve it (the owner), queue it (a transfer of the page is in flight here, or this
        node is about to own it), or forward it along this node's hint."""
        if msg.requester in self.dead:
            return []
        page = msg.page
        if msg.requester == self.node and self.req_of.get(page) != msg.req:
            return []  # a copy of a request of its own answered already (re-sent at a death)
        own = self.owned.get(page)
        if own is not None:
            if own.busy is not None or own.upgrading is not None:
                self.queued.setdefault(page, deque()).append(msg)
                return []
            return self._serve(msg, own, now)
        if msg.guessed:
            # a wrong guess: on to the directory, as if the requester had asked it (not along
            # this node's hints, nor queued here while its own write is out: a guess is no
            # hint, and hints and guesses together could lead two writers each to the other)
            self.stats.count("guesses_missed")
            return self._forward(msg, to_directory=True)
        if self._about_to_own(page) and msg.requester != self.node:
            # Li and Hudak's locked page table entry: this node's write makes it the owner
            # (while its request is out: a run's page left out of the answer will not be)
            self.queued.setdefault(page, deque()).append(msg)
            return []
        return self._forward(msg)

    def _about_to_own(self, page: int) -> bool:
        """This node's request for ownership of ``page`` is out: a request forwarded to it waits
        until the page is installed. Not once the answer left the page out of a run: the node
        will not own it then, and a queued request would wait (or re-queue) for ever."""
        pend = self.pending.get(page)
        return pend is not None and pend.owns and page in self.req_of

    def _forward(self, msg: p.PageRequest, to_directory: bool = False) -> list[Action]:
        """Send ``msg`` on along this node's hint; or (``to_directory``: a wrong guess) to the
        directory, as the requester's own first ask (no hop: Li and Hudak's chain starts there)."""
        if to_directory:
            fwd = p.replace(msg, guessed=False)
            self._trace_forward(fwd, "directory")
            return [Send(fwd)]
        if msg.requester == self.node and msg.hops:
            # its own request came back: the hints went round a cycle (a writer they named
            # never became the owner: its request was answered Lost). The directory knows
            self.hint.pop(msg.page, None)
        fwd = p.replace(msg, hops=msg.hops + 1)
        out = [self._to_hint(fwd)]
        hint = self.hint.get(msg.page)
        if hint is not None and msg.requester != self.node:
            # kept until that node is known alive or dead: at its death, re-sent to the
            # directory (the requester may have re-sent its own requests before this node
            # forwarded it to the dead node)
            self.forwarded.setdefault(hint[0], {})[msg.page, msg.requester] = fwd
        # No path compression (Li and Hudak move the hint to a forwarded writer, who will be
        # the owner): requests are re-sent at deaths, and a stale copy would point the hint
        # at a node that never becomes the owner from it, which can close a cycle of hints
        # between two nodes whose writes are out, each queueing the other's request. A hint
        # moves only to a node that owned the page after the one it named (it served, was
        # handed ownership, or invalidated): following hints reaches the owner.
        self._trace_forward(fwd, hint[0] if hint is not None else "directory")
        return out

    def _trace_forward(self, fwd: p.PageRequest, to: str) -> None:
        self.stats.count("forwards")
        if self._tracing:
            self._trace(fwd.page, "FORWARD", fwd.requester, "", "", count=1, to=to, hops=fwd.hops)

    def _serve(self, msg: p.PageRequest, own: Ownership, now: float) -> list[Action]:
        page, requester = msg.page, msg.requester
        if requester == self.node:  # its own upgrade, queued behind a transfer
            return self._upgrade_owned(page, msg.req, own, now) if msg.write else []
        if own.served.get(requester, 0) >= msg.req:  # re-sent after a death, served already
            return []
        own.served[requester] = msg.req
        st = self.state.get(page)
        if page in self._unwritten:  # owned since a read, handed on unwritten: not migratory
            self.migratory.discard(page)
        # local writers stopped first: what is sent is what stays
        out: list[Action] = [Protect(page, 1)] if st is PageState.EXCLUSIVE else []
        to = (requester, msg.reply_to)
        self.stats.count("pages_out")
        if not msg.write:
            self.state[page] = PageState.SHARED
            self._unwritten.discard(page)
            own.copyset[requester] = msg.reply_to
            own.busy = (requester, msg.req)
            if msg.count > 1:
                more, protects = self._serve_run_after(msg)
                count = 1 + more
                out += protects
            else:
                count = 1
            self.stats.count("downgrades", count)
            out.append(Send(p.Served(msg.req, page, count, False, p.Payload.DATA, self.node,
                                     self.addr), pages=(page, count), peer=to))
            self._trace_serve(page, st, msg, count)
            return out
        # (a copy given up since is still in the copy set: the requester says whether it holds one)
        has_copy = msg.have_copy and requester in own.copyset
        others = sorted((n, a) for n, a in own.copyset.items() if n != requester)
        count = 1
        if msg.count > 1 and not others and not has_copy:
            more, protects = self._hand_run_after(msg, own, to)
            count += more
            out += protects
        # the copies invalidated from here, beside the transfer: each holder acknowledges to
        # the requester, which installs once all have (3 hops, not 4)
        out += [Send(p.Invalidate(msg.req, page, 1, requester, msg.reply_to), peer=h)
                for h in others]
        # gone from here before the requester can have it
        out.append(Punch(page, count, keep=not has_copy))
        out.append(Send(p.Served(msg.req, page, count, True,
                                 p.Payload.NONE if has_copy else p.Payload.DATA, self.node,
                                 self.addr, others, sorted(own.served.items()), own.version + 1,
                                 invalidated=bool(others)),
                        pages=None if has_copy else (page, count), peer=to))
        del self.owned[page]
        self.state.pop(page, None)
        self._unwritten.discard(page)
        self.handing[page] = (requester, msg.req, own.version + 1)
        self._learn_owner(page, 1, to)  # (a run's other pages: ``_hand_run_after``)
        self.stats.count("invalidations", count)
        self._trace_serve(page, st, msg, count)
        queue = self.queued.get(page)
        if queue and any(m.requester == self.node for m in queue):
            # this node's own write, queued behind the transfer: out to the new owner first,
            # then the others wait here for the ownership it brings back (Li and Hudak's lock)
            self.queued[page] = deque(m for m in queue if m.requester != self.node)
            out += [self._to_hint(m) for m in queue if m.requester == self.node]
        return out + self._drain(page, now)  # what waited here goes on to the new owner

    def _trace_serve(self, page: int, old: PageState | None, msg: p.PageRequest,
                     count: int = 1) -> None:
        if self._tracing:
            self._trace(page, "SERVE", self.node, _name(old), _name(self.state.get(page)),
                        count=count, to=msg.requester, write=msg.write, hops=msg.hops)

    def _drain(self, page: int, now: float) -> list[Action]:
        """The requests queued for ``page`` that can go now: served, or forwarded."""
        queue = self.queued.get(page)
        out: list[Action] = []
        while queue:
            own = self.owned.get(page)
            if own is not None and (own.busy is not None or own.upgrading is not None):
                break
            if own is None and self._about_to_own(page):
                break
            out += self.page_request(queue.popleft(), now)
        if not queue:
            self.queued.pop(page, None)
        return out

    # --- becoming the owner, and upgrades ------------------------------------------------------
    def _upgrade_owned(self, page: int, req: int, own: Ownership, now: float, count: int = 1
                       ) -> list[Action]:
        """This node owns ``page`` (and the ``count - 1`` pages after it, with the same copies:
        ``_upgrade_run``) and writes it: its copies are invalidated first, one Invalidate of
        the run to each holder."""
        for q in range(page + 1, page + count):
            other = self.owned[q]
            other.copyset.clear()
            other.upgrading = req
        return self._invalidate_copies(page, req, own, p.Payload.NONE, None, now, count)

    def _invalidate_copies(self, page: int, req: int, own: Ownership, payload: p.Payload,
                           data: Any, now: float, count: int = 1, sent_by: str = ""
                           ) -> list[Action]:
        """Send each copy holder an Invalidate naming this node (unless the old owner
        ``sent_by`` has: ``Served.invalidated``); install (``payload``, ``data``) once every one has
        acknowledged (straight away with none; some may have before the ownership came).
        ``count``: a run handed over with no copies, ``own`` its last page's; or a run this node
        upgrades, every page with ``own``'s copies."""
        holders = sorted((n, a) for n, a in own.copyset.items() if n != self.node)
        own.copyset.clear()
        grant = p.Grant(page, count, True, payload, txn=req, acks=[n for n, _ in holders])
        if not holders:
            return self._grant_acked(grant, data, now)
        own.upgrading = req
        out: list[Action] = [] if sent_by else [
            Send(p.Invalidate(req, page, count, self.node, self.addr), peer=h) for h in holders]
        if self.acks.granted((req, page), grant, data):  # (every one came before: done)
            out += self._grant_acked(grant, data, now)
        elif sent_by:
            self.invalidating[req, page] = (sent_by, holders)
        return out

    def _grant_acked(self, msg: p.Grant, data: Any, now: float) -> list[Action]:
        """Every copy is gone: install (or lift the protection), then serve what waited. No
        confirmation to the directory: it is not in the transaction."""
        page = msg.page
        self._remember_answered((msg.txn, page))
        self.invalidating.pop((msg.txn, page), None)
        own = self.owned.get(page)
        if own is not None:
            own.upgrading = None
        for q in range(page, page + msg.count):  # (an upgrade run's other pages too)
            if self.req_of.get(q) == msg.txn:
                del self.req_of[q]
            other = self.owned.get(q)
            if other is not None and other.upgrading == msg.txn:
                other.upgrading = None
        pend = self.pending.get(page)
        if pend is None:  # ownership nobody here waits for any more: taken all the same
            pend = self.pending[page] = Pending(page, msg.count, True, now, None)
        out = self._install(msg, data, now)
        end = page + max(msg.count, pend.count)  # (a run's pages left out: what waited goes on)
        for q in sorted(q for q in self.queued if page <= q < end):
            out += self._drain(q, now)
        return out

    # --- answers to this node's requests -------------------------------------------------------
    def grant(self, msg: p.Grant, data: Any, now: float) -> list[Action]:
        """Pages of a release-consistency array, from their home: the directory serves those as
        under the other managers (their pages have a home, not an owner), answering this node's
        ``PageRequest`` with a ``Grant``. The request is no longer out, for any of its pages."""
        req = self.req_of.get(msg.page)
        if req is not None:
            self._forget_run(self.pending.get(msg.page), req)
            self.req_of.pop(msg.page, None)  # (no pending: the request was given up)
        return super().grant(msg, data, now)

    def served(self, msg: p.Served, data: Any, now: float) -> list[Action]:
        """A read copy (installed, then confirmed: the owner serves the next request only
        then), or ownership (always taken: nobody else owns the page now; its copies are
        invalidated before it is used)."""
        if msg.sender in self.dead:
            return []
        page, count = msg.page, msg.count
        if count > 1 and msg.owner and (msg.copyset or msg.payload == p.Payload.NONE):
            raise ProtocolError(f"ownership of pages {page}+{count} with copies to invalidate "
                                "or no contents: a run is handed over untouched, contents and all")
        pend = self.pending.get(page)
        ours = (pend is not None and pend.first == page and pend.count >= count
                and self.req_of.get(page) == msg.req)
        back = (msg.sender, msg.sender_addr) if msg.sender else None

        def taken(installed: bool) -> Send:
            return Send(p.Taken(msg.req, page, self.node, installed,
                                list(self.answered[-ANSWERED_GATHERS_TOLD:]), count=count),
                        peer=back)

        if not msg.owner:
            if not ours:  # a read copy nobody here waits for: never installed unseen
                return [taken(False)]
            self._forget_run(pend, msg.req)
            if back is not None:
                self._learn_owner(page, count, back)
            return (self._install(p.Grant(page, count, False, msg.payload), data, now)
                    + [taken(True)])
        if ours:
            self._forget_run(pend, msg.req)
        else:
            log.warning("ownership of pages %d+%d came from %s unasked for: taken", page, count,
                        msg.sender or "the directory")
        # (a dead holder's copy died with it: no acknowledgement comes)
        copyset = {n: a for n, a in msg.copyset if n != self.node and n not in self.dead}
        served = dict(msg.served)
        served[self.node] = msg.req
        hint, owned = self.hint, self.owned
        for q in range(page, page + count):  # (a run: the directory's untouched pages, each
            hint.pop(q, None)                 # a record of its own)
            own = owned[q] = Ownership(copyset.copy(), served.copy(), version=msg.version)
        return [taken(True)] + self._invalidate_copies(page, msg.req, own, msg.payload, data,
                                                       now, count,
                                                       msg.sender if msg.invalidated else "")

    def taken(self, msg: p.Taken, now: float) -> list[Action]:
        """A requester confirmed what this node sent it."""
        page, busy = msg.page, (msg.requester, msg.req)
        own = self.owned.get(page)
        if own is not None and own.busy == busy:
            out: list[Action] = []
            owned, queued = self.owned, self.queued
            for q in range(page, page + msg.count):  # (a run of read copies)
                own = owned.get(q)
                if own is None or own.busy != busy:
                    continue
                own.busy = None
                if not msg.installed:
                    own.copyset.pop(msg.requester, None)
                if q in queued:
                    out += self._drain(q, now)
            return out
        done = set(self.answered)
        for q in range(page, page + msg.count):  # (a run handed over together)
            handing = self.handing.get(q)
            if handing is None or handing[:2] != (msg.requester, msg.req):
                continue
            del self.handing[q]
            self.passed[q] = handing[2]
            for gather in msg.answered:
                if gather not in done:  # reported by nobody but here
                    self.late.setdefault(gather, {})[q] = (msg.requester, handing[2])
        return []

    def invalidate(self, msg: p.Invalidate, reachable: Callable[[str], bool] = lambda a: True
                   ) -> list[Action]:
        """As any node core; the writer it names is the pages' probable owner from now on."""
        if msg.to_node and msg.to_node != self.node:
            for q in range(msg.page, msg.page + msg.count):
                if q not in self.owned:
                    self._learn_owner(q, 1, (msg.to_node, msg.to_addr))
        out = super().invalidate(msg, reachable)
        if msg.to_node:  # a writer it cannot reach: the directory relays (it knows no txn)
            out = [Send(p.replace(a.message, relay_to=msg.to_node))
                   if isinstance(a, Send) and a.peer is None
                   and isinstance(a.message, p.Invalidated) else a for a in out]
        return out

    def lost(self, msg: p.Lost, now: float) -> list[Action]:
        """As any node core; what waited here for the lost pages goes to the directory."""
        pend = self.pending.get(msg.page)
        if pend is not None and pend.first == msg.page:  # (the pages of its run left out too)
            self._forget_run(pend, self.req_of.get(msg.page, -1))
        out = super().lost(msg, now)
        for q in range(msg.page, msg.page + msg.count):
            self.req_of.pop(q, None)
            self.hint.pop(q, None)
        for q in range(msg.page, msg.page + max(msg.count, pend.count if pend else 1)):
            out += self._drain(q, now)
        return out

    # --- giving pages back ---------------------------------------------------------------------
    def in_flight(self) -> bool:
        """As any node core's, and the owner's: a read copy not confirmed yet, an upgrade
        awaiting acknowledgements, requests queued (``give_back`` keeps such a page: a node
        that left with it would leave it lost)."""
        return super().in_flight() or any(self.queued.values()) or any(
            own.busy is not None or own.upgrading is not None for own in self.owned.values())

    def discard(self, pages: list[int]) -> list[Action]:
        """Pages a workload removed (MADV_REMOVE): zeros everywhere where this node owns the
        page, as the owner's write of zeros: its copies are invalidated (each holder
        acknowledges to nobody waiting: the acknowledgements are taken as late) and the page,
        punched here, goes to the directory as an unmap hands it, zeros with no copy set. A
        read copy is only dropped: this node cannot discard what it does not own without a
        request this manager has not (the owner's contents stay, logged as refused); so is an
        owned page whose transfer is in flight (kept, and logged). Release-consistency pages
        held here as any node core (zeros here and at their home)."""
        release = [q for q in pages if self.state.get(q) in RELEASE_STATES]
        out: list[Action] = super().discard(release) if release else []
        if release:
            removed = set(release)
            pages = [q for q in pages if q not in removed]
        refused = []
        for page in pages:
            own = self.owned.get(page)
            if (own is None or page in self.pending or own.busy is not None
                    or own.upgrading is not None or self.queued.get(page)):
                refused.append(page)
                continue
            holders = sorted((n, a) for n, a in own.copyset.items() if n != self.node)
            if holders:
                txn = self._new_req()
                self._remember_answered((txn, page))  # (their acknowledgements: late)
                out += [Send(p.Invalidate(txn, page, 1, self.node, self.addr), peer=h)
                        for h in holders]
                own.copyset.clear()
        if refused:
            log.error("node %s: MADV_REMOVE of %d page(s) this node does not own (or whose "
                      "transfer is in flight) is no cluster-wide discard under the dynamic "
                      "manager: their copies here are dropped, the owners' contents stay",
                      self.node, len(refused))
        self.stats.count("discards", len(pages))
        return out + self.give_back(pages)

    def give_back(self, pages: list[int]) -> list[Action]:
        """Hand pages back (an unmap, a leave). An owned page's ownership goes to the directory
        (a ``Served`` to it) with the contents, the copy set and the requests served: the read
        copies stay valid, and the next owner invalidates them. A read copy is dropped here
        without a word: the owner's copy set still names this node, and its invalidation is
        acknowledged all the same. Release pages as any node core. An owned page with a
        transfer in flight or requests queued is kept: handing it away now would let a later
        writer's invalidation overtake the copy in flight."""
        release = [q for q in pages if self.state.get(q) in RELEASE_STATES]
        out = super().give_back(release) if release else []
        for page in pages:
            st = self.state.get(page)
            if page in self.pending or st in RELEASE_STATES:
                continue
            own = self.owned.get(page)
            if own is not None:
                if own.busy is not None or own.upgrading is not None or self.queued.get(page):
                    continue
                out += [Protect(page, 1), Punch(page, 1, keep=True),
                        Send(p.Served(0, page, 1, True, p.Payload.DATA, self.node, self.addr,
                                      sorted(own.copyset.items()), sorted(own.served.items()),
                                      own.version + 1), pages=(page, 1))]
                self.passed[page] = own.version + 1  # (the directory has it before any report)
                del self.owned[page]
                self.hint[page] = None  # the directory owns it (asked after it has the page)
                self.stats.count("writebacks")
            elif st is PageState.SHARED:
                out.append(Punch(page, 1))
            else:
                continue
            del self.state[page]
            if page in self._unwritten:
                self.migratory.discard(page)
            self._unwritten.discard(page)
            self.stats.count("givebacks")
            if self._tracing:
                self._trace(page, "GIVEBACK", self.node, _name(st), "invalid", count=1)
        return out

    # --- deaths, time --------------------------------------------------------------------------
    def owner_dead(self, msg: p.OwnerDead, now: float) -> list[Action]:
        """``msg.node`` is dead: forget it everywhere, tell the directory what this node owns,
        then ask the directory again for every page awaited (the request may have died on a
        chain through the dead node; ownership's ``served`` drops a duplicate)."""
        dead = msg.node
        if dead:  # (none: the directory lost track of an owner and asks who owns what)
            self.dead.add(dead)
        for page in [q for q, h in self.hint.items() if h is not None and h[0] == dead]:
            del self.hint[page]  # the directory repairs the chain
        for start in [a for a, (n, _) in self.array_owner.items() if n == dead]:
            del self.array_owner[start]
        for own in self.owned.values():
            own.copyset.pop(dead, None)
            own.served.pop(dead, None)
            if own.busy is not None and own.busy[0] == dead:
                own.busy = None
        for page, queue in self.queued.items():
            self.queued[page] = deque(m for m in queue if m.requester != dead)
        out: list[Action] = []
        for key, (sender, holders) in list(self.invalidating.items()):
            if sender == dead:  # its Invalidates may have died with it: sent again from here
                del self.invalidating[key]
                waiting = self.acks.waiting_for(key)
                out += [Send(p.Invalidate(key[0], key[1], 1, self.node, self.addr), peer=h)
                        for h in holders if h[0] in waiting]
        for txn, page in self.acks.waiting_on(dead):  # its copy died with it
            out += self.invalidated(p.Invalidated(txn, page, 1, dead), now)
        # on its way, to whom: to the dead node, it may have been installed and written there
        # (lost, unless a live node owns it now); taken by a node that had answered this
        # gather already (``late``), reported here for it
        handing = {q: (n, v) for q, (n, _, v) in self.handing.items()}
        for q, (to, v) in self.late.pop(msg.gather, {}).items():
            handing.setdefault(q, (to, v))
        for page in [q for q, (n, _, _) in self.handing.items() if n == dead]:
            del self.handing[page]  # (the confirmation will never come)
        self.answered.append(msg.gather)
        out.append(Send(p.OwnedPages(
            msg.gather, dead, sorted((q, own.version) for q, own in self.owned.items()),
            sorted((q, n, v) for q, (n, v) in handing.items()), sorted(self.passed.items()))))
        for page, req in self.req_of.items() if dead else ():
            pend = self.pending.get(page)
            if pend is not None and page not in self.owned and pend.first == page:  # (a run:
                # asked for as one; a page no longer pending was given up: ``overdue``)
                out.append(Send(p.PageRequest(req, page, pend.owns, self.node, self.addr,
                                              count=pend.count)))
        for (page, requester), fwd in self.forwarded.pop(dead, {}).items():
            if requester not in self.dead:  # (a duplicate is dropped where it was served)
                out.append(Send(fwd))
        for forwarded in self.forwarded.values():
            for key in [k for k in forwarded if k[1] == dead]:
                del forwarded[key]
        for page in list(self.queued):
            out += self._drain(page, now)
        return out

    def overdue(self, now: float, timeout_s: float) -> list[Action]:
        out = super().overdue(now, timeout_s)
        for page in [q for q in self.req_of if q not in self.pending]:
            del self.req_of[page]  # given up: a late ownership is taken all the same
        return out

    def cut_off(self) -> None:
        super().cut_off()
        self.hint.clear()
        self.array_owner.clear()
        self.owned.clear()
        self.handing.clear()
        self.queued.clear()
        self.req_of.clear()
        self.late.clear()
        self.passed.clear()
        self.forwarded.clear()
        self.migratory.clear()
        self.invalidating.clear()


def _name(state: PageState | None) -> str:
    return state.value if state is not None else "invalid"
