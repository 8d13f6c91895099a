"""Release consistency in the simulator: the coordinator's locks, barriers and write notices, the
agent's twins and diffs, and random data-race-free programs to run on release pages.

The coordinator (the directory, or shard 0 of a sharded manager) is wired as
``dsm.directory.service`` wires it: a release (``LockRelease``, ``BarrierWait``) hands its write
notices to ``WriteNotices`` before the ``SyncTable`` sees it, and every reply that ends an
acquire (``ACQUIRES``) carries the notices the asking node has not taken yet.

The programs are data-race free, so that DRF-SC applies: every read must return the last write
to its location in happens-before order, and under these disciplines that is simply the last
write completed before the read in the simulation's global order:

- a *locked* location is only touched inside a critical section of its one lock;
- a *phased* location has, in each phase between two barriers (of every thread), at most one
  thread that touches it (reading and writing); in a phase with no such writer anyone may
  read it.

Every program ends with a barrier, so that at the end every write has been released: the home
copies and every copy still held must then be current.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from dsm import protocol as p
from dsm.agent.twins import changed_spans
from dsm.directory.notices import WriteNotices
from dsm.directory.service import ACQUIRES
from dsm.directory.sync import SyncStatus, SyncTable

#: the locks of the programs (few: threads must contend for them)
NUM_LOCKS = 3
#: the share of release locations protected by a lock (the others are phased)
LOCKED_SHARE = 0.5
#: how often a phased location has no writer in a phase (everyone may read it then)
READ_ONLY_PHASE = 0.4
#: accesses in one critical section, at most
MAX_CRITICAL_ACCESSES = 3
#: the barrier phases of a program, by default
DEFAULT_PHASES = 3
#: the name of the barrier every thread waits at between phases
BARRIER = "phase"
#: the process id of every simulated thread's holder name ("node:pid:thread")
SIM_PID = 1
#: the kinds of a program's synchronization operations (the others are "r" and "w")
LOCK, UNLOCK, WAIT = "lock", "unlock", "barrier"
SYNC_OPS = (LOCK, UNLOCK, WAIT)
#: the answers a simulated thread expects to each (no node dies in these runs)
EXPECTED = {LOCK: SyncStatus.GRANTED, UNLOCK: SyncStatus.RELEASED, WAIT: SyncStatus.PASSED}


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


class Coordinator:
    """Locks, barriers and write notices, as the directory's service serves them."""

    def __init__(self, num_pages: int, clock):
        self.sync = SyncTable(clock)
        self.notices = WriteNotices(num_pages)

    def joined(self, node: str) -> None:
        self.notices.joined(node)

    def handle(self, node: str, msg: p.Message) -> list[tuple[str, p.SyncReply]]:
        if isinstance(msg, p.LockAcquire):
            replies = self.sync.acquire(node, msg.req, msg.name, msg.holder, None)
        elif isinstance(msg, p.LockRelease):
            self.notices.released(node, msg.notices)
            replies = self.sync.release(node, msg.req, msg.name, msg.holder)
        elif isinstance(msg, p.BarrierWait):
            self.notices.released(node, msg.notices)
            replies = self.sync.wait(node, msg.req, msg.name, msg.parties, msg.holder)
        else:
            raise TypeError(f"the coordinator serves no {type(msg).__name__}")
        return [(r.node, p.SyncReply(r.req, int(r.status), r.detail,
                                     self.notices.take(r.node) if r.status in ACQUIRES else []))
                for r in replies]


#: the messages the coordinator serves (the others go to the pages' shards)
SYNC_MESSAGES = (p.LockAcquire, p.LockRelease, p.BarrierWait)


def diff_against_twins(twins: dict[int, bytes], now: bytes, first: int, count: int,
                       page_bytes: int) -> tuple[list[int], bytes]:
    """What the agent's ``Twins.diff`` computes, on the model's bytes: the spans of ``now`` (the
    run's bytes) that differ from the twins, which are dropped (a page without a twin counts
    as changed everywhere)."""
    current = np.frombuffer(now, dtype=np.uint8)
    was = np.empty_like(current)
    for i in range(count):
        page = slice(i * page_bytes, (i + 1) * page_bytes)
        twin = twins.pop(first + i, None)
        was[page] = ~current[page] if twin is None else np.frombuffer(twin, dtype=np.uint8)
    return changed_spans(was, current)


# --- data-race-free programs ------------------------------------------------------------------------
@dataclass
class Discipline:
    """How a program's release locations are protected."""

    lock_of: dict[int, int]  #: locked location -> its lock
    #: per phase: phased location -> the index of its one thread (None: read-only then)
    writers: list[dict[int, int | None]] = field(default_factory=list)

    def locked_by(self, lock: int) -> list[int]:
        return sorted(loc for loc, k in self.lock_of.items() if k == lock)


def drf_programs(rng: random.Random, threads: int, release_locations: range,
                 sequential_locations: range, accesses_per_thread: int,
                 phases: int = DEFAULT_PHASES) -> list[list[tuple[str, int]]]:
    """``threads`` programs of ``(kind, argument)``: reads and writes ("r", "w": a location),
    critical sections (LOCK, UNLOCK: a lock), and a barrier (WAIT: the phase) after each
    phase. Sequential locations are read and written anywhere (those pages are sequentially
    consistent: races are allowed there)."""
    lock_of = {loc: rng.randrange(NUM_LOCKS) for loc in release_locations
               if rng.random() < LOCKED_SHARE}
    phased = [loc for loc in release_locations if loc not in lock_of]
    rules = Discipline(lock_of)
    for _ in range(phases):
        rules.writers.append({loc: None if rng.random() < READ_ONLY_PHASE
                              else rng.randrange(threads) for loc in phased})
    locks = [k for k in range(NUM_LOCKS) if rules.locked_by(k)]
    per_phase = max(1, accesses_per_thread // phases)
    programs = []
    for me in range(threads):
        ops: list[tuple[str, int]] = []
        for phase, writers in enumerate(rules.writers):
            mine = [loc for loc, w in writers.items() if w == me]
            readable = mine + [loc for loc, w in writers.items() if w is None]
            done = 0
            while done < per_phase:
                pick = rng.random()
                if locks and pick < 0.4:
                    lock = rng.choice(locks)
                    guarded = rules.locked_by(lock)
                    ops.append((LOCK, lock))
                    for _ in range(rng.randint(1, MAX_CRITICAL_ACCESSES)):
                        ops.append((rng.choice("rw"), rng.choice(guarded)))
                        done += 1
                    ops.append((UNLOCK, lock))
                elif readable and pick < 0.8:
                    loc = rng.choice(readable)
                    ops.append(("w" if loc in mine and rng.random() < 0.5 else "r", loc))
                    done += 1
                elif sequential_locations:
                    ops.append((rng.choice("rw"), rng.choice(sequential_locations)))
                    done += 1
                elif not locks and not readable:
                    break  # nothing this thread may touch in this phase
            ops.append((WAIT, phase))
        programs.append(ops)
    return programs
