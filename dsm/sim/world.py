"""A deterministic simulation of a cluster: the real node cores (``dsm.core.node``) and the real
page directory (``dsm.directory.pages``) in one process, with a seeded scheduler in place of the
network, the kernel and time.

The scheduler delivers messages in any order ZeroMQ allows — first in, first out per pair of
sockets, nothing more — interleaved with the workload threads' reads and writes, node deaths
(a killed node's unsent messages are lost, a prefix of them may still arrive) and the
directory's noticing them. After every step it checks the invariants:

- one writer or many readers: a page is EXCLUSIVE on at most one live node, and then held by
  no other;
- every copy a live node holds is current: its bytes are the last value written;
- every read returns the last completed write (memory steps are atomic here, so this is
  sequential consistency itself), or fails loudly (a lost page), never an older value or zeros;
- nothing hangs: once no message is in flight, every live thread has finished.

With ``release_pages=K`` the first K pages are release-consistency pages (``dsm.sim.release``):
data-race-free programs with locks and barriers run on them, each read checked against the last
write before it in the schedule (DRF-SC), copies there may be stale until an acquire.

A failure raises ``SimulationFailure`` with the seed and the schedule's last steps; the same
seed replays it exactly (``python -m dsm.sim --seed N``).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from dsm import protocol as p
from dsm.core.readahead import ReadAhead
from dsm.core import actions as a
from dsm.core.node import NodeCore
from dsm.core.shards import shard_of
from dsm.core.states import OWNED
from dsm.directory.pages import OnLoss, PageDirectory
from dsm.layout import Layout
from dsm.managers import Manager
from dsm.sim import programs
from dsm.sim import release as rc
from dsm.sim.model import PAGE_BYTES, SLOT, SLOT_BYTES, SLOTS_PER_PAGE, SimulationFailure
from dsm.uffd.events import Access, FaultKind

#: the largest read-ahead window of the model's nodes (small: the pages are few)
READAHEAD_PAGES = 4
#: the directory's name on the model's network (a shard's: DIRECTORY + its number)
DIRECTORY = "directory"
#: pages per shard stripe in the model (the real one, 256, would put every page on one shard)
STRIPE_PAGES = 2
#: how many steps of the schedule a failure report shows
REPORT_STEPS = 60
#: how often the agent is descheduled after a send, the rest of its actions pending
DEFER_AFTER_SEND = 0.3
#: a run that takes more steps than this per operation is taken to be livelocked
MAX_STEPS_PER_OP = 200

_SLOT = SLOT


@dataclass(eq=False)
class Thread:
    node: "SimNode"
    tid: int
    #: (r|w, location, value to write), or a lock's or barrier's (kind, lock or phase, 0)
    ops: list[tuple[str, int, int]]
    next_op: int = 0
    blocked_on: int | None = None  #: the page it faulted on
    #: the lock or barrier request it waits for the answer to (its kind)
    waits_for: str | None = None

    @property
    def done(self) -> bool:
        return self.next_op >= len(self.ops)

    @property
    def runnable(self) -> bool:
        return not self.done and self.blocked_on is None and self.waits_for is None


@dataclass(eq=False)
class SimNode:
    """A node: its core, its memory (page -> bytes; absent is a hole), the pages write-protected
    in its one workload process, its threads."""

    name: str
    core: NodeCore
    memory: dict[int, bytearray] = field(default_factory=dict)
    wp: set[int] = field(default_factory=set)
    poisoned: set[int] = field(default_factory=set)
    threads: list[Thread] = field(default_factory=list)
    alive: bool = True
    #: actions the agent has yet to carry out after a send: the receiver may act on the
    #: message first, and this node's threads go on with what its memory holds meanwhile
    deferred: list = field(default_factory=list)
    #: runs punched with their contents kept, for the sends that follow (``Punch.keep``)
    taken: dict = field(default_factory=dict)
    #: release pages' twins: their bytes at their first write since the last release
    twins: dict[int, bytes] = field(default_factory=dict)
    #: lock and barrier requests sent, by request id: the thread waiting for the answer
    sync_waiters: dict[int, Thread] = field(default_factory=dict)
    next_req: int = 1
    #: release locations written since the last release, and those of releases not answered
    #: yet (by request id): the writes a death may lose
    unreleased: set[int] = field(default_factory=set)
    releasing: dict[int, tuple[set[int], set[int]]] = field(default_factory=dict)
    #: release pages twinned since the last release (their Dirtied may be at the directory,
    #: which loses them with this node unless their Diff came), and those of each release
    #: not answered yet (with ``releasing``)
    twinned: set[int] = field(default_factory=set)


class World(rc.ReleaseSimulation):
    def __init__(self, seed: int, nodes: int = 3, pages: int = 6, threads_per_node: int = 1,
                 ops_per_thread: int = 12, deaths: int = 0, on_loss: OnLoss = OnLoss.POISON,
                 bands: bool = False, manager: str = "relay", give_backs: bool = False,
                 shards: int = 1, direct: bool | None = None, release_pages: int = 0,
                 phases: int = programs.DEFAULT_PHASES):
        if release_pages > pages:
            raise ValueError(f"{release_pages} release pages of {pages}")
        self.seed = seed
        self.rng = random.Random(seed)
        self.layout = Layout(0x6000_0000_0000, pages * PAGE_BYTES, PAGE_BYTES)
        self.num_pages = pages
        self.clock = 0.0
        #: "relay": pages through the directory; "central": node to node (``PageDirectory``)
        self.manager = manager
        #: nodes hand pages back now and then (unmaps, leaves)
        self.give_backs = give_backs
        # pages node to node: as the manager does, unless told (the cores support it sharded)
        direct = Manager(manager).direct if direct is None else direct
        #: pages from 0 up to this one are release-consistency pages, the others sequential
        self.release_pages = release_pages
        #: the manager's shards (one: the central or relay manager), by their network names
        self.shards = shards
        self.directories = {
            (DIRECTORY if shards == 1 else f"{DIRECTORY}{k}"): PageDirectory(
                self.layout, on_loss=on_loss, clock=lambda: self.clock, direct=direct,
                shard=k, shards=shards, stripe=STRIPE_PAGES,
                is_release=self.is_release)
            for k in range(shards)}
        self._shard_names = list(self.directories)
        self.directory = self.directories[self._shard_names[0]]
        #: the coordinator's locks, barriers and write notices (shard 0, or the one directory)
        self.coordinator = rc.Coordinator(pages, lambda: self.clock)
        self._programs = (programs.drf_programs(
            self.rng, nodes * threads_per_node, range(release_pages * SLOTS_PER_PAGE),
            range(release_pages * SLOTS_PER_PAGE, pages * SLOTS_PER_PAGE), ops_per_thread,
            phases) if release_pages else None)
        #: the barrier's parties: every thread
        self.parties = nodes * threads_per_node
        self.channels: dict[tuple[str, str], deque] = {}
        self.truth = [0] * (pages * SLOTS_PER_PAGE)  #: the last completed write per location
        self.lost_locations: set[int] = set()
        #: release pages whose newest contents may have died with a node (``Dirtied``)
        self.maybe_lost_release_pages: set[int] = set()
        #: release location -> the values a read may return besides the last write: a dead
        #: node's writes it may not have released, and what was there before them
        self.after_death: dict[int, set[int]] = {}
        #: release location -> its writes so far, as (value, node), in order
        self.writes: dict[int, list[tuple[int, str]]] = {}
        self.schedule: list[str] = []
        self.deaths_left = deaths
        self.unnoticed_dead: list[str] = []
        self.nodes: dict[str, SimNode] = {}
        self._touched: set[int] | None = None
        for i in range(nodes):
            name = f"n{i}"
            node = SimNode(name, None)  # type: ignore[arg-type]
            node.core = NodeCore(name, pages, PAGE_BYTES, ReadAhead(READAHEAD_PAGES),
                                 holds=lambda pg, node=node: pg in node.memory)
            node.core.direct = direct
            node.core.set_shards(shards, STRIPE_PAGES)
            for d in self.directories.values():
                d.node_joined(name, peer=f"sim://{name}")
            self.coordinator.joined(name)
            for t in range(threads_per_node):
                if release_pages:  # the programs join their barrier first: a death breaks it
                    self.coordinator.sync.join(name, 0, rc.BARRIER, self.parties,
                                               rc.holder(name, t + 1))
                kinds_locs = (self._programs[i * threads_per_node + t] if self._programs
                              else self._bands(ops_per_thread) if bands else [
                                  (self.rng.choice("rw"), self.rng.randrange(pages * SLOTS_PER_PAGE))
                                  for _ in range(ops_per_thread)])
                ops = [(kind, loc, (i + 1) * 1_000_000 + t * 10_000 + k + 1)  # unique per write
                       for k, (kind, loc) in enumerate(kinds_locs)]
                node.threads.append(Thread(node, t + 1, ops))
            self.nodes[name] = node
        self.ops_total = sum(len(t.ops) for n in self.nodes.values() for t in n.threads)

    def is_release(self, page: int) -> bool:
        return page < self.release_pages

    def _bands(self, n: int) -> list[tuple[str, int]]:
        """Reads of a run of pages in order, then writes of them in order (a stencil's band),
        again and again: sequential faults open read-ahead and upgrade whole runs."""
        out: list[tuple[str, int]] = []
        while len(out) < n:
            first = self.rng.randrange(self.num_pages)
            run = range(first, min(self.num_pages, first + self.rng.randint(2, 6)))
            slot = self.rng.randrange(SLOTS_PER_PAGE)
            out += [("r", pg * SLOTS_PER_PAGE + slot) for pg in run]
            out += [("w", pg * SLOTS_PER_PAGE + slot) for pg in run]
        return out[:n]

    # --- the network -------------------------------------------------------------------------------
    def _send(self, src: str, dst: str, msg: p.Message, data: bytes | None) -> None:
        if dst not in self.directories and not self.nodes[dst].alive:
            self._mark_lost_with(msg)  # what it carries dies with its receiver
        self.channels.setdefault((src, dst), deque()).append((msg, data))

    def _deliver(self, pair: tuple[str, str]) -> None:
        src, dst = pair
        msg, data = self.channels[pair].popleft()
        self._touch(msg)
        self._step(f"deliver {type(msg).__name__} {src}->{dst}: {msg}")
        if dst in self.directories:
            self._to_directory(dst, src, msg, data)
        elif self.nodes[dst].alive:
            self._to_node(self.nodes[dst], msg, data)
        else:
            self._mark_lost_with(msg)

    def _to_directory(self, shard: str, node: str, msg: p.Message, data: bytes | None) -> None:
        d = self.directories[shard]
        if isinstance(msg, p.Acquire):
            out = d.acquire(node, msg.page, msg.count, msg.write, msg.have_copy)
        elif isinstance(msg, p.Fetched):
            out = d.fetched(node, msg.txn, msg.page, msg.count, msg.payload, data, msg.not_held,
                            msg.unwritten)
        elif isinstance(msg, p.Invalidated):
            out = d.invalidated(node, msg.txn, msg.page, msg.count)
        elif isinstance(msg, p.Writeback):
            out = d.writeback(node, msg.page, msg.count, msg.payload, data)
        elif isinstance(msg, p.Drop):
            out = d.drop(node, msg.page, msg.count, msg.payload, data)
        elif isinstance(msg, p.Received):
            out = d.received(node, msg.txn, msg.page, msg.count, msg.installed)
        elif isinstance(msg, p.Diff):
            out = d.diff(node, msg.req, msg.page, msg.count, msg.changed(PAGE_BYTES), data)
        elif isinstance(msg, p.Dirtied):
            out = d.dirtied(node, msg.page, msg.count)
        elif isinstance(msg, rc.SYNC_MESSAGES) and d is self.directory:
            for to, reply in self.coordinator.handle(node, msg):
                self._send(shard, to, reply, None)
            return
        else:
            raise SimulationFailure(f"the model sends no {type(msg).__name__}")
        for send in out:
            self._send(shard, send.node, send.message,
                       bytes(send.page) if send.page is not None else None)

    def _shard_of(self, page: int) -> str:
        return self._shard_names[shard_of(page, self.shards, STRIPE_PAGES)]

    def _to_node(self, node: SimNode, msg: p.Message, data: bytes | None) -> None:
        self._finish(node)  # one loop: it takes the next message when done with the last
        core = node.core
        if isinstance(msg, p.Grant):
            acts = core.grant(msg, data, self.clock)
        elif isinstance(msg, p.Lost):
            acts = core.lost(msg, self.clock)
        elif isinstance(msg, p.Fetch):
            acts = core.fetch(msg)
        elif isinstance(msg, p.Invalidate):
            acts = core.invalidate(msg)
        elif isinstance(msg, p.PeerPage):
            acts = core.peer_page(msg, data, self.clock)
        elif isinstance(msg, p.Withdrawn):
            acts = core.withdrawn(msg)
        elif isinstance(msg, p.DiffApplied):
            acts = core.diff_applied(msg)
        elif isinstance(msg, p.SyncReply):
            acts = self._sync_answered(node, msg)
        else:
            raise SimulationFailure(f"the model's nodes get no {type(msg).__name__}")
        self._carry_out(node, acts)

    # --- the kernel and the memory, as the agent would carry the actions out ------------------------
    def _carry_out(self, node: SimNode, acts: list) -> None:
        for i, act in enumerate(acts):
            if isinstance(act, a.Send):
                data = act.data
                if act.pages is not None:
                    data = node.taken.pop(act.pages, None)
                    if data is None:
                        data = self._read(node, *act.pages)
                dst = (act.peer[0] if act.peer is not None
                       else self._shard_names[0] if isinstance(act.message, rc.SYNC_MESSAGES)
                       else self._shard_of(act.message.page))
                self._send(node.name, dst, act.message, bytes(data) if data is not None else None)
                if i + 1 < len(acts) and self.rng.random() < DEFER_AFTER_SEND:
                    node.deferred = list(acts[i + 1:])
                    return
            elif isinstance(act, rc.RELEASE_ACTIONS):
                sent = self._release_action(node, act)
                if sent and i + 1 < len(acts) and self.rng.random() < DEFER_AFTER_SEND:
                    node.deferred = list(acts[i + 1:])
                    return
            elif isinstance(act, a.Install):
                for i in range(act.count):
                    q = act.first + i
                    chunk = (act.data[i * PAGE_BYTES:(i + 1) * PAGE_BYTES] if act.data is not None
                             else bytes(PAGE_BYTES))
                    node.memory[q] = bytearray(chunk)
                    if not act.writable:
                        node.wp.add(q)
                    elif act.installer is not None:  # UFFDIO_COPY writable: no marker left
                        node.wp.discard(q)
                self._wake(node, [w.thread_id for w in act.wake])
            elif isinstance(act, a.Upgrade):
                pages = set(range(act.first, act.first + act.count))
                node.wp -= pages
                self._wake(node, [t.tid for t in node.threads if t.blocked_on in pages])
            elif isinstance(act, a.Protect):
                node.wp.update(range(act.first, act.first + act.count))
            elif isinstance(act, a.Unprotect):
                node.wp.discard(act.page)
                self._wake(node, [t.tid for t in node.threads if t.blocked_on == act.page])
            elif isinstance(act, a.Punch):
                if act.keep:
                    node.taken[act.first, act.count] = self._read(node, act.first, act.count)
                for q in range(act.first, act.first + act.count):
                    node.memory.pop(q, None)  # write-protect markers stay (shmem keeps them)
            elif isinstance(act, a.Wake):
                self._wake(node, [t.tid for t in node.threads if t.blocked_on == act.addr])
            elif isinstance(act, a.Poison):
                node.poisoned.add(act.waiter.page)
                self._wake(node, [act.waiter.thread_id])
            elif isinstance(act, a.Kill):
                raise SimulationFailure(f"{node.name} killed a waiter: {act.why}")

    @staticmethod
    def _read(node: SimNode, first: int, count: int) -> bytes:
        return b"".join(bytes(node.memory.get(q, bytes(PAGE_BYTES)))
                        for q in range(first, first + count))

    def _finish(self, node: SimNode) -> None:
        """The agent carries out what it had left to do (it may be descheduled again)."""
        while node.deferred:
            acts, node.deferred = node.deferred, []
            self._carry_out(node, acts)

    def _wake(self, node: SimNode, tids: list[int]) -> None:
        for t in node.threads:
            if t.tid in tids:
                t.blocked_on = None

    # --- the workload --------------------------------------------------------------------------------
    def _run_op(self, t: Thread) -> None:
        node = t.node
        kind, loc, value = t.ops[t.next_op]
        if kind in programs.SYNC_OPS:
            self._sync(t, kind, loc)
            return
        page, slot = divmod(loc, SLOTS_PER_PAGE)
        self._touched.add(page)
        self._step(f"{node.name}/t{t.tid} {kind} loc {loc} (page {page})"
                   + (f" := {value}" if kind == "w" else ""))
        if page in node.poisoned:  # SIGBUS: the access fails, loudly
            if loc not in self.lost_locations and page not in self.maybe_lost_release_pages:
                raise SimulationFailure(f"{node.name}: page {page} poisoned but location {loc} "
                                        "was not lost")
            t.next_op += 1
            return
        rw = Access.WRITE if kind == "w" else Access.READ
        if page not in node.memory:
            fault = FaultKind.MISSING
        elif kind == "w" and page in node.wp:
            fault = FaultKind.WRITE_PROTECTED
        else:
            mem = node.memory[page]
            if kind == "w":
                _SLOT.pack_into(mem, slot * SLOT_BYTES, value)
                self.truth[loc] = value
                self.lost_locations.discard(loc)
                if self.is_release(page):
                    self._wrote_release(node, loc, value)
            else:
                got = _SLOT.unpack_from(mem, slot * SLOT_BYTES)[0]
                if got != self.truth[loc] and got not in self.after_death.get(loc, ()):
                    # on a release page the program is data-race free: the last write in the
                    # simulation's order is the last one in happens-before order (DRF-SC)
                    order = " (happens-before: a DRF program)" if self.is_release(page) else ""
                    raise SimulationFailure(f"{node.name}/t{t.tid} read {got} at location {loc}; "
                                            f"the last write{order} was {self.truth[loc]}")
            t.next_op += 1
            return
        t.blocked_on = page
        self._finish(node)  # the fault waits in the uffd for the agent's loop
        acts = node.core.fault(node, page, page, rw, fault, t.tid, self.clock)
        self._carry_out(node, acts)

    def _give_back(self) -> None:
        """A node hands a page back, as at an unmap or a leave (owned ones with their contents;
        read copies too under a direct manager: the last one must not vanish)."""
        holders = [n for n in self.nodes.values() if n.alive and n.core.state]
        if not holders:
            return
        node = self.rng.choice(holders)
        page = self.rng.choice(sorted(node.core.state))
        self._step(f"{node.name} gives back page {page}")
        self._touched.add(page)
        self._finish(node)
        self._carry_out(node, node.core.give_back([page]))

    # --- failures ------------------------------------------------------------------------------------
    def _kill(self, node: SimNode) -> None:
        """SIGKILL: the node's unsent messages are lost, but a prefix may be on the wire."""
        self._step(f"kill {node.name}")
        self._touched = None
        node.alive = False
        node.deferred, node.taken = [], {}  # what the agent had not done yet dies with it
        for (src, dst), out in self.channels.items():
            if src == node.name and out:
                keep = self.rng.randrange(len(out) + 1)
                while len(out) > keep:
                    self._mark_lost_with(out.pop()[0])
                if dst not in self.directories:  # pages on the wire from it: the requester, told its
                    for msg, _ in out:  # source is gone before they come, refuses them
                        self._mark_lost_with(msg)
            elif dst == node.name:  # pages on their way to it die with it
                for msg, _ in out:
                    self._mark_lost_with(msg)
        for shard in self.directories:
            for msg, _ in self.channels.pop((shard, node.name), ()):
                self._mark_lost_with(msg)
        self._release_node_died(node)
        for pend in node.core.pending.values():
            if pend.write and self.directory.direct and not self.is_release(pend.first):
                # the copies may be invalidated for it already: under a direct manager no
                # home copy is left (a node dying as it asks to write may take the page along)
                self.lost_locations.update(range(pend.first * SLOTS_PER_PAGE,
                                                 (pend.first + pend.count) * SLOTS_PER_PAGE))
        others = [n for n in self.nodes.values() if n.alive]
        for page, st in node.core.state.items():
            if self.is_release(page):
                continue  # (``_release_node_died``)
            # its writes may be lost with it: reads must say so; under a direct manager a
            # read copy may have been the last one
            last_copy = (self.directory.direct
                         and not self.directories[self._shard_of(page)].peek(page).home_current
                         and not any(page in n.core.state for n in others))
            if st in OWNED or last_copy:
                self.lost_locations.update(range(page * SLOTS_PER_PAGE,
                                                 (page + 1) * SLOTS_PER_PAGE))
        self.unnoticed_dead.append(node.name)

    def _mark_lost_with(self, msg: p.Message) -> None:
        """A message from or to a dead node that will never arrive: the pages it carried may be
        lost, and so may those it granted for writing (the directory cannot tell whether the
        dead node wrote them)."""
        if (isinstance(msg, (p.Fetched, p.Writeback, p.Drop)) and msg.payload == p.Payload.DATA
                or isinstance(msg, (p.Grant, p.PeerPage)) and msg.write):
            self.lost_locations.update(range(msg.page * SLOTS_PER_PAGE,
                                             (msg.page + msg.count) * SLOTS_PER_PAGE))

    def _notice_death(self, name: str) -> None:
        self._step(f"directory notices {name} is dead")
        self._touched = None
        self.unnoticed_dead.remove(name)
        for shard, d in self.directories.items():  # every shard learns it (the coordinator's
            for pair in ((name, shard), (shard, name)):  # word), fencing its later messages
                for msg, _ in self.channels.pop(pair, ()):
                    self._mark_lost_with(msg)
            for send in d.node_lost(name):
                self._send(shard, send.node, send.message,
                           bytes(send.page) if send.page is not None else None)
        for to, reply in self.coordinator.node_gone(name):  # its locks pass on, broken
            self._send(self._shard_names[0], to, reply, None)

    # --- the scheduler -------------------------------------------------------------------------------
    def _step(self, what: str) -> None:
        self.schedule.append(what)

    def run(self) -> None:
        try:
            self._run()
        except SimulationFailure as exc:
            tail = "\n  ".join(self.schedule[-REPORT_STEPS:])
            raise SimulationFailure(f"seed {self.seed}: {exc}\nlast {REPORT_STEPS} steps of "
                                    f"{len(self.schedule)}:\n  {tail}") from None

    def _run(self) -> None:
        limit = MAX_STEPS_PER_OP * max(1, self.ops_total)
        for _ in range(limit):
            self.clock += 0.001
            choices: list = [pair for pair, q in self.channels.items() if q]
            choices += [t for n in self.nodes.values() if n.alive for t in n.threads
                        if t.runnable]
            choices += [n for n in self.nodes.values() if n.alive and n.deferred]
            if self.unnoticed_dead:
                choices.append("notice")
            if self.deaths_left and sum(n.alive for n in self.nodes.values()) > 1:
                choices.append("kill")
            if self.give_backs and any(not t.done for n in self.nodes.values() if n.alive
                                       for t in n.threads):
                choices.append("give back")
            if not choices:
                self._check_finished()
                return
            pick = self.rng.choice(choices)
            self._touched: set[int] | None = set()  # the pages this step may change
            if pick == "kill":
                if self.rng.random() < 0.05:  # rare, so that most of a run has all its nodes
                    self.deaths_left -= 1
                    self._kill(self.rng.choice([n for n in self.nodes.values() if n.alive]))
            elif pick == "give back":
                if self.rng.random() < 0.1:
                    self._give_back()
            elif pick == "notice":
                if self.rng.random() < 0.2:
                    self._notice_death(self.rng.choice(self.unnoticed_dead))
            elif isinstance(pick, Thread):
                self._run_op(pick)
            elif isinstance(pick, SimNode):
                self._step(f"{pick.name} carries out the rest: {pick.deferred}")
                self._finish(pick)
            else:
                self._deliver(pick)
            self._check_invariants()
        raise SimulationFailure(f"no quiescence after {limit} steps (a livelock?)")

    def _touch(self, msg: p.Message) -> None:
        if self._touched is not None:
            first = getattr(msg, "page", None)
            if first is None:
                self._touched = None  # all of them
            else:
                self._touched.update(range(first, first + getattr(msg, "count", 1)))

    def _check_invariants(self) -> None:
        """The invariants, on the pages the step may have changed (every page after a death)."""
        live = [n for n in self.nodes.values() if n.alive]
        pages = range(self.num_pages) if self._touched is None else self._touched
        for page in pages:
            if self.is_release(page):
                continue  # copies may be stale until an acquire: the reads check them (DRF-SC)
            states = [(n.name, n.core.state.get(page)) for n in live]
            owners = [name for name, st in states if st in OWNED]
            holders = [name for name, st in states if st is not None]
            if owners and len(holders) > 1:
                raise SimulationFailure(f"page {page}: owned by {owners} while held by {holders}")
            for n in live:
                if n.core.state.get(page) is None or page not in n.memory:
                    continue
                for slot in range(SLOTS_PER_PAGE):
                    loc = page * SLOTS_PER_PAGE + slot
                    got = _SLOT.unpack_from(n.memory[page], slot * SLOT_BYTES)[0]
                    if got != self.truth[loc] and loc not in self.lost_locations:
                        raise SimulationFailure(f"{n.name} holds page {page} with {got} at "
                                                f"location {loc}; the last write was "
                                                f"{self.truth[loc]}")

    def _check_finished(self) -> None:
        for n in self.nodes.values():
            if not n.alive:
                continue
            for t in n.threads:
                if t.waits_for is not None:
                    raise SimulationFailure(f"{n.name}/t{t.tid} hangs in a {t.waits_for} with "
                                            "no message in flight")
                if not t.done:
                    raise SimulationFailure(f"{n.name}/t{t.tid} hangs on page {t.blocked_on} "
                                            "with no message in flight")
        if self.release_pages and all(n.alive for n in self.nodes.values()):
            self._check_released()  # (a death breaks the barrier: the programs end early)
