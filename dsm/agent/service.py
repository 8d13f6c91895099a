"""The node agent: one process per node that owns the node's memfd, the uffd of every workload
process of the node, and all of the node's networking.

One thread runs one poll loop over the directory's DEALER socket, the Unix socket workloads attach
through, every uffd and every pidfd. Faults become page requests; several may be outstanding at
once, and while the node waits for a page it keeps answering the directory for the pages it owns.

Local page states: absent (invalid), SHARED (a read copy: write-protected on every local uffd) and
EXCLUSIVE (owned, writable). The data lives in the memfd, so every local process sees one copy.

This module is the agent's wiring and its loop: joining the directory, serving until stopped,
the timers (heartbeats, the directory's silence, the counters' report, overdue requests) and
leaving. What the loop hands on: the workload processes and their uffd events to
``dsm/agent/workloads.py``; the directory's and the peers' messages, and the node core's actions,
to ``dsm/agent/messaging.py``.
"""

from __future__ import annotations

import logging
import math
import os
import select
import signal
import sys
import time
from typing import Any

import zmq

from dsm import protocol as p
from dsm.clusterstop import EXIT_CLUSTER_STOPPED
from dsm.clocksync import ClockSync
from dsm.agent.clients import ClientHub
from dsm.agent.forwarding import Forwarder
from dsm.agent.messaging import Messaging
from dsm.agent.twins import Twins
from dsm.agent.links import ShardLinks
from dsm.agent.memory import NodeMemory
from dsm.agent.peers import (
    ADVERTISE_ENV, NO_PEER_ENDPOINT, PEER_LISTEN_ENV, PeerEndpoint, default_listen,
)
from dsm.agent.workloads import Workloads
# REMOVE_SETTLE_S is imported from here too (it was defined here before dsm/core/events.py)
from dsm.core.events import REMOVE_SETTLE_S as REMOVE_SETTLE_S
from dsm.core.dynamic import DynamicNodeCore
from dsm.core.kernel import KernelCalls
from dsm.core.node import NodeCore
from dsm.core.readahead import ReadAhead
from dsm.core.shards import shard_name
from dsm.agent.processes import WorkloadProcess
from dsm.core.stats import NodeStats
from dsm.directory.sessions import new_random_id
from dsm.errors import ConfigError, DsmError, ProtocolError
from dsm.keys import ClientKeys, ServerKeys, keys_dir_from, load_client_keys, load_peer_keys
from dsm.launchers import job_name, placement
from dsm.layout import Layout
from dsm.reliability import add_counters
from dsm.core.timers import AgentTimers
from dsm.liveness import HOUSEKEEPING_INTERVAL_S, NODE_CUT_OFF_S
from dsm.logthrottle import throttle_module_logs
from dsm.trace import Tracer
from dsm.wire import send_frames

log = logging.getLogger(__name__)


#: how long the directory may take to answer Hello before the agent gives up
CONNECT_TIMEOUT_S = 5.0
#: how often a Hello that found no connection to queue on is tried again
JOIN_RETRY_S = 0.05
#: how long leaving may wait for requests in flight and for the directory's acknowledgement
LEAVE_TIMEOUT_S = 5.0
POLL_INTERVAL_MS = 100
#: the largest read-ahead window: as many pages as one message carries (4 MiB), so that a
#: sequential scan costs one request, one transfer and one install per 4 MiB, not per MiB
#: (each costs the agents and the directory about as much Python as moving a MiB costs copies)
READAHEAD_MAX_PAGES = p.MAX_BATCH_PAGES
#: how often the node's counters go to the directory (for dsm top)
STATS_REPORT_INTERVAL_S = 1.0
#: while tracing, a heartbeat (a clock round trip) at least this often, even when busy
CLOCK_PROBE_INTERVAL_S = 2.0
#: the coordinator's end of the link (shard 0, or the one directory), as trace message ids name
#: it (its Tracer's ``who``): where the node joins, and the link clock samples are recorded on
COORDINATOR_LINK = shard_name(0)


