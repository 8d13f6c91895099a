"""dsm: a distributed shared memory for Linux on userfaultfd."""

from typing import Any

from dsm.errors import ConfigError, DsmError, ProtocolError

__version__ = "0.1.0"

__all__ = ["Node", "attach", "ConfigError", "DsmError", "ProtocolError", "__version__"]


def __getattr__(name: str) -> Any:
    """``dsm.attach`` and ``dsm.Node`` load the node's side (ZeroMQ, the agent) on first use:
    importing a state machine (``dsm.core``, ``dsm.directory.pages``, the simulator) must not
    load sockets or the kernel's bindings (``tests/test_layering.py``)."""
    if name in ("Node", "attach"):
        from dsm import node
        return getattr(node, name)
    raise AttributeError(f"module 'dsm' has no attribute {name!r}")
