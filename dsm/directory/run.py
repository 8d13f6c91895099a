"""``dsm directory``'s process: one directory, or one shard of a distributed manager
(``dsm/directory/shard/``), started, announced and stopped.

    dsm directory                                  one directory (shard 0 of 1)
    dsm directory --manager distributed --shards K shard 0, the coordinator, and shards 1..K-1
                                                   as child processes on this host
    dsm directory --shard 0 --of K                 the coordinator alone: the others join it
    dsm directory --shard I --of K --coordinator E shard I (or ``auto``: any free one), joining
                                                   the coordinator at E

A directory says ``directory listening on ENDPOINT`` (and writes the endpoint to ``--ready-fd``)
once it serves nodes: a coordinator only when every shard has joined.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from dataclasses import dataclass

import zmq

from dsm.collector import tune_for_service
from dsm import protocol as p
from dsm.directory.memberlink import MemberLink
from dsm.directory.pages import OnLoss
from dsm.directory.service import DirectoryService, open_router
from dsm.directory.shard import Coordinator, Member, Role
from dsm.directory.shardprocs import (
    LocalShards,
    advertised_endpoint,
    join_coordinator,
    local_endpoint,
)
from dsm.errors import ConfigError, DsmError
from dsm.keys import ServerKeys
from dsm.layout import Layout
from dsm.units import check_home_copy

log = logging.getLogger(__name__)

#: exit status of a shard that could not join its coordinator
EXIT_JOIN_FAILED = 2


@dataclass(frozen=True)
class ShardPlan:
    """Which shard this process is (``dsm directory``'s --shards, --shard, --of, --coordinator)."""

    count: int = 1  #: K; 0 for a joining shard: as many as the coordinator has
    index: int | None = 0  #: this process's shard; None: any free one (a joining shard)
    coordinator: str | None = None  #: a joining shard: where shard 0 listens
    local: bool = False  #: the coordinator starts shards 1..K-1 itself, on this host
    advertise: str | None = None  #: a joining shard: the endpoint nodes reach it at
    parent_pid: int | None = None  #: a shard started by its coordinator: it stops with it


def run_directory(endpoint: str, layout: Layout | None, trace_path: str | None = None,
                  ready_fd: int | None = None, on_loss: OnLoss = OnLoss.POISON,
                  keys: ServerKeys | None = None, metrics_port: int | None = None,
                  manager: str = "relay", plan: ShardPlan = ShardPlan(),
                  keys_dir: str | None = None, migratory: bool = True) -> int:
    """Serve until SIGTERM or SIGINT; the exit status (``shard.EXIT_SHARD_LOST`` when the
    manager lost a shard or its coordinator)."""
    if plan.coordinator is not None:
        return _run_member(endpoint, trace_path, keys, metrics_port, plan)
    role: Role = Role()
    if plan.count > 1:
        _name_shard_in_logs(0, plan.count)
        role = Coordinator(plan.count, check_peer_key=keys.own.public if keys else None)
        if keys is not None:  # the shards connect with the directory's own key
            keys = dataclasses.replace(keys, clients={**keys.clients,
                                                      keys.own.public: keys.own.path})
    assert layout is not None
    service = DirectoryService(endpoint, layout, trace_path, on_loss=on_loss, keys=keys,
                               manager=manager, role=role, migratory=migratory)
    local = None
    try:
        if plan.local and plan.count > 1:
            local = LocalShards(plan.count, endpoint, local_endpoint(service.endpoint), keys_dir,
                                trace_path, metrics_port)
            role.local = local  # type: ignore[attr-defined]
        return _serve(service, "directory", ready_fd, metrics_port)
    finally:
        if local is not None:
            local.stop()


def _run_member(endpoint: str, trace_path: str | None, keys: ServerKeys | None,
                metrics_port: int | None, plan: ShardPlan) -> int:
    assert plan.coordinator is not None
    which = "any free shard" if plan.index is None else f"shard {plan.index}"
    ctx = zmq.Context.instance()
    router = open_router(ctx, endpoint, keys, f"{which} of the directory at {endpoint}")
    sock, security, bound = router
    try:
        advertise = plan.advertise or advertised_endpoint(bound, plan.coordinator,
                                                          local=plan.parent_pid is not None)
        hello = p.ShardHello(-1 if plan.index is None else plan.index, plan.count, advertise,
                             os.getpid())
        dealer, welcome = join_coordinator(ctx, plan.coordinator, hello, keys)
        check_home_copy(welcome.size)
        parent_pidfd = os.pidfd_open(plan.parent_pid) if plan.parent_pid else None
    except (DsmError, ConfigError, ProcessLookupError) as exc:
        print(f"dsm directory ({which}): {exc}", flush=True)
        log.error("%s could not join the coordinator %s: %s", which, plan.coordinator, exc)
        sock.close(0)
        security.close()
        return EXIT_JOIN_FAILED
    _name_shard_in_logs(welcome.shard, welcome.shards)
    log.info("shard %d of %d joined the coordinator %s; nodes reach it at %s", welcome.shard,
             welcome.shards, plan.coordinator, advertise)
    link = MemberLink(dealer, plan.coordinator, parent_pidfd)
    role = Member(welcome, plan.coordinator, link)
    link.serve(role)
    service = DirectoryService(bound, Layout(welcome.base, welcome.size, welcome.page_size),
                               trace_path, on_loss=OnLoss(welcome.on_loss), keys=keys,
                               manager=welcome.manager, role=role, router=router,
                               coordinator_link=link)
    return _serve(service, f"shard {welcome.shard} of {welcome.shards}", None, metrics_port,
                  "" if advertise == bound else f" (nodes reach it at {advertise})")


def _serve(service: DirectoryService, what: str, ready_fd: int | None,
           metrics_port: int | None, where: str = "") -> int:
    if metrics_port is not None:  # serving before the endpoint is printed: ready when it is
        from dsm.metrics import DirectoryCollector, MessageCounts, serve

        d = service.directory
        d.wire = MessageCounts()
        port = serve(metrics_port, DirectoryCollector(
            lambda: dict(d.pages.counters), lambda: len(d.sessions.by_node),
            d.wire, lambda: d.sync.waits, lambda: dict(d.sync.lock_waits_by_node)))
        log.info("%s metrics on port %d", what, port)
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)

    def announce() -> None:
        print(f"{what} listening on {service.endpoint}{where}", flush=True)
        if ready_fd is not None:
            os.write(ready_fd, service.endpoint.encode() + b"\n")
            os.close(ready_fd)

    service.directory.announce = announce
    tune_for_service()
    try:
        service.serve_forever()
    finally:
        service.security.close()
    return service.exit_status


def _name_shard_in_logs(index: int, count: int) -> None:
    """Every log line of this process says which shard wrote it (the shards of one host share
    the coordinator's log)."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(name)s [shard {index}/{count}] %(levelname)s %(message)s"))
