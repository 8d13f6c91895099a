"""The kernel as the node's actions need it (``Kernel``), and what the node does about each of
its answers (``KernelCalls``): the same decisions in the agent and in the simulator.

A ``Kernel`` makes one call per method (an ioctl on a workload process's uffd, or a read, write
or punch of the node's memory) and answers with the errno (0: done); it decides nothing. The
agent's is ``dsm/agent/memory.py`` (the memfd and the uffds), the simulator's
``dsm/sim/agent.py`` (its model of them, which fails calls now and then as the kernel does).

``KernelCalls`` decides, for every errno the kernel may answer:

- EAGAIN: events are pending on that uffd (the kernel lets the ioctl through only once they are
  read): read them (``Kernel.read_events``), then try again; ENOMEM: the kernel could not
  allocate now: try again. Either one that keeps coming is given up after
  ``MAX_KERNEL_RETRIES`` tries with an ``OSError``, not a ``DsmError``: the node's state may be
  half-updated, so it stops loudly (``dsm.errors``).
- ESRCH: the process exited: the loop forgets it (``Kernel.forget``); nothing is left to do in it.
- ENOENT: the process unmapped or moved (mremap) the range meanwhile. The event that says so
  may not be read yet (UFFDIO_COPY and UFFDIO_POISON look the range up before they check for
  pending events): read the pending events (``Kernel.read_events``, which applies their mapping
  changes at once) and, if the process now maps the pages elsewhere, make the call there. A
  write protection must follow the move: set at the old place only, a read copy would be
  writable without a fault at the new one. A thread blocked at the old place (a writer waiting
  for a lift, a waiter for a poison) is woken: its access faults again where the process maps
  the page now, or fails there. EBADF: the process was forgotten already (its uffd closed):
  nothing to do.
- a range that moved while an ioctl was retried: UFFDIO_WRITEPROTECT on a range that is only
  partly mapped succeeds on the mapped part and says nothing of the rest, so once events read at
  an EAGAIN have changed the process's mappings, the protection is made again at their new
  addresses (it is idempotent).
- EEXIST from a copy: a page of the run is there already: the copy stops there and the rest is
  written through the node's memory (a stale fault).
- a poison refused (EINVAL: Linux < 6.6 or the feature off; EEXIST: a page is there after all):
  the process is killed with SIGBUS instead; either way it never reads what is not there.
- anything else is a bug or a broken kernel: an ``OSError``, and the node stops loudly.
"""

from __future__ import annotations

import errno
from typing import Any, Callable, Protocol

from dsm.core.states import runs

#: a call the kernel keeps answering EAGAIN (events keep arriving) or ENOMEM is given up after
#: this many tries (a copy: this many rounds in a row that copied nothing)
MAX_KERNEL_RETRIES = 100
#: the answers that mean "try again" (EAGAIN after the pending events are read)
TRANSIENT = (errno.EAGAIN, errno.ENOMEM)
#: the answers that leave nothing to do in that process: unmapped meanwhile, forgotten already
NOTHING_LEFT = (errno.ENOENT, errno.EBADF)

#: the one buffer of zeros that ZERO grants are installed from (grown to the longest run asked,
#: never written): a model of the kernel copies it, the agent's sees it (``are_zeros``) and has
#: the kernel clear the pages instead of copying them (UFFDIO_ZEROPAGE: 5x faster for 4 MiB)
_zeros = [b""]


def zeros(length: int) -> memoryview:
    """``length`` zero bytes, from the one buffer of zeros."""
    if len(_zeros[0]) < length:
        _zeros[0] = bytes(length)
    return memoryview(_zeros[0])[:length]


def are_zeros(data: memoryview) -> bool:
    """Whether ``data`` is (a part of) the buffer of zeros (``zeros``)."""
    return data.obj is _zeros[0]


