"""``python -m dsm.sim --seed N --trace DIR``: a simulated schedule written as protocol traces.

The files are those a real run writes (``dsm.trace``): ``DIR/directory.trace`` (one per shard of
a sharded manager) and ``DIR/NODE.trace``, with the same records: each process's start, the
directory's and the node cores' steps (their own tracers, as in a real run), every message once
as sent and once as received, and the arrays that name the pages (``release`` and
``sequential``). So ``dsm trace DIR/*.trace --html OUT`` draws a simulated schedule, a
failing seed's included, beside a real run.

The times are the schedule's order, not a duration: each record is ``RECORD_TICK_S`` after the
one before it, whichever process wrote it (the simulation has no time of its own worth drawing:
its clock only counts scheduler steps, many of which do nothing), so that the diagram shows one
event per row, in the order the scheduler chose, with no idle gaps. A message's id is given when it is sent and found again when it is
delivered (by the message object, on its pair's FIFO channel): messages lost with a killed
node are drawn with one end only, as in a real trace.

This wraps the world's methods on the instance (``attach``) and hands the cores the tracers a
real process would have: the simulator's modules stay as they are.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

from dsm.trace import Tracer

#: the time between two records of the schedule, in seconds (drawn: 0.1 ms)
RECORD_TICK_S = 1e-4


class _Clock:
    """The schedule's clock: a tick further for each record."""

    def __init__(self) -> None:
        self._n = 0

    def __call__(self) -> float:
        self._n += 1
        return self._n * RECORD_TICK_S


class SimTracer(Tracer):
    """A process's trace on the simulation's clock; message ids given by ``SimTrace``."""

    def __init__(self, path: str, who: str, role: str, clock: _Clock):
        self._clock = clock
        super().__init__(path, who, role)

    def now(self) -> float:
        return self._clock()

    def message(self, direction: str, src: str, dst: str, peer: str, msg: Any, n: int) -> None:
        """The ``n``-th message on the link ``src`` -> ``dst``, as sent or received here."""
        self._links[(src, dst)] = n - 1  # the base counts it: the n-th
        self._message(direction, src, dst, peer, msg, None)


class SimTrace:
    """The traces of one world, in ``directory``: ``attach`` it before ``world.run()``,
    ``close`` it after (also after a failure: the schedule up to it is written)."""

    def __init__(self, world, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.world = world
        self.directory = directory
        clock = _Clock()
        self.tracers: dict[str, SimTracer] = {}
        for name in world.directories:
            self.tracers[name] = SimTracer(self._path(name), name, "manager", clock)
        for name in world.nodes:
            self.tracers[name] = SimTracer(self._path(name), name, "node", clock)
        #: (src, dst) -> messages sent on it so far; and those in flight: (message, number)
        self._sent: dict[tuple[str, str], int] = {}
        self._flying: dict[tuple[str, str], deque] = {}

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.trace")

    @property
    def paths(self) -> list[str]:
        return [self._path(name) for name in self.tracers]

    def attach(self) -> "SimTrace":
        world = self.world
        first_tracer = self.tracers[next(iter(world.directories))]
        for name, first, count in world.arrays():
            first_tracer.array(name, first, count)
        # the cores trace their steps as a real directory's and node's do
        for name, d in world.directories.items():
            d._trace, d._tracing = self.tracers[name], True
            d.losses._trace = self.tracers[name]
        for name, node in world.nodes.items():
            core = node.core
            core._trace = core.release._trace = self.tracers[name]
            core._tracing = core.release._tracing = True
        send, deliver, kill, notice = (world._send, world._deliver, world._kill,
                                       world._notice_death)

        def traced_send(src: str, dst: str, msg, data, copies: int = 1) -> bool:
            n = self._sent.get((src, dst), 0) + 1
            self._sent[(src, dst)] = n
            self._flying.setdefault((src, dst), deque()).append((msg, n))
            self.tracers[src].message("send", src, dst, dst, msg, n)
            return send(src, dst, msg, data, copies)

        def traced_deliver(pair: tuple[str, str]) -> None:
            msg = world.channels[pair][0].msg
            flying = self._flying.get(pair, deque())
            if msg is None or not any(m is msg for m, _ in flying):
                deliver(pair)  # an acknowledgement, a replay or a duplicate: no record of its own
                return
            while flying and flying[0][0] is not msg:  # lost with a killed node
                flying.popleft()
            if flying:
                src, dst = pair
                self.tracers[dst].message("recv", src, dst, src, msg, flying.popleft()[1])
            deliver(pair)

        def traced_kill(node) -> None:
            self.tracers[node.name](-1, "KILLED", node.name, "alive", "dead")
            kill(node)

        def traced_notice(name: str) -> None:
            for shard in world.directories:
                self.tracers[shard](-1, "NOTICED", name, "alive", "dead")
            notice(name)

        world._send, world._deliver = traced_send, traced_deliver
        world._kill, world._notice_death = traced_kill, traced_notice
        return self

    def close(self) -> None:
        for tracer in self.tracers.values():
            tracer.close()
