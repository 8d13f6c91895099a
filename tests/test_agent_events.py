"""The agent's handling of the kernel's events and of its own resources, on real processes.

Most tests drive real nodes (`directory` / `make_node`). Where a race decides the outcome, the
node under test runs its agent inside this test process (`here`, with a workload process attached
to it), so that the test can hold the agent at the one point the race is about; where the logic
is one class's, the test drives that class (or one agent method) directly.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import struct
import threading
import time
from contextlib import contextmanager
from typing import Callable

import pytest

from dsm import libc, local
from dsm import protocol as p
from dsm.agent.memory import NodeMemory
from dsm.core.events import follow
from dsm.core.kernel import MAX_KERNEL_RETRIES, KernelCalls
from dsm.core.states import PageState
from dsm.agent.processes import Mapping, WorkloadProcess
from dsm.agent.service import REMOVE_SETTLE_S, Agent
from dsm.errors import DsmError
from dsm.layout import Layout
from dsm.needs import REGION_REGISTER_MODE, WORKLOAD_FEATURES
from dsm.uffd import Access, EventPending, FaultKind, Pagefault, Remove, Uffd
from tests.cluster import NodeProcess

pytestmark = pytest.mark.timeout(90)

PAGE = 4096
WORDS = PAGE // 8  # int64 words per page
#: how long a step that depends on another process may take before the test fails
STEP_TIMEOUT_S = 15.0
#: how long the in-process agent may take to leave its loop
AGENT_STOP_TIMEOUT_S = 10.0
#: /proc/PID/pagemap: bit 57 is set where a page (or an empty entry's marker) is uffd-wp protected
PAGEMAP_ENTRY = struct.Struct("<Q")
PM_UFFD_WP = 1 << 57


# --- helpers -------------------------------------------------------------------------------------


class FakeUffd:
    """Stands in for a workload's uffd where one agent method is driven alone: a real fd to poll
    (an eventfd that never fires) and the ioctls recorded."""

    def __init__(self, copy_error: Callable[[], Exception] | None = None):
        self._fd = os.eventfd(0)
        self.calls: list[tuple] = []  #: wakes and write protections
        self.copies = 0  #: counted, not recorded: a loop that never ends must not eat memory
        self.copy_error = copy_error  #: makes the exception every copy raises

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def wake(self, start: int, length: int) -> None:
        self.calls.append(("wake", start, length))

    def writeprotect(self, start: int, length: int, *, wp: bool, wake: bool = True) -> None:
        self.calls.append(("writeprotect", start, length, wp))

    def copy(self, dst, src, length, *, wp=False, wake=True) -> int:
        self.copies += 1
        if self.copy_error is not None:
            raise self.copy_error()
        return length

    def read_events(self, max_events: int = 64, timeout_s: float | None = 0) -> list:
        return []


@pytest.fixture
def here(directory, tmp_path):
    """A node agent in this process, joined to the test's directory (not serving yet)."""
    agent = Agent(directory.endpoint, "here", str(tmp_path / "here.sock"))
    yield agent
    agent.close()


