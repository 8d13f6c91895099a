"""dsm: a distributed shared memory for Linux on userfaultfd."""

from dsm.errors import ConfigError, DsmError, ProtocolError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DsmError", "ProtocolError", "__version__"]
