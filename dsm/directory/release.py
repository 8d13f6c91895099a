"""The homes of release-consistency pages, at their manager (home-based lazy release
consistency, HLRC: Zhou, Iftode and Li, 1996). A state machine with no sockets.

An array made with ``consistency="release"`` has no owners: any node may hold a copy of any of
its pages and write it, several at once. This manager keeps each page's home copy, which is
always the merge of every release so far:

- a node that faults on a page gets the home copy (``Grant`` with ``release``), at once: no
  transaction, no invalidation;
- a page only one node has asked for is that node's *private* page (ArgoDSM classifies pages
  so): granted writable, it needs no twin, no diff and no notice, and costs what a sequential
  page owned by one node costs; when a second node asks, the holder is asked for it
  (``Fetch``, keeping a clean copy), and the page is shared from then on;
- at a release (lock release, barrier arrival) a node sends the bytes it changed since its twin
  (``Diff``), which are written into the home copy in the order they arrive (the later release
  wins where two wrote the same bytes), and answered ``DiffApplied`` by a shard other than the
  coordinator (the coordinator gets the release after the diff, on the same pipe);
- a node that twins a page says so first (``Dirtied``): should it die before its Diff, the
  page's newest contents died with it, and the page is lost, loudly, as an owned page would be;
  the pages a lock's grant carries (``carry``) are dirtied by the grant itself, which the node
  installs twinned and writable without a Dirtied each (one message less per locked update):
  they stay dirtied until their Diff, or the release of that lock (every page the node twinned
  sends its Diff before it, on the same pipe; one it did not install has nothing to send);
- a Discard (MADV_REMOVE) zeroes the home copy at once.

Why the manager is the home (rather than a node, as in HLRC's papers): it holds every page's
home copy already (the relay manager's store, ``HomeStore``), it survives every node, and the
nodes need no address the others can reach. Which pages are release pages is the allocation
table's word (``is_release``), never a node's: at a sharded manager every shard knows an array
before any node can ask for one of its pages (``ArrayKnown``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple

from dsm.core.states import runs as page_runs, unpack_runs
from dsm.directory.home import HomeStore
from dsm.protocol import MAX_BATCH_PAGES, Changed, DiffApplied, Fetch, Grant, Payload


#: the numbers of this manager's Fetches of private pages (apart from the page transactions')
PRIVATE_FETCH_TXN_BASE = 1 << 62


class Asker(NamedTuple):
    """A node's request waiting for a private holder's contents: ``asked`` is the first page
    it asked for, which its answer must start at (the node takes a grant as the answer to
    the request for the grant's first page; one request is answered by one grant)."""
    node: str
    write: bool
    asked: int


class ReleaseHomes:
    def __init__(self, home: HomeStore, is_release: Callable[[int], bool]):
        self.home = home
        self.covers = is_release
        #: page -> the nodes that twinned it and have not sent their diff yet
        self.dirty: dict[int, set[str]] = {}
        #: (node, lock) -> the pages that lock's grant carried to that node and dirtied there,
        #: not dirtied since by a Dirtied of the node's own nor diffed: the lock's release
        #: ends them (``released``)
        self.carried: dict[tuple[str, str], set[int]] = {}
        #: page -> the first node that asked for it: while no other node does, it is that
        #: node's private page (granted writable, no twins, no diffs: ArgoDSM's private
        #: classification), and the home copy is not current while it holds it
        self.first: dict[int, str] = {}
        #: page -> the node holding it privately now
        self.private: dict[int, str] = {}
        #: pages a second node asked for: shared from then on (twins and diffs)
        self.shared: set[int] = set()
        #: page -> the requests waiting for its private holder's contents (a Fetch is out)
        self.waiting: dict[int, list[Asker]] = {}
        #: page -> the holder that Fetch went to, and the Fetch's number: an answer to an
        #: earlier Fetch of the page from the same holder (late: it gave the page back, took it
        #: again, and a new Fetch went) is not the answer to this one
        self.fetching: dict[int, tuple[str, int]] = {}
        self._next_txn = PRIVATE_FETCH_TXN_BASE
        self.counters = {"release_reads": 0, "private_grants": 0, "private_fetches": 0,
                         "diffs": 0, "diff_bytes": 0, "guarded_pages_carried": 0}

    def _kind(self, node: str, page: int) -> str:
        """How ``page`` is served to ``node``: "private", "shared", "fetch" (its private holder
        must send it home first) or "wait" (that is under way)."""
        if page in self.waiting:
            return "wait"
        holder = self.private.get(page)
        if holder is not None and holder != node:
            return "fetch"
        if page not in self.shared and self.first.get(page, node) == node:
            return "private"
        return "shared"

    def read(self, node: str, page: int, count: int, usable: Callable[[int], bool],
             write: bool = False) -> list[tuple[str, Any, Any]]:
        """What to send for ``node``'s request of ``page`` and up to ``count - 1`` pages after
        it (those of the same kind, release pages too and ``usable``, not lost): a grant of
        the home copy (writable when private), or a Fetch to the private holder, the request
        waiting for its answer. As (node, message, page bytes). A node that faulted writing
        (``write``) on another's private page takes it over, private (the holder gives it
        up: a page initialized by one node and then worked on by another moves once, as an
        owned sequential page does); a reader makes it shared."""
        kind = self._kind(node, page)
        if kind == "wait":
            # an earlier request of this node for the page, still waiting here, was answered
            # in part and dropped by the node, or it would not ask again: only this one is
            # answered (two grants of one page, one of them answering nothing, and possibly
            # arriving after the node wrote the page and gave it back)
            self.waiting[page] = [w for w in self.waiting[page] if w.node != node]
            self.waiting[page].append(Asker(node, write, page))
            return []
        if kind == "fetch":  # the run of pages it holds privately, in one Fetch
            holder = self.private[page]
            n = 1
            while (n < count and self.covers(page + n) and usable(page + n)
                   and self.private.get(page + n) == holder and page + n not in self.waiting):
                n += 1
            self._next_txn += 1
            for q in range(page, page + n):
                del self.private[q]
                if not write:
                    self.shared.add(q)  # a second node reads it: shared from now on
                self.waiting[q] = [Asker(node, write, page)]
                self.fetching[q] = (holder, self._next_txn)
            self.counters["private_fetches"] += 1
            return [(holder, Fetch(self._next_txn, page, n, not write), None)]
        n = 1
        while (n < count and self.covers(page + n) and usable(page + n)
               and self._kind(node, page + n) == kind):
            n += 1
        private = kind == "private"
        for q in range(page, page + n):
            if private:
                self.first[q] = self.private[q] = node
            elif self.first.setdefault(q, node) != node:
                self.shared.add(q)
        payload, data = self.home.get(page, n)
        self.counters["private_grants" if private else "release_reads"] += 1
        return [(node, Grant(page, n, private, payload, release=True), data)]

    def fetched(self, node: str, txn: int, page: int, count: int, payload: int, data: Any,
                not_held: Iterable[int] = ()) -> list[tuple[str, Any, Any]]:
        """The private holder's contents (it keeps a clean copy), answering Fetch ``txn``:
        home, then to the waiting. Only the pages that Fetch still waits for, and that the
        holder still held, go home: one it gave back meanwhile (``not_held``: its bytes in the
        answer are nothing) had its Writeback come first, on the same pipe, which put its
        contents home and ended its fetch already."""
        run = range(page, page + count)
        asked = (node, txn)
        stale = frozenset(q for q in run if self.fetching.get(q) != asked) | frozenset(
            q for q in not_held if q in run)
        if payload != Payload.NONE:  # NONE: it had given them all back
            self.home.put(page, count, payload, data, skip=stale)
        grants: list[tuple[Asker, bool, int]] = []  # (request, private, page), in page order
        for q in run:
            if self.fetching.get(q) != asked:
                continue  # not asked of it (a stray or late answer): nothing waits on it
            grants += self._fetch_ended(q)
        return self._grant_runs(grants)

    def _fetch_ended(self, q: int) -> list[tuple[Asker, bool, int]]:
        """Page ``q``'s home copy is current again: the grants of those who waited for it."""
        del self.fetching[q]
        waiting = self.waiting.pop(q, [])
        if len(waiting) == 1 and waiting[0].write and q not in self.shared:
            taker = waiting[0].node  # one writer: the page is its private page now
            self.first[q] = self.private[q] = taker
            return [(waiting[0], True, q)]
        self.shared.add(q)
        return [(w, False, q) for w in waiting]

    def _grant_runs(self, grants: list[tuple[Asker, bool, int]]) -> list[tuple[str, Any, Any]]:
        """One Grant per request: its pages, from the first it asked for. Where some of them
        would be that node's private pages and some shared, all are shared (always safe:
        private only spares the twins): two grants would answer one request, and the second,
        asked by nobody, could land on a page the node has written since."""
        by_request: dict[Asker, list[tuple[bool, int]]] = {}
        for asker, private, q in grants:
            by_request.setdefault(asker, []).append((private, q))
        out = []
        for asker, pages in by_request.items():
            private = all(priv for priv, _ in pages)
            if not private:
                for priv, q in pages:
                    if priv:
                        del self.private[q]
                        self.shared.add(q)
            for first, count in page_runs(sorted(q for _, q in pages), MAX_BATCH_PAGES):
                payload, data = self.home.get(first, count)
                self.counters["private_grants" if private else "release_reads"] += 1
                out.append((asker.node, Grant(first, count, private, payload, release=True),
                            data))
        return out

    def carry(self, node: str, lock: str, guards: list[int], usable: Callable[[int], bool],
              broken: bool = False) -> tuple[list[int], bytes]:
        """The home copies a lock's grant carries to ``node`` of the pages it guards
        (``guards``, runs): as (runs carried, their bytes one after another). Carried are the
        release pages (``covers``) that are ``usable`` (not lost) and whose home copy is
        current: not another node's private page (its holder has the newest contents) and no
        Fetch under way. A page ``node`` holds privately is not sent (it has it, writable).
        The others are left to fault, as without guards. A grant that is ``broken`` (its last
        holder died holding the lock) carries no page some node has unreleased changes to:
        the dead holder's may be among them, and whether the page is lost is for a fault to
        learn, as without guards. A carried page is shared from then on: its writers twin it
        and send their diffs home at each release, which is what the next grant carries.
        The carried pages are dirtied by ``node`` from now on (the grant is its Dirtied), until
        their Diff or its release of ``lock``."""
        named = unpack_runs(guards)  # (runs may overlap: bounded in all)
        pages = sorted(q for q in named if self.covers(q) and usable(q)
                       and q not in self.waiting and q not in self.private
                       and not (broken and q in self.dirty))
        if not pages:
            return [], b""
        size = self.home.page_size
        out = bytearray(len(pages) * size)
        runs: list[int] = []
        i = 0
        for first, count in page_runs(pages, MAX_BATCH_PAGES):  # (a lock guards no more)
            payload, data = self.home.get(first, count)
            if data is not None:  # (ZERO: the buffer's zeros stand for it)
                out[i * size:(i + count) * size] = data
            i += count
            runs += [first, count]
            for q in range(first, first + count):
                self.first.setdefault(q, node)
                self.shared.add(q)
        self.dirtied(node, pages)
        self.carried.setdefault((node, lock), set()).update(pages)
        self.counters["guarded_pages_carried"] += len(pages)
        return runs, bytes(out)

    def home_grant(self, page: int) -> tuple[Grant, Any]:
        payload, data = self.home.get(page, 1)
        self.counters["release_reads"] += 1
        return Grant(page, 1, False, payload, release=True), data

    def written_back(self, node: str, page: int, count: int, payload: int,
                     data: Any) -> list[tuple[str, Any, Any]]:
        """A private holder gives its pages back (unmap, leave): the home copy is current. A
        Fetch that crossed the Writeback is answered after it, these pages not held (NONE when
        it gave back the whole run; else ``fetched`` leaves them): whoever waits for the page
        is served now, from the home copy (so that the holder's death before its answer loses
        nothing)."""
        grants: list[tuple[Asker, bool, int]] = []
        for q in range(page, page + count):
            fetched_from_it = self.fetching.get(q, ("",))[0] == node
            if self.private.get(q) == node or fetched_from_it:
                self.private.pop(q, None)
                self.home.put(q, 1, payload,
                              None if data is None else
                              memoryview(data)[(q - page) * self.home.page_size:
                                               (q - page + 1) * self.home.page_size])
                if fetched_from_it:
                    grants += self._fetch_ended(q)
        return self._grant_runs(grants)

    def dirtied(self, node: str, pages: list[int]) -> None:
        for q in pages:
            self.dirty.setdefault(q, set()).add(node)

    def _not_carried(self, node: str, pages: Iterable[int]) -> None:
        """``node`` said itself that it dirtied ``pages``, or diffed them: no lock's release
        ends their being dirtied by it any more (their Diff does)."""
        for (holder, _), carried in self.carried.items():
            if holder == node:
                carried.difference_update(pages)

    def explicitly_dirtied(self, node: str, pages: list[int]) -> None:
        """A Dirtied: ``node`` twinned ``pages`` itself (a write fault on a clean copy)."""
        self.dirtied(node, pages)
        if self.carried:
            self._not_carried(node, pages)

    def released(self, node: str, lock: str) -> None:
        """``node`` released ``lock``: the pages its grant carried and dirtied are clean there
        now (the node sent the Diff of every page it twinned before the release, on this pipe;
        one it did not install it never twinned)."""
        for q in self.carried.pop((node, lock), ()):
            self._clean(node, q)

    def _clean(self, node: str, q: int) -> None:
        writers = self.dirty.get(q)
        if writers is not None:
            writers.discard(node)
            if not writers:
                del self.dirty[q]

    def apply(self, node: str, req: int, page: int, count: int, changed: Changed | None,
              data: Any) -> DiffApplied:
        """Write ``node``'s diff (``changed``: which bytes of the run, ``Diff.changed``, None
        when nothing changed) into the home copies; its pages are no longer dirty there."""
        self.home.patch(page, count, changed, data)
        for q in range(page, page + count):
            self._clean(node, q)
        if self.carried:
            self._not_carried(node, range(page, page + count))
        self.counters["diffs"] += 1
        self.counters["diff_bytes"] += len(data) if data is not None else 0
        return DiffApplied(req, page)

    def discard(self, node: str, page: int) -> None:
        self.home.clear(page, 1)
        if self.private.get(page) == node:
            del self.private[page]

    def pages_held(self) -> set[int]:
        """The pages with any state here beyond their home copy."""
        return (set(self.dirty) | set(self.first) | set(self.private) | self.shared
                | set(self.waiting) | set(self.fetching))

    def forget(self, page: int) -> None:
        """``page`` belongs to a freed array nobody holds: no state of it is kept."""
        self.home.clear(page, 1)
        for table in (self.dirty, self.first, self.private, self.waiting, self.fetching):
            table.pop(page, None)
        self.shared.discard(page)
        for carried in self.carried.values():
            carried.discard(page)

    def node_lost(self, node: str) -> tuple[list[int], list[tuple[str, int]]]:
        """``node`` is gone: the pages it was changing and had not sent the diff of, and those
        it held privately (their newest contents died with it); and the requests that waited
        for its private pages, as (node, page)."""
        self.carried = {key: pages for key, pages in self.carried.items() if key[0] != node}
        lost = {q for q, writers in self.dirty.items() if node in writers}
        for q in lost:
            self.dirty[q].discard(node)
            if not self.dirty[q]:
                del self.dirty[q]
        held = [q for q, holder in self.private.items() if holder == node]
        for q in held:
            del self.private[q]
        fetched_from = [q for q, (holder, _) in self.fetching.items() if holder == node]
        for q in fetched_from:
            del self.fetching[q]
        lost.update(held, fetched_from)
        waiting = []
        for q in fetched_from:
            waiting += [(w.node, q) for w in self.waiting.pop(q, []) if w.node != node]
        for q in list(self.waiting):  # a requester that died waits no more
            self.waiting[q] = [w for w in self.waiting[q] if w.node != node]
        return sorted(lost), waiting

    def describe(self, page: int) -> str:
        holder = self.private.get(page)
        if holder is not None:
            return f"private:{holder}"
        writers = self.dirty.get(page)
        return "release home" + ("{" + ",".join(sorted(writers)) + " writing}" if writers else "")
