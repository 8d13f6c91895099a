"""What a node core does with each message about pages that reaches its node: the one table the
node's inbox (``dsm/core/inbox.py``) builds, which the agent (``dsm/agent/messaging.py``) and
the simulator (``dsm/sim/network.py``) both deliver through, so that a message reaches the same
core method with the same arguments in both."""

from __future__ import annotations

from typing import Any, Callable

from dsm import protocol as p
from dsm.core.actions import Action
from dsm.core.dynamic import DynamicNodeCore
from dsm.core.node import NodeCore

#: ``(message, page data) -> the core's actions``
Handler = Callable[[Any, Any], list[Action]]


def core_handlers(core: NodeCore, now: Callable[[], float],
                  reachable: Callable[[p.Fetch | p.Invalidate], Callable[[str], bool]]
                  ) -> dict[type, Handler]:
    """``now``: the clock (the requests' deadlines); ``reachable(msg)``: whether the requester
    a Fetch or an Invalidate names (``to_node``) can be reached at an address (the peer
    endpoint's answer). A dynamic manager's core (``dsm.core.dynamic``) takes its own messages
    too."""
    handlers: dict[type, Handler] = {
        p.Grant: lambda m, d: core.grant(m, d, now()),
        p.Lost: lambda m, d: core.lost(m, now()),
        p.Fetch: lambda m, d: core.fetch(m, reachable(m)),
        p.Invalidate: lambda m, d: core.invalidate(m, reachable(m)),
        # from the holder (node to node) or the directory (forwarded, or the holder died)
        p.Invalidated: lambda m, d: core.invalidated(m, now()),
        p.PeerPage: lambda m, d: core.peer_page(m, d, now()),
        p.Withdrawn: lambda m, d: core.withdrawn(m),
        p.DiffApplied: lambda m, d: core.diff_applied(m),
    }
    if isinstance(core, DynamicNodeCore):
        handlers.update(core.handlers(now))
    return handlers


#: the messages whose runs of pages the receiver checks against its region first
CHECKED_RUNS = (p.Grant, p.Lost, p.Fetch, p.Invalidate, p.Invalidated, p.Served, p.PageRequest,
                p.Taken)
