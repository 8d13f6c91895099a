"""Hypothesis strategies for the messages of ``dsm.protocol`` and ``dsm.local``, derived from the
field annotations the decoders check (``dsm.schema``): valid values of every field, values that
are wrong for a field, and anything msgpack can carry."""

from __future__ import annotations

from typing import Annotated, Any, get_args, get_origin, get_type_hints

import numpy as np
from hypothesis import strategies as st

from dsm import protocol as p
from dsm.schema import I64_MIN, U64_MAX, OneOf, Range, field_names

#: sizes kept small: the properties are about shapes, not volume
MAX_LIST = 6
MAX_TEXT = 12


def receiver_of(cls: type) -> p.Direction:
    """The side that receives a message of ``cls`` (the directory, for those both sides say)."""
    if cls.DIRECTION & p.Direction.TO_DIRECTORY:
        return p.Direction.TO_DIRECTORY
    if cls.DIRECTION & p.Direction.TO_PEER:
        return p.Direction.TO_PEER
    return p.Direction.TO_NODE


def _leaf() -> st.SearchStrategy:
    return st.one_of(
        st.none(), st.booleans(), st.integers(I64_MIN, U64_MAX),
        st.floats(allow_nan=False), st.text(max_size=MAX_TEXT), st.binary(max_size=MAX_TEXT),
    )


def any_value() -> st.SearchStrategy:
    """Anything msgpack packs: nested lists and maps (string keys, and int keys, which msgpack's
    unpacker refuses)."""
    return st.recursive(
        _leaf(),
        lambda children: st.one_of(
            st.lists(children, max_size=MAX_LIST),
            st.dictionaries(st.text(max_size=MAX_TEXT), children, max_size=MAX_LIST),
            st.dictionaries(st.integers(-5, 5), children, min_size=1, max_size=2),
        ),
        max_leaves=12,
    )


def _json_like() -> st.SearchStrategy:
    """Values of a map field (``dict[str, Any]``) that compare equal after a round trip."""
    return st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(I64_MIN, U64_MAX),
                  st.text(max_size=MAX_TEXT)),
        lambda children: st.lists(children, max_size=MAX_LIST)
        | st.dictionaries(st.text(max_size=MAX_TEXT), children, max_size=MAX_LIST),
        max_leaves=8,
    )


def _bounded(lo: int, hi: int) -> st.SearchStrategy:
    # small values (the usual ones, and cheap page frames), the edges, and anything between
    return st.one_of(st.integers(lo, min(hi, lo + 8)), st.sampled_from([lo, hi]),
                     st.integers(lo, hi))


def valid_value(hint: Any, rows: type = list) -> st.SearchStrategy:
    """Valid values of a field annotated ``hint``; its fixed-shape rows as ``rows`` (the
    protocol's msgspec messages decode them as tuples, the local protocol's as lists)."""
    if hint is Any:
        return _json_like()
    if hint is int:
        return st.integers(I64_MIN, U64_MAX)
    if hint is bool:
        return st.booleans()
    if hint is str:
        return st.text(max_size=MAX_TEXT)
    if hint is bytes:
        return st.binary(max_size=MAX_TEXT)
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        extra = args[1]
        if isinstance(extra, Range):
            return _bounded(extra.lo, extra.hi)
        if isinstance(extra, OneOf):
            return st.sampled_from([int(m) for m in extra.members])
    if origin is list:
        return st.lists(valid_value(args[0], rows), max_size=MAX_LIST)
    if origin is tuple:
        return st.tuples(*(valid_value(a, rows) for a in args)).map(rows)
    if origin is dict:
        return st.dictionaries(valid_value(args[0], rows), valid_value(args[1], rows),
                               max_size=MAX_LIST)
    raise TypeError(f"no strategy for {hint!r}")


