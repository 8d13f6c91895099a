"""The hot path's socket calls below pyzmq's Python layer (``dsm/wire.py``), on real ZeroMQ
sockets over ipc:// under the test's tmp_path: they must do what pyzmq's own calls do."""

from __future__ import annotations

import pytest
import zmq

from dsm.wire import can_send, has_input, recv_frames, send_frames

#: how long a test waits for a message to cross the ipc connection
ARRIVAL_TIMEOUT_MS = 5000


@pytest.fixture
def pair(tmp_path):
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"dealer")
    address = f"ipc://{tmp_path}/wire"
    router.bind(address)
    dealer.connect(address)
    yield router, dealer
    dealer.close(0)
    router.close(0)
    ctx.term()


@pytest.mark.timeout(30)
def test_recv_frames_returns_every_frame_of_one_message_at_a_time(pair):
    router, dealer = pair
    first = [b"header", bytes(range(256)) * 16]  # a header and a page
    second = [b"alone"]
    send_frames(dealer, first)
    send_frames(dealer, second)
    assert router.poll(ARRIVAL_TIMEOUT_MS)
    frames = recv_frames(router)
    assert all(type(f) is zmq.Frame for f in frames)  # no copies, as recv_multipart(copy=False)
    assert [f.bytes for f in frames] == [b"dealer", *first]
    assert router.poll(ARRIVAL_TIMEOUT_MS)
    assert [f.bytes for f in recv_frames(router)] == [b"dealer", *second]
    assert not has_input(router)


@pytest.mark.timeout(30)
def test_can_send_says_whether_a_connection_takes_a_message_now(tmp_path):
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IMMEDIATE, 1)  # as the peers' DEALERs: no queue without a connection
    dealer.connect(f"ipc://{tmp_path}/nobody")
    router = ctx.socket(zmq.ROUTER)
    try:
        assert not can_send(dealer)
        assert not dealer.poll(0, zmq.POLLOUT)
        router.bind(f"ipc://{tmp_path}/nobody")
        assert dealer.poll(ARRIVAL_TIMEOUT_MS, zmq.POLLOUT)
        assert can_send(dealer)
    finally:
        dealer.close(0)
        router.close(0)
        ctx.term()
