"""Atomic int64 arrays, held by the directory: a state machine with no sockets.

Every operation on an element is one message to the directory and its answer, done there in
the order the directory receives them: so the operations of every node, thread and forked child
on one atomic array are linearizable, and each costs one round trip, never a page's migration
(``dsm/atomics.py`` is the workload's side). Arithmetic wraps around as C's int64_t does.

An atomic array is made zero-filled by its first use, with its size; a use with another size is
an error. Its name is in the arrays' namespace (``node.arrays()`` lists it, ``node.free`` frees
it at once: its values are gone, the next use makes a fresh one).
"""

from __future__ import annotations

from dsm.errors import DsmError
from dsm.protocol import AtomicKind

#: the most elements all atomic arrays together hold (each is a Python int here): past it, a
#: new atomic array is refused rather than let any node grow the directory without bound
MAX_TOTAL_ELEMENTS = 1 << 24
#: int64 wraps around at these bounds
_SPAN = 1 << 64
_HALF = 1 << 63


class AtomicError(DsmError):
    """An atomic array was used wrongly (another size, an index past its end)."""


def wrapped(value: int) -> int:
    """``value`` as C's int64_t holds it."""
    return (value + _HALF) % _SPAN - _HALF


class AtomicTable:
    def __init__(self) -> None:
        self.arrays: dict[str, list[int]] = {}
        #: operations done (for the directory's counters)
        self.operations = 0
        self._elements = 0

    def apply(self, name: str, size: int, index: int, op: AtomicKind, operand: int,
              expected: int) -> int:
        """Do ``op`` on element ``index``; returns its value before (LOAD: its value)."""
        values = self.arrays.get(name)
        if values is None:
            if not name:
                raise AtomicError("an atomic array needs a non-empty name")
            if self._elements + size > MAX_TOTAL_ELEMENTS:
                raise AtomicError(f"atomic array {name!r} of {size} elements: the directory "
                                  f"holds {self._elements} of at most {MAX_TOTAL_ELEMENTS} "
                                  "(free some)")
            values = self.arrays[name] = [0] * size
            self._elements += size
        elif len(values) != size:
            raise AtomicError(f"atomic array {name!r} has {len(values)} elements; used with "
                              f"size {size}")
        if index >= size:
            raise AtomicError(f"atomic array {name!r}: index {index} is past its {size} elements")
        self.operations += 1
        old = values[index]
        if op is AtomicKind.STORE or op is AtomicKind.EXCHANGE:
            values[index] = operand
        elif op is AtomicKind.FETCH_ADD:
            values[index] = wrapped(old + operand)
        elif op is AtomicKind.COMPARE_EXCHANGE and old == expected:
            values[index] = operand
        return old

    def free(self, name: str) -> bool:
        """Forget atomic array ``name``; whether there was one."""
        values = self.arrays.pop(name, None)
        if values is None:
            return False
        self._elements -= len(values)
        return True
