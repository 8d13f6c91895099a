"""The agent's peer endpoint (``dsm/agent/peers.py``) on real ZeroMQ sockets."""

from __future__ import annotations

import time

import pytest
import zmq

from dsm.agent.peers import PeerEndpoint

pytestmark = pytest.mark.timeout(30)

#: how long the receiving end waits for what was sent
RECEIVE_DEADLINE_S = 5.0


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_the_first_message_to_a_peer_goes_straight_to_it(tmp_path, transport):
    """A peer not sent to before is given the moment its connection takes, not refused at
    once: before, the dynamic manager's first message to every peer went through the
    directory, and the node logged that the connection was gone or full."""
    ctx = zmq.Context()
    listen = ("tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{tmp_path}/{{}}.peer")
    directory = "tcp://127.0.0.1:9" if transport == "tcp" else f"ipc://{tmp_path}/dir"
    a = PeerEndpoint(ctx, "a", directory, listen.format("a"), "127.0.0.1", None, b"a#1")
    b = PeerEndpoint(ctx, "b", directory, listen.format("b"), "127.0.0.1", None, b"b#1")
    try:
        assert a.send("b", b.address, [b"hello", b"page"])
        deadline = time.monotonic() + RECEIVE_DEADLINE_S
        got: list = []
        while not got and time.monotonic() < deadline:
            if b.router.poll(100):
                got = list(b.receive())
        assert [(name, [bytes(f) for f in body]) for name, body in got] == [
            ("a", [b"hello", b"page"])]
    finally:
        a.close()
        b.close()
        ctx.term()
