"""Atomic int64 arrays for workloads: ``node.atomic(name, size)``.

    counter = node.atomic("next_task")          # one element, zero at first
    while (i := counter[0].fetch_add(1)) < len(tasks):
        do(tasks[i])

Each element supports ``load``, ``store``, ``fetch_add``, ``exchange`` and ``compare_exchange``,
as C++'s ``std::atomic<int64_t>`` does; the operations of every node, thread and forked child on
one atomic array are linearizable. The values live in the directory, not in pages
(``dsm/directory/atomics.py``): each operation is one round trip to it, however many nodes
contend, where a counter in a shared array would move its page (and a lock) for every update.
Like ``std::atomic``, an atomic array is read and written through these operations only: it is
not a numpy array (``to_numpy`` takes a copy, element by element, not as one snapshot).

Under ``dsm run`` (and ``dsm launch``) without keys, a workload sends its atomics straight to the
directory on a socket of its own (``DirectClient``): one round trip, not two more process hops
through the agent. A request whose answer does not come in ``RETRY_S`` is sent again, and the
directory does each request id of a client once (``ProgramRequests.atomic_direct``), so a lost
message costs a retry, never a second increment. Elsewhere (keys, ``dsm.attach(directory=)``)
they go through the agent.

Ordering with the pages: an operation returns after the directory has done it, and pages are
sequentially consistent, so what a process wrote before an operation is visible to whoever
observes its effect. (For ``consistency="release"`` arrays, only locks and barriers publish
writes.)
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from dsm import local
from dsm.errors import DsmError
from dsm.launchers import ATOMICS_ENDPOINT_ENV  # (dsm run sets it)
from dsm.protocol import MAX_ATOMIC_ELEMENTS, AtomicKind

if TYPE_CHECKING:
    from dsm.node import Node


class AtomicArray:
    """``size`` int64 elements shared by the whole cluster under ``name``."""

    def __init__(self, node: "Node", name: str, size: int = 1):
        if not name:
            raise DsmError("an atomic array needs a non-empty name")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) \
                or not 1 <= size <= MAX_ATOMIC_ELEMENTS:
            raise DsmError(f"atomic array {name!r}: size must be a whole number in 1.."
                           f"{MAX_ATOMIC_ELEMENTS}, got {size!r}")
        self._node = node
        self.name = name
        self.size = int(size)
        self.load(0)  # made now if it is new; another size is an error here, not at first use

    def _do(self, index: int, op: AtomicKind, operand: int = 0, expected: int = 0) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"atomic array {self.name!r}: an index must be an int, got {index!r}")
        if not -self.size <= index < self.size:
            raise IndexError(f"atomic array {self.name!r}: index {index} is out of range for "
                             f"{self.size} elements")
        fields = dict(name=self.name, size=self.size, index=int(index) % self.size, op=int(op),
                      operand=_int64(operand), expected=_int64(expected))
        direct = _direct_client()
        if direct is not None:
            return direct.call(fields)
        return self._node._request(local.AtomicRequest, **fields).value

    def load(self, index: int = 0) -> int:
        return self._do(index, AtomicKind.LOAD)

    def store(self, index: int, value: int) -> None:
        self._do(index, AtomicKind.STORE, value)

    def fetch_add(self, index: int, delta: int = 1) -> int:
        """Add ``delta`` (wrapping around as int64 does); returns the value before."""
        return self._do(index, AtomicKind.FETCH_ADD, delta)

    def exchange(self, index: int, value: int) -> int:
        """Store ``value``; returns the value before."""
        return self._do(index, AtomicKind.EXCHANGE, value)

    def compare_exchange(self, index: int, expected: int, desired: int) -> tuple[bool, int]:
        """Store ``desired`` if the element holds ``expected``; returns (whether it did, the
        value before)."""
        old = self._do(index, AtomicKind.COMPARE_EXCHANGE, desired, expected)
        return old == expected, old

    def to_numpy(self) -> np.ndarray:
        """A copy of the values, loaded one by one."""
        return np.array([self.load(i) for i in range(self.size)], dtype=np.int64)

    def __getitem__(self, index: int) -> "AtomicInt":
        return AtomicInt(self, index)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"AtomicArray({self.name!r}, size={self.size})"


class AtomicInt:
    """One element of an atomic array: ``counter[0].fetch_add(1)``."""

    def __init__(self, array: AtomicArray, index: int):
        self._array = array
        self.index = index

    def load(self) -> int:
        return self._array.load(self.index)

    def store(self, value: int) -> None:
        self._array.store(self.index, value)

    def fetch_add(self, delta: int = 1) -> int:
        return self._array.fetch_add(self.index, delta)

    def exchange(self, value: int) -> int:
        return self._array.exchange(self.index, value)

    def compare_exchange(self, expected: int, desired: int) -> tuple[bool, int]:
        return self._array.compare_exchange(self.index, expected, desired)


def _int64(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"atomic operands are ints, got {value!r}")
    value = int(value)
    if not -(1 << 63) <= value < (1 << 63):
        raise OverflowError(f"{value} does not fit in an int64")
    return value


# --- straight to the directory ------------------------------------------------------------------
#: a request with no answer after this long is sent again (the directory answers a repeat of
#: one it did from its cache: each request is done once)
RETRY_S = 0.5
#: how long an operation may take in all
DIRECT_TIMEOUT_S = 15.0
_clients: dict[tuple[int, int], "DirectClient"] = {}


class DirectClient:
    """One thread's own DEALER to the directory, for atomics: one round trip, no agent."""

    def __init__(self, endpoint: str):
        import zmq

        from dsm import protocol, wire

        self._zmq, self._p, self._wire = zmq, protocol, wire
        self._ctx = zmq.Context()  # this process's own (a forked child makes a new one)
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        # a blocking receive that gives up after RETRY_S: one call per answer, no poll first
        # (the operation is one round trip: every call on the way shows in its latency)
        self._sock.setsockopt(zmq.RCVTIMEO, int(RETRY_S * 1000))
        self._sock.connect(endpoint)
        self._next_req = 1

    def call(self, fields: dict) -> int:
        p = self._p
        req = self._next_req
        self._next_req += 1
        frames = p.encode(p.Atomic(req=req, **fields))
        deadline = time.monotonic() + DIRECT_TIMEOUT_S
        while time.monotonic() < deadline:
            self._wire.send_frames(self._sock, frames)
            retry_at = time.monotonic() + RETRY_S
            while time.monotonic() < retry_at:
                try:
                    reply = self._sock.recv_multipart()
                except self._zmq.Again:
                    break  # no answer within RETRY_S: send it again
                answer, _ = p.decode(reply, 0, p.Direction.TO_NODE)
                if getattr(answer, "req", None) != req:
                    continue  # a late answer to a retry of an earlier request
                if isinstance(answer, p.Error):
                    raise DsmError(answer.message)
                return answer.value
        raise DsmError(f"the directory did not answer an atomic operation within "
                       f"{DIRECT_TIMEOUT_S:g} s")


def _direct_client() -> "DirectClient | None":
    endpoint = os.environ.get(ATOMICS_ENDPOINT_ENV)
    if not endpoint:
        return None
    key = (os.getpid(), threading.get_ident())
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = DirectClient(endpoint)
    return client
