"""What a message field may hold, and the one checker both protocols use (``dsm.protocol``
between the directory and the agents, ``dsm.local`` between an agent and its workloads).

A field's annotation says what it holds:

- ``int``, ``bool``, ``str``, ``bytes``: exactly that type (a bool is not an int here; bytes
  are msgpack's bin);
- ``ranged(lo, hi)``: an int in ``lo..hi``; ``one_of(Enum)``: the value of a member of an
  ``IntEnum`` (each an ``Annotated[int, Range | OneOf, msgspec.Meta]``: see below);
- ``list[T]``: a list whose every element is a ``T``;
- ``tuple[A, B, ...]``: a fixed-shape row, which msgpack carries as an array of that many
  elements of those types;
- ``dict[str, Any]``: a map with string keys; ``Any``: anything msgpack can carry (maps with keys of any kind).

Each constraint is said once and read by two checkers. The protocol's messages are msgspec
``Struct`` types, and msgspec's decoder checks every field in C as it decodes (the ``Meta`` bounds
that ``ranged`` and ``one_of`` put beside their marker): the hot path. ``compile_check`` turns an
annotation into a check function in Python, once, when a protocol module is imported: the local
protocol's messages (``dsm.local``) go through it, and a message msgspec refused goes through it
again, to say which field was wrong in the words below. A check returns None when the value fits
and otherwise a complaint that continues the field's name: ``" must be int, got str"``,
``" 5000 is outside 1..1024"``, ``"[3] must be int, got list"``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Annotated, Any, Callable, Union, get_args, get_origin, get_type_hints

import msgspec

from dsm.errors import ProtocolError

#: the range of the integers msgpack carries
U64_MAX = 2**64 - 1
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
#: the kernel's PID_MAX_LIMIT on 64-bit systems: no pid or thread id is larger
PID_MAX_LIMIT = 1 << 22

#: a check: None if the value fits, else a complaint that continues the field's name
Check = Callable[[Any], Union[str, None]]


@dataclass(frozen=True)
class Range:
    """An int in ``lo..hi`` (both included)."""

    lo: int
    hi: int


@dataclass(frozen=True)
class OneOf:
    """The value of a member of an IntEnum."""

    members: type[enum.IntEnum]


def ranged(lo: int, hi: int) -> Any:
    """An int field in ``lo..hi``. msgspec's bounds are int64s: an upper bound past I64_MAX is
    msgpack's own (an unsigned 64-bit number), which no decoder can exceed."""
    bounds = msgspec.Meta(ge=lo, le=hi) if hi <= I64_MAX else msgspec.Meta(ge=lo)
    return Annotated[int, Range(lo, hi), bounds]


def one_of(members: type[enum.IntEnum]) -> Any:
    """An int field holding the value of a member of ``members``, whose values must be
    consecutive (msgspec checks them as bounds)."""
    values = sorted(m.value for m in members)
    if values != list(range(values[0], values[-1] + 1)):
        raise TypeError(f"{members.__name__}'s values are not consecutive: {values}")
    return Annotated[int, OneOf(members), msgspec.Meta(ge=values[0], le=values[-1])]


#: an unsigned 64-bit number (ids, offsets, sizes)
U64 = ranged(0, U64_MAX)
#: any 64-bit integer msgpack carries
I64 = ranged(I64_MIN, I64_MAX)
#: a process id
Pid = ranged(1, PID_MAX_LIMIT)


def _got(value: Any) -> str:
    return type(value).__name__


def _exact(kind: type) -> Check:
    name = kind.__name__

    def check(value: Any) -> str | None:
        # exact types: msgpack makes no subclasses, and a bool must not pass for an int
        return None if type(value) is kind else f" must be {name}, got {_got(value)}"

    return check


def _in_range(lo: int, hi: int) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is not int:
            return f" must be int, got {_got(value)}"
        return None if lo <= value <= hi else f" {value} is outside {lo}..{hi}"

    return check


def _one_of(members: type[enum.IntEnum]) -> Check:
    values = frozenset(m.value for m in members)
    name = members.__name__

    def check(value: Any) -> str | None:
        if type(value) is not int:
            return f" must be int, got {_got(value)}"
        return None if value in values else f" {value} is not a {name}"

    return check


def _list_of(element: Check) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is not list:
            return f" must be a list, got {_got(value)}"
        for i, item in enumerate(value):
            complaint = element(item)
            if complaint is not None:
                return f"[{i}]{complaint}"
        return None

    return check


def _row_of(elements: list[Check], shape: str) -> Check:
    n = len(elements)

    def check(value: Any) -> str | None:
        if type(value) is not list:
            return f" must be a list [{shape}], got {_got(value)}"
        if len(value) != n:
            return f" must hold {n} elements [{shape}], got {len(value)}"
        for i, (element, item) in enumerate(zip(elements, value)):
            complaint = element(item)
            if complaint is not None:
                return f"[{i}]{complaint}"
        return None

    return check


def _map_of(key: Check, val: Check) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is not dict:
            return f" must be a map, got {_got(value)}"
        for k, item in value.items():
            complaint = key(k)
            if complaint is not None:
                return f" key {k!r:.40}{complaint}"
            complaint = val(item)
            if complaint is not None:
                return f"[{k!r:.40}]{complaint}"
        return None

    return check


def _describe(hint: Any) -> str:
    if get_origin(hint) is Annotated:
        return get_args(hint)[0].__name__
    return getattr(hint, "__name__", str(hint))


def compile_check(hint: Any) -> Check:
    """The check of a field annotated ``hint`` (see the module docstring for what it may be)."""
    if hint is Any:
        return lambda value: None
    if hint in (int, bool, str, bytes):
        return _exact(hint)
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        base, *extras = args
        extras = [e for e in extras if not isinstance(e, msgspec.Meta)]  # the fast checker's
        if base is not int or len(extras) != 1:
            raise TypeError(f"only ranged() and one_of() are supported, not {hint}")
        (extra,) = extras
        if isinstance(extra, Range):
            return _in_range(extra.lo, extra.hi)
        if isinstance(extra, OneOf):
            return _one_of(extra.members)
        raise TypeError(f"unknown constraint {extra!r} in {hint}")
    if origin is list:
        return _list_of(compile_check(args[0]))
    if origin is tuple:
        return _row_of([compile_check(a) for a in args], ", ".join(_describe(a) for a in args))
    if origin is dict:
        return _map_of(compile_check(args[0]), compile_check(args[1]))
    raise TypeError(f"no check for a field annotated {hint!r}")


def field_names(cls: type) -> tuple[str, ...]:
    """The fields of a message class in order: a msgspec ``Struct`` or a dataclass."""
    struct_fields = getattr(cls, "__struct_fields__", None)
    if struct_fields is not None:
        return tuple(struct_fields)
    return tuple(f.name for f in fields(cls))


def field_checks(cls: type) -> tuple[tuple[str, Check], ...]:
    """(name, check) of every field of the message class ``cls``, in order."""
    hints = get_type_hints(cls, include_extras=True)
    return tuple((name, compile_check(hints[name])) for name in field_names(cls))


def check_fields(cls: type, checks: tuple[tuple[str, Check], ...], values: Any) -> None:
    """Raise a ProtocolError naming the first of ``values`` that does not fit its field."""
    for (name, check), value in zip(checks, values):
        complaint = check(value)
        if complaint is not None:
            raise ProtocolError(f"{cls.__name__}.{name}{complaint}")
