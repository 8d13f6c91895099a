"""The workload processes a node agent serves: each one's uffd, its pidfd, and where in its
address space each part of the region is mapped (which Remap and Unmap events change:
``dsm.core.events``)."""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field

from dsm.core.events import Mapping, RegionMappings
from dsm.uffd import Uffd

log = logging.getLogger(__name__)


@dataclass(eq=False)
class WorkloadProcess(RegionMappings):
    uffd: Uffd
    pid: int | None
    mappings: list[Mapping] = field(default_factory=list)
    pidfd: int | None = None
    #: events read from the uffd and not yet handled, in the kernel's order
    events: deque = field(default_factory=deque)
    #: the process this one was forked from (its pid names the child before the child faults)
    parent: "WorkloadProcess | None" = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.pid is not None and self.pidfd is None:
            self.watch_pid(self.pid)

    def watch_pid(self, pid: int) -> None:
        """Learn the process's pid (a forked child's is looked up at its Fork event, or known
        from its first fault's thread)."""
        self.pid = pid
        try:
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.pidfd = None

    def close(self) -> None:
        self.uffd.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def forked(self, child_uffd: Uffd, mappings: list[Mapping]) -> "WorkloadProcess":
        """The child of a fork maps the region where its parent did then (``mappings``)."""
        return WorkloadProcess(child_uffd, None, mappings, parent=self)


def thread_group_of(tid: int) -> int | None:
    """The process id (Tgid) of a thread id, from /proc; None if it is gone."""
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def children_of(pid: int) -> list[int]:
    """The child processes of every thread of ``pid``, from /proc; [] if it is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children.extend(int(c) for c in f.read().split())
        except OSError:  # the thread exited meanwhile
            continue
    return children


def maps_file(pid: int, st: os.stat_result) -> bool:
    """Whether process ``pid`` maps the file ``st`` describes (matched by device and inode in
    /proc/PID/maps); False if it is gone."""
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    ino = str(st.st_ino)
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                # start-end perms offset dev inode [path]
                fields = line.split(maxsplit=5)
                if len(fields) >= 5 and fields[4] == ino and fields[3] == dev:
                    return True
    except OSError:
        return False
    return False
