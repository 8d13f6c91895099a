"""``dsm agent``'s process (``dsm/commands/agent.py``): the checks before the agent joins, the
agent (``dsm/agent/service.py``) started, served until stopped, and its exit status.

It says once why it could not start: to whoever waits on the ready pipe (``dsm run``,
``dsm-node``, ``dsm.attach``), else on stderr; and it exits with a status that says how the node
ended (``EXIT_*`` here, ``dsm.clusterstop.EXIT_CLUSTER_STOPPED``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import zmq

from dsm.collector import tune_for_service
from dsm.agent.launch import (ADVERTISE_ENV, EXIT_CUT_OFF, EXIT_LEAVE_UNACKNOWLEDGED,
                              EXIT_NOT_STARTED, EXIT_PARENT_GONE, PEER_LISTEN_ENV)
from dsm.agent.service import Agent
from dsm.clusterstop import EXIT_CLUSTER_STOPPED
from dsm.errors import DsmError
from dsm.keys import keys_dir_from, load_client_keys, load_peer_keys

log = logging.getLogger(__name__)

#: how long ZeroMQ may go on sending what the agent queued as it left (ms)
LINGER_AT_EXIT_MS = 1000


class ParentGone(DsmError):
    """The process this agent belongs to (``--parent-pid``) has exited."""


class UffdUnavailable(DsmError):
    """This host, or this user, cannot open a userfaultfd as a workload must."""


def watch_parent(pid: int) -> int:
    """A pidfd of ``pid``, this process's parent; ParentGone if the parent is no longer that
    process. The parent is checked after the pidfd is opened: were the parent already dead, its
    pid could be another process's by then."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ParentGone(f"the agent's parent, pid {pid}, exited before it started") from None
    if os.getppid() != pid:
        os.close(pidfd)
        raise ParentGone(f"expected to be a child of pid {pid}, but the parent is pid "
                         f"{os.getppid()}: pid {pid} exited before the agent started")
    return pidfd


def check_uffd() -> None:
    """Open and close a userfaultfd the way every workload of the node will (``dsm.attach``:
    the device or the syscall, with the features of ``dsm/needs.py``); UffdUnavailable in one
    line otherwise. Checked before joining the directory: without it the node would join,
    and then every workload would fail at attach, each with a traceback."""
    from dsm.needs import OPTIONAL_WORKLOAD_FEATURES, WORKLOAD_FEATURES
    from dsm.uffd import UffdError
    from dsm.uffd.uffd import Uffd  # not through dsm.uffd's lazy names: mypyc cannot

    try:
        Uffd.open(features=WORKLOAD_FEATURES | OPTIONAL_WORKLOAD_FEATURES,
                  required=WORKLOAD_FEATURES).close()
    except UffdError as exc:
        raise UffdUnavailable(f"{exc}; this node cannot run a workload: run `dsm doctor`"
                              ) from None


def _not_started(ready_fd: int | None, kind: str, why: str) -> int:
    """The agent could not start: said once. To whoever waits on the ready pipe (``dsm run``,
    ``dsm-node``, ``dsm.attach``), which says it with what it was doing; else (``dsm agent``
    run by hand) on stderr."""
    if ready_fd is not None:
        os.write(ready_fd, f"error {kind}: {why}\n".encode())
        os.close(ready_fd)
    else:
        print(f"dsm agent: {why}", file=sys.stderr, flush=True)
    return EXIT_NOT_STARTED


def run_agent(directory: str, node: str, socket_path: str, trace_path: str | None = None,
              ready_fd: int | None = None, parent_pid: int | None = None,
              keys_dir: str | None = None, metrics_port: int | None = None,
              peer_listen: str | None = None, advertise: str | None = None) -> int:
    try:
        check_uffd()  # before joining: a node that cannot run a workload never joins
        keys_path = keys_dir_from(keys_dir)
        keys = load_client_keys(keys_path, node) if keys_path is not None else None
        peer_keys = load_peer_keys(keys_path, node) if keys_path is not None else None
        # the process this agent belongs to: when it exits, the agent stops as if killed with
        # it (a pidfd rather than PR_SET_PDEATHSIG, which follows the *thread* that forked us)
        parent_pidfd = watch_parent(parent_pid) if parent_pid is not None else None
        agent = Agent(directory, node, socket_path, trace_path, parent_pidfd, keys,
                      peer_listen or os.environ.get(PEER_LISTEN_ENV) or None,
                      advertise or os.environ.get(ADVERTISE_ENV) or None, peer_keys)
        if metrics_port is not None:
            from dsm.metrics import MessageCounts, NodeCollector, serve

            wire = agent.messaging.wire = MessageCounts()
            port = serve(metrics_port, NodeCollector(node, agent.stats.snapshot, wire))
            log.info("node %s: metrics on port %d", node, port)
    except DsmError as exc:
        return _not_started(ready_fd, type(exc).__name__, str(exc))
    except OSError as exc:  # the metrics port could not be bound
        return _not_started(ready_fd, "MetricsPortError",
                            f"cannot serve metrics on port {metrics_port}: {exc}")
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    acknowledged = False
    tune_for_service()
    try:
        agent.serve_forever()
    finally:
        if agent.orphaned:
            agent.abandon()
        else:
            acknowledged = agent.close()
        # Let ZeroMQ finish sending what close() queued (the pages handed back) while its buffers
        # are alive: frames over pyzmq's copy threshold (64 KiB) are sent without a copy, and the
        # interpreter's exit would free them under libzmq's I/O thread (EFAULT: abort, SIGSEGV).
        zmq.Context.instance().destroy(linger=LINGER_AT_EXIT_MS)
    return exit_status(agent, acknowledged)


def exit_status(agent: Agent, acknowledged: bool) -> int:
    """How the node ended, as its agent's exit status says it (``acknowledged``: the
    directory acknowledged its leave)."""
    if agent.orphaned:
        return EXIT_PARENT_GONE
    if not acknowledged and agent.messaging.inbox.directory_closing is not None:
        return EXIT_CLUSTER_STOPPED
    if not agent.messaging.directory_alive:
        return EXIT_CUT_OFF
    return 0 if acknowledged else EXIT_LEAVE_UNACKNOWLEDGED
