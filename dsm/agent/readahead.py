"""Sequential-fault detection, as the kernel's readahead does it: per process and access kind, a
fault right where the last request ended doubles the window (up to a maximum), anything else
resets it to one page, so that a random pattern never pays for pages it does not use.

A hot stream also keeps requests flowing ahead of the faults ("asynchronous read-ahead"), at most
``max_ahead_pages`` beyond the last fault, so that a scan finds its pages installed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable


@dataclass
class Stream:
    next_page: int  #: where the next request of the stream starts
    window: int  #: pages per request
    last_fault: int  #: the page of the last fault


class ReadAhead:
    def __init__(self, max_window_pages: int, max_ahead_pages: int):
        self.max_window = max_window_pages
        self.max_ahead = max_ahead_pages
        self._streams: dict[Hashable, Stream] = {}

    def on_fault(self, key: Hashable, page: int) -> int:
        """A fault at ``page``: how many pages to ask for from it."""
        s = self._streams.get(key)
        if s is not None and s.last_fault < page <= s.next_page:
            s.window = min(s.window * 2, self.max_window)
        else:
            s = self._streams[key] = Stream(page, 1, page)
        s.last_fault = page
        s.next_page = page + s.window
        return s.window

    def next_ahead(self, key: Hashable) -> tuple[int, int] | None:
        """The (page, count) to request ahead of the faults now, or None when the stream is not
        sequential or already far enough ahead."""
        s = self._streams.get(key)
        if s is None or s.window < 2 or s.next_page - s.last_fault >= self.max_ahead:
            return None
        first = s.next_page
        s.window = min(s.window * 2, self.max_window)  # the stream holds: widen, as on a fault
        s.next_page += s.window
        return first, s.window

    def forget(self, key: Hashable) -> None:
        self._streams.pop(key, None)
