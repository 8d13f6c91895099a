"""The directory's side of IVY's dynamic distributed manager (``--manager dynamic``; the node's
side is ``dsm.core.dynamic``; docs/architecture.md, "The dynamic distributed manager").

The directory is one node of the chains, off the fault's path once a page has an owner:

- it owns every page nobody has been handed (untouched: zeros) or that was given back (its
  home copy, with the read copies still out and the requests served, which the old owner sent
  along with it). A request for such a page is answered with ownership, read or write alike:
  the directory keeps no read copies' serialization of its own, and a reader handed ownership
  installs it write-protected (as a migratory grant), so its read costs what it would;
- for every other page it keeps a probable owner (``last_owner``: the node it last handed the
  page to, or that a gather found owning it) and forwards requests to it;
- a node's death starts a *gather*: every live node is told (``OwnerDead``) and answers with the
  pages it owns, those on their way from it and the last versions it handed on
  (``OwnedPages``; ownership's version grows by one at every transfer). Page requests reaching
  the directory meanwhile are held; once every live node has answered, the newest version
  reported of each page tells where it lives, and a page whose newest version no live node
  holds or is receiving is lost (``LostPages``): its newest contents died with a node. A death
  while gathers are open replaces them; the held requests go on once none is open.

Release-consistency pages are not the dynamic manager's: a request for one is served by its
home as an ``Acquire`` is (``PageDirectory.acquire``), and answered with a ``Grant``; their
twins, diffs and write notices go as under the other managers. ``DynamicPages`` is built on a
``PageDirectory`` (its home copies, lost pages, live nodes and release homes) and adds its
messages to the directory's table (``handlers``).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from dsm import protocol as p
from dsm.errors import ProtocolError
from dsm.directory.pages.inputs import PageDirectory
from dsm.directory.pages.loss import UNKNOWN_NODE
from dsm.directory.pages.state import OnLoss, Send
from dsm.core.states import runs as page_runs

log = logging.getLogger(__name__)


@dataclass
class Gather:
    """One death's gather: the live nodes yet to answer, and the pages they reported owning."""

    id: int
    dead: str
    waiting: set[str]
    #: page -> its newest report: (version, what, node), ``what`` ranking the reports of one
    #: version: OWNED (the node owns it), HANDING (on its way to the node), PASSED (the node
    #: reporting handed it on and had it confirmed)
    newest: dict[int, tuple[int, int, str]] = field(default_factory=dict)
    #: the death the lost pages are told of (the first of the gathers this one replaces)
    blamed: str = ""


#: what a gather's report of a page says, ranked among reports of one version
PASSED, HANDING, OWNED = 0, 1, 2
#: no report of a page (older than any)
NO_REPORT = (-1, PASSED, "")


