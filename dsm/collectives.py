"""Collective operations of a job's ranks, in the spirit of mpi4py's lowercase methods:
``node.bcast(value, root=0)``, ``node.allreduce(value, op="sum")``, ``node.gather(value,
root=0)`` and ``node.allgather(value)``, on numpy arrays, numpy scalars and plain Python values.

Every rank of the job (``dsm launch``, a launcher, or ``DSM_RANK``/``DSM_NODES``) calls the same
collectives in the same order, as in MPI: the n-th call of every rank is one operation. Each call
sends this rank's part to the directory, which answers every rank once all parts are in
(``dsm/directory/collectives.py``): one round trip after the last rank arrives. A large array
goes in chunks that fit the workload's socket to its agent (``chunk_elements``), one operation
each. A rank's death, or its leaving with the others waiting, fails the operation for the others
with a ``CollectiveError`` that names it.

This module holds what both ends share: the encoding of values on the wire and the reduction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsm.errors import DsmError
from dsm.protocol import CollectiveKind, ReduceOp

#: the bytes of one rank's part of one operation: what the workload's socket to its agent carries
#: with room for the envelope (``dsm.local.MAX_MESSAGE_BYTES`` is 64 KiB); a gather's answer holds
#: every rank's part, so its parts are this divided by the job's size
CHUNK_BYTES = 48 * 1024

REDUCTIONS = {"sum": ReduceOp.SUM, "min": ReduceOp.MIN, "max": ReduceOp.MAX}
_UFUNC = {ReduceOp.SUM: np.add, ReduceOp.MIN: np.minimum, ReduceOp.MAX: np.maximum}


class CollectiveError(DsmError):
    """A collective could not complete: a rank died or left, or the ranks disagreed."""


# --- the encoding ------------------------------------------------------------------------------
def encode(value: Any) -> Any:
    """``value`` as msgpack carries it: a numpy array or scalar as its dtype, shape and bytes
    (a dtype that holds Python objects is refused), anything else as itself."""
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise DsmError(f"a collective cannot carry dtype {arr.dtype} (it holds Python "
                           "objects, which are pointers into one process)")
        return {"nd": arr.dtype.str, "shape": list(arr.shape),
                "scalar": isinstance(value, np.generic), "data": np.ascontiguousarray(arr).tobytes()}
    return {"py": value}


def decode(wire: Any) -> Any:
    """The value ``encode`` made; a malformed one is a DsmError naming what was wrong."""
    if not isinstance(wire, dict):
        raise DsmError(f"a collective value must be a map, got {type(wire).__name__}")
    if "py" in wire:
        return wire["py"]
    try:
        dt = np.dtype(wire["nd"])
        shape = tuple(int(d) for d in wire["shape"])
        if dt.hasobject or any(d < 0 for d in shape):
            raise ValueError(f"dtype {dt} / shape {shape}")
        arr = np.frombuffer(wire["data"], dtype=dt).reshape(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise DsmError(f"a malformed collective value: {exc}") from None
    return arr[()] if wire.get("scalar") else arr.copy()


def reduce_values(values: list[Any], op: ReduceOp) -> Any:
    """The element-wise reduction of the ranks' values, in rank order (floating-point sums are
    the same on every run). Python numbers reduce to a Python number."""
    if op not in _UFUNC:
        raise CollectiveError(f"allreduce needs an operation ({', '.join(REDUCTIONS)})")
    plain = not any(isinstance(v, (np.ndarray, np.generic)) for v in values)
    try:
        arrays = [np.asarray(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise CollectiveError(f"allreduce: a value is not a number or an array: {exc}") from None
    for rank, arr in enumerate(arrays):
        if arr.dtype.kind not in "biufc":
            raise CollectiveError(f"allreduce: rank {rank}'s value is not numeric "
                                  f"(dtype {arr.dtype})")
        if arr.shape != arrays[0].shape or (not plain and arr.dtype != arrays[0].dtype):
            raise CollectiveError(f"allreduce: rank {rank} gave {arr.dtype}{list(arr.shape)}, "
                                  f"rank 0 {arrays[0].dtype}{list(arrays[0].shape)}")
    out = _UFUNC[op].reduce(np.stack(arrays), axis=0)
    if plain:
        return out.tolist() if out.ndim else out.item()
    return out if isinstance(values[0], np.ndarray) else out[()]


def result_for(kind: CollectiveKind, rank: int, root: int, op: ReduceOp,
               parts: list[Any]) -> Any:
    """What rank ``rank`` is answered (encoded), given every rank's encoded part in rank
    order: only a reduction looks inside them."""
    chunks = {part.get("of") if isinstance(part, dict) else None for part in parts}
    if len(chunks) > 1:
        raise CollectiveError(f"the ranks' values come in different numbers of chunks "
                              f"({sorted(map(str, chunks))}): an array larger than {CHUNK_BYTES} "
                              "bytes must have the same shape and dtype on every rank")
    if kind is CollectiveKind.BCAST:
        return parts[root]
    if kind is CollectiveKind.ALLREDUCE:
        return encode(reduce_values([decode(part) for part in parts], op))
    if kind is CollectiveKind.GATHER:
        return parts if rank == root else None
    return parts  # ALLGATHER


def chunk_elements(itemsize: int, kind: CollectiveKind, size: int) -> int:
    """How many elements of ``itemsize`` bytes one operation carries per rank."""
    budget = CHUNK_BYTES // size if kind in (CollectiveKind.GATHER, CollectiveKind.ALLGATHER) \
        else CHUNK_BYTES
    return max(1, budget // max(1, itemsize))


# --- the workload's side ---------------------------------------------------------------------
def run(node: Any, kind: CollectiveKind, value: Any, root: int = 0,
        op: ReduceOp = ReduceOp.NONE) -> Any:
    """Do collective ``kind`` with this rank's ``value`` (``node``: a ``dsm.Node``): one
    operation, or one per chunk of a large array. Waits as long as the other ranks take; a
    rank's death or departure ends the wait with a CollectiveError."""
    size, rank = node.size, node.rank
    if size is None or rank is None:
        raise CollectiveError("collectives are for the ranks of a job: this process has no rank "
                              "(start it with `dsm launch -n N`, a launcher such as srun or "
                              "mpirun, or DSM_RANK and DSM_NODES)")
    if not 0 <= root < size:
        raise CollectiveError(f"root {root} is not a rank of this job (0..{size - 1})")
    if kind is CollectiveKind.BCAST:
        return _bcast(node, value if rank == root else None, root)
    if not _chunked(value, kind, size):
        return _decoded(kind, node._collective(kind, root, op, encode(value)))
    flat = np.ascontiguousarray(value).reshape(-1)
    answers = [_decoded(kind, node._collective(kind, root, op, part))
               for part in _chunks(flat, chunk_elements(flat.itemsize, kind, size))]
    if kind is CollectiveKind.ALLREDUCE:
        return np.concatenate(answers).reshape(value.shape)
    if answers[0] is None:  # a gather's other ranks
        return None
    return [np.concatenate([a[r] for a in answers]).reshape(value.shape)
            for r in range(len(answers[0]))]


