"""What a node does with each message that reaches it, decoded, from the directory's shards or
from another node: the one dispatch the agent (``dsm/agent/messaging.py``, which owns the
sockets, decodes, traces and counts) and the simulator (``dsm/sim/network.py``) both deliver
through, so that a message meets the same checks, reaches the same core method with the same
arguments, and ends in the same answer or the same cut-off in both.

What it decides:

- which messages each side may send: a page message from the directory goes to the core
  (``dsm/core/inputs.py``), and so do a peer's (PeerPage, Invalidated, and the dynamic manager's
  node-to-node messages under it); anything else from a peer, or a message the directory never
  sends a node, is a ``ProtocolError`` (the agent drops it; the simulator fails the run);
- the checks before anything changes: the pages a message names lie in the region, an
  acquire's runs of write notices and guarded pages are runs of the region's pages, an
  allocation lies in the region (else the asking process is answered an Error);
- an answer to a forwarded workload request: an acquire's notices and guarded pages handled
  (``NodeCore.acquire_sync``, its actions carried out) before the answer goes on to the process
  that waits for it (``answer``);
- the directory's word about this node: a Fenced cuts it off (``cut_off``), unless the node said
  Bye, after which a late message of its own is expected to be fenced; a Closing is noted
  (``directory_closing``: a leave then needs no acknowledgement); a Heartbeat from the
  coordinator ends a clock round trip (``clock_sample``); another shard's only kept its link
  alive.

Its ports: ``carry_out`` does the core's actions (``dsm/core/carryout.py``); ``answer`` routes an
answer to the workload request it answers (True if one waited for it); ``cut_off`` ends this
node's service; ``clock_sample(t0_s, directory_clock_ns)``; ``now`` and ``reachable`` are the core
handlers' (``dsm.core.inputs.core_handlers``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from dsm import protocol as p
from dsm.core.actions import Action
from dsm.core.dynamic import DynamicNodeCore
from dsm.core.inputs import CHECKED_RUNS, core_handlers
from dsm.core.node import NodeCore
from dsm.errors import ProtocolError
from dsm.layout import Layout
from dsm.logthrottle import ThrottledLog

log = logging.getLogger(__name__)

#: the shard that is the coordinator (or the one directory): its heartbeats carry the reference
#: clock of the trace
COORDINATOR_SHARD = 0
#: the directory's answers to the workload requests the agent forwards (``dsm.agent.forwarding``
#: maps each request to its answer)
FORWARDED_ANSWERS = frozenset({p.Allocated, p.SyncReply, p.LockInfo, p.LostReport, p.Freed,
                               p.ArrayList, p.AtomicResult, p.CollectiveResult})
#: the dynamic manager's node-to-node messages a node takes from a peer (``dsm.core.dynamic``;
#: ``OwnerDead`` and ``OwnedPages`` are the directory's and to it)
PEER_DYNAMIC = (p.PageRequest, p.Served, p.Taken, p.Invalidate)
#: what any node takes from a peer: pages, and acknowledgements of invalidations
PEER_PAGES = (p.PeerPage, p.Invalidated)

#: ``(message, page data) -> None``
Delivery = Callable[[Any, Any], None]


class Inbox:
    def __init__(self, core: NodeCore, layout: Layout, *,
                 now: Callable[[], float],
                 reachable: Callable[[p.Fetch | p.Invalidate], Callable[[str], bool]],
                 carry_out: Callable[[list[Action]], None],
                 answer: Callable[[p.Message], bool],
                 cut_off: Callable[[str], None],
                 clock_sample: Callable[[float, int], None],
                 directory: str = "the directory"):
        """``directory``: how the directory is named in what the inbox says (its endpoint)."""
        self.core = core
        self.layout = layout
        self.directory = directory
        self._carry_out = carry_out
        self._answer = answer
        self._cut_off = cut_off
        self._clock_sample = clock_sample
        #: this node has said Bye (it is leaving): a Fenced for a late message is expected
        self.said_bye = False
        #: why the directory said it is stopping (its Closing, ``dsm/clusterstop.py``); None
        #: while it has not
        self.directory_closing: str | None = None
        #: lines about answers no request waited for, rate-limited
        self._complain = ThrottledLog(log, "directory errors no request waited for")
        self._core_handlers = core_handlers(core, now, reachable)
        self._dir_handlers: dict[type, Delivery] = {
            **{kind: self._to_core for kind in self._core_handlers if kind is not p.PeerPage},
            **{kind: self._on_answer for kind in FORWARDED_ANSWERS},
            p.Error: self._on_answer,
            p.Fenced: self._on_fenced,
            p.Welcome: lambda m, d: None,  # (the join took its own: a later one changes nothing)
            p.Closing: self._on_closing,
            p.Heartbeat: self._on_heartbeat,
        }
        #: what other nodes send; under the dynamic manager, its node-to-node messages too
        #: (requests, pages served, confirmations, invalidations)
        self._peer_handlers: dict[type, Delivery] = {
            kind: self._to_core
            for kind in PEER_PAGES + (PEER_DYNAMIC if isinstance(core, DynamicNodeCore) else ())}

    # --- what comes in ----------------------------------------------------------------------------
    def from_directory(self, shard: int, msg: Any, data: Any) -> None:
        """A message from the directory's shard ``shard``; ``ProtocolError`` (or another
        ``DsmError``), before anything changed, if it is not one to take now."""
        if shard != COORDINATOR_SHARD and type(msg) is p.Heartbeat:
            # another shard's answer kept its link alive; clock samples are the coordinator's
            # only, the reference clock of the trace (a shard on another host has its own)
            return
        handler = self._dir_handlers.get(type(msg))
        if handler is None:
            raise ProtocolError(f"the agent does not expect a {type(msg).__name__} from the "
                                "directory now")
        handler(msg, data)

    def expect_from_peer(self, msg: Any) -> Delivery:
        """How a message from a peer is delivered; ``ProtocolError`` if no peer sends it to a
        node of this manager."""
        handler = self._peer_handlers.get(type(msg))
        if handler is None:
            raise ProtocolError(f"a {type(msg).__name__} from a peer, which this node's manager "
                                "does not send node to node")
        return handler

    def from_peer(self, msg: Any, data: Any) -> None:
        """A message from another node; a ``DsmError``, before anything changed, if it is not
        one a peer sends, or names pages outside the region."""
        handler = self.expect_from_peer(msg)
        self.layout.check_page(msg.page + getattr(msg, "count", 1) - 1)
        handler(msg, data)

    # --- the handlers ------------------------------------------------------------------------------
    def _to_core(self, msg: Any, data: Any) -> None:
        """A page message: to the core (its pages checked against the region first), and what
        it decides carried out."""
        if isinstance(msg, CHECKED_RUNS):
            self.layout.check_page(msg.page + msg.count - 1)
        self._carry_out(self._core_handlers[type(msg)](msg, data))

    def _check_runs(self, flat: list[int]) -> None:
        """ProtocolError unless ``flat`` holds (first, count) runs of the region's pages."""
        if len(flat) % 2 or any(count < 1 or first + count > self.layout.num_pages
                                for first, count in zip(flat[::2], flat[1::2])):
            raise ProtocolError(f"page runs {flat[:8]!r:.80} (write notices or guarded pages) "
                                f"are not runs of the region's {self.layout.num_pages} pages")

    def _on_answer(self, msg: Any, data: Any) -> None:
        if isinstance(msg, p.SyncReply):
            # an acquire: before the process goes on, the copies others changed are dropped
            # and the guarded pages the grant carries are installed (every answer, notices or
            # not, ends its request: the core forgets the diffs it counted at the request)
            self._check_runs(msg.notices)
            self._check_runs(msg.guarded)
            self._carry_out(self.core.acquire_sync(msg.notices, msg.guarded, data, msg.req))
        elif isinstance(msg, p.Error):  # a request refused (a lock's timeout): ended too
            self.core.acquire_sync([], [], None, msg.req)
        if isinstance(msg, p.Allocated):
            if msg.offset + msg.nbytes > self.layout.size:  # the asking process gets an error
                msg = p.Error(msg.req, f"the directory allocated bytes {msg.offset:#x}+"
                                       f"{msg.nbytes:#x}, outside the region of "
                                       f"{self.layout.size:#x} bytes")
            else:
                self.core.allocated(msg.offset, msg.nbytes)
        if not self._answer(msg) and isinstance(msg, p.Error):
            self._complain(logging.ERROR, "directory reported: %.500s", msg.message)

    def _on_fenced(self, msg: p.Fenced, _: Any) -> None:
        if self.said_bye:  # a late message of ours reached a shard after our Bye: we left
            log.debug("fenced after this node's Bye (%s): ignored", msg.reason)
            return
        self._cut_off(f"the directory {self.directory} refuses this node: {msg.reason}")

    def _on_closing(self, msg: p.Closing, _: Any) -> None:
        # a node that is leaving stops waiting; one that is not carries on until the silence
        # cuts it off, or its own stop comes (the whole cluster stopping: it comes at once)
        if self.directory_closing is None:
            log.info("%s (%s): this node's leave will need no acknowledgement", msg.reason,
                     self.directory)
        self.directory_closing = msg.reason

    def _on_heartbeat(self, msg: p.Heartbeat, _: Any) -> None:
        # the directory is alive (its link noted it) and, answering ours, told its clock
        if msg.echo_ns:
            self._clock_sample(msg.echo_ns / 1e9, msg.clock_ns)
