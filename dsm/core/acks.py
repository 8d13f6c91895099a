"""The writer's side of invalidations acknowledged straight to it (``Grant.acks``): which grants
wait for which holders, and the acknowledgements that came before their grant.

The directory grants a write at once and sends each holder of a read copy an ``Invalidate``
naming the writer; each holder acknowledges to the writer (``Invalidated``, node to node, or
through the directory). The grant and the acknowledgements travel on different pairs of sockets,
so they arrive in any order, and several transactions may be open at once: everything is keyed
by the directory's transaction and the run's first page (a transaction number alone could be
another shard's). Each holder counts once: a duplicate (a replay after a reset, one forwarded
as well as sent) changes nothing. Whether a transaction is over already (a late
acknowledgement) is the node core's to say (``NodeCore._answered``).
"""

from __future__ import annotations

from typing import Any

from dsm import protocol as p

#: (directory transaction, first page of its run)
Key = tuple[int, int]


class AwaitedAcks:
    def __init__(self, remembered: int):
        #: grants that await acknowledgements: the grant, its pages, the holders not heard from
        self._held: dict[Key, tuple[p.Grant, Any, set[str]]] = {}
        #: acknowledgements that came before their grant: the holders, per transaction (at most
        #: ``remembered`` transactions: those whose grant never comes are forgotten oldest first)
        self._early: dict[Key, set[str]] = {}
        self._remembered = remembered

    def holds(self, key: Key) -> bool:
        return key in self._held

    def granted(self, key: Key, grant: p.Grant, data: Any) -> bool:
        """``grant`` came; whether every acknowledgement it names had come before it (else it
        is kept until they do)."""
        waiting = set(grant.acks) - self._early.pop(key, set())
        if not waiting:
            return True
        self._held[key] = (grant, data, waiting)
        return False

    def acknowledged(self, key: Key, holder: str) -> tuple[p.Grant, Any] | None:
        """``holder``'s copies are gone; the grant and its pages if that was the last
        acknowledgement it waited for."""
        held = self._held.get(key)
        if held is None:  # before its grant
            early = self._early.get(key)
            if early is None:
                early = self._early[key] = set()
                while len(self._early) > self._remembered:
                    del self._early[next(iter(self._early))]
            early.add(holder)
            return None
        grant, data, waiting = held
        waiting.discard(holder)
        if waiting:
            return None
        del self._held[key]
        return grant, data

    def waiting_for(self, key: Key) -> set[str]:
        """The holders a kept grant still waits for (empty: none kept)."""
        held = self._held.get(key)
        return set(held[2]) if held is not None else set()

    def waiting_on(self, holder: str) -> list[Key]:
        """The kept grants that still wait for ``holder`` (it died: its copies with it)."""
        return [key for key, (_, _, waiting) in self._held.items() if holder in waiting]

    def runs(self) -> list[tuple[int, int]]:
        """The runs granted that await acknowledgements, as (first, count)."""
        return [(g.page, g.count) for g, _, _ in self._held.values()]

    @property
    def early(self) -> int:
        """How many transactions have acknowledgements kept for a grant not come yet."""
        return len(self._early)

    def clear(self) -> None:
        self._held.clear()
        self._early.clear()
