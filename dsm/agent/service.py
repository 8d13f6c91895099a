"""The node agent: one process per node that owns the node's memfd, the uffd of every workload
process of the node, and all of the node's networking.

One thread runs one poll loop over the directory's DEALER socket, the Unix socket workloads attach
through, every uffd and every pidfd. Faults become page requests; several may be outstanding at
once, and while the node waits for a page it keeps answering the directory for the pages it owns.

Local page states: absent (invalid), SHARED (a read copy: write-protected on every local uffd) and
EXCLUSIVE (owned, writable). The data lives in the memfd, so every local process sees one copy.

This module is the agent's wiring and its loop: serving until stopped, the timers (heartbeats,
the directory's silence, the counters' report, overdue requests), leaving, and failing the node
once it is cut off. What the loop hands on: the workload processes and their uffd events to
``dsm/agent/workloads.py``; the directory's and the peers' messages, and the node core's actions,
to ``dsm/agent/messaging.py`` (which delivers them through the node's inbox,
``dsm/core/inbox.py``). The join is ``dsm/agent/join.py``'s; the process around the agent (its
checks before it starts, its exit status) is ``dsm/agent/run.py``'s.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from typing import Any

import zmq

from dsm import protocol as p
from dsm.clocksync import ClockSync
from dsm.agent.clients import ClientHub
from dsm.agent.forwarding import Forwarder
from dsm.agent.messaging import Messaging
from dsm.agent.twins import Twins
from dsm.agent.links import ShardLinks
from dsm.agent.memory import NodeMemory
from dsm.agent.join import COORDINATOR_LINK, hello, join, node_core
from dsm.agent.launch import NO_PEER_ENDPOINT
from dsm.agent.peers import PeerEndpoint, default_listen
from dsm.agent.workloads import Workloads
# REMOVE_SETTLE_S is imported from here too (it was defined here before dsm/core/events.py)
from dsm.core.events import REMOVE_SETTLE_S as REMOVE_SETTLE_S
from dsm.core.kernel import KernelCalls
from dsm.agent.processes import WorkloadProcess
from dsm.core.stats import NodeStats
from dsm.directory.sessions import new_random_id
from dsm.keys import ClientKeys, ServerKeys
from dsm.layout import Layout
from dsm.reliability import session_totals
from dsm.core.timers import AgentTimers
from dsm.liveness import HOUSEKEEPING_INTERVAL_S, NODE_CUT_OFF_S
from dsm.logthrottle import throttle_module_logs
from dsm.trace import Tracer

log = logging.getLogger(__name__)


#: how long leaving may wait for requests in flight and for the directory's acknowledgement
LEAVE_TIMEOUT_S = 5.0
POLL_INTERVAL_MS = 100
#: how often the node's counters go to the directory (for dsm top)
STATS_REPORT_INTERVAL_S = 1.0
#: while tracing, a heartbeat (a clock round trip) at least this often, even when busy
CLOCK_PROBE_INTERVAL_S = 2.0


#: how long a cut-off agent waits for the workload processes it killed (SIGBUS) to exit before
#: it closes their connections: a watchdog that saw its connection close first would take the
#: agent for dead, say so (a second, wrong, line about the failure) and SIGKILL a process
#: already dying of SIGBUS; a process dies of it within milliseconds, even one waiting on a fault
KILLED_EXIT_WAIT_S = 1.0


class Agent:
    def __init__(self, directory: str, node: str, socket_path: str, trace_path: str | None = None,
                 parent_pidfd: int | None = None, keys: ClientKeys | None = None,
                 peer_listen: str | None = None, advertise: str | None = None,
                 peer_keys: ServerKeys | None = None):
        """``parent_pidfd``: a pidfd of the process this agent belongs to (``dsm.agent.run``):
        when it exits, the agent stops as if killed with it; the agent closes it."""
        self._parent_pidfd = parent_pidfd
        #: the parent died: the agent stops without leaving
        self.orphaned = False
        self.node = node
        self.directory_endpoint = directory
        self.socket_path = socket_path
        self.stats = NodeStats()
        self.tracer = Tracer(trace_path, node)
        #: tells this run of the agent from an earlier one under the same name
        self.incarnation = new_random_id()
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
        # a DEALER per manager shard (dsm/agent/links.py), the coordinator's first: CURVE with
        # this node's key, pinning the directory's (open without keys); a shard that takes no
        # message for NODE_CUT_OFF_S cuts the node off, rather than block the loop forever
        self.links = ShardLinks(self._ctx, p.identity(node, self.incarnation), directory, keys,
                                int(NODE_CUT_OFF_S * 1000))
        peer_address = self.peers.address if self.peers is not None else None
        welcome = join(self.links, hello(node, self.incarnation, peer_address or ""), directory,
                       self.tracer, self.link, self._clock_sample)  # (dsm/agent/join.py)
        self.epoch = welcome.epoch  #: the directory's
        self.layout = Layout(welcome.base, welcome.size, welcome.page_size)
        self.page_size = self.layout.page_size
        self.procs: dict[int, WorkloadProcess] = {}  # uffd fd -> process
        self.memory = NodeMemory(node, self.layout, self.procs,
                                 lambda proc: self.workloads.forget(proc, give_back=False))
        #: the kernel's answers handled, as the simulator handles them (``dsm/core/kernel.py``)
        self.kernel = KernelCalls(self.memory)
        #: the node's coherence state and decisions (dsm/core): this loop only carries them out
        self.core = node_core(welcome, node, self.layout, peer_address, directory, self.tracer,
                              self.stats)
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

    # --- joining and leaving ---------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        self._running = False

    def close(self) -> bool:
        """Leave: let the transactions in flight finish (its requests; as an owner, its transfers:
        ``NodeCore.in_flight``), hand every page back (owned ones with their
        contents), say Bye and wait for the directory to acknowledge it (it answers in order, so
        the acknowledgement means every page handed back has arrived). False if it did not."""
        deadline = time.monotonic() + LEAVE_TIMEOUT_S
        while (self.core.in_flight() and time.monotonic() < deadline
               and self.messaging.directory_serving):
            for item, _ in self.poller.poll(POLL_INTERVAL_MS):  # the shards' and the peers'
                if self.links.owns(item) or self.peers is not None and item is self.peers.router:
                    self._dispatch(item)
        self.messaging.carry_out(self.core.give_back(list(self.state)))
        self.messaging.inbox.said_bye = True
        self.messaging.send(p.Bye())  # to every shard: each acknowledges it
        byes = 0
        while (byes < self.links.count and time.monotonic() < deadline
               and self.messaging.directory_serving):
            if self.links.poll(POLL_INTERVAL_MS):
                byes += self.messaging.drain_directory(until=p.Bye)
        acknowledged = byes == self.links.count
        if not acknowledged and self.messaging.inbox.directory_closing is not None:
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
        links = [s.link for s in self.links.sessions]
        if self.peers is not None:
            links += self.peers.links()
        for key, n in session_totals(links).items():  # set, not added (a Counter's update adds)
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
        self.workloads.await_exits(KILLED_EXIT_WAIT_S)
        self.core.cut_off()  # the directory has reassigned these pages: nothing to hand back
        self.twins.clear()
