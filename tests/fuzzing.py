"""Random and mutated frames for the end-to-end fuzz tests (``test_fuzz.py``), from a seeded
``random.Random`` (hypothesis is for the properties of ``decode``; this has to make ten thousand
frames a second).

``FrameFuzzer(rng, page_size, to, ...)`` makes the frames of one message sent to ``to`` (the
directory or an agent), of one of these kinds:

- ``random``: 1 to 3 frames of random bytes;
- ``bitflip``: a valid message with a byte changed, or cut short;
- ``mutated``: a valid header with one field changed to a value that is likely wrong;
- ``misdirected``: a valid message of the other direction;
- ``huge``: a valid message whose count, number or list is huge;
- ``frames``: a valid header with the wrong frames after it (a DATA page missing, too short,
  too long, or frames where none belong);
- ``outside``: a valid message naming pages outside the region;
- ``valid``: a valid message whose pages lie in ``pages`` (so that it reaches the handlers and
  changes state there, legitimately, without touching the pages a later check uses).
"""

from __future__ import annotations

import random
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import msgpack

from dsm import local
from dsm import protocol as p
from dsm.errors import ProtocolError
from dsm.schema import I64_MIN, U64_MAX, OneOf, Range, field_names

KINDS = ("random", "bitflip", "mutated", "misdirected", "huge", "frames", "outside", "valid")
#: how often each kind is drawn
WEIGHTS = (2, 2, 3, 1, 1, 1, 1, 3)
#: huge numbers, each a valid msgpack integer
HUGE_NUMBERS = (U64_MAX, 2**63, 2**63 - 1, 2**32, 10**9, I64_MIN, -1)
#: a huge list: many more elements than any batch
HUGE_LIST_LEN = 5000
MAX_RANDOM_FRAME_BYTES = 96
#: names drawn for arrays, locks and barriers: few, so that requests meet
NAMES = ("a", "b", "grid", "", "x" * 64)


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


