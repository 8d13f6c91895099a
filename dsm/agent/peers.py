"""The agent's peer endpoint: pages sent node to node under the central and distributed
managers (``Fetch`` names the requester; the holder sends it a ``PeerPage``).

Each agent binds one ROUTER (``--peer-listen``, env ``DSM_PEER_LISTEN``; default a free port on
every interface, or an ``ipc://`` path beside the workload socket when the directory is reached
over ``ipc://``) and tells the directory, in its Hello, the endpoint the others reach it at
(``--advertise HOST``, env ``DSM_ADVERTISE``; default the address of the interface that routes
to the directory). It sends through one DEALER per peer, connected on first use with
``ZMQ_IMMEDIATE``, so that a message is taken only by a live connection. The loop never waits
long for one: a peer not connected (a first connection gets ``PEER_FIRST_CONNECT_S``) is not
reachable *now*, which the node core turns into a relay answer (the pages go through the
directory, correct but a hop longer) and this module into an error line naming both addresses;
ZeroMQ keeps connecting in the background, so the next transfer goes direct once it can. At most
``MAX_PEER_SOCKETS`` peers are kept (the least recently used is closed): a directory that names
endless addresses cannot exhaust the agent's descriptors. Under CurveZMQ keys the endpoint is a
CURVE server accepting the cluster's node keys.

Each link to a peer carries a reliable session (``dsm/linkwire.py``): the pages sent stay here
until the requester's agent acknowledges them (a bare acknowledgement back on the same
connection, ``ACK_DELAY_S`` later), and are sent again if a reset lost them. A DEALER's identity
is this node's plus a number of its own, so that a link opened afresh (after eviction, or after
its peer stopped acknowledging for ``PEER_GIVE_UP_S``) is a fresh session at the receiver too.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections import OrderedDict
from typing import Any, Iterator
from urllib.parse import urlsplit

import zmq

from dsm.agent.launch import PEER_LISTEN_ENV
from dsm.errors import ConfigError, DsmError
from dsm.errors import ProtocolError
from dsm.keys import ServerKeys, configure_client, peer_client_keys, serve
from dsm.linkwire import DealerLink, RouterLinks, reconnect_promptly
from dsm.reliability import ReliableLink
from dsm.liveness import ACK_TIMEOUT_S, NODE_TIMEOUT_S
from dsm.logthrottle import ThrottledLog
from dsm.wire import can_send, has_input, recv_frames

log = logging.getLogger(__name__)

#: how long the loop waits for a first connection to a peer (a LAN connects in well under a
#: millisecond; a peer not connected by then gets this transfer through the directory)
PEER_FIRST_CONNECT_S = 0.05
#: peers kept connected at once (the least recently used beyond this is closed)
MAX_PEER_SOCKETS = 256
#: pages queued for one peer before the sender counts it as not reading (as the directory's)
PEER_SEND_QUEUE_MESSAGES = 10_000
#: a peer that acknowledges nothing for this long is dead or cut off (the directory has declared
#: it dead by then, and ended the transactions it was sent pages for): what is kept for it goes
PEER_GIVE_UP_S = 2 * NODE_TIMEOUT_S
#: a link to a peer that has acknowledged nothing for this long is carried on over a fresh
#: connection. Not sooner: on a network that merely loses packets, TCP's own retransmissions
#: get through faster than a new handshake (several round trips, each as lossy)
PEER_REOPEN_S = 3 * ACK_TIMEOUT_S


def default_listen(directory: str, socket_path: str, node: str) -> str:
    """Where the peer endpoint binds when not told: beside the directory's transport."""
    if directory.startswith("ipc://"):
        return f"ipc://{os.path.dirname(os.path.abspath(socket_path))}/{node}.peer"
    return "tcp://0.0.0.0:*"


