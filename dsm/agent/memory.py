"""The node's copy of the region: the memfd every local workload process maps, and the kernel
calls that change it: the real ``Kernel`` (``dsm/core/kernel.py``) of the agent. Which pages the
node holds, and when to change them, is the node core's business (``dsm/core/node.py``); what to
do about each answer of the kernel is ``KernelCalls``' (the same in the simulator): each method
here makes one call and answers its errno.

Putting a page in goes through a waiting process's uffd (``UFFDIO_COPY``, which also wakes it) or
through the memfd; taking a page away punches the memfd hole, which removes it from every process
at once; write protection is per process, so it is applied on every local uffd.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import signal
from typing import Any, Callable

from dsm import libc
from dsm.agent.processes import WorkloadProcess, thread_group_of
from dsm.core.events import follow
from dsm.core.kernel import are_zeros
from dsm.layout import Layout
from dsm.uffd import PartiallyCopied, UffdError

log = logging.getLogger(__name__)

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
        #: the memfd mapped read-only, to read pages out of: a copy out of a mapping takes a
        #: third of ``pread``'s time, which looks every page up in the page cache (a 4 MiB run
        #: in 0.4 ms, not 1 ms, on this VM). A hole read through it gets a page of zeros (the
        #: bytes ``pread`` answers) and costs that page of memory; the core reads the pages
        #: the node holds, which are there
        self._pages = mmap.mmap(self.memfd, layout.size, prot=mmap.PROT_READ)
        #: processes with events read while an ioctl was retried, in the order they were read
        #: (a dict as an ordered set): the agent handles them once the current operation is over,
        #: never inside it, where a handler's own ioctls would nest in this one's retry
        self.shelved: dict[WorkloadProcess, None] = {}

    def close(self) -> None:
        self._pages.close()
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

    # --- the Kernel (dsm/core/kernel.py): one call each, its errno back ----------------------------
    def processes(self) -> list[WorkloadProcess]:
        return list(self.procs.values())

    def addresses(self, proc: WorkloadProcess, first: int, count: int) -> list[tuple[int, int]]:
        return proc.addresses_of(first * self.page_size, count * self.page_size)

    def writeprotect(self, proc: WorkloadProcess, addr: int, length: int, wp: bool) -> int:
        return _errno_of(proc, lambda: proc.uffd.writeprotect(addr, length, wp=wp))

    def copy(self, proc: WorkloadProcess, addr: int, data: memoryview,
             wp: bool) -> tuple[int, int]:
        if proc.uffd.closed:
            return 0, errno.EBADF
        try:
            if not wp and are_zeros(data):
                # the kernel clears fresh pages and maps them writable (on shmem, for a shared
                # mapping: no zero page, no copy): a fresh array's first touch, run by run
                return proc.uffd.zeropage(addr, len(data)), 0
            return proc.uffd.copy(addr, data, len(data), wp=wp), 0
        except PartiallyCopied as exc:
            return exc.done, errno.EAGAIN
        except UffdError as exc:
            return 0, exc.errno

    def wake(self, proc: WorkloadProcess, addr: int) -> int:
        return _errno_of(proc, lambda: proc.uffd.wake(addr, self.page_size))

    def poison(self, proc: WorkloadProcess, addr: int) -> int:
        return _errno_of(proc, lambda: proc.uffd.poison(addr, self.page_size))

    def read_events(self, proc: WorkloadProcess) -> None:
        """An ioctl on ``proc``'s uffd answered EAGAIN: read the events that caused it (the
        kernel lets the ioctl through only once they are read) and shelve them for the agent,
        which handles them once the current operation is over, never inside it (a handler's
        own ioctls would nest in this one's retry)."""
        events = proc.uffd.read_events(timeout_s=EVENT_PENDING_WAIT_S)
        if events:  # their mapping changes apply now: the retried ioctl goes where they say
            proc.events.extend(follow(proc, events))
            self.shelved[proc] = None

    def forget(self, proc: WorkloadProcess) -> None:
        self._on_process_gone(proc)

    def kill(self, proc: WorkloadProcess, thread_id: int, why: str) -> None:
        pid = proc.pid or thread_group_of(thread_id)
        log.error("%s: killing pid %s, which waits for it (SIGBUS)", why, pid)
        if pid:
            try:
                os.kill(pid, signal.SIGBUS)
            except ProcessLookupError:
                pass

    def read(self, first: int, count: int) -> bytes:
        start = first * self.page_size
        return self._pages[start:start + count * self.page_size]

    def write(self, offset: int, data: memoryview) -> None:
        os.pwrite(self.memfd, data, offset)

    def punch(self, first: int, count: int) -> None:
        libc.punch_hole(self.memfd, first * self.page_size, count * self.page_size)


def _errno_of(proc: WorkloadProcess, ioctl: Callable[[], Any]) -> int:
    """The errno ``ioctl`` on ``proc``'s uffd answers: 0 when done, EBADF once the uffd is closed
    (the process forgotten: its fd number may be another file's by now)."""
    if proc.uffd.closed:
        return errno.EBADF
    try:
        ioctl()
    except UffdError as exc:
        return exc.errno
    return 0
