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
    any of them                              Error              ErrorAnswer

An answer of another type than the request's is turned into an ErrorAnswer that says so.
"""

from __future__ import annotations

from typing import Any, Callable

from dsm import local
from dsm import protocol as p


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
}


class Forwarder:
    def __init__(self, node: str, send: Callable[[p.Message], None],
                 reply: Callable[[Any, local.LocalMessage], None],
                 watch_pid: Callable[[int], None],
                 release: Callable[[p.Message], None] | None = None):
        self.node = node
        self._send = send
        #: how a release (LockRelease, BarrierWait) goes out: after the node's diffs
        self._release = release or send
        self._reply = reply
        self._watch_pid = watch_pid
        #: agent req -> (client, client req, the directory message that answers it)
        self._waiting: dict[int, tuple[Any, int, type[p.Message]]] = {}
        self._next_req = 1
        self._builders: dict[type[local.Request], Callable[[int, Any], p.Message]] = {
            local.AllocRequest: lambda req, m: p.Alloc(req, m.name, m.nbytes, m.meta),
            local.LockRequest: lambda req, m: p.LockAcquire(req, m.name, self._holder(m),
                                                            m.timeout_ms),
            local.UnlockRequest: lambda req, m: p.LockRelease(req, m.name, self._holder(m)),
            local.LockStatusRequest: lambda req, m: p.LockStatus(req, m.name),
            local.BarrierJoinRequest: lambda req, m: p.BarrierJoin(req, m.name, m.parties,
                                                                   self._holder(m)),
            local.BarrierWaitRequest: lambda req, m: p.BarrierWait(req, m.name, m.parties,
                                                                   self._holder(m), [],
                                                                   m.timeout_ms),
            local.LostRequest: lambda req, m: p.LostQuery(req),
            local.ForgetLostRequest: lambda req, m: p.ForgetLost(req, m.name),
        }
        assert self._builders.keys() == _DIRECTORY_ANSWER.keys()

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
        if isinstance(out, (p.LockRelease, p.BarrierWait)):
            self._release(out)
        else:
            self._send(out)

    def answer(self, msg: p.Message) -> bool:
        """Route a directory answer to its client; False when no client waits for it."""
        waiting = self._waiting.pop(getattr(msg, "req", 0), None)
        if waiting is None:
            return False
        client, client_req, expected = waiting
        body: local.LocalMessage
        if isinstance(msg, p.Error):
            body = local.ErrorAnswer(client_req, msg.message)
        elif not isinstance(msg, expected):
            body = local.ErrorAnswer(client_req, f"the directory answered with a "
                                                 f"{type(msg).__name__}, expected a "
                                                 f"{expected.__name__}")
        elif isinstance(msg, p.Allocated):
            body = local.AllocAnswer(client_req, msg.offset, msg.nbytes, msg.meta)
        elif isinstance(msg, p.LockInfo):
            body = local.LockStatusAnswer(client_req, msg.holder, msg.waiting)
        elif isinstance(msg, p.SyncReply):
            body = local.SyncAnswer(client_req, msg.status, msg.detail)
        else:
            body = local.LostAnswer(client_req, msg.ranges)
        self._reply(client, body)
        return True

    def fail_all(self, message: str) -> None:
        """Answer every request still waiting with an error (the directory is gone)."""
        waiting, self._waiting = self._waiting, {}
        for client, client_req, _ in waiting.values():
            self._reply(client, local.ErrorAnswer(client_req, message))

    def forget_client(self, client: Any) -> None:
        self._waiting = {r: w for r, w in self._waiting.items() if w[0] is not client}
