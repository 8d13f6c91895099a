"""The node core's actions (``dsm/core/actions.py``) carried out, in order, through a kernel
(``dsm/core/kernel.py``: the node's memory and its processes' uffds), the twins of release pages,
and a transport (to the directory's shards, and to other nodes): one runner for the agent, which
passes the memfd, the uffds and ZeroMQ (``dsm/agent/messaging.py``), and for the simulator, which
passes its models of them (``dsm/sim/agent.py``).

What it decides, besides what ``KernelCalls`` does about the kernel's answers:

- the pages a ``Send`` carries: those a ``Punch(keep=True)`` of its run read earlier in the same
  list (they left this node before anyone else can have them), or an earlier send of the run in
  the list (every send of a run carries the same bytes: a downgrade's page to the peer and its
  copy home, between which MADV_REMOVE may punch the pages), else the node's memory now;
- a page send to a peer that fails (the peer cannot be reached): its ``Fetched`` (``sent``) to
  the directory, later in the list, becomes a ``Fetched(DATA)`` with the pages, as if the peer
  had been unreachable from the start (rewritten at once: what is left after a pause says so);
  an acknowledgement (``Invalidated``) that cannot reach its requester goes to the directory,
  which forwards it, and so do the dynamic manager's node-to-node messages (``relay_to``: the
  directory relays them);
- the waiters of an ``Install`` woken by the install's own copy are not woken again, nor those
  of an ``Upgrade`` that its lift of the protection woke (where their process maps the pages).

A ``pause`` hook, consulted after each send while actions are left, may stop the run: the rest
(``Carrying``, with what the earlier actions left for the later ones) is carried on later. The
simulator pauses so, as the agent may be descheduled after a send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from dsm import protocol as p
from dsm.core import actions as act
from dsm.core.kernel import KernelCalls, zeros


class Transport(Protocol):
    def send(self, msg: p.Message, data: Any) -> None:
        """To the directory: the shard ``msg`` belongs to (the coordinator for a lock or a
        barrier)."""

    def send_peer(self, peer: tuple[str, str], msg: p.Message, data: Any) -> bool:
        """To node ``peer`` (name, peer endpoint); whether it could be reached."""


class Twins(Protocol):
    """The twins of release pages: their bytes at their first write since the last release."""

    def make(self, first: int, count: int) -> None: ...

    def diff(self, first: int, count: int) -> tuple[p.DiffEncoding, bytes, bytes]:
        """What changed since the twins (the encoding, where, and those bytes); they are
        dropped."""

    def drop(self, first: int, count: int) -> None: ...


@dataclass(eq=False, repr=False)
class Carrying:
    """A list of actions being carried out: where it is, and what its earlier actions left for
    the later ones."""

    #: the actions (the runner's own copy: a failed peer send rewrites a later one)
    actions: list
    next: int = 0
    #: runs punched with their contents kept, or read for a send, (first, count) -> the bytes,
    #: for the sends after
    taken: dict[tuple[int, int], bytes] = field(default_factory=dict)

    @property
    def left(self) -> list:
        return self.actions[self.next:]

    def __repr__(self) -> str:
        return repr(self.left)


class ActionRunner:
    """``model_actions``: how to carry out actions that are not the core's (the simulator's own,
    appended after the core's), by type."""

    def __init__(self, kernel: KernelCalls, twins: Twins, transport: Transport,
                 model_actions: dict[type, Callable[[Any], None]] | None = None):
        self.kernel = kernel
        #: its kernel's own calls (reads and punches of the node's memory, kills)
        self._raw = kernel.kernel
        self.twins = twins
        self.transport = transport
        self.page_size = kernel.page_size
        self._model_actions = model_actions or {}
        #: action type -> how it is carried out, and whether it sends (a pause may follow)
        self._table: dict[type, tuple[Callable[[Any, Carrying], None], bool]] = {
            act.Send: (self._send, True),
            act.SendDiff: (self._send_diff, True),
            act.SendRelease: (self._send_release, True),
            act.Install: (self._install, False),
            act.Upgrade: (self._upgrade, False),
            act.Protect: (lambda a, c: kernel.protect_everywhere(a.first, a.count, wp=True),
                          False),
            act.Unprotect: (lambda a, c: kernel.writeprotect(a.proc, a.page, 1, wp=False), False),
            act.Punch: (self._punch, False),
            act.Twin: (lambda a, c: twins.make(a.first, a.count), False),
            act.DropTwins: (lambda a, c: twins.drop(a.first, a.count), False),
            act.Wake: (lambda a, c: kernel.wake(a.proc, a.addr), False),
            act.Poison: (lambda a, c: kernel.poison(a.waiter.proc, a.waiter.addr,
                                                    a.waiter.thread_id), False),
            act.Kill: (lambda a, c: self._raw.kill(a.waiter.proc, a.waiter.thread_id, a.why),
                       False),
        }

    def carry_out(self, actions: list, pause: Callable[[], bool] | None = None
                  ) -> Carrying | None:
        """Carry ``actions`` out; the rest if ``pause`` stopped the run, else None."""
        carrying = Carrying(list(actions))
        return carrying if self.carry_on(carrying, pause) else None

    def carry_on(self, carrying: Carrying, pause: Callable[[], bool] | None = None) -> bool:
        """Carry out what is left of ``carrying``; whether ``pause`` stopped it again (then
        ``carrying`` holds the rest)."""
        actions = carrying.actions
        while carrying.next < len(actions):
            a = actions[carrying.next]
            carrying.next += 1
            entry = self._table.get(type(a))
            if entry is None:
                model = self._model_actions.get(type(a))
                if model is None:
                    raise TypeError(f"the node core asked for an unknown action {a!r}")
                model(a)
                continue
            run, sends = entry
            run(a, carrying)
            if sends and pause is not None and carrying.next < len(actions) and pause():
                return True
        return False

    # --- the actions -------------------------------------------------------------------------------
    def _pages(self, carrying: Carrying, first: int, count: int) -> bytes:
        """The bytes of a run a send carries: as a punch of it or an earlier send read them,
        else as they are now (kept for the sends after)."""
        data = carrying.taken.get((first, count))
        if data is None:
            data = carrying.taken[first, count] = self._raw.read(first, count)
        return data

    def _send(self, a: act.Send, carrying: Carrying) -> None:
        data = a.data if a.pages is None else self._pages(carrying, *a.pages)
        if a.peer is None:
            self.transport.send(a.message, data)
        elif not self.transport.send_peer(a.peer, a.message, data):
            if type(a.message) in p.RELAYED_MESSAGES:  # the directory relays it to the peer
                self.transport.send(p.replace(a.message, relay_to=a.peer[0]), data)
            else:
                self._send_home_instead(carrying, a.message.txn)

    @staticmethod
    def _send_home_instead(carrying: Carrying, txn: int) -> None:
        """Transaction ``txn``'s pages could not reach the peer: its ``Fetched`` (``sent``) later
        in the list becomes a ``Fetched(DATA)`` that carries them (as a punch read them, or as
        they are: a read copy kept), as if the peer had been unreachable from the start."""
        actions = carrying.actions
        for i in range(carrying.next, len(actions)):
            later = actions[i]
            if type(later) is not act.Send or type(later.message) is not p.Fetched:
                continue
            msg = later.message
            if msg.txn == txn and msg.sent:
                actions[i] = act.Send(p.replace(msg, payload=p.Payload.DATA, sent=False),
                                      pages=(msg.page, msg.count))

    def _send_diff(self, a: act.SendDiff, carrying: Carrying) -> None:
        encoding, changes, diff = self.twins.diff(a.first, a.count)
        self.transport.send(p.Diff(a.req, a.first, a.count, encoding, changes,
                                   p.Payload.DATA if diff else p.Payload.NONE),
                            diff if diff else None)

    def _send_release(self, a: act.SendRelease, carrying: Carrying) -> None:
        """The release with its diffs (payload DATA, their bytes one after another; a diff of
        nothing changed is carried too: it ends the page's being dirtied at its home)."""
        diffs, changed = [], []
        for _, first, count in a.runs:
            encoding, changes, diff = self.twins.diff(first, count)
            diffs.append((first, count, int(encoding), changes))
            if diff:
                changed.append(diff)
        self.transport.send(p.replace(a.message, diffs=diffs, payload=p.Payload.DATA),
                            b"".join(changed))

    def _install(self, a: act.Install, carrying: Carrying) -> None:
        data = a.data if a.data is not None else zeros(a.count * self.page_size)  # ZERO
        inst = a.installer
        woke = self.kernel.install(a.first, a.count, data, a.writable,
                                   (inst.proc, inst.addr) if inst is not None else None)
        for w in a.wake:  # the installer's copy woke the threads waiting where it copied
            if not (woke and w.proc is inst.proc and w.addr == inst.addr):
                self.kernel.wake(w.proc, w.addr)

    def _upgrade(self, a: act.Upgrade, carrying: Carrying) -> None:
        """Lift the protection (which wakes the writers where each process maps the pages),
        then wake the waiters that faulted where their process no longer maps them: a writer
        blocked where a range was before an mremap waits for a wake at that address."""
        self.kernel.protect_everywhere(a.first, a.count, wp=False)
        for w in a.wake:
            where = self._raw.addresses(w.proc, a.first, a.count)
            if not any(addr <= w.addr < addr + length for addr, length in where):
                self.kernel.wake(w.proc, w.addr)

    def _punch(self, a: act.Punch, carrying: Carrying) -> None:
        if a.keep:
            carrying.taken[a.first, a.count] = self._raw.read(a.first, a.count)
        self._raw.punch(a.first, a.count)