class FrameFuzzer:
    def __init__(self, rng: random.Random, page_size: int, to: p.Direction, num_pages: int,
                 pages: range, node: str = "fuzz", exclude: tuple[type, ...] = ()):
        self.rng = rng
        self.page_size = page_size
        self.to = to
        self.num_pages = num_pages
        self.pages = pages  #: where valid messages may name pages
        self.node = node  #: who a valid message's holders belong to
        received = [c for c in p.MESSAGE_CLASSES.values() if c.DIRECTION & to]
        self.classes = [c for c in received if c not in exclude]
        self.other = [c for c in p.MESSAGE_CLASSES.values() if not c.DIRECTION & to]
        self.counts = dict.fromkeys(KINDS, 0)
        self._hints = {c: _hints(c) for c in p.MESSAGE_CLASSES.values()}

    def frames(self) -> list[bytes]:
        kind = self.rng.choices(KINDS, WEIGHTS)[0]
        self.counts[kind] += 1
        return getattr(self, "_" + kind)()

    # --- values ------------------------------------------------------------------------------
    def any_value(self, depth: int = 2) -> Any:
        r = self.rng
        choice = r.randrange(9 if depth > 0 else 7)
        if choice == 0:
            return None
        if choice == 1:
            return r.random() < 0.5
        if choice == 2:
            return r.choice((0, 1, -1, 7, r.randrange(1 << 16), *HUGE_NUMBERS))
        if choice == 3:
            return r.uniform(-1e9, 1e9)
        if choice == 4:
            return "".join(chr(r.randrange(32, 0x3000)) for _ in range(r.randrange(8)))
        if choice == 5:
            return r.randbytes(r.randrange(8))
        if choice == 6:
            return r.randrange(-(2**63), 2**64)
        if choice == 7:
            return [self.any_value(depth - 1) for _ in range(r.randrange(4))]
        return {str(self.any_value(0)): self.any_value(depth - 1) for _ in range(r.randrange(3))}

    def valid_value(self, cls: type, name: str, hint: Any) -> Any:
        r = self.rng
        if name == "page":
            return r.randrange(self.pages.start, self.pages.stop - 4)
        if name in ("count", "parties"):
            return r.randint(1, 4)
        if name in ("txn", "req"):
            return r.randint(0, 64)
        if name in ("holder", "prefix"):  # mostly the sender's own, sometimes another node's
            if r.random() < 0.8:
                return f"{self.node}:{r.randint(1, 9)}:{r.randint(1, 9)}"
            return f"other:{r.randint(1, 9)}"
        if name == "name":
            return r.choice(NAMES)
        if name == "nbytes":
            return r.randint(1, 3 * self.page_size)
        if name == "timeout_ms":
            return r.choice((0, 5, 20, -1))
        if name in ("guards", "guarded"):  # page runs within the fuzzed pages
            first = r.randrange(self.pages.start, self.pages.stop - 4)
            return [first, r.randint(1, 4)] if r.random() < 0.5 else []
        if name in ("pages", "not_held"):
            return [r.randrange(self.pages.start, self.pages.stop) for _ in range(r.randrange(4))]
        return self._by_hint(hint)

    def _by_hint(self, hint: Any) -> Any:
        r = self.rng
        if hint is Any:
            return self.any_value(1)
        if hint is bool:
            return r.random() < 0.5
        if hint is str:
            return r.choice(NAMES)
        if hint is bytes:  # packed numbers (a Diff's spans: pairs of uint32)
            return r.randbytes(p.SPAN_BYTES * r.randrange(4))
        origin, args = get_origin(hint), get_args(hint)
        if origin is Annotated:
            extra = args[1]
            if isinstance(extra, Range):
                return r.choice((extra.lo, min(extra.hi, extra.lo + 3), r.randint(extra.lo, extra.hi)))
            if isinstance(extra, OneOf):
                return int(r.choice(list(extra.members)))
        if origin is list:
            return [self._by_hint(args[0]) for _ in range(r.randrange(4))]
        if origin is tuple:
            return [self._by_hint(a) for a in args]
        if origin is dict:
            return {r.choice(("shape", "dtype", "k")): self.any_value(1) for _ in range(r.randrange(3))}
        if hint is int:
            return r.randrange(1 << 16)
        raise TypeError(f"no value for {hint!r}")

    def wrong_value(self, hint: Any) -> Any:
        r = self.rng
        origin, args = get_origin(hint), get_args(hint)
        roll = r.random()
        if origin is Annotated and isinstance(args[1], Range) and roll < 0.4:
            lo, hi = args[1].lo, args[1].hi
            edges = [v for v in (lo - 1, hi + 1, *HUGE_NUMBERS)
                     if I64_MIN <= v <= U64_MAX and not lo <= v <= hi]
            if edges:
                return r.choice(edges)
        if origin is list and roll < 0.6:
            good = [self._by_hint(args[0]) for _ in range(r.randrange(3))]
            good.insert(r.randint(0, len(good)), self.any_value(1))
            return good
        return self.any_value()

    # --- messages ----------------------------------------------------------------------------
    def valid(self, cls: type) -> tuple[list[Any], bytes | None]:
        """A valid message of ``cls``: its header values and its page frame (or None)."""
        hints = self._hints[cls]
        names = field_names(cls)
        values = [self.valid_value(cls, name, hints[name]) for name in names]
        page = None
        if cls.CARRIES_PAGE:
            msg = cls(*values)
            if cls is p.SyncReply:  # its frame holds the guarded pages, if it names any
                values[names.index("payload")] = int(p.Payload.DATA if msg.guarded
                                                     else p.Payload.NONE)
                if msg.guarded:
                    page = self.rng.randbytes(1) * msg.frame_bytes(self.page_size)
            elif cls in (p.LockRelease, p.BarrierWait):  # carried diffs: none, nor a frame
                values[names.index("diffs")] = []
                values[names.index("payload")] = int(p.Payload.NONE)
            elif msg.payload == p.Payload.DATA:
                page = self.rng.randbytes(1) * (msg.count * self.page_size)
        return values, page

    def _pack(self, cls: type, values: list[Any], page: bytes | None) -> list[bytes]:
        frames = [msgpack.packb([int(cls.TYPE), *values])]
        return frames + [page] if page is not None else frames

    def _valid(self) -> list[bytes]:
        cls = self.rng.choice(self.classes)
        return self._pack(cls, *self.valid(cls))

    def _random(self) -> list[bytes]:
        r = self.rng
        return [r.randbytes(r.randrange(MAX_RANDOM_FRAME_BYTES)) for _ in range(r.randint(1, 3))]

    def _bitflip(self) -> list[bytes]:
        frames = self._valid()
        header = bytearray(frames[0])
        if self.rng.random() < 0.3:
            frames[0] = bytes(header[: self.rng.randrange(len(header))])
            return frames
        for _ in range(self.rng.randint(1, 3)):
            header[self.rng.randrange(len(header))] = self.rng.randrange(256)
        frames[0] = bytes(header)
        return frames

    def _mutated(self) -> list[bytes]:
        cls = self.rng.choice([c for c in self.classes if field_names(c)])
        values, page = self.valid(cls)
        names = list(field_names(cls))
        i = self.rng.randrange(len(names))
        values[i] = self.wrong_value(self._hints[cls][names[i]])
        try:
            return self._pack(cls, values, page)
        except (TypeError, ValueError, OverflowError):  # msgpack cannot pack it: send garbage
            return self._random()

    def _misdirected(self) -> list[bytes]:
        cls = self.rng.choice(self.other)
        return self._pack(cls, *self.valid(cls))

    def _huge(self) -> list[bytes]:
        cls = self.rng.choice([c for c in self.classes if field_names(c)])
        values, page = self.valid(cls)
        names = list(field_names(cls))
        for i, name in enumerate(names):
            if isinstance(values[i], list):
                values[i] = [self.rng.randrange(self.num_pages)] * HUGE_LIST_LEN
            elif type(values[i]) is int and self.rng.random() < 0.7:
                values[i] = self.rng.choice(HUGE_NUMBERS)
        return self._pack(cls, values, page)

    def _frames(self) -> list[bytes]:
        frames = self._valid()
        r = self.rng
        choice = r.randrange(4)
        if choice == 0 and len(frames) == 2:
            return frames[:1]  # the DATA page missing
        if choice == 1 and len(frames) == 2:
            return [frames[0], frames[1][: r.randrange(len(frames[1]))]]
        if choice == 2:
            return frames + [r.randbytes(r.choice((0, 1, self.page_size)))]
        return frames + [b"", b""]

    def _outside(self) -> list[bytes]:
        cls = self.rng.choice([c for c in self.classes if "page" in self._hints[c]
                               or "pages" in self._hints[c]] or self.classes)
        values, page = self.valid(cls)
        names = list(field_names(cls))
        beyond = self.rng.choice((self.num_pages, self.num_pages + 1, self.num_pages * 2,
                                  2**63, U64_MAX - 1))
        if "page" in names:
            values[names.index("page")] = beyond
        if "pages" in names:
            values[names.index("pages")] = [self.pages.start, beyond]
        return self._pack(cls, values, page)


