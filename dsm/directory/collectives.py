"""The collectives of the jobs' ranks, served by the directory: a state machine with no sockets
(``dsm/collectives.py`` is the workload's side and says what each operation does).

Operation ``seq`` of job J waits until every rank of J has given its part, then every rank is
answered at once. The ranks must agree on what the operation is (its kind, root and reduction);
a rank that disagrees, gives two parts, dies or leaves while parts are missing ends the
operation with an error for every rank, naming it. A job that broke (one of its nodes died)
fails every later operation at once, as its barriers do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dsm.collectives import CollectiveError, result_for
from dsm.errors import DsmError
from dsm.protocol import CollectiveKind, ReduceOp

#: failed operations remembered for the ranks that have not given their part yet (the oldest
#: forgotten first): they are answered with the failure instead of waiting for the others
FAILED_KEPT = 1024


class Answer(NamedTuple):
    node: str
    req: int
    value: Any = None
    error: str | None = None


@dataclass
class _Operation:
    kind: CollectiveKind
    root: int
    op: ReduceOp
    size: int
    #: rank -> (node, req, part)
    parts: dict[int, tuple[str, int, Any]] = field(default_factory=dict)

    def describe(self) -> str:
        name = self.kind.name.lower()
        if self.kind is CollectiveKind.ALLREDUCE:
            return f"{name}({self.op.name.lower()})"
        return f"{name}(root={self.root})" if self.kind in (CollectiveKind.BCAST,
                                                              CollectiveKind.GATHER) else name


class CollectiveTable:
    def __init__(self) -> None:
        self._pending: dict[tuple[str, int], _Operation] = {}
        #: (job, seq) -> why it failed, for its late ranks
        self._failed: dict[tuple[str, int], str] = {}
        #: operations completed (for the directory's counters)
        self.completed = 0

    def contribute(self, node: str, req: int, job: str, rank: int, size: int, seq: int,
                   kind: CollectiveKind, root: int, op: ReduceOp, part: Any,
                   gone: dict[int, str] | None = None) -> list[Answer]:
        """Rank ``rank``'s part of operation ``seq``; ``gone``: the ranks of the job that
        left or died (rank -> node), whose parts will never come."""
        key = (job, seq)
        why = self._failed.get(key)
        if why is not None:
            return [Answer(node, req, error=why)]
        wanted = _Operation(kind, root, op, size)
        name = f"collective #{seq} of job {job or 'without a name'}"
        if root >= size:
            return self._fail(key, f"{name}: {wanted.describe()} names root {root}, but the job "
                                   f"has {size} ranks", [(node, req)])
        pending = self._pending.setdefault(key, wanted)
        if (pending.kind, pending.root, pending.op) != (kind, root, op):
            first = min(pending.parts, default=rank)
            return self._fail(key, f"{name}: rank {rank} called {wanted.describe()}, rank "
                                   f"{first} {pending.describe()}", [(node, req)])
        if rank in pending.parts:
            return [Answer(node, req, error=f"{name}: rank {rank} gave its part twice (one "
                                            "process per rank calls the collectives)")]
        pending.parts[rank] = (node, req, part)
        missing = sorted(r for r in (gone or {}) if r not in pending.parts)
        if missing:
            return self._fail(key, f"{name} ({pending.describe()}): rank {missing[0]} (node "
                                   f"{gone[missing[0]]}) left the job before giving its part", [])
        if len(pending.parts) < pending.size:
            return []
        del self._pending[key]
        parts = [pending.parts[r][2] for r in range(pending.size)]
        try:
            shared = None if kind is CollectiveKind.GATHER else result_for(kind, 0, root, op,
                                                                          parts)
            out = [Answer(n, q, shared if kind is not CollectiveKind.GATHER
                          else result_for(kind, r, root, op, parts))
                   for r, (n, q, _) in sorted(pending.parts.items())]
        except DsmError as exc:
            return self._fail(key, f"{name}: {exc}", [(n, q) for n, q, _ in
                                                      pending.parts.values()], known=True)
        self.completed += 1
        return out

    def _fail(self, key: tuple[str, int], why: str, also: list[tuple[str, int]],
              known: bool = False) -> list[Answer]:
        """Operation ``key`` fails: every rank waiting in it, ``also``, and every rank that
        comes later is answered ``why``."""
        pending = self._pending.pop(key, None)
        waiting = [] if pending is None or known else [(n, q) for n, q, _ in
                                                         pending.parts.values()]
        self._failed[key] = why
        while len(self._failed) > FAILED_KEPT:
            del self._failed[next(iter(self._failed))]
        return [Answer(n, q, error=why) for n, q in waiting + also]

    def broken(self, node: str, req: int, why: str) -> list[Answer]:
        """A rank of a broken job asks: it is answered at once."""
        return [Answer(node, req, error=why)]

    def rank_gone(self, job: str, rank: int, node: str, how: str) -> list[Answer]:
        """Rank ``rank`` (``node``) of ``job`` died or left (``how``): every operation of the
        job still missing its part fails."""
        out: list[Answer] = []
        for key in [k for k, o in self._pending.items() if k[0] == job and rank not in o.parts]:
            op = self._pending[key]
            out += self._fail(key, f"collective #{key[1]} ({op.describe()}) of job "
                                   f"{job or 'without a name'}: rank {rank} (node {node}) {how} "
                                   "before giving its part", [])
        return out


def check_part(part: Any) -> None:
    """A part must be a map (``dsm.collectives.encode``): anything else is refused at once."""
    if not isinstance(part, dict):
        raise CollectiveError(f"a collective's value must be a map, got {type(part).__name__}")
