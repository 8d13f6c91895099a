"""What the node core asks its loop to do, in order. The agent carries these out on the memfd,
the uffds and the DEALER; the simulator on its model of the memory.

Pages are page numbers of the region; ``proc`` is the loop's handle of a workload process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsm.protocol import Message

if TYPE_CHECKING:
    from dsm.core.node import Waiter


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to the directory, or, with ``peer`` (node name, peer endpoint), to
    that node. Its page frame is ``data`` as given, or, with ``pages=(first, count)``, those
    pages: as a ``Punch(keep=True)`` of that run earlier in the list read them, else read
    from the node's memory when the action runs."""

    message: Message
    data: Any = None
    pages: tuple[int, int] | None = None
    peer: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Install:
    """Put ``count`` pages from ``first`` into the node's memory (``data``, or zeros when None),
    writable or as a read copy (write-protected in every local process before it appears), then
    wake ``wake`` (``installer``, if given, may be woken by the install itself)."""

    first: int
    count: int
    data: Any
    writable: bool
    installer: "Waiter | None"
    wake: tuple


@dataclass(frozen=True, slots=True)
class Upgrade:
    """Read copies became owned: lift their write protection in every local process (which
    wakes the writers waiting where the process maps the pages), then wake those of ``wake``
    that faulted where it no longer does (the range moved meanwhile: no lift reaches them)."""

    first: int
    count: int
    wake: tuple = ()


@dataclass(frozen=True, slots=True)
class Protect:
    """Write-protect ``count`` pages from ``first`` in every local process."""

    first: int
    count: int


@dataclass(frozen=True, slots=True)
class Unprotect:
    """Lift a stale write-protect marker from ``page`` in ``proc`` (the page is owned)."""

    proc: Any
    page: int


@dataclass(frozen=True, slots=True)
class Punch:
    """Take ``count`` pages from ``first`` out of the node's memory (every local process).

    With ``keep``, their contents are read first, and the Sends of that run later in the same
    list carry what was read: pages that leave this node are gone from it before they can
    reach anyone else. (Punched after the send instead, a local read in between would see
    the old copy while the new owner already writes its own.)"""

    first: int
    count: int
    keep: bool = False


@dataclass(frozen=True, slots=True)
class Twin:
    """Keep a copy of ``count`` pages from ``first`` as they are now (release consistency:
    their first write since the last release or acquire; the diff is taken against it)."""

    first: int
    count: int


@dataclass(frozen=True, slots=True)
class SendDiff:
    """Release consistency: send what changed in ``count`` pages from ``first`` since their
    twins, as ``Diff(req, ...)`` to their manager, and drop the twins. (The pages were
    write-protected before: what is compared is what stays.)"""

    req: int
    first: int
    count: int


@dataclass(frozen=True, slots=True)
class SendRelease:
    """Release consistency: send the release ``message`` (a LockRelease or a BarrierWait) to
    the coordinator carrying the diffs of ``runs`` (``(req, first, count)`` each, as SendDiff
    would send them; write-protected before), and drop their twins: one message where a Diff
    per run and the release were."""

    message: Any
    runs: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class DropTwins:
    """Release consistency: forget the twins of ``count`` pages from ``first`` (discarded)."""

    first: int
    count: int


@dataclass(frozen=True, slots=True)
class Wake:
    """Let the thread(s) of ``proc`` faulting at ``addr`` retry."""

    proc: Any
    addr: int


@dataclass(frozen=True, slots=True)
class Poison:
    """The waiter's page is lost: its process must fail at the access (SIGBUS), never read."""

    waiter: "Waiter"


@dataclass(frozen=True, slots=True)
class Kill:
    """The waiter cannot be served (``why``): kill its process loudly."""

    waiter: "Waiter"
    why: str


Action = (Send | Install | Upgrade | Protect | Unprotect | Punch | Twin | SendDiff | DropTwins | Wake
          | Poison | Kill)
