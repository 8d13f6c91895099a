"""The directory state machine (``dsm.directory.machine.Directory``) driven directly, with no
sockets: a transport that records what it is asked to send and a clock the test moves. The
sessions, the Error policy and the silence deadline, as the ZeroMQ shell and the simulator
both run them."""

from __future__ import annotations

import logging

import numpy as np

import pytest

from dsm import protocol as p
from dsm.directory.machine import EXIT_INTERNAL_ERROR, Directory
from dsm.layout import DEFAULT_BASE_ADDRESS, PAGE_SIZE, Layout

pytestmark = pytest.mark.timeout(30)

#: pages of the test's region
REGION_PAGES = 8
#: the silence after which the test's directory declares a node dead
NODE_TIMEOUT_S = 2.0


class RecordingTransport:
    """Sends nothing: records each message by identity; ``gone`` identities cannot be sent
    to without a session (their connection closed)."""

    def __init__(self):
        self.sent: list[tuple[bytes, p.Message]] = []
        self.gone: set[bytes] = set()
        self.forgotten: list[bytes] = []

    def send(self, identity: bytes, message: p.Message, page=None) -> bool:
        if identity in self.gone:
            return False
        self.sent.append((identity, message))
        return True

    def forget(self, identity: bytes) -> None:
        self.forgotten.append(identity)

    def describe_link(self, identity: bytes) -> str:
        return "recorded session"

    def to(self, identity: bytes) -> list[p.Message]:
        return [m for i, m in self.sent if i == identity]


class Clock:
    def __init__(self):
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def world():
    transport, clock = RecordingTransport(), Clock()
    directory = Directory(Layout(DEFAULT_BASE_ADDRESS, REGION_PAGES * PAGE_SIZE), transport,
                          clock, node_timeout_s=NODE_TIMEOUT_S)
    return directory, transport, clock


def hello(directory: Directory, node: str, incarnation: int) -> bytes:
    identity = p.identity(node, incarnation)
    directory.handle(identity, p.Hello(node, 1, incarnation), None)
    return identity


def test_a_hello_starts_a_session_and_a_peer_without_one_is_fenced(world):
    directory, transport, _ = world
    a = hello(directory, "a", 1)
    assert [type(m) for m in transport.to(a)] == [p.Welcome]
    stranger = p.identity("b", 7)
    directory.handle(stranger, p.Acquire(0, 1, False, False), None)
    assert [type(m) for m in transport.to(stranger)] == [p.Fenced]
    assert directory.pages.peek(0).copyset == set()  # never served


def test_a_second_node_of_a_live_name_is_refused_and_a_restart_replaces_a_gone_one(world):
    directory, transport, _ = world
    first = hello(directory, "a", 1)
    second = hello(directory, "a", 2)  # the first still answers: a name clash
    assert [type(m) for m in transport.to(second)] == [p.Fenced]
    assert directory.sessions.get("a").identity == first
    transport.gone.add(first)  # the first's connection closed: the third is its restart
    third = hello(directory, "a", 3)
    assert directory.sessions.get("a").identity == third
    assert directory.sessions.is_fenced(first)


def test_a_malformed_message_is_answered_with_an_error_and_the_directory_goes_on(world, caplog):
    directory, transport, _ = world
    a = hello(directory, "a", 1)
    with caplog.at_level(logging.WARNING):
        directory.receive(a, [b"\xff not msgpack"])
        directory.handle(a, p.Acquire(REGION_PAGES, 1, False, False), None)  # outside
    assert [type(m) for m in transport.to(a)] == [p.Welcome, p.Error, p.Error]
    assert directory.failed is None and directory.exit_status == 0


def test_an_unexpected_failure_is_answered_and_stops_the_directory(world, monkeypatch, caplog):
    directory, transport, _ = world
    a = hello(directory, "a", 1)

    def broken(*args):
        raise KeyError("half-updated")

    monkeypatch.setitem(directory._handlers, p.Acquire, broken)
    with caplog.at_level(logging.CRITICAL):
        directory.handle(a, p.Acquire(0, 1, False, False), None)
    assert isinstance(transport.to(a)[-1], p.Error)
    assert directory.exit_status == EXIT_INTERNAL_ERROR and "half-updated" in directory.failed


