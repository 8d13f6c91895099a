"""A simulated node's agent (``dsm.sim.nodes``): the kernel, twins and transport that the shared
runner (``dsm/core/carryout.py``) carries the core's actions out through, as the real agent's
are the memfd, the uffds and ZeroMQ. Only the calls are the simulator's own; what the node does
about each answer is the runner's and ``KernelCalls``' (``dsm/core/kernel.py``), the same code.

The kernel is the node's memory (page -> bytes; absent is a hole), its workload process (the
node itself is the handle: its threads, the pages write-protected in it) and, beside it, the
children it forked, which map the region and touch nothing (``dsm.sim.processes``: each process's
mappings as the kernel and as the agent know them, and its events). An ioctl translates its
address as the kernel maps the process now: EAGAIN while events are queued on its uffd
(mmap_changing; UFFDIO_COPY and UFFDIO_POISON look the range up first: ENOENT where nothing is
mapped), ENOENT where nothing is mapped any more. A thread woken is one blocked at an address
the call covers. With ``Faults`` (``dsm.sim.links``) the kernel answers as the real one does now
and then, each drawn from the world's seeded generator:

- EAGAIN from a write protection, a copy (after a random part of the run: a partial copy) or a
  poison in the workload process: events pending;
- ENOMEM from the same calls: the kernel could not allocate;
- ESRCH from every call on the child once it exited (drawn per call): the node forgets it, and
  the workload forks another, which inherits the parent's write protection;
- a peer that cannot be reached: the answer to whether a Fetch's requester can be, and a page
  send to a peer, which then fails (its ``Fetched(SENT)`` becomes a ``Fetched(DATA)``).
"""

from __future__ import annotations

import errno
import random
from typing import TYPE_CHECKING, Any

from dsm import protocol as p
from dsm.sim import release as rc
from dsm.sim.links import Faults
from dsm.core.events import AddressSpace, follow
from dsm.core.kernel import are_zeros
from dsm.core.states import OWNED
from dsm.sim.model import PAGE_BYTES, SimulationFailure
from dsm.sim.processes import ForkedChild, SimProcess

if TYPE_CHECKING:
    from dsm.sim.nodes import SimNode
    from dsm.sim.world import World


class AgentFaults:
    """The kernel's and the peers' faults of every node of a world, drawn from its generator,
    and counted for the report."""

    def __init__(self, rng: random.Random, faults: Faults):
        self.rng = rng
        self.faults = faults
        self.counters = {"eagain": 0, "enomem": 0, "exited": 0, "unreachable": 0}

    def _strikes(self, rate: float, counter: str) -> bool:
        if rate and self.rng.random() < rate:
            self.counters[counter] += 1
            return True
        return False

    def ioctl(self) -> int:
        """The errno an ioctl on a live workload process answers (0: it goes through)."""
        if self._strikes(self.faults.eagain, "eagain"):
            return errno.EAGAIN
        if self._strikes(self.faults.enomem, "enomem"):
            return errno.ENOMEM
        return 0

    def exits(self) -> bool:
        """Whether a forked child has exited by the time of an ioctl on it."""
        return self._strikes(self.faults.exit, "exited")

    def unreachable(self) -> bool:
        """Whether a peer cannot be reached this time."""
        return self._strikes(self.faults.unreachable, "unreachable")


