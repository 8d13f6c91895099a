"""The one exception hierarchy of the project: every error dsm raises is a DsmError.

One policy for what a service does with an exception while it handles a message:

- a DsmError is bad input (malformed, refused, out of range), raised by the checks before
  anything changed: the message is answered or dropped with a rate-limited line, and the service
  goes on, whatever a peer sends;
- any other exception is a bug, or an action on the kernel that failed half-way: the state may
  be half-updated, so the service stops loudly (a node cuts itself off and its workload gets
  SIGBUS; a manager exits with ``EXIT_INTERNAL_ERROR``), never carrying on from it.
"""


class DsmError(Exception):
    """Base of every error raised by dsm."""


class ProtocolError(DsmError):
    """A message on the wire did not have the shape the protocol requires."""


class ConfigError(DsmError):
    """An argument, flag or environment value is not usable; the message names it."""
