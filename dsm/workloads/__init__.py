"""The parallel programs a dsm node runs, each checked bit for bit against numpy in one process
(``python -m dsm.workloads.NAME`` under ``dsm run``, or by name through ``dsm demo --workload``,
``dsm-node`` and ``DSM_WORKLOAD``).

``common`` holds what they share (arguments, phases, the check, the result line); the others
are the workloads. Importing this package imports neither numpy nor a workload: every ``dsm``
command builds its parsers from ``WORKLOADS``.
"""

from __future__ import annotations

import importlib

#: workload name -> its module. ``rows`` is ``dsm demo``'s default; ``stream`` and ``gather``
#: are the workloads of the link-cut, join-late and leave tests (they define no ``WORKLOAD``)
WORKLOADS = {
    "rows": "dsm.workloads.rows",
    "jacobi": "dsm.workloads.jacobi",
    "matmul": "dsm.workloads.matmul",
    "sort": "dsm.workloads.sort",
    "counter": "dsm.workloads.counter",
    "tally": "dsm.workloads.tally",
    "stream": "dsm.workloads.stream",
    "gather": "dsm.workloads.gather",
}
#: the workloads that ``dsm demo`` and ``dsm bench`` check against numpy (a ``WORKLOAD`` each)
CHECKED = ("rows", "jacobi", "matmul", "sort", "counter", "tally")


def module_of(name: str) -> str:
    """The module of workload ``name``; a clear error for a name that is none."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ValueError(f"no workload {name!r}: the workloads are "
                         f"{', '.join(sorted(WORKLOADS))}") from None


def load(name: str):
    """The ``dsm.workloads.common.Workload`` of a checked workload ``name``."""
    return importlib.import_module(module_of(name)).WORKLOAD
