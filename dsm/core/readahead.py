"""Sequential-fault detection, as the kernel's readahead does it: per process and access kind,
faults that follow each other page after page open a window that then doubles on every fault at
the end of the last request (up to a maximum); anything else resets it to one page. So a random
pattern never pays for pages it does not use, and a short run (a stencil's halo row, a few pages of
a neighbour's band) does not drag in pages that another node is writing.

A stream whose window has grown large also keeps requests flowing ahead of its faults
("asynchronous read-ahead"), at most two windows beyond the last fault, so that a scan finds its
pages installed.

Runs also repeat: a stencil reads the same halo row of a neighbour's band in every iteration, a
matrix is scanned in every pass, and each time the pages were invalidated in between. So the
extent of every run of sequential faults that ended is remembered by its first page: a later
fault at that page, starting a new stream, asks for the whole extent at once (one round trip for
a 2-page halo row, not two; a rescan at full window from its first fault). Only what the same
process faulted in sequence from that very page is ever asked for again.

A writer that writes in order also asks for a run of *untouched* pages (``untouched_run``): the
directory grants, with the page, the following ones nobody has been granted since their array
was allocated (zeros, at home, no copies), so a fresh array costs a round trip per run, not per
window. Only a writer in order: a random one would take pages other nodes are about to write."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable


#: sequential faults in a row before the window opens
SEQUENTIAL_FAULTS_TO_OPEN = 3
#: the window it opens with
OPENING_WINDOW_PAGES = 4
#: the window from which requests are also sent ahead of the faults
ASYNC_MIN_WINDOW_PAGES = 32
#: how many windows ahead of the last fault asynchronous requests may reach
ASYNC_AHEAD_WINDOWS = 2
#: ended runs remembered per stream (the oldest forgotten first): a stencil's halo rows and
#: band edges, a few arrays' scans
REMEMBERED_RUNS = 1024
#: sequential write faults in a row after which a writer also asks for a run of untouched pages
#: (``Acquire.untouched``): from its second, so that a random writer never takes pages of a
#: fresh array that other nodes are about to write
UNTOUCHED_AFTER_FAULTS = 2
#: the longest run of untouched pages one write request is granted (4 MiB of 4 KiB pages, as
#: many as one message may name): a fresh 32 MiB array written in order costs about 9 round
#: trips, not one per page or per read-ahead window; the directory grants no longer run
UNTOUCHED_RUN_PAGES = 1024


@dataclass
class Stream:
    first: int  #: the page of its first fault
    next_page: int  #: where the next request of the stream starts
    window: int  #: pages per request
    last_fault: int  #: the page of the last fault
    hits: int = 1  #: sequential faults in a row


class ReadAhead:
    def __init__(self, max_window_pages: int):
        self.max_window = max_window_pages
        self._streams: dict[Hashable, Stream] = {}
        #: per stream key, ended runs: first page -> pages (insertion order: oldest first)
        self._runs: dict[Hashable, dict[int, int]] = {}

    def on_fault(self, key: Hashable, page: int, recall: bool = True) -> int:
        """A fault at ``page``: how many pages to ask for from it (``recall``: a new stream may
        start at the extent of a remembered run)."""
        s = self._streams.get(key)
        if s is not None and s.last_fault < page <= s.next_page:
            s.hits += 1
            if s.window > 1:
                s.window = min(s.window * 2, self.max_window)
            elif s.hits >= SEQUENTIAL_FAULTS_TO_OPEN:
                s.window = OPENING_WINDOW_PAGES
        else:
            if s is not None:
                self._remember(key, s)
            window = min(self._runs.get(key, {}).get(page, 1), self.max_window) if recall else 1
            s = self._streams[key] = Stream(page, page, window, page)
        s.last_fault = page
        s.next_page = page + s.window
        return s.window

    def _remember(self, key: Hashable, s: Stream) -> None:
        """The extent of a run that ended: what it faulted, or what it asked for at once."""
        extent = s.window if s.hits == 1 else s.last_fault + 1 - s.first
        if extent < 2:
            return
        runs = self._runs.setdefault(key, {})
        runs.pop(s.first, None)  # re-inserted as the newest
        runs[s.first] = extent
        if len(runs) > REMEMBERED_RUNS:
            del runs[next(iter(runs))]

    def next_ahead(self, key: Hashable) -> tuple[int, int] | None:
        """The (page, count) to request ahead of the faults now, or None when the stream is not
        sequential or already far enough ahead."""
        s = self._streams.get(key)
        if (s is None or s.window < ASYNC_MIN_WINDOW_PAGES
                or s.next_page - s.last_fault >= ASYNC_AHEAD_WINDOWS * s.window):
            return None
        first = s.next_page
        s.next_page += s.window
        return first, s.window

    def untouched_run(self, key: Hashable) -> int:
        """How many untouched pages a write fault of stream ``key`` (``on_fault`` first) asks
        for from its page: ``UNTOUCHED_RUN_PAGES`` once it writes in order, else one. The
        stream's next fault past them, should they come, is still in order."""
        s = self._streams.get(key)
        if s is None or s.hits < UNTOUCHED_AFTER_FAULTS:
            return 1
        s.next_page = max(s.next_page, s.last_fault + UNTOUCHED_RUN_PAGES)
        return UNTOUCHED_RUN_PAGES

    def last_fault(self, key: Hashable) -> int:
        return self._streams[key].last_fault

    def forget(self, *keys: Hashable) -> None:
        """Drop the streams of ``keys`` (those of a process that is gone): nothing else ever
        would, and an agent serves many short-lived processes."""
        for key in keys:
            self._streams.pop(key, None)
            self._runs.pop(key, None)

    def __len__(self) -> int:
        return len(self._streams)