class SimKernel:
    """``dsm.core.kernel.Kernel`` on the model: one call each, its errno back."""

    page_size = PAGE_BYTES

    def __init__(self, world: World, node: SimNode, faults: AgentFaults):
        self.world = world
        self.node = node
        self.faults = faults
        #: the children the agent serves (adopted at their Fork event, or at start)
        self.children = [self._child_now()]

    def _child_now(self) -> ForkedChild:
        """A child forked now, adopted at once: the parent's mappings and protection."""
        mappings = self.node.space.copy_mappings()
        return ForkedChild(wp=set(self.node.wp), mappings=mappings,
                           space=AddressSpace([*mappings]))

    def processes(self) -> list[Any]:
        return [self.node, *self.children]

    def addresses(self, proc: Any, first: int, count: int) -> list[tuple[int, int]]:
        if proc is not self.node and proc not in self.children:
            return []  # forgotten: it maps nothing any more
        return proc.addresses_of(first * PAGE_BYTES, count * PAGE_BYTES)

    @staticmethod
    def _mapped(proc: SimProcess, addr: int, length: int) -> list[int]:
        """The region pages the kernel maps ``proc`` at in [addr, addr+length)."""
        return [off // PAGE_BYTES for a in range(addr, addr + length, PAGE_BYTES)
                if (off := proc.space.offset_of(a)) is not None]

    def _unmapped(self) -> int:
        """The answer of an ioctl where the process maps nothing any more."""
        self.world.event_counters["enoent"] += 1
        return errno.ENOENT

    def _answer(self, proc: Any) -> int:
        if proc is self.node:
            return self.faults.ioctl()
        if proc.exited or self.faults.exits():
            proc.exited = True
            return errno.ESRCH
        return 0

    def writeprotect(self, proc: Any, addr: int, length: int, wp: bool) -> int:
        err = self._answer(proc)
        if err:
            return err
        if proc.unread:
            return errno.EAGAIN
        pages = self._mapped(proc, addr, length)
        if not pages:
            return self._unmapped()
        if wp:
            proc.wp.update(pages)
        else:
            proc.wp.difference_update(pages)
            if proc is self.node:
                self._wake(addr, length)  # lifting the protection wakes the writers
        return 0

    def copy(self, proc: Any, addr: int, data: memoryview, wp: bool) -> tuple[int, int]:
        if proc is not self.node:
            raise SimulationFailure(f"{self.node.name} copied pages into a process that never "
                                    "faults (its forked child)")
        count = len(data) // PAGE_BYTES
        pages = self._mapped(proc, addr, len(data))
        if not pages or pages != list(range(pages[0], pages[0] + count)):
            return 0, self._unmapped()  # not one mapping of the run any more
        first = pages[0]
        if proc.unread:
            return 0, errno.EAGAIN
        err = self.faults.ioctl()
        if err == errno.EAGAIN:  # a partial copy: some pages went in before the event came
            count = self.faults.rng.randrange(count)
        elif err:
            return 0, err
        memory = self.node.memory
        for i in range(count):
            q = first + i
            if q in memory:
                self._wake(addr, i * PAGE_BYTES)
                return i * PAGE_BYTES, errno.EEXIST
            memory[q] = bytearray(data[i * PAGE_BYTES:(i + 1) * PAGE_BYTES])
            if wp:
                self.node.wp.add(q)
            else:  # UFFDIO_COPY writable: no marker left
                self.node.wp.discard(q)
        self._wake(addr, count * PAGE_BYTES)
        return count * PAGE_BYTES, err

    def wake(self, proc: Any, addr: int) -> int:
        if proc is self.node:
            self._wake(addr, PAGE_BYTES)
        return 0

    def poison(self, proc: Any, addr: int) -> int:
        pages = self._mapped(proc, addr, PAGE_BYTES)
        if not pages:
            return self._unmapped()
        err = self._answer(proc)
        if err:
            return err
        if proc.unread:
            return errno.EAGAIN
        self.node.poisoned.add(pages[0])
        self._wake(addr, PAGE_BYTES)
        return 0

    def read_events(self, proc: Any) -> None:
        """Read the events queued on ``proc``'s uffd (``dsm.sim.processes``): their mapping
        changes apply now (``follow``, the agent's); a madvise waiting for its event's read goes
        on once the agent's current operation is over (MADV_REMOVE punches). Without kernel
        events, an EAGAIN was the fault itself."""
        if not proc.unread:
            return
        unread, proc.unread = proc.unread, []
        proc.events.extend(follow(proc, [event for event, _ in unread]))
        self.world.madvise_going_on += [then for _, then in unread if then is not None]

    def forget(self, proc: Any) -> None:
        if proc is self.node:
            raise SimulationFailure(f"{self.node.name}'s workload process was taken for gone")
        self.children.remove(proc)
        if self.world.kernel_events.any:  # the agent adopts it at its Fork event
            self.world._step(f"{self.node.name}'s forked child exited")
            self.world._fork(self.node)
            return
        self.world._step(f"{self.node.name}'s forked child exited; the workload forks another")
        self.children.append(self._child_now())

    def kill(self, proc: Any, thread_id: int, why: str) -> None:
        raise SimulationFailure(f"{self.node.name} killed a waiter: {why}")

    def read(self, first: int, count: int) -> bytes:
        memory = self.node.memory
        return b"".join(bytes(memory.get(q, bytes(PAGE_BYTES)))
                        for q in range(first, first + count))

    def write(self, offset: int, data: memoryview) -> None:
        first = offset // PAGE_BYTES
        removal = are_zeros(data)  # (of a punched read copy the node owns now: zeros in place)
        for i in range(len(data) // PAGE_BYTES):
            self.node.memory[first + i] = bytearray(data[i * PAGE_BYTES:(i + 1) * PAGE_BYTES])
            if removal and first + i in self.world.zeros_allowed \
                    and self.node.core.state.get(first + i) in OWNED:
                self.world._zeroed(first + i)  # the removal's write of zeros, done now

    def punch(self, first: int, count: int) -> None:
        for q in range(first, first + count):
            self.node.memory.pop(q, None)  # write-protect markers stay (shmem keeps them)

    def _wake(self, addr: int, length: int) -> None:
        """Wake the threads blocked at an address in [addr, addr+length)."""
        for t in self.node.threads:
            if t.blocked_at is not None and addr <= t.blocked_at < addr + length:
                t.blocked_on = t.blocked_at = None


class SimTwins:
    """The twins of the node's release pages, in the model's memory."""

    def __init__(self, kernel: SimKernel):
        self.kernel = kernel
        self.node = kernel.node

    def make(self, first: int, count: int) -> None:
        for q in range(first, first + count):
            self.node.twins[q] = self.kernel.read(q, 1)
            self.node.twinned.add(q)

    def diff(self, first: int, count: int) -> tuple[p.DiffEncoding, bytes, bytes]:
        return rc.diff_against_twins(self.node.twins, self.kernel.read(first, count), first,
                                     count, PAGE_BYTES)

    def drop(self, first: int, count: int) -> None:
        for q in range(first, first + count):
            self.node.twins.pop(q, None)


class SimTransport:
    """The node's sends, onto the world's network (``dsm.sim.network``)."""

    def __init__(self, world: World, node: SimNode, faults: AgentFaults):
        self.world = world
        self.node = node
        self.faults = faults

    def send(self, msg: p.Message, data: Any) -> None:
        world = self.world
        if type(msg) is p.Discard:  # one per shard, as the agent's links split it
            # zeros from the directory's discard on (the truth model)
            world.discarding.update(dict.fromkeys(msg.pages, self.node.name))
            by_shard: dict[str, list[int]] = {}
            for page in msg.pages:
                by_shard.setdefault(world._shard_of(page), []).append(page)
            for shard, pages in by_shard.items():
                world._send(self.node.name, shard, p.Discard(pages), None)
            return
        shard = (world._shard_names[0] if isinstance(msg, rc.SYNC_MESSAGES)
                 else world._shard_of(msg.page))
        world._send(self.node.name, shard, msg, bytes(data) if data is not None else None)

    def send_peer(self, peer: tuple[str, str], msg: p.Message, data: Any) -> bool:
        if self.faults.unreachable():
            self.world._step(f"{self.node.name} cannot reach {peer[0]}: {type(msg).__name__} "
                             "not sent")
            return False
        self.world._send(self.node.name, peer[0], msg, bytes(data) if data is not None else None)
        return True
