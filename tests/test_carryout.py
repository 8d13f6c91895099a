"""The runner of the node core's actions (``dsm/core/carryout.py``) and its handling of the
kernel's answers (``dsm/core/kernel.py``), alone: over a kernel of one process whose answers the
test chooses, and a transport that records what it sends. (The simulator runs them over its
model under seeded faults; the agent over the memfd and the uffds.)"""

from __future__ import annotations

import errno

import pytest

from dsm import protocol as p
from dsm.core import actions as act
from dsm.core.carryout import ActionRunner
from dsm.core.kernel import KernelCalls
from dsm.core.node import Waiter

PAGE = 4096


class OneProcessKernel:
    """The node's memory (page -> bytes) and one process, whose copies answer ``copy_answers``
    in turn (bytes copied, errno) before they go through."""

    page_size = PAGE

    def __init__(self, copy_answers=()):
        self.memory: dict[int, bytes] = {}
        self.proc = object()
        self.copy_answers = list(copy_answers)
        self.calls: list[tuple] = []

    def processes(self):
        return [self.proc]

    def addresses(self, proc, first, count):
        return [(first * PAGE, count * PAGE)]

    def writeprotect(self, proc, addr, length, wp):
        self.calls.append(("writeprotect", addr // PAGE, length // PAGE, wp))
        return 0

    def copy(self, proc, addr, data, wp):
        done, err = self.copy_answers.pop(0) if self.copy_answers else (len(data), 0)
        self.write(addr, data[:done])
        self.calls.append(("copy", addr // PAGE, done // PAGE, err))
        return done, err

    def wake(self, proc, addr):
        self.calls.append(("wake", addr // PAGE))
        return 0

    def poison(self, proc, addr):
        return 0

    def read_events(self, proc):
        self.calls.append(("read_events",))

    def forget(self, proc):
        self.calls.append(("forget",))

    def kill(self, proc, thread_id, why):
        raise AssertionError(why)

    def read(self, first, count):
        return b"".join(self.memory.get(q, bytes(PAGE)) for q in range(first, first + count))

    def write(self, offset, data):
        for i in range(len(data) // PAGE):
            self.memory[offset // PAGE + i] = bytes(data[i * PAGE:(i + 1) * PAGE])

    def punch(self, first, count):
        for q in range(first, first + count):
            self.memory.pop(q, None)


class Recorder:
    """A transport that records what it sends; peers answer ``reachable``."""

    def __init__(self, reachable: bool):
        self.reachable = reachable
        self.sent: list[tuple] = []

    def send(self, msg, data):
        self.sent.append(("directory", msg, data))

    def send_peer(self, peer, msg, data):
        if self.reachable:
            self.sent.append((peer[0], msg, data))
        return self.reachable


def _runner(kernel, transport):
    return ActionRunner(KernelCalls(kernel), twins=None, transport=transport)


def _fetch_to_peer(txn: int) -> list:
    """What the core answers a Fetch for page 3 to be sent straight to n1."""
    return [act.Protect(3, 1), act.Punch(3, 1, keep=True),
            act.Send(p.PeerPage(txn, 3, 1, True, p.Payload.DATA, "n0"), pages=(3, 1),
                     peer=("n1", "tcp://n1")),
            act.Send(p.Fetched(txn, 3, 1, p.Payload.NONE, [], [3], sent=True))]


def test_pages_a_peer_could_not_take_go_home_as_the_punch_read_them():
    kernel, transport = OneProcessKernel(), Recorder(reachable=False)
    kernel.memory[3] = b"\x07" * PAGE
    rest = _runner(kernel, transport).carry_out(_fetch_to_peer(txn=9))
    assert rest is None and 3 not in kernel.memory
    [(to, msg, data)] = transport.sent
    assert to == "directory" and msg.payload == p.Payload.DATA and msg.unwritten == [3]
    assert not msg.sent
    assert data == b"\x07" * PAGE


@pytest.mark.parametrize("reachable", [True, False], ids=["to the writer", "through the directory"])
def test_an_acknowledgement_goes_to_the_writer_or_else_to_the_directory(reachable):
    kernel, transport = OneProcessKernel(), Recorder(reachable=reachable)
    kernel.memory[3] = b"\x07" * PAGE
    ack = p.Invalidated(9, 3, 1, "n0")
    rest = _runner(kernel, transport).carry_out([act.Punch(3, 1),
                                                 act.Send(ack, peer=("n1", "tcp://n1"))])
    assert rest is None and 3 not in kernel.memory
    # (through the directory, it names the writer: the dynamic manager's directory relays it
    # there; the central manager's finds the writer from the transaction)
    assert transport.sent == [("n1", ack, None) if reachable
                              else ("directory", p.replace(ack, relay_to="n1"), None)]


def test_a_pause_after_a_send_hands_back_the_rest_rewritten():
    kernel, transport = OneProcessKernel(), Recorder(reachable=False)
    kernel.memory[3] = b"\x07" * PAGE
    runner = _runner(kernel, transport)
    rest = runner.carry_out(_fetch_to_peer(txn=9), pause=lambda: True)
    assert rest is not None and not transport.sent  # paused after the failed peer send
    [left] = rest.left
    assert left.message.payload == p.Payload.DATA  # a death now loses what it carries
    assert runner.carry_on(rest) is False
    assert transport.sent[0][2] == b"\x07" * PAGE


def test_an_install_copies_again_after_transient_answers_and_writes_what_is_there_already():
    kernel = OneProcessKernel(copy_answers=[(0, errno.ENOMEM), (PAGE, errno.EAGAIN),
                                            (0, errno.EEXIST)])
    installer = Waiter(kernel.proc, 0, 0, False, 1, 0.0)
    other = Waiter(kernel.proc, 2 * PAGE, 2, False, 2, 0.0)
    data = b"".join(bytes([q + 1]) * PAGE for q in range(4))
    _runner(kernel, Recorder(True)).carry_out(
        [act.Install(0, 4, data, False, installer, (installer, other))])
    assert [kernel.memory[q] for q in range(4)] == [bytes([q + 1]) * PAGE for q in range(4)]
    assert kernel.calls == [
        ("copy", 0, 0, errno.ENOMEM), ("copy", 0, 1, errno.EAGAIN), ("read_events",),
        ("copy", 1, 0, errno.EEXIST),
        ("writeprotect", 1, 3, True),  # the rest appears through the memory: protected first
        ("wake", 2),  # the copy woke the installer's page only
    ]
