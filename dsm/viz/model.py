"""Traces merged into one picture: every record on the reference clock, messages paired.

Input: the trace files of the directory and the agents (``dsm.trace`` describes the records).
Output (``Timeline``): every record with ``ts``, its time on the reference process's clock (the
manager the clock records refer to, ``directory``), the lanes (one per process, managers first),
and every message as a ``Message`` (its send record and its receive record, paired by ``id``).

Clocks, in two steps:
1. each process's own clock records (NTP estimates: ``dsm.clocksync``) shift its times: for
   each record, the narrowest estimate made within ``DRIFT_WINDOW_S`` of it;
2. what is left of the error is bounded by the messages themselves: a receive never precedes its
   send. Every message from S to R says R's clock reads at least ``send_S - recv_R`` behind
   S's; with the reference's clock fixed these bounds (from messages with the reference and,
   through chains, between nodes: pages go node to node) give each process the smallest shift
   (often none) that satisfies them all. Should the bounds contradict each other (a clock that
   drifted), each receive still drawn before its send is drawn at its send (``clamped``).
A message whose transit, so placed, is shorter than the clock estimates' uncertainty is marked
``uncertain``: its length is not known, only its direction.
"""

from __future__ import annotations

import bisect
import json
import sys
from dataclasses import dataclass, field
from typing import Iterable, Iterator

#: the process whose clock the merged timeline uses when no clock record names one
DEFAULT_REFERENCE = "directory"
#: a clock estimate is used for the records this close to it (clocks drift: far ones may be off)
DRIFT_WINDOW_S = 60.0


def read_trace(path: str) -> Iterator[dict]:
    """The records of one trace file; a line that is not a record is reported and skipped."""
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                float(record["t"])
                record["who"]
            except (ValueError, KeyError, TypeError):
                print(f"dsm trace: {path}:{number}: not a trace line, skipped", file=sys.stderr)
                continue
            yield record


def kind_of(record: dict) -> str:
    """``msg``, ``clock``, ``start``, ``array`` or ``step``."""
    if "dir" in record:
        return "msg"
    if "array" in record and "event" not in record:
        return "array"
    if "clock" in record:
        return "clock"
    if "role" in record:
        return "start"
    return "step"


@dataclass
class Message:
    send: dict | None
    recv: dict | None

    @property
    def record(self) -> dict:
        return self.send if self.send is not None else self.recv

    @property
    def src(self) -> str:
        return self.send["who"] if self.send is not None else self.recv["peer"]

    @property
    def dst(self) -> str:
        return self.recv["who"] if self.recv is not None else self.send["peer"]


@dataclass
class Timeline:
    records: list[dict]  #: every record, each with ``ts``, sorted by it
    lanes: list[str]  #: managers first, then nodes by name
    roles: dict[str, str]
    messages: list[Message]  #: sorted by send (or receive) time
    reference: str
    #: process -> (offset of its clock, error) as finally applied, for the view's legend
    clocks: dict[str, tuple[float, float]] = field(default_factory=dict)

    def steps(self) -> list[dict]:
        return [r for r in self.records if kind_of(r) == "step"]


class _Clock:
    """A process's piecewise offset to the reference: its clock records, in time order."""

    def __init__(self, records: list[dict]):
        records = sorted(records, key=lambda r: r["t"])
        self.times = [r["t"] for r in records]
        self.offsets = [float(r["offset"]) for r in records]
        self.errors = [float(r["error"]) for r in records]

    def at(self, t: float) -> tuple[float, float]:
        """The narrowest estimate made within DRIFT_WINDOW_S of ``t`` (the nearest one if none
        was)."""
        if not self.times:
            return 0.0, 0.0
        lo = bisect.bisect_left(self.times, t - DRIFT_WINDOW_S)
        hi = bisect.bisect_right(self.times, t + DRIFT_WINDOW_S)
        if lo == hi:
            i = min(max(0, lo - 1), len(self.times) - 1)
            if lo < len(self.times) and abs(self.times[lo] - t) < abs(self.times[i] - t):
                i = lo
        else:
            i = min(range(lo, hi), key=self.errors.__getitem__)
        return self.offsets[i], self.errors[i]


def merge(paths: Iterable[str]) -> Timeline:
    records = [r for path in paths for r in read_trace(path)]
    return build(records)