def _bcast(node: Any, value: Any, root: int) -> Any:
    """The root's value to every rank. A large array goes as its dtype and shape first, then
    its chunks; the other ranks give nothing."""
    kind = CollectiveKind.BCAST
    nothing = {"py": None}
    if value is None:
        first = nothing
    elif _chunked(value, kind, 1):  # its dtype and shape first
        first = {"py": None, "array": [value.dtype.str, list(value.shape)]}
    else:
        first = encode(value)
    wire = node._collective(kind, root, ReduceOp.NONE, first)
    if not isinstance(wire, dict) or "array" not in wire:
        return decode(wire)
    dtype, shape = np.dtype(wire["array"][0]), tuple(wire["array"][1])
    per_op = chunk_elements(dtype.itemsize, kind, 1)
    total = int(np.prod(shape, dtype=np.int64))
    flat = None if value is None else np.ascontiguousarray(value).reshape(-1)
    pieces = []
    for start in range(0, total, per_op):
        mine = nothing if flat is None else encode(flat[start:start + per_op])
        pieces.append(decode(node._collective(kind, root, ReduceOp.NONE, mine)))
    return np.concatenate(pieces).reshape(shape)


def _chunked(value: Any, kind: CollectiveKind, size: int) -> bool:
    return (isinstance(value, np.ndarray) and value.ndim > 0
            and value.size > chunk_elements(value.dtype.itemsize, kind, size))


def _chunks(flat: np.ndarray, per_op: int) -> list[dict]:
    starts = range(0, flat.size, per_op)
    parts = []
    for start in starts:
        part = encode(flat[start:start + per_op])
        part["of"] = len(starts)
        parts.append(part)
    return parts


def _decoded(kind: CollectiveKind, wire: Any) -> Any:
    if kind in (CollectiveKind.GATHER, CollectiveKind.ALLGATHER):
        return None if wire is None else [decode(part) for part in wire]
    return decode(wire)
