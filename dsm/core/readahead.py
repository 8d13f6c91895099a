"""Sequential-fault detection, as the kernel's readahead does it: per process and access kind,
faults that follow each other page after page open a window that then doubles on every fault at
the end of the last request (up to a maximum); anything else resets it to one page. So a random
pattern never pays for pages it does not use, and a short run (a stencil's halo row, a few pages of
a neighbour's band) does not drag in pages that another node is writing.

A stream whose window has grown large also keeps requests flowing ahead of its faults
("asynchronous read-ahead"), at most two windows beyond the last fault, so that a scan finds its
pages installed."""

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


@dataclass
class Stream:
    next_page: int  #: where the next request of the stream starts
    window: int  #: pages per request
    last_fault: int  #: the page of the last fault
    hits: int = 1  #: sequential faults in a row


class ReadAhead:
    def __init__(self, max_window_pages: int):
        self.max_window = max_window_pages
        self._streams: dict[Hashable, Stream] = {}

    def on_fault(self, key: Hashable, page: int) -> int:
        """A fault at ``page``: how many pages to ask for from it."""
        s = self._streams.get(key)
        if s is not None and s.last_fault < page <= s.next_page:
            s.hits += 1
            if s.window > 1:
                s.window = min(s.window * 2, self.max_window)
            elif s.hits >= SEQUENTIAL_FAULTS_TO_OPEN:
                s.window = OPENING_WINDOW_PAGES
        else:
            s = self._streams[key] = Stream(page, 1, page)
        s.last_fault = page
        s.next_page = page + s.window
        return s.window

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

    def last_fault(self, key: Hashable) -> int:
        return self._streams[key].last_fault

    def forget(self, *keys: Hashable) -> None:
        """Drop the streams of ``keys`` (those of a process that is gone): nothing else ever
        would, and an agent serves many short-lived processes."""
        for key in keys:
            self._streams.pop(key, None)

    def __len__(self) -> int:
        return len(self._streams)
