"""A deterministic simulation of a cluster: the real node cores (``dsm.core.node``) and the real
directory (``dsm.directory.machine``: its sessions, its handler table, its Error policy, its
path for a death; the page directory, ``dsm.directory.pages``, within it) in one process, with a
seeded scheduler in place of the network, the kernel and time.

The scheduler delivers messages in any order ZeroMQ allows — first in, first out per pair of
sockets, nothing more — interleaved with the workload threads' reads and writes, node deaths
(a killed node's unsent messages are lost, a prefix of them may still arrive) and the
liveness timers (``dsm.sim.timers``: the nodes' heartbeats, cut-offs and request timeouts, and
the shards' deadlines, which notice a death). Every message is encoded as the processes encode
it and travels on its pair's session, the real one (``dsm.sim.links``); with ``faults`` the
channels drop, duplicate and swap messages and reset connections, and the sessions replay on the
simulated clock, which jumps to their timers and the liveness ones when nothing else can happen
(or when the scheduler lets time pass while a death waits to be noticed). After every step it
checks the invariants (and ``dsm.sim.timers`` its own: no live node declared dead):

- one writer or many readers: a page is EXCLUSIVE on at most one live node, and then held by
  no other;
- every copy a live node holds is current: its bytes are the last value written;
- every read returns the last completed write (memory steps are atomic here, so this is
  sequential consistency itself), or fails loudly (a lost page), never an older value or zeros;
- nothing hangs: once no message is in flight, every live thread has finished.

With ``manager="dynamic"`` the nodes run IVY's dynamic distributed manager (their cores
``dsm.core.dynamic``, the directory's side ``dsm.directory.pages.dynamic``): requests travel
along probable owners, and a death is settled by a gather.

With ``release_pages=K`` the first K pages are release-consistency pages (``dsm.sim.release``):
data-race-free programs with locks and barriers run on them, each read checked against the last
write before it in the schedule (DRF-SC), copies there may be stale until an acquire. With
``sweeps`` the programs go through bands of those pages in order (``programs.sweep_programs``):
runs of pages asked for at once, another node's private ones fetched while others ask for some.

With ``bursts`` > 1 a thread the scheduler picks runs on for a few steps (``World._pick``): it
faults again, or writes what it was just granted, before the messages on their way to its node
arrive, a race a uniform pick seldom lets it win.

A failure raises ``SimulationFailure`` with the seed and the schedule's last steps; the same
seed replays it exactly (``python -m dsm.sim --seed N``).

With ``shards`` > 1 the shards are the processes' own roles (``dsm.sim.shards``): shard 0 the
coordinator, the others members, talking on the simulated network with its faults; the nodes join
through them (the workloads start once every shard has welcomed its node), ask the coordinator
which pages are lost (its gather of every shard's lost runs: each answer is checked), and every
shard hears of a death through the coordinator (a shard that still serves a node declared dead
elsewhere, with nothing on its way between the shards, fails the run).

This module owns the world: building the cluster (its nodes, threads and their programs, the
directory's shards, the coordinator), the scheduler and the invariant checks after each step.
``World`` gathers the parts that the other modules own: the network, its deliveries and the
deaths that cut it (``dsm.sim.network``), the nodes' memory, their agents and their threads'
reads and writes (``dsm.sim.nodes``), and release consistency (``dsm.sim.release``, with the
programs of ``dsm.sim.programs`` and the units of ``dsm.sim.model``).
"""

from __future__ import annotations

import random
from collections import deque

from dsm import protocol as p
from dsm.core.readahead import ReadAhead
from dsm.core.node import NodeCore
from dsm.core.states import OWNED, pack_runs
from dsm.directory.pages import OnLoss, PageDirectory
from dsm.directory.shard import HELLO_HOLD_S
from dsm.core.dynamic import DynamicNodeCore
from dsm.layout import Layout
from dsm.managers import Manager
from dsm.sim import programs
from dsm.sim import release as rc
from dsm.sim.agent import AgentFaults
from dsm.sim.model import PAGE_BYTES, SLOT, SLOT_BYTES, SLOTS_PER_PAGE, SimulationFailure
from dsm.liveness import ACK_TIMEOUT_S
from dsm.sim.links import NO_FAULTS, Faults, SimLinks
from dsm.sim.network import (DIRECTORY, SIM_INCARNATION, STRIPE_PAGES, NetworkSimulation,
                             sim_identity)
