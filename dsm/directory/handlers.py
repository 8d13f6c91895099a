"""What the directory does with each message from a node, once its ZeroMQ loop (``service.py``)
has decoded it and found the node's session (a Hello before that):

- the pages' messages go to the page-state machine (``dsm/directory/pages/``);
- a node's session starts with its Hello (a name in use by a live node is refused, a restart
  ends the old incarnation), ends with its Bye or its death (``_declare_dead``: fenced, its pages
  here lost, every shard told);
- locks and barriers go to the ``SyncTable``, their write notices to ``WriteNotices``: a release
  hands its notices over first, every reply that ends an acquire carries them
  (``SyncRequests``, ``syncrequests.py``, which the simulator serves through too);
- an Alloc is answered once every shard knows a new array, a LostQuery or ForgetLost once every
  shard told its lost pages, and ``dsm top`` is told this process's view (``stats_report``).

``MessageHandlers`` is mixed into ``DirectoryService``: its methods use the state the service
makes (layout, pages, sync, notices, sessions, allocations, node reports, tracer), its sending
(``_send_all``, ``_send_to``) and its role (``dsm/directory/shard/``), which calls some of them
back (``_on_hello``, ``_declare_dead``, ``lost_answer``, ``stats_report``, ``traced_array``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from dsm import protocol as p
from dsm.directory.allocations import Allocation
from dsm.directory.pages import Send, page_handlers
from dsm.directory.stats import report as stats_report
from dsm.errors import DsmError

log = logging.getLogger(__name__)


class MessageHandlers:
    """The handlers of ``DirectoryService`` (see the module docstring)."""

    def _node_handlers(self) -> dict[type, Callable[[str, Any, Any], list[Send]]]:
        """What each message from a node with a session does: (node, message, page data) ->
        the messages to send."""
        return {
            **page_handlers(self.pages, self.layout.page_size),
            p.Discard: self._on_discard,
            p.Alloc: self._on_alloc,
            # the node knows we live, and learns our clock (dsm.clocksync)
            p.Heartbeat: lambda n, m, d: [Send(n, p.Heartbeat(self.tracer.now_ns(), m.clock_ns))],
            p.Bye: self._on_bye,
            **self.syncreq.handlers(),
            p.LostQuery: lambda n, m, d: self.role.lost(n, m.req, 0, self.layout.num_pages, None),
            p.ForgetLost: self._on_forget_lost,
            p.NodeReport: lambda n, m, d: self.node_reports.add(n, m) or [],
            p.Free: lambda n, m, d: self.programs.free(n, m),
            p.ArraysQuery: lambda n, m, d: self.programs.arrays(n, m),
            p.Atomic: lambda n, m, d: self.programs.atomic(n, m),
            p.Collective: lambda n, m, d: self.programs.collective(n, m),
            # the dynamic manager's messages, and what it refuses (dsm/directory/pages/dynamic.py)
            **(self.dynamic.service_handlers(self._on_alloc) if self.dynamic else {}),
        }

    def _node_gone(self, node: str, how: str) -> list[Send]:
        """``node`` left or died (``how``): what it held, waited for and was part of."""
        self.node_reports.forget(node)
        out = (self.dynamic or self.pages).node_lost(node) + self.programs.node_gone(node, how)
        return out + self.syncreq.gone(node)

    def _reclaim(self, alloc: Allocation) -> list[Send]:
        """A freed array nobody holds: its pages become zeros everywhere, every shard is told,
        and its memory is free for the next array."""
        first, count = alloc.pages(self.layout.page_size)
        out = self.pages.reclaim(first, count)
        self.role.freed(alloc)
        self.allocations.reclaim(alloc)
        log.info("array %r reclaimed: %d pages at %#x are free again%s", alloc.name, count,
                 alloc.offset, " (a release-consistency array's addresses are not reused)"
                 if alloc.release else "")
        return out

    def _declare_dead(self, node: str, why: str, report: bool = True) -> None:
        """``node`` is dead: fenced, its pages here lost, and every shard told (``report``
        False: the coordinator told us)."""
        log.error("node %s declared dead: %s", node, why)
        session = self.sessions.end(node, f"node {node} was declared dead: {why}")
        self._send_all(self.syncreq.replies(self.sync.job_member_died(node, why)))  # its job's
        self._send_all(self._node_gone(node, "died"))
        if session is not None:  # if it still listens, it learns why it is no longer served
            self._send_to(session.identity, p.Fenced(self.sessions.epoch,
                                                     self.sessions.why_fenced(session.identity)))
            self.role.dead(node, session.incarnation, why, told=not report)

    def _reachable(self, identity: bytes) -> bool:
        """Whether a peer is still connected (ROUTER_MANDATORY refuses to route to a peer whose
        connection closed: a killed process's kernel closes its sockets at once)."""
        return self._send_to(identity, p.Heartbeat())

    def _on_hello(self, identity: bytes, msg: p.Hello) -> list[Send]:
        node = msg.node
        if self.role.hold_hello(identity, msg):  # shards missing, or not admitted yet
            return []
        lay = self.layout
        welcome = p.Welcome(lay.base, lay.size, lay.page_size, self.sessions.epoch,
                            self.tracer.now_ns(), self.pages.direct, self.role.welcome_shards(),
                            dynamic=self.dynamic is not None)
        old = self.sessions.get(node)
        if old is not None and old.identity == identity:  # a repeated Hello: answer it again
            return [Send(node, welcome)]
        if self.sessions.is_fenced(identity):
            self._send_to(identity, p.Fenced(self.sessions.epoch, self.sessions.why_fenced(identity)))
            return []
        if old is not None and not self.role.coordinator:
            # the coordinator admitted this incarnation: it found the old one gone
            self._declare_dead(node, f"the coordinator admitted incarnation {msg.incarnation:x} "
                                     f"in place of {old.incarnation:x}", report=False)
        elif old is not None:
            if self._reachable(old.identity):
                reason = (f"node name {node!r} is in use by a live node (agent pid {old.pid}, "
                          f"incarnation {old.incarnation:x}): give this node another name "
                          "(--node / DSM_NODE)")
                # a peer can say this again and again: rate-limited
                self._complain(logging.ERROR, "refused a second node named %r (agent pid %d): "
                               "the first (pid %d) is alive", node, msg.pid, old.pid)
                self._send_to(identity, p.Fenced(self.sessions.epoch, reason))
                return []
            # the old incarnation's connection is gone: it died, and this is its restart
            self._declare_dead(node, f"it restarted (incarnation {old.incarnation:x} -> "
                                     f"{msg.incarnation:x}) without leaving")
        if self.pages.direct and not msg.endpoint:
            log.warning("node %s serves no peer endpoint (--peer-listen none): the pages it "
                        "asks for come through the directory, a round trip more each", node)
        log.info("node %s joined (agent pid %d, incarnation %x%s)", node, msg.pid,
                 msg.incarnation, f", peer endpoint {msg.endpoint}" if msg.endpoint else "")
        self.sessions.start(node, identity, msg.incarnation, msg.pid, time.monotonic())
        if msg.rank >= 0:
            self.sync.enroll(node, msg.job, msg.rank, msg.size)
        self.pages.node_joined(node, msg.endpoint)
        self.syncreq.joined(node)
        self.role.admitted(node, msg.incarnation)  # every shard hears it before the node
        return [Send(node, welcome)]

    def _on_bye(self, node: str, msg: p.Bye, _: Any) -> list[Send]:
        log.info("node %s left", node)
        out = self._node_gone(node, "left the cluster")
        session = self.sessions.end(node, f"node {node} left the cluster")
        # the acknowledgement comes after everything the node sent before: all it handed back
        self._send_to(session.identity, p.Bye())
        return out

    def _on_discard(self, node: str, msg: p.Discard, _: Any) -> list[Send]:
        for page in msg.pages:  # all of them first: a bad one must not leave half done
            self.layout.check_page(page)
        out: list[Send] = []
        for page in msg.pages:
            out += self.pages.discard(node, page)
        return out

    def _lost_ranges(self, runs: list[tuple[int, int, str]]) -> list[list]:
        """Lost page runs as [array, start byte, end byte, dead node], per array."""
        size = self.layout.page_size
        out: list[list] = []
        for first, count, dead in runs:
            page = first
            while page < first + count:
                alloc = self.allocations.at(page * size)
                if alloc is None:  # pages outside every array: named by region offset
                    out.append(["", page * size, (page + 1) * size, dead])
                    page += 1
                    continue
                end_page = min(first + count, (alloc.offset + alloc.nbytes + size - 1) // size)
                start = page * size - alloc.offset
                out.append([alloc.name, start, min(end_page * size - alloc.offset, alloc.nbytes),
                            dead])
                page = end_page
        return out

    def _on_forget_lost(self, node: str, msg: p.ForgetLost, _: Any) -> list[Send]:
        alloc = self.allocations.get(msg.name)
        if alloc is None:
            return [Send(node, p.Error(msg.req, f"forget_lost: there is no array named {msg.name!r}"))]
        size = self.layout.page_size
        return self.role.lost(node, msg.req, alloc.offset // size,
                              (alloc.nbytes + size - 1) // size, msg.name)

    def lost_answer(self, node: str, req: int, runs: list[tuple[int, int, str]],
                    forgot: str | None) -> list[Send]:
        """The LostReport of ``runs`` (from every shard: merged here), forgotten from array
        ``forgot`` (ForgetLost) or not (LostQuery)."""
        runs = _merged(runs)
        if forgot and runs:
            log.warning("node %s forgot the lost pages of array %r (%d pages): they read as "
                        "zeros from now on", node, forgot, sum(n for _, n, _ in runs))
        return [Send(node, p.LostReport(req, self._lost_ranges(runs)))]

    def stats_report(self, req: int) -> p.StatsReport:
        """What ``dsm top`` is told, from this process's pages (the coordinator adds the other
        shards')."""
        return stats_report(req, self.node_reports, sorted(self.sessions.by_node), self.pages,
                            self.allocations, self.layout.page_size)

    def _on_alloc(self, node: str, msg: p.Alloc, _: Any) -> list[Send]:
        count_before = len(self.allocations)
        create = {p.CreateMode.EITHER: None, p.CreateMode.ATTACH: False,
                  p.CreateMode.CREATE: True}[p.CreateMode(msg.create)]
        try:
            if self.allocations.get(msg.name) is None:
                self.programs.check_new_name(msg.name)
            a = self.allocations.find_or_create(msg.name, msg.nbytes, msg.meta, create)
        except DsmError as exc:
            return [Send(node, p.Error(msg.req, str(exc)))]
        self.programs.attached(node, a)
        def answer(why: str | None) -> None:
            self._send_all([Send(node, p.Error(msg.req, why) if why else
                                 p.Allocated(msg.req, a.offset, a.nbytes, a.meta))])

        if len(self.allocations) > count_before:
            self.traced_array(a)
            self.role.allocated(a, answer)  # the shards know the array first
        else:
            self.role.when_known(a.name, answer)
        return []

    def traced_array(self, a: Allocation) -> None:
        if self.tracer.enabled:  # names the pages for the views (dsm trace --html)
            size = self.layout.page_size
            self.tracer.array(a.name, a.offset // size, max(1, (a.nbytes + size - 1) // size))


def _merged(runs: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Lost runs sorted, neighbours of one dead node joined (each shard's end at stripes)."""
    out: list[tuple[int, int, str]] = []
    for first, count, dead in sorted(tuple(r) for r in runs):
        if out and out[-1][0] + out[-1][1] == first and out[-1][2] == dead:
            out[-1] = (out[-1][0], out[-1][1] + count, dead)
        else:
            out.append((first, count, dead))
    return out