class Kernel(Protocol):
    """One call of the kernel per method; an ioctl answers its errno (0: done). ``proc`` is the
    loop's handle of a workload process; addresses are in that process, offsets in the node's
    memory (the region), in bytes."""

    page_size: int

    def processes(self) -> list[Any]:
        """The node's workload processes (each maps the region and has its own uffd)."""

    def addresses(self, proc: Any, first: int, count: int) -> list[tuple[int, int]]:
        """Every (address, bytes) at which ``proc`` maps ``count`` pages from ``first``."""

    def writeprotect(self, proc: Any, addr: int, length: int, wp: bool) -> int:
        """UFFDIO_WRITEPROTECT: set or lift (which wakes the writers) the protection."""

    def copy(self, proc: Any, addr: int, data: memoryview, wp: bool) -> tuple[int, int]:
        """UFFDIO_COPY ``data`` to ``addr`` (write-protected with ``wp``), which wakes the threads
        faulting there: (bytes copied, errno)."""

    def wake(self, proc: Any, addr: int) -> int:
        """UFFDIO_WAKE the page at ``addr``."""

    def poison(self, proc: Any, addr: int) -> int:
        """UFFDIO_POISON the page at ``addr``: an access raises SIGBUS."""

    def read_events(self, proc: Any) -> None:
        """Read the events pending on ``proc``'s uffd (an ioctl answered EAGAIN or ENOENT), for
        the loop to handle once the current operation is over; their mapping changes (Unmap,
        Remap) apply at once (``dsm.core.events.follow``): ``addresses`` answers where the
        process maps the region now."""

    def forget(self, proc: Any) -> None:
        """``proc`` exited (an ioctl answered ESRCH): the loop stops serving it."""

    def kill(self, proc: Any, thread_id: int, why: str) -> None:
        """Kill ``proc`` (the process of ``thread_id``) with SIGBUS, loudly, saying ``why``."""

    def read(self, first: int, count: int) -> bytes:
        """The bytes of ``count`` pages from ``first`` of the node's memory."""

    def write(self, offset: int, data: memoryview) -> None:
        """Write ``data`` into the node's memory at ``offset`` (no fault, no wake)."""

    def punch(self, first: int, count: int) -> None:
        """Take ``count`` pages from ``first`` out of the node's memory, in every process."""


