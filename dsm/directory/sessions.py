"""Who the directory serves: one session per live node incarnation, and the peers it refuses.

A session starts with a Hello from a ZeroMQ identity and ends when the node leaves, is declared
dead, or is replaced by a restarted incarnation. A peer without a session is *fenced*: it gets a
``Fenced`` answer saying why (declared dead, left, joined an earlier directory, a name clash),
never the service of a live node. No sockets here: the service asks and acts.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass

#: how many ended sessions are remembered, to tell a fenced peer precisely why
FENCED_MEMORY = 4096
#: bits of the random epoch and incarnation numbers (msgpack carries them as positive ints)
RANDOM_ID_BITS = 63


def new_random_id() -> int:
    """An epoch or an incarnation: random, so that no two runs share one."""
    return secrets.randbits(RANDOM_ID_BITS)


@dataclass
class Session:
    node: str
    identity: bytes
    incarnation: int
    pid: int
    last_seen_s: float


class Sessions:
    def __init__(self, epoch: int):
        self.epoch = epoch
        self.by_node: dict[str, Session] = {}
        self._node_of: dict[bytes, str] = {}
        self._fenced: OrderedDict[bytes, str] = OrderedDict()

    def node_of(self, identity: bytes) -> str | None:
        return self._node_of.get(identity)

    def get(self, node: str) -> Session | None:
        return self.by_node.get(node)

    def identity_of(self, node: str) -> bytes | None:
        session = self.by_node.get(node)
        return session.identity if session is not None else None

    def start(self, node: str, identity: bytes, incarnation: int, pid: int, now_s: float) -> Session:
        session = Session(node, identity, incarnation, pid, now_s)
        self.by_node[node] = session
        self._node_of[identity] = node
        self._fenced.pop(identity, None)
        return session

    def end(self, node: str, reason: str) -> Session | None:
        """End ``node``'s session; its identity is fenced from now on, for ``reason``."""
        session = self.by_node.pop(node, None)
        if session is None:
            return None
        self._node_of.pop(session.identity, None)
        self.fence(session.identity, reason)
        return session

    def fence(self, identity: bytes, reason: str) -> None:
        self._fenced[identity] = reason
        self._fenced.move_to_end(identity)
        while len(self._fenced) > FENCED_MEMORY:
            self._fenced.popitem(last=False)

    def is_fenced(self, identity: bytes) -> bool:
        """Whether ``identity``'s session ended (left, declared dead, refused)."""
        return identity in self._fenced

    def why_fenced(self, identity: bytes) -> str:
        reason = self._fenced.get(identity)
        if reason is not None:
            return reason
        return (f"this directory (epoch {self.epoch:x}) has no session for this peer: it joined "
                "an earlier directory (the directory restarted) or never said Hello")

    def silent(self, now_s: float, timeout_s: float) -> list[Session]:
        return [s for s in self.by_node.values() if now_s - s.last_seen_s > timeout_s]