def wrong_value(cls: type, name: str) -> st.SearchStrategy:
    """Values for field ``name`` of ``cls`` that are likely wrong: anything at all, numbers just
    outside the field's range, lists with one element of another kind, rows of another length."""
    hint = get_type_hints(cls, include_extras=True)[name]
    options = [any_value()]
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated and isinstance(args[1], Range):
        lo, hi = args[1].lo, args[1].hi
        edges = [v for v in (lo - 1, hi + 1, I64_MIN, U64_MAX) if I64_MIN <= v <= U64_MAX
                 and not lo <= v <= hi]
        if edges:
            options.append(st.sampled_from(edges))
    if origin is list:
        options.append(st.builds(lambda good, bad, i: good[:i] + [bad] + good[i:],
                                 st.lists(valid_value(args[0]), max_size=MAX_LIST), any_value(),
                                 st.integers(0, MAX_LIST)))
        if get_origin(args[0]) is tuple:
            options.append(st.lists(st.lists(_leaf(), max_size=6), min_size=1, max_size=3))
    return st.one_of(options)


@st.composite
def diff_changes(draw, count: int, page_size: int) -> tuple[int, bytes, list]:
    """(encoding, changes, the changed ranges): ascending ranges of a run of ``count`` pages,
    as spans or a mask (spans when none)."""
    cuts = sorted(draw(st.sets(st.integers(0, count * page_size), max_size=6)))
    pairs = [(a, b - a) for a, b in zip(cuts[::2], cuts[1::2])]
    if draw(st.booleans()) and pairs:
        mask = np.zeros(count * page_size, dtype=bool)
        for start, length in pairs:
            mask[start:start + length] = True
        return p.DiffEncoding.MASK, np.packbits(mask).tobytes(), pairs
    return (p.DiffEncoding.SPANS,
            np.array(pairs, dtype=p.SPAN_DTYPE).reshape(-1, 2).tobytes(), pairs)


@st.composite
def valid_message(draw, cls: type, page_size: int) -> tuple[Any, Any]:
    """(message, page frame or None): a valid message of ``cls`` and, for a DATA payload, a
    page frame of the right length."""
    hints = get_type_hints(cls, include_extras=True)
    values = {name: draw(valid_value(hints[name], tuple)) for name in field_names(cls)}
    if cls is p.SyncReply:  # guarded pages: a few runs of a few pages, and their frame
        counts = draw(st.lists(st.integers(1, 3), max_size=3))
        values["guarded"] = [x for i, c in enumerate(counts) for x in (10 * i, c)]
        values["payload"] = p.Payload.DATA if counts else draw(
            st.sampled_from([p.Payload.NONE, p.Payload.ZERO]))
    elif cls in (p.LockRelease, p.BarrierWait):  # a few carried diffs (payload DATA), or none
        diffs = []
        for i in range(draw(st.integers(0, 2))):
            count = draw(st.integers(1, 2))
            encoding, changes, _ = draw(diff_changes(count, page_size))
            diffs.append((10 * i, count, encoding, changes))
        values["diffs"] = diffs
        values["payload"] = p.Payload.DATA if diffs else p.Payload.NONE
    elif cls.CARRIES_PAGE and values["count"] > 4:  # valid, but cheap: a few pages
        values["count"] = draw(st.integers(1, 4))
    if cls is p.Diff:
        values["encoding"], values["changes"], pairs = draw(diff_changes(values["count"],
                                                                         page_size))
        values["payload"] = p.Payload.DATA if pairs else p.Payload.NONE
    msg = cls(**values)
    page = None
    if cls in (p.LockRelease, p.BarrierWait) and msg.diffs:
        page = bytes([draw(st.integers(0, 255))]) * msg.frame_bytes(page_size)
    elif (cls is p.Diff and msg.changes) or (cls is p.SyncReply and msg.guarded):
        page = bytes([draw(st.integers(0, 255))]) * msg.frame_bytes(page_size)
    elif cls.CARRIES_PAGE and msg.payload == p.Payload.DATA:
        page = bytes([draw(st.integers(0, 255))]) * (msg.count * page_size)
    return msg, page


def header_of(msg: Any) -> list:
    return [int(type(msg).TYPE), *(getattr(msg, name) for name in field_names(type(msg)))]


@st.composite
def frames_for(draw, header: bytes, page_size: int) -> list[bytes]:
    """The header followed by 0 to 2 frames of telling lengths (none, one byte, a page less or
    more one byte, one or two pages, anything)."""
    lengths = st.one_of(st.sampled_from([0, 1, page_size - 1, page_size, page_size + 1,
                                         2 * page_size]), st.integers(0, 3 * page_size))
    extra = draw(st.lists(lengths, max_size=2))
    return [header] + [b"\x5a" * n for n in extra]
