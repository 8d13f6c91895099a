"""The one exception hierarchy of the project: every error dsm raises is a DsmError."""


class DsmError(Exception):
    """Base of every error raised by dsm."""


class ProtocolError(DsmError):
    """A message on the wire did not have the shape the protocol requires."""


class ConfigError(DsmError):
    """An argument, flag or environment value is not usable; the message names it."""
