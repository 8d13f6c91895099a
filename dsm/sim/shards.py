"""The manager's shards in a simulated world (``dsm.sim.world``): each a directory state machine
(``dsm.directory.machine.Directory``) with the processes' own role (``dsm/directory/shard/``):
one directory alone (``Role``), or, with ``shards`` > 1, shard 0 the ``Coordinator`` and the others
``Member``s, which join it as the processes do (``ShardHello``, answered with ``ShardWelcome``)
before the run begins.

What the shards tell each other travels on the simulated network between them, on the pair's
session (the real one, ``dsm.sim.links``) with the faults every other link has: the real shard
link is a ZeroMQ DEALER (the member's) to the coordinator's ROUTER, both with a reliable session
(``dsm/directory/memberlink.py``, ``dsm/linkwire.py``), which turns a reset connection or a lost
message into a replay, so the simulated one may drop, duplicate, swap and reset as any other. A
death, an admission, the lost-runs and stats gathers go through the roles' own paths (a member
reports the deaths it declares to the coordinator, which tells every shard); the heartbeats and
the silence deadlines between shards run on the simulated clock (``dsm.sim.timers``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsm import protocol as p
from dsm.directory.machine import Directory
from dsm.directory.shard import Coordinator, Member, Role
from dsm.liveness import ACK_TIMEOUT_S
from dsm.sim.model import SimulationFailure
from dsm.sim.network import (DIRECTORY, SIM_EPOCH, SIM_INCARNATION, STRIPE_PAGES, SimTransport,
                             sim_identity)
from dsm.sim.release import SIM_PID as SIM_NODE_PID
from dsm.sim.tracing import SimTracer

if TYPE_CHECKING:
    from dsm.sim.world import World

#: the process id a simulated shard says it has in its ShardHello (fixed: a seed replays exactly)
SIM_SHARD_PID = 1
#: how often a node that may ask which pages are lost does, when the scheduler picks it (rare:
#: a program asks after a SIGBUS, not at every step)
LOST_QUERY_ODDS = 0.1


def shard_name(index: int, count: int) -> str:
    """A shard's name on the model's network: ``directory`` alone, ``directoryI`` of several."""
    return DIRECTORY if count == 1 else f"{DIRECTORY}{index}"


class SimCoordinatorLink:
    """A member's link to its coordinator (``dsm.directory.shard.member.CoordinatorLink``): its
    messages go onto the model's channel from the member to the coordinator."""

    def __init__(self, world: "World", member: str, coordinator: str):
        self.world, self.member, self.coordinator = world, member, coordinator

    def send(self, message: p.Message) -> bool:
        self.world._send(self.member, self.coordinator, message, None)
        return True  # kept on its session, as the DEALER's session keeps it


def build_shards(world: "World", manager: str) -> dict[str, Directory]:
    """Every shard's machine, serving ``world.directories``' page directories, by name; with
    several, the members have joined the coordinator."""
    names = list(world.directories)
    count = len(names)

    def machine(name: str, role: Role) -> Directory:
        d = Directory(world.layout, SimTransport(world, name), lambda: world.clock,
                      manager=manager, role=role, pages=world.directories[name],
                      # (its trace clock is the simulated one: a heartbeat's answer replays)
                      tracer=SimTracer(None, name, "manager", lambda: world.clock))
        return d

    if count == 1:
        only = machine(names[0], Role())
        only.sessions.epoch = SIM_EPOCH  # a seed replays exactly
        return {names[0]: only}
    coordinator = machine(names[0], Coordinator(count, stripe=STRIPE_PAGES))
    coordinator.sessions.epoch = SIM_EPOCH
    machines = {names[0]: coordinator}
    for index, name in enumerate(names[1:], start=1):
        # the join: a ShardHello without a session, answered with a ShardWelcome the same way
        # (``SimTransport`` hands it over at once: the run begins once every shard has joined)
        coordinator.handle(name.encode(), p.ShardHello(index, count, f"sim://{name}",
                                                       SIM_SHARD_PID), None)
        welcome = world.shard_welcomes.pop(name, None)
        if not isinstance(welcome, p.ShardWelcome):
            raise SimulationFailure(f"{name} was not welcomed by the coordinator: "
                                    f"{coordinator.failed or welcome}")
        link = SimCoordinatorLink(world, name, names[0])
        machines[name] = machine(name, Member(welcome, f"sim://{names[0]}", link,
                                              stripe=STRIPE_PAGES))
    if not coordinator.role.ready:
        raise SimulationFailure(f"the coordinator still waits for shards after {count - 1} joined")
    return machines


def node_hello(node: str) -> p.Hello:
    """A model node's Hello, as its agent says it to every shard."""
    return p.Hello(node, SIM_NODE_PID, SIM_INCARNATION, endpoint=f"sim://{node}")


def join_nodes(world: "World") -> dict[str, set[str]]:
    """With several shards, every node says Hello to each (as its agent does once the
    coordinator's Welcome named them): the coordinator admits it and tells every member
    (``NodeAdmitted``, on the network between them), and a member holds its Hello until then.
    Each node -> the shards whose Welcome it waits for (their Welcomes come on the network)."""
    if world.shards == 1:
        return {}
    joining = {}
    for name in world.nodes:
        hello = node_hello(name)
        for machine in world.machines.values():  # the coordinator's first
            machine.handle(sim_identity(name), hello, None)
        joining[name] = set(world.machines)
    return joining


