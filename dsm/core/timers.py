"""A node agent's liveness timers, with no sockets: when a heartbeat is due, when the directory's
silence cuts the node off, and when its page requests are looked at for the request timeout
(``dsm.liveness`` defines the deadlines and the order they keep). The agent's loop
(``dsm.agent.service``) and the simulator's nodes (``dsm.sim.timers``) both ask this one object,
so that what the simulator checks is the rule the processes follow.
"""

from __future__ import annotations

from dsm import bugs
from dsm.core.actions import Action
from dsm.liveness import HEARTBEAT_INTERVAL_S, NODE_CUT_OFF_S, REQUEST_TIMEOUT_S

#: how often requests are looked at for REQUEST_TIMEOUT_S (the deadline is seconds: a look per
#: turn of the loop would cost more than it tells)
OVERDUE_CHECK_INTERVAL_S = 1.0


class AgentTimers:
    """One node's liveness decisions; the caller says what time it is and what it last sent and
    heard."""

    def __init__(self) -> None:
        #: when the requests were last looked at for the request timeout
        self.last_overdue_check_s = 0.0

    @staticmethod
    def heartbeat_due(now: float, least_recent_send_s: float) -> bool:
        """Whether a heartbeat is due: some shard has been sent nothing for HEARTBEAT_INTERVAL_S
        (any message says the node is alive; every shard must hear from it)."""
        return now > AgentTimers.heartbeat_due_at(least_recent_send_s)

    @staticmethod
    def heartbeat_due_at(least_recent_send_s: float) -> float:
        """When a heartbeat is due (past it: ``heartbeat_due``)."""
        if bugs.ACTIVE == bugs.SILENT_HEARTBEATS:  # the bug switch (dsm/bugs.py)
            return float("inf")
        return least_recent_send_s + HEARTBEAT_INTERVAL_S

    @staticmethod
    def cut_off(silent_s: float) -> bool:
        """Whether a shard silent this long cuts the node off: it is about to hand this node's
        pages on, so the node must stop writing first (``dsm.liveness``)."""
        return silent_s > NODE_CUT_OFF_S

    def overdue_due_at(self) -> float:
        """When the requests are next looked at."""
        return self.last_overdue_check_s + OVERDUE_CHECK_INTERVAL_S

    def overdue(self, core, now: float) -> list[Action]:
        """What the core does about the requests unanswered for REQUEST_TIMEOUT_S (their waiters
        are killed, loudly), looked at every OVERDUE_CHECK_INTERVAL_S."""
        if now < self.overdue_due_at():
            return []
        self.last_overdue_check_s = now
        return core.overdue(now, REQUEST_TIMEOUT_S)