from dsm.sim.nodes import NodeSimulation, SimNode, Thread
from dsm.sim.partitions import Partitions
from dsm.sim.processes import NO_EVENTS, KernelEvents, ProcessSimulation
from dsm.sim.shards import (LostQueries, build_shards, check_deaths_told, join_nodes,
                            joining_step, node_hello, shard_name)
from dsm.sim.timers import SimTimers

#: the largest read-ahead window of the model's nodes (small: the pages are few)
READAHEAD_PAGES = 4
#: the longest read run whose copy also goes home (``NodeCore.home_copy_most_pages``): within
#: the model's runs, so that both ways are taken
HOME_COPY_MOST_PAGES = 2
#: how often a band's run of pages is written before it is read (``bands``)
WRITTEN_FIRST = 0.5
#: how many steps of the schedule a failure report shows
REPORT_STEPS = 60
#: a run that takes more steps than this per operation is taken to be livelocked
MAX_STEPS_PER_OP = 200
#: simulated seconds per step of the schedule (the sessions' timers count them), in a world
#: of at most PARALLEL_PARTIES nodes and shards
STEP_S = 0.001
#: IVY's dynamic distributed manager (``dsm.core.dynamic``, ``dsm.directory.pages.dynamic``)
DYNAMIC = Manager.DYNAMIC.value
#: a step is one party's event, and the parties of a cluster act at once: in a larger world a
#: step takes that much less time, or its heartbeats alone (two messages per node and shard
#: every HEARTBEAT_INTERVAL_S) would outrun the steps and its deadlines pass while it queues
PARALLEL_PARTIES = 8


