"""A member shard's link to its coordinator on ZeroMQ (``MemberLink``): the DEALER it joined
with (``shardprocs.join_coordinator``), the link's reliable session (``DealerLink``,
``dsm/linkwire.py``) and the process that started the shard. It is the ``CoordinatorLink`` of the
member's role (``dsm/directory/shard/member.py``), which has no socket; the directory's shell
(``service.py``) polls this link's socket with its ROUTER, and looks at its timers with the
machine's.

What the link survives: a reset connection or a lost message costs a replay, never a message
(the session numbers every message but the heartbeats, and replays what is unacknowledged after
a reconnect, a gap or ``ACK_TIMEOUT_S``); a coordinator that leaves more unacknowledged than the
session's bound stops the shard, as one that falls silent does (the role's deadline).
"""

from __future__ import annotations

import logging
import os
import select
import time
from typing import TYPE_CHECKING

import zmq

from dsm import protocol as p
from dsm.directory.shard.role import EXIT_SHARD_LOST
from dsm.errors import DsmError
from dsm.linkwire import DealerLink, accept
from dsm.wire import has_input, recv_frames

if TYPE_CHECKING:
    from dsm.directory.shard.member import Member

log = logging.getLogger(__name__)


class MemberLink:
    """The DEALER to the coordinator at ``coordinator`` and its session; ``parent_pidfd``: the
    coordinator process that started this shard on its host, if one did (it stops with it)."""

    def __init__(self, dealer: zmq.Socket, coordinator: str, parent_pidfd: int | None = None):
        self.dealer = dealer
        self.coordinator = coordinator
        #: the link's reliable session: the coordinator welcomed this shard
        self.session = DealerLink(dealer, "the coordinator", time.monotonic())
        self.session.open(time.monotonic())
        self._parent_pidfd = parent_pidfd
        self.member: Member | None = None

    def serve(self, member: "Member") -> None:
        """Hand what the coordinator says to ``member`` from now on."""
        self.member = member

    # --- the role's transport ----------------------------------------------------------------
    def send(self, message: p.Message) -> bool:
        try:
            self.session.send(p.encode(message), time.monotonic(),
                              sequenced=not isinstance(message, p.Heartbeat), nonblocking=True)
        except zmq.Again:
            return False
        return True

    # --- the shell's loop --------------------------------------------------------------------
    def sockets(self) -> list[zmq.Socket]:
        return [self.dealer]

    def drain(self) -> None:
        """Every message queued from the coordinator, in order and once each, to the member."""
        member = self.member
        assert member is not None, "serve(member) first"
        page_size = member.directory.layout.page_size
        while has_input(self.dealer):
            frames = recv_frames(self.dealer)
            member.heard()
            try:
                body = accept(self.session.link, frames, time.monotonic())
                if body is None:
                    continue
                msg, _ = p.decode(body, page_size, p.Direction.TO_NODE)
            except DsmError as exc:
                log.error("dropped a message from the coordinator: %s", exc)
                continue
            member.receive(msg)

    def tick(self, now: float) -> None:
        """The session's timers (acknowledgements owed, replays due), its bound, and the
        coordinator process that started this shard."""
        member = self.member
        assert member is not None, "serve(member) first"
        self.session.flush(now)
        link = self.session.link
        if link.behind:
            member.directory.fail(f"the coordinator {self.coordinator} left {link.unacked} "
                                  "messages of this shard unacknowledged, past the session's "
                                  "bound", EXIT_SHARD_LOST)
            return
        if self._parent_pidfd is not None and select.select([self._parent_pidfd], [], [], 0)[0]:
            member.directory.fail("the coordinator that started this shard exited: stopping",
                                  EXIT_SHARD_LOST)

    def close(self) -> None:
        self.session.close(0)
        if self._parent_pidfd is not None:
            os.close(self._parent_pidfd)
