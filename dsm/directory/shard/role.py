"""The shared base of the manager shards' roles (the package's ``__init__`` says what a shard is):
``Role``, the hooks the directory state machine (``dsm/directory/machine.py``) calls, as played by
a directory alone; which shard serves which message (``check_shard``); and what both other roles
use: their errors, the exit status of a lost shard, a Hello held back.

The roles built on it: ``coordinator.py`` (``Coordinator``, shard 0 of K) and ``member.py``
(``Member``, shard I > 0). The processes and the simulator (``dsm/sim/shards.py``) run the same
three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from dsm import protocol as p
from dsm.core.shards import STRIPE_PAGES, shard_of
from dsm.directory.allocations import Allocation
from dsm.directory.pages import Send
from dsm.errors import DsmError

if TYPE_CHECKING:
    from dsm.directory.machine import Directory

#: exit status of a shard process whose coordinator, or a coordinator whose shard, fell silent
EXIT_SHARD_LOST = 3
#: how long a node's Hello waits for the shards to join (coordinator) or for the coordinator's
#: admission (member) before it is answered with the reason: less than an agent waits for its
#: Welcome (``dsm.agent.join.CONNECT_TIMEOUT_S``, 5 s), so that the node hears why
HELLO_HOLD_S = 4.0
#: the messages any shard serves; a message with a page goes to the page's shard, and every
#: other message to the coordinator
TO_EVERY_SHARD = (p.Hello, p.Heartbeat, p.Bye, p.StatsQuery)


class WrongShard(DsmError):
    """A node sent a message to a shard that does not manage its pages (or to a shard that is
    not the coordinator, for a message only the coordinator serves)."""


class ShardJoinError(DsmError):
    """A shard could not join its coordinator: unreachable, or refused."""


@dataclass
class _Held:
    """A node's Hello held back until it can be answered (by the coordinator and the members)."""

    identity: bytes
    hello: p.Hello
    since_s: float


class Role:
    """A directory alone (also the base of the other roles: the hooks the machine calls)."""

    index = 0
    count = 1
    stripe = STRIPE_PAGES  #: pages per shard stripe
    coordinator = True  #: whether this process serves memberships, allocations, locks
    ready = True  #: whether nodes are served yet (a coordinator waits for its shards)

    def attach(self, directory: "Directory") -> None:
        self.directory = directory
        # which shard its page directory is (a diff to the coordinator goes unanswered)
        directory.pages.shard, directory.pages.shards = self.index, self.count

    def tick(self, now: float) -> None:
        """Timers, looked at after every wake-up of the loop."""

    def hold_hello(self, identity: bytes, hello: p.Hello) -> bool:
        """Whether a node's Hello must wait (it is answered later)."""
        return False

    def welcome_shards(self) -> list[str]:
        return []

    def admitted(self, node: str, incarnation: int) -> None:
        """A session started."""

    def dead(self, node: str, incarnation: int, why: str, told: bool) -> None:
        """A node's session ended by death (``told``: the coordinator said so)."""

    def allocated(self, alloc: Allocation, answer: Callable[[str | None], None]) -> None:
        """A new array: ``answer(None)`` once every shard knows it (``answer(why)``: it could
        not be told)."""
        answer(None)

    def freed(self, alloc: Allocation) -> None:
        """A freed array that no node holds: every other shard reclaims its pages of it."""

    def when_known(self, name: str, answer: Callable[[str | None], None]) -> None:
        """``answer`` once the array ``name`` (which exists) is known at every shard."""
        answer(None)

    def is_peer(self, identity: bytes) -> bool:
        """Whether ``identity`` is another shard (not a node)."""
        return False

    def handle_peer(self, identity: bytes, msg: p.Message, user_id: str | None) -> None:
        """A message between shards, or a ShardHello; a directory alone refuses it."""
        self.directory.send_to(identity, p.Fenced(self.directory.sessions.epoch, (
            f"this directory is not a distributed manager's coordinator (it runs --manager "
            f"{self.directory.manager.value} with one shard): it takes no {type(msg).__name__}")))

    def lost(self, node: str, req: int, first: int, count: int, forget: str | None) -> list[Send]:
        """Answer a LostQuery (``forget`` None) or a ForgetLost of array ``forget``."""
        pages = self.directory.pages
        runs = pages.forget_lost(first, count) if forget else pages.lost_runs(first, count)
        return self.directory.requests.lost_answer(node, req, runs, forget)

    def stats(self, identity: bytes, req: int) -> None:
        self.directory.send_to(identity, self.directory.requests.stats_report(req))

    def close(self) -> None:
        pass


def check_shard(msg: p.Message, index: int, count: int, stripe: int = STRIPE_PAGES) -> None:
    """WrongShard unless shard ``index`` of ``count`` serves ``msg``: its pages are this shard's
    and within one stripe, or it is for every shard, or this is the coordinator."""
    page = getattr(msg, "page", None)
    if page is not None:
        n = getattr(msg, "count", 1)
        owner = shard_of(page, count, stripe)
        last_owner = shard_of(page + n - 1, count, stripe)
        if owner != index or last_owner != owner:
            what = f"page {page}" if n == 1 else f"pages {page}..{page + n - 1}"
            raise WrongShard(
                f"{type(msg).__name__} of {what} sent to shard {index} of {count}, but "
                + (f"page {page} is managed by shard {owner}" if owner != index else
                   f"the run crosses into shard {last_owner}'s stripe")
                + f" (stripes of {stripe} pages: dsm.core.shards.shard_of); a node "
                "sends each page message to its page's shard")
        return
    if isinstance(msg, p.Discard):
        wrong = [q for q in msg.pages if shard_of(q, count, stripe) != index]
        if wrong:
            raise WrongShard(f"Discard sent to shard {index} of {count} names page {wrong[0]}, "
                             f"which shard {shard_of(wrong[0], count, stripe)} manages")
        return
    if index != 0 and not isinstance(msg, TO_EVERY_SHARD):
        raise WrongShard(f"{type(msg).__name__} sent to shard {index} of {count}: only the "
                         "coordinator (shard 0) serves it")
