"""The node agent: one process per node that owns the node's memfd, the uffd of every workload
process of the node, and all of the node's networking.

One thread runs one poll loop over the directory's DEALER socket, the Unix socket workloads attach
through, every uffd and every pidfd. Faults become page requests; several may be outstanding at
once, and while the node waits for a page it keeps answering the directory for the pages it owns.

Local page states: absent (invalid), SHARED (a read copy: write-protected on every local uffd) and
EXCLUSIVE (owned, writable). The data lives in the memfd, so every local process sees one copy.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from dsm import libc
from dsm import protocol as p
from dsm.clocksync import ClockSync
from dsm.agent.clients import ClientHub
from dsm.agent.forwarding import Forwarder
from dsm.agent.twins import Twins
from dsm.agent.links import ShardLinks
from dsm.agent.memory import NodeMemory
from dsm.agent.peers import (
    ADVERTISE_ENV, NO_PEER_ENDPOINT, PEER_LISTEN_ENV, PeerEndpoint, default_listen,
)
from dsm.core import actions as act
from dsm.core.node import NodeCore
from dsm.core.readahead import ReadAhead
from dsm.core.shards import shard_name
from dsm.agent.processes import (
    Mapping,
    WorkloadProcess,
    children_of,
    maps_file,
    thread_group_of,
)
from dsm.core.stats import NodeStats
from dsm.directory.sessions import new_random_id
from dsm.errors import DsmError, ProtocolError
from dsm.keys import ClientKeys, ServerKeys, keys_dir_from, load_client_keys, load_peer_keys
from dsm.layout import Layout
from dsm.liveness import HEARTBEAT_INTERVAL_S, NODE_CUT_OFF_S
from dsm.logthrottle import ThrottledLog, throttle_module_logs
from dsm.trace import Tracer
from dsm.wire import has_input, send_frames
from dsm.uffd import (
    FaultKind,
    Fork,
    Pagefault,
    ProcessGone,
    Remap,
    Remove,
    UffdError,
    Uffd,
    Unmap,
)

log = logging.getLogger(__name__)


#: how long the directory may take to answer Hello before the agent gives up
CONNECT_TIMEOUT_S = 5.0
#: how often a Hello that found no connection to queue on is tried again
JOIN_RETRY_S = 0.05
#: how long a page request may stay unanswered before the waiting processes are failed
REQUEST_TIMEOUT_S = 10.0
#: how often requests are looked at for REQUEST_TIMEOUT_S
OVERDUE_CHECK_INTERVAL_S = 1.0
#: how long leaving may wait for requests in flight and for the directory's acknowledgement
LEAVE_TIMEOUT_S = 5.0
POLL_INTERVAL_MS = 100
#: while the loop is busy, heartbeats, the directory's silence, the counters' report and overdue
#: requests are looked at this often, not after every wake-up (their intervals are seconds)
HOUSEKEEPING_INTERVAL_S = 0.005
#: how long after a Remove event its pages are checked for MADV_REMOVE's hole punch (DONTNEED
#: never punches): the madvise caller punches right after the agent has read the event
REMOVE_SETTLE_S = 0.02
#: a forked child appears under /proc a moment after its Fork event is read (the parent is still
#: in fork() then): how often, and for how long, to look for it before relying on its first fault
FORK_LOOKUP_INTERVAL_S = 0.001
FORK_LOOKUP_TIMEOUT_S = 1.0
#: the largest read-ahead window
READAHEAD_MAX_PAGES = 256
#: how often the node's counters go to the directory (for dsm top)
STATS_REPORT_INTERVAL_S = 1.0
#: while tracing, a heartbeat (a clock round trip) at least this often, even when busy
CLOCK_PROBE_INTERVAL_S = 2.0
#: the directory's end of the link, as trace message ids name it (its Tracer's ``who``)
DIRECTORY_LINK = "directory"


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


@dataclass
class Removal:
    """Pages a Remove event of ``proc`` covered, to be told apart at ``deadline``: punched
    (MADV_REMOVE: discarded cluster-wide) or kept (DONTNEED)."""

    proc: WorkloadProcess
    pages: set[int]
    deadline: float


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
        #: messages and bytes by type, counted only for --metrics (dsm.metrics)
        self.wire: Any = None
        #: tells this run of the agent from an earlier one under the same name
        self.incarnation = new_random_id()
        self.epoch = 0  #: the directory's, from its Welcome
        #: the directory's clock, estimated from heartbeat round trips (for the trace)
        self.clock_sync = ClockSync()
        self._ctx = zmq.Context.instance()
        #: False once the directory no longer serves this node (cut off, fenced)
        self._directory_alive = True
        #: this node's end of the link to the directory, as trace message ids name it
        self.link = p.identity(node, self.incarnation).decode(errors="surrogateescape")
        # the peer endpoint: pages from other nodes, under the central and distributed managers
        listen = peer_listen or default_listen(directory, socket_path, node)
        self.peers = (None if listen == NO_PEER_ENDPOINT else
                      PeerEndpoint(self._ctx, node, directory, listen, advertise, peer_keys))
        self._direct = False  # the directory's Welcome says
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
                                 lambda proc: self._forget_process(proc, give_back=False))
        #: the node's coherence state and decisions (dsm/core): this loop only carries them out
        self.core = NodeCore(node, self.layout.num_pages, self.page_size,
                             ReadAhead(READAHEAD_MAX_PAGES), self.memory.holds, self.tracer,
                             self.stats)
        self.core.direct = self._direct
        self.core.set_shards(self.links.count)  # its requests stop at stripe ends
        self.state = self.core.state  # page -> PageState, for the pages this node holds
        #: the twins of release-consistency pages written since the last release
        self.twins = Twins(self.memory.memfd, self.page_size)
        self.pending = self.core.pending  # page -> the request out for it
        self._pidfds: dict[int, WorkloadProcess] = {}
        #: Remove events whose pages are not yet told apart, oldest first
        self._removals: list[Removal] = []
        #: forked children whose pid is not known yet -> until when to look for it
        self._unnamed_children: dict[WorkloadProcess, float] = {}
        self.poller = zmq.Poller()
        if self.peers is not None:
            self.poller.register(self.peers.router, zmq.POLLIN)
        self.links.register(self.poller)
        if self._parent_pidfd is not None:
            self.poller.register(self._parent_pidfd, zmq.POLLIN)
        self.forwarder = Forwarder(node, self._send, lambda c, m: self.clients.reply(c, m),
                                   self._watch_departures,
                                   release=lambda m: self._carry_out(self.core.release_sync(m)))
        self.clients = ClientHub(socket_path, node, self.layout, self.memory.memfd, self.poller,
                                 self.forwarder, self._register,
                                 lambda: {"node": node, "processes": len(self.procs),
                                          **self.stats.snapshot()})
        #: pidfds of processes that used locks or barriers: their exit is told to the directory
        self._departure_pidfds: dict[int, int] = {}
        self._last_clock_probe = 0.0
        self._last_report = 0.0
        self._last_overdue_check = 0.0
        self._running = True
        #: lines about messages dropped from the directory, rate-limited
        self._complain = ThrottledLog(log, "messages dropped from the directory")
        self._dir_handlers: dict[type, Callable[[Any, Any], None]] = {
            p.Grant: self._on_grant,
            p.Fetch: self._on_fetch,
            p.Invalidate: self._on_invalidate,
            p.Allocated: self._on_answer,
            p.SyncReply: self._on_answer,
            p.LockInfo: self._on_answer,
            p.LostReport: self._on_answer,
            p.Error: self._on_answer,
            p.Lost: self._on_lost,
            p.Withdrawn: lambda m, d: self._carry_out(self.core.withdrawn(m)),
            p.DiffApplied: lambda m, d: self._carry_out(self.core.diff_applied(m)),
            p.Fenced: lambda m, d: self._cut_off(
                f"the directory {self.directory_endpoint} refuses this node: {m.reason}"),
            p.Welcome: lambda m, d: None,
            # the directory is alive (_drain_directory noted it) and told its clock
            p.Heartbeat: self._on_heartbeat,
        }
        #: what other nodes send (the peer endpoint)
        self._peer_handlers: dict[type, Callable[[Any, Any], None]] = {
            p.PeerPage: lambda m, d: self._carry_out(self.core.peer_page(m, d, time.monotonic())),
        }
        self._event_handlers: dict[type, Callable[[WorkloadProcess, Any], None]] = {
            Pagefault: self._on_pagefault,
            Fork: self._on_fork,
            Remap: self._on_remap,
            Remove: self._on_remove,
            Unmap: self._on_unmap,
        }

    # --- joining and leaving ---------------------------------------------------------------------
    def _join(self) -> Layout:
        t0 = self.tracer.now()
        hello_msg = p.Hello(self.node, os.getpid(), self.incarnation,
                            self.peers.address if self.peers is not None else "")
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
                            self.tracer.sent(self.link, DIRECTORY_LINK, DIRECTORY_LINK,
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
            self.tracer.received(DIRECTORY_LINK, self.link, DIRECTORY_LINK, msg)
            if isinstance(msg, p.Welcome) and msg.clock_ns:
                self._clock_sample(t0, msg.clock_ns)
        if isinstance(msg, p.Fenced):
            raise DirectoryRefused(f"the directory {self.directory_endpoint} refused node "
                                   f"{self.node!r}: {msg.reason}")
        if not isinstance(msg, p.Welcome):
            raise ProtocolError(f"expected Welcome from the directory, got {type(msg).__name__}")
        self.epoch = msg.epoch
        self._direct = msg.direct
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
        while self.pending and time.monotonic() < deadline and self._directory_alive:
            for item, _ in self.poller.poll(POLL_INTERVAL_MS):  # the shards' and the peers'
                if self.links.owns(item) or self.peers is not None and item is self.peers.router:
                    self._dispatch(item)
        self._give_back(list(self.state))
        self._send(p.Bye())  # to every shard: each acknowledges it
        byes = 0
        while byes < self.links.count and time.monotonic() < deadline and self._directory_alive:
            if self.links.poll(POLL_INTERVAL_MS):
                byes += self._drain_directory(until=p.Bye)
        acknowledged = byes == self.links.count
        if not acknowledged:
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
        for proc in list(self.procs.values()):
            self._forget_process(proc, give_back=False)
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
                self._handle_shelved()
            now = time.monotonic()
            self._run_timers(now)
            self._handle_shelved()
            if not ready or now - last_housekeeping_s >= HOUSEKEEPING_INTERVAL_S:
                last_housekeeping_s = now
                if not self._housekeeping(now):
                    return

    def _housekeeping(self, now: float) -> bool:
        """Heartbeats, the directory's silence, the counters' report, overdue requests; False
        once the directory is gone."""
        if now - self.links.least_recent_send_s() > HEARTBEAT_INTERVAL_S or (
                self.tracer.enabled and now - self._last_clock_probe > CLOCK_PROBE_INTERVAL_S):
            self._last_clock_probe = now  # a heartbeat is also a clock round trip
            self._send(p.Heartbeat(self.tracer.now_ns()))
        silent_s, silent_endpoint = self.links.longest_silence(now)  # of any shard
        if silent_s > NODE_CUT_OFF_S:
            # this loop may have been busy (a release's diffs, the machine's load) while
            # the directory's answers queued: read them first (a Fenced among them says
            # if the directory gave this node up meanwhile)
            self._drain_directory()
            silent_s, silent_endpoint = self.links.longest_silence(time.monotonic())
        if silent_s > NODE_CUT_OFF_S and self._directory_alive:
            self._cut_off(f"the directory {silent_endpoint} has not answered for "
                          f"{silent_s:.1f} s: this node is cut off from the cluster")
        if not self._directory_alive:
            return False
        if now - self._last_report > STATS_REPORT_INTERVAL_S:
            self._last_report = now
            snap = self.stats.snapshot()
            self._send(p.NodeReport(snap["counters"], snap["latency_counts"], len(self.procs)))
        self._fail_overdue_requests(now)
        return True

    def _poll_timeout_ms(self) -> int:
        """Poll until the next timer is due, at most POLL_INTERVAL_MS."""
        timeout_s = POLL_INTERVAL_MS / 1000
        if self._unnamed_children:
            timeout_s = min(timeout_s, FORK_LOOKUP_INTERVAL_S)
        if self._removals:
            timeout_s = min(timeout_s, self._removals[0].deadline - time.monotonic())
        return max(0, math.ceil(timeout_s * 1000))

    def _run_timers(self, now: float) -> None:
        while self._removals and self._removals[0].deadline <= now:
            self._settle_removal(self._removals.pop(0))
        if self._unnamed_children:
            self._name_children(now)

    def _handle_shelved(self) -> None:
        """Handle the events read while an ioctl was retried (NodeMemory.shelved), now that the
        operation is over: their uffd may never poll readable again (a Fork read so would leave
        its child unadopted, its faults unserved). Handling them may shelve more: loop."""
        shelved = self.memory.shelved
        while shelved:
            proc = next(iter(shelved))
            del shelved[proc]
            self._handle_events(proc)

    def _dispatch(self, item: Any) -> None:
        if self.links.owns(item):
            self._drain_directory()
        elif self.peers is not None and item is self.peers.router:
            self._drain_peers()
        elif item in self.procs:
            proc = self.procs[item]
            try:
                proc.events.extend(proc.uffd.read_events())
            except UffdError as exc:
                log.warning("reading events of pid %s failed: %s", proc.pid, exc)
            self._handle_events(proc)
        elif self.clients.owns(item):
            self.clients.handle(item)
        elif item in self._departure_pidfds:
            pid = self._departure_pidfds.pop(item)
            self.poller.unregister(item)
            os.close(item)
            self._send(p.Departed(f"{self.node}:{pid}"))
        elif item in self._pidfds:
            proc = self._pidfds[item]
            log.info("workload process %s exited", proc.pid)
            self._forget_process(proc, give_back=True)
        elif item == self._parent_pidfd:
            log.error("the process this agent belongs to exited without stopping it: stopping "
                      "as if killed with it (no leave; the directory declares the node dead)")
            self.orphaned = True
            self._running = False

    def _send(self, msg: p.Message, page: Any = None) -> None:
        if not self._directory_alive:  # cut off: nothing reaches it any more
            return
        t = self.tracer.now() if self.tracer.enabled else None
        frames = p.encode(msg, page)
        try:
            shards = self.links.send(msg, frames)  # to the shard it belongs to
        except zmq.Again:
            self._cut_off(f"the directory {self.directory_endpoint} has taken no message for "
                          f"{NODE_CUT_OFF_S:.1f} s: this node is cut off from the cluster")
            return
        self.stats.count_message("to_directory", frames)
        if self.wire is not None:
            self.wire.count("sent", msg, frames)
        if t is not None:
            for shard in shards:  # each shard's link is its own (its messages counted apart)
                name = shard_name(shard)
                self.tracer.sent(self.link, name, name, msg, t)

    def _on_heartbeat(self, msg: p.Heartbeat, _: Any) -> None:
        if msg.echo_ns and self.tracer.enabled:
            self._clock_sample(msg.echo_ns / 1e9, msg.clock_ns)

    def _clock_sample(self, t0_s: float, directory_clock_ns: int) -> None:
        """A round trip to the directory that started at ``t0_s`` has just ended."""
        best = self.clock_sync.sample(t0_s, directory_clock_ns / 1e9, self.tracer.now())
        if best is not None:
            self.tracer.clock(DIRECTORY_LINK, best.offset_s, best.error_s)

    # --- the directory's messages ------------------------------------------------------------------
    def _drain_directory(self, until: type | None = None) -> bool:
        """Handle what the directory sent; True as soon as a message of type ``until`` came.
        Nothing the directory's side sends stops the agent: a message that is malformed, not
        expected, or names pages outside the region is dropped (the handlers validate before
        they change anything), with a rate-limited log line; so is any other failure."""
        for shard, frames in self.links.receive():  # every shard's, each noted as heard from
            msg: Any = None
            self.stats.count_message("from_directory", frames)
            try:
                msg, data = p.decode(frames, self.page_size, p.Direction.TO_NODE)
                if self.tracer.enabled:
                    self.tracer.received(shard_name(shard), self.link, shard_name(shard), msg)
                if self.wire is not None:
                    self.wire.count("received", msg, frames)
                if until is not None and isinstance(msg, until):
                    return True
                handler = self._dir_handlers.get(type(msg))
                if handler is None:
                    raise ProtocolError(f"the agent does not expect a {type(msg).__name__} "
                                        "from the directory now")
                handler(msg, data)
            except ProtocolError as exc:
                if msg is None and self.tracer.enabled:
                    self.tracer.received(shard_name(shard), self.link, shard_name(shard), None)
                self._complain(logging.WARNING, "malformed message from the directory: %.500s",
                               exc)
            except DsmError as exc:
                self._complain(logging.WARNING, "dropped a %s from the directory: %.500s",
                               type(msg).__name__, exc)
            except Exception:  # a bug some input reaches: drop the message, do not die of it
                self._complain(logging.ERROR, "failed to handle a %s from the directory",
                               type(msg).__name__, exc_info=True)
        return False

    def _drain_peers(self) -> None:
        """Pages other nodes sent here. As from the directory, nothing received stops the
        agent: a malformed or unexpected message is dropped with a rate-limited line."""
        router = self.peers.router
        while has_input(router):
            frames = router.recv_multipart(copy=False)
            msg: Any = None
            try:
                msg, data = p.decode(frames[1:], self.page_size, p.Direction.TO_PEER)
                if self.tracer.enabled:
                    self.tracer.received(msg.sender, self.node, msg.sender, msg)
                if self.wire is not None:
                    self.wire.count("received", msg, frames[1:])
                self.layout.check_page(msg.page + msg.count - 1)
                self._peer_handlers[type(msg)](msg, data)
            except ProtocolError as exc:
                self._complain(logging.WARNING, "malformed message from a peer: %.500s", exc)
            except DsmError as exc:
                self._complain(logging.WARNING, "dropped a %s from a peer: %.500s",
                               type(msg).__name__, exc)
            except Exception:  # a bug some input reaches: drop the message, do not die of it
                self._complain(logging.ERROR, "failed to handle a %s from a peer",
                               type(msg).__name__, exc_info=True)

    def _send_peer(self, peer: tuple[str, str], msg: p.Message, data: Any) -> bool:
        t = self.tracer.now() if self.tracer.enabled else None
        frames = p.encode(msg, data)
        if not self.peers.send(peer[0], peer[1], frames):
            return False
        self.stats.count_message("to_peers", frames)
        if self.wire is not None:
            self.wire.count("sent", msg, frames)
        if t is not None:
            self.tracer.sent(self.node, peer[0], peer[0], msg, t)
        return True

    def _cut_off(self, why: str) -> None:
        """The directory no longer serves this node: it fell silent for longer than this node
        may go on (``dsm.liveness``: the directory is about to hand this node's pages on), or it
        fenced it (declared dead, restarted). Nothing here can go on coherently. Fail loudly:
        every request waiting for it gets an error, every local workload process is killed."""
        if not self._directory_alive:
            return
        self._directory_alive = False
        self._running = False
        log.error("%s; failing this node's requests and stopping its workload processes "
                  "(SIGBUS)", why)
        self.forwarder.fail_all(why)
        self._kill_workload_processes(signal.SIGBUS)
        self.core.cut_off()  # the directory has reassigned these pages: nothing to hand back
        self.twins.clear()

    # the directory's answers and orders: the core decides, _carry_out does
    def _on_grant(self, msg: p.Grant, data: Any) -> None:
        self.layout.check_page(msg.page + msg.count - 1)
        self._carry_out(self.core.grant(msg, data, time.monotonic()))

    def _on_lost(self, msg: p.Lost, _: Any) -> None:
        self.layout.check_page(msg.page + msg.count - 1)
        self._carry_out(self.core.lost(msg, time.monotonic()))

    def _on_fetch(self, msg: p.Fetch, _: Any) -> None:
        self.layout.check_page(msg.page + msg.count - 1)
        peers = self.peers
        self._carry_out(self.core.fetch(
            msg, lambda addr: peers is not None and peers.reachable(msg.to_node, addr)))

    def _on_invalidate(self, msg: p.Invalidate, _: Any) -> None:
        self.layout.check_page(msg.page + msg.count - 1)
        self._carry_out(self.core.invalidate(msg))

    def _carry_out(self, actions: list) -> None:
        """Do what the core decided, in order, on the memfd, the uffds and the DEALER."""
        memory, size = self.memory, self.page_size
        failed_txn = None  # a page send to a peer that failed: its pages go to the directory
        taken: dict[tuple[int, int], bytes] = {}  # runs punched with their contents kept
        for a in actions:
            kind = type(a)
            if kind is act.Send:
                data = a.data
                if a.pages is not None:
                    data = taken.get(a.pages)
                    if data is None:
                        first, count = a.pages
                        data = os.pread(memory.memfd, count * size, first * size)
                msg = a.message
                if a.peer is not None:
                    if not self._send_peer(a.peer, msg, data):
                        failed_txn = msg.txn
                    continue
                if (failed_txn is not None and type(msg) is p.Fetched and msg.txn == failed_txn
                        and msg.payload == p.Payload.SENT):
                    # as if the peer had been unreachable from the start (with the contents
                    # read before the punch; or still here, a read copy kept)
                    msg = p.Fetched(msg.txn, msg.page, msg.count, p.Payload.DATA, [])
                    data = taken.get((msg.page, msg.count))
                    if data is None:
                        data = os.pread(memory.memfd, msg.count * size, msg.page * size)
                self._send(msg, data)
            elif kind is act.Install:
                src = a.data if a.data is not None else memoryview(memory.zeros)[: a.count * size]
                inst = a.installer
                woke = memory.install(a.first, a.count, src, a.writable,
                                      (inst.proc, inst.addr) if inst is not None else None)
                for w in a.wake:  # UFFDIO_COPY woke the installer's own waiters
                    if not (woke and w.proc is inst.proc and w.addr == inst.addr):
                        memory.wake(w.proc, w.addr)
            elif kind is act.Wake:
                memory.wake(a.proc, a.addr)
            elif kind is act.Upgrade:
                memory.protect_everywhere(a.first, a.count, wp=False)  # wakes the writers
            elif kind is act.Protect:
                memory.protect_everywhere(a.first, a.count, wp=True)
            elif kind is act.Unprotect:
                if not a.proc.uffd.closed:
                    memory.writeprotect(a.proc, a.page * size, size, wp=False)
            elif kind is act.Twin:
                self.twins.make(a.first, a.count)
            elif kind is act.SendDiff:
                spans, diff = self.twins.diff(a.first, a.count)
                self._send(p.Diff(a.req, a.first, a.count, spans,
                                  p.Payload.DATA if spans else p.Payload.NONE),
                           diff if spans else None)
            elif kind is act.DropTwins:
                self.twins.drop(a.first, a.count)
            elif kind is act.Punch:
                if a.keep:
                    taken[a.first, a.count] = os.pread(memory.memfd, a.count * size,
                                                       a.first * size)
                libc.punch_hole(memory.memfd, a.first * size, a.count * size)
            elif kind is act.Poison:
                memory.poison(a.waiter.proc, a.waiter.addr, a.waiter.thread_id)
            elif kind is act.Kill:
                self._kill_waiter(a.waiter, a.why)
            else:
                raise TypeError(f"the node core asked for an unknown action {a!r}")

    def _check_runs(self, flat: list[int]) -> None:
        """ProtocolError unless ``flat`` holds (first, count) runs of the region's pages."""
        if len(flat) % 2 or any(count < 1 or first + count > self.layout.num_pages
                                for first, count in zip(flat[::2], flat[1::2])):
            raise ProtocolError(f"write notices {flat[:8]!r:.80} are not runs of the region's "
                                f"{self.layout.num_pages} pages")

    def _on_answer(self, msg: Any, _: Any) -> None:
        if isinstance(msg, p.SyncReply) and msg.notices:  # an acquire: before the process goes on
            self._check_runs(msg.notices)
            self._carry_out(self.core.acquire_sync(msg.notices))
        if isinstance(msg, p.Allocated):
            if msg.offset + msg.nbytes > self.layout.size:  # the asking process gets an error
                msg = p.Error(msg.req, f"the directory allocated bytes {msg.offset:#x}+"
                                       f"{msg.nbytes:#x}, outside the region of "
                                       f"{self.layout.size:#x} bytes")
            else:
                self.core.allocated(msg.offset, msg.nbytes)
        if not self.forwarder.answer(msg) and isinstance(msg, p.Error):
            self._complain(logging.ERROR, "directory reported: %.500s", msg.message)

    # --- uffd events -------------------------------------------------------------------------------
    def _handle_events(self, proc: WorkloadProcess) -> None:
        while proc.events and not proc.uffd.closed:
            event = proc.events.popleft()
            try:
                self._event_handlers[type(event)](proc, event)
            except ProcessGone:
                self._forget_process(proc, give_back=True)
                return

    def _on_pagefault(self, proc: WorkloadProcess, ev: Pagefault) -> None:
        now = time.monotonic()
        if proc.pid is None and ev.thread_id:
            pid = thread_group_of(ev.thread_id)
            if pid is not None:
                self._name_process(proc, pid)
        page_addr = ev.addr - ev.addr % self.page_size
        offset = proc.offset_of(page_addr)
        if offset is None:
            log.error("fault at %#x in pid %s outside the region: waking it", ev.addr, proc.pid)
            self.memory.wake(proc, page_addr)
            return
        page = offset // self.page_size
        if self._removals and ev.kind is FaultKind.MISSING:
            self._protect_kept(page)  # a read copy DONTNEED may have unprotected, before the wake
        self._carry_out(self.core.fault(proc, page_addr, page, ev.rw, ev.kind, ev.thread_id, now))

    def _on_fork(self, proc: WorkloadProcess, ev: Fork) -> None:
        """Adopt the child's uffd. Its page tables are the parent's at the fork, with their
        write protection, but a read copy installed since (while this event waited, read in an
        ioctl's retry) is not protected there: protect every read copy on the child's uffd."""
        child = proc.forked(ev.uffd)
        self._add_process(child)
        self._unnamed_children[child] = time.monotonic() + FORK_LOOKUP_TIMEOUT_S
        self._name_children(time.monotonic())
        self.memory.protect_read_copies(child, self.core.read_copies())
        log.info("pid %s forked: adopted the child's uffd %d (pid %s)", proc.pid,
                 ev.uffd.fileno(), child.pid)

    def _fork_candidates(self, child: WorkloadProcess) -> list[int]:
        """The pids ``child`` may have: children of its parent that map the node's memfd (not,
        say, an exec'd helper) and that are not a known workload process."""
        parent = child.parent.pid if child.parent is not None else None
        if parent is None:
            return []
        known = {pr.pid for pr in self.procs.values()} | {os.getpid()}
        memfd = os.fstat(self.memory.memfd)
        return [c for c in children_of(parent) if c not in known and maps_file(c, memfd)]

    def _name_children(self, now: float) -> None:
        """Learn forked children's pids (to see them exit, and to kill them when the node is cut
        off, even if they never fault). One unknown candidate among its parent's children is the
        child; with several (threads forking at once), its first fault names it instead."""
        for child in list(self._unnamed_children):
            if child.pid is None:
                candidates = self._fork_candidates(child)
                if len(candidates) == 1:
                    self._name_process(child, candidates[0])
            if child.pid is not None:
                self._unnamed_children.pop(child, None)
            elif now >= self._unnamed_children[child]:
                log.info("the pid of a child forked by pid %s was not found within %.1f s: it is "
                         "learned at its first fault", child.parent.pid if child.parent else None,
                         FORK_LOOKUP_TIMEOUT_S)
                del self._unnamed_children[child]

    def _name_process(self, proc: WorkloadProcess, pid: int) -> None:
        """Learn ``proc``'s pid and watch for its exit."""
        proc.watch_pid(pid)
        self._unnamed_children.pop(proc, None)
        if proc.pidfd is not None:
            self._pidfds[proc.pidfd] = proc
            self.poller.register(proc.pidfd, zmq.POLLIN)

    def _on_remap(self, proc: WorkloadProcess, ev: Remap) -> None:
        proc.remap(ev.from_, ev.to, ev.len)
        self.stats.count("remaps")

    def _on_unmap(self, proc: WorkloadProcess, ev: Unmap) -> None:
        removed = proc.unmap(ev.start, ev.end)
        self.stats.count("unmaps")
        self._give_back_unmapped(removed)

    def _on_remove(self, proc: WorkloadProcess, ev: Remove) -> None:
        """madvise(MADV_REMOVE) punches the memfd right after this event is read, DONTNEED
        does not (on shared memory it keeps the data); the event does not say which. Without
        blocking the loop, check the pages the node holds REMOVE_SETTLE_S later (or at a fault on
        one before that): those the memfd no longer holds were removed."""
        self.stats.count("removes")
        pages = set()
        for offset, length in proc.region_ranges(ev.start, ev.end):
            first = offset // self.page_size
            last = (offset + length - 1) // self.page_size
            pages.update(pg for pg in range(first, last + 1) if pg in self.state)
        if pages:
            self._removals.append(Removal(proc, pages, time.monotonic() + REMOVE_SETTLE_S))

    def _protect_kept(self, page: int) -> None:
        """A fault on a page of a Remove event not told apart yet, which the memfd still holds:
        if it is a read copy, DONTNEED may have zapped its protection with its entry in the
        removing process; protect it there again before the fault is let through."""
        st = self.state.get(page)
        if st is None or not st.protected:
            return
        for removal in self._removals:
            if page in removal.pages and not removal.proc.uffd.closed:
                self.memory.writeprotect(removal.proc, page * self.page_size, self.page_size,
                                         wp=True)

    def _settle_removal(self, removal: Removal) -> None:
        gone = [pg for pg in removal.pages if pg in self.state and not self.memory.holds(pg)]
        if gone:
            self._discard(gone)
        if removal.proc.uffd.closed:
            return
        for pg in removal.pages:  # DONTNEED: the pages stay; keep read copies protected
            st = self.state.get(pg)
            if st is not None and st.protected:
                self.memory.writeprotect(removal.proc, pg * self.page_size, self.page_size, wp=True)

    # --- giving pages back -------------------------------------------------------------------------
    def _discard(self, pages: list[int]) -> None:
        for removal in self._removals:  # told apart already
            removal.pages.difference_update(pages)
        self._carry_out(self.core.discard(pages))

    def _give_back_unmapped(self, ranges: list[tuple[int, int]]) -> None:
        candidates = set()
        for offset, length in ranges:
            first = offset // self.page_size
            last = (offset + length - 1) // self.page_size
            candidates.update(pg for pg in range(first, last + 1) if pg in self.state)
        unmapped = [
            pg for pg in candidates
            if not any(pr.covers(pg * self.page_size) for pr in self.procs.values())
        ]
        self._give_back(unmapped)

    def _give_back(self, pages: list[int]) -> None:
        """Hand pages back (not those a request is out for): owned ones with their contents."""
        self._carry_out(self.core.give_back(pages))

    # --- workload processes ------------------------------------------------------------------------
    def _add_process(self, proc: WorkloadProcess) -> None:
        self.procs[proc.uffd.fileno()] = proc
        self.poller.register(proc.uffd.fileno(), zmq.POLLIN)
        if proc.pidfd is not None:
            self._pidfds[proc.pidfd] = proc
            self.poller.register(proc.pidfd, zmq.POLLIN)

    def _forget_process(self, proc: WorkloadProcess, give_back: bool) -> None:
        fd = proc.uffd.fileno() if not proc.uffd.closed else None
        if fd is not None and fd in self.procs:
            self.poller.unregister(fd)
            del self.procs[fd]
        if proc.pidfd is not None and proc.pidfd in self._pidfds:
            self.poller.unregister(proc.pidfd)
            del self._pidfds[proc.pidfd]
        ranges = [(m.offset, m.length) for m in proc.mappings]
        proc.mappings = []
        proc.close()
        self.core.process_gone(proc)  # its waiters and read-ahead streams
        self.memory.shelved.pop(proc, None)
        self._unnamed_children.pop(proc, None)
        if give_back:
            self._give_back_unmapped(ranges)

    def _watch_departures(self, pid: int) -> None:
        if pid in self._departure_pidfds.values():
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._send(p.Departed(f"{self.node}:{pid}"))
            return
        self._departure_pidfds[pidfd] = pid
        self.poller.register(pidfd, zmq.POLLIN)

    def _register(self, pid: int, uffd: Uffd) -> None:
        """A workload process attached: serve its faults; it maps the whole region at the base."""
        proc = WorkloadProcess(uffd, pid, [Mapping(self.layout.base, self.layout.size, 0)])
        self._add_process(proc)
        self.memory.protect_read_copies(proc, self.core.read_copies())

    # --- failure -----------------------------------------------------------------------------------
    def _kill_workload_processes(self, sig: int) -> None:
        """Send ``sig`` to every workload process of the node: the attached ones and their
        forked children, those that never faulted included (a child whose pid is not known yet
        is looked up among its parent's children now)."""
        for proc in list(self.procs.values()):
            if proc.pidfd is not None:  # safe from pid reuse
                try:
                    signal.pidfd_send_signal(proc.pidfd, sig)
                except ProcessLookupError:
                    pass
                continue
            pids = [proc.pid] if proc.pid else self._fork_candidates(proc)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    def _fail_overdue_requests(self, now: float) -> None:
        """Kill, loudly, the processes whose page request went unanswered too long (looked at
        every OVERDUE_CHECK_INTERVAL_S: the deadline is seconds, the loop turns far faster)."""
        if now - self._last_overdue_check < OVERDUE_CHECK_INTERVAL_S:
            return
        self._last_overdue_check = now
        self._carry_out(self.core.overdue(now, REQUEST_TIMEOUT_S))

    def _kill_waiter(self, w: Any, why: str) -> None:
        pid = w.proc.pid or thread_group_of(w.thread_id)
        log.error("%s (directory %s): killing pid %s, which waits for it (SIGBUS)", why,
                  self.directory_endpoint, pid)
        if pid:
            try:
                os.kill(pid, signal.SIGBUS)
            except ProcessLookupError:
                pass


def run_agent(directory: str, node: str, socket_path: str, trace_path: str | None = None,
              ready_fd: int | None = None, parent_pid: int | None = None,
              keys_dir: str | None = None, metrics_port: int | None = None,
              peer_listen: str | None = None, advertise: str | None = None) -> int:
    try:
        keys_path = keys_dir_from(keys_dir)
        keys = load_client_keys(keys_path, node) if keys_path is not None else None
        peer_keys = load_peer_keys(keys_path, node) if keys_path is not None else None
        agent = Agent(directory, node, socket_path, trace_path, parent_pid, keys,
                      peer_listen or os.environ.get(PEER_LISTEN_ENV) or None,
                      advertise or os.environ.get(ADVERTISE_ENV) or None, peer_keys)
        if metrics_port is not None:
            from dsm.metrics import MessageCounts, NodeCollector, serve

            agent.wire = MessageCounts()
            port = serve(metrics_port, NodeCollector(node, agent.stats.snapshot, agent.wire))
            log.info("node %s: metrics on port %d", node, port)
    except DsmError as exc:
        log.error("%s", exc)
        print(f"dsm agent: {exc}", flush=True)
        if ready_fd is not None:  # whoever waits for the agent learns why it did not start
            os.write(ready_fd, f"error {type(exc).__name__}: {exc}\n".encode())
            os.close(ready_fd)
        return 2
    except OSError as exc:  # the metrics port could not be bound
        print(f"dsm agent: cannot serve metrics on port {metrics_port}: {exc}", flush=True)
        return 2
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
    if not agent._directory_alive:
        return EXIT_CUT_OFF
    return 0 if acknowledged else EXIT_LEAVE_UNACKNOWLEDGED