@contextmanager
def serving(agent: Agent):
    """Run the agent's loop on a thread of this process (the workloads it serves are other
    processes: their faults never block this interpreter)."""
    thread = threading.Thread(target=agent.serve_forever, name="agent", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        agent.stop()
        thread.join(AGENT_STOP_TIMEOUT_S)
        assert not thread.is_alive(), f"the agent's loop did not stop within {AGENT_STOP_TIMEOUT_S} s"


def attach_here(agent: Agent, directory, tmp_path, monkeypatch, name: str) -> NodeProcess:
    """A workload process attached to the in-process agent (through $DSM_AGENT_SOCKET)."""
    monkeypatch.setenv(local.AGENT_SOCKET_ENV, agent.socket_path)
    try:
        return NodeProcess(directory.endpoint, name, tmp_path)
    finally:
        monkeypatch.delenv(local.AGENT_SOCKET_ENV)


def fake_process(agent: Agent, uffd: FakeUffd | None = None) -> WorkloadProcess:
    """A process mapping the whole region at the base, served by ``agent``."""
    proc = WorkloadProcess(uffd or FakeUffd(), None,
                           [Mapping(agent.layout.base, agent.layout.size, 0)])
    agent.workloads.add(proc)
    return proc


def agent_pid(node: NodeProcess) -> int:
    return node.run("", "node._agent_proc.pid")


@contextmanager
def stopped(pid: int):
    """The process ``pid`` stopped (SIGSTOP) for the block: its requests stay in flight."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


#: a workload snippet: wait until this node's agent has sent ``n`` page requests in all
WAIT_FOR_REQUESTS = (
    "import time\n"
    "deadline = time.monotonic() + {timeout}\n"
    "while node.stats()['counters'].get('requests', 0) < {n}:\n"
    "    assert time.monotonic() < deadline, 'the agent sent no request for the page'\n"
)

#: a workload snippet: start thread t1 reading x[{index}] into ``out`` with the GIL released
#: (ctypes.memmove), so that it blocks in the fault while the other threads go on
READ_IN_A_THREAD = (
    "import ctypes, threading\n"
    "out = ctypes.c_int64(-1)\n"
    "t1 = threading.Thread(target=libc.memmove,\n"
    "                      args=(ctypes.addressof(out), node.address_of(x) + 8 * {index}, 8))\n"
    "t1.start()\n"
)


def requests_sent(node: NodeProcess) -> int:
    return node.run("", "node.stats()['counters'].get('requests', 0)")


# --- item 1: every event is handled when read ------------------------------------------------------


def test_a_fork_read_while_a_page_is_installed_adopts_and_protects_the_child(
        here, directory, make_node, tmp_path, monkeypatch):
    """The race: a thread forks while the agent installs a page in its process. The install's
    UFFDIO_COPY then finds the Fork pending (EAGAIN) and reads it: the agent must adopt the child
    at once (its uffd never polls readable on its own: its faults would hang) and protect the read
    copy just installed in it (its page tables were copied before the page appeared)."""
    b = make_node("b")
    b.run(f"x = node.array('fk', (4 * {WORDS},), np.int64); x[:] = 1")
    held, release = threading.Event(), threading.Event()

    def holding(handler):
        def hold_the_grant(msg, data):
            # the agent is past its poll: a fork now is read only by the install's retry
            if not held.is_set():
                held.set()
                release.wait(STEP_TIMEOUT_S)
            handler(msg, data)
        return hold_the_grant

    # the page comes from the directory (relay) or straight from b (central, distributed);
    # under the dynamic manager (whose node-to-node messages only it takes from peers) in b's
    # Served, straight or relayed by the directory (b's first message to a node it has no
    # connection to yet)
    inbox = here.messaging.inbox
    inbox._dir_handlers[p.Grant] = holding(inbox._dir_handlers[p.Grant])
    if here.peers is not None:
        inbox._peer_handlers[p.PeerPage] = holding(inbox._peer_handlers[p.PeerPage])
    if p.Served in inbox._peer_handlers:
        for handlers in (inbox._peer_handlers, inbox._dir_handlers):
            handlers[p.Served] = holding(handlers[p.Served])
    with serving(here):
        w = attach_here(here, directory, tmp_path, monkeypatch, "w")
        try:
            w.run(f"x = node.array('fk', (4 * {WORDS},), np.int64)")
            w.run(READ_IN_A_THREAD.format(index=0))  # page 0, owned by b: its copy will come
            assert held.wait(STEP_TIMEOUT_S), "no copy of page 0 reached the agent"
            w.send(
                "pid = os.fork()\n"
                "if pid == 0:\n"
                "    code = 3\n"
                "    try:\n"
                f"        v = int(x[2 * {WORDS}])  # served only if the agent adopted this child\n"
                "        x[0] = 6 + v  # the read copy installed after the fork: must fault\n"
                "        code = 0\n"
                "    finally:\n"
                "        os._exit(code)\n"
                "_, status = os.waitpid(pid, 0)\n",
                "status",
            )
            uffd = next(fd for fd, pr in here.procs.items() if pr.pid == w.proc.pid)
            ready, _, _ = select.select([uffd], [], [], STEP_TIMEOUT_S)
            assert ready, "the fork raised no event on the workload's uffd"
            release.set()  # the Fork is pending: let the install run into it
            assert w.wait(STEP_TIMEOUT_S) == 0, "the child failed"
            assert w.run("t1.join(10)", "out.value") in (1, 7)
            assert b.run("", "int(x[0])") == 7, "the child's write to a read copy was silent"
        finally:
            release.set()
            w.kill()


def test_fork_while_a_fetch_is_in_flight(make_node):
    """One thread waits for a page another node owns (that node's agent is stopped, so the fetch
    stays in flight) while another thread forks: the child is served and its writes are seen."""
    a, b = make_node("a"), make_node("b")
    b.run(f"x = node.array('ff', (4 * {WORDS},), np.int64); x[:] = 1")
    a.run(f"x = node.array('ff', (4 * {WORDS},), np.int64); y = node.array('ff2', ({WORDS},), np.int64)")
    before = requests_sent(a)
    with stopped(agent_pid(b)):
        a.run(READ_IN_A_THREAD.format(index=0))
        a.run(WAIT_FOR_REQUESTS.format(n=before + 1, timeout=STEP_TIMEOUT_S))
        a.run(
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    y[:] = 5  # a page no node holds: this child's own request\n"
            "    os._exit(0)\n"
            "deadline = time.monotonic() + 10\n"
            "while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:\n"
            "    assert time.monotonic() < deadline, 'the forked child hangs'\n"
            "assert done[1] == 0, done\n"
        )
        assert a.run("", "t1.is_alive()") is True  # the fetch is still in flight
    assert a.run("t1.join(10)", "out.value") == 1
    assert b.run(f"y = node.array('ff2', ({WORDS},), np.int64)", "y.tolist()") == [5] * WORDS


def test_a_child_forked_right_after_its_parent_got_read_copies_cannot_write_them_silently(make_node):
    a, b = make_node("a"), make_node("b")
    b.run(f"x = node.array('fp', (8 * {WORDS},), np.int64); x[:] = 2")
    a.run(
        f"x = node.array('fp', (8 * {WORDS},), np.int64)\n"
        "total = int(x.sum())  # read copies of every page\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        f"    for i in range(8):\n"
        f"        x[i * {WORDS}] = 100 + i\n"
        "    os._exit(0)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "assert status == 0, status\n"
    )
    assert b.run("", f"x[::{WORDS}].tolist()") == [100 + i for i in range(8)]
    assert a.run("", f"x[::{WORDS}].tolist()") == [100 + i for i in range(8)]


def test_a_page_existing_mid_run_leaves_the_installer_write_protected(tmp_path):
    """UFFDIO_COPY of a read copy stops at a page already in the memfd (EEXIST): the rest is
    written through the memfd, and the installing process must still not be able to write it
    without a fault. (This process is the installer; it never touches the pages: the kernel's
    page map says whether each is protected.)"""
    layout = Layout(libc.PAGE_SIZE * 1024, 8 * PAGE)  # the base is only used for addresses
    procs: dict[int, WorkloadProcess] = {}
    memory = NodeMemory("eexist", layout, procs, lambda proc: None)
    addr = libc.mmap_at(0, layout.size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED,
                        memory.memfd)
    uffd = Uffd.open(features=WORKLOAD_FEATURES)
    try:
        uffd.register(addr, layout.size, REGION_REGISTER_MODE)
        proc = WorkloadProcess(uffd, os.getpid(), [Mapping(addr, layout.size, 0)])
        procs[uffd.fileno()] = proc
        os.pwrite(memory.memfd, b"\x01" * PAGE, 2 * PAGE)  # page 2 is there already
        KernelCalls(memory).install(0, 4, b"\x02" * (4 * PAGE), False, (proc, addr))
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek(addr // PAGE * PAGEMAP_ENTRY.size)
            entries = [PAGEMAP_ENTRY.unpack(pagemap.read(PAGEMAP_ENTRY.size))[0] for _ in range(4)]
        assert [bool(e & PM_UFFD_WP) for e in entries] == [True] * 4, \
            f"pagemap entries {[hex(e) for e in entries]}: every page of the read copy must be protected"
        assert os.pread(memory.memfd, 4 * PAGE, 0) == b"\x02" * (4 * PAGE)
    finally:
        uffd.close()
        libc.munmap(addr, layout.size)
        memory.close()


def test_a_protection_made_while_the_process_moves_the_page_is_made_where_it_went(tmp_path):
    """A thread of this process mremaps page 2 of the region (the kernel holds it in mremap until
    the Remap event is read) while the node write-protects it: the ioctl at the old address
    finds events pending, reads the Remap, then finds nothing mapped there (ENOENT). The
    protection must be made at the page's new address; the kernel's page map says whether it
    was."""
    layout = Layout(libc.PAGE_SIZE * 1024, 4 * PAGE)  # the base is only used for addresses
    procs: dict[int, WorkloadProcess] = {}
    memory = NodeMemory("enoent", layout, procs, lambda proc: None)
    addr = libc.mmap_at(0, layout.size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED,
                        memory.memfd)
    spare = libc.mmap_at(0, PAGE, 0, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
    uffd = Uffd.open(features=WORKLOAD_FEATURES)
    mover = threading.Thread(target=libc.mremap, daemon=True,
                             args=(addr + 2 * PAGE, PAGE, PAGE,
                                   libc.MREMAP_MAYMOVE | libc.MREMAP_FIXED, spare))
    try:
        uffd.register(addr, layout.size, REGION_REGISTER_MODE)
        proc = WorkloadProcess(uffd, os.getpid(), [Mapping(addr, layout.size, 0)])
        procs[uffd.fileno()] = proc
        mover.start()
        assert uffd.wait_readable(STEP_TIMEOUT_S), "the Remap event never came"
        KernelCalls(memory).writeprotect(proc, 2, 1, wp=True)
        mover.join(STEP_TIMEOUT_S)
        assert not mover.is_alive(), "mremap still waits for its event to be read"
        assert proc.addresses_of(2 * PAGE, PAGE) == [(spare, PAGE)]
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek(spare // PAGE * PAGEMAP_ENTRY.size)
            entry = PAGEMAP_ENTRY.unpack(pagemap.read(PAGEMAP_ENTRY.size))[0]
        assert entry & PM_UFFD_WP, f"pagemap entry {entry:#x}: page 2 is not protected where it went"
    finally:
        uffd.close()
        libc.munmap(addr, layout.size)
        libc.munmap(spare, PAGE)
        memory.close()


@pytest.mark.timeout(20)
def test_an_install_that_keeps_finding_events_pending_gives_up_with_an_error():
    layout = Layout(libc.PAGE_SIZE * 1024, 4 * PAGE)
    procs: dict[int, WorkloadProcess] = {}
    memory = NodeMemory("eagain", layout, procs, lambda proc: None)
    uffd = FakeUffd(copy_error=lambda: EventPending(errno.EAGAIN, "UFFDIO_COPY"))
    proc = WorkloadProcess(uffd, os.getpid(), [Mapping(layout.base, layout.size, 0)])
    procs[uffd.fileno()] = proc
    try:
        with pytest.raises(OSError) as info:
            KernelCalls(memory).install(0, 1, bytes(PAGE), True, (proc, layout.base))
        assert info.value.errno == errno.EAGAIN
        # not a DsmError (bad input): the node's state may be half-updated, it stops loudly
        assert not isinstance(info.value, DsmError)
        assert uffd.copies == MAX_KERNEL_RETRIES
    finally:
        uffd.close()
        memory.close()


def test_threads_of_one_process_fault_at_once_on_distinct_and_on_the_same_pages(make_node):
    a, b = make_node("a"), make_node("b")
    b.run(f"x = node.array('th', (16 * {WORDS},), np.int64); x[:] = np.arange(16 * {WORDS})")
    got = a.run(
        "import ctypes, threading\n"
        f"x = node.array('th', (16 * {WORDS},), np.int64)\n"
        "THREADS = 8\n"
        "go = threading.Barrier(THREADS)\n"
        f"mine = [(ctypes.c_int64 * {WORDS})() for _ in range(THREADS)]\n"
        f"shared = [(ctypes.c_int64 * {WORDS})() for _ in range(THREADS)]\n"
        "def read(i):\n"
        "    go.wait()\n"
        "    # one page of its own and page 15, which every thread faults on (GIL released)\n"
        f"    libc.memmove(ctypes.addressof(mine[i]), node.address_of(x) + 2 * i * 4096, 4096)\n"
        f"    libc.memmove(ctypes.addressof(shared[i]), node.address_of(x) + 15 * 4096, 4096)\n"
        "ts = [threading.Thread(target=read, args=(i,)) for i in range(THREADS)]\n"
        "[t.start() for t in ts]\n"
        "[t.join(20) for t in ts]\n"
        "assert not any(t.is_alive() for t in ts), 'a faulting thread hangs'\n",
        "[[m[0], m[-1], s[0], s[-1]] for m, s in zip(mine, shared)]",
    )
    assert got == [[2 * i * WORDS, (2 * i + 1) * WORDS - 1, 15 * WORDS, 16 * WORDS - 1]
                   for i in range(8)]
    # and writes from several threads at once, to distinct pages and to one shared page
    a.run(
        "lock = threading.Lock()\n"
        "def write(i):\n"
        "    go.wait()\n"
        f"    src = (ctypes.c_int64 * {WORDS})(*([1000 + i] * {WORDS}))\n"
        f"    libc.memmove(node.address_of(x) + (2 * i + 1) * 4096, ctypes.addressof(src), 4096)\n"
        f"    libc.memmove(node.address_of(x) + 14 * 4096 + 8 * i, ctypes.addressof(src), 8)\n"
        "ts = [threading.Thread(target=write, args=(i,)) for i in range(THREADS)]\n"
        "[t.start() for t in ts]\n"
        "[t.join(20) for t in ts]\n"
        "assert not any(t.is_alive() for t in ts), 'a faulting thread hangs'\n"
    )
    assert b.run("", f"[int(x[(2 * i + 1) * {WORDS}]) for i in range(8)]") == [1000 + i for i in range(8)]
    assert b.run("", f"x[14 * {WORDS}:14 * {WORDS} + 8].tolist()") == [1000 + i for i in range(8)]


# --- remap and unmap --------------------------------------------------------------------------------


def test_a_remap_of_pages_the_node_holds_keeps_them_coherent(make_node):
    """Pages 2-3 owned here and 4-5 held as read copies are moved (mremap) elsewhere in the
    process: they read right through the new address, and writes there reach the other node."""
    a, b = make_node("a"), make_node("b")
    a.run(f"x = node.array('rm', (8 * {WORDS},), np.int64); x[:4 * {WORDS}] = 3")
    b.run(f"x = node.array('rm', (8 * {WORDS},), np.int64); x[4 * {WORDS}:] = 4")
    assert a.run("", f"int(x[4 * {WORDS}:].sum())") == 4 * 4 * WORDS  # read copies of 4-7
    moved = a.run(
        "import ctypes\n"
        "src = node.address_of(x) + 2 * 4096\n"
        "spare = libc.mmap_at(0, 4 * 4096, 0, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)\n"
        "dst = libc.mremap(src, 4 * 4096, 4 * 4096, libc.MREMAP_MAYMOVE | libc.MREMAP_FIXED, spare)\n"
        f"moved = np.ndarray((4 * {WORDS},), np.int64,\n"
        "                   buffer=(ctypes.c_char * (4 * 4096)).from_address(dst))\n"
        f"before = moved[::{WORDS}].tolist()\n"
        "moved[:] = 10\n",
        "before",
    )
    assert moved == [3, 3, 4, 4]
    got = b.run("", f"x[::{WORDS}].tolist()")
    assert got == [3, 3, 10, 10, 10, 10, 4, 4]


def test_an_unmap_while_a_request_is_in_flight(make_node):
    """A thread waits for a page of another node (whose agent is stopped) while another thread
    unmaps a page this node owns: the unmapped page goes back with its contents, and the waiting
    thread gets its page once the owner answers."""
    a, b = make_node("a"), make_node("b")
    b.run(f"x = node.array('uf', (4 * {WORDS},), np.int64); x[:{WORDS}] = 1")
    a.run(f"x = node.array('uf', (4 * {WORDS},), np.int64); x[2 * {WORDS}:3 * {WORDS}] = 9")
    before = requests_sent(a)
    with stopped(agent_pid(b)):
        a.run(READ_IN_A_THREAD.format(index=0))
        a.run(WAIT_FOR_REQUESTS.format(n=before + 1, timeout=STEP_TIMEOUT_S))
        a.run("libc.munmap(node.address_of(x) + 2 * 4096, 4096)")
        assert a.run("", "t1.is_alive()") is True  # still waiting for b
        assert a.run("", "node.stats()['counters'].get('writebacks', 0)") == 1
    assert a.run("t1.join(10)", "out.value") == 1
    assert b.run("", f"int(x[2 * {WORDS}])") == 9


# --- item 2: no false discards -------------------------------------------------------------------


def test_the_node_holds_what_its_memfd_holds():
    layout = Layout(libc.PAGE_SIZE * 1024, 4 * PAGE)
    memory = NodeMemory("holds", layout, {}, lambda proc: None)
    try:
        os.pwrite(memory.memfd, bytes(PAGE), 1 * PAGE)  # zeros written are data too
        os.pwrite(memory.memfd, b"\x07" * PAGE, 2 * PAGE)
        libc.punch_hole(memory.memfd, 2 * PAGE, PAGE)
        os.pwrite(memory.memfd, b"\x07" * PAGE, 3 * PAGE)
        # 0: never written; 1: data; 2: punched; 3: data
        assert [memory.holds(pg) for pg in range(4)] == [False, True, False, True]
        libc.punch_hole(memory.memfd, 3 * PAGE, PAGE)
        assert memory.holds(3) is False  # past the last data (ENXIO)
    finally:
        memory.close()


def test_pages_read_out_of_the_node_memory_are_a_copy_of_them_as_they_were():
    """The agent reads the pages it sends through a mapping of its memfd: what it read stays
    what it was after the page changes or is punched (a transfer reads, then punches)."""
    layout = Layout(libc.PAGE_SIZE * 1024, 4 * PAGE)
    memory = NodeMemory("reads", layout, {}, lambda proc: None)
    try:
        os.pwrite(memory.memfd, b"\x05" * PAGE + b"\x06" * PAGE, 1 * PAGE)
        run = memory.read(1, 2)
        assert run == b"\x05" * PAGE + b"\x06" * PAGE
        libc.punch_hole(memory.memfd, 1 * PAGE, PAGE)
        os.pwrite(memory.memfd, b"\x09" * PAGE, 2 * PAGE)
        assert run == b"\x05" * PAGE + b"\x06" * PAGE  # a copy, not a view
        assert memory.read(1, 2) == bytes(PAGE) + b"\x09" * PAGE  # the punch and the write
    finally:
        memory.close()


def test_a_held_page_that_is_not_resident_is_not_discarded(here, monkeypatch):
    """A page the kernel swapped out is not resident (mincore says so) but the node holds it:
    a fault on it must find it, not discard it cluster-wide. This machine has no swap, so the
    residency answer is simulated."""
    monkeypatch.setattr(libc, "resident_pages", lambda addr, length: bytes(length // PAGE),
                        raising=False)
    page = 5
    proc = fake_process(here)
    os.pwrite(here.memory.memfd, b"\x05" * PAGE, page * PAGE)
    here.state[page] = PageState.EXCLUSIVE
    try:
        addr = here.layout.base + page * PAGE
        here.workloads._on_pagefault(proc, Pagefault(FaultKind.MISSING, Access.READ, addr, 0))
        assert here.state.get(page) is PageState.EXCLUSIVE, "a held page was discarded"
        assert ("wake", addr, PAGE) in proc.uffd.calls
        assert here.stats.snapshot()["counters"].get("discards", 0) == 0
    finally:
        here.state.clear()  # nothing of this to hand back to the directory


def test_a_remove_event_does_not_block_the_loop_and_its_pages_are_told_apart_later(here, monkeypatch):
    """The agent does not wait for MADV_REMOVE's punch inside the event's handler: it checks the
    pages at a deadline. Then a punched page is zeroed (owned here), a kept one (DONTNEED) stays,
    a read copy write-protected again in the removing process."""
    def no_sleep(seconds):
        raise AssertionError(f"the agent's loop slept {seconds} s handling a Remove event")

    proc = fake_process(here)
    base = here.layout.base
    for page, st in ((3, PageState.SHARED), (4, PageState.EXCLUSIVE)):
        os.pwrite(here.memory.memfd, b"\x03" * PAGE, page * PAGE)
        here.state[page] = st
    try:
        with monkeypatch.context() as m:
            m.setattr(time, "sleep", no_sleep)
            t0 = time.monotonic()
            proc.events.extend(follow(proc, [Remove(base + 3 * PAGE, base + 5 * PAGE)]))
            here.workloads.handle_events(proc)
            assert time.monotonic() - t0 < REMOVE_SETTLE_S
        assert set(here.state) == {3, 4}  # not told apart yet
        libc.punch_hole(here.memory.memfd, 4 * PAGE, PAGE)  # page 4 was MADV_REMOVEd
        here.workloads.run_timers(time.monotonic() + REMOVE_SETTLE_S)
        # an owned page is the only copy: it stays, zeros from now on (a read copy would be
        # discarded cluster-wide)
        assert here.state == {3: PageState.SHARED, 4: PageState.EXCLUSIVE}
        assert os.pread(here.memory.memfd, PAGE, 4 * PAGE) == bytes(PAGE)
        assert here.stats.snapshot()["counters"].get("discards", 0) == 1
        assert ("writeprotect", base + 3 * PAGE, PAGE, True) in proc.uffd.calls
    finally:
        here.state.clear()


# --- item 3: resources ------------------------------------------------------------------------------


def test_read_ahead_streams_of_a_process_are_forgotten_with_it(here):
    proc = fake_process(here)
    for page in (10, 11, 12):
        here.core.readahead.on_fault((proc, False), page)
    here.core.readahead.on_fault((proc, True), 40)
    here.workloads.forget(proc, give_back=False)
    assert not [key for key in here.core.readahead._streams if key[0] is proc]


def test_a_cut_off_node_kills_forked_children_that_never_faulted(directory, make_node):
    a = make_node("a")
    a.run(f"x = node.array('co', ({WORDS},), np.int64); x[0] = 1")
    child = a.run(
        "import signal\n"
        "# the watchdog would kill the forked children once the agent is gone: it is not what is\n"
        "# tested here\n"
        "node._watchdog.kill(); node._watchdog.wait()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    while True:\n"
        "        signal.pause()  # never touches the region\n",
        "pid",
    )
    pidfd = os.pidfd_open(child)
    try:
        directory.proc.send_signal(signal.SIGSTOP)  # the directory falls silent: a is cut off
        try:
            ready, _, _ = select.select([pidfd], [], [], 20)
            assert ready, f"the forked child {child} outlived its node's cut-off"
        finally:
            directory.proc.send_signal(signal.SIGCONT)
    finally:
        os.close(pidfd)
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