def route_address(directory: str) -> str:
    """The local address of the interface that routes to the directory's host (a UDP connect
    sends nothing; it only picks the route)."""
    host = urlsplit(directory).hostname or "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, 9))
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def advertised(bound: str, directory: str, advertise: str | None) -> str:
    """The endpoint the other nodes reach a socket bound at ``bound`` (its LAST_ENDPOINT) at."""
    if not bound.startswith("tcp://"):
        return bound
    port = urlsplit(bound).port
    host = advertise or route_address(directory)
    return f"tcp://{host}:{port}"


class PeerEndpoint:
    def __init__(self, ctx: zmq.Context, node: str, directory: str, listen: str,
                 advertise: str | None, keys: ServerKeys | None, identity: bytes = b""):
        self.node = node
        self._ctx = ctx
        self._keys = keys
        #: this node's identity, which its DEALERs to peers carry (with a number of their own)
        self._identity = identity or node.encode()
        self._link_numbers = itertools.count(1)
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        # a peer's DEALER that reconnects (same identity) takes its pipe over, session and all
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self._guard = serve(self.router, keys, f"the peer endpoint of node {node}")
        try:
            self.router.bind(listen)
        except zmq.ZMQError as exc:
            raise ConfigError(f"node {node} cannot serve its peer endpoint at {listen}: {exc} "
                          f"(--peer-listen, env {PEER_LISTEN_ENV})") from None
        self.bound = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        #: what the directory hands to the nodes that send pages here
        self.address = advertised(self.bound, directory, advertise)
        #: address -> the DEALER to it with its session, least recently used first
        self._out: OrderedDict[str, DealerLink] = OrderedDict()
        #: the sessions of the peers that send pages here, by their DEALERs' identities
        self.incoming = RouterLinks(self.router, lambda identity: True, MAX_PEER_SOCKETS)
        self._complain = ThrottledLog(log, "unreachable peers")

    def reachable(self, peer: str, address: str) -> bool:
        """Whether a page sent to ``address`` now would be taken by a live connection."""
        known = address in self._out
        try:
            sock = self._socket(peer, address)
        except (zmq.ZMQError, DsmError) as exc:  # a malformed address, a key file missing
            self._complain(logging.ERROR, "node %s cannot connect to node %s's peer endpoint "
                           "%r: %s", self.node, peer, address, exc)
            return False
        # a known peer is asked without waiting, once per page sent: the socket's own events
        # say it (Socket.poll would build a Poller each time); a new one gets time to connect
        if can_send(sock.socket) if known else sock.socket.poll(
                int(PEER_FIRST_CONNECT_S * 1000), zmq.POLLOUT):
            return True
        self._complain(logging.ERROR,
                       "node %s (peer endpoint %s) has no connection to node %s at %s: pages go "
                       "through the directory instead; if this lasts, check that %s is reachable "
                       "from here (--advertise, --peer-listen, a firewall; behind NAT: --manager "
                       "relay)", self.node, self.address, peer, address, address)
        return False

    def send(self, peer: str, address: str, frames: list[Any]) -> bool:
        """Send ``frames`` to ``peer``, kept until it acknowledges them; False (and not kept)
        if no connection takes them now: the caller sends the pages another way. A peer not
        sent to before gets the moment a first connection takes, as ``reachable`` gives it:
        the sockets refuse what no connection takes (``IMMEDIATE``), so the dynamic manager's
        first message to each peer went through the directory, logged as a connection gone."""
        known = address in self._out
        link = self._socket(peer, address)
        if not known:
            link.socket.poll(int(PEER_FIRST_CONNECT_S * 1000), zmq.POLLOUT)
        if link.send_once(frames, time.monotonic()):
            return True
        self._complain(logging.ERROR, "node %s could not hand pages to node %s at %s (the "
                       "connection is gone or full)", self.node, peer, address)
        return False

    def receive(self) -> Iterator[tuple[str, list[Any]]]:
        """The messages other nodes sent here that are to be handled, in order per sender and
        once each: (the sending node's name, as its DEALER's identity has it, and the frames
        without the ROUTER's identity and the session header)."""
        router, incoming = self.router, self.incoming
        while has_input(router):
            frames = recv_frames(router)
            identity = frames[0].bytes
            try:
                body = incoming.accept(identity, frames[1:], time.monotonic())
            except ProtocolError as exc:
                self._complain(logging.WARNING, "malformed message from a peer: %s", exc)
                continue
            if body is not None:
                yield identity.partition(b"#")[0].decode(errors="replace"), body

    def flush(self, now: float) -> None:
        """Acknowledge what came from peers; read their acknowledgements of what went to them,
        send again what they did not take; give up on a peer silent for PEER_GIVE_UP_S."""
        self.incoming.flush(now)
        for address, link in list(self._out.items()):
            for _ in link.receive(now):  # acknowledgements: nothing else comes this way
                pass
            stalled_s = link.link.oldest_unacked_s(now)
            if stalled_s > PEER_GIVE_UP_S:
                log.warning("node %s: %d messages to %s (%s) unacknowledged for %.0f s: given up "
                            "(the directory has ended their transactions)", self.node,
                            link.link.unacked, link.link.peer, address, stalled_s)
                self._drop(address)
                continue
            if stalled_s >= PEER_REOPEN_S:
                # a connection whose packets vanish (a NAT or a firewall that forgot it, a peer
                # rebooted) never resets: TCP retransmits into it for minutes, and the replay
                # queues behind. A fresh connection gets it instead (the guide's Lazy Pirate)
                log.info("node %s: %s (%s) acknowledged nothing for %.1f s: replaying %d "
                         "messages on a fresh connection", self.node, link.link.peer, address,
                         stalled_s, link.link.unacked)
                identity = link.socket.getsockopt(zmq.IDENTITY)
                sock = self._ctx.socket(zmq.DEALER)
                try:
                    self._configure(sock, link.link.peer, identity)
                except (zmq.ZMQError, DsmError) as exc:
                    sock.close(0)
                    self._complain(logging.ERROR, "node %s cannot reconnect to %s at %s: %s",
                                   self.node, link.link.peer, address, exc)
                    self._drop(address)
                    continue
                link.replace_socket(sock)  # watched before it connects
                try:
                    sock.connect(address)
                except zmq.ZMQError as exc:
                    self._complain(logging.ERROR, "node %s cannot reconnect to %s at %s: %s",
                                   self.node, link.link.peer, address, exc)
                    self._drop(address)
                    continue
            link.flush(now)

    def _socket(self, peer: str, address: str) -> DealerLink:
        link = self._out.get(address)
        if link is not None:
            self._out.move_to_end(address)
            return link
        sock = self._ctx.socket(zmq.DEALER)
        try:
            self._configure(sock, peer,
                            b"%s/%d" % (self._identity, next(self._link_numbers)))
            # its monitor tells a reconnect: what the reset lost is replayed at once (looked
            # at by ``flush``, on the loop's timers)
            link = DealerLink(sock, peer, time.monotonic(), connected=False)
            sock.connect(address)
        except Exception:
            sock.close(0)
            raise
        self._out[address] = link
        while len(self._out) > MAX_PEER_SOCKETS:
            self._drop(next(iter(self._out)))
        return link

    def links(self) -> list[ReliableLink]:
        """The sessions of the links to and from peers (for the node's counters)."""
        return [link.link for link in self._out.values()] + list(self.incoming.links.values())

    def _configure(self, sock: zmq.Socket, peer: str, identity: bytes) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a peer not connected
        sock.setsockopt(zmq.SNDHWM, PEER_SEND_QUEUE_MESSAGES)
        sock.setsockopt(zmq.IDENTITY, identity)
        reconnect_promptly(sock)
        if self._keys is not None:
            configure_client(sock, peer_client_keys(self._keys, peer))

    def _drop(self, address: str) -> None:
        link = self._out.pop(address, None)
        if link is not None:
            link.close(0)

    def close(self) -> None:
        for address in list(self._out):
            self._drop(address)
        self.router.close(0)
        self._guard.close()
