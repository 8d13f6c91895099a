"""Which nodes hold which arrays, and when a freed array's memory can be reclaimed: a state
machine with no sockets, kept by the coordinator beside its ``Allocations``.

A node *holds* an array from the first time it is told the array's place (``attached``) until it
frees it (``free``), leaves or dies (``node_gone``). ``free(name)`` unlinks the name at once
(``multiprocessing.shared_memory``'s ``unlink``: the next caller of that name gets a new array);
the memory is reclaimed once no node holds it any more, which each method returns. An array
nobody freed lives on, as before, for the next run to attach to.

``free`` by a node that holds an unlinked array of that name (another node freed it first) drops
that one: every rank of a job may free the arrays it used, in any order.
"""

from __future__ import annotations

from dsm.directory.allocations import Allocation, Allocations, AllocationError


class ArrayHolders:
    def __init__(self, allocations: Allocations):
        self._allocations = allocations
        #: id(allocation) -> (the allocation, the nodes that hold it)
        self._holders: dict[int, tuple[Allocation, set[str]]] = {}
        #: the allocations unlinked while held
        self._unlinked: dict[int, Allocation] = {}

    def attached(self, node: str, alloc: Allocation) -> None:
        self._holders.setdefault(id(alloc), (alloc, set()))[1].add(node)

    def holders(self, alloc: Allocation) -> set[str]:
        entry = self._holders.get(id(alloc))
        return set(entry[1]) if entry else set()

    def free(self, node: str, name: str) -> tuple[Allocation, list[Allocation]]:
        """``node`` frees array ``name``: (the array it freed, the ones to reclaim now)."""
        held = next((a for a, nodes in self._holders.values()
                     if a.name == name and node in nodes and id(a) in self._unlinked), None)
        live = self._allocations.get(name)
        if live is not None and node in self.holders(live):
            held = live  # the one it uses now, rather than an older one of that name
        if held is None:
            held = live
        if held is None:
            raise AllocationError(f"free: there is no array named {name!r}")
        if held is live:
            self._allocations.unlink(name)
            self._unlinked[id(live)] = live
        return held, self._drop(node, [held])

    def node_gone(self, node: str) -> list[Allocation]:
        """``node`` left or died: what it held and nobody else does, if unlinked, is reclaimed."""
        return self._drop(node, [a for a, nodes in self._holders.values() if node in nodes])

    def _drop(self, node: str, allocs: list[Allocation]) -> list[Allocation]:
        out = []
        for alloc in allocs:
            entry = self._holders.get(id(alloc))
            if entry is not None:
                entry[1].discard(node)
            if entry is None or not entry[1]:
                self._holders.pop(id(alloc), None)
                if self._unlinked.pop(id(alloc), None) is not None:
                    out.append(alloc)
        return out