def build(records: list[dict]) -> Timeline:
    roles: dict[str, str] = {}
    clock_records: dict[str, list[dict]] = {}
    for r in records:
        k = kind_of(r)
        if k == "start":
            roles[r["who"]] = r["role"]
        elif k == "clock":
            clock_records.setdefault(r["who"], []).append(r)
    refs = {r["clock"] for rs in clock_records.values() for r in rs}
    reference = next(iter(refs)) if len(refs) == 1 else DEFAULT_REFERENCE
    for who in {r["who"] for r in records}:
        roles.setdefault(who, "manager" if who == reference else "node")
    clocks = {who: _Clock(rs) for who, rs in clock_records.items()}
    errors: dict[str, float] = {}
    for r in records:
        clock = clocks.get(r["who"])
        offset, error = clock.at(r["t"]) if clock else (0.0, 0.0)
        r["ts"] = r["t"] + offset
        errors[r["who"]] = min(errors.get(r["who"], error), error) if clock else 0.0

    messages = _pair(records)
    shifts = _shifts(messages, reference)
    for r in records:
        r["ts"] += shifts.get(r["who"], 0.0)
    for m in messages:
        if m.send is not None and m.recv is not None:
            transit = m.recv["ts"] - m.send["ts"]
            if transit < 0:
                m.recv["ts"] = m.send["ts"]
                m.recv["clamped"] = True
            uncertainty = errors.get(m.send["who"], 0.0) + errors.get(m.recv["who"], 0.0)
            if transit < uncertainty:
                m.send["uncertain"] = m.recv["uncertain"] = uncertainty
    records.sort(key=lambda r: r["ts"])
    messages.sort(key=lambda m: m.record["ts"])
    lanes = sorted(roles, key=lambda w: (roles[w] != "manager", w))
    final = {}
    for who in lanes:
        clock = clocks.get(who)
        offset = clock.offsets[-1] if clock and clock.offsets else 0.0
        final[who] = (offset + shifts.get(who, 0.0), errors.get(who, 0.0))
    return Timeline(records, lanes, roles, messages, reference, final)


def _pair(records: list[dict]) -> list[Message]:
    """Messages by id: a send and its receive (one side alone when only one end traced it)."""
    by_id: dict[tuple[str, str], Message] = {}
    out: list[Message] = []
    for r in records:
        if kind_of(r) != "msg":
            continue
        # the same id could repeat in traces appended to across runs: pair within one sender
        key = (r["id"], r["who"] if r["dir"] == "send" else r["peer"])
        m = by_id.get(key)
        if m is None:
            m = by_id[key] = Message(None, None)
            out.append(m)
        if r["dir"] == "send":
            if m.send is not None:  # an id reused (a restarted process): a new message
                m = by_id[key] = Message(None, None)
                out.append(m)
            m.send = r
        else:
            if m.recv is not None:
                m = by_id[key] = Message(None, None)
                out.append(m)
            m.recv = r
    return out


def _shifts(messages: list[Message], reference: str) -> dict[str, float]:
    """Per process, a shift of its times that puts every receive after its send, the reference
    staying put, and each shift as near to none as the messages allow.

    Each paired message from S to R says ``shift_R - shift_S >= send_S - recv_R``: a system of
    difference constraints (messages between two nodes count too, a page sent peer to peer). Its
    tightest bounds against the reference (longest and shortest paths, Bellman-Ford) give each
    process an interval; each starts at the point of its interval nearest to no shift, and
    receivers are then raised until every constraint holds, which stays inside the intervals.
    A cycle of contradictory bounds (a clock that drifted) falls back to the bounds against the
    reference alone, split down the middle; receives still before their sends are clamped."""
    need: dict[tuple[str, str], float] = {}  # (sender, receiver) -> the largest send - recv
    for m in messages:
        if m.send is None or m.recv is None or m.send["who"] == m.recv["who"]:
            continue
        link = (m.send["who"], m.recv["who"])
        need[link] = max(need.get(link, float("-inf")), m.send["ts"] - m.recv["ts"])
    who_all = {w for link in need for w in link} | {reference}
    low = _paths(need, reference, who_all, upward=True)
    high = _paths(need, reference, who_all, upward=False)
    if low is None or high is None or any(low[w] > high[w] for w in who_all):
        return _split_against_reference(need, reference)
    shifts = {w: min(max(0.0, low[w]), high[w]) for w in who_all}
    shifts[reference] = 0.0
    for _ in range(len(who_all) + 1):
        changed = False
        for (s, r), d in need.items():
            if r != reference and shifts[r] < shifts[s] + d:
                shifts[r] = shifts[s] + d
                changed = True
        if not changed:
            break
    shifts.pop(reference)
    return shifts


def _paths(need: dict[tuple[str, str], float], reference: str, who_all: set[str],
           upward: bool) -> dict[str, float] | None:
    """Each process's tightest lower (``upward``) or upper bound on its shift implied through
    chains of messages from (to) the reference; None if the bounds contradict themselves."""
    inf = float("-inf") if upward else float("inf")
    bound = {w: inf for w in who_all}
    bound[reference] = 0.0
    for _ in range(len(who_all) + 1):
        changed = False
        for (s, r), d in need.items():
            if upward and bound[s] + d > bound[r]:
                bound[r] = bound[s] + d
                changed = True
            elif not upward and bound[r] - d < bound[s]:
                bound[s] = bound[r] - d
                changed = True
        if not changed:
            return bound if bound[reference] == 0.0 else None
    return None


def _split_against_reference(need: dict[tuple[str, str], float],
                             reference: str) -> dict[str, float]:
    """Contradictory bounds: per process, the middle of its bounds against the reference alone
    (the smallest shift when they agree)."""
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    for (s, r), d in need.items():
        if s == reference:
            low[r] = max(low.get(r, float("-inf")), d)
        elif r == reference:
            high[s] = min(high.get(s, float("inf")), -d)
    shifts = {}
    for who in set(low) | set(high):
        lo, hi = low.get(who, float("-inf")), high.get(who, float("inf"))
        shifts[who] = min(max(0.0, lo), hi) if lo <= hi else (lo + hi) / 2
    return shifts
