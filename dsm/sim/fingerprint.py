"""A simulated world's state as one hashable value, so that the exhaustive exploration
(``dsm.sim.explore``) visits each state once, however the schedule reached it.

The fingerprint is a canonical walk of the whole world, not a list of fields: every attribute
of every object reachable from the ``World`` (the nodes' memory, write protection and threads,
the node cores, every shard's page directory and home copies, the coordinator's locks and
notices, the channels' packets, every session) goes in, unless it is named below as not being
state. A field someone adds later is thus counted by default: two states can only be merged
wrongly by a name added to ``NOT_STATE``. The walk is pickle's (in C), with each object
reduced to its class name and its state; the fingerprint is a 128-bit digest of it.

What is left out, and why that is sound:

- statistics and counters, tracers, the wiring (every callable: handler tables, clocks; the
  agents' runners, ``dsm.sim.agent``), the world's schedule, its draws and its step counter:
  nothing the protocol decides reads them;
- timestamps only the liveness deadlines read (a waiter's fault time, a request's sending time,
  a transaction's start, a lock wait's start, when a shard last heard a node: ``NOT_STATE``),
  and the nodes' heartbeat and cut-off timers kept as "expired or not" (``LIVENESS_TIMERS``):
  ``dsm.sim.explore`` stops before steps alone could expire the shortest of them (a heartbeat,
  ``HEARTBEAT_INTERVAL_S``, five hundred steps); a jump of the clock (``ACK_TIMEOUT_S``, twice
  that) makes every heartbeat due at once, and the longer deadlines (a cut-off, a silence, a
  transaction, a request) lie several jumps away, past what a scope with a fault or two
  reaches: the explorer's scopes kill no node, and only a killed node's silence lets the clock
  run on to them;
- the clock itself: the sessions' timers are kept as their ages in steps, capped at their
  thresholds (past it, any age behaves the same), and the acknowledgement timeout
  (``ACK_TIMEOUT_S``, a thousand steps) as "expired or not" only: ``dsm.sim.explore`` stops
  before a run could be long enough for steps alone to expire it; only a jump of the clock
  (nothing else to do) does, and it expires every such timer at once;
- the order of the world's channels and sessions (which pair is drawn next is a free choice of
  the scheduler: the same pairs in another order offer the same choices);
- a heartbeat's two clocks, on a channel and among the frames kept for a replay (``_wire``):
  a shard answers each heartbeat with its trace clock's reading, which is the absolute
  simulated time, and only the agent's trace-clock sampling reads it (while it traces, which
  the simulator's agents do not). Kept, they made two states that the rest of the fingerprint
  merges (the same ages, another absolute time) part ways at the first heartbeat answered
  after a jump of the clock: tests/test_simulation_explore.py found such a pair;
- with ``Scope.reduction`` (the default; ``--no-reduction`` keeps them), the resend timers
  (``RESEND_TIMERS``) once no gap can ever be seen again (``gaps_ruled_out``). A link reads
  ``_asked_resend_s`` only while it wants a resend, which only a gap or a reset makes it want,
  and ``_resent_s`` only when a request for a resend arrives, which only a link that wants one
  sends; no jump of the clock reads either (it goes to a liveness timer, ``dsm.sim.timers``,
  or ``ACK_TIMEOUT_S`` on, ``dsm.sim.world``). With no fault left to strike (no loss, no
  reset, no death), no link wanting a resend, no request for one in flight, and every message
  each sender has numbered beyond what its receiver delivered in flight, in order (FIFO
  channels: whatever is sent later, a new message or a replay of the unacknowledged ones,
  arrives after them and continues the run), no gap can come, so neither timer is read again:
  states that differ only in them have the same futures. (After a fault these timers' ages, up
  to ``RESEND_HOLDOFF_S`` in steps, multiplied the states: the relay's one-fault scope reached
  8,976 new states at its ninth step with them, 4,412 without.)

What the senders keep for replays is their sessions' unacknowledged frames, kept in full; the
packets on a channel are their frames on the wire (the message objects beside them are
decoded from those).
"""

from __future__ import annotations

import hashlib
import io
import math
import mmap
import pickle
import types
from typing import Any

from dsm import protocol as p
from dsm.liveness import ACK_DELAY_S, ACK_TIMEOUT_S, HEARTBEAT_INTERVAL_S, NODE_CUT_OFF_S
from dsm.reliability import (ACK_EVERY_BYTES, FLAG_RESEND, RESEND_HOLDOFF_S,
                             SESSION_HEADER_BYTES, UNSEQUENCED, ReliableLink, parse)
