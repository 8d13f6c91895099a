"""The optional libraries: which extra of ``dsm-uffd`` installs each, and the one-line error when
a feature's library is missing.

A node needs pyzmq, msgpack and numpy only (the core install). The libraries of the other
features are imported inside the function that uses them, through :func:`require` (or checked
up front with :func:`check`), so that a missing one is a ``MissingExtra`` naming the extra to
install, never an ImportError traceback::

    dsm trace --png needs matplotlib: pip install 'dsm-uffd[plot]'
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from dsm.errors import ConfigError

DISTRIBUTION = "dsm-uffd"

#: top-level module -> (the name pip knows it by, the extra of DISTRIBUTION that installs it);
#: pyproject.toml's [project.optional-dependencies] (tests/test_extras.py checks they agree)
EXTRAS = {
    "matplotlib": ("matplotlib", "plot"),
    "rich": ("rich", "top"),
    "prometheus_client": ("prometheus_client", "metrics"),
    "yaml": ("PyYAML", "hosts"),
}


class MissingExtra(ConfigError):
    """A feature's optional library is not installed; the message names the extra."""


def message(module: str, feature: str) -> str:
    """``FEATURE needs PACKAGE: pip install 'dsm-uffd[EXTRA]'``"""
    package, extra = EXTRAS[module.partition(".")[0]]
    return f"{feature} needs {package}: pip install '{DISTRIBUTION}[{extra}]'"


def check(module: str, feature: str) -> None:
    """Raise ``MissingExtra`` if ``module`` is not installed, without importing it (to fail
    before a long run rather than at its end)."""
    try:
        found = importlib.util.find_spec(module.partition(".")[0]) is not None
    except ImportError:  # an import hook that refuses it
        found = False
    if not found:
        raise MissingExtra(message(module, feature))


def require(module: str, feature: str) -> ModuleType:
    """``module`` imported; ``MissingExtra`` if its distribution is not installed (any other
    ImportError, such as a broken dependency of it, propagates as it is)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != module.partition(".")[0]:
            raise
        raise MissingExtra(message(module, feature)) from None
