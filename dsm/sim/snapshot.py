"""A simulated world saved as bytes and brought back as an independent copy, so that the
exhaustive exploration (``dsm.sim.explore``) can step each alternative from a state without
replaying the schedule that reached it.

It is pickle (in C) with what pickle cannot take as it is:

- functions made at run time (lambdas, nested functions: the world's wiring, its handler
  tables, clocks, the agents' model actions): rebuilt from their code and globals, and their
  closures' contents copied with the rest, so that a copy's closures read the copy (its clock,
  its directory), never the original (a module's or a class's own functions go by name);
- the directory's home store (an anonymous mapping) and the view of it: a new private mapping
  with the same bytes, and a view of the new one;
- instances: their attributes restored with ``dict.update`` in place of pickle's own BUILD, which
  interns the attribute names: a string that was the same object as an attribute name would
  come back as another object, and the fingerprint (``dsm.sim.fingerprint``, a pickle too,
  which shares an object seen twice) of a copy would differ from the original's.

Code objects and module globals are never copied: they are kept in this process's registry and
named by it. A snapshot is thus for the process that took it (and the processes it forks after
taking none: the registry is filled as snapshots are taken).

Measured on the relay's small scope with a fault allowed: a snapshot of a world 15 steps in is
about 30 KB (6 KB compressed), taken in about as long as a fingerprint, and brought back in less;
a replay of 15 steps costs more than both, and a replay grows with the depth.
"""

from __future__ import annotations

import copyreg
import io
import mmap
import pickle
import types
import zlib
from typing import Any

#: the compression of a stored snapshot (the fastest: the pages are mostly zeros)
COMPRESSION = 1

#: code objects and module globals by id, never copied (see the docstring)
_SHARED: dict[int, Any] = {}
#: per class: whether its instances are plain (their state is their __dict__, restored here)
_PLAIN: dict[type, bool] = {}


def _shared(obj: Any) -> Any:
    return _SHARED[obj]


def _function(code: int, globals_: int, name: str, defaults: Any, kwdefaults: Any,
              cells: int) -> types.FunctionType:
    """A function with ``code``, its closure's cells empty until ``_fill_cells``."""
    out = types.FunctionType(_SHARED[code], _SHARED[globals_], name, defaults,
                             tuple(types.CellType() for _ in range(cells)) or None)
    out.__kwdefaults__ = kwdefaults
    return out


def _fill_cells(function: types.FunctionType, contents: tuple) -> None:
    for cell, value in zip(function.__closure__ or (), contents):
        cell.cell_contents = value


def _anonymous_map(data: bytes) -> mmap.mmap:
    out = mmap.mmap(-1, len(data), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    out[:] = data
    return out


def _set_attributes(obj: Any, state: dict) -> None:
    obj.__dict__.update(state)


def _is_plain(cls: type) -> bool:
    """Whether ``cls``'s instances pickle as their ``__dict__`` (no reduction or state of
    their own: not an enum, a named tuple, a deque...)."""
    plain = _PLAIN.get(cls)
    if plain is None:
        plain = _PLAIN[cls] = (cls.__reduce_ex__ is object.__reduce_ex__
                               and cls.__reduce__ is object.__reduce__
                               and cls.__getstate__ is object.__getstate__
                               and not hasattr(cls, "__setstate__")
                               and not hasattr(cls, "__slots__")
                               and not hasattr(cls, "__getnewargs__")
                               and not hasattr(cls, "__getnewargs_ex__")
                               and "__dict__" in dir(cls))
    return plain


def _remember(obj: Any) -> int:
    _SHARED[id(obj)] = obj
    return id(obj)


class _Saver(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type):
            return NotImplemented  # a class: by name
        if isinstance(obj, types.FunctionType):
            cells = obj.__closure__ or ()
            if not cells and "<" not in obj.__qualname__:
                return NotImplemented  # a module's or a class's function: by name
            return (_function, (_remember(obj.__code__), _remember(obj.__globals__),
                                obj.__name__, obj.__defaults__, obj.__kwdefaults__, len(cells)),
                    tuple(c.cell_contents for c in cells), None, None, _fill_cells)
        if isinstance(obj, (types.CodeType, types.ModuleType)):
            return _shared, (_remember(obj),)
        if isinstance(obj, mmap.mmap):
            return _anonymous_map, (obj[:],)
        if isinstance(obj, memoryview):
            if obj.nbytes != len(obj.obj):
                raise pickle.PicklingError("a view of part of a buffer")
            return memoryview, (obj.obj,)
        if hasattr(obj, "__dict__") and _is_plain(type(obj)):
            return (copyreg.__newobj__, (type(obj),), obj.__dict__, None, None,
                    _set_attributes)
        return NotImplemented


def save(obj: Any) -> bytes:
    """``obj`` (a world, or what holds one) as compressed bytes, for ``load``."""
    out = io.BytesIO()
    _Saver(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return zlib.compress(out.getvalue(), COMPRESSION)


def load(data: bytes) -> Any:
    """A new copy of what ``save`` saved, independent of the original and of other copies."""
    return pickle.loads(zlib.decompress(data))
