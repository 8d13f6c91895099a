"""The node agent: one process per node that owns the node's memfd, the uffd of every workload
process of the node, and all of the node's networking.

One thread runs one poll loop over the directory's DEALER socket, the Unix socket workloads attach
through, every uffd and every pidfd. Faults become page requests; several may be outstanding at
once, and while the node waits for a page it keeps answering the directory for the pages it owns.

Local page states: absent (invalid), SHARED (a read copy: write-protected on every local uffd) and
EXCLUSIVE (owned, writable). The data lives in the memfd, so every local process sees one copy.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from dsm import libc, local
from dsm import protocol as p
from dsm.agent.forwarding import Forwarder
from dsm.agent.readahead import ReadAhead
from dsm.agent.processes import Mapping, WorkloadProcess, thread_group_of
from dsm.agent.stats import NodeStats
from dsm.errors import ConfigError, DsmError, ProtocolError
from dsm.layout import Layout
from dsm.trace import Tracer
from dsm.uffd import (
    Access,
    EventPending,
    FaultKind,
    Fork,
    PageExists,
    Pagefault,
    PartiallyCopied,
    ProcessGone,
    Remap,
    Remove,
    UffdError,
    Unmap,
)

log = logging.getLogger(__name__)

#: as a plain int: pyzmq's flag enums are slow on a hot path
_POLLIN = int(zmq.POLLIN)

#: how long the directory may take to answer Hello before the agent gives up
CONNECT_TIMEOUT_S = 5.0
#: how long a page request may stay unanswered before the waiting processes are failed
REQUEST_TIMEOUT_S = 10.0
HEARTBEAT_INTERVAL_S = 0.5
POLL_INTERVAL_MS = 100
#: how long to watch a Remove event's pages for MADV_REMOVE's hole punch (DONTNEED never punches)
REMOVE_SETTLE_S = 0.02
REMOVE_POLL_S = 0.0002
#: the largest read-ahead window, and how far ahead of its faults a sequential stream may ask
READAHEAD_MAX_PAGES = 256
READAHEAD_AHEAD_PAGES = 1024
#: sun_path holds 108 bytes including the terminating NUL
MAX_UNIX_PATH_BYTES = 107
#: an ioctl that keeps finding events pending is given up after this many rounds
MAX_EVENT_PENDING_RETRIES = 100


class DirectoryUnreachable(DsmError):
    """The directory did not answer within the deadline."""


class PageState(enum.Enum):
    SHARED = "shared"
    EXCLUSIVE = "exclusive"


@dataclass
class Waiter:
    proc: WorkloadProcess
    addr: int  #: page-aligned address in ``proc``
    page: int
    write: bool
    thread_id: int
    t0: float


@dataclass
class Pending:
    """One request to the directory, for ``count`` pages from ``first``."""

    first: int
    count: int
    write: bool
    sent_at: float
    stream: Any  #: the read-ahead stream it belongs to
    waiters: list[Waiter] = field(default_factory=list)


def runs(pages: list[int], max_len: int) -> list[tuple[int, int]]:
    """Sorted pages as (first, count) runs of consecutive pages, at most ``max_len`` long."""
    out: list[tuple[int, int]] = []
    for pg in sorted(pages):
        if out and out[-1][0] + out[-1][1] == pg and out[-1][1] < max_len:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((pg, 1))
    return out


@dataclass
class Client:
    sock: socket.socket
    proc: WorkloadProcess | None = None


class Agent:
    def __init__(self, directory: str, node: str, socket_path: str, trace_path: str | None = None):
        self.node = node
        self.directory_endpoint = directory
        self.socket_path = socket_path
        self.stats = NodeStats()
        self.tracer = Tracer(trace_path, node)
        self._ctx = zmq.Context.instance()
        self.dealer = self._ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 1000)
        self.dealer.setsockopt(zmq.IDENTITY, node.encode())
        self.dealer.connect(directory)
        self.layout = self._join()
        self.page_size = self.layout.page_size
        #: zeros for ZERO grants of up to a whole batch
        self._zeros = bytes(p.MAX_BATCH_PAGES * self.page_size)
        self.readahead = ReadAhead(READAHEAD_MAX_PAGES, READAHEAD_AHEAD_PAGES)
        self.memfd = os.memfd_create(f"dsm-{node}", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, self.layout.size)
        # a read-only view of the memfd used only for mincore (never touched: touching a hole
        # would allocate a page behind userfaultfd's back)
        self._probe_base = libc.mmap_at(0, self.layout.size, libc.PROT_READ, libc.MAP_SHARED, self.memfd)
        self.state: dict[int, PageState] = {}
        self.pending: dict[int, Pending] = {}
        self.procs: dict[int, WorkloadProcess] = {}  # uffd fd -> process
        self._pidfds: dict[int, WorkloadProcess] = {}
        self.clients: dict[int, Client] = {}
        self.forwarder = Forwarder(node, self._send, self._reply, self._watch_departures)
        #: pidfds of processes that used locks or barriers: their exit is told to the directory
        self._departure_pidfds: dict[int, int] = {}
        self._last_send = 0.0
        self._running = True
        self._leaving_pending_exit = False
        if len(os.fsencode(socket_path)) > MAX_UNIX_PATH_BYTES:
            raise ConfigError(
                f"agent socket path {socket_path!r} is {len(os.fsencode(socket_path))} bytes; "
                f"a Unix socket path holds at most {MAX_UNIX_PATH_BYTES}"
            )
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(socket_path)
        self.listener.listen(64)
        self.poller = zmq.Poller()
        self.poller.register(self.dealer, zmq.POLLIN)
        self.poller.register(self.listener.fileno(), zmq.POLLIN)
        self._dir_handlers: dict[type, Callable[[Any, Any], None]] = {
            p.Grant: self._on_grant,
            p.Fetch: self._on_fetch,
            p.Invalidate: self._on_invalidate,
            p.Allocated: self._on_answer,
            p.SyncReply: self._on_answer,
            p.Error: self._on_answer,
            p.Welcome: lambda m, d: None,
        }
        self._event_handlers: dict[type, Callable[[WorkloadProcess, Any], None]] = {
            Pagefault: self._on_pagefault,
            Fork: self._on_fork,
            Remap: self._on_remap,
            Remove: self._on_remove,
            Unmap: self._on_unmap,
        }

    # --- joining and leaving ---------------------------------------------------------------------
    def _join(self) -> Layout:
        self._send(p.Hello(self.node, os.getpid()))
        if not self.dealer.poll(int(CONNECT_TIMEOUT_S * 1000)):
            raise DirectoryUnreachable(
                f"directory {self.directory_endpoint} did not answer within {CONNECT_TIMEOUT_S} s"
            )
        msg, _ = p.decode(self.dealer.recv_multipart(), 0)
        if not isinstance(msg, p.Welcome):
            raise ProtocolError(f"expected Welcome from the directory, got {type(msg).__name__}")
        return Layout(msg.base, msg.size, msg.page_size)

    def stop(self, *_: Any) -> None:
        self._running = False

    def close(self) -> None:
        """Leave: hand every page back (owned ones with their contents), say Bye, release all."""
        self._give_back(list(self.state))
        self._send(p.Bye())
        for proc in list(self.procs.values()):
            self._forget_process(proc, give_back=False)
        for client in list(self.clients.values()):
            client.sock.close()
        self.listener.close()
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass
        libc.munmap(self._probe_base, self.layout.size)
        os.close(self.memfd)
        self.tracer.close()
        self.dealer.close()

    # --- the loop ----------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        log.info("agent %s serving on %s", self.node, self.socket_path)
        while self._running:
            for item, _ in self.poller.poll(POLL_INTERVAL_MS):
                self._dispatch(item)
            now = time.monotonic()
            if now - self._last_send > HEARTBEAT_INTERVAL_S:
                self._send(p.Heartbeat())
            self._fail_overdue_requests(now)

    def _dispatch(self, item: Any) -> None:
        if item is self.dealer:
            self._drain_directory()
        elif item in self.procs:
            proc = self.procs[item]
            try:
                proc.events.extend(proc.uffd.read_events())
            except UffdError as exc:
                log.warning("reading events of pid %s failed: %s", proc.pid, exc)
            self._handle_events(proc)
        elif item == self.listener.fileno():
            self._accept()
        elif item in self.clients:
            self._on_client(self.clients[item])
        elif item in self._departure_pidfds:
            pid = self._departure_pidfds.pop(item)
            self.poller.unregister(item)
            os.close(item)
            self._send(p.Departed(f"{self.node}:{pid}"))
        elif item in self._pidfds:
            proc = self._pidfds[item]
            log.info("workload process %s exited", proc.pid)
            self._forget_process(proc, give_back=True)

    def _send(self, msg: p.Message, page: Any = None) -> None:
        self.dealer.send_multipart(p.encode(msg, page), copy=False)
        self._last_send = time.monotonic()

    # --- the directory's messages ------------------------------------------------------------------
    def _drain_directory(self) -> None:
        # ZMQ_EVENTS says whether a message is queued: cheaper than a receive that raises Again
        while self.dealer.get(zmq.EVENTS) & _POLLIN:
            frames = self.dealer.recv_multipart(copy=False)
            try:
                msg, data = p.decode(frames, self.page_size)
                self._dir_handlers[type(msg)](msg, data)
            except ProtocolError as exc:
                log.warning("malformed message from the directory: %s", exc)

    def _on_grant(self, msg: p.Grant, data: Any) -> None:
        first, count = msg.page, msg.count
        self.layout.check_page(first + count - 1)
        pend = self.pending.get(first)
        if pend is None or pend.first != first:
            log.warning("grant of pages %d+%d that were not asked for: installed anyway", first, count)
            pend = Pending(first, count, msg.write, time.monotonic(), None)
        for q in range(pend.first, pend.first + pend.count):
            if self.pending.get(q) is pend:
                del self.pending[q]
        granted = range(first, first + count)
        new = PageState.EXCLUSIVE if msg.write else PageState.SHARED
        installed_by = None
        if msg.payload == p.Payload.NONE:
            if msg.write:
                self.stats.count("upgrades")
                self._protect_everywhere(first, count, wp=False)
        else:
            self.stats.count("pages_in", count)
            src = data if data is not None else self._zeros[: count * self.page_size]
            installed_by = self._install(first, count, src, msg.write, pend.waiters)
        old = self.state.get(first)
        for q in granted:
            self.state[q] = new
        self.tracer(first, "GRANT", self.node, _name(old), new.value, count=count)
        now = time.monotonic()
        refault: dict[int, list[Waiter]] = {}
        for w in pend.waiters:
            if w.page not in granted:
                refault.setdefault(w.page, []).append(w)  # read-ahead the directory did not add
                continue
            if installed_by is None or w.proc is not installed_by.proc or w.addr != installed_by.addr:
                self._wake(w.proc, w.addr)  # UFFDIO_COPY woke the installer's own waiters
            self.stats.record_fault_latency(now - w.t0)
        for page, waiters in refault.items():
            self._request(page, 1, pend.write and any(w.write for w in waiters), waiters, None)
        self._request_ahead(pend.stream)

    def _install(self, first: int, count: int, src: Any, writable: bool,
                 waiters: list[Waiter]) -> Waiter | None:
        """Put pages into the memfd, through the uffd of the process that faulted on the first
        one if it maps them contiguously (its UFFDIO_COPY also wakes it: returned), else through
        the memfd itself. A read copy is write-protected on every other local uffd *before* it
        appears, so that no local process can write it without a fault."""
        offset, length = first * self.page_size, count * self.page_size
        installer = next((w for w in waiters if w.page == first and not w.proc.uffd.closed), None)
        if installer is not None and installer.proc.addresses_of(offset, length) != [(installer.addr, length)]:
            installer = None
        if not writable:
            for proc in list(self.procs.values()):
                if installer is None or proc is not installer.proc:
                    self._writeprotect(proc, offset, length, wp=True)
        view = memoryview(src)
        done = 0
        if installer is not None:
            proc = installer.proc
            try:
                while done < length:
                    try:
                        done += proc.uffd.copy(installer.addr + done, view[done:], length - done,
                                               wp=not writable)
                    except PartiallyCopied as exc:
                        done += exc.done
                        proc.events.extend(proc.uffd.read_events())
                    except EventPending:
                        proc.events.extend(proc.uffd.read_events())
            except PageExists:
                pass  # a page of the run is there already (a stale fault): write the rest below
            except ProcessGone:
                self._forget_process(proc, give_back=False)
                installer = None
        if done < length:
            os.pwrite(self.memfd, view[done:], offset + done)
        return installer if installer is not None and done > 0 else None

    def _on_fetch(self, msg: p.Fetch, _: Any) -> None:
        first, count = msg.page, msg.count
        self.layout.check_page(first + count - 1)
        pages = range(first, first + count)
        held = [q for q in pages if self.state.get(q) is PageState.EXCLUSIVE]
        if not held:
            # every page was given back (a Writeback crossed this Fetch): say so
            self._send(p.Fetched(msg.txn, first, count, p.Payload.NONE, []))
            return
        not_held = [q for q in pages if self.state.get(q) is not PageState.EXCLUSIVE]
        offset, length = first * self.page_size, count * self.page_size
        # stop local writers first, so that what is sent is what stays; a page discarded locally
        # (MADV_REMOVE) is a hole, and a hole reads as zeros
        self._protect_everywhere(first, count, wp=True)
        data = os.pread(self.memfd, length, offset)
        self._send(p.Fetched(msg.txn, first, count, p.Payload.DATA, not_held), data)
        self.stats.count("pages_out", len(held))
        if msg.keep_copy:
            for q in held:
                self.state[q] = PageState.SHARED
            self.stats.count("downgrades", len(held))
        else:
            for q in held:
                del self.state[q]
            libc.punch_hole(self.memfd, offset, length)
            self.stats.count("invalidations", len(held))
        self.tracer(first, "FETCH", self.node, "exclusive", _name(self.state.get(first)), count=count)

    def _on_invalidate(self, msg: p.Invalidate, _: Any) -> None:
        first, count = msg.page, msg.count
        self.layout.check_page(first + count - 1)
        dropped = [q for q in range(first, first + count) if self.state.pop(q, None) is not None]
        if dropped:
            libc.punch_hole(self.memfd, first * self.page_size, count * self.page_size)
            self.stats.count("invalidations", len(dropped))
        self._send(p.Invalidated(msg.txn, first, count))
        self.tracer(first, "INVALIDATE", self.node, "shared" if dropped else "invalid", "invalid",
                    count=count)

    def _on_answer(self, msg: Any, _: Any) -> None:
        if not self.forwarder.answer(msg) and isinstance(msg, p.Error):
            log.error("directory reported: %s", msg.message)

    # --- uffd events -------------------------------------------------------------------------------
    def _handle_events(self, proc: WorkloadProcess) -> None:
        while proc.events and not proc.uffd.closed:
            event = proc.events.popleft()
            try:
                self._event_handlers[type(event)](proc, event)
            except ProcessGone:
                self._forget_process(proc, give_back=True)
                return

    def _on_pagefault(self, proc: WorkloadProcess, ev: Pagefault) -> None:
        now = time.monotonic()
        if proc.pid is None and ev.thread_id:
            pid = thread_group_of(ev.thread_id)
            if pid is not None:
                proc.watch_pid(pid)
                if proc.pidfd is not None:
                    self._pidfds[proc.pidfd] = proc
                    self.poller.register(proc.pidfd, zmq.POLLIN)
        page_addr = ev.addr - ev.addr % self.page_size
        offset = proc.offset_of(page_addr)
        if offset is None:
            log.error("fault at %#x in pid %s outside the region: waking it", ev.addr, proc.pid)
            self._wake(proc, page_addr)
            return
        page = offset // self.page_size
        write = ev.rw is Access.WRITE
        self.stats.count(f"faults_{ev.kind.value}_{ev.rw.value}")
        st = self.state.get(page)
        if ev.kind is FaultKind.WRITE_PROTECTED and st is PageState.EXCLUSIVE:
            self._writeprotect(proc, offset, self.page_size, wp=False)  # a stale marker
            self.stats.count("faults_local")
            self.stats.record_fault_latency(time.monotonic() - now)
            return
        if ev.kind is FaultKind.MISSING and st is not None and page not in self.pending:
            if self._resident(page):
                if not write or st is PageState.EXCLUSIVE:
                    self._wake(proc, page_addr)  # raised before the page arrived
                    self.stats.count("faults_local")
                    return
            else:
                # the page vanished under us: MADV_REMOVE punched it
                self._discard([page])
                st = None
        if ev.kind is FaultKind.WRITE_PROTECTED and st is PageState.SHARED and not write:
            self._wake(proc, page_addr)
            return
        waiter = Waiter(proc, page_addr, page, write, ev.thread_id, now)
        pend = self.pending.get(page)
        if pend is not None:
            # a request for this page is on its way: wait for it (a writer behind a read request
            # refaults on the read copy and asks for the upgrade then)
            pend.waiters.append(waiter)
            return
        if st is PageState.SHARED:  # an upgrade: only this page
            self._request(page, 1, True, [waiter], None)
            return
        stream = (proc, write)
        window = self.readahead.on_fault(stream, page)
        self._request(page, window, write, [waiter], stream)
        self._request_ahead(stream)

    def _request(self, page: int, window: int, write: bool, waiters: list[Waiter],
                 stream: Any) -> None:
        """Ask for ``page`` and up to ``window - 1`` following pages this node neither holds nor
        awaits."""
        count = 1
        limit = min(window, p.MAX_BATCH_PAGES, self.layout.num_pages - page)
        while count < limit and page + count not in self.state and page + count not in self.pending:
            count += 1
        pend = Pending(page, count, write, time.monotonic(), stream, waiters)
        for q in range(page, page + count):
            self.pending[q] = pend
        have_copy = self.state.get(page) is PageState.SHARED
        self.stats.count("requests")
        self._send(p.Acquire(page, count, write, have_copy))
        self.tracer(page, "ACQUIRE", self.node, _name(self.state.get(page)),
                    "write" if write else "read", count=count)

    def _request_ahead(self, stream: Any) -> None:
        """Keep a sequential stream's requests ahead of its faults."""
        if stream is None:
            return
        while (ahead := self.readahead.next_ahead(stream)) is not None:
            page, window = ahead
            if page >= self.layout.num_pages or page in self.state or page in self.pending:
                return
            self.stats.count("readahead_requests")
            self._request(page, window, stream[1], [], stream)

    def _on_fork(self, proc: WorkloadProcess, ev: Fork) -> None:
        child = proc.forked(ev.uffd)
        self._add_process(child)
        log.info("pid %s forked: adopted the child's uffd %d", proc.pid, ev.uffd.fileno())

    def _on_remap(self, proc: WorkloadProcess, ev: Remap) -> None:
        proc.remap(ev.from_, ev.to, ev.len)
        self.stats.count("remaps")

    def _on_unmap(self, proc: WorkloadProcess, ev: Unmap) -> None:
        removed = proc.unmap(ev.start, ev.end)
        self.stats.count("unmaps")
        self._give_back_unmapped(removed)

    def _on_remove(self, proc: WorkloadProcess, ev: Remove) -> None:
        """madvise(MADV_REMOVE) punches the memfd right after this event is read, DONTNEED
        does not (on shared memory it keeps the data); the event does not say which. Watch the
        pages the node holds for a short while: those that vanish were removed."""
        self.stats.count("removes")
        pages = set()
        for offset, length in proc.region_ranges(ev.start, ev.end):
            first = offset // self.page_size
            last = (offset + length - 1) // self.page_size
            pages.update(pg for pg in range(first, last + 1) if pg in self.state)
        deadline = time.monotonic() + REMOVE_SETTLE_S
        while pages and time.monotonic() < deadline:
            gone = [pg for pg in pages if not self._resident(pg)]
            if gone:
                self._discard(gone)
                pages.difference_update(gone)
                if not pages:
                    break
            time.sleep(REMOVE_POLL_S)
        for pg in pages:  # DONTNEED: the pages stay; keep read copies protected
            if self.state.get(pg) is PageState.SHARED:
                self._writeprotect(proc, pg * self.page_size, self.page_size, wp=True)

    # --- giving pages back -------------------------------------------------------------------------
    def _discard(self, pages: list[int]) -> None:
        for pg in pages:
            old = self.state.pop(pg, None)
            self.tracer(pg, "DISCARD", self.node, _name(old), "invalid")
        self.stats.count("discards", len(pages))
        self._send(p.Discard(sorted(pages)))

    def _give_back_unmapped(self, ranges: list[tuple[int, int]]) -> None:
        candidates = set()
        for offset, length in ranges:
            first = offset // self.page_size
            last = (offset + length - 1) // self.page_size
            candidates.update(pg for pg in range(first, last + 1) if pg in self.state)
        unmapped = [
            pg for pg in candidates
            if not any(pr.covers(pg * self.page_size) for pr in self.procs.values())
        ]
        self._give_back(unmapped)

    def _give_back(self, pages: list[int]) -> None:
        """Hand pages back: owned ones with their contents, read copies as a drop."""
        by_state: dict[PageState, list[int]] = {PageState.EXCLUSIVE: [], PageState.SHARED: []}
        for page in pages:
            st = self.state.get(page)
            if st is not None and page not in self.pending:
                by_state[st].append(page)
        for st, group in by_state.items():
            for first, count in runs(group, p.MAX_BATCH_PAGES):
                offset, length = first * self.page_size, count * self.page_size
                if st is PageState.EXCLUSIVE:
                    # a hole (discarded locally) reads as zeros
                    data = os.pread(self.memfd, length, offset)
                    self._send(p.Writeback(first, count, p.Payload.DATA), data)
                    self.stats.count("writebacks", count)
                else:
                    self._send(p.Drop(first, count))
                for q in range(first, first + count):
                    del self.state[q]
                libc.punch_hole(self.memfd, offset, length)
                self.tracer(first, "GIVEBACK", self.node, st.value, "invalid", count=count)

    # --- uffd operations ---------------------------------------------------------------------------
    def _retry(self, proc: WorkloadProcess, op: Callable[[], Any]) -> Any:
        """Run a uffd ioctl; EAGAIN means events are pending on that uffd: read them (they are
        handled after the current one, in order) and try again."""
        for _ in range(MAX_EVENT_PENDING_RETRIES):
            try:
                return op()
            except EventPending:
                proc.events.extend(proc.uffd.read_events(timeout_s=0.001))
        raise UffdError(errno.EAGAIN, f"events kept arriving on the uffd of pid {proc.pid}")

    def _writeprotect(self, proc: WorkloadProcess, offset: int, length: int, wp: bool) -> None:
        for addr, n in proc.addresses_of(offset, length):
            try:
                self._retry(proc, lambda: proc.uffd.writeprotect(addr, n, wp=wp))
            except ProcessGone:
                self._forget_process(proc, give_back=False)
                return

    def _protect_read_copies(self, proc: WorkloadProcess) -> None:
        """A process that attaches late must not write the node's read copies without a fault:
        write-protect them on its uffd (unpopulated entries get markers), one ioctl per run."""
        shared = [pg for pg, st in self.state.items() if st is PageState.SHARED]
        for first, count in runs(shared, self.layout.num_pages):
            self._writeprotect(proc, first * self.page_size, count * self.page_size, wp=True)

    def _protect_everywhere(self, first: int, count: int, wp: bool) -> None:
        for proc in list(self.procs.values()):
            self._writeprotect(proc, first * self.page_size, count * self.page_size, wp)

    def _wake(self, proc: WorkloadProcess, addr: int) -> None:
        if proc.uffd.closed:
            return
        try:
            proc.uffd.wake(addr, self.page_size)
        except ProcessGone:
            self._forget_process(proc, give_back=False)

    def _resident(self, page: int) -> bool:
        vec = libc.resident_pages(self._probe_base + page * self.page_size, self.page_size)
        return bool(vec[0] & 1)

    # --- workload processes ------------------------------------------------------------------------
    def _add_process(self, proc: WorkloadProcess) -> None:
        self.procs[proc.uffd.fileno()] = proc
        self.poller.register(proc.uffd.fileno(), zmq.POLLIN)
        if proc.pidfd is not None:
            self._pidfds[proc.pidfd] = proc
            self.poller.register(proc.pidfd, zmq.POLLIN)

    def _forget_process(self, proc: WorkloadProcess, give_back: bool) -> None:
        fd = proc.uffd.fileno() if not proc.uffd.closed else None
        if fd is not None and fd in self.procs:
            self.poller.unregister(fd)
            del self.procs[fd]
        if proc.pidfd is not None and proc.pidfd in self._pidfds:
            self.poller.unregister(proc.pidfd)
            del self._pidfds[proc.pidfd]
        ranges = [(m.offset, m.length) for m in proc.mappings]
        proc.mappings = []
        proc.close()
        for pend in self.pending.values():
            pend.waiters = [w for w in pend.waiters if w.proc is not proc]
        if give_back:
            self._give_back_unmapped(ranges)

    def _accept(self) -> None:
        sock, _ = self.listener.accept()
        sock.settimeout(CONNECT_TIMEOUT_S)
        client = Client(sock)
        self.clients[sock.fileno()] = client
        self.poller.register(sock.fileno(), zmq.POLLIN)
        lay = self.layout
        local.send(sock, {"type": "layout", "base": lay.base, "size": lay.size,
                          "page_size": lay.page_size, "node": self.node}, [self.memfd])

    def _watch_departures(self, pid: int) -> None:
        if pid in self._departure_pidfds.values():
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._send(p.Departed(f"{self.node}:{pid}"))
            return
        self._departure_pidfds[pidfd] = pid
        self.poller.register(pidfd, zmq.POLLIN)

    def _drop_client(self, client: Client) -> None:
        self.forwarder.forget_client(client)
        fd = client.sock.fileno()
        if fd in self.clients:
            self.poller.unregister(fd)
            del self.clients[fd]
        client.sock.close()

    def _reply(self, client: Client, message: dict) -> None:
        try:
            local.send(client.sock, message)
        except OSError as exc:
            log.warning("could not answer a workload: %s", exc)
            self._drop_client(client)

    def _on_client(self, client: Client) -> None:
        try:
            message, fds = local.recv(client.sock)
        except (local.AgentGone, OSError):
            self._drop_client(client)
            return
        except ProtocolError as exc:
            log.warning("malformed message from a workload: %s", exc)
            self._reply(client, {"type": "error", "req": 0, "message": str(exc)})
            return
        kind = message["type"]
        try:
            if kind == "register":
                (pid,) = local.expect(message, "pid")
                if len(fds) != 1:
                    raise ProtocolError(f"register needs exactly one uffd, got {len(fds)} fds")
                from dsm.uffd import Uffd

                proc = WorkloadProcess(Uffd(fds[0]), int(pid), [Mapping(self.layout.base, self.layout.size, 0)])
                client.proc = proc
                self._add_process(proc)
                self._protect_read_copies(proc)
                self._reply(client, {"type": "ready"})
            elif self.forwarder.handles(kind):
                self.forwarder.forward(client, message)
            elif kind == "stats":
                (req,) = local.expect(message, "req")
                self._reply(client, {"type": "stats", "req": req, "node": self.node,
                                     **self.stats.snapshot()})
            elif kind == "detach":
                self._drop_client(client)
            else:
                raise ProtocolError(f"unknown local message type {kind!r}")
        except (ProtocolError, ValueError, TypeError) as exc:
            for fd in fds:
                os.close(fd)
            self._reply(client, {"type": "error", "req": message.get("req", 0), "message": str(exc)})

    # --- failure -----------------------------------------------------------------------------------
    def _fail_overdue_requests(self, now: float) -> None:
        overdue = {id(pend): pend for pend in self.pending.values()
                   if now - pend.sent_at >= REQUEST_TIMEOUT_S}
        for pend in overdue.values():
            for q in range(pend.first, pend.first + pend.count):
                if self.pending.get(q) is pend:
                    del self.pending[q]
            for w in pend.waiters:
                pid = w.proc.pid or thread_group_of(w.thread_id)
                log.error(
                    "directory %s did not answer the request for page %d within %.0f s: "
                    "killing pid %s, which waits for it (SIGBUS)",
                    self.directory_endpoint, w.page, REQUEST_TIMEOUT_S, pid,
                )
                if pid:
                    try:
                        os.kill(pid, signal.SIGBUS)
                    except ProcessLookupError:
                        pass


def _name(state: PageState | None) -> str:
    return state.value if state is not None else "invalid"


def run_agent(directory: str, node: str, socket_path: str, trace_path: str | None = None,
              ready_fd: int | None = None) -> int:
    try:
        agent = Agent(directory, node, socket_path, trace_path)
    except DsmError as exc:
        log.error("%s", exc)
        print(f"dsm agent: {exc}", flush=True)
        return 2
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    try:
        agent.serve_forever()
    finally:
        agent.close()
    return 0
