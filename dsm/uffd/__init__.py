"""A complete Python binding of Linux userfaultfd.

``abi`` holds the kernel numbers, ``events`` the typed events and their pure parser, ``errors``
one exception per kernel outcome, and ``Uffd`` the owned file descriptor with every ioctl.
"""

from typing import Any

from dsm.uffd.abi import Feature, Ioctl, RegisterMode
from dsm.uffd.errors import (
    EventPending,
    FeatureUnavailable,
    PageExists,
    PartiallyCopied,
    ProcessGone,
    ShortRead,
    UffdError,
    UffdOpenError,
    UnknownEvent,
)
from dsm.uffd.events import (
    Access,
    Event,
    FaultKind,
    Fork,
    Pagefault,
    Remap,
    Remove,
    Unmap,
    parse_msg,
    parse_msgs,
)

#: loaded on first use (``__getattr__``): the file descriptor's module brings fcntl and the libc
#: through ctypes, and the node core reads the event types without them (``tests/test_layering.py``)
_DESCRIPTOR_NAMES = ("ApiInfo", "Uffd", "probe_features")


def __getattr__(name: str) -> Any:
    if name in _DESCRIPTOR_NAMES:
        from dsm.uffd import uffd
        return getattr(uffd, name)
    raise AttributeError(f"module 'dsm.uffd' has no attribute {name!r}")


__all__ = [
    "Access", "ApiInfo", "Event", "EventPending", "FaultKind", "Feature", "FeatureUnavailable",
    "Fork", "Ioctl", "PageExists", "Pagefault", "PartiallyCopied", "ProcessGone", "RegisterMode",
    "Remap", "Remove", "ShortRead", "Uffd", "UffdError", "UffdOpenError", "UnknownEvent",
    "Unmap", "parse_msg", "parse_msgs", "probe_features",
]
