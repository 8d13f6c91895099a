"""Release consistency in the simulator (``World(release_pages=K)``): the coordinator's locks,
barriers and write notices, and the threads' synchronization (the agent's twins and diffs are
the shared runner's, ``dsm.core.carryout``, over the model's memory, ``dsm.sim.agent``).

The coordinator (the directory, or shard 0 of a sharded manager) is the directory state machine
(``dsm.directory.machine``), which serves them through its ``SyncRequests``
(``dsm/directory/syncrequests.py``) and that one's handler table: a release
(``LockRelease``, ``BarrierWait``) hands its write notices over before the lock table sees it,
and every reply that ends an acquire carries the notices the asking node has not taken yet.
Lock and barrier messages travel on the same channels as the pages' (a node's one pipe to shard
0), on its session.

A thread's lock release or barrier arrival goes through ``NodeCore.release_sync`` (the diffs
go home first); an answer goes through the node's inbox (``dsm.core.inbox``, the agent's own),
which hands its notices to ``NodeCore.acquire_sync``, and only then does the thread go on
(``Resume``), as the agent answers its process after carrying the actions out.

The programs (``dsm.sim.programs``) are data-race free, so each read is checked against the
last write in the simulation's order (DRF-SC); at the end, after the last barrier, every home
copy and every copy still held must be current (``check_released``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dsm import protocol as p
from dsm.agent.twins import changed_bytes
from dsm.core import actions as a
from dsm.core.release import RELEASE
from dsm.core.states import PageState, unpack_runs
from dsm.directory.sync import SyncStatus
from dsm.sim import programs
from dsm.sim.model import PAGE_BYTES, SLOTS_PER_PAGE, SimulationFailure, slot_value

if TYPE_CHECKING:
    from dsm.sim.nodes import SimNode, Thread

#: the states of a release page held by a node
HELD_RELEASE = (*RELEASE, PageState.PRIVATE)
#: the name of the barrier every thread waits at between phases
BARRIER = "phase"
#: the process id of every simulated thread's holder name ("node:pid:thread")
SIM_PID = 1
#: the messages the coordinator serves (the others go to the pages' shards)
SYNC_MESSAGES = (p.LockAcquire, p.LockRelease, p.BarrierWait)
#: a lock request waits for its grant for ever (no deadline)
NO_TIMEOUT_MS = -1


def lock_name(lock: int) -> str:
    return f"lock{lock}"


def holder(node: str, tid: int) -> str:
    return f"{node}:{SIM_PID}:{tid}"


@dataclass(frozen=True)
class Resume:
    """A model action (not the core's): the agent answers a thread's lock or barrier request,
    which lets it go on. Appended after the core's actions, so that a thread resumes only
    once the agent carried out what the answer asked (the acquire's punches)."""

    tid: int


def diff_against_twins(twins: dict[int, bytes], now: bytes, first: int, count: int,
                       page_bytes: int) -> tuple[p.DiffEncoding, bytes, bytes]:
    """What the agent's ``Twins.diff`` computes, on the model's bytes: where ``now`` (the
    run's bytes) differs from the twins, which are dropped (a page without a twin counts as
    changed everywhere)."""
    current = np.frombuffer(now, dtype=np.uint8)
    was = np.empty_like(current)
    for i in range(count):
        page = slice(i * page_bytes, (i + 1) * page_bytes)
        twin = twins.pop(first + i, None)
        was[page] = ~current[page] if twin is None else np.frombuffer(twin, dtype=np.uint8)
    return changed_bytes(was, current)


class ReleaseSimulation:
    """The release-consistency part of ``dsm.sim.world.World`` (a mixin: it uses the world's
    network, nodes and schedule)."""

    def _resume(self, node: SimNode, act: Resume) -> None:
        """The agent answers the thread's lock or barrier request: it goes on."""
        for t in node.threads:
            if t.tid == act.tid:
                t.waits_for = None

    def _sync(self, t: Thread, kind: str, arg: int) -> None:
        """A lock acquire or release, or a barrier wait: the agent forwards it to the
        coordinator (a release through the core: the diffs go first) and the thread waits for
        the answer."""
        node = t.node
        self._step(f"{node.name}/t{t.tid} {kind} {arg}")
        self._touched = None  # the answer may invalidate any release page
        self._finish(node)  # the request waits in the agent's socket for its loop
        req, node.next_req = node.next_req, node.next_req + 1
        who = holder(node.name, t.tid)
        node.sync_waiters[req] = t
        t.waits_for = kind
        t.next_op += 1
        if kind != programs.LOCK:  # a release: its writes are safe once it is answered
            carried = (node.carried_by_lock.pop((t.tid, arg), set()) if kind == programs.UNLOCK
                       else set())
            node.releasing[req] = (node.unreleased, node.twinned | carried)
            node.unreleased, node.twinned = set(), set()
        if kind == programs.LOCK:
            node.core.lock_requested(req)  # (as the agent's forwarder tells it)
            guards = self.lock_guards.get(arg, [])
            # the grant dirties the pages it carries at their home, until their Diff or this
            # lock's release: lost with the node should it die before either
            node.carried_by_lock[t.tid, arg] = unpack_runs(guards)
            acts = [a.Send(p.LockAcquire(req, lock_name(arg), who, NO_TIMEOUT_MS, guards))]
        elif kind == programs.UNLOCK:
            acts = node.core.release_sync(p.LockRelease(req, lock_name(arg), who))
        else:
            acts = node.core.release_sync(p.BarrierWait(req, BARRIER, self.parties, who))
        self._carry_out(node, acts)

    def _answered(self, node: SimNode, msg: p.Message) -> bool:
        """The node's inbox answers a thread's request (``dsm.core.inbox``: an acquire's notices
        went to the core first): the coordinator's answer to its lock or barrier request, and
        it goes on once the agent carried out what the inbox asked before (``Resume``, after
        those actions). The model's threads ask nothing else, and nothing of theirs is refused:
        another answer, an Error, fails the run."""
        if type(msg) is not p.SyncReply:
            raise SimulationFailure(f"{node.name}, alive, was answered {msg}")
        t = node.sync_waiters.pop(msg.req, None)
        if t is None:
            raise SimulationFailure(f"{node.name}: an answer to no request: {msg}")
        node.releasing.pop(msg.req, None)
        expected = programs.EXPECTED[t.waits_for]
        if msg.status == SyncStatus.BROKEN and t.waits_for == programs.WAIT:
            t.next_op = len(t.ops)  # a node died: the barrier raises, the program ends
        elif msg.status not in expected:
            raise SimulationFailure(f"{node.name}/t{t.tid}: {t.waits_for} answered "
                                    f"{SyncStatus(msg.status).name}, not one of "
                                    f"{[s.name for s in expected]}: {msg.detail}")
        node.taken.append(Resume(t.tid))
        return True

    # --- deaths --------------------------------------------------------------------------------
    def _wrote_release(self, node: SimNode, loc: int, value: int) -> None:
        node.unreleased.add(loc)
        self.writes.setdefault(loc, []).append((value, node.name))
        self.after_death.pop(loc, None)  # a write after the death: the last write is sure

    def _release_node_died(self, node: SimNode) -> None:
        """The writes ``node`` made since its last answered release may not have reached
        their homes: a read may see any of them, or what was there before them (a lock
        passed on broken: the data may be half-updated), or fail (the page lost, Dirtied)."""
        releasing = list(node.releasing.values())
        doubtful = set(node.unreleased).union(*(locs for locs, _ in releasing))
        self.maybe_lost_release_pages.update(node.twinned, *(pages for _, pages in releasing),
                                             *node.carried_by_lock.values())
        # its private pages' only current copy was its own
        self.maybe_lost_release_pages.update(
            q for q, st in node.core.state.items() if st is PageState.PRIVATE)
        for loc in doubtful:
            history = self.writes.get(loc, [])
            sure = max((i for i, (_, w) in enumerate(history) if w != node.name), default=-1)
            before = history[sure][0] if sure >= 0 else 0
            self.after_death.setdefault(loc, set()).update(
                [before] + [v for v, _ in history[sure + 1:]])
            self.maybe_lost_release_pages.add(loc // SLOTS_PER_PAGE)

    def _check_released(self) -> None:
        """Every program ended at a barrier, which released every write: each release page's
        home copy is the last value written, and so is every copy a node still holds."""
        for page in range(self.release_pages):
            homes = self.directories[self._shard_of(page)].release
            _, home = homes.home.get(page, 1)
            # (a private page's home copy is not current: its one holder's is)
            copies = [] if page in homes.private else [
                ("the home copy", bytes(PAGE_BYTES) if home is None else home)]
            copies += [(f"{n.name}'s copy", n.memory[page]) for n in self.nodes.values()
                       if n.alive and n.core.state.get(page) in HELD_RELEASE
                       and page in n.memory]
            for slot in range(SLOTS_PER_PAGE):
                loc = page * SLOTS_PER_PAGE + slot
                for what, data in copies:
                    got = slot_value(data, slot)
                    if got != self.truth[loc]:
                        raise SimulationFailure(f"after the last barrier {what} of page {page} "
                                                f"holds {got} at location {loc}; the last "
                                                f"write was {self.truth[loc]}")