def joining_step(world: "World", deliveries: list) -> bool:
    """A step of the world while nodes join the shards: a delivery, or time passing to the
    sessions' timers (a lost message is replayed)."""
    world._touched = set()
    if deliveries:
        world._deliver(world.rng.choice(deliveries))
    elif world.links.owed():
        world._pass_time(world.clock + ACK_TIMEOUT_S)
        return True
    else:
        raise SimulationFailure(f"nodes {sorted(world.joining)} were never welcomed by "
                                f"{sorted(set().union(*world.joining.values()))}")
    world.timers.run()
    world._check_invariants()
    world.links.due(world.channels, world._alive, world.clock)
    return True


class LostQueries:
    """Nodes asking the coordinator which pages are lost (``LostQuery``, as a program does with
    ``node.lost()`` after a SIGBUS), which it answers once every shard has told its lost runs (the
    gather), and the check of each answer: every page that was lost at its shard when the node
    asked and still is when the answer comes is in it (a page's loss ends only with a discard)."""

    def __init__(self, world: "World"):
        self.world = world
        #: node -> its question's request id, and the pages lost at every shard when it asked
        self.pending: dict[str, tuple[int, set[int]]] = {}
        #: questions asked and answered, for the report
        self.answered_count = 0
        #: questions the coordinator gave up on (a shard's part did not come in time)
        self.gave_up_count = 0
        #: node -> the lost pages it last asked about (it asks again only once that changed)
        self.asked_about: dict[str, set[int]] = {}

    def lost_now(self) -> set[int]:
        return {page for d in self.world.directories.values() for page in d.lost}

    def askers(self) -> list:
        """The live nodes that may ask now: with several shards (one directory answers alone),
        once some page is lost, one question at a time, again only once the losses changed."""
        world = self.world
        lost = self.lost_now() if world.shards > 1 else set()
        if not lost:
            return []
        return [n for n in world.nodes.values() if n.alive and n.name not in self.pending
                and self.asked_about.get(n.name) != lost]

    def maybe_ask(self, node) -> None:
        """The scheduler picked ``node`` to ask: it does, now and then (LOST_QUERY_ODDS)."""
        if self.world.rng.random() < LOST_QUERY_ODDS:
            self.ask(node)

    def ask(self, node) -> None:
        world = self.world
        req, node.next_req = node.next_req, node.next_req + 1
        self.pending[node.name] = (req, self.lost_now())
        self.asked_about[node.name] = self.lost_now()
        world._step(f"{node.name} asks which pages are lost (request {req})")
        world._send(node.name, world._shard_names[0], p.LostQuery(req), None)

    def answer(self, node, msg: p.LostReport) -> None:
        asked = self.pending.pop(node.name, None)
        if asked is None or asked[0] != msg.req:
            raise SimulationFailure(f"{node.name} was answered {msg}, which it did not ask "
                                    f"(its question: {asked})")
        page_bytes = self.world.layout.page_size
        told = {page for _, start, end, _ in msg.ranges
                for page in range(start // page_bytes, end // page_bytes)}
        missing = (asked[1] & self.lost_now()) - told
        if missing:
            raise SimulationFailure(f"{node.name} was told pages {sorted(told)} are lost, but "
                                    f"pages {sorted(missing)} were lost at their shards when it "
                                    "asked and still are")
        self.answered_count += 1

    def gave_up(self, node, msg: p.Error) -> bool:
        """Whether ``msg`` answers ``node``'s question with the coordinator's word that a shard
        did not answer within GATHER_TIMEOUT_S: a loud failure the faults may cause (each
        message they lose on the way between the shards costs a replay, ACK_TIMEOUT_S), never
        without them."""
        asked = self.pending.get(node.name)
        if asked is None or asked[0] != msg.req or not self.world.links.faults.any:
            return False
        del self.pending[node.name]
        self.gave_up_count += 1
        return True

    def died(self, name: str) -> None:
        self.pending.pop(name, None)

    def check_finished(self) -> None:
        """At rest: every live node's question was answered."""
        for name in self.pending:
            raise SimulationFailure(f"{name}'s LostQuery was never answered, with no message in "
                                    "flight")


def check_deaths_told(world: "World") -> None:
    """A death one shard declared reaches every shard through the coordinator (the package
    docstring of ``dsm.directory.shard``: at most one coordinator round trip later): a shard that
    still serves a node declared dead elsewhere while nothing is on its way between the shards,
    nor kept for a replay, was never told."""
    if world.shards == 1:
        return
    for name in world.dead:
        if name in world.unnoticed_dead:
            continue
        serving = [s for s, m in world.machines.items() if m.sessions.get(name) is not None]
        if not serving or world.links.in_flight_between(world.machines, world.channels):
            continue
        raise SimulationFailure(f"{serving} still serve {name}, which another shard declared "
                                "dead, with nothing on its way between the shards")