class World(NetworkSimulation, NodeSimulation, ProcessSimulation, rc.ReleaseSimulation):
    def __init__(self, seed: int, nodes: int = 3, pages: int = 6, threads_per_node: int = 1,
                 ops_per_thread: int = 12, deaths: int = 0, on_loss: OnLoss = OnLoss.POISON,
                 bands: bool = False, manager: str = "relay", give_backs: bool = False,
                 shards: int = 1, direct: bool | None = None, release_pages: int = 0,
                 phases: int = programs.DEFAULT_PHASES, faults: Faults = NO_FAULTS,
                 fixed_programs: list[list[tuple[str, int]]] | None = None,
                 kernel_events: KernelEvents = NO_EVENTS, sweeps: bool = False,
                 bursts: int = 1):
        """``fixed_programs``: each thread's operations, ``(kind, location)``, in the order of
        the nodes and their threads, in place of drawn ones (``dsm.sim.explore`` fixes them).
        ``sweeps``: the release pages' programs sweep bands of pages in order
        (``programs.sweep_programs``: requests for runs of pages) rather than touch random
        locations (the bands, not ``ops_per_thread``, say how many operations).
        ``bursts``: a thread the scheduler picks may run up to this many operations in a row
        (``_pick``).
        ``kernel_events``: how often the nodes' processes fork, unmap, remap and remove pages
        (``dsm.sim.processes``)."""
        if release_pages > pages:
            raise ValueError(f"{release_pages} release pages of {pages}")
        self.seed = seed
        self.rng = random.Random(seed)
        self.layout = Layout(0x6000_0000_0000, pages * PAGE_BYTES, PAGE_BYTES)
        self.num_pages = pages
        self.clock = 0.0
        #: simulated seconds per step in this world (``PARALLEL_PARTIES``)
        self.step_s = STEP_S * min(1.0, PARALLEL_PARTIES / (nodes + shards))
        #: "relay": pages through the directory; "central": node to node (``PageDirectory``)
        self.manager = manager
        #: nodes hand pages back now and then (unmaps, leaves)
        self.give_backs = give_backs
        #: IVY's dynamic distributed manager: requests along the probable owners
        self.dynamic = manager == DYNAMIC
        if self.dynamic and (shards != 1 or direct is False):
            raise ValueError("the dynamic manager runs with one directory and pages node to "
                             "node")
        # pages node to node: as the manager does, unless told (the cores support it sharded)
        direct = (True if self.dynamic else Manager(manager).direct) if direct is None else direct
        #: pages from 0 up to this one are release-consistency pages, the others sequential
        self.release_pages = release_pages
        #: the manager's shards (one: the central or relay manager), by their network names
        self.shards = shards
        #: each shard's page directory, by its network name
        self.directories = {
            shard_name(k, shards): PageDirectory(
                self.layout, on_loss=on_loss, clock=lambda: self.clock, direct=direct,
                shard=k, shards=shards, stripe=STRIPE_PAGES,
                is_release=self.is_release)
            for k in range(shards)}
        self._shard_names = list(self.directories)
        for d in self.directories.values():  # a discard is a write of zeros (the truth model)
            d.on_discarded = self._discarded
        self.directory = self.directories[self._shard_names[0]]
        self.channels: dict[tuple[str, str], deque] = {}
        #: every pair's session (the real one) over channels with ``faults``
        self.links = SimLinks(self.rng, faults)
        #: a node cut off from every other party for a while (``Faults.partition``)
        self.partitions = Partitions(self.links)
        #: a joining shard's ShardWelcome, handed over at once (``dsm.sim.shards``)
        self.shard_welcomes: dict[str, p.Message] = {}
        #: each shard's directory state machine, the processes' own (``dsm.directory.machine``),
        #: serving its page directory, with its role (``dsm.sim.shards``: the coordinator and
        #: the members, the processes' own, joined over the simulated network): the simulated
        #: network delivers to it
        self.machines = build_shards(self, manager)
        #: the directory's side of the dynamic manager, the first shard's machine's own
        self.dynamic_pages = self.machines[self._shard_names[0]].dynamic
        #: the coordinator's locks, barriers and write notices (shard 0, or the one directory)
        self.coordinator = self.machines[self._shard_names[0]].syncreq
        #: the most operations a thread picked runs in a row, and the burst going on: its
        #: thread and how many more steps it may take
        self.bursts = bursts
        self._burst: tuple[Thread, int] | None = None
        sequential_locations = range(release_pages * SLOTS_PER_PAGE, pages * SLOTS_PER_PAGE)
        if not release_pages:
            self._programs = None
        elif sweeps:
            self._programs = programs.sweep_programs(self.rng, nodes * threads_per_node,
                                                     release_pages, sequential_locations, phases)
        else:
            self._programs = programs.drf_programs(
                self.rng, nodes * threads_per_node, range(release_pages * SLOTS_PER_PAGE),
                sequential_locations, ops_per_thread, phases)
        #: lock -> the pages it guards (runs): its grant carries them (random programs only:
        #: the exhaustive exploration's fixed ones keep their scope)
        self.lock_guards = {lock: pack_runs({loc // SLOTS_PER_PAGE for loc in locs})
                            for lock, locs in programs.guarded_locations(
                                self._programs or []).items()}
        #: the barrier's parties: every thread
        self.parties = nodes * threads_per_node
        #: the nodes' kernels and peers, which fail calls now and then with ``faults``
        self.agent_faults = AgentFaults(self.rng, faults)
        self.truth = [0] * (pages * SLOTS_PER_PAGE)  #: the last completed write per location
        #: the kernel's events on the nodes' processes (``dsm.sim.processes``)
        self.kernel_events = kernel_events
        self._remaps = 0  #: mremaps so far (each moves pages to fresh addresses)
        #: what the kernel's events did, for the report: events queued, pages punched and
        #: discarded, ioctls answered ENOENT
        self.event_counters = {"forks": 0, "unmaps": 0, "remaps": 0, "removes": 0, "punched": 0,
                               "discarded": 0, "enoent": 0}
        #: read copies punched by MADV_REMOVE, and the nodes that punched them: a read may return
        #: zeros until their discard (or until the removal is told apart with no discard)
        self.zeros_allowed: dict[int, set[str]] = {}
        #: madvise calls whose Remove event was read: they go on once the agent's operation is
        #: over (a punch amid it would race the model's truth, not the agent: a page read after
        #: it reads as zeros, which the removal wrote)
        self.madvise_going_on: list = []
        #: pages a node has sent a Discard of, not yet discarded by the directory -> that node
        self.discarding: dict[int, str] = {}
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
        #: the nodes killed so far (or cut off), and those whose death no shard noticed yet
        self.dead: list[str] = []
        self.unnoticed_dead: list[str] = []
        self.nodes: dict[str, SimNode] = {}
        self._touched: set[int] | None = None
        for i in range(nodes):
            name = f"n{i}"
            node = SimNode(name, None)  # type: ignore[arg-type]
            node.maps_whole(self.layout.size)
            node.core = (DynamicNodeCore(name, pages, PAGE_BYTES, ReadAhead(READAHEAD_PAGES),
                                         f"sim://{name}", 0) if self.dynamic else
                         NodeCore(name, pages, PAGE_BYTES, ReadAhead(READAHEAD_PAGES)))
            node.core.direct = direct
            node.core.home_copy_most_pages = HOME_COPY_MOST_PAGES
            node.core.set_shards(shards, STRIPE_PAGES)
            for _, first, count in self.arrays():  # its programs attached them (read-ahead
                node.core.allocated(first * PAGE_BYTES, count * PAGE_BYTES)  # stops at their ends)
            self._wire_agent(node)  # its agent: the real one's tables and runner
            if shards == 1:  # the session a Hello starts (with shards: ``join_nodes`` below)
                self.machines[DIRECTORY].admit(sim_identity(name), node_hello(name))
            for t in range(threads_per_node):
                if release_pages:  # the programs join their barrier first: a death breaks it
                    self.coordinator.sync.join(name, 0, rc.BARRIER, self.parties,
                                               rc.holder(name, t + 1))
                kinds_locs = (fixed_programs[i * threads_per_node + t] if fixed_programs
                              else self._programs[i * threads_per_node + t] if self._programs
                              else self._bands(ops_per_thread) if bands else [
                                  (self.rng.choice("rw"), self.rng.randrange(pages * SLOTS_PER_PAGE))
                                  for _ in range(ops_per_thread)])
                ops = [(kind, loc, (i + 1) * 1_000_000 + t * 10_000 + k + 1)  # unique per write
                       for k, (kind, loc) in enumerate(kinds_locs)]
                node.threads.append(Thread(node, t + 1, ops))
            self.nodes[name] = node
        #: each node joining the shards -> those that have not welcomed it yet
        self.joining: dict[str, set[str]] = join_nodes(self)
        #: nodes whose join a shard refused (the faults held the coordinator's word back)
        self.refused_joins = 0
        #: when a node still joining gives up (``dsm.sim.timers``: a member refuses it then)
        self.joined_by_s = self.clock + HELLO_HOLD_S
        self.ops_total = sum(len(t.ops) for n in self.nodes.values() for t in n.threads)
        #: the nodes' heartbeats, cut-offs and request timeouts, and the shards' deadlines
        self.timers = SimTimers(self)
        #: the nodes' questions about lost pages, answered by the coordinator's gather
        self.lost_queries = LostQueries(self)

    def arrays(self) -> list[tuple[str, int, int]]:
        """The region's arrays, as the programs allocated them: (name, first page, pages) of the
        release-consistency one (its first ``release_pages``) and of the sequential one (the
        rest), those that have pages."""
        release = self.release_pages
        named = [("release", 0, release), ("sequential", release, self.num_pages - release)]
        return [(name, first, count) for name, first, count in named if count > 0]

    def is_release(self, page: int) -> bool:
        return page < self.release_pages

    def _bands(self, n: int) -> list[tuple[str, int]]:
        """Reads of a run of pages in order, then writes of them in order (a stencil's band),
        again and again: sequential faults open read-ahead and upgrade whole runs. Now and
        then the writes come first: a first touch of pages nobody has touched yet is granted
        in runs of untouched pages (``Acquire.untouched``)."""
        out: list[tuple[str, int]] = []
        while len(out) < n:
            first = self.rng.randrange(self.num_pages)
            run = range(first, min(self.num_pages, first + self.rng.randint(2, 6)))
            slot = self.rng.randrange(SLOTS_PER_PAGE)
            order = "wr" if self.rng.random() < WRITTEN_FIRST else "rw"
            for kind in order:
                out += [(kind, pg * SLOTS_PER_PAGE + slot) for pg in run]
        return out[:n]

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

    @property
    def step_limit(self) -> int:
        """The steps after which a run that has not come to rest is taken to be livelocked."""
        return MAX_STEPS_PER_OP * max(1, self.ops_total)

    def _run(self) -> None:
        for _ in range(self.step_limit):
            if not self.step():
                return
        raise SimulationFailure(f"no quiescence after {self.step_limit} steps (a livelock?)")

    def step(self) -> bool:
        """One step of the schedule, its invariants checked; False once the run has come to
        rest (nothing in flight, every thread finished: checked). ``dsm.sim.explore`` drives the
        world one step at a time."""
        self.clock += self.step_s
        reset = self.links.maybe_reset(self.channels, self._alive)
        if reset is not None:
            self._step(f"the connection {reset[0]}<->{reset[1]} resets")
        self._heal_partition()
        cut = None if self.joining else self.partitions.maybe_start(
            [n.name for n in self.nodes.values() if n.alive], self.clock)
        if cut is not None:
            self._step(f"{cut} is cut off from every other party until "
                       f"{self.partitions.until_s:.3f} s")
        choices: list = [pair for pair, q in self.channels.items()
                         if q and not self.partitions.cuts(pair)]
        if self.joining:  # the nodes' workloads start once their agents have joined every shard
            return joining_step(self, choices)
        choices += [t for n in self.nodes.values() if n.alive for t in n.threads
                    if t.runnable]
        choices += [n for n in self.nodes.values() if n.alive and n.deferred]
        if self.unnoticed_dead:  # the scheduler picks when the deadlines come
            choices.append("time passes")
        if self.deaths_left and sum(n.alive for n in self.nodes.values()) > 1:
            choices.append("kill")
        working = any(not t.done for n in self.nodes.values() if n.alive for t in n.threads)
        if self.give_backs and working:
            choices.append("give back")
        if working:
            choices += [("lost query", n) for n in self.lost_queries.askers()]
        if self.kernel_events.any:
            # (none new while a partition holds: the others' work waits behind it for up to
            # PARTITION_MAX_S, thousands of steps, which new events would fill to the step limit)
            if working and self.partitions.node is None:
                choices.append("kernel event")
            choices += [("events", n) for n in self.nodes.values()
                        if n.alive and self._has_events(n)]
        if not choices:
            deadline = self._next_event_deadline()
            if deadline is not None:  # nothing to do but an agent's timer: time passes to it
                self.clock = max(self.clock, deadline)
                self._step(f"time passes to {deadline:g} s (an agent's timer)")
                self._touched = set()
                self._run_event_timers()
                self._check_invariants()
                return True
            if self.links.owed():  # nothing to do but wait for the sessions' timers
                # (not past a member's heartbeat: the coordinator hears one every interval; the
                # nodes' heartbeats of the jump go out after it, ``dsm.sim.timers``)
                self._pass_time(min(self.clock + ACK_TIMEOUT_S, self.timers.shard_heartbeat_due()))
            elif self.timers.deadline_pending() and self.timers.next_due() is not None:
                self._pass_time(self.timers.next_due())  # or a liveness deadline (dsm.sim.timers)
            elif self.partitions.next_heal_s() is not None:  # or the end of a partition
                self._pass_time(self.partitions.next_heal_s())
            else:
                self._check_finished()
                return False
            return True
        pick = self._pick(choices)
        self._touched: set[int] | None = set()  # the pages this step may change
        if pick == "kill":
            if self.rng.random() < 0.05:  # rare, so that most of a run has all its nodes
                self.deaths_left -= 1
                self._kill(self.rng.choice([n for n in self.nodes.values() if n.alive]))
        elif pick == "give back":
            if self.rng.random() < 0.1:
                self._give_back()
        elif pick == "time passes":
            if (self.rng.random() < 0.2 and self.timers.jump_allowed()
                    and self.timers.next_due() is not None):
                self._pass_time(self.timers.next_due())
                return True
        elif isinstance(pick, Thread):
            self._run_op(pick)
        elif pick == "kernel event":
            self._kernel_event()
        elif isinstance(pick, SimNode):
            self._step(f"{pick.name} carries out the rest: {pick.deferred}")
            self._finish(pick)
        elif pick[0] == "events":
            self._handle_events(pick[1])
        elif pick[0] == "lost query":
            self.lost_queries.maybe_ask(pick[1])
        else:
            self._deliver(pick)
        if self.kernel_events.any:
            self._run_event_timers()
        self.timers.run()
        self._check_invariants()
        self.links.due(self.channels, self._alive, self.clock)
        return True

    def _pick(self, choices: list) -> object:
        """What the step does, drawn from ``choices``. With ``bursts``, a thread drawn takes the
        next steps too (up to a drawn number), whenever it can go on, until another thread is
        drawn: a thread that faults again, or writes what it was just granted, before the
        messages already on their way to its node arrive, a race of a few steps against one
        delivery that a uniform draw seldom lets it win (a grant answering no request
        installed over a page written since: e2647af)."""
        if self._burst is not None:
            thread, left = self._burst
            if left and any(c is thread for c in choices):
                self._burst = (thread, left - 1)
                return thread
        pick = self.rng.choice(choices)
        if self.bursts > 1 and isinstance(pick, Thread):
            self._burst = (pick, self.rng.randrange(self.bursts))
        return pick

    def _pass_time(self, until: float) -> None:
        """The clock jumps to ``until`` (a timer due then: strictly past it), and the timers
        due then go off: the sessions' (replays), the liveness ones (``dsm.sim.timers``)."""
        self.clock = max(self.clock, until + self.step_s)
        self._step(f"time passes to {self.clock:.3f} s")
        self._heal_partition()
        self._touched = set()  # (a death declared checks every page: ``_notice_death``)
        self.timers.run(idle=True)
        self._check_invariants()
        self.links.due(self.channels, self._alive, self.clock)

    def _heal_partition(self) -> None:
        healed = self.partitions.heal_due(self.clock, self.channels, self._alive)
        if healed is not None:
            self._step(f"{healed}'s link comes back: each of its connections resets")

    def _touch(self, msg: p.Message) -> None:
        if self._touched is not None and not isinstance(msg, p.Heartbeat):  # (a word of life)
            first = getattr(msg, "page", None)
            if first is None:
                self._touched = None  # all of them
            else:
                self._touched.update(range(first, first + getattr(msg, "count", 1)))

    def _check_invariants(self) -> None:
        """The invariants, on the pages the step may have changed (every page after a death)."""
        check_deaths_told(self)
        live = [n for n in self.nodes.values() if n.alive]
        pages = range(self.num_pages) if self._touched is None else self._touched
        if self.kernel_events.any:
            for n in live:
                self._check_read_copies_protected(n, pages)
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
                zeros_allowed = page in self.zeros_allowed
                for slot in range(SLOTS_PER_PAGE):
                    loc = page * SLOTS_PER_PAGE + slot
                    got = SLOT.unpack_from(n.memory[page], slot * SLOT_BYTES)[0]
                    if got != self.truth[loc] and loc not in self.lost_locations and not (
                            got == 0 and zeros_allowed):
                        raise SimulationFailure(f"{n.name} holds page {page} with {got} at "
                                                f"location {loc}; the last write was "
                                                f"{self.truth[loc]}")

    def _check_finished(self) -> None:
        self.lost_queries.check_finished()
        for shard, machine in self.machines.items():  # a death reaches every shard
            dead = [n for n in machine.sessions.by_node if not self.nodes[n].alive]
            if dead:
                raise SimulationFailure(f"{shard} still serves {dead}, declared dead elsewhere "
                                        "(nothing in flight)")
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
