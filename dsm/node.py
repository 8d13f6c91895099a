"""The workload API: ``dsm.attach()`` and ``Node``.

Attaching receives the node's memfd from the agent, maps it at the cluster-wide base address,
registers it MISSING|WP on a uffd of this process and hands the uffd to the agent, which from then
on serves every fault of this process (and of its forked children) in its own process: plain numpy
and memoryview code on the region just works (see DESIGN.md on why the handler cannot live here).

This process keeps its own reference to the uffd: were the agent to die, a closed last reference
would make faults read zero pages; with ours open they block instead, and the watchdog process
that ``attach`` starts kills this process loudly.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, NamedTuple

import numpy as np

from dsm import collectives, libc, local
from dsm.atomics import AtomicArray
from dsm.protocol import ATOMIC_META_KEY, CollectiveKind, CreateMode, ReduceOp
from dsm.consistency import CONSISTENCIES, META_KEY, Consistency
from dsm.agent.launch import StartedAgent, start_agent
from dsm.errors import ConfigError, DsmError, ProtocolError
from dsm.guards import KnownArray, guard_runs
from dsm.launchers import placement
from dsm.layout import AddressError, Layout
from dsm.sync import Barrier, Lock
from dsm.needs import OPTIONAL_WORKLOAD_FEATURES, REGION_REGISTER_MODE, WORKLOAD_FEATURES
from dsm.uffd import Uffd

log = logging.getLogger(__name__)

#: how long attach waits for the agent at each step
ATTACH_TIMEOUT_S = 10.0
#: the watchdog that kills this process loudly if the agent dies (run by path: it starts fast)
WATCHDOG = os.path.join(os.path.dirname(__file__), "watchdog.py")
#: how long a request to the agent (allocation, stats) may take
REQUEST_TIMEOUT_S = 15.0


class ArrayInfo(NamedTuple):
    """An array of the cluster, as ``node.arrays()`` lists it."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int
    consistency: str  #: "sequential", "release", or "atomic" for an atomic array
    holders: int  #: how many nodes hold it now


class LostRange(NamedTuple):
    """Bytes [start, end) of an array, lost when node ``dead_node`` died."""

    start: int
    end: int
    dead_node: str


def _lost_ranges(ranges: list) -> dict[str, list[LostRange]]:
    out: dict[str, list[LostRange]] = {}
    for name, start, end, dead in ranges:
        out.setdefault(name, []).append(LostRange(int(start), int(end), str(dead)))
    return out


class AttachError(DsmError):
    """This process could not attach to a node agent."""


