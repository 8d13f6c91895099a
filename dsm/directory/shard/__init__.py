"""What a directory process is among the manager shards (IVY's fixed distributed manager), and
what the shards tell each other.

Page ``p`` is managed by shard ``shard_of(p, K)`` (``dsm.core.shards``: stripes of
``STRIPE_PAGES``); every shard runs the page-state machine (``PageDirectory``) for its own pages
only, behind its own ROUTER, with its own sessions and heartbeats. Shard 0 is also the
**coordinator**: the only one that knows the membership (it admits nodes, refuses name clashes),
the allocations, the locks and barriers, and the only one nodes ask about lost pages. A
directory process plays one of three roles, which its state machine
(``dsm/directory/machine.py``) consults:

- ``Role`` itself: the one directory of a cluster (``--shards 1``), as before shards existed.
- ``Coordinator``: shard 0 of K. The other shards join it (``ShardHello``: it answers with the
  layout, the epoch and how to serve, ``ShardWelcome``); nodes' Hellos wait until all have
  joined, then a node's Welcome lists every shard's endpoint. It tells every shard each node it
  admits (``NodeAdmitted``, before the node's Welcome), each array (``ArrayAllocated``) and each
  death (``NodeDead``).
- ``Member``: shard I > 0. A link to the coordinator (a DEALER in the processes,
  ``dsm/directory/memberlink.py``), heartbeats on it; serves a node's Hello only once the
  coordinator admitted that incarnation.

**Deaths** are shared through the coordinator. Any shard that declares a node dead (silent for
``NODE_TIMEOUT_S`` to it, a transaction left unanswered, a message it could not deliver) fences
it and loses the pages it owned *there* at once, then reports ``NodeDead(node, incarnation)`` to
the coordinator; the coordinator declares it dead too (its locks pass on, its barriers break)
and tells every shard, which does the same for its pages. A shard hears of a death at most one
coordinator round trip after the first shard declared it. The node itself stops first: its agent
cuts itself off after ``NODE_CUT_OFF_S`` of silence from *any* shard, before that shard's
``NODE_TIMEOUT_S`` (``dsm.liveness``), and a fenced node stops at once. A clean leave is not
shared: the node says Bye to every shard after handing its pages back to each (a Bye that
overtook pages still in flight to another shard would lose them).

**Lost pages** are asked of the coordinator only (``LostQuery``, ``ForgetLost``), which asks every
other shard for its lost runs (``LostRunsQuery``/``LostRuns``) and answers once all have: the
agent keeps one request, one answer. ``dsm top``'s ``StatsQuery`` is gathered the same way
(``StatsRunsQuery``/``StatsRuns``).

A shard that falls silent to the coordinator, or a coordinator to its shards, for
``NODE_TIMEOUT_S`` is fatal for the whole manager: a shard's pages cannot move elsewhere, so the
process stops loudly (exit status ``EXIT_SHARD_LOST``) and its nodes cut themselves off.

The package's modules, each owning one thing:

- ``role``: the shared base, ``Role`` (a directory alone, and the hooks the machine calls), which
  shard serves which message (``check_shard``, ``WrongShard``), and what the roles share;
- ``coordinator``: ``Coordinator``, shard 0: the shards joining, what every shard must know,
  the questions put to every shard, the manager's timers;
- ``member``: ``Member``, shard I > 0: its link to the coordinator and what it is told there.

Where shard processes are started and joined: ``dsm/directory/shardprocs.py`` and ``run.py``;
how ``dsm top``'s map is stitched from the shards' views: ``dsm/directory/stats.py``. Every
module's log lines are named under ``dsm.directory.shard``, so that the loop's throttle of the
lines a peer can provoke covers them all, with one budget.
"""

from dsm.directory.shard.coordinator import (
    GATHER_TIMEOUT_S,
    MISSING_SHARDS_LOG_INTERVAL_S,
    Coordinator,
)
from dsm.directory.shard.member import CoordinatorLink, Member
from dsm.directory.shard.role import (
    EXIT_SHARD_LOST,
    HELLO_HOLD_S,
    TO_EVERY_SHARD,
    Role,
    ShardJoinError,
    WrongShard,
    check_shard,
)


__all__ = ["EXIT_SHARD_LOST", "GATHER_TIMEOUT_S", "HELLO_HOLD_S", "MISSING_SHARDS_LOG_INTERVAL_S",
           "TO_EVERY_SHARD", "Coordinator", "CoordinatorLink", "Member", "Role", "ShardJoinError",
           "WrongShard", "check_shard"]