class KernelCalls:
    """The node's operations on its memory and its processes, made of ``Kernel`` calls, with
    every answer handled (the module's docstring says how)."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.page_size = kernel.page_size

    def _retried(self, proc: Any, call: Callable[[], int], what: str) -> int:
        """``call``'s errno once it is not a transient one (read the pending events first at an
        EAGAIN); an OSError if it stays transient."""
        for _ in range(MAX_KERNEL_RETRIES):
            err = call()
            if err not in TRANSIENT:
                return err
            if err == errno.EAGAIN:
                self.kernel.read_events(proc)
        raise OSError(err, f"{what}: the kernel still answered {errno.errorcode[err]} after "
                           f"{MAX_KERNEL_RETRIES} tries")

    def _settled(self, proc: Any, err: int, what: str) -> bool:
        """Whether ``proc`` may take more calls after one answered ``err`` (0): ESRCH forgets
        it, ENOENT or EBADF leave nothing to do there, anything else is raised."""
        if err == 0:
            return True
        if err == errno.ESRCH:
            self.kernel.forget(proc)
            return False
        if err in NOTHING_LEFT:
            return False
        raise OSError(err, f"{what}: {errno.errorcode.get(err, err)}")

    # --- write protection -------------------------------------------------------------------------
    def writeprotect(self, proc: Any, first: int, count: int, wp: bool) -> None:
        """Set or lift the protection of ``count`` pages from ``first`` in ``proc``, wherever it
        maps them, following its mappings if they change meanwhile (the module's docstring)."""
        kernel = self.kernel
        where = kernel.addresses(proc, first, count)
        for _ in range(MAX_KERNEL_RETRIES):
            moved = self._writeprotect_at(proc, where, first, count, wp)
            if moved is None:
                return
            where = moved
        raise OSError(errno.ENOENT, f"UFFDIO_WRITEPROTECT of pages {first}+{count}: the "
                                    f"process's mappings still changed after "
                                    f"{MAX_KERNEL_RETRIES} tries")

    def _writeprotect_at(self, proc: Any, where: list[tuple[int, int]], first: int, count: int,
                         wp: bool) -> list[tuple[int, int]] | None:
        """Set or lift the protection at each of ``where``; the addresses to do it all again at
        if the process's mappings changed meanwhile, else None."""
        kernel = self.kernel
        for addr, length in where:
            what = f"UFFDIO_WRITEPROTECT {addr:#x}+{length:#x} wp={wp}"
            err = self._retried(proc, lambda: kernel.writeprotect(proc, addr, length, wp), what)
            if err == errno.ENOENT:  # unmapped or moved: its event may not be read yet
                kernel.read_events(proc)
                if not wp:  # the writers blocked there wait for a lift that cannot come
                    self._wake_range(proc, addr, length)
            elif not self._settled(proc, err, what):
                return None
            now = kernel.addresses(proc, first, count)
            if now != where:  # events read meanwhile moved or dropped some of the pages
                return now
        return None

    def _wake_range(self, proc: Any, addr: int, length: int) -> None:
        for page_addr in range(addr, addr + length, self.page_size):
            if not self._settled(proc, self.kernel.wake(proc, page_addr),
                                 f"UFFDIO_WAKE {page_addr:#x}"):
                return

    def protect_everywhere(self, first: int, count: int, wp: bool) -> None:
        for proc in list(self.kernel.processes()):
            self.writeprotect(proc, first, count, wp)

    def protect_read_copies(self, proc: Any, shared: list[int]) -> None:
        """A process that attaches late (or was forked) must not write the node's read copies
        (``shared``) without a fault: write-protect them in it (unpopulated entries get
        markers), one call per run."""
        for first, count in runs(shared, len(shared) or 1):
            self.writeprotect(proc, first, count, wp=True)

    # --- waking and failing waiters ----------------------------------------------------------------
    def wake(self, proc: Any, addr: int) -> None:
        self._settled(proc, self.kernel.wake(proc, addr), f"UFFDIO_WAKE {addr:#x}")

    def poison(self, proc: Any, addr: int, thread_id: int) -> None:
        """Make the page at ``addr`` fail in ``proc`` (SIGBUS at the access; the faulting thread
        is woken to take it); where the kernel refuses, kill the process with SIGBUS."""
        what = f"UFFDIO_POISON {addr:#x}"
        err = self._retried(proc, lambda: self.kernel.poison(proc, addr), what)
        if err == errno.ENOENT:  # unmapped or moved: the thread refaults (or fails) if woken
            self.kernel.read_events(proc)
            self.wake(proc, addr)
            return
        if err in (0, errno.ESRCH) + NOTHING_LEFT:
            self._settled(proc, err, what)
            return
        self.kernel.kill(proc, thread_id, f"{what} refused ({errno.errorcode.get(err, err)}): "
                                          "the process must not read a lost page")

    # --- pages in ----------------------------------------------------------------------------------
    def install(self, first: int, count: int, data: Any, writable: bool,
                installer: tuple[Any, int] | None) -> bool:
        """Put ``count`` pages into the node's memory. ``installer`` is a process waiting on the
        first page and its address there: if it maps the run contiguously, one copy through its
        uffd installs them and wakes it (True is returned); otherwise, and for what the copy
        leaves, the memory is written directly. A read copy is write-protected in every other
        process *before* it appears, so that no process can write it without a fault."""
        kernel, size = self.kernel, self.page_size
        length = count * size
        if installer is not None and kernel.addresses(installer[0], first, count) != [
                (installer[1], length)]:
            installer = None
        copier = installer[0] if installer is not None else None
        if not writable:
            for proc in list(kernel.processes()):
                if proc is not copier:
                    self.writeprotect(proc, first, count, wp=True)
        view = memoryview(data)
        done = 0
        if installer is not None:
            proc, addr = installer
            done, err = self._copy(proc, addr, view, length, wp=not writable)
            if err == errno.ENOENT:  # unmapped or moved: the protection below follows the move
                kernel.read_events(proc)
            if err != errno.EEXIST and not self._settled(proc, err, f"UFFDIO_COPY to {addr:#x}"):
                installer = None  # gone or unmapped meanwhile: written below
        if done < length:
            if copier is not None and not writable:
                # the copy stopped early: the rest appears through the memory, which the copying
                # process must not be able to write without a fault either (the others were
                # protected above; a process forgotten meanwhile maps nothing)
                self.writeprotect(copier, first + done // size, count - done // size, wp=True)
            kernel.write(first * size + done, view[done:length])
        return installer is not None and done > 0

    def _copy(self, proc: Any, addr: int, view: memoryview, length: int,
              wp: bool) -> tuple[int, int]:
        """Copy ``length`` bytes of ``view`` to ``addr`` in ``proc``, again after a transient
        answer (a partial copy goes on where it stopped): (bytes copied, the errno it ended
        with: 0, EEXIST where a page of the run is there already, or one for ``_settled``)."""
        done = stalled = 0
        while done < length:
            copied, err = self.kernel.copy(proc, addr + done, view[done:length], wp)
            done += copied
            if err and err not in TRANSIENT:
                return done, err
            stalled = 0 if copied else stalled + 1
            if stalled >= MAX_KERNEL_RETRIES:
                raise OSError(err or errno.EIO,
                              f"UFFDIO_COPY of {length} bytes to {addr:#x}: {stalled} tries in "
                              f"a row copied nothing (the last answered "
                              f"{errno.errorcode.get(err, 'no error')}; {done} bytes were copied)")
            if err == errno.EAGAIN:
                self.kernel.read_events(proc)
        return done, 0
