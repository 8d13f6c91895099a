"""The protocol trace: one JSON line per protocol step (time, who, page, event, old -> new state).

Cheap enough to leave on: a line is formatted only when a file was given, and written through a
buffered file that is flushed on close and at most every ``FLUSH_INTERVAL_S``.
"""

from __future__ import annotations

import json
import time
from typing import Any, TextIO

FLUSH_INTERVAL_S = 0.5


class Tracer:
    def __init__(self, path: str | None, who: str):
        self.who = who
        self._file: TextIO | None = open(path, "a", buffering=1 << 16) if path else None
        self._last_flush = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def __call__(self, page: int, event: str, node: str, old: str, new: str, **extra: Any) -> None:
        if self._file is None:
            return
        record = {"t": time.time(), "who": self.who, "node": node, "page": page,
                  "event": event, "old": old, "new": new}
        if extra:
            record.update(extra)
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        now = time.monotonic()
        if now - self._last_flush > FLUSH_INTERVAL_S:
            self._file.flush()
            self._last_flush = now

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
