"""Errors of the userfaultfd binding: one class per failure the kernel can report."""

from __future__ import annotations

import errno
import os

from dsm.errors import DsmError


class UffdError(DsmError, OSError):
    """An operation on a userfaultfd failed; ``errno`` holds the kernel's code."""

    def __init__(self, err: int, message: str):
        OSError.__init__(self, err, message)
        self.message = message

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno, str(self.errno))
        return f"{self.message} [{name}: {os.strerror(self.errno)}]"


class UffdOpenError(UffdError):
    """No userfaultfd could be opened; the message says what each way of opening answered."""


class FeatureUnavailable(UffdError):
    """The kernel does not offer a feature that was required."""

    def __init__(self, missing: int, available: int, message: str):
        super().__init__(errno.EINVAL, message)
        self.missing = missing
        self.available = available


class PageExists(UffdError):
    """EEXIST: the page is already present; wake the range or the waiter hangs."""


class EventPending(UffdError):
    """EAGAIN: an event (fork, remap, remove, unmap) is unread; read events, then retry."""


class PartiallyCopied(EventPending):
    """The operation stopped early (EAGAIN with progress): ``done`` bytes were resolved."""

    def __init__(self, done: int, requested: int, message: str):
        super().__init__(errno.EAGAIN, message)
        self.done = done
        self.requested = requested


class ProcessGone(UffdError):
    """ESRCH: the process whose memory this uffd covers has exited."""


class ShortRead(UffdError):
    """A read of the uffd returned a byte count that is not a whole number of uffd_msg."""


class UnknownEvent(UffdError):
    """A uffd_msg carried an event code this binding does not know."""


def error_for(err: int, message: str) -> UffdError:
    """The specific UffdError subclass for a kernel errno."""
    cls = {errno.EEXIST: PageExists, errno.EAGAIN: EventPending, errno.ESRCH: ProcessGone}.get(
        err, UffdError
    )
    return cls(err, message)
