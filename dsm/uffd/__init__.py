"""A complete Python binding of Linux userfaultfd.

``abi`` holds the kernel numbers, ``events`` the typed events and their pure parser, ``errors``
one exception per kernel outcome, and ``Uffd`` the owned file descriptor with every ioctl.
"""

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
from dsm.uffd.uffd import ApiInfo, Uffd, probe_features

__all__ = [
    "Access", "ApiInfo", "Event", "EventPending", "FaultKind", "Feature", "FeatureUnavailable",
    "Fork", "Ioctl", "PageExists", "Pagefault", "PartiallyCopied", "ProcessGone", "RegisterMode",
    "Remap", "Remove", "ShortRead", "Uffd", "UffdError", "UffdOpenError", "UnknownEvent",
    "Unmap", "parse_msg", "parse_msgs", "probe_features",
]
