"""Workload requests that the directory answers (allocations, locks, barriers, lost pages): the
agent forwards them under a request id of its own and routes the answer back to the asking
client. The messages are ``dsm.local``'s and ``dsm.protocol``'s:

    local request        directory message   directory answer   local answer
    AllocRequest         Alloc               Allocated          AllocAnswer
    LockRequest          LockAcquire         SyncReply          SyncAnswer
    UnlockRequest        LockRelease         SyncReply          SyncAnswer
    BarrierJoinRequest   BarrierJoin         SyncReply          SyncAnswer
    BarrierWaitRequest   BarrierWait         SyncReply          SyncAnswer
    LockStatusRequest    LockStatus          LockInfo           LockStatusAnswer
    LostRequest          LostQuery           LostReport         LostAnswer
    ForgetLostRequest    ForgetLost          LostReport         LostAnswer
    FreeRequest          Free                Freed              FreeAnswer
    ArraysRequest        ArraysQuery         ArrayList          ArraysAnswer
    AtomicRequest        Atomic              AtomicResult       AtomicAnswer
    CollectiveRequest    Collective          CollectiveResult   CollectiveAnswer
    any of them                              Error              ErrorAnswer

An answer of another type than the request's is turned into an ErrorAnswer that says so.

A lock release is answered here, at once, when the agent knows the thread holds the lock (the
directory granted it and it was not released since) and the release went out to the directory
(not held back behind diffs another shard has not acknowledged): the directory then has it
before anything the thread asks next, on the same pipe, so the thread need not wait a round
trip for it. Such a release says so (``LockRelease.answered``), and the directory answers it
only if it fails (an Error, logged here). Any other release (of a lock the agent does not know
held, or held back) waits for the directory, which says what was wrong.
"""

from __future__ import annotations

from typing import Any, Callable

from dsm import local
from dsm import protocol as p
from dsm.core.inbox import FORWARDED_ANSWERS


def holder_name(node: str, request: local.Request) -> str:
    """Locks and barriers are held by threads: "node:pid:thread"."""
    return f"{node}:{request.pid}:{request.tid}"


#: the directory message each forwarded request is answered by (or an Error)
_DIRECTORY_ANSWER: dict[type[local.Request], type[p.Message]] = {
    local.AllocRequest: p.Allocated,
    local.LockRequest: p.SyncReply,
    local.UnlockRequest: p.SyncReply,
    local.BarrierJoinRequest: p.SyncReply,
    local.BarrierWaitRequest: p.SyncReply,
    local.LockStatusRequest: p.LockInfo,
    local.LostRequest: p.LostReport,
    local.ForgetLostRequest: p.LostReport,
    local.FreeRequest: p.Freed,
    local.ArraysRequest: p.ArrayList,
    local.AtomicRequest: p.AtomicResult,
    local.CollectiveRequest: p.CollectiveResult,
}
#: how each directory answer becomes the local answer (``client_req`` in place of ``req``)
_LOCAL_ANSWER: dict[type[p.Message], Callable[[int, Any], local.LocalMessage]] = {
    p.Allocated: lambda r, m: local.AllocAnswer(r, m.offset, m.nbytes, m.meta),
    p.LockInfo: lambda r, m: local.LockStatusAnswer(r, m.holder, m.waiting),
    p.SyncReply: lambda r, m: local.SyncAnswer(r, m.status, m.detail),
    p.LostReport: lambda r, m: local.LostAnswer(r, m.ranges),
    p.Freed: lambda r, m: local.FreeAnswer(r, m.holders),
    p.ArrayList: lambda r, m: local.ArraysAnswer(r, m.arrays),
    p.AtomicResult: lambda r, m: local.AtomicAnswer(r, m.value),
    p.CollectiveResult: lambda r, m: local.CollectiveAnswer(r, m.value),
}


