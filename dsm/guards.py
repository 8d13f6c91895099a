"""Data that travels with its lock (entry consistency, as Midway did): ``node.lock(name,
guards=...)`` names the bytes the lock protects, and its grant carries their pages' home copies,
so that a lock-protected update costs the lock's round trips and no page fault over the network.

This module turns what a program names (numpy arrays, or slices of them, that this process got
from ``node.array(..., consistency="release")``) into the pages the lock guards, as
``[first, count, ...]`` runs (``LockAcquire.guards``), and refuses anything else with the
reason:

- memory outside the region, or of no array this process has asked for by name: the directory
  could not tell which data the lock protects;
- a sequentially consistent array: its pages have one owner at a time (or read copies the
  owner's next write invalidates), so a grant cannot install bytes beside them; under release
  consistency a node holds a clean copy of a page that anyone's release may update at home,
  which is what a grant can carry;
- more than ``MAX_GUARDED_PAGES`` pages: every grant carries them all.

Whole pages travel (the page of a guarded counter, not its 8 bytes): the node installs them
twinned and writable, as if the holder had written them already (``dsm.core.release``), so that
its update takes no write fault; its release sends their diff (empty if it only read them). So
the home hears at the grant that the holder may change them (``Dirtied``): should the holder's
node die before its release, the pages it was carried are lost, loudly, whether it wrote them or
not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from numpy.lib.array_utils import byte_bounds

from dsm.consistency import Consistency
from dsm.core.states import pack_runs
from dsm.errors import DsmError
from dsm.layout import Layout
from dsm.protocol import MAX_GUARDED_PAGES


class GuardError(DsmError, ValueError):
    """``guards`` names something a lock cannot carry (the message says what and why)."""


@dataclass(frozen=True)
class KnownArray:
    """An array this process got from ``node.array``: where it lies in the region."""

    name: str
    offset: int
    nbytes: int
    consistency: Consistency


def guard_runs(guards: Any, layout: Layout, arrays: Iterable[KnownArray],
               lock: str) -> list[int]:
    """The pages ``guards`` covers (one array or slice, or several), as sorted
    ``[first, count, ...]`` runs; GuardError unless each lies within one release-consistency
    array of ``arrays``. An empty slice guards nothing."""
    items = [guards] if isinstance(guards, np.ndarray) else _sequence(guards, lock)
    known = sorted(arrays, key=lambda a: a.offset)
    pages: set[int] = set()
    for i, item in enumerate(items):
        what = f"lock {lock!r}: guards[{i}]" if len(items) > 1 else f"lock {lock!r}: guards"
        if not isinstance(item, np.ndarray):
            raise GuardError(f"{what} is of type {type(item).__name__!r}: a lock guards numpy arrays "
                             "(or slices of them) got from node.array(..., "
                             "consistency='release')")
        if item.size == 0:
            continue
        low, high = byte_bounds(item)  # the bytes it spans, strides and all
        start, end = low - layout.base, high - layout.base
        if start < 0 or end > layout.size:
            raise GuardError(f"{what} lies outside the shared region ({layout.base:#x}+"
                             f"{layout.size:#x}): only shared arrays can travel with a lock")
        array = next((a for a in known if a.offset <= start and end <= a.offset + a.nbytes),
                     None)
        if array is None:
            raise GuardError(f"{what} is not within one array this process got from "
                             "node.array(...): ask for the array by name first")
        if array.consistency is not Consistency.RELEASE:
            raise GuardError(
                f"{what} is part of array {array.name!r}, which is {array.consistency.value}ly "
                "consistent: its pages have one owner at a time, and a lock's grant cannot "
                "install bytes beside the owner's copy. Make it with consistency='release' to "
                "let its data travel with the lock")
        size = layout.page_size
        pages.update(range(start // size, (end - 1) // size + 1))
    if len(pages) > MAX_GUARDED_PAGES:
        raise GuardError(f"lock {lock!r}: guards cover {len(pages)} pages; a lock guards at "
                         f"most {MAX_GUARDED_PAGES} ({MAX_GUARDED_PAGES * layout.page_size >> 20}"
                         " MiB), which every grant carries")
    return pack_runs(pages)


def _sequence(guards: Any, lock: str) -> list[Any]:
    if isinstance(guards, (str, bytes)) or not hasattr(guards, "__iter__"):
        raise GuardError(f"lock {lock!r}: guards must be a numpy array or a list of them, got "
                         f"one of type {type(guards).__name__!r}")
    return list(guards)