class DynamicPages:
    def __init__(self, pages: PageDirectory):
        self.pages = pages
        #: page -> the newest version of its ownership the directory knows (``Served.version``)
        self.version: dict[int, int] = {}
        #: page -> the node the directory takes as its probable owner; absent: the directory
        #: owns the page (untouched, or given back)
        self.last_owner: dict[int, str] = {}
        #: pages the directory owns with read copies out: node -> peer endpoint (the next owner
        #: invalidates them)
        self.copyset: dict[int, dict[str, str]] = {}
        #: pages the directory owns: the last request of each node served (ownership carries it)
        self.served: dict[int, dict[str, int]] = {}
        self.gathers: dict[int, Gather] = {}
        #: page requests that reached the directory while a gather was open, in order
        self.held: deque[p.PageRequest] = deque()
        #: requests of the directory's probable owner held for a gather: (requester, request,
        #: page). Met again after it with the same owner, they are answered already
        self._gathered: set[tuple[str, int, int]] = set()
        self._next_gather = 1
        for name in ("dynamic_served", "dynamic_forwards", "dynamic_given_back",
                     "dynamic_gathers", "dynamic_max_hops", "dynamic_relayed"):
            pages.counters.setdefault(name, 0)

    def handlers(self) -> dict[type, Any]:
        """The dynamic manager's messages from a node: ``(node, message, page data) -> the
        messages to send``, beside ``page_handlers`` in the directory's table."""
        pages = self.pages
        return {
            p.PageRequest: lambda n, m, d: (self._relay(m, d) if m.relay_to
                                            else self.page_request(m, n)),
            p.Served: lambda n, m, d: self._relay(m, d) if m.relay_to else self.given_back(n, m, d),
            # ownership arrived: nothing waits for it here
            p.Taken: lambda n, m, d: self._relay(m, d) if m.relay_to else [],
            p.Invalidate: lambda n, m, d: self._relay(m, d),
            p.Invalidated: lambda n, m, d: (self._relay(m, d) if m.relay_to else
                                            pages.invalidated(n, m.txn, m.page, m.count)),
            p.OwnedPages: lambda n, m, d: self.owned_pages(n, m),
        }

    def service_handlers(self) -> dict[type, Callable[[str, Any, Any], list[Send]]]:
        """The directory service's table under this manager: its messages (``handlers``), and
        a ``Discard``: of release-consistency pages, as under the other managers (zeros at their
        home); of the others, refused (no directory transaction covers a page the nodes own:
        the nodes hand the pages back instead, ``DynamicNodeCore.discard``); and an ``Acquire``,
        of release pages only (their home serves them)."""
        return {
            **self.handlers(),
            p.Discard: lambda n, m, d: self._discard(n, m),
            p.Acquire: lambda n, m, d: self._acquire(n, m),
        }

    def _acquire(self, node: str, msg: p.Acquire) -> list[Send]:
        """A release page asked of its home. Any other page is asked of its probable owner
        (``PageRequest``): an ``Acquire`` of one is refused, as the central manager's
        transactions it would start know nothing of who owns the page now (it would hand the
        page to a second writer)."""
        if not self.pages.release.covers(msg.page):
            raise ProtocolError(f"Acquire of page {msg.page}, which is not in a release-"
                                "consistency array: under the dynamic manager a node asks a "
                                "page's probable owner for it (PageRequest)")
        return self.pages.acquire(node, msg.page, msg.count, msg.write, msg.have_copy,
                                  msg.untouched)

    def _discard(self, node: str, msg: p.Discard) -> list[Send]:
        pages = self.pages
        release = [q for q in msg.pages if pages.release.covers(q)]
        refused = len(msg.pages) - len(release)
        if refused:
            log.error("node %s discarded %d page(s) (MADV_REMOVE): the dynamic manager has no "
                      "cluster-wide discard (its pages are owned by the nodes, not kept here): "
                      "ignored", node, refused)
        return [s for q in release for s in pages.discard(node, q)]

    def _relay(self, msg: Any, data: Any) -> list[Send]:
        """A node-to-node message whose sender could not reach the node it names: relayed
        (the directory reaches every live node)."""
        to = msg.relay_to
        if not to or to not in self.pages.peers:
            if isinstance(msg, p.Served) and msg.owner and msg.payload != p.Payload.NONE:
                # ownership on its way to a node that died: its sender gave the page up, and
                # its newest contents are here, not with the dead node. The directory takes
                # the page as it would one given back; relayed into the void, a live node's
                # write would be declared lost by the gather (its sender reports the page
                # handed to the dead node)
                log.info("page %d: ownership for %s, which is gone, taken by the directory",
                         msg.page, to or "nobody")
                return self.given_back(msg.sender, msg, data)
            # (anything else died with the node it was for: a read copy, an acknowledgement,
            # or ownership whose contents the dead node held alone, payload NONE)
            log.info("%s for %s, which is gone: not relayed", type(msg).__name__, to or "nobody")
            return []
        self.pages.counters["dynamic_relayed"] += 1
        return [Send(to, p.replace(msg, relay_to=""), data)]

    # --- requests ------------------------------------------------------------------------------
    def page_request(self, msg: p.PageRequest, sender: str = "") -> list[Send]:
        """Serve it (the directory owns the page), forward it along the probable owner, or
        hold it while a gather is open (the owners are not known yet). ``sender``: the node
        it came from."""
        pages = self.pages
        requester, page = msg.requester, msg.page
        pages.layout.check_page(page)
        if requester in pages._dead:
            return []
        if self.gathers:
            self.held.append(msg)
            return []
        counters = pages.counters
        counters["dynamic_max_hops"] = max(counters["dynamic_max_hops"], msg.hops)
        if page in pages.lost:
            return [pages.losses.answer(requester, page, 1)]
        if pages.release.covers(page):  # its home serves it, as an Acquire
            return pages.acquire(requester, page, 1, msg.write, False)
        owner = self.last_owner.get(page)
        if owner is None:
            return self._hand_over(msg)
        if owner == requester:
            # the directory's probable owner asks: it handed the page on since (no path
            # compression here) and could not reach its own probable owner, or its request is
            # a copy re-sent at a death while it owns the page or receives it. A gather tells;
            # if it finds the requester owning or receiving the page, the request is answered
            # already (or will be): dropped
            key = (requester, msg.req, page)
            if key in self._gathered:
                self._gathered.discard(key)
                log.info("page %d: request %d of %s, which owns it or is being handed it: "
                         "dropped", page, msg.req, requester)
                return []
            self._gathered.add(key)
            self.held.append(msg)
            return self._start_gather("")
        went_round = sender == requester and msg.hops > 0
        if owner == sender or went_round and (requester, msg.req, page) not in self._gathered:
            # the node the directory takes as the owner sends the request back (it does not
            # own the page and knows no better), or the request came back to its requester
            # (the hints went round a cycle). Every live node is asked what it owns; the
            # request waits for the answers
            if went_round:
                self._gathered.add((requester, msg.req, page))
            self.held.append(msg)
            return self._start_gather("")
        # (no path compression on a forwarded write: see ``DynamicNodeCore._forward``)
        counters["dynamic_forwards"] += 1
        if pages._tracing:
            pages._trace(page, "FORWARD", requester, "", "", count=1, to=owner, hops=msg.hops + 1)
        return [Send(owner, p.replace(msg, hops=msg.hops + 1))]

    def _hand_over(self, msg: p.PageRequest) -> list[Send]:
        """Ownership of a page the directory owns, with its home copy (none if the requester
        holds a current read copy), the read copies to invalidate and the requests served."""
        pages, page, requester = self.pages, msg.page, msg.requester
        if msg.count > 1 and page not in self.version:
            return self._hand_over_untouched(msg)
        served = self.served.pop(page, {})
        if served.get(requester, 0) >= msg.req:  # re-sent after a death, served already
            self.served[page] = served
            return []
        served[requester] = msg.req
        copies = self.copyset.pop(page, {})
        has_copy = msg.have_copy and requester in copies
        payload, data = (p.Payload.NONE, None) if has_copy else pages.home.get(page, 1)
        others = sorted((n, a) for n, a in copies.items() if n != requester)
        self.last_owner[page] = requester
        version = self.version[page] = self.version.get(page, 0) + 1
        pages.granted[page] = True
        pages.counters["dynamic_served"] += 1
        if pages._tracing:
            pages._trace(page, "SERVE", "directory", "home", f"owned:{requester}", count=1,
                         to=requester, write=msg.write, hops=msg.hops)
        return [Send(requester, p.Served(msg.req, page, 1, True, payload, "", "", others,
                                         sorted(served.items()), version), data)]

    def _hand_over_untouched(self, msg: p.PageRequest) -> list[Send]:
        """A run request whose first page nobody has touched: ownership of it and of the
        untouched pages after it (never handed out: zeros, no copies, nobody served), up to the
        run's end or the first page that is not, in one ``Served`` (a fresh array's first
        touch costs a round trip a run, not a page)."""
        pages, page, requester = self.pages, msg.page, msg.requester
        pages.layout.check_page(page + msg.count - 1)
        version, lost, covers = self.version, pages.lost, pages.release.covers
        count = 1
        while count < msg.count:
            q = page + count
            if q in version or q in lost or covers(q):
                break
            count += 1
        run = range(page, page + count)
        self.last_owner.update(dict.fromkeys(run, requester))
        version.update(dict.fromkeys(run, 1))
        pages.granted[page:page + count] = True
        pages.counters["dynamic_served"] += 1
        payload, data = pages.home.get(page, count)
        if pages._tracing:
            pages._trace(page, "SERVE", "directory", "home", f"owned:{requester}", count=count,
                         to=requester, write=msg.write, hops=msg.hops)
        return [Send(requester, p.Served(msg.req, page, count, True, payload, "", "", [],
                                         [(requester, msg.req)], 1), data)]

    def given_back(self, node: str, msg: p.Served, data: Any) -> list[Send]:
        """An owner hands a page back (an unmap, a leave): the directory owns it again, with
        its contents, its read copies and the requests served."""
        pages, page = self.pages, msg.page
        pages.layout.check_page(page)
        if not msg.owner or self.last_owner.get(page) is None and page not in self.served:
            log.warning("page %d handed back by %s, which the directory did not hand out: "
                        "ignored", page, node)
            return []
        pages.home.put(page, 1, msg.payload, data)
        self.last_owner.pop(page, None)
        self.version[page] = max(self.version.get(page, 0), msg.version)
        self.copyset[page] = {n: a for n, a in msg.copyset if n not in pages._dead}
        self.served[page] = {n: r for n, r in msg.served if n not in pages._dead}
        pages.counters["dynamic_given_back"] += 1
        if pages._tracing:
            pages._trace(page, "WRITEBACK", node, f"owned:{node}", "home{}", count=1)
        return []

    # --- deaths --------------------------------------------------------------------------------
    def node_lost(self, node: str) -> list[Send]:
        """``node`` left or died: the page directory forgets it (release pages, live nodes),
        then every live node is asked which pages it owns."""
        pages = self.pages
        out = pages.node_lost(node)
        for copies in self.copyset.values():
            copies.pop(node, None)
        for served in self.served.values():
            served.pop(node, None)
        self.held = deque(m for m in self.held if m.requester != node)
        # an open gather cannot decide any more: if the node has not answered, the pages it
        # would have reported (those it owned, or handed on to a node that had answered) are
        # owned or lost for all anyone else can tell; if it has, it may have handed a page on
        # since, to a node that had answered too. The new gather asks everyone again and
        # decides for all of them
        superseded = list(self.gathers.values())
        for g in superseded:
            del self.gathers[g.id]
        first_dead = min((g.id, g.dead) for g in superseded)[1] if superseded else node
        return out + self._start_gather(node, blamed=first_dead or node)

    def _start_gather(self, dead: str, blamed: str = "") -> list[Send]:
        """Ask every live node which pages it owns, after ``dead``'s death (none: the
        directory lost track of an owner); the pages it finds lost are ``blamed``'s (the
        first death of the gathers it replaces)."""
        pages = self.pages
        live = sorted(pages.peers)
        gather = Gather(self._next_gather, dead, set(live), blamed=blamed or dead)
        self._next_gather += 1
        pages.counters["dynamic_gathers"] += 1
        if not live:
            return self._close(gather)
        self.gathers[gather.id] = gather
        return [Send(n, p.OwnerDead(gather.id, dead)) for n in live]

    def owned_pages(self, node: str, msg: p.OwnedPages) -> list[Send]:
        gather = self.gathers.get(msg.gather)
        if gather is None or node not in gather.waiting:
            log.warning("OwnedPages from %s for gather %d, which does not wait for it: ignored",
                        node, msg.gather)
            return []
        reports = [(page, (v, OWNED, node)) for page, v in msg.owned]
        reports += [(page, (v, HANDING, to)) for page, to, v in msg.handing]
        reports += [(page, (v, PASSED, node)) for page, v in msg.passed]
        newest = gather.newest
        for page, report in reports:
            if page in self.last_owner and report > newest.get(page, NO_REPORT):
                newest[page] = report
        return self._answered(gather, node)

    def _answered(self, gather: Gather, node: str) -> list[Send]:
        gather.waiting.discard(node)
        if gather.waiting:
            return []
        del self.gathers[gather.id]
        return self._close(gather)

    def _close(self, gather: Gather) -> list[Send]:
        """Every live node answered. Of each page handed out, the newest version reported
        tells: owned by a live node, or on its way to one, the page lives there; on its way to
        a dead node, or handed on and confirmed with nothing newer reported (its taker died),
        or reported by nobody, it is lost. Then the held requests go on."""
        pages = self.pages
        live = pages.peers
        lost = []
        for page in list(self.last_owner):
            version, what, node = gather.newest.get(page, NO_REPORT)
            if what in (OWNED, HANDING) and node in live and version >= self.version.get(page, 0):
                self.last_owner[page] = node
                self.version[page] = version
            elif page not in pages.lost:
                del self.last_owner[page]
                lost.append(page)
        if lost:
            pages.losses.record(gather.blamed or UNKNOWN_NODE, lost)
            if pages.on_loss is OnLoss.LAST_COPY:  # served from the home copy again
                for page in lost:
                    self.copyset.pop(page, None)
            log.error("gather %d after %s's death: %d page(s) no live node owns (%s)", gather.id,
                      gather.blamed or "no", len(lost), ", ".join(f"{f}+{c}" for f, c in
                                                        page_runs(lost, 1 << 20)[:8]))
        out: list[Send] = []
        if not self.gathers:
            held, self.held = self.held, deque()
            for msg in held:
                out += self.page_request(msg)
        return out
