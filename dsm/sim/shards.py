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
from dsm.sim.model import SimulationFailure
from dsm.sim.network import DIRECTORY, SIM_EPOCH, STRIPE_PAGES, SimTransport
from dsm.sim.tracing import SimTracer

if TYPE_CHECKING:
    from dsm.sim.world import World

#: the process id a simulated shard says it has in its ShardHello (fixed: a seed replays exactly)
SIM_SHARD_PID = 1


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
        only = machine(names[0], Role(0, 1, STRIPE_PAGES))
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
