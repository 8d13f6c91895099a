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
from dsm.core.events import AddressSpace, Mapping, follow
from dsm.core.kernel import KernelCalls
from dsm.core.node import Waiter
from dsm.uffd.events import Remap

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
    assert transport.sent == [("n1" if reachable else "directory", ack, None)]


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


# --- ENOENT: a process that moved or unmapped the range meanwhile ---------------------------------

BASE = 0x6000_0000_0000
#: where the moving process's mremap puts the pages (outside the region's addresses)
ELSEWHERE = 0x7000_0000_0000


class MovingKernel(OneProcessKernel):
    """One process whose mappings of a 4-page region change under the node, as the kernel's do:
    ``move`` remaps pages at once and queues the Remap event, which only ``read_events`` applies
    to the node's view (``proc``). Until then, as Linux 6.8+ answers: UFFDIO_WRITEPROTECT says
    EAGAIN (mmap_changing), UFFDIO_COPY and UFFDIO_POISON look the range up first (ENOENT where
    nothing is mapped), then say EAGAIN. A protection moves with its page (EVENT_REMAP keeps
    the uffd-wp bits)."""

    def __init__(self):
        super().__init__()
        self.proc = AddressSpace([Mapping(BASE, 4 * PAGE, 0)])  #: the node's view of it
        self.truth = AddressSpace(self.proc.copy_mappings())  #: the kernel's
        self.unread: list = []
        self.protected: set[int] = set()  #: region pages write-protected in the process
        self.woken: list[int] = []  #: addresses UFFDIO_WAKE was called at

    def move(self, first: int, count: int) -> None:
        self.truth.remap(BASE + first * PAGE, ELSEWHERE, count * PAGE)
        self.unread.append(Remap(BASE + first * PAGE, ELSEWHERE, count * PAGE))

    def addresses(self, proc, first, count):
        return proc.addresses_of(first * PAGE, count * PAGE)

    def _mapped(self, addr, length):
        return [off // PAGE for a in range(addr, addr + length, PAGE)
                if (off := self.truth.offset_of(a)) is not None]

    def writeprotect(self, proc, addr, length, wp):
        if self.unread:
            return errno.EAGAIN
        pages = self._mapped(addr, length)
        if not pages:
            return errno.ENOENT
        if wp:
            self.protected.update(pages)
        else:
            self.protected.difference_update(pages)
            self.woken.append(addr)  # lifting it wakes the writers there
        return 0

    def copy(self, proc, addr, data, wp):
        pages = self._mapped(addr, len(data))
        if len(pages) * PAGE < len(data):
            return 0, errno.ENOENT
        if self.unread:
            return 0, errno.EAGAIN
        self.write(pages[0] * PAGE, data)
        if wp:
            self.protected.update(pages)
        self.woken.append(addr)
        return len(data), 0

    def wake(self, proc, addr):
        self.woken.append(addr)
        return 0

    def poison(self, proc, addr):
        if not self._mapped(addr, PAGE):
            return errno.ENOENT
        return errno.EAGAIN if self.unread else 0

    def read_events(self, proc):
        follow(proc, self.unread)
        self.unread.clear()


def test_a_protection_made_while_the_process_moves_the_page_follows_it():
    """The Remap read at the protection's EAGAIN moves page 2: the retry at the old address
    answers ENOENT, and the protection must be made where the page is now (else a read copy is
    writable there without a fault)."""
    kernel = MovingKernel()
    kernel.move(2, 1)
    KernelCalls(kernel).protect_everywhere(1, 2, wp=True)
    assert kernel.protected == {1, 2}
    assert kernel.addresses(kernel.proc, 2, 1) == [(ELSEWHERE, PAGE)]


def test_a_read_copy_whose_installer_moved_it_is_written_through_the_memory_and_protected():
    kernel = MovingKernel()
    kernel.move(2, 1)  # the Remap is not read yet: the copy answers ENOENT at the old address
    installer = Waiter(kernel.proc, BASE + 2 * PAGE, 2, False, 1, 0.0)
    _runner(kernel, Recorder(True)).carry_out(
        [act.Install(2, 1, b"\x05" * PAGE, False, installer, (installer,))])
    assert kernel.memory[2] == b"\x05" * PAGE
    assert kernel.protected == {2}, "the read copy is writable where the process maps it now"
    assert BASE + 2 * PAGE in kernel.woken  # the waiter refaults (and fails) at the old place


def test_a_lift_or_a_poison_that_finds_the_range_gone_wakes_the_threads_blocked_there():
    kernel = MovingKernel()
    kernel.protected.add(3)
    kernel.move(3, 1)
    calls = KernelCalls(kernel)
    calls.writeprotect(kernel.proc, 3, 1, wp=False)
    assert BASE + 3 * PAGE in kernel.woken, "a writer blocked at the old address hangs"
    assert kernel.protected == set()  # lifted where the page is now
    kernel.move(0, 1)
    kernel.woken.clear()
    calls.poison(kernel.proc, BASE, thread_id=1)
    assert kernel.woken == [BASE], "a waiter at the old address hangs"


def test_an_upgrade_wakes_a_writer_blocked_where_its_page_was_before_a_move():
    """A writer faults on read copy 3 at its address, then the process moves the page (the
    Remap read meanwhile): lifting the protection at the new address wakes nobody blocked at
    the old one, so the upgrade wakes it there; a writer the lift reaches is not woken twice."""
    kernel = MovingKernel()
    kernel.protected.update({1, 3})
    moved = Waiter(kernel.proc, BASE + 3 * PAGE, 3, True, 1, 0.0)
    stayed = Waiter(kernel.proc, BASE + PAGE, 1, True, 2, 0.0)
    kernel.move(3, 1)
    kernel.read_events(kernel.proc)
    runner = _runner(kernel, Recorder(True))
    runner.carry_out([act.Upgrade(3, 1, (moved,)), act.Upgrade(1, 1, (stayed,))])
    assert kernel.protected == set()
    assert kernel.woken == [ELSEWHERE, BASE + 3 * PAGE, BASE + PAGE]


def test_a_downgrade_sends_the_peer_and_the_directory_the_same_bytes():
    """A read copy sent to a peer, kept, and copied home: MADV_REMOVE punches the page between
    the two sends (the kernel lets the madvise go on once its event is read, while the agent
    works); the home copy must be what the peer got, not the hole's zeros."""
    kernel = OneProcessKernel()
    kernel.memory[3] = b"\x07" * PAGE

    class PunchingRecorder(Recorder):
        def send_peer(self, peer, msg, data):
            kernel.punch(3, 1)  # the madvise goes on
            return super().send_peer(peer, msg, data)

    transport = PunchingRecorder(reachable=True)
    _runner(kernel, transport).carry_out([
        act.Protect(3, 1),
        act.Send(p.PeerPage(9, 3, 1, False, p.Payload.DATA, "n0"), pages=(3, 1),
                 peer=("n1", "tcp://n1")),
        act.Send(p.Fetched(9, 3, 1, p.Payload.DATA, [], [], sent=True), pages=(3, 1))])
    assert [data for _, _, data in transport.sent] == [b"\x07" * PAGE] * 2
