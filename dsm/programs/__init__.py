"""The programs a node or a container runs: ``dsm-node`` (``node.py``) and ``dsm-entrypoint``
(``entrypoint.py``), console scripts of the package (``pyproject.toml``)."""

from __future__ import annotations

import sys

#: this package's console scripts -> the module each one runs (``python -m MODULE`` is the same
#: program); a test keeps it equal to pyproject.toml's [project.scripts]
CONSOLE_SCRIPTS = {
    "dsm": "dsm",
    "dsm-entrypoint": "dsm.programs.entrypoint",
    "dsm-node": "dsm.programs.node",
}


def on_this_python(argv: list[str]) -> list[str]:
    """``argv`` run by the interpreter running this: ``python``/``python3`` is it, and a console
    script of this package is ``python -m`` its module. A container's entrypoint and the
    namespace-host runner use it, so that the commands of the compose file run the same install
    as they do, even where its scripts are not on ``PATH``."""
    if not argv:
        return list(argv)
    if argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    if argv[0] in CONSOLE_SCRIPTS:
        return [sys.executable, "-m", CONSOLE_SCRIPTS[argv[0]], *argv[1:]]
    return list(argv)