from dsm.sim.links import Packet, SimLinks

#: attributes that are not state (see the module's docstring): statistics, tracers, the world's
#: record of its schedule and its draws, the handler tables, the agents' inboxes (wiring: the
#: simulated nodes never say Bye, and only a directory's process says Closing, as it stops),
#: runners and event handling (wiring: a runner's model of the kernel keeps only a forked
#: child's protections besides, which nothing reads while the kernels' faults are not drawn;
#: the event handling's removals exist only while the kernel's events are drawn, which
#: exploration does not),
#: timestamps that only undriven deadlines read, a session's last acknowledgement sent (written,
#: never read), what the links keep only to name a replayed message (its frames are kept in the
#: sessions), the directory machines' wiring (their transports, tracers and rate-limited logs)
#: and when a directory last heard from a node (only its silence deadline reads it, which the
#: simulator never drives)
NOT_STATE = frozenset({
    "stats", "counters", "_counters", "_latency_counts", "waits", "lock_waits_by_node",
    "_trace", "_tracing", "schedule", "rng", "clock", "_touched", "seed",
    "inbox", "runner", "process_events",
    "t0", "sent_at", "started_s", "since",
    "replayed", "duplicates", "gaps", "bare_acks", "_acked_to_peer", "_sent",
    "transport", "tracer", "complain", "_handlers", "last_seen_s",
    # the liveness timers' bookkeeping (``dsm.sim.timers``): when they were last looked at and
    # when each node's are next due (derived), when a node's requests were last looked at
    "_looked_s", "_due_s", "_first_due_s", "_sessions_kept", "last_overdue_check_s",
    # the shards' report counters (``dsm.sim.shards``)
    "answered_count", "gave_up_count", "refused_joins",
})
#: the simulated nodes' liveness timers (``dsm.sim.timers``): attribute -> (key -> timestamp),
#: kept as "expired or not" against its threshold in seconds
LIVENESS_TIMERS = {"last_sent_s": HEARTBEAT_INTERVAL_S, "last_heard_s": NODE_CUT_OFF_S}
#: a session's timers: attribute -> its threshold in seconds (``dsm.reliability``)
SHORT_TIMERS = {"_owed_since": ACK_DELAY_S, "_asked_resend_s": RESEND_HOLDOFF_S,
                "_resent_s": RESEND_HOLDOFF_S}
#: the session timer kept as "expired or not" (see the docstring)
LONG_TIMERS = {"_progress_s": ACK_TIMEOUT_S}
#: a session's timers read only on the way to or after a gap (see the docstring)
RESEND_TIMERS = frozenset({"_asked_resend_s", "_resent_s"})
#: what a heartbeat's encoding begins with (the array of its fields, then its tag: no other
#: message's does), before its two clocks (``_wire``)
HEARTBEAT_PREFIX = p.encode(p.Heartbeat())[0][:2]
#: bytes of a fingerprint (128 bits: a collision is out of reach of any exploration)
DIGEST_BYTES = 16
#: what stands for every callable: the wiring (handler tables, clocks) is not state
_CALLABLES = (types.FunctionType, types.MethodType, types.BuiltinFunctionType)


def _age_steps(since: float | None, now: float, threshold_s: float, step_s: float) -> int | None:
    """A timer's age in whole steps, capped at its threshold (None: the timer is off)."""
    if since is None:
        return None
    cap = math.ceil(threshold_s / step_s)
    age = now - since
    return cap if age >= threshold_s else min(cap, round(age / step_s))


def _wire(frames: list[Any], header_bytes: int) -> list[bytes]:
    """A message's frames (behind a session header of ``header_bytes``: 0 for none) as bytes,
    a heartbeat's clocks left out (see the module's docstring)."""
    first = bytes(frames[0])
    end = header_bytes + len(HEARTBEAT_PREFIX)
    if first[header_bytes:end] == HEARTBEAT_PREFIX:
        first = first[:end]
    return [first, *(bytes(f) for f in frames[1:])]


def _state(kind: str, *parts: Any) -> None:
    """What a fingerprint names an object's state by (never called: only pickled)."""