# --- the agent's Unix socket ---------------------------------------------------------------------
LOCAL_KINDS = ("random", "truncated", "oversized", "mutated", "missing", "extra", "misdirected",
               "valid")
LOCAL_WEIGHTS = (2, 2, 1, 3, 1, 1, 1, 2)
#: requests a fuzzer may send validly: they change nothing a later check reads
HARMLESS_REQUESTS = (local.StatsRequest, local.LockStatusRequest, local.LostRequest)


class LocalFuzzer:
    """Messages for an agent's Unix socket (``dsm.local``), as bytes."""

    def __init__(self, rng: random.Random, pid: int, frames: FrameFuzzer):
        self.rng = rng
        self.pid = pid  #: the pid valid requests claim (a live one: the agent watches it)
        self._values = frames  #: for random values
        self.to_agent = [c for c in local.LOCAL_MESSAGE_CLASSES
                         if c.DIRECTION is local.Direction.TO_AGENT]
        self.to_workload = [c for c in local.LOCAL_MESSAGE_CLASSES
                            if c.DIRECTION is local.Direction.TO_WORKLOAD]
        self.counts = dict.fromkeys(LOCAL_KINDS, 0)

    def message(self) -> bytes:
        """A message for the agent; one that is valid is a harmless request, answered at once
        (a valid lock or barrier request could wait for ever, and an allocation takes space)
        and claims the fuzzer's own pid."""
        kind = self.rng.choices(LOCAL_KINDS, LOCAL_WEIGHTS)[0]
        self.counts[kind] += 1
        data = getattr(self, "_" + kind)()
        try:
            msg = local.decode(data, 0, local.Direction.TO_AGENT)
        except ProtocolError:
            return data
        # another live pid, claimed validly, would be watched by the agent until it exits
        harmless = isinstance(msg, HARMLESS_REQUESTS) and msg.pid == self.pid
        return data if harmless else self._valid()

    def valid_body(self, cls: type) -> dict:
        hints = _hints(cls)
        body = {local.TAG_KEY: cls.TAG}
        for name in field_names(cls):
            if name == "pid":
                body[name] = self.pid
            elif name == "name":
                body[name] = "fuzz." + self.rng.choice(NAMES)
            else:
                body[name] = self._values.valid_value(cls, name, hints[name])
        return body

    def _pack(self, body: Any) -> bytes:
        try:
            return msgpack.packb(body)
        except (TypeError, ValueError, OverflowError):
            return self._random()

    def _random(self) -> bytes:
        return self.rng.randbytes(self.rng.randrange(1, MAX_RANDOM_FRAME_BYTES))

    def _truncated(self) -> bytes:
        data = self._pack(self.valid_body(self.rng.choice(self.to_agent)))
        return data[: self.rng.randrange(1, max(2, len(data)))]

    def _oversized(self) -> bytes:
        return msgpack.packb({local.TAG_KEY: "stats", "pad": "x" * (local.MAX_MESSAGE_BYTES + 16)})

    def _mutated(self) -> bytes:
        cls = self.rng.choice([c for c in self.to_agent if field_names(c)])
        body = self.valid_body(cls)
        name = self.rng.choice(list(field_names(cls)) + [local.TAG_KEY])
        body[name] = self._values.wrong_value(_hints(cls).get(name, str))
        return self._pack(body)

    def _missing(self) -> bytes:
        cls = self.rng.choice([c for c in self.to_agent if field_names(c)])
        body = self.valid_body(cls)
        del body[self.rng.choice(list(field_names(cls)))]
        return self._pack(body)

    def _extra(self) -> bytes:
        body = self.valid_body(self.rng.choice(self.to_agent))
        body["unexpected"] = self._values.any_value()
        return self._pack(body)

    def _misdirected(self) -> bytes:
        return self._pack(self.valid_body(self.rng.choice(self.to_workload)))

    def _valid(self) -> bytes:
        return self._pack(self.valid_body(self.rng.choice(HARMLESS_REQUESTS)))
