"""Workload requests that the directory answers (allocations, locks, barriers): the agent
forwards them under a request id of its own and routes the answer back to the asking client.

Local request -> directory message:
    alloc          {name, nbytes, meta}           -> Alloc
    lock           {name, pid, tid, timeout_ms}   -> LockAcquire
    lock_status    {name}                         -> LockStatus
    unlock         {name, pid, tid}               -> LockRelease
    barrier_join   {name, parties, pid, tid}      -> BarrierJoin
    barrier_wait   {name, parties, pid, tid}      -> BarrierWait
    lost           {}                             -> LostQuery
    forget_lost    {name}                         -> ForgetLost
Answers: Allocated -> "allocated", SyncReply -> "sync", LockInfo -> "lock_info",
LostReport -> "lost", Error -> "error".
"""

from __future__ import annotations

from typing import Any, Callable

from dsm import local
from dsm import protocol as p


def holder_name(node: str, message: dict) -> str:
    pid, tid = local.expect(message, "pid", "tid")
    return f"{node}:{int(pid)}:{int(tid)}"


class Forwarder:
    def __init__(self, node: str, send: Callable[[p.Message], None],
                 reply: Callable[[Any, dict], None], watch_pid: Callable[[int], None]):
        self.node = node
        self._send = send
        self._reply = reply
        self._watch_pid = watch_pid
        self._waiting: dict[int, tuple[Any, int]] = {}  # agent req -> (client, client req)
        self._next_req = 1
        self._builders: dict[str, Callable[[int, dict], p.Message]] = {
            "alloc": self._alloc,
            "lock": self._lock,
            "unlock": self._unlock,
            "lock_status": lambda req, m: p.LockStatus(req, str(local.expect(m, "name")[0])),
            "barrier_join": self._barrier(p.BarrierJoin),
            "barrier_wait": self._barrier(p.BarrierWait),
            "lost": lambda req, m: p.LostQuery(req),
            "forget_lost": lambda req, m: p.ForgetLost(req, str(local.expect(m, "name")[0])),
        }

    def handles(self, kind: str) -> bool:
        return kind in self._builders

    def forward(self, client: Any, message: dict) -> None:
        (client_req,) = local.expect(message, "req")
        if "pid" in message:
            self._watch_pid(int(message["pid"]))
        req = self._next_req
        self._next_req += 1
        msg = self._builders[message["type"]](req, message)
        self._waiting[req] = (client, client_req)
        self._send(msg)

    def answer(self, msg: p.Message) -> bool:
        """Route a directory answer to its client; False when no client waits for it."""
        waiting = self._waiting.pop(getattr(msg, "req", 0), None)
        if waiting is None:
            return False
        client, client_req = waiting
        if isinstance(msg, p.Allocated):
            body = {"type": "allocated", "offset": msg.offset, "nbytes": msg.nbytes,
                    "meta": msg.meta}
        elif isinstance(msg, p.LockInfo):
            body = {"type": "lock_info", "holder": msg.holder, "waiting": msg.waiting}
        elif isinstance(msg, p.SyncReply):
            body = {"type": "sync", "status": msg.status, "detail": msg.detail}
        elif isinstance(msg, p.LostReport):
            body = {"type": "lost", "ranges": msg.ranges}
        else:
            body = {"type": "error", "message": msg.message}
        self._reply(client, {**body, "req": client_req})
        return True

    def fail_all(self, message: str) -> None:
        """Answer every request still waiting with an error (the directory is gone)."""
        waiting, self._waiting = self._waiting, {}
        for client, client_req in waiting.values():
            self._reply(client, {"type": "error", "req": client_req, "message": message})

    def forget_client(self, client: Any) -> None:
        self._waiting = {r: w for r, w in self._waiting.items() if w[0] is not client}

    # --- builders ----------------------------------------------------------------------------------
    def _alloc(self, req: int, m: dict) -> p.Message:
        name, nbytes, meta = local.expect(m, "name", "nbytes", "meta")
        return p.Alloc(req, str(name), int(nbytes), dict(meta))

    def _lock(self, req: int, m: dict) -> p.Message:
        name, timeout_ms = local.expect(m, "name", "timeout_ms")
        return p.LockAcquire(req, str(name), holder_name(self.node, m), int(timeout_ms))

    def _unlock(self, req: int, m: dict) -> p.Message:
        (name,) = local.expect(m, "name")
        return p.LockRelease(req, str(name), holder_name(self.node, m))

    def _barrier(self, cls: type) -> Callable[[int, dict], p.Message]:
        def build(req: int, m: dict) -> p.Message:
            name, parties = local.expect(m, "name", "parties")
            return cls(req, str(name), int(parties), holder_name(self.node, m))
        return build