class _Canonical(pickle.Pickler):
    """Pickles a world as its state: each object as its class name and the attributes that are
    state (shared objects and cycles once, by pickle's memo), in C but for these objects."""

    def __init__(self, out: io.BytesIO, now: float, step_s: float, resend_timers: bool = True):
        super().__init__(out, protocol=pickle.HIGHEST_PROTOCOL)
        self.now = now
        self.step_s = step_s
        #: whether the sessions' resend timers are kept (False: no gap can come any more)
        self.resend_timers = resend_timers

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) or obj is _state:
            return NotImplemented  # a class (or what names the states): by name
        if isinstance(obj, _CALLABLES):
            return _state, ("callable",)
        if isinstance(obj, Packet):  # its frames on the wire (the message is decoded from them)
            return _state, ("packet", _wire(obj.frames, SESSION_HEADER_BYTES))
        if isinstance(obj, (memoryview, mmap.mmap)):
            return bytes, (obj[:] if isinstance(obj, mmap.mmap) else obj.tobytes(),)
        if isinstance(obj, ReliableLink):
            return _state, ("session", self._link(obj))
        if isinstance(obj, SimLinks):  # its sessions in the order of their pairs
            return _state, ("links", obj.faults, sorted(obj._links.items()))
        fields = getattr(obj, "__dict__", None)
        if fields is None:
            return NotImplemented  # a value pickle knows (an enum, an array, a message)
        state = {}
        for name, v in fields.items():
            if name in NOT_STATE:
                continue
            if name == "channels":  # which pair delivers next is the scheduler's free choice
                v = sorted((pair, q) for pair, q in v.items() if q)
            elif name in LIVENESS_TIMERS:
                v = sorted((key, self.now - t > LIVENESS_TIMERS[name]) for key, t in v.items())
            state[name] = v
        # the state after the object's name: pickle remembers the object first (cycles)
        return _state, (type(obj).__qualname__,), state

    def _link(self, link: ReliableLink) -> dict[str, Any]:
        state = {}
        for name, v in vars(link).items():
            if name in NOT_STATE or name in RESEND_TIMERS and not self.resend_timers:
                continue
            if name in SHORT_TIMERS:
                v = _age_steps(v, self.now, SHORT_TIMERS[name], self.step_s)
            elif name in LONG_TIMERS:
                v = self.now - v >= LONG_TIMERS[name]
            elif name == "_owed_bytes":  # it matters only once it reaches its bound
                v = v >= ACK_EVERY_BYTES
            elif name == "_unacked":  # the frames kept for a replay, as bytes
                v = [(seq, _wire(frames, 0)) for seq, frames, _ in v]
            state[name] = v
        return state


def gaps_ruled_out(world: Any, faults_left: int) -> bool:
    """Whether no session of ``world`` can ever see a gap again (see the module's docstring):
    no fault left to strike and no node left to die, no link wanting a resend, no request for
    one in flight, and on every channel the messages its sender numbered beyond what its
    receiver delivered, all in flight, in order."""
    if faults_left or getattr(world, "deaths_left", 0):
        return False
    links = world.links._links
    if any(link._want_resend for link in links.values()):
        return False
    for (src, dst), link in links.items():
        receiver = links.get((dst, src))
        delivered = receiver.delivered if receiver is not None else 0
        for packet in world.channels.get((src, dst), ()):
            seq, _, flags = parse(packet.frames[0])
            if flags & FLAG_RESEND:
                return False
            if seq == delivered + 1:
                delivered = seq
            elif seq != UNSEQUENCED and seq > delivered:
                return False  # a gap on its way
        if delivered != link._next_seq - 1:
            return False  # a message lost: the next one numbered after it will find a gap
    return True


def canonical(world: Any, step_s: float, *extra: Any, faults_left: int | None = None) -> bytes:
    """``world``'s canonical state as bytes (and ``extra``: what the explorer adds, such as the
    faults still allowed). ``faults_left``: the faults that may still strike (None: unknown,
    the resend timers are kept), which decides whether the resend timers are state."""
    out = io.BytesIO()
    keep = faults_left is None or not gaps_ruled_out(world, faults_left)
    _Canonical(out, world.clock, step_s, resend_timers=keep).dump((world, extra))
    return out.getvalue()


def fingerprint(world: Any, step_s: float, *extra: Any,
                faults_left: int | None = None) -> bytes:
    """A digest of ``canonical``: equal for equal states."""
    return hashlib.blake2b(canonical(world, step_s, *extra, faults_left=faults_left),
                           digest_size=DIGEST_BYTES).digest()
