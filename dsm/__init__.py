"""dsm: a distributed shared memory for Linux on userfaultfd."""

from dsm.errors import ConfigError, DsmError, ProtocolError
from dsm.node import Node, attach

__version__ = "0.1.0"

__all__ = ["Node", "attach", "ConfigError", "DsmError", "ProtocolError", "__version__"]
