"""The node's copy of the region: the memfd every local workload process maps, and the kernel
operations that change it in every local process at once. Which pages the node holds, and when
to change them, is the node core's business (``dsm/core/node.py``); this module only does it.

Putting a page in goes through a waiting process's uffd (``UFFDIO_COPY``, which also wakes it) or,
failing that, through the memfd; taking a page away punches the memfd hole, which removes it from
every process at once; write protection is per process, so it is applied on every local uffd.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any, Callable

from dsm.agent.processes import WorkloadProcess, thread_group_of
from dsm.layout import Layout
from dsm.core.states import runs
from dsm.protocol import MAX_BATCH_PAGES
from dsm.uffd import EventPending, PageExists, PartiallyCopied, ProcessGone, UffdError

#: an ioctl that keeps finding events pending is given up after this many rounds
MAX_EVENT_PENDING_RETRIES = 100
#: how long an ioctl that found events pending waits for one to be readable: EAGAIN is raised
#: from the moment an event is queued (mmap_changing), a moment before the read can return it
EVENT_PENDING_WAIT_S = 0.001


class NodeMemory:
    def __init__(self, name: str, layout: Layout, procs: dict[int, WorkloadProcess],
                 on_process_gone: Callable[[WorkloadProcess], None]):
        self.layout = layout
        self.page_size = layout.page_size
        self.procs = procs  #: the agent's live workload processes (uffd fd -> process)
        self._on_process_gone = on_process_gone
        self.memfd = os.memfd_create(f"dsm-{name}", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, layout.size)
        #: zeros for ZERO grants of up to a whole batch
        self.zeros = bytes(MAX_BATCH_PAGES * self.page_size)
        #: processes with events read while an ioctl was retried, in the order they were read
        #: (a dict as an ordered set): the agent handles them once the current operation is over,
        #: never inside it, where a handler's own ioctls would nest in this one's retry
        self.shelved: dict[WorkloadProcess, None] = {}

    def close(self) -> None:
        os.close(self.memfd)

    def holds(self, page: int) -> bool:
        """Whether the memfd holds the page: data, not a hole (never written, or punched here or
        by MADV_REMOVE). The file answers this exactly, page by page; residency (mincore) does
        not: a page the kernel has swapped out is held but not resident."""
        offset = page * self.page_size
        try:
            return os.lseek(self.memfd, offset, os.SEEK_DATA) == offset
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data at or after the offset
                return False
            raise

    # --- uffd operations ---------------------------------------------------------------------------
    def _shelve_pending_events(self, proc: WorkloadProcess) -> None:
        """An ioctl on ``proc``'s uffd returned EAGAIN: read the events that caused it (the
        kernel lets the ioctl through only once they are read) and shelve them for the agent."""
        events = proc.uffd.read_events(timeout_s=EVENT_PENDING_WAIT_S)
        if events:
            proc.events.extend(events)
            self.shelved[proc] = None

    def retry(self, proc: WorkloadProcess, op: Callable[[], Any]) -> Any:
        """Run a uffd ioctl; EAGAIN means events are pending on that uffd: read them (they are
        shelved, and handled after the current operation, in order) and try again."""
        for _ in range(MAX_EVENT_PENDING_RETRIES):
            try:
                return op()
            except EventPending:
                self._shelve_pending_events(proc)
        raise UffdError(errno.EAGAIN, f"events kept arriving on the uffd of pid {proc.pid}: "
                                      f"the ioctl still found events pending after "
                                      f"{MAX_EVENT_PENDING_RETRIES} reads of them")

    def writeprotect(self, proc: WorkloadProcess, offset: int, length: int, wp: bool) -> None:
        for addr, n in proc.addresses_of(offset, length):
            try:
                self.retry(proc, lambda: proc.uffd.writeprotect(addr, n, wp=wp))
            except ProcessGone:
                self._on_process_gone(proc)
                return
            except UffdError as exc:
                # ENOENT: the process unmapped the range meanwhile (its Unmap or Remap event, read
                # while retrying, is queued behind this operation): nothing is left to protect
                if exc.errno != errno.ENOENT:
                    raise

    def protect_everywhere(self, first: int, count: int, wp: bool) -> None:
        for proc in list(self.procs.values()):
            self.writeprotect(proc, first * self.page_size, count * self.page_size, wp)

    def protect_read_copies(self, proc: WorkloadProcess, shared: list[int]) -> None:
        """A process that attaches late (or was forked) must not write the node's read copies
        (``shared``) without a fault: write-protect them on its uffd (unpopulated entries get
        markers), one ioctl per run."""
        for first, count in runs(shared, self.layout.num_pages):
            self.writeprotect(proc, first * self.page_size, count * self.page_size, wp=True)

    def wake(self, proc: WorkloadProcess, addr: int) -> None:
        if proc.uffd.closed:
            return
        try:
            proc.uffd.wake(addr, self.page_size)
        except ProcessGone:
            self._on_process_gone(proc)
        except UffdError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: the range was unmapped meanwhile
                raise

    def poison(self, proc: WorkloadProcess, addr: int, thread_id: int) -> None:
        """Make the page at ``addr`` fail in ``proc``: UFFDIO_POISON installs a marker that
        raises SIGBUS at the access (and wakes the faulting thread to take it). Where the
        kernel or the uffd lacks it (EINVAL: Linux < 6.6, or the feature was not enabled), the
        process is killed with SIGBUS instead: either way it never reads what is not there."""
        if proc.uffd.closed:
            return
        try:
            self.retry(proc, lambda: proc.uffd.poison(addr, self.page_size))
            return
        except ProcessGone:
            self._on_process_gone(proc)
            return
        except UffdError as exc:
            if exc.errno == errno.ENOENT:  # the range was unmapped meanwhile: nothing to fail
                return
            # EINVAL (no POISON here), EEXIST (a page is there after all): kill it instead
        pid = proc.pid or thread_group_of(thread_id)
        if pid:
            try:
                os.kill(pid, signal.SIGBUS)
            except ProcessLookupError:
                pass

    # --- pages in ----------------------------------------------------------------------------------
    def install(self, first: int, count: int, src: Any, writable: bool,
                installer: tuple[WorkloadProcess, int] | None) -> bool:
        """Put ``count`` pages into the memfd. ``installer`` is a process
        waiting on the first page and its address there: if it maps the run contiguously, one
        UFFDIO_COPY through its uffd installs them and wakes it (True is returned); otherwise the
        memfd is written directly. A read copy is write-protected on every other local uffd
        *before* it appears, so that no local process can write it without a fault."""
        offset, length = first * self.page_size, count * self.page_size
        if installer is not None:
            proc, addr = installer
            if proc.uffd.closed or proc.addresses_of(offset, length) != [(addr, length)]:
                installer = None
        if not writable:
            for proc in list(self.procs.values()):
                if installer is None or proc is not installer[0]:
                    self.writeprotect(proc, offset, length, wp=True)
        view = memoryview(src)
        done = 0
        copier = installer[0] if installer is not None else None
        if installer is not None:
            proc, addr = installer
            try:
                done = self._copy(proc, addr, view, length, wp=not writable)
            except ProcessGone:
                self._on_process_gone(proc)
                installer = None
            except UffdError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                installer = None  # the process unmapped the range meanwhile: write it below
        if done < length:
            if copier is not None and not writable and not copier.uffd.closed:
                # the copy stopped early: the rest appears through the memfd, which the copying
                # process must not be able to write without a fault either (the other processes
                # were protected above)
                self.writeprotect(copier, offset + done, length - done, wp=True)
            os.pwrite(self.memfd, view[done:], offset + done)
        return installer is not None and done > 0

    def _copy(self, proc: WorkloadProcess, addr: int, view: memoryview, length: int,
              wp: bool) -> int:
        """UFFDIO_COPY ``length`` bytes of ``view`` to ``addr`` in ``proc``, reading (shelving)
        the events that hold it up; returns the bytes copied, fewer than ``length`` if a page of
        the run is there already (EEXIST: a stale fault), where the copy stops."""
        done = 0
        stalled = 0  # rounds in a row that copied nothing
        while done < length:
            try:
                done += proc.uffd.copy(addr + done, view[done:], length - done, wp=wp)
            except PageExists:
                return done
            except EventPending as exc:
                progress = exc.done if isinstance(exc, PartiallyCopied) else 0
                done += progress
                stalled = 0 if progress else stalled + 1
                if stalled >= MAX_EVENT_PENDING_RETRIES:
                    raise UffdError(
                        errno.EAGAIN,
                        f"UFFDIO_COPY of {length} bytes to {addr:#x} in pid {proc.pid}: events "
                        f"kept arriving on its uffd ({stalled} rounds copied nothing; "
                        f"{done} bytes were copied)",
                    ) from None
                self._shelve_pending_events(proc)
        return done
