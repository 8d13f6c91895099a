"""The bug switch, for teaching: run the real protocol with one named, documented mistake, and
watch the checks catch it (``dsm demo --bug NAME``, ``dsm litmus --bug NAME``, ``python -m dsm.sim
--bug NAME``; ``dsm litmus --bug list`` lists them).

A hardware course lets students inject a bug into a coherence protocol and see what breaks; this
is the same for a DSM. Each bug is a few lines in the real code path, behind a check of this
module, and nothing else: with the switch off (always, outside these commands) the code runs as
it does without them. The switch travels to the processes a command starts in ``DSM_BUG``; every
process that runs with one on says so loudly at start, so that no result of such a run is taken
for a real one.

How each is caught (``tests/test_bugs.py`` proves it):

- ``stale-copy``: the store-buffering litmus test with read copies everywhere (``dsm litmus SB
  --warm``: both loads read 0, forbidden), and the simulator's "one writer or many readers";
- ``early-grant``: the simulator's "one writer or many readers" (on a real cluster its window is
  a few hundred microseconds: the litmus tests rarely land in it);
- ``ignore-notices``: the simulator's DRF-SC check of release-consistency pages (a read after an
  acquire returns an older value);
- ``keep-removed``: the simulator with the kernel's events on (``python -m dsm.sim --events``):
  a page MADV_REMOVE punched stays held with a hole, found when its Remove is told apart;
- ``keep-dead-locks``: the simulator, whose shards run the directory state machine
  (``dsm.directory.machine``) and its own path for a death: a thread waits for ever at a
  barrier a dead node was part of, or for a lock it held;
- ``short-transactions``: the simulator with faults, whose shards run their deadlines
  (``Directory.tick``): a live node whose answer waits for a replay is declared dead;
- ``silent-heartbeats``: the simulator with a death, whose clock then runs to the shards' silence
  deadlines: a live node that has nothing else to say is declared dead.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: the environment variable that carries the switch to the processes a command starts
BUG_ENV = "DSM_BUG"

STALE_COPY = "stale-copy"
EARLY_GRANT = "early-grant"
IGNORE_NOTICES = "ignore-notices"
KEEP_REMOVED = "keep-removed"
KEEP_DEAD_LOCKS = "keep-dead-locks"
SHORT_TRANSACTIONS = "short-transactions"
SILENT_HEARTBEATS = "silent-heartbeats"

#: name -> what goes wrong (one line each: ``dsm litmus --bug list``)
BUGS = {
    STALE_COPY: "a node answers an invalidation but keeps its copy mapped: it reads old data "
                "after another node wrote",
    EARLY_GRANT: "the manager grants a write upgrade before the other copies are invalidated: "
                 "readers see the old value after the write, and two nodes hold the page",
    IGNORE_NOTICES: "an acquire ignores its write notices: a node keeps reading its stale copy "
                    "of a release-consistency page after a lock or barrier",
    KEEP_REMOVED: "a Remove event's punched pages are never discarded: the node keeps holding "
                  "a hole, and serves it as zeros while the others keep the old contents",
    KEEP_DEAD_LOCKS: "the directory forgets to tell its lock table that a node is gone: a dead "
                     "node's locks never pass on and its barriers never break",
    SHORT_TRANSACTIONS: "the directory gives a transaction's holder one heartbeat interval, not "
                        "the time a stalled link may take: a live node whose answer waits for a "
                        "replay is declared dead",
    SILENT_HEARTBEATS: "the agent never sends its heartbeats: a live node with nothing else to "
                       "say is declared dead",
}

#: the transaction deadline ``short-transactions`` plants: one heartbeat interval, shorter than a
#: single replay of a lost message (``dsm.liveness.ACK_TIMEOUT_S``)
SHORT_TRANSACTION_TIMEOUT_S = 0.5


class UnknownBug(ValueError):
    pass


#: what ``DSM_BUG`` said, if it names no bug (ignored: ``announce`` says so)
_UNKNOWN = os.environ.get(BUG_ENV) if os.environ.get(BUG_ENV, "") not in ("", *BUGS) else None
#: the bug switched on in this process, or None (the normal case)
ACTIVE: str | None = os.environ.get(BUG_ENV) if os.environ.get(BUG_ENV) in BUGS else None


def switch_on(name: str | None) -> None:
    """Switch ``name`` on in this process and the ones it starts from now on (None: off)."""
    global ACTIVE
    if name is not None and name not in BUGS:
        raise UnknownBug(f"no bug named {name!r} (known: {', '.join(BUGS)})")
    ACTIVE = name
    if name is None:
        os.environ.pop(BUG_ENV, None)
    else:
        os.environ[BUG_ENV] = name


def announce(who: str) -> None:
    """Say loudly that ``who`` runs with a bug on (once at its start)."""
    if _UNKNOWN is not None:
        log.error("%s=%r names no bug (known: %s): ignored, %s runs without one", BUG_ENV,
                  _UNKNOWN, ", ".join(BUGS), who)
    if ACTIVE is not None:
        log.warning("%s runs with the bug %r switched on, on purpose: %s. Its results are "
                    "wrong by design (the bug switch, dsm/bugs.py)", who, ACTIVE, BUGS[ACTIVE])


def listing() -> str:
    width = max(map(len, BUGS))
    return "\n".join(f"{name.ljust(width)}  {text}" for name, text in BUGS.items())


def add_argument(parser) -> None:
    """``--bug NAME`` (``list``: print the bugs and exit) on a command that starts a cluster."""
    parser.add_argument("--bug", metavar="NAME", default=None,
                        help="run the real protocol with one named mistake, for teaching "
                             f"({', '.join(BUGS)}; 'list' describes them): the checks must "
                             "catch it")


def from_arguments(args, prog: str) -> int | None:
    """Switch ``args.bug`` on; an exit status if the command ends here (``list``, or an
    unknown name: a one-line error), else None."""
    name = getattr(args, "bug", None)
    if name is None:
        return None
    if name == "list":
        print(listing())
        return 0
    try:
        switch_on(name)
    except UnknownBug as exc:
        print(f"{prog}: {exc}")
        return 2
    announce(prog)
    return None