class Node:
    """This process's view of the shared region."""

    def __init__(self, sock: socket.socket, layout: Layout, node_name: str, memfd: int,
                 uffd: Uffd, agent_proc: StartedAgent | None,
                 watchdog: subprocess.Popen | None = None):
        self._sock = sock
        self._agent_path = sock.getpeername()
        self._connections: dict[tuple[int, int], socket.socket] = {
            (os.getpid(), threading.get_ident()): sock
        }
        self._req_lock = threading.Lock()
        self.layout = layout
        self.name = node_name
        self._memfd = memfd
        self._uffd = uffd
        self._agent_proc = agent_proc
        self._watchdog = watchdog
        self._next_req = 1
        self._buffer = (ctypes.c_char * layout.size).from_address(layout.base)
        self._closed = False
        #: how many collective operations this process has done: the n-th of every rank of the
        #: job is one operation
        self._collective_seq = 0
        #: the arrays this process got from ``array``, by offset: what a lock may guard
        self._arrays: dict[int, KnownArray] = {}

    # --- where this process stands in its job --------------------------------------------------
    @property
    def rank(self) -> int | None:
        """This process's rank in its job: ``DSM_RANK`` (which ``dsm run`` sets from Slurm, Open
        MPI or PMI, and ``dsm-node`` from its ticket), else the launcher's; None outside one."""
        where = placement()
        return None if where is None else where.rank

    @property
    def size(self) -> int | None:
        """How many processes the job has: ``DSM_NODES``, else the launcher's (``SLURM_NTASKS``,
        ``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE``); None outside a launcher."""
        where = placement()
        return None if where is None else where.size

    # --- the region ------------------------------------------------------------------------------
    @property
    def base(self) -> int:
        return self.layout.base

    def memoryview(self) -> memoryview:
        """The whole region as a writable memoryview (touching it faults pages in)."""
        return memoryview(self._buffer).cast("B")

    def array(self, name: str, shape: Any, dtype: Any = np.float64,
              consistency: str = Consistency.SEQUENTIAL.value,
              create: bool | None = None) -> np.ndarray:
        """The cluster-wide array ``name``: created zero-filled by the first caller anywhere,
        the same memory for every later caller. Another shape, dtype or consistency is an
        error. ``consistency``: ``"sequential"`` (every read sees the last write anywhere) or
        ``"release"`` (writes are seen by others after their next lock release or barrier, and
        pages may have many writers: ``dsm.consistency``). ``create``: True fails if the array
        exists already (a run that must start from zeros), False fails if it does not (attach
        only), None (the default) either. An array lives until ``free``."""
        try:
            model = Consistency(consistency)
        except ValueError:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCIES)}, got "
                             f"{consistency!r}") from None
        dt, shape = checked_dtype(dtype), checked_shape(shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        meta = {"shape": list(shape), "dtype": dt.str}
        if model is Consistency.RELEASE:  # (sequential arrays' meta is as it always was)
            meta[META_KEY] = model.value
        mode = {None: CreateMode.EITHER, False: CreateMode.ATTACH, True: CreateMode.CREATE}
        if create not in mode:
            raise ValueError(f"create must be True, False or None, got {create!r}")
        reply = self._request(local.AllocRequest, name=name, nbytes=max(nbytes, 1), meta=meta,
                              create=int(mode[create]))
        offset = reply.offset
        self.layout.check_offset(offset, nbytes)
        self._arrays[offset] = KnownArray(name, offset, nbytes, model)
        return np.ndarray(shape, dtype=dt, buffer=self.memoryview(), offset=offset)

    def free(self, name: str) -> int:
        """Free array (or atomic array) ``name``, as ``SharedMemory.unlink`` does: the name is
        gone at once (the next ``array(name, ...)`` anywhere makes a new one, zero-filled); the
        memory, its pages and their copies everywhere are reclaimed when the last node that
        holds it frees it too, leaves or dies. An atomic array's values are gone at once. Every
        rank of a job may free the arrays it used. Returns how many other nodes still hold it.
        Using the array after freeing it is an error of the program, as using memory after
        ``munmap`` is: it may read another array's data."""
        holders = self._request(local.FreeRequest, name=name).holders
        self._arrays = {off: a for off, a in self._arrays.items() if a.name != name}
        return holders

    def arrays(self) -> list[ArrayInfo]:
        """The arrays of the cluster that a caller can find by name (freed ones are not
        listed), in address order, then the atomic arrays."""
        out = []
        for name, nbytes, meta, holders in self._request(local.ArraysRequest).arrays:
            kind = ("atomic" if meta.get(ATOMIC_META_KEY)
                    else meta.get(META_KEY, Consistency.SEQUENTIAL.value))
            out.append(ArrayInfo(name, tuple(meta.get("shape", ())),
                                 np.dtype(meta.get("dtype", "u1")), nbytes, kind, holders))
        return out

    def atomic(self, name: str, size: int = 1) -> AtomicArray:
        """The cluster-wide atomic int64 array ``name`` of ``size`` elements (zero at first):
        ``fetch_add``, ``compare_exchange``, ``exchange``, ``load``, ``store`` on its elements,
        linearizable from every node, thread and forked child, one round trip each
        (``dsm.atomics``)."""
        return AtomicArray(self, name, size)

    # --- collectives (the ranks of a job: ``dsm.collectives``) -------------------------------
    def bcast(self, value: Any = None, root: int = 0) -> Any:
        """Rank ``root``'s ``value`` on every rank (the others' ``value`` is ignored)."""
        return collectives.run(self, CollectiveKind.BCAST, value, root)

    def allreduce(self, value: Any, op: str = "sum") -> Any:
        """The element-wise ``op`` ("sum", "min" or "max") of every rank's ``value`` (a number,
        a numpy scalar or an array of one shape and dtype on every rank), on every rank."""
        if op not in collectives.REDUCTIONS:
            raise ValueError(f"op must be one of {', '.join(collectives.REDUCTIONS)}, got {op!r}")
        return collectives.run(self, CollectiveKind.ALLREDUCE, value,
                               op=collectives.REDUCTIONS[op])

    def gather(self, value: Any, root: int = 0) -> list[Any] | None:
        """Every rank's ``value`` in rank order on rank ``root``; None on the others."""
        return collectives.run(self, CollectiveKind.GATHER, value, root)

    def allgather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` in rank order, on every rank."""
        return collectives.run(self, CollectiveKind.ALLGATHER, value)

    def _collective(self, kind: CollectiveKind, root: int, op: ReduceOp, part: Any) -> Any:
        """One operation: this rank's encoded ``part`` in, the encoded answer out."""
        self._collective_seq += 1
        try:
            reply = self._request(local.CollectiveRequest, timeout_s=None,
                                  seq=self._collective_seq, kind=int(kind), root=root,
                                  op=int(op), value=part)
        except local.AgentGone:
            raise
        except DsmError as exc:
            raise collectives.CollectiveError(str(exc)) from None
        return reply.value

    def address_of(self, array: np.ndarray) -> int:
        return array.__array_interface__["data"][0]

    def stats(self) -> dict:
        """This node's counters and fault-latency histogram."""
        return dict(self._request(local.StatsRequest).stats)

    # --- lost pages (see the README: when a node dies) -----------------------------------------
    def lost(self) -> dict[str, list[LostRange]]:
        """The lost ranges of every array: pages whose newest contents died with a node. Every
        access to them fails (SIGBUS) until ``forget_lost``. Arrays without lost pages are not
        listed; pages outside every array are listed under ""."""
        return _lost_ranges(self._request(local.LostRequest).ranges)

    def forget_lost(self, name: str) -> list[LostRange]:
        """Give up the lost pages of array ``name``: from now on they read as zeros, on every
        node. Returns the ranges that were lost."""
        return _lost_ranges(self._request(local.ForgetLostRequest, name=name).ranges).get(name, [])

    # --- talking to the agent --------------------------------------------------------------------
    def _connection(self) -> socket.socket:
        """This thread's own connection to the agent (answers of concurrent requests from
        several threads, or from a forked child, must not cross)."""
        key = (os.getpid(), threading.get_ident())
        sock = self._connections.get(key)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.settimeout(ATTACH_TIMEOUT_S)
            try:
                sock.connect(self._agent_path)
                # every connection is greeted with the layout (and the memfd, which we have)
                greeting, fds = local.recv(sock, local.Direction.TO_WORKLOAD)
            except (OSError, socket.timeout, DsmError) as exc:
                sock.close()
                raise local.AgentGone(f"cannot reach the node agent at {self._agent_path}: {exc}") from None
            local.close_fds(fds)
            if not isinstance(greeting, local.Greeting):
                sock.close()
                raise local.AgentGone(f"the node agent at {self._agent_path} greeted with a "
                                      f"{type(greeting).__name__}, expected a Greeting")
            self._connections[key] = sock
        return sock

    def _request(self, kind: type[local.Request], /,
                 timeout_s: float | None = REQUEST_TIMEOUT_S, **fields: Any) -> Any:
        """Send a request of ``kind`` with ``fields`` to the agent and wait for its answer, a
        ``kind.ANSWER`` (``timeout_s=None``: as long as it takes, for lock and barrier waits;
        the agent's death still ends the wait). An ErrorAnswer raises DsmError.

        Only the answer carrying this request's id is taken: an earlier request on this
        connection that timed out may still be answered later, and that late answer (another
        array's offset, say) is dropped here instead of being taken for this one's."""
        if self._closed:
            raise DsmError("this node is detached")
        sock = self._connection()
        with self._req_lock:
            req = self._next_req
            self._next_req += 1
        local.send(sock, kind(req=req, pid=os.getpid(), tid=threading.get_ident(), **fields))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:  # settimeout(0) would mean "non-blocking"
                raise self._no_answer(kind, timeout_s)
            sock.settimeout(left)
            try:
                reply, fds = local.recv(sock, local.Direction.TO_WORKLOAD)
            except socket.timeout:
                raise self._no_answer(kind, timeout_s) from None
            local.close_fds(fds)
            answers = getattr(reply, "req", None)
            # an error without an id answers a message the agent could not read: this one
            if answers == req or (answers == 0 and isinstance(reply, local.ErrorAnswer)):
                break
            log.debug("dropped a late %s to request %s while waiting for request %s (%s)",
                      type(reply).__name__, answers, req, kind.__name__)
        if isinstance(reply, local.ErrorAnswer):
            raise DsmError(reply.message)
        if not isinstance(reply, kind.ANSWER):
            raise ProtocolError(f"the node agent answered a {kind.__name__} with a "
                                f"{type(reply).__name__}, expected a {kind.ANSWER.__name__}")
        return reply

    @staticmethod
    def _no_answer(kind: type[local.Request], timeout_s: float | None) -> local.NoAnswer:
        return local.NoAnswer(
            f"the node agent did not answer a {kind.TAG} request within {timeout_s} s"
        )

    # --- synchronization -------------------------------------------------------------------------
    def lock(self, name: str, guards: Any = None) -> "Lock":
        """The cluster-wide mutual-exclusion lock ``name`` (FIFO, not reentrant). ``guards``:
        the data it protects, a numpy array or slice (or a list of them) of arrays made with
        ``consistency="release"``: each grant brings their current contents with it, so that
        the holder's accesses to them fault on nothing over the network (``dsm.guards``)."""
        runs = (guard_runs(guards, self.layout, self._arrays.values(), name)
                if guards is not None else [])
        return Lock(self, name, runs)

    def barrier(self, name: str, parties: int) -> "Barrier":
        """The cluster-wide barrier ``name`` of ``parties`` (reusable)."""
        return Barrier(self, name, parties)

    # --- detaching -------------------------------------------------------------------------------
    def close(self) -> None:
        """Detach: unmapping the region lets the agent give this process's pages back."""
        if self._closed:
            return
        self._closed = True
        self._buffer = None
        try:
            local.send(self._sock, local.Detach())
        except OSError:
            pass
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
        libc.munmap(self.layout.base, self.layout.size)
        self._uffd.close()
        os.close(self._memfd)
        for conn in self._connections.values():
            conn.close()
        if self._agent_proc is not None:
            self._agent_proc.stop()

    def __enter__(self) -> "Node":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def checked_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as numpy's, if an array of it can live in shared memory: one that holds Python
    objects (pointers into one process) cannot, and is refused naming it."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise DsmError(f"array dtype {dtype!r} is not a numpy dtype: {exc}") from None
    if dt.hasobject:
        raise DsmError(f"array dtype {dt} holds Python objects, which are pointers into one "
                       "process's memory: another node would read garbage (use numbers, bytes "
                       "(dtype 'S<n>') or a structured dtype of those)")
    return dt


def checked_shape(shape: Any) -> tuple[int, ...]:
    """``shape`` as a tuple of whole numbers >= 1; DsmError naming it otherwise."""
    dims = tuple(shape) if np.iterable(shape) else (shape,)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise DsmError(f"array shape {shape!r}: every dimension must be a whole number >= 1, "
                           f"got {d!r}")
    return tuple(int(d) for d in dims)


def attach(directory: str | None = None, *, socket_path: str | None = None,
           node_name: str | None = None) -> Node:
    """Attach this process to its node agent: the one named by ``socket_path`` or by
    ``$DSM_AGENT_SOCKET`` (set by ``dsm run``), or, given ``directory``, one started for this
    process as a child process."""
    agent_proc = None
    path = socket_path or os.environ.get(local.AGENT_SOCKET_ENV)
    if path is None:
        if directory is None:
            raise ConfigError(
                f"no node agent: run under `dsm run`, set ${local.AGENT_SOCKET_ENV}, "
                "or pass directory=ENDPOINT to start an agent for this process"
            )
        name = node_name or f"{socket.gethostname()}-{os.getpid()}"
        agent_proc = start_agent(directory, name)
        path = agent_proc.socket_path
    try:
        return _attach_to(path, agent_proc)
    except BaseException:
        if agent_proc is not None:
            agent_proc.stop()
        raise


def _attach_to(path: str, agent_proc: StartedAgent | None) -> Node:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(ATTACH_TIMEOUT_S)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise AttachError(f"cannot reach the node agent at {path}: {exc}") from None
    try:
        greeting, fds = local.recv(sock, local.Direction.TO_WORKLOAD)
        if not isinstance(greeting, local.Greeting):
            local.close_fds(fds)
            raise AttachError(f"expected the layout and the memfd from the agent, got a "
                              f"{type(greeting).__name__}")
        (memfd,) = fds
        try:
            layout = Layout(greeting.base, greeting.size, greeting.page_size)
        except DsmError:
            os.close(memfd)
            raise
        node_name = greeting.node
        try:
            libc.mmap_at(layout.base, layout.size, libc.PROT_READ | libc.PROT_WRITE,
                         libc.MAP_SHARED | libc.MAP_FIXED_NOREPLACE, memfd)
        except OSError as exc:
            os.close(memfd)
            why = ("the address range is already taken" if exc.errno == errno.EEXIST else
                   "the address space cannot give it: see `ulimit -v`, or ask for a smaller "
                   "`dsm directory --region-size`")
            raise AddressError(
                f"cannot map the shared region at {layout.base:#x}+{layout.size:#x} in this "
                f"process: {exc.strerror} ({why})"
            ) from None
        uffd = Uffd.open(features=WORKLOAD_FEATURES | OPTIONAL_WORKLOAD_FEATURES,
                         required=WORKLOAD_FEATURES)
        uffd.register(layout.base, layout.size, REGION_REGISTER_MODE)
        local.send(sock, local.Register(os.getpid()), [uffd.fileno()])
        reply, fds = local.recv(sock, local.Direction.TO_WORKLOAD)
        local.close_fds(fds)
        if not isinstance(reply, local.Ready):
            raise AttachError(f"the agent refused this process: {getattr(reply, 'message', reply)}")
    except socket.timeout:
        sock.close()
        raise AttachError(f"the node agent at {path} did not answer within {ATTACH_TIMEOUT_S} s") from None
    watchdog = _start_watchdog(path)
    return Node(sock, layout, node_name, memfd, uffd, agent_proc, watchdog)


def _start_watchdog(agent_socket: str) -> subprocess.Popen:
    """Start the watchdog and wait until it watches the agent."""
    import select

    watchdog = subprocess.Popen(
        [sys.executable, "-I", WATCHDOG, agent_socket, str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
    )
    ready, _, _ = select.select([watchdog.stdout], [], [], ATTACH_TIMEOUT_S)
    line = watchdog.stdout.readline() if ready else b""
    watchdog.stdout.close()
    if line.strip() != b"watching":
        watchdog.kill()
        watchdog.wait()
        raise AttachError(f"the watchdog could not watch the node agent at {agent_socket}")
    return watchdog
