"""The protocol trace: one JSON line per protocol step and per protocol message.

Records (every one has ``t``, this process's monotonic clock in seconds, and ``who``, the
process that wrote it: ``directory`` or a node's name):

- start: ``{"t", "who", "role": "manager"|"node", "wall", "pid"}``, first in each process's
  trace: ``wall`` is ``time.time()`` at ``t``, for people; merging never uses it.
- step: ``{"t", "who", "node", "page", "event", "old", "new"}`` (plus ``count`` for a run of
  pages): a state change (``event`` ACQUIRE, GRANT, READ, WRITE, FETCH, INVALIDATE, ...).
- message: ``{"t", "who", "peer", "dir": "send"|"recv", "msg", "id"}`` plus the message's own
  fields (``page``, ``count``, ``txn``, ...; never page bytes): one when a message is sent, one
  when it is received. ``id`` is ``SRC>DST:N``, the N-th message on the link from SRC to DST,
  where SRC and DST name the link's ends (``directory``, a node's ZeroMQ identity ``node#inc``).
  Each end counts on its own: a ZeroMQ pipe delivers in order, so the N-th sent is the N-th
  received and no id travels on the wire. The same scheme fits node-to-node links and several
  managers.
- array: ``{"t", "who", "array", "page", "count"}``: an allocation's pages, to name them.
- clock: ``{"t", "who", "clock": REF, "offset", "error"}``: REF's clock read ``t + offset``
  (±``error`` seconds) at this process's ``t`` (``dsm.clocksync``). ``dsm trace`` applies it.

Cheap enough to leave on: nothing is formatted unless a file was given, lines go through a
buffered file flushed on close and at most every ``FLUSH_INTERVAL_S``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, TextIO

from dsm.schema import field_names

FLUSH_INTERVAL_S = 0.5
#: the default of an agent's ``--trace`` (also for agents that ``dsm.attach`` starts)
TRACE_ENV = "DSM_TRACE"
#: for tests: seconds added to this process's trace clock, as if its host's clock were off
CLOCK_SKEW_ENV = "DSM_TRACE_CLOCK_SKEW_S"
#: list fields of a message longer than this are traced as their length only
MAX_TRACED_LIST_ITEMS = 16

def _size_of_bytes(value: object) -> str:
    """How a value JSON cannot hold is traced: bytes nested in a field (an array's description,
    as a peer sent it) by their size, anything else by its type."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"[{len(value)} bytes]"
    return f"[{type(value).__name__}]"


_dumps = json.JSONEncoder(separators=(",", ":"), default=_size_of_bytes, skipkeys=True).encode


def trace_clock_skew_s() -> float:
    raw = os.environ.get(CLOCK_SKEW_ENV, "")
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        raise ValueError(f"${CLOCK_SKEW_ENV} must be a number of seconds, got {raw!r}") from None


class Tracer:
    def __init__(self, path: str | None, who: str, role: str = "node"):
        self.who = who
        self._skew_s = trace_clock_skew_s()
        self._file: TextIO | None = open(path, "a", buffering=1 << 16) if path else None
        self._last_flush = time.monotonic()
        #: (src, dst) -> messages counted on that link
        self._links: dict[tuple[str, str], int] = {}
        if self._file is not None:
            self._write({"t": self.now(), "who": who, "role": role, "wall": time.time(),
                         "pid": os.getpid()})

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def now(self) -> float:
        """This process's trace clock, in seconds (monotonic, plus the injected skew)."""
        return time.monotonic() + self._skew_s

    def now_ns(self) -> int:
        return int(self.now() * 1e9)

    def __call__(self, page: int, event: str, node: str, old: str, new: str, **extra: Any) -> None:
        if self._file is None:
            return
        record = {"t": self.now(), "who": self.who, "node": node, "page": page,
                  "event": event, "old": old, "new": new}
        if extra:
            record.update(extra)
        self._write(record)

    def sent(self, src: str, dst: str, peer: str, msg: Any, t: float | None = None) -> None:
        """``msg`` left on the link ``src`` -> ``dst`` (to process ``peer``); ``t``: when the
        send began (``now()`` taken before it: the peer may trace its receive before the send
        call returns)."""
        if self._file is not None:
            self._message("send", src, dst, peer, msg, t)

    def received(self, src: str, dst: str, peer: str, msg: Any) -> None:
        """``msg`` arrived on the link ``src`` -> ``dst`` (from process ``peer``); ``msg`` is
        None when it could not be decoded (it still counts on the link)."""
        if self._file is not None:
            self._message("recv", src, dst, peer, msg, None)

    def array(self, name: str, page: int, count: int) -> None:
        """Array ``name`` spans ``count`` pages from ``page`` (the views name pages by it)."""
        if self._file is not None:
            self._write({"t": self.now(), "who": self.who, "array": name, "page": page,
                         "count": count})

    def clock(self, ref: str, offset_s: float, error_s: float) -> None:
        if self._file is not None:
            self._write({"t": self.now(), "who": self.who, "clock": ref,
                         "offset": offset_s, "error": error_s})

    def _message(self, direction: str, src: str, dst: str, peer: str, msg: Any,
                 t: float | None) -> None:
        key = (src, dst)
        n = self._links.get(key, 0) + 1
        self._links[key] = n
        record = {"t": self.now() if t is None else t, "who": self.who, "peer": peer,
                  "dir": direction,
                  "msg": type(msg).__name__ if msg is not None else "?", "id": f"{src}>{dst}:{n}"}
        if msg is not None:
            for name in field_names(type(msg)):
                value = getattr(msg, name)
                if isinstance(value, list) and len(value) > MAX_TRACED_LIST_ITEMS:
                    value = f"[{len(value)} items]"
                elif isinstance(value, bytes):  # packed numbers (a Diff's changes): their size
                    value = f"[{len(value)} bytes]"
                record[name] = value
        self._write(record)

    def _write(self, record: dict) -> None:
        self._file.write(_dumps(record) + "\n")
        now = time.monotonic()
        if now - self._last_flush > FLUSH_INTERVAL_S:
            self._file.flush()
            self._last_flush = now

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