#: how long a cut-off agent waits for the workload processes it killed (SIGBUS) to exit before
#: it closes their connections: a watchdog that saw its connection close first would take the
#: agent for dead, say so (a second, wrong, line about the failure) and SIGKILL a process
#: already dying of SIGBUS; a process dies of it within milliseconds, even one waiting on a fault
KILLED_EXIT_WAIT_S = 1.0
#: exit statuses of an agent that could not leave cleanly
EXIT_CUT_OFF = 3
EXIT_LEAVE_UNACKNOWLEDGED = 4
#: ... or did not try: the process it belongs to (``--parent-pid``) died, so it died with it
EXIT_PARENT_GONE = 5


class DirectoryUnreachable(DsmError):
    """The directory did not answer within the deadline."""


class DirectoryRefused(DsmError):
    """The directory will not serve this node (a name clash, or it fenced this incarnation)."""


class ParentGone(DsmError):
    """The process this agent belongs to (``--parent-pid``) has exited."""


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


class Agent:
    def __init__(self, directory: str, node: str, socket_path: str, trace_path: str | None = None,
                 parent_pid: int | None = None, keys: ClientKeys | None = None,
                 peer_listen: str | None = None, advertise: str | None = None,
                 peer_keys: ServerKeys | None = None):
        #: the process this agent belongs to: when it exits, the agent stops as if killed with it
        #: (a pidfd rather than PR_SET_PDEATHSIG, which follows the *thread* that forked us)
        self._parent_pidfd = watch_parent(parent_pid) if parent_pid is not None else None
        #: the parent died: the agent stops without leaving
        self.orphaned = False
        self.node = node
        self.directory_endpoint = directory
        self.socket_path = socket_path
        self.stats = NodeStats()
        self.tracer = Tracer(trace_path, node)
        #: tells this run of the agent from an earlier one under the same name
        self.incarnation = new_random_id()
        self.epoch = 0  #: the directory's, from its Welcome
        #: the directory's clock, estimated from heartbeat round trips (for the trace)
        self.clock_sync = ClockSync()
        self._ctx = zmq.Context.instance()
        #: this node's end of the link to the directory, as trace message ids name it
        self.link = p.identity(node, self.incarnation).decode(errors="surrogateescape")
        # the peer endpoint: pages from other nodes, under the central and distributed managers
        listen = peer_listen or default_listen(directory, socket_path, node)
        self.peers = (None if listen == NO_PEER_ENDPOINT else
                      PeerEndpoint(self._ctx, node, directory, listen, advertise, peer_keys,
                                   p.identity(node, self.incarnation)))
        self._direct = False  # the directory's Welcome says
        self._dynamic = False  # (and whether it runs IVY's dynamic manager)
        # a DEALER per manager shard (dsm/agent/links.py), the coordinator's first: CURVE with
        # this node's key, pinning the directory's (open without keys); a shard that takes no
        # message for NODE_CUT_OFF_S cuts the node off, rather than block the loop forever
        self.links = ShardLinks(self._ctx, p.identity(node, self.incarnation), directory, keys,
                                int(NODE_CUT_OFF_S * 1000))
        self._handshake = self.links.handshake
        self.layout = self._join()
        self.page_size = self.layout.page_size
        self.procs: dict[int, WorkloadProcess] = {}  # uffd fd -> process
        self.memory = NodeMemory(node, self.layout, self.procs,
                                 lambda proc: self.workloads.forget(proc, give_back=False))
        #: the kernel's answers handled, as the simulator handles them (``dsm/core/kernel.py``)
        self.kernel = KernelCalls(self.memory)
        #: the node's coherence state and decisions (dsm/core): this loop only carries them out
        self.core = self._new_core(node)
        self.core.direct = self._direct
        self.core.set_shards(self.links.count)  # its requests stop at stripe ends
        self.state = self.core.state  # page -> PageState, for the pages this node holds
        #: the twins of release-consistency pages written since the last release
        self.twins = Twins(self.memory.memfd, self.page_size)
        self.pending = self.core.pending  # page -> the request out for it
        self.poller = zmq.Poller()
        if self.peers is not None:
            self.poller.register(self.peers.router, zmq.POLLIN)
        self.links.register(self.poller)
        if self._parent_pidfd is not None:
            self.poller.register(self._parent_pidfd, zmq.POLLIN)
        #: the directory's and the peers' messages in, the core's actions out
        self.messaging = Messaging(node, self.link, directory, self.layout, links=self.links,
                                   peers=self.peers, kernel=self.kernel, core=self.core,
                                   twins=self.twins, tracer=self.tracer, stats=self.stats,
                                   answer=lambda m: self.forwarder.answer(m),
                                   clock_sample=self._clock_sample, on_cut_off=self._fail)
        carry_out, send = self.messaging.carry_out, self.messaging.send
        #: the workload processes: their uffd events, their exits
        self.workloads = Workloads(node, self.layout, self.procs, self.poller, self.memory,
                                   self.kernel, self.core, self.stats, carry_out, send)
        self.forwarder = Forwarder(node, send, lambda c, m: self.clients.reply(c, m),
                                   self.workloads.watch_departures,
                                   release=lambda m: carry_out(self.core.release_sync(m)),
                                   release_sent=lambda: not self.core.releases_held(),
                                   lock_requested=lambda req: self.core.lock_requested(req))
        self.clients = ClientHub(socket_path, node, self.layout, self.memory.memfd, self.poller,
                                 self.forwarder, self.workloads.register,
                                 lambda: {"node": node, "processes": len(self.procs),
                                          **self.stats.snapshot()})
        self._last_clock_probe = 0.0
        self._last_report = 0.0
        #: when heartbeats are due, the directory's silence cuts the node off, requests are
        #: overdue (socket-free: the simulator's nodes ask the same object, dsm.sim.timers)
        self.timers = AgentTimers()
        self._running = True

    def _new_core(self, node: str) -> NodeCore:
        """The node core the directory's Welcome calls for: IVY's dynamic manager's
        (``dsm.core.dynamic``: pages asked of their probable owners at this node's peer
        endpoint), or the one the other managers share. Never one for the other when asked
        for the dynamic one: a node without a peer endpoint cannot take part."""
        readahead = ReadAhead(READAHEAD_MAX_PAGES)
        if not self._dynamic:
            return NodeCore(node, self.layout.num_pages, self.page_size, readahead,
                            self.tracer, self.stats)
        if self.peers is None:
            raise ConfigError(f"the directory {self.directory_endpoint} runs the dynamic "
                              "manager, whose pages travel node to node: node "
                              f"{node} needs a peer endpoint (not --peer-listen "
                              f"{NO_PEER_ENDPOINT})")
        # request numbers from the start time (ns): a later incarnation never reuses one
        return DynamicNodeCore(node, self.layout.num_pages, self.page_size, readahead,
                               self.peers.address, time.time_ns(), self.tracer, self.stats)

    # --- joining and leaving ---------------------------------------------------------------------
    def _join(self) -> Layout:
        t0 = self.tracer.now()
        # the job this node is part of: its barriers break together when one of its nodes dies
        where = placement()
        job = ((job_name(where), where.rank, where.size)
               if where is not None and where.rank is not None else ("", -1, 0))
        hello_msg = p.Hello(self.node, os.getpid(), self.incarnation,
                            self.peers.address if self.peers is not None else "", *job)
        hello = p.encode(hello_msg)
        poller = zmq.Poller()
        poller.register(self.links.coordinator, zmq.POLLIN)
        poller.register(self._handshake.monitor, zmq.POLLIN)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        sent = False
        try:
            while True:
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise DirectoryUnreachable(
                        f"directory {self.directory_endpoint} did not answer within "
                        f"{CONNECT_TIMEOUT_S} s ({self._handshake.progress()})")
                if not sent:
                    # never blocking: while no connection is up (a handshake failing over and
                    # over) the DEALER may have no pipe to queue on; the watch must get to say
                    try:
                        send_frames(self.links.coordinator, hello, nonblocking=True)
                        sent = True
                        if self.tracer.enabled:
                            self.tracer.sent(self.link, COORDINATOR_LINK, COORDINATOR_LINK,
                                             hello_msg, t0)
                    except zmq.Again:
                        pass
                wait_s = left_s if sent else min(left_s, JOIN_RETRY_S)
                ready = dict(poller.poll(max(1, int(wait_s * 1000))))
                self._handshake.check()  # AuthenticationFailed when a handshake was refused
                if self.links.coordinator in ready:
                    break
        finally:
            self._handshake.close()
        msg, _ = p.decode(self.links.coordinator.recv_multipart(), 0, p.Direction.TO_NODE)
        if self.tracer.enabled:
            self.tracer.received(COORDINATOR_LINK, self.link, COORDINATOR_LINK, msg)
            if isinstance(msg, p.Welcome) and msg.clock_ns:
                self._clock_sample(t0, msg.clock_ns)
        if isinstance(msg, p.Fenced):
            raise DirectoryRefused(f"the directory {self.directory_endpoint} refused node "
                                   f"{self.node!r}: {msg.reason}")
        # an Error for the Welcome: the directory is up but does not serve this node now (a
        # coordinator whose shards have not all joined, a Hello it could not read); its reason
        if isinstance(msg, p.Error):
            raise DirectoryUnreachable(f"directory {self.directory_endpoint}: {msg.message}")
        if not isinstance(msg, p.Welcome):
            raise ProtocolError(f"expected Welcome from the directory, got {type(msg).__name__}")
        self.epoch = msg.epoch
        self._direct = msg.direct
        self._dynamic = msg.dynamic
        # the other manager shards, if any: the same Hello to each (dsm/agent/links.py)
        self.links.join_shards(msg.shards, hello_msg, msg.epoch, CONNECT_TIMEOUT_S,
                               self.tracer, self.link)
        log.info("node %s joined directory %s (epoch %x%s) as incarnation %x; pages %s",
                 self.node, self.directory_endpoint, msg.epoch,
                 f", {len(msg.shards)} shards" if msg.shards else "", self.incarnation,
                 f"node to node, this node's peer endpoint {self.peers.address}"
                 if msg.direct and self.peers is not None else "through the directory")
        return Layout(msg.base, msg.size, msg.page_size)

    def stop(self, *_: Any) -> None:
        self._running = False

    def close(self) -> bool:
        """Leave: let the requests in flight land, hand every page back (owned ones with their
        contents), say Bye and wait for the directory to acknowledge it (it answers in order, so
        the acknowledgement means every page handed back has arrived). False if it did not."""
        deadline = time.monotonic() + LEAVE_TIMEOUT_S
        while self.pending and time.monotonic() < deadline and self.messaging.directory_serving:
            for item, _ in self.poller.poll(POLL_INTERVAL_MS):  # the shards' and the peers'
                if self.links.owns(item) or self.peers is not None and item is self.peers.router:
                    self._dispatch(item)
        self.messaging.carry_out(self.core.give_back(list(self.state)))
        self.messaging.said_bye = True
        self.messaging.send(p.Bye())  # to every shard: each acknowledges it
        byes = 0
        while (byes < self.links.count and time.monotonic() < deadline
               and self.messaging.directory_serving):
            if self.links.poll(POLL_INTERVAL_MS):
                byes += self.messaging.drain_directory(until=p.Bye)
        acknowledged = byes == self.links.count
        if not acknowledged and self.messaging.directory_closing is not None:
            log.info("the directory %s stopped as this node left: nothing to hand back to, "
                     "the cluster stopped", self.directory_endpoint)  # (dsm/clusterstop.py)
        elif not acknowledged and self.messaging.directory_alive:  # cut off: said when it was
            log.error("the directory %s did not acknowledge this node's leave: pages it handed "
                      "back may be lost", self.directory_endpoint)
        self._release()
        return acknowledged

    def abandon(self) -> None:
        """Stop without leaving, as a killed agent would: nothing is handed back, no Bye (the
        directory declares the node dead); the workload processes' watchdogs kill them."""
        self.links.set_linger(0)
        self._release()

    def _release(self) -> None:
        self.workloads.close()
        self.clients.close()
        self.memory.close()
        self.tracer.close()
        if self.peers is not None:
            self.peers.close()
        self.links.close()
        if self._parent_pidfd is not None:
            os.close(self._parent_pidfd)

    # --- the loop ----------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        log.info("agent %s serving on %s", self.node, self.socket_path)
        # the agent's modules warn about unexpected messages: a peer can provoke those
        throttle_module_logs("dsm.agent", "unexpected messages")
        throttle_module_logs("dsm.core", "unexpected page messages")  # the node core's
        last_housekeeping_s = 0.0
        while self._running:
            ready = self.poller.poll(self._poll_timeout_ms())
            for item, _ in ready:
                self._dispatch(item)
                self.workloads.handle_shelved()
            now = time.monotonic()
            self.workloads.run_timers(now)
            self.workloads.handle_shelved()
            if not ready or now - last_housekeeping_s >= HOUSEKEEPING_INTERVAL_S:
                last_housekeeping_s = now
                if not self._housekeeping(now):
                    return

    def _housekeeping(self, now: float) -> bool:
        """Heartbeats, the directory's silence, the counters' report, overdue requests; False
        once the directory is gone."""
        if self.timers.heartbeat_due(now, self.links.least_recent_send_s()) or (
                self.tracer.enabled and now - self._last_clock_probe > CLOCK_PROBE_INTERVAL_S):
            self._last_clock_probe = now  # a heartbeat is also a clock round trip
            self.messaging.send(p.Heartbeat(self.tracer.now_ns()))
        self.links.flush(now)  # acknowledgements owed, replays due (dsm/reliability.py)
        if self.peers is not None:
            self.peers.flush(now)
        behind = self.links.behind()
        if behind is not None and self.messaging.directory_alive:
            link = behind.link
            self.messaging.cut_off(
                f"the directory's {link.peer} has left {link.unacked} messages "
                f"({link.unacked_bytes} bytes) of this node unacknowledged, past the bound: this "
                "node is cut off from the cluster")
        silent_s, silent_endpoint = self.links.longest_silence(now)  # of any shard
        if self.timers.cut_off(silent_s):
            # this loop may have been busy (a release's diffs, the machine's load) while
            # the directory's answers queued: read them first (a Fenced among them says
            # if the directory gave this node up meanwhile)
            self.messaging.drain_directory()
            silent_s, silent_endpoint = self.links.longest_silence(time.monotonic())
        if self.timers.cut_off(silent_s) and self.messaging.directory_alive:
            self.messaging.cut_off(f"the directory {silent_endpoint} has not answered for "
                                   f"{silent_s:.1f} s: this node is cut off from the cluster")
        if not self.messaging.directory_alive:
            return False
        if now - self._last_report > STATS_REPORT_INTERVAL_S:
            self._last_report = now
            self._count_sessions()
            snap = self.stats.snapshot()
            self.messaging.send(p.NodeReport(snap["counters"], snap["latency_counts"],
                                             len(self.procs)))
        self.messaging.carry_out(self.timers.overdue(self.core, now))
        return True

    def _count_sessions(self) -> None:
        """The links' session counters, summed, into the node's (``session_replayed``, ...):
        how much the network made the sessions work. Links closed since are not counted."""
        totals: dict[str, int] = {}
        links = [s.link for s in self.links.sessions]
        if self.peers is not None:
            links += self.peers.links()
        for link in links:
            add_counters(totals, link)
        for key, n in totals.items():  # set, not added (a Counter's update adds)
            self.stats.counters[key] = n

    def _poll_timeout_ms(self) -> int:
        """Poll until the next timer is due, at most POLL_INTERVAL_MS."""
        timeout_s = min(POLL_INTERVAL_MS / 1000, self.workloads.next_timer_s())
        return max(0, math.ceil(timeout_s * 1000))

    def _dispatch(self, item: Any) -> None:
        if self.links.owns(item):
            self.messaging.drain_directory()
        elif self.peers is not None and item is self.peers.router:
            self.messaging.drain_peers()
        elif self.workloads.owns(item):  # a uffd, or a process's exit
            self.workloads.handle(item)
        elif self.clients.owns(item):
            self.clients.handle(item)
        elif item == self._parent_pidfd:
            log.error("the process this agent belongs to exited without stopping it: stopping "
                      "as if killed with it (no leave; the directory declares the node dead)")
            self.orphaned = True
            self._running = False

    def _clock_sample(self, t0_s: float, directory_clock_ns: int) -> None:
        """A round trip to the directory that started at ``t0_s`` has just ended."""
        best = self.clock_sync.sample(t0_s, directory_clock_ns / 1e9, self.tracer.now())
        if best is not None:
            self.tracer.clock(COORDINATOR_LINK, best.offset_s, best.error_s)

    # --- failure -----------------------------------------------------------------------------------
    def _fail(self, why: str) -> None:
        """The node is cut off (``Messaging.cut_off``): the directory no longer serves it and
        has handed, or is about to hand, its pages on. Fail loudly: every request waiting for it
        gets an error, every local workload process is killed, and the loop stops."""
        self._running = False
        log.error("%s; failing this node's requests and stopping its workload processes "
                  "(SIGBUS)", why)
        self.forwarder.fail_all(why)
        self.workloads.kill_all(signal.SIGBUS)
        self._await_exits(KILLED_EXIT_WAIT_S)
        self.core.cut_off()  # the directory has reassigned these pages: nothing to hand back
        self.twins.clear()

    def _await_exits(self, timeout_s: float) -> None:
        """Until every workload process with a pidfd has exited, for at most ``timeout_s``."""
        pidfds = [proc.pidfd for proc in self.procs.values() if proc.pidfd is not None]
        deadline = time.monotonic() + timeout_s
        while pidfds and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(pidfds, [], [], left)
            pidfds = [fd for fd in pidfds if fd not in ready]


class UffdUnavailable(DsmError):
    """This host, or this user, cannot open a userfaultfd as a workload must."""


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
    return 2


def run_agent(directory: str, node: str, socket_path: str, trace_path: str | None = None,
              ready_fd: int | None = None, parent_pid: int | None = None,
              keys_dir: str | None = None, metrics_port: int | None = None,
              peer_listen: str | None = None, advertise: str | None = None) -> int:
    try:
        check_uffd()  # before joining: a node that cannot run a workload never joins
        keys_path = keys_dir_from(keys_dir)
        keys = load_client_keys(keys_path, node) if keys_path is not None else None
        peer_keys = load_peer_keys(keys_path, node) if keys_path is not None else None
        agent = Agent(directory, node, socket_path, trace_path, parent_pid, keys,
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
        zmq.Context.instance().destroy(linger=1000)
    if agent.orphaned:
        return EXIT_PARENT_GONE
    if not acknowledged and agent.messaging.directory_closing is not None:
        return EXIT_CLUSTER_STOPPED
    if not agent.messaging.directory_alive:
        return EXIT_CUT_OFF
    return 0 if acknowledged else EXIT_LEAVE_UNACKNOWLEDGED
