"""The agent's join: its Hello to the directory's coordinator (shard 0, or the one directory), the
Welcome that answers it, and the same Hello to every other shard the Welcome names
(``dsm/agent/links.py``), before the agent serves anything (``dsm/agent/service.py``); and the
node core the Welcome calls for (``node_core``).

The coordinator's answer is the node's layout and the directory's terms: its epoch, whether
pages travel node to node (``direct``), whether it runs IVY's dynamic manager. A Fenced (a name
clash, a refused incarnation) or an Error (a coordinator whose shards have not all joined, a
Hello it could not read) is the join failing, said in one line by the agent's process.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import zmq

from dsm import protocol as p
from dsm.agent.links import ShardLinks
from dsm.agent.launch import NO_PEER_ENDPOINT
from dsm.core.dynamic import DynamicNodeCore
from dsm.core.node import NodeCore
from dsm.core.readahead import ReadAhead
from dsm.core.shards import shard_name
from dsm.core.stats import NodeStats
from dsm.errors import ConfigError, DsmError, ProtocolError
from dsm.launchers import job_name, placement
from dsm.layout import Layout
from dsm.trace import Tracer
from dsm.wire import send_frames

log = logging.getLogger(__name__)

#: how long the directory may take to answer Hello before the agent gives up
CONNECT_TIMEOUT_S = 5.0
#: how often a Hello that found no connection to queue on is tried again
JOIN_RETRY_S = 0.05
#: the coordinator's end of the link (shard 0, or the one directory), as trace message ids name
#: it (its Tracer's ``who``): where the node joins, and the link clock samples are recorded on
COORDINATOR_LINK = shard_name(0)
#: the largest read-ahead window: as many pages as one message carries (4 MiB), so that a
#: sequential scan costs one request, one transfer and one install per 4 MiB, not per MiB
#: (each costs the agents and the directory about as much Python as moving a MiB costs copies)
READAHEAD_MAX_PAGES = p.MAX_BATCH_PAGES


class DirectoryUnreachable(DsmError):
    """The directory did not answer within the deadline."""


class DirectoryRefused(DsmError):
    """The directory will not serve this node (a name clash, or it fenced this incarnation)."""


def hello(node: str, incarnation: int, peer_address: str) -> p.Hello:
    """This node's Hello: its name, process, incarnation, peer endpoint ("" without one), and
    the job it is part of (its barriers break together when one of its nodes dies)."""
    where = placement()
    job = ((job_name(where), where.rank, where.size)
           if where is not None and where.rank is not None else ("", -1, 0))
    return p.Hello(node, os.getpid(), incarnation, peer_address, *job)


def join(links: ShardLinks, hello_msg: p.Hello, directory: str, tracer: Tracer, link: str,
         clock_sample: Callable[[float, int], None]) -> p.Welcome:
    """Say ``hello_msg`` to the coordinator at ``directory``, then to every other shard its
    Welcome names; the coordinator's Welcome. ``link``: this node's end of the link, as the
    trace names it; ``clock_sample(t0_s, directory_clock_ns)``: the Hello's round trip, which
    the Welcome's clock ends (traced runs only). DirectoryUnreachable, DirectoryRefused,
    ProtocolError, or the links' own errors (``ShardLinks.join_shards``) if it fails."""
    t0 = tracer.now()
    _say_hello(links, hello_msg, directory, tracer, link, t0)
    msg, _ = p.decode(links.coordinator.recv_multipart(), 0, p.Direction.TO_NODE)
    if tracer.enabled:
        tracer.received(COORDINATOR_LINK, link, COORDINATOR_LINK, msg)
        if isinstance(msg, p.Welcome) and msg.clock_ns:
            clock_sample(t0, msg.clock_ns)
    if isinstance(msg, p.Fenced):
        raise DirectoryRefused(f"the directory {directory} refused node {hello_msg.node!r}: "
                               f"{msg.reason}")
    # an Error for the Welcome: the directory is up but does not serve this node now (a
    # coordinator whose shards have not all joined, a Hello it could not read); its reason
    if isinstance(msg, p.Error):
        raise DirectoryUnreachable(f"directory {directory}: {msg.message}")
    if not isinstance(msg, p.Welcome):
        raise ProtocolError(f"expected Welcome from the directory, got {type(msg).__name__}")
    # the other manager shards, if any: the same Hello to each (dsm/agent/links.py)
    links.join_shards(msg.shards, hello_msg, msg.epoch, CONNECT_TIMEOUT_S, tracer, link)
    log.info("node %s joined directory %s (epoch %x%s) as incarnation %x; pages %s",
             hello_msg.node, directory, msg.epoch,
             f", {len(msg.shards)} shards" if msg.shards else "", hello_msg.incarnation,
             f"node to node, this node's peer endpoint {hello_msg.endpoint}"
             if msg.direct and hello_msg.endpoint else "through the directory")
    return msg


def node_core(welcome: p.Welcome, node: str, layout: Layout, peer_address: str | None,
              directory: str, tracer: Tracer, stats: NodeStats) -> NodeCore:
    """The node core the directory's Welcome calls for: IVY's dynamic manager's
    (``dsm.core.dynamic``: pages asked of their probable owners at this node's peer endpoint,
    ``peer_address``), or the one the other managers share. Never one for the other when asked
    for the dynamic one: a node without a peer endpoint (None) cannot take part."""
    readahead = ReadAhead(READAHEAD_MAX_PAGES)
    if not welcome.dynamic:
        core = NodeCore(node, layout.num_pages, layout.page_size, readahead, tracer, stats)
    elif peer_address is None:
        raise ConfigError(f"the directory {directory} runs the dynamic manager, whose pages "
                          f"travel node to node: node {node} needs a peer endpoint (not "
                          f"--peer-listen {NO_PEER_ENDPOINT})")
    else:
        # request numbers from the start time (ns): a later incarnation never reuses one
        core = DynamicNodeCore(node, layout.num_pages, layout.page_size, readahead,
                               peer_address, time.time_ns(), tracer, stats)
    core.direct = welcome.direct  # pages node to node
    return core


def _say_hello(links: ShardLinks, hello_msg: p.Hello, directory: str, tracer: Tracer,
               link: str, t0: float) -> None:
    """Send the Hello to the coordinator and wait until its answer is readable;
    DirectoryUnreachable past ``CONNECT_TIMEOUT_S``, AuthenticationFailed when a handshake was
    refused."""
    handshake = links.handshake
    frames = p.encode(hello_msg)
    poller = zmq.Poller()
    poller.register(links.coordinator, zmq.POLLIN)
    poller.register(handshake.monitor, zmq.POLLIN)
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    sent = False
    try:
        while True:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise DirectoryUnreachable(f"directory {directory} did not answer within "
                                           f"{CONNECT_TIMEOUT_S} s ({handshake.progress()})")
            if not sent:
                # never blocking: while no connection is up (a handshake failing over and
                # over) the DEALER may have no pipe to queue on; the watch must get to say
                try:
                    send_frames(links.coordinator, frames, nonblocking=True)
                    sent = True
                    if tracer.enabled:
                        tracer.sent(link, COORDINATOR_LINK, COORDINATOR_LINK, hello_msg, t0)
                except zmq.Again:
                    pass
            wait_s = left_s if sent else min(left_s, JOIN_RETRY_S)
            ready = dict(poller.poll(max(1, int(wait_s * 1000))))
            handshake.check()  # AuthenticationFailed when a handshake was refused
            if links.coordinator in ready:
                return
    finally:
        handshake.close()
