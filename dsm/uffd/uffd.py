"""``Uffd``: one userfaultfd file descriptor, owned, with every ioctl of the kernel interface."""

from __future__ import annotations

import errno
import fcntl
import os
import select
from dataclasses import dataclass
from typing import Any

from dsm import libc
from dsm.uffd import abi
from dsm.uffd.abi import Feature, Ioctl, RegisterMode
from dsm.uffd.errors import (
    FeatureUnavailable,
    PartiallyCopied,
    UffdError,
    UffdOpenError,
    error_for,
)
from dsm.uffd.events import Event, parse_msgs

#: how many uffd_msg one read(2) asks for by default
DEFAULT_READ_BATCH = 64


@dataclass(frozen=True)
class ApiInfo:
    """What UFFDIO_API answered: the features now enabled/offered and the ioctls of the fd."""

    features: Feature
    ioctls: Ioctl


def _open_device(flags: int) -> int:
    dev = os.open(abi.USERFAULTFD_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(dev, abi.USERFAULTFD_IOC_NEW, flags)
    finally:
        os.close(dev)


def _open_syscall(flags: int) -> int:
    return libc.syscall(abi.syscall_number(), flags)


_OPENERS = {"device": _open_device, "syscall": _open_syscall}


def _address(src: Any) -> int:
    return src if isinstance(src, int) else libc.buffer_address(src)


class Uffd:
    """An owned userfaultfd. Use ``Uffd.open()`` for a new one, ``Uffd(fd)`` to wrap one received
    from elsewhere (a Unix socket, a Fork event). Closing is idempotent; a context manager."""

    def __init__(self, fd: int, *, opened_by: str = "inherited"):
        self._fd = fd
        #: how the fd came to be: "device", "syscall" or "inherited"
        self.opened_by = opened_by
        self._poller: select.poll | None = None
        self._blocking: bool | None = None

    # --- life cycle ------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        *,
        features: Feature = Feature(0),
        nonblocking: bool = True,
        cloexec: bool = True,
        user_mode_only: bool = False,
        how: str = "auto",
        api: bool = True,
        required: Feature | None = None,
    ) -> "Uffd":
        """Open a uffd (``/dev/userfaultfd`` first, the syscall as fallback) and, unless
        ``api=False``, do the UFFDIO_API handshake asking for ``features`` (all required, or
        only ``required``: see ``api``)."""
        flags = (os.O_NONBLOCK if nonblocking else 0) | (os.O_CLOEXEC if cloexec else 0)
        flags |= abi.UFFD_USER_MODE_ONLY if user_mode_only else 0
        order = ["device", "syscall"] if how == "auto" else [how]
        failures: list[str] = []
        errnos: list[int] = []
        for name in order:
            try:
                fd = _OPENERS[name](flags)
            except KeyError:
                raise ValueError(f"how must be 'auto', 'device' or 'syscall', not {how!r}") from None
            except (OSError, LookupError) as exc:
                failures.append(f"{name}: {exc}")
                errnos.append(getattr(exc, "errno", None) or errno.ENOSYS)
                continue
            uffd = cls(fd, opened_by=name)
            if api:
                try:
                    uffd.api(features, required=required)
                except BaseException:
                    uffd.close()
                    raise
            return uffd
        # a refusal (EPERM, EACCES) says more than "not there" (ENOENT, ENOSYS): report it first
        refusals = [e for e in errnos if e in (errno.EPERM, errno.EACCES)]
        err = (refusals or errnos or [errno.ENOSYS])[0]
        raise UffdOpenError(err, "cannot open a userfaultfd: " + "; ".join(failures))

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("I/O operation on a closed Uffd")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> "Uffd":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"Uffd(fd={self._fd}, opened_by={self.opened_by!r})"

    # --- raw ioctl -------------------------------------------------------------------------------
    # the name of an operation, for its error, is formatted only when it fails (``what % args``):
    # an f-string per call costs on the fault path
    def _ioctl(self, request: int, buf: bytearray, what: str, *args: Any) -> None:
        try:
            fcntl.ioctl(self.fileno(), request, buf, True)
        except OSError as exc:
            raise error_for(exc.errno, what % args) from None

    def _progress_ioctl(
        self, request: int, st: Any, fields: tuple, length: int, what: str, *args: Any
    ) -> int:
        """An ioctl whose last field the kernel fills with the bytes done or a negative errno."""
        buf = bytearray(st.pack(*fields, 0))
        try:
            fcntl.ioctl(self.fileno(), request, buf, True)
        except OSError as exc:
            name = what % args
            done = st.unpack(buf)[-1]
            if done > 0 and exc.errno == errno.EAGAIN:
                raise PartiallyCopied(
                    done, length, f"{name}: resolved {done} of {length} bytes, then EAGAIN"
                ) from None
            raise error_for(exc.errno, f"{name} of {length} bytes") from None
        return st.unpack(buf)[-1]

    # --- handshake and registration --------------------------------------------------------------
    def api(self, features: Feature = Feature(0), *, required: Feature | None = None) -> ApiInfo:
        """UFFDIO_API: enable ``features``. By default all of them are required: one the kernel
        lacks raises FeatureUnavailable naming it and listing what the kernel offers. With
        ``required``, only those are; the other requested features are enabled where the kernel
        offers them (see ``ApiInfo.features`` for what was)."""
        if required is not None:
            offered = probe_features()
            missing = Feature(int(required) & ~int(offered))
            if missing:
                raise FeatureUnavailable(
                    int(missing), int(offered),
                    f"UFFDIO_API: the kernel does not offer the required {missing!r}; "
                    f"it offers {offered!r}",
                )
            features = Feature(int(features | required) & int(offered))
        buf = bytearray(abi.STRUCT_UFFDIO_API.pack(abi.UFFD_API, int(features), 0))
        try:
            fcntl.ioctl(self.fileno(), abi.UFFDIO_API, buf, True)
        except OSError as exc:
            if exc.errno == errno.EINVAL and features:
                offered = probe_features()
                missing = Feature(int(features) & ~int(offered))
                if missing:
                    raise FeatureUnavailable(
                        int(missing),
                        int(offered),
                        f"UFFDIO_API: the kernel does not offer {missing!r}; "
                        f"it offers {offered!r}",
                    ) from None
            if exc.errno == errno.EPERM and features & Feature.EVENT_FORK:
                raise error_for(
                    exc.errno, "UFFDIO_API: EVENT_FORK needs CAP_SYS_PTRACE"
                ) from None
            if exc.errno == errno.EINVAL:
                raise error_for(
                    exc.errno, "UFFDIO_API: handshake refused (already done on this uffd?)"
                ) from None
            raise error_for(exc.errno, "UFFDIO_API") from None
        _, got, ioctls = abi.STRUCT_UFFDIO_API.unpack(buf)
        return ApiInfo(Feature(got), Ioctl(ioctls))

    def register(self, start: int, length: int, mode: RegisterMode = RegisterMode.MISSING) -> Ioctl:
        """UFFDIO_REGISTER ``[start, start+length)``; returns the ioctls the range allows."""
        buf = bytearray(abi.STRUCT_UFFDIO_REGISTER.pack(start, length, int(mode), 0))
        try:
            fcntl.ioctl(self.fileno(), abi.UFFDIO_REGISTER, buf, True)
        except OSError as exc:
            raise error_for(
                exc.errno, f"UFFDIO_REGISTER {start:#x}+{length:#x} mode {mode!r}"
            ) from None
        return Ioctl(abi.STRUCT_UFFDIO_REGISTER.unpack(buf)[3])

    def unregister(self, start: int, length: int) -> None:
        buf = bytearray(abi.STRUCT_UFFDIO_RANGE.pack(start, length))
        self._ioctl(abi.UFFDIO_UNREGISTER, buf, "UFFDIO_UNREGISTER %#x+%#x", start, length)

    # --- resolving faults ------------------------------------------------------------------------
    def wake(self, start: int, length: int) -> None:
        """UFFDIO_WAKE: wake the threads waiting on faults in the range."""
        buf = bytearray(abi.STRUCT_UFFDIO_RANGE.pack(start, length))
        self._ioctl(abi.UFFDIO_WAKE, buf, "UFFDIO_WAKE %#x+%#x", start, length)

    def copy(
        self, dst: int, src: Any, length: int, *, wp: bool = False, wake: bool = True
    ) -> int:
        """UFFDIO_COPY ``length`` bytes from ``src`` (an address or a buffer) to ``dst``.
        ``wp`` installs the pages write-protected. Returns the bytes copied."""
        mode = (abi.UFFDIO_COPY_MODE_WP if wp else 0) | (0 if wake else abi.UFFDIO_COPY_MODE_DONTWAKE)
        return self._progress_ioctl(abi.UFFDIO_COPY, abi.STRUCT_UFFDIO_COPY,
                                    (dst, _address(src), length, mode), length,
                                    "UFFDIO_COPY to %#x", dst)

    def zeropage(self, start: int, length: int, *, wake: bool = True) -> int:
        """UFFDIO_ZEROPAGE: map zero pages over the range. Returns the bytes zeroed."""
        mode = 0 if wake else abi.UFFDIO_ZEROPAGE_MODE_DONTWAKE
        return self._progress_ioctl(abi.UFFDIO_ZEROPAGE, abi.STRUCT_UFFDIO_ZEROPAGE,
                                    (start, length, mode), length, "UFFDIO_ZEROPAGE at %#x", start)

    def writeprotect(self, start: int, length: int, *, wp: bool, wake: bool = True) -> None:
        """UFFDIO_WRITEPROTECT: set (``wp=True``) or clear protection; clearing wakes writers
        unless ``wake=False``."""
        mode = (abi.UFFDIO_WRITEPROTECT_MODE_WP if wp else 0) | (
            0 if wake else abi.UFFDIO_WRITEPROTECT_MODE_DONTWAKE
        )
        buf = bytearray(abi.STRUCT_UFFDIO_WRITEPROTECT.pack(start, length, mode))
        self._ioctl(abi.UFFDIO_WRITEPROTECT, buf, "UFFDIO_WRITEPROTECT %#x+%#x wp=%s", start,
                    length, wp)

    def continue_(self, start: int, length: int, *, wp: bool = False, wake: bool = True) -> int:
        """UFFDIO_CONTINUE: map the page-cache pages of a MINOR fault. Returns the bytes mapped."""
        mode = (abi.UFFDIO_CONTINUE_MODE_WP if wp else 0) | (
            0 if wake else abi.UFFDIO_CONTINUE_MODE_DONTWAKE
        )
        return self._progress_ioctl(abi.UFFDIO_CONTINUE, abi.STRUCT_UFFDIO_CONTINUE,
                                    (start, length, mode), length, "UFFDIO_CONTINUE at %#x", start)

    def move(
        self, dst: int, src: int, length: int, *, wake: bool = True, allow_src_holes: bool = False
    ) -> int:
        """UFFDIO_MOVE (Linux 6.8, anonymous memory of the same process): move pages from
        ``src`` to ``dst``. Returns the bytes moved."""
        mode = (0 if wake else abi.UFFDIO_MOVE_MODE_DONTWAKE) | (
            abi.UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES if allow_src_holes else 0
        )
        return self._progress_ioctl(abi.UFFDIO_MOVE, abi.STRUCT_UFFDIO_MOVE,
                                    (dst, src, length, mode), length, "UFFDIO_MOVE %#x -> %#x",
                                    src, dst)

    def poison(self, start: int, length: int, *, wake: bool = True) -> int:
        """UFFDIO_POISON (Linux 6.6): mark the range poisoned; access raises SIGBUS."""
        mode = 0 if wake else abi.UFFDIO_POISON_MODE_DONTWAKE
        return self._progress_ioctl(abi.UFFDIO_POISON, abi.STRUCT_UFFDIO_POISON,
                                    (start, length, mode), length, "UFFDIO_POISON at %#x", start)

    # --- events ----------------------------------------------------------------------------------
    def _require_nonblocking(self) -> None:
        # poll(2) of a uffd without O_NONBLOCK always answers POLLERR and read(2) then blocks
        # until an event comes: a timeout cannot be honoured, so refuse instead of hanging.
        # (Asked once: the flag does not change under us, and this is on the fault path.)
        if self._blocking is None:
            self._blocking = os.get_blocking(self.fileno())
        if self._blocking:
            raise UffdError(
                errno.EINVAL,
                "cannot wait with a timeout on a uffd opened without O_NONBLOCK "
                "(poll reports POLLERR, read blocks): open it with nonblocking=True, "
                "or read with timeout_s=None",
            )

    def wait_readable(self, timeout_s: float | None) -> bool:
        """Poll until an event can be read; False at the deadline."""
        if timeout_s is not None:
            self._require_nonblocking()
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self.fileno(), select.POLLIN)
        timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000))
        return bool(self._poller.poll(timeout_ms))

    def read_events(self, max_events: int = DEFAULT_READ_BATCH, timeout_s: float | None = 0) -> list[Event]:
        """Read up to ``max_events`` events, waiting at most ``timeout_s`` (None: forever) for the
        first. Returns [] at the deadline. Fork events carry their new uffd as a ``Uffd``.
        A uffd opened without O_NONBLOCK only supports ``timeout_s=None`` (a blocking read)."""
        if timeout_s is not None:
            self._require_nonblocking()
        if timeout_s != 0 and not self.wait_readable(timeout_s):
            return []
        try:
            data = os.read(self.fileno(), max_events * abi.UFFD_MSG_SIZE)
        except BlockingIOError:
            return []
        except OSError as exc:
            raise error_for(exc.errno, "read of uffd events") from None
        return parse_msgs(data, wrap_fd=Uffd)

    def read_event(self, timeout_s: float | None = None) -> Event | None:
        """Read one event, waiting at most ``timeout_s``; None at the deadline."""
        events = self.read_events(1, timeout_s)
        return events[0] if events else None


def probe_features() -> Feature:
    """The features this kernel offers: a fresh uffd's handshake asking for none reports them."""
    with Uffd.open(api=False) as probe:
        buf = bytearray(abi.STRUCT_UFFDIO_API.pack(abi.UFFD_API, 0, 0))
        try:
            fcntl.ioctl(probe.fileno(), abi.UFFDIO_API, buf, True)
        except OSError as exc:
            raise UffdError(exc.errno, "UFFDIO_API probe") from None
        return Feature(abi.STRUCT_UFFDIO_API.unpack(buf)[1])
