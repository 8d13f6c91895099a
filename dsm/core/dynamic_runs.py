"""Runs of pages under IVY's dynamic distributed manager (``dsm.core.dynamic``): which pages a
sequential fault asks for with its page (``PageRequest.count``), and which of them an owner
serves in the same answer (``Served.count``). The first page alone routes a run; its pages may
have as many owners, so each side takes only what it can vouch for and the requester's threads
ask again for the rest. ``DynamicRuns`` is mixed into ``DynamicNodeCore`` and works on its
state (its pages held, awaited and hinted, and what it owns)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsm import protocol as p
from dsm.core.actions import Action, Protect
from dsm.core.node import Pending
from dsm.core.states import PageState
from dsm.core.states import ascending_runs

if TYPE_CHECKING:
    from dsm.core.dynamic import Ownership, Peer


class DynamicRuns:
    """The run logic of ``DynamicNodeCore`` (its attributes: ``state``, ``pending``, ``hint``,
    ``req_of``, ``owned``, ``queued``, ``handing``, ``migratory``, ``_unwritten``; and its
    ``_array_owner_of``)."""

    def _run_to_ask(self, page: int, most: int) -> int:
        """``page`` and the pages after it (at most ``most``, within its array) that this node
        neither holds nor awaits, and whose probable owner is ``page``'s (or, like ``page``'s,
        unknown: the array's guessed owner, or the directory): that node may serve them with it.
        A neighbour's halo row, read again in every iteration of a stencil, is one request to its
        owner, not one per page."""
        if most <= 1:  # (no closure for a random fault)
            return 1
        state, pending, hint = self.state, self.pending, self.hint
        guess = self._array_owner_of(page)
        owner = hint.get(page, guess)
        return self._run_from(page, most, lambda q: q not in state and q not in pending
                              and hint.get(q, guess) == owner)

    def _forget_run(self, pend: Pending | None, req: int) -> None:
        """Request ``req`` (awaited as ``pend``) is answered: its pages no longer await it,
        those served as those left out (their threads ask again)."""
        if pend is None:
            return
        req_of = self.req_of
        for q in range(pend.first, pend.first + pend.count):
            if req_of.get(q) == req:
                del req_of[q]

    def _hand_run_after(self, msg: p.PageRequest, first: Ownership, to: Peer
                        ) -> tuple[int, list[Action]]:
        """A write run's pages after its first (handed over with no copies): how many more
        this node hands over in the same ``Served``, which says one copy set (none), one
        record of requests served and one version for them all: those it owns with no copies,
        no transfer in flight, nothing queued, and the first's record and version (a run
        handed out together, as a first touch's is), up to the first it cannot; and the
        protection of those writable here (before they are read out)."""
        requester, req = msg.requester, msg.req
        owned, state, queued, pending = self.owned, self.state, self.queued, self.pending
        served, version = first.served, first.version
        exclusive: list[int] = []
        n = 1
        while n < msg.count:
            q = msg.page + n
            own = owned.get(q)
            if (own is None or own.copyset or own.busy is not None or own.upgrading is not None
                    or queued.get(q) or q in pending or own.version != version
                    or {**own.served, requester: req} != served):
                break
            if state.get(q) is PageState.EXCLUSIVE:
                exclusive.append(q)
            if q in self._unwritten:  # owned since a read, handed on unwritten
                self.migratory.discard(q)
                self._unwritten.discard(q)
            del owned[q]
            state.pop(q, None)
            self.handing[q] = (requester, req, version + 1)
            self.hint[q] = to
            n += 1
        return n - 1, [Protect(first_page, count)
                       for first_page, count in ascending_runs(exclusive, p.MAX_BATCH_PAGES)]

    def _serve_run_after(self, msg: p.PageRequest) -> tuple[int, list[Action]]:
        """A read run's pages after its first (served): how many more this node serves in the
        same answer, as it serves one: those it owns with no transfer in flight and nothing
        queued, up to the first it cannot (each read copy is confirmed with the run's
        ``Taken``); and the protection of those writable here (before the copy is read)."""
        requester, req, addr = msg.requester, msg.req, msg.reply_to
        owned, state, queued, pending = self.owned, self.state, self.queued, self.pending
        # (a scan serves runs of a thousand pages: the loop's names are bound once)
        busy, unwritten, exclusive_state, shared = ((requester, req), self._unwritten,
                                                    PageState.EXCLUSIVE, PageState.SHARED)
        exclusive: list[int] = []
        n, page, count = 1, msg.page, msg.count
        while n < count:
            q = page + n
            own = owned.get(q)
            if (own is None or own.busy is not None or own.upgrading is not None
                    or queued.get(q) or q in pending or own.served.get(requester, 0) >= req):
                break
            own.served[requester] = req
            own.copyset[requester] = addr
            own.busy = busy
            if state.get(q) is exclusive_state:
                exclusive.append(q)
            state[q] = shared
            unwritten.discard(q)
            n += 1
        return n - 1, [Protect(first, count)
                       for first, count in ascending_runs(exclusive, p.MAX_BATCH_PAGES)]
