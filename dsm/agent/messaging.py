"""The agent's side of the conversation with the directory and with the other nodes: what it
receives from them, what it sends them, and the node core's decisions carried out.

Every message the directory's shards (``dsm/agent/links.py``) or a peer (``dsm/agent/peers.py``)
sends is decoded, validated and handed to the node core (``dsm/core/node.py``), which decides;
``carry_out`` does the actions it returns, in order, through the runner the simulator runs too
(``dsm/core/carryout.py``): on the memfd and the uffds (``dsm/agent/memory.py``), and sent from
here to the DEALERs and the peer endpoint. Answers to forwarded workload requests go back
through the forwarder (``dsm/agent/forwarding.py``). Nothing the directory's side or a peer
sends stops the agent: a message that is malformed, not expected, or names pages outside the
region is dropped, with a rate-limited log line. What ends this node's service is the
directory's: once it fences the node, or takes none of its messages for ``NODE_CUT_OFF_S``, the
node is cut off (``cut_off``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import zmq

from dsm import protocol as p
from dsm.agent.forwarding import FORWARDED_ANSWERS
from dsm.core.inputs import CHECKED_RUNS, core_handlers
from dsm.agent.links import ShardLinks
from dsm.agent.peers import PeerEndpoint
from dsm.agent.twins import Twins
from dsm.core.carryout import ActionRunner
from dsm.core.dynamic import DynamicNodeCore
from dsm.core.kernel import KernelCalls
from dsm.core.node import NodeCore
from dsm.core.shards import shard_name
from dsm.core.stats import NodeStats
from dsm.errors import DsmError, ProtocolError
from dsm.layout import Layout
from dsm.liveness import NODE_CUT_OFF_S
from dsm.logthrottle import ThrottledLog
from dsm.trace import Tracer

log = logging.getLogger(__name__)


#: the dynamic manager's node-to-node messages a peer endpoint takes (``dsm.core.dynamic``;
#: ``OwnerDead`` and ``OwnedPages`` are the directory's and to it)
PEER_DYNAMIC = (p.PageRequest, p.Served, p.Taken, p.Invalidate)


class Messaging:
    def __init__(self, node: str, link: str, directory_endpoint: str, layout: Layout, *,
                 links: ShardLinks, peers: PeerEndpoint | None, kernel: KernelCalls,
                 core: NodeCore, twins: Twins, tracer: Tracer, stats: NodeStats,
                 answer: Callable[[p.Message], bool],
                 clock_sample: Callable[[float, int], None],
                 on_cut_off: Callable[[str], None]):
        self.node = node
        #: this node's end of the link to the directory, as trace message ids name it
        self.link = link
        self.directory_endpoint = directory_endpoint
        self.layout = layout
        self.page_size = layout.page_size
        self.links = links
        self.peers = peers
        self.core = core
        #: the core's actions carried out on the memfd, the uffds and the twins, sent from here
        self.runner = ActionRunner(kernel, twins, self)
        self.tracer = tracer
        self.stats = stats
        #: routes an answer to the workload request it answers (``Forwarder.answer``)
        self._answer = answer
        #: a heartbeat round trip to the directory that started at (s) has ended: its clock (ns)
        self._clock_sample = clock_sample
        #: what the agent does once the node is cut off
        self._on_cut_off = on_cut_off
        #: False once the directory no longer serves this node (cut off, fenced)
        self.directory_alive = True
        #: this node has said Bye (it is leaving): a Fenced for a late message is expected
        self.said_bye = False
        #: why the directory said it is stopping (its Closing, ``dsm/clusterstop.py``); None
        #: while it has not
        self.directory_closing: str | None = None
        #: messages and bytes by type, counted only for --metrics (dsm.metrics)
        self.wire: Any = None
        #: lines about messages dropped from the directory, rate-limited
        self._complain = ThrottledLog(log, "messages dropped from the directory")
        self._core_handlers = core_handlers(core, time.monotonic, self._reachable)
        self._dir_handlers: dict[type, Callable[[Any, Any], None]] = {
            **{kind: self._to_core for kind in self._core_handlers if kind is not p.PeerPage},
            **{answer: self._on_answer for answer in FORWARDED_ANSWERS},
            p.Error: self._on_answer,
            p.Fenced: self._on_fenced,
            p.Welcome: lambda m, d: None,
            p.Closing: self._on_closing,
            # the directory is alive (drain_directory noted it) and told its clock
            p.Heartbeat: self._on_heartbeat,
        }
        #: what other nodes send (the peer endpoint); under the dynamic manager, its
        #: node-to-node messages too (requests, pages served, confirmations, invalidations)
        self._peer_handlers: dict[type, Callable[[Any, Any], None]] = {
            kind: self._to_core for kind in
            ((p.PeerPage, p.Invalidated) + (PEER_DYNAMIC if isinstance(core, DynamicNodeCore)
                                           else ()))}

    # --- sending -----------------------------------------------------------------------------------
    def send(self, msg: p.Message, page: Any = None) -> None:
        """To the directory: the shard ``msg`` belongs to (``ShardLinks.send``)."""
        if not self.directory_alive:  # cut off: nothing reaches it any more
            return
        t = self.tracer.now() if self.tracer.enabled else None
        frames = p.encode(msg, page)
        try:
            shards = self.links.send(msg, frames)  # to the shard it belongs to
        except zmq.Again:
            self.cut_off(f"the directory {self.directory_endpoint} has taken no message for "
                         f"{NODE_CUT_OFF_S:.1f} s: this node is cut off from the cluster")
            return
        self.stats.count_message("to_directory", frames)
        if self.wire is not None:
            self.wire.count("sent", msg, frames)
        if t is not None:
            for shard in shards:  # each shard's link is its own (its messages counted apart)
                name = shard_name(shard)
                self.tracer.sent(self.link, name, name, msg, t)

    def send_peer(self, peer: tuple[str, str], msg: p.Message, data: Any) -> bool:
        """To node ``peer`` (name, peer endpoint); whether it could be reached."""
        t = self.tracer.now() if self.tracer.enabled else None
        frames = p.encode(msg, data)
        if not self.peers.send(peer[0], peer[1], frames):
            return False
        self.stats.count_message("to_peers", frames)
        if self.wire is not None:
            self.wire.count("sent", msg, frames)
        if t is not None:
            self.tracer.sent(self.node, peer[0], peer[0], msg, t)
        return True

    def cut_off(self, why: str) -> None:
        """The directory no longer serves this node: it fell silent for longer than this node
        may go on (``dsm.liveness``: the directory is about to hand this node's pages on), or it
        fenced it (declared dead, restarted). Nothing is sent to it any more, and nothing here can
        go on coherently: the agent fails the node (``on_cut_off``), once."""
        if not self.directory_alive:
            return
        self.directory_alive = False
        self._on_cut_off(why)

    # --- receiving ---------------------------------------------------------------------------------
    def drain_directory(self, until: type | None = None) -> bool:
        """Handle what the directory sent; True as soon as a message of type ``until`` came.
        Nothing the directory's side sends stops the agent: a message that is malformed, not
        expected, or names pages outside the region is dropped (the handlers validate before
        they change anything), with a rate-limited log line; so is any other failure."""
        try:
            return self._drain_directory(until)
        finally:  # a gap, a reconnect: ask for the replay at once
            self.links.flush_urgent(time.monotonic())

    def _drain_directory(self, until: type | None) -> bool:
        for shard, frames in self.links.receive():  # every shard's, each noted as heard from
            msg: Any = None
            self.stats.count_message("from_directory", frames)
            try:
                msg, data = p.decode(frames, self.page_size, p.Direction.TO_NODE)
                if self.tracer.enabled:
                    self.tracer.received(shard_name(shard), self.link, shard_name(shard), msg)
                if self.wire is not None:
                    self.wire.count("received", msg, frames)
                if until is not None and isinstance(msg, until):
                    return True
                if shard != 0 and type(msg) is p.Heartbeat:
                    # another shard's answer kept its link alive (heard from, above); clock
                    # samples are the coordinator's only, the reference clock of the trace (a
                    # shard on another host has a clock of its own)
                    continue
                handler = self._dir_handlers.get(type(msg))
                if handler is None:
                    raise ProtocolError(f"the agent does not expect a {type(msg).__name__} "
                                        "from the directory now")
                handler(msg, data)
            except Exception as exc:
                if isinstance(exc, ProtocolError) and msg is None and self.tracer.enabled:
                    self.tracer.received(shard_name(shard), self.link, shard_name(shard), None)
                self._dropped(exc, msg, "the directory")
        return False

    def drain_peers(self) -> None:
        """Pages other nodes sent here. As from the directory, nothing received stops the
        agent: a malformed or unexpected message is dropped with a rate-limited line."""
        for sender, frames in self.peers.receive():  # in order per sender, once each
            msg: Any = None
            try:
                msg, data = p.decode(frames, self.page_size, p.Direction.TO_PEER)
                handler = self._peer_handlers.get(type(msg))
                if handler is None:
                    raise ProtocolError(f"a {type(msg).__name__} from a peer, which this "
                                        "node's manager does not send node to node")
                if self.tracer.enabled:  # (a forwarded request: from its forwarder)
                    self.tracer.received(sender, self.node, sender, msg)
                if self.wire is not None:
                    self.wire.count("received", msg, frames)
                self.layout.check_page(msg.page + getattr(msg, "count", 1) - 1)
                handler(msg, data)
            except Exception as exc:
                self._dropped(exc, msg, "a peer")
        if self.peers.incoming.gapped:  # a page lost on the way: ask for its replay at once
            self.peers.incoming.flush_gaps(time.monotonic())

    def _dropped(self, exc: Exception, msg: Any, sender: str) -> None:
        """Say, rate-limited, why a message from ``sender`` was dropped (``msg``: as decoded,
        None if it could not be); called in the ``except`` that caught ``exc``."""
        if isinstance(exc, ProtocolError):
            self._complain(logging.WARNING, "malformed message from %s: %.500s", sender, exc)
        elif isinstance(exc, DsmError):
            self._complain(logging.WARNING, "dropped a %s from %s: %.500s",
                           type(msg).__name__, sender, exc)
        else:
            # not bad input (that is a DsmError, raised before anything changed): a bug, or an
            # action on the kernel that failed half-way. The node's state may be half-updated:
            # it stops loudly rather than serve pages from it (one policy, dsm.errors)
            log.critical("failed to handle a %s from %s", type(msg).__name__, sender,
                         exc_info=exc)
            self.cut_off(f"this node's agent failed to handle a {type(msg).__name__} from "
                         f"{sender} ({exc!r:.200}): it stops rather than carry on from a state "
                         "that may be half-updated")

    @property
    def directory_serving(self) -> bool:
        """Whether an answer from the directory may still come: it neither cut this node off nor
        said it is stopping."""
        return self.directory_alive and self.directory_closing is None

    def _on_fenced(self, msg: p.Fenced, _: Any) -> None:
        if self.said_bye:  # a late message of ours reached a shard after our Bye: we left
            log.debug("fenced after this node's Bye (%s): ignored", msg.reason)
            return
        self.cut_off(f"the directory {self.directory_endpoint} refuses this node: {msg.reason}")

    def _on_closing(self, msg: p.Closing, _: Any) -> None:
        # a node that is leaving stops waiting; one that is not carries on until the silence
        # cuts it off, or its own stop comes (the whole cluster stopping: it comes at once)
        if self.directory_closing is None:
            log.info("%s (%s): this node's leave will need no acknowledgement", msg.reason,
                     self.directory_endpoint)
        self.directory_closing = msg.reason

    def _on_heartbeat(self, msg: p.Heartbeat, _: Any) -> None:
        if msg.echo_ns and self.tracer.enabled:
            self._clock_sample(msg.echo_ns / 1e9, msg.clock_ns)

    # the directory's answers and orders: the core decides, carry_out does
    def _reachable(self, msg: p.Fetch | p.Invalidate) -> Callable[[str], bool]:
        """Whether the requester a Fetch or an Invalidate names answers at an address (its
        peer endpoint)."""
        peers = self.peers
        return lambda addr: peers is not None and peers.reachable(msg.to_node, addr)

    def _to_core(self, msg: Any, data: Any) -> None:
        """A page message: to the core (its pages checked against the region first), and what
        it decides carried out."""
        if isinstance(msg, CHECKED_RUNS):
            self.layout.check_page(msg.page + msg.count - 1)
        elif isinstance(msg, (p.PageRequest, p.Taken)):  # (the dynamic manager's: one page)
            self.layout.check_page(msg.page)
        self.carry_out(self._core_handlers[type(msg)](msg, data))

    def _check_runs(self, flat: list[int]) -> None:
        """ProtocolError unless ``flat`` holds (first, count) runs of the region's pages."""
        if len(flat) % 2 or any(count < 1 or first + count > self.layout.num_pages
                                for first, count in zip(flat[::2], flat[1::2])):
            raise ProtocolError(f"page runs {flat[:8]!r:.80} (write notices or guarded pages) "
                                f"are not runs of the region's {self.layout.num_pages} pages")

    def _on_answer(self, msg: Any, data: Any) -> None:
        if isinstance(msg, p.SyncReply) and (msg.notices or msg.guarded):
            # an acquire: before the process goes on, the copies others changed are dropped
            # and the guarded pages the grant carries are installed
            self._check_runs(msg.notices)
            self._check_runs(msg.guarded)
            self.carry_out(self.core.acquire_sync(msg.notices, msg.guarded, data, msg.req))
        if isinstance(msg, p.Allocated):
            if msg.offset + msg.nbytes > self.layout.size:  # the asking process gets an error
                msg = p.Error(msg.req, f"the directory allocated bytes {msg.offset:#x}+"
                                       f"{msg.nbytes:#x}, outside the region of "
                                       f"{self.layout.size:#x} bytes")
            else:
                self.core.allocated(msg.offset, msg.nbytes)
        if not self._answer(msg) and isinstance(msg, p.Error):
            self._complain(logging.ERROR, "directory reported: %.500s", msg.message)

    # --- the node core's actions -------------------------------------------------------------------
    def carry_out(self, actions: list) -> None:
        """Do what the core decided, in order (``dsm/core/carryout.py``): on the memfd and the
        uffds (``NodeMemory``), the twins, and through the DEALERs and the peer endpoint."""
        self.runner.carry_out(actions)
