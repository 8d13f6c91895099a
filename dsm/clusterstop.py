"""The whole cluster stopping at once: ``scancel`` of a Slurm job, ``docker compose down``, a
launcher that signals every process of the job together. The directory and the nodes get the
signal at the same moment, so a node's leave meets a directory on its way out.

A directory stopped by a signal tells every live node so, last (a ``Closing`` message), before it
closes. A node that is leaving then stops waiting for an acknowledgement that cannot come, and
does not report its leave as failed: what it handed back goes with the cluster, as everything
else does, and nothing was at risk that the stop itself did not end. The agent exits with
``EXIT_CLUSTER_STOPPED``, and ``dsm run`` or ``dsm-node`` says the cluster stopped with it.
A node that is not leaving keeps its workload running until the directory's silence cuts it off,
as before (a directory stopped alone, while its nodes compute, is a loss).
"""

from __future__ import annotations

import signal

#: the agent's exit status when its leave met a directory that was stopping too (the agent's
#: other statuses: ``dsm/agent/run.py``)
EXIT_CLUSTER_STOPPED = 6
#: how long a stopping directory gives the Closing messages to its nodes to leave (ms)
CLOSING_LINGER_MS = 1000


def closing_reason(signum: int | None) -> str:
    """What a stopping directory tells its nodes."""
    why = f"on {signal.Signals(signum).name}" if signum is not None else ""
    return f"the directory is stopping {why}".rstrip()


def stopped_with_cluster(how: str) -> str:
    """What ``dsm run`` and ``dsm-node`` say when their agent exited ``EXIT_CLUSTER_STOPPED``
    (``how``: " while leaving on SIGTERM", or "")."""
    return (f"the cluster stopped with this node{how}: its directory was stopped by the same "
            "stop (a cancelled job, the whole cluster taken down), so this node's leave needed "
            "no acknowledgement and nothing it held outlives the cluster")