def test_a_silent_node_is_declared_dead_by_the_tick_and_fenced_from_then_on(world, caplog):
    directory, transport, clock = world
    a = hello(directory, "a", 1)
    b = hello(directory, "b", 1)
    directory.handle(a, p.Acquire(0, 1, True, False), None)  # a owns page 0
    clock.now_s += NODE_TIMEOUT_S / 2
    directory.heard(b)  # b speaks; a stays silent
    clock.now_s += NODE_TIMEOUT_S * 3 / 4
    with caplog.at_level(logging.ERROR):
        directory.tick(clock.now_s)
    assert directory.sessions.get("a") is None and directory.sessions.get("b") is not None
    assert isinstance(transport.to(a)[-1], p.Fenced)
    assert 0 in directory.pages.lost  # what it owned died with it
    directory.handle(a, p.Acquire(1, 1, False, False), None)  # its late word: fenced
    assert isinstance(transport.to(a)[-1], p.Fenced)
    assert directory.pages.peek(1).copyset == set()


def test_a_release_applies_the_diffs_it_carries_before_it_and_refuses_one_it_is_not_home_of(
        world):
    """A LockRelease carries the diffs of its node's release pages (one message where a Diff
    per run and the release were): they are in the home copies before anyone can acquire; a
    carried diff of a page that is not a release page is refused whole, nothing applied."""
    from dsm.consistency import META_KEY, Consistency
    directory, transport, _ = world
    a, b = hello(directory, "a", 1), hello(directory, "b", 1)
    directory.handle(a, p.Alloc(1, "x", 2 * PAGE_SIZE, {META_KEY: Consistency.RELEASE.value}),
                     None)
    (allocated,) = [m for m in transport.to(a) if isinstance(m, p.Allocated)]
    first = allocated.offset // PAGE_SIZE
    spans = np.array([[8, 3]], dtype=p.SPAN_DTYPE).tobytes()
    directory.handle(a, p.LockAcquire(2, "l", "a:1:1", -1), None)
    directory.handle(b, p.LockAcquire(1, "l", "b:1:1", -1), None)  # waits for a's release
    bad = p.LockRelease(3, "l", "a:1:1", [first, 1], True,
                        [(first, 1, int(p.DiffEncoding.SPANS), spans),
                         (REGION_PAGES - 1, 1, int(p.DiffEncoding.SPANS), spans)],
                        p.Payload.DATA)
    directory.handle(a, bad, b"abcxyz")
    refusal = transport.to(a)[-1]
    assert isinstance(refusal, p.Error) and "not in a release" in refusal.message
    _, home = directory.pages.release.home.get(first, 1)
    assert home is None or bytes(home[8:11]) == bytes(3)  # nothing applied
    good = p.replace(bad, diffs=bad.diffs[:1])
    directory.handle(a, good, b"abc")
    _, home = directory.pages.release.home.get(first, 1)
    assert bytes(home[8:11]) == b"abc"
    grant = transport.to(b)[-1]  # b's grant came after the diff was in, with a's notice
    assert isinstance(grant, p.SyncReply) and grant.notices == [first, 1]


def test_the_dynamic_manager_refuses_a_node_without_a_peer_endpoint_and_says_why():
    transport, clock = RecordingTransport(), Clock()
    directory = Directory(Layout(DEFAULT_BASE_ADDRESS, REGION_PAGES * PAGE_SIZE), transport,
                          clock, node_timeout_s=NODE_TIMEOUT_S, manager="dynamic")
    alone = p.identity("a", 1)
    directory.handle(alone, p.Hello("a", 1, 1), None)
    [refusal] = transport.to(alone)
    assert isinstance(refusal, p.Fenced) and "peer endpoint" in refusal.reason, refusal
    assert directory.sessions.get("a") is None
    served = p.identity("b", 2)
    directory.handle(served, p.Hello("b", 1, 2, "tcp://b:7401"), None)
    assert [type(m) for m in transport.to(served)] == [p.Welcome]
