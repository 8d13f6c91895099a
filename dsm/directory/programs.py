"""What the directory serves to programs beyond pages, locks and barriers: array lifetimes
(``Free``, ``ArraysQuery``, and who holds what), atomic arrays (``Atomic``) and a job's
collectives (``Collective``). Each input returns the messages to send; the state lives in the
state machines it drives (``lifetimes.py``, ``atomics.py``, ``collectives.py``), and freeing
memory that nobody holds goes through ``reclaim``, which the service supplies (the pages here,
the other shards, the allocation table).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable

from dsm import protocol as p
from dsm.protocol import ATOMIC_META_KEY
from dsm.collectives import CollectiveError
from dsm.errors import DsmError
from dsm.directory.allocations import Allocation, Allocations
from dsm.directory.atomics import AtomicError, AtomicTable
from dsm.directory.collectives import Answer, CollectiveTable, check_part
from dsm.directory.lifetimes import ArrayHolders
from dsm.directory.pages import Send
from dsm.directory.sync import SyncTable

log = logging.getLogger(__name__)

#: the direct atomic clients whose last answer is kept for a retry (the oldest forgotten first)
DIRECT_CLIENTS_KEPT = 4096


class ProgramRequests:
    def __init__(self, allocations: Allocations, sync: SyncTable,
                 reclaim: Callable[[Allocation], list[Send]]):
        self.allocations = allocations
        self.holders = ArrayHolders(allocations)
        self.atomics = AtomicTable()
        self.collectives = CollectiveTable()
        self._sync = sync
        self._reclaim = reclaim
        #: each direct client's last request id and its answer (``atomic_direct``)
        self._direct_answers: OrderedDict[bytes, tuple[int, p.Message]] = OrderedDict()

    # --- array lifetimes ---------------------------------------------------------------------
    def check_new_name(self, name: str) -> None:
        """An array may not take an atomic array's name."""
        if name in self.atomics.arrays:
            raise AtomicError(f"{name!r} names an atomic array: an array needs another name")

    def attached(self, node: str, alloc: Allocation) -> None:
        self.holders.attached(node, alloc)

    def free(self, node: str, msg: p.Free) -> list[Send]:
        if self.atomics.free(msg.name):
            log.info("node %s freed atomic array %r", node, msg.name)
            return [Send(node, p.Freed(msg.req, 0))]
        freed, reclaimable = self.holders.free(node, msg.name)
        out = [Send(node, p.Freed(msg.req, len(self.holders.holders(freed))))]
        log.info("node %s freed array %r (%d bytes at %#x)%s", node, freed.name, freed.nbytes,
                 freed.offset, "" if reclaimable else
                 f": reclaimed when {len(self.holders.holders(freed))} more node(s) drop it")
        for alloc in reclaimable:
            out += self._reclaim(alloc)
        return out

    def arrays(self, node: str, msg: p.ArraysQuery) -> list[Send]:
        rows = [(a.name, a.nbytes, a.meta, len(self.holders.holders(a)))
                for a in self.allocations.live()]
        rows += [(name, 8 * len(values), {ATOMIC_META_KEY: True, "shape": [len(values)],
                                          "dtype": "<i8"}, 0)
                 for name, values in sorted(self.atomics.arrays.items())]
        return [Send(node, p.ArrayList(msg.req, rows))]

    # --- atomics ------------------------------------------------------------------------------
    def atomic(self, node: str, msg: p.Atomic) -> list[Send]:
        if msg.name not in self.atomics.arrays and self.allocations.get(msg.name) is not None:
            raise AtomicError(f"{msg.name!r} names an array: an atomic array needs another name")
        value = self.atomics.apply(msg.name, msg.size, msg.index, p.AtomicKind(msg.op),
                                   msg.operand, msg.expected)
        return [Send(node, p.AtomicResult(msg.req, value))]

    def atomic_direct(self, client: bytes, msg: p.Atomic) -> p.Message:
        """An atomic operation sent by a workload straight to the directory (no agent, no
        session): done once per request id of that client, however often it is sent again
        (a retry after a lost answer gets the answer it lost)."""
        done = self._direct_answers.get(client)
        if done is not None and done[0] == msg.req:
            return done[1]
        try:
            answer: p.Message = self.atomic("", msg)[0].message
        except DsmError as exc:
            answer = p.Error(msg.req, str(exc))
        self._direct_answers[client] = (msg.req, answer)
        self._direct_answers.move_to_end(client)
        while len(self._direct_answers) > DIRECT_CLIENTS_KEPT:
            self._direct_answers.popitem(last=False)
        return answer

    # --- collectives --------------------------------------------------------------------------
    def collective(self, node: str, msg: p.Collective) -> list[Send]:
        check_part(msg.value)
        where = self._sync.placement(node)
        if where is None:
            raise CollectiveError(
                "collectives are for the ranks of a job: this node has no rank (start it with "
                "`dsm launch -n N`, a launcher such as srun or mpirun, or DSM_RANK and DSM_NODES)")
        if where.broken is not None:
            return _sends(self.collectives.broken(node, msg.req, where.broken))
        return _sends(self.collectives.contribute(
            node, msg.req, where.job, where.rank, where.size, msg.seq,
            p.CollectiveKind(msg.kind), msg.root, p.ReduceOp(msg.op), msg.value, where.gone))

    # --- departures ---------------------------------------------------------------------------
    def node_gone(self, node: str, how: str) -> list[Send]:
        """``node`` left or died (``how`` says which): the collectives of its job that wait for
        it fail, and the freed arrays only it held are reclaimed. Call before the sync table
        forgets its job."""
        out: list[Send] = []
        where = self._sync.placement(node)
        if where is not None:
            out += _sends(self.collectives.rank_gone(where.job, where.rank, node, how))
        for alloc in self.holders.node_gone(node):
            out += self._reclaim(alloc)
        return out


def _sends(answers: list[Answer]) -> list[Send]:
    return [Send(a.node, p.Error(a.req, a.error) if a.error is not None
                 else p.CollectiveResult(a.req, a.value)) for a in answers]
