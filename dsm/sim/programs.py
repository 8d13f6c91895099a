"""Random data-race-free programs for the simulator's release-consistency pages, so that
DRF-SC applies: every read must return the last write to its location in happens-before order,
and under these disciplines that is simply the last write completed before the read in the
simulation's global order:

- a *locked* location is only touched inside a critical section of its one lock;
- a *phased* location has, in each phase between two barriers (of every thread), at most one
  thread that touches it (reading and writing); in a phase with no such writer anyone may
  read it.

Sequential locations (outside the release pages) are read and written anywhere: those pages
are sequentially consistent, races and all. Every program ends with a barrier, so that at the
end every write has been released.

Random locations seldom fault on three pages in a row, so a node's requests for release pages
name one page, nearly always. *Sweep* programs (``sweep_programs``) go through bands of pages
in order, as a stencil's or a matrix's threads do: their faults open read-ahead windows, and a
node's one request asks for a run of pages, which may come out partly private and partly shared
at their home when its holder is fetched for them while another node asks for one of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from dsm.directory.sync import SyncStatus
from dsm.sim.model import SLOTS_PER_PAGE

#: the locks of the programs (few: threads must contend for them)
NUM_LOCKS = 3
#: the share of release locations protected by a lock (the others are phased)
LOCKED_SHARE = 0.5
#: how often a phased location has no writer in a phase (everyone may read it then)
READ_ONLY_PHASE = 0.4
#: accesses in one critical section, at most
MAX_CRITICAL_ACCESSES = 3
#: how a thread's next step is drawn: a critical section below the first share, an access to
#: a phased location below the second, else an access to a sequential location
CRITICAL_SECTION_SHARE, PHASED_SHARE = 0.4, 0.8
#: how often a thread's access to a phased location it owns in the phase is a write
WRITE_SHARE = 0.5
#: the barrier phases of a program, by default
DEFAULT_PHASES = 3
#: the kinds of a program's synchronization operations (the others are "r" and "w")
LOCK, UNLOCK, WAIT = "lock", "unlock", "barrier"
SYNC_OPS = (LOCK, UNLOCK, WAIT)
#: the answers a simulated thread expects to each (broken ones: a node died)
EXPECTED = {LOCK: (SyncStatus.GRANTED, SyncStatus.GRANTED_BROKEN), UNLOCK: (SyncStatus.RELEASED,),
            WAIT: (SyncStatus.PASSED, SyncStatus.BROKEN)}
#: the fewest pages of a sweep's band: three faults in a row open a read-ahead window
#: (``dsm.core.readahead``), and the band's next fault asks for a run of the rest
MIN_BAND_PAGES = 6
#: how often a slot of a band has no writer in a sweep phase (the band's other threads read it)
READ_ONLY_SLOT = 0.25
#: how often a writer's sweep reads each location before writing it (else it only writes: a
#: write fault on a page this node does not hold, which takes another's private page over)
READ_THEN_WRITE = 0.15
#: how often a reader goes through its band in a random order rather than in page order (its
#: requests then name one page each, anywhere in the band)
READ_IN_ANY_ORDER = 0.5
#: how often a thread touches a sequential location after its sweep
SEQUENTIAL_AFTER_SWEEP = 0.3


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
                if locks and pick < CRITICAL_SECTION_SHARE:
                    lock = rng.choice(locks)
                    guarded = rules.locked_by(lock)
                    ops.append((LOCK, lock))
                    for _ in range(rng.randint(1, MAX_CRITICAL_ACCESSES)):
                        ops.append((rng.choice("rw"), rng.choice(guarded)))
                        done += 1
                    ops.append((UNLOCK, lock))
                elif readable and pick < PHASED_SHARE:
                    loc = rng.choice(readable)
                    ops.append(("w" if loc in mine and rng.random() < WRITE_SHARE else "r", loc))
                    done += 1
                elif sequential_locations:
                    ops.append((rng.choice("rw"), rng.choice(sequential_locations)))
                    done += 1
                elif not locks and not readable:
                    break  # nothing this thread may touch in this phase
            ops.append((WAIT, phase))
        programs.append(ops)
    return programs


def _bands(rng: random.Random, pages: int) -> list[range]:
    """The release pages cut at random into bands of at least ``MIN_BAND_PAGES`` (one band when
    they are too few to cut)."""
    cuts = [0]
    while pages - cuts[-1] >= 2 * MIN_BAND_PAGES:
        cuts.append(rng.randint(cuts[-1] + MIN_BAND_PAGES, pages - MIN_BAND_PAGES))
    cuts.append(pages)
    return [range(first, end) for first, end in zip(cuts, cuts[1:])]


def _location(page: int, slot: int) -> int:
    return page * SLOTS_PER_PAGE + slot


def sweep_programs(rng: random.Random, threads: int, release_pages: int,
                   sequential_locations: range,
                   phases: int = DEFAULT_PHASES) -> list[list[tuple[str, int]]]:
    """``threads`` data-race-free programs that sweep bands of the release pages (cut once, as
    a stencil's rows are), a barrier after each phase. In the first phase each band is written
    whole by one thread (a first touch: its node's private pages at their home). In each
    later phase the threads are dealt out to the bands: each slot of a band is written by one
    of them (or, now and then, by none), page after page, and read back; the band's other
    threads read a slot nobody writes, in page order or in any. The band's last writer is not
    dealt it first again: its pages move on to another node. All start at the barrier, so a
    writer's request for a run of another node's private pages meets other nodes' requests for
    some of those pages while their holder is fetched (``dsm.directory.release``). After its
    sweep a thread may touch a sequential location."""
    programs: list[list[tuple[str, int]]] = [[] for _ in range(threads)]
    bands = _bands(rng, release_pages)
    #: each band's last writer: its first toucher, then the writer of the slot dealt last
    last_writer = [rng.randrange(threads) for _ in bands]
    for phase in range(phases):
        sweeps: dict[int, list[tuple[str, int]]] = {}
        if phase == 0:  # the first touches
            for band, toucher in zip(bands, last_writer):
                sweeps.setdefault(toucher, []).extend(
                    ("w", _location(q, slot)) for q in band for slot in range(SLOTS_PER_PAGE))
        else:
            dealt = list(range(threads))
            rng.shuffle(dealt)
            for k, band in enumerate(bands):
                takers = dealt[k::len(bands)]
                if len(takers) > 1 and takers[0] == last_writer[k]:
                    takers.append(takers.pop(0))
                readable: list[int] = []
                for slot in rng.sample(range(SLOTS_PER_PAGE), SLOTS_PER_PAGE):
                    if not takers or rng.random() < READ_ONLY_SLOT:
                        readable.append(slot)
                        continue
                    writer = takers.pop(0)
                    kinds = "rw" if rng.random() < READ_THEN_WRITE else "w"
                    sweeps[writer] = ([(kind, _location(q, slot)) for q in band for kind in kinds]
                                      + [("r", _location(q, slot)) for q in band])
                    last_writer[k] = writer
                for me in takers if readable else []:
                    slot, order = rng.choice(readable), list(band)
                    if rng.random() < READ_IN_ANY_ORDER:
                        rng.shuffle(order)
                    sweeps[me] = [("r", _location(q, slot)) for q in order]
        for me, ops in enumerate(programs):
            ops += sweeps.get(me, [])
            if sequential_locations and rng.random() < SEQUENTIAL_AFTER_SWEEP:
                ops.append((rng.choice("rw"), rng.choice(sequential_locations)))
            ops.append((WAIT, phase))
    return programs


def guarded_locations(programs: list[list[tuple[str, int]]]) -> dict[int, list[int]]:
    """The locations the even-numbered locks guard (``node.lock(..., guards=...)``: their
    grants carry the pages): those the programs touch inside those locks' critical sections.
    The odd-numbered ones guard nothing, so that both kinds of lock contend in one program."""
    guarded: dict[int, set[int]] = {}
    for ops in programs:
        inside: int | None = None
        for kind, arg in ops:
            if kind == LOCK:
                inside = arg if arg % 2 == 0 else None
            elif kind == UNLOCK:
                inside = None
            elif inside is not None and kind in "rw":
                guarded.setdefault(inside, set()).add(arg)
    return {lock: sorted(locs) for lock, locs in guarded.items()}
