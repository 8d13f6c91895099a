"""The simulator with the kernel's userfaultfd events on (``dsm/sim/processes.py``): the nodes'
processes fork, unmap and move (mremap) pages, and remove them (MADV_REMOVE punches, DONTNEED
keeps), handled by the agent's own code (``dsm/core/events.py``), over a kernel that answers
EAGAIN while events are queued and ENOENT where a process no longer maps a range. Seeds across
managers, faults and deaths keep every invariant (a removal is a write of zeros); the agent's
former handling of ENOENT (a protection skipped where a range moved) is caught."""

from __future__ import annotations

import errno
import logging

import pytest

from dsm.core.kernel import KernelCalls
from dsm.sim import nodes
from dsm.sim.links import Faults
from dsm.sim.processes import KernelEvents
from dsm.sim.world import SimulationFailure, World

pytestmark = pytest.mark.timeout(120)

#: each kind of event at this rate per step
RATE = 0.05
#: the kernel's and the links' faults in the configurations that have them
FAULTS = 0.05
#: (name, World keyword arguments, seeds): 175 seeds, a few seconds each configuration
CONFIGS = [
    ("relay, give-backs", dict(manager="relay", give_backs=True), range(60)),
    ("central, faults", dict(manager="central", faults=Faults.everywhere(FAULTS)), range(25)),
    ("distributed, 2 shards, faults", dict(manager="distributed", shards=2,
                                           faults=Faults.everywhere(FAULTS)), range(25)),
    ("relay, bands, 2 threads, faults", dict(bands=True, threads_per_node=2,
                                             faults=Faults.everywhere(FAULTS)), range(15)),
    ("central, a death, faults", dict(manager="central", deaths=1, nodes=4,
                                      faults=Faults.everywhere(FAULTS)), range(25)),
    ("relay, release pages", dict(release_pages=3), range(25)),
]


@pytest.fixture(autouse=True)
def _quiet_losses(caplog):
    caplog.set_level(logging.CRITICAL)  # the simulated losses log loudly, as they should


@pytest.mark.parametrize("name,kwargs,seeds", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_every_invariant_holds_with_the_kernels_events_on(name, kwargs, seeds):
    done = dict.fromkeys(("forks", "unmaps", "remaps", "removes", "punched", "discarded",
                          "enoent"), 0)
    for seed in seeds:
        w = World(seed, kernel_events=KernelEvents.everywhere(RATE), **kwargs)
        w.run()
        for kind in done:
            done[kind] += w.event_counters[kind]
    # every event struck, punched pages were discarded, and ioctls found ranges gone
    assert all(done.values()), done


def test_without_events_a_seed_runs_as_before():
    """The events draw nothing from the generator while they are off: a seed's schedule is
    the one it had (the same steps with the option at zero)."""
    plain, off = World(7, give_backs=True), World(7, give_backs=True,
                                                  kernel_events=KernelEvents())
    plain.run()
    off.run()
    assert plain.schedule == off.schedule


class _SkippingKernelCalls(KernelCalls):
    """The agent's handling of ENOENT before it followed the process's mappings: a protection
    that finds its range gone skips it, though the range may only have moved."""

    def writeprotect(self, proc, first, count, wp):
        for addr, length in self.kernel.addresses(proc, first, count):
            err = self._retried(proc, lambda: self.kernel.writeprotect(proc, addr, length, wp),
                                "UFFDIO_WRITEPROTECT")
            if err == errno.ENOENT:
                continue
            if not self._settled(proc, err, "UFFDIO_WRITEPROTECT"):
                return


def test_a_protection_skipped_where_a_range_moved_is_caught(monkeypatch):
    monkeypatch.setattr(nodes, "KernelCalls", _SkippingKernelCalls)
    failure = None
    for seed in range(200):
        try:
            World(seed, give_backs=True, kernel_events=KernelEvents.everywhere(RATE)).run()
        except SimulationFailure as exc:
            failure = str(exc)
            break
    assert failure is not None and "can write without a fault" in failure, failure