class Forwarder:
    def __init__(self, node: str, send: Callable[[p.Message], None],
                 reply: Callable[[Any, local.LocalMessage], None],
                 watch_pid: Callable[[int], None],
                 release: Callable[[p.Message], None] | None = None,
                 release_sent: Callable[[], bool] = lambda: False,
                 lock_requested: Callable[[int], None] = lambda req: None):
        self.node = node
        #: whether the last release went out at once (not held back: ``NodeCore.releases_held``)
        self._release_sent = release_sent
        #: told each LockAcquire's req as it goes (``NodeCore.lock_requested``)
        self._lock_requested = lock_requested
        #: (id of the client, holder, lock name) of the locks the directory granted and that
        #: were not released since: a release of one of them is answered here (a client is
        #: forgotten, with its locks, before its id can name another)
        self._held: set[tuple[int, str, str]] = set()
        #: agent req of a LockAcquire -> its (id of the client, holder, lock name)
        self._acquiring: dict[int, tuple[int, str, str]] = {}
        self._send = send
        #: how a release (LockRelease, BarrierWait) goes out: after the node's diffs
        self._release = release or send
        self._reply = reply
        self._watch_pid = watch_pid
        #: agent req -> (client, client req, the directory message that answers it)
        self._waiting: dict[int, tuple[Any, int, type[p.Message]]] = {}
        self._next_req = 1
        self._builders: dict[type[local.Request], Callable[[int, Any], p.Message]] = {
            local.AllocRequest: lambda req, m: p.Alloc(req, m.name, m.nbytes, m.meta, m.create),
            local.LockRequest: lambda req, m: p.LockAcquire(req, m.name, self._holder(m),
                                                            m.timeout_ms, list(m.guards)),
            local.UnlockRequest: lambda req, m: p.LockRelease(req, m.name, self._holder(m)),
            local.LockStatusRequest: lambda req, m: p.LockStatus(req, m.name),
            local.BarrierJoinRequest: lambda req, m: p.BarrierJoin(req, m.name, m.parties,
                                                                   self._holder(m)),
            local.BarrierWaitRequest: lambda req, m: p.BarrierWait(req, m.name, m.parties,
                                                                   self._holder(m), [],
                                                                   m.timeout_ms),
            local.LostRequest: lambda req, m: p.LostQuery(req),
            local.ForgetLostRequest: lambda req, m: p.ForgetLost(req, m.name),
            local.FreeRequest: lambda req, m: p.Free(req, m.name),
            local.ArraysRequest: lambda req, m: p.ArraysQuery(req),
            local.AtomicRequest: lambda req, m: p.Atomic(req, m.name, m.size, m.index, m.op,
                                                         m.operand, m.expected),
            local.CollectiveRequest: lambda req, m: p.Collective(req, m.seq, m.kind, m.root,
                                                                 m.op, m.value),
        }
        assert self._builders.keys() == _DIRECTORY_ANSWER.keys()
        # (the node's inbox passes on the answers it knows to be these: dsm.core.inbox)
        assert set(_DIRECTORY_ANSWER.values()) == _LOCAL_ANSWER.keys() == FORWARDED_ANSWERS

    def _holder(self, msg: local.Request) -> str:
        return holder_name(self.node, msg)

    def handles(self, msg: local.LocalMessage) -> bool:
        return type(msg) in self._builders

    def forward(self, client: Any, msg: local.Request) -> None:
        self._watch_pid(msg.pid)
        req = self._next_req
        self._next_req += 1
        self._waiting[req] = (client, msg.req, _DIRECTORY_ANSWER[type(msg)])
        out = self._builders[type(msg)](req, msg)
        if isinstance(out, p.LockAcquire):
            self._acquiring[req] = (id(client), out.holder, out.name)
            self._lock_requested(req)
        if isinstance(out, (p.LockRelease, p.BarrierWait)):
            held = (id(client), out.holder, out.name) if isinstance(out, p.LockRelease) else None
            if held in self._held:  # answered here unless held back (the core unmarks it then)
                out = p.replace(out, answered=True)
            self._release(out)
            if held in self._held and self._release_sent():
                self._held.discard(held)
                # the directory answers only a failure (an Error: logged, as nobody waits)
                del self._waiting[req]
                self._reply(client, local.SyncAnswer(msg.req, p.SyncStatus.RELEASED, ""))
        else:
            self._send(out)

    def answer(self, msg: p.Message) -> bool:
        """Route a directory answer to its client; False when no client waits for it."""
        req = getattr(msg, "req", 0)
        waiting = self._waiting.pop(req, None)
        acquiring = self._acquiring.pop(req, None)
        if waiting is None:
            return False
        client, client_req, expected = waiting
        if client is None:  # a release answered already: only an Error is news
            return not isinstance(msg, p.Error)
        if acquiring is not None and isinstance(msg, p.SyncReply) and msg.status in (
                p.SyncStatus.GRANTED, p.SyncStatus.GRANTED_BROKEN):
            self._held.add(acquiring)
        body: local.LocalMessage
        if isinstance(msg, p.Error):
            body = local.ErrorAnswer(client_req, msg.message)
        elif not isinstance(msg, expected):
            body = local.ErrorAnswer(client_req, f"the directory answered with a "
                                                 f"{type(msg).__name__}, expected a "
                                                 f"{expected.__name__}")
        else:
            body = _LOCAL_ANSWER[expected](client_req, msg)
        self._reply(client, body)
        return True

    def fail_all(self, message: str) -> None:
        """Answer every request still waiting with an error (the directory is gone)."""
        waiting, self._waiting = self._waiting, {}
        self._acquiring.clear()
        self._held.clear()
        for client, client_req, _ in waiting.values():
            if client is not None:
                self._reply(client, local.ErrorAnswer(client_req, message))

    def forget_client(self, client: Any) -> None:
        self._waiting = {r: w for r, w in self._waiting.items() if w[0] is not client}
        self._acquiring = {r: a for r, a in self._acquiring.items() if a[0] != id(client)}
        self._held = {h for h in self._held if h[0] != id(client)}
