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
"""

from __future__ import annotations

import logging
import os
import socket
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import zmq

from dsm.errors import ConfigError, DsmError
from dsm.keys import ServerKeys, configure_client, peer_client_keys, serve
from dsm.logthrottle import ThrottledLog
from dsm.wire import send_frames

log = logging.getLogger(__name__)

PEER_LISTEN_ENV = "DSM_PEER_LISTEN"
ADVERTISE_ENV = "DSM_ADVERTISE"
#: the value of --peer-listen that serves no peer endpoint (relay manager only, e.g. behind NAT)
NO_PEER_ENDPOINT = "none"
#: how long the loop waits for a first connection to a peer (a LAN connects in well under a
#: millisecond; a peer not connected by then gets this transfer through the directory)
PEER_FIRST_CONNECT_S = 0.05
#: peers kept connected at once (the least recently used beyond this is closed)
MAX_PEER_SOCKETS = 256
#: pages queued for one peer before the sender counts it as not reading (as the directory's)
PEER_SEND_QUEUE_MESSAGES = 10_000


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
                 advertise: str | None, keys: ServerKeys | None):
        self.node = node
        self._ctx = ctx
        self._keys = keys
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self._guard = serve(self.router, keys, f"the peer endpoint of node {node}")
        try:
            self.router.bind(listen)
        except zmq.ZMQError as exc:
            raise ConfigError(f"node {node} cannot serve its peer endpoint at {listen}: {exc} "
                          f"(--peer-listen, env {PEER_LISTEN_ENV})") from None
        self.bound = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        #: what the directory hands to the nodes that send pages here
        self.address = advertised(self.bound, directory, advertise)
        #: address -> the DEALER to it, least recently used first
        self._out: OrderedDict[str, zmq.Socket] = OrderedDict()
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
        wait_ms = 0 if known else int(PEER_FIRST_CONNECT_S * 1000)
        if sock.poll(wait_ms, zmq.POLLOUT):
            return True
        self._complain(logging.ERROR,
                       "node %s (peer endpoint %s) has no connection to node %s at %s: pages go "
                       "through the directory instead; if this lasts, check that %s is reachable "
                       "from here (--advertise, --peer-listen, a firewall; behind NAT: --manager "
                       "relay)", self.node, self.address, peer, address, address)
        return False

    def send(self, peer: str, address: str, frames: list[Any]) -> bool:
        sock = self._socket(peer, address)
        try:
            send_frames(sock, frames, nonblocking=True)
            return True
        except zmq.Again:
            self._complain(logging.ERROR, "node %s could not hand pages to node %s at %s (the "
                           "connection is gone or full)", self.node, peer, address)
            return False

    def _socket(self, peer: str, address: str) -> zmq.Socket:
        sock = self._out.get(address)
        if sock is not None:
            self._out.move_to_end(address)
            return sock
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a peer not connected
        sock.setsockopt(zmq.SNDHWM, PEER_SEND_QUEUE_MESSAGES)
        try:
            if self._keys is not None:
                configure_client(sock, peer_client_keys(self._keys, peer))
            sock.connect(address)
        except Exception:
            sock.close(0)
            raise
        self._out[address] = sock
        while len(self._out) > MAX_PEER_SOCKETS:
            self._drop(next(iter(self._out)))
        return sock

    def _drop(self, address: str) -> None:
        sock = self._out.pop(address, None)
        if sock is not None:
            sock.close(0)

    def close(self) -> None:
        for address in list(self._out):
            self._drop(address)
        self.router.close(0)
        self._guard.close()
