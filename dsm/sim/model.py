"""The units of the simulator's model of memory (``dsm.sim.world``, ``dsm.sim.nodes``,
``dsm.sim.release``)."""

from __future__ import annotations

from dataclasses import fields

import struct

from dsm.layout import PAGE_SIZE

#: bytes of one location (an int64), and locations per page (the first words of each page)
SLOT_BYTES = 8
SLOTS_PER_PAGE = 2
#: the model's pages are the host's (the layout insists on it)
PAGE_BYTES = PAGE_SIZE
#: how a location's value is stored in a page
SLOT = struct.Struct("<q")


def slot_value(page: bytes | bytearray, slot: int) -> int:
    return SLOT.unpack_from(page, slot * SLOT_BYTES)[0]


class SimulationFailure(AssertionError):
    pass


class Rates:
    """A mixin of frozen dataclasses of probabilities (the model's faults, its kernel's events)."""

    @property
    def any(self) -> bool:
        """Whether any of them can strike."""
        return any(getattr(self, f.name) for f in fields(self))
