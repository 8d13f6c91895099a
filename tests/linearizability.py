"""A linearizability checker for read/write registers, one location at a time.

The search is Wing & Gong's, with the memoization of Lowe (and of Porcupine): a search state is
(the set of operations linearized so far, as a bitset; the register's value). The operations are
tried in order of invocation, and an operation may be linearized next only if no operation still
un-linearized responded before it was invoked (otherwise that one must come first). A state seen
before is not explored again, which turns the exponential search into one bounded by the number
of distinct states, small when few operations overlap.

Linearizability is local (Herlihy & Wing): a history is linearizable iff the sub-history of each
location is, so ``check_history`` checks each location on its own.

An operation is ``(kind, value, invoke, response, process)``: kind ``"r"`` (the read returned
``value``) or ``"w"`` (it wrote ``value``); ``invoke <= response`` on one clock shared by all
processes. Equal times count as overlapping: an operation invoked at the instant another
responded may be ordered either way (the clock cannot tell them apart). Every location starts at
``INITIAL_VALUE``.
"""

from __future__ import annotations

from typing import Hashable, Iterable, NamedTuple

INITIAL_VALUE = 0
#: the search gives up (raising CheckerGaveUp, never answering "linearizable") after visiting
#: this many distinct states of one location: a few thousand operations with a handful of
#: processes need far fewer; more means a pathological pile-up of overlapping operations
MAX_STATES = 2_000_000
#: how many operations of a failing window the explanation lists in full
MAX_OPS_LISTED = 40


class Op(NamedTuple):
    kind: str  # "r" or "w"
    value: Hashable
    invoke: float
    response: float
    process: Hashable

    def __str__(self) -> str:
        arrow = "->" if self.kind == "r" else ":="
        return f"p{self.process} {self.kind}{arrow}{self.value!r} [{self.invoke}, {self.response}]"


class CheckerGaveUp(RuntimeError):
    """The search visited MAX_STATES states without deciding: neither a pass nor a failure."""


def check_history(history: dict[Hashable, Iterable], max_states: int = MAX_STATES) -> str | None:
    """None if every location's history is linearizable, else the explanations of the failing
    locations (each with its smallest failing window)."""
    problems = []
    for location, ops in history.items():
        problem = check_location(ops, location=location, max_states=max_states)
        if problem is not None:
            problems.append(problem)
    return "\n\n".join(problems) if problems else None


def check_location(ops: Iterable, location: Hashable = "?", max_states: int = MAX_STATES) -> str | None:
    """None if the history of one register is linearizable, else a readable explanation."""
    ops = sorted((_as_op(op) for op in ops), key=lambda op: (op.invoke, op.response))
    if not ops:
        return None
    if _Search(ops, max_states).first_linearization({INITIAL_VALUE}):
        return None
    return _explain(ops, location, max_states)


def _as_op(op) -> Op:
    op = Op(*op)
    if op.kind not in ("r", "w"):
        raise ValueError(f"operation kind must be 'r' or 'w': {op}")
    if op.response < op.invoke:
        raise ValueError(f"operation responds before it is invoked: {op}")
    return op


class _Search:
    """The state-space search over one list of operations (sorted by invocation).

    The pending events live in a doubly linked list (arrays ``nxt``/``prv``, node 0 the head):
    one call event and one return event per operation, in time order. Linearizing an operation
    lifts both its events out of the list; backtracking puts them back (dancing links), so that
    walking from the head visits exactly the candidates: the calls before the first return."""

    def __init__(self, ops: list[Op], max_states: int):
        self.ops = ops
        self.max_states = max_states
        n = len(ops)
        # events sorted by time, a call before a return at the same time (they overlap)
        events = sorted(
            [(op.invoke, 0, i) for i, op in enumerate(ops)]
            + [(op.response, 1, i) for i, op in enumerate(ops)]
        )
        size = 2 * n + 2  # head (0), events (1..2n), tail (2n+1)
        self.tail = size - 1
        self.op_of = [-1] * size
        self.is_call = [False] * size
        self.return_node = [0] * size
        call_node = [0] * n
        for node, (_, is_return, i) in enumerate(events, start=1):
            self.op_of[node] = i
            self.is_call[node] = not is_return
            if is_return:
                self.return_node[call_node[i]] = node
            else:
                call_node[i] = node
        self.nxt = list(range(1, size)) + [0]
        self.prv = [0] + list(range(0, size - 1))
        self.states_seen = 0
        #: the deepest point reached: (ops linearized, op stuck at, value then)
        self.deepest = (0, None, None)

    def _lift(self, call: int) -> None:
        nxt, prv = self.nxt, self.prv
        for node in (call, self.return_node[call]):
            nxt[prv[node]] = nxt[node]
            prv[nxt[node]] = prv[node]

    def _unlift(self, call: int) -> None:
        nxt, prv = self.nxt, self.prv
        for node in (self.return_node[call], call):
            nxt[prv[node]] = node
            prv[nxt[node]] = node

    def _step(self, value, op: Op):
        """(allowed, next value) of the register model."""
        if op.kind == "w":
            return True, op.value
        return op.value == value, value

    def run(self, start_value, seen: set, stop_at_first: bool) -> set:
        """The values the register may hold once every operation is linearized, starting from
        ``start_value`` (only the first one found if ``stop_at_first``). ``seen`` is the memo
        of (bitset, value) states, shared between start values (a state is a state)."""
        ends = set()
        nxt, ops, op_of, is_call, tail = self.nxt, self.ops, self.op_of, self.is_call, self.tail
        stack = []  # (call node, value before it)
        linearized, value = 0, start_value
        node = nxt[0]
        while True:
            if node == tail:  # every operation linearized
                ends.add(value)
                if stop_at_first:
                    break
            elif is_call[node]:
                op = ops[op_of[node]]
                allowed, new_value = self._step(value, op)
                if allowed:
                    new_linearized = linearized | (1 << op_of[node])
                    key = (new_linearized, new_value)
                    if key not in seen:
                        seen.add(key)
                        self.states_seen += 1
                        if self.states_seen > self.max_states:
                            raise CheckerGaveUp(
                                f"the search visited more than {self.max_states} states of "
                                f"{len(ops)} operations without deciding"
                            )
                        stack.append((node, value))
                        linearized, value = new_linearized, new_value
                        self._lift(node)
                        node = nxt[0]
                        continue
                node = nxt[node]
                continue
            else:  # a return: its operation must be linearized before anything after it
                if len(stack) > self.deepest[0]:
                    self.deepest = (len(stack), ops[op_of[node]], value)
                elif self.deepest[1] is None:
                    self.deepest = (0, ops[op_of[node]], value)
            # backtrack: undo the last choice and try the next candidate after it
            if not stack:
                break
            node, value = stack.pop()
            linearized &= ~(1 << op_of[node])
            self._unlift(node)
            node = nxt[node]
        # leave the list whole whatever the exit (the stack unwinds in reverse order)
        while stack:
            call, _ = stack.pop()
            self._unlift(call)
        return ends

    def first_linearization(self, start_values: Iterable) -> bool:
        seen = set()
        return any(self.run(v, seen, stop_at_first=True) for v in start_values)

    def end_values(self, start_values: Iterable) -> set:
        seen, ends = set(), set()
        for v in start_values:
            ends |= self.run(v, seen, stop_at_first=False)
        return ends


def _windows(ops: list[Op]) -> list[list[Op]]:
    """Cut the history at quiescent points (every operation so far responded before the next
    is invoked): linearizations cannot cross a cut, so each window is checked from the values
    the register may hold at its start."""
    windows, current, latest_response = [], [], None
    for op in ops:
        if current and latest_response < op.invoke:
            windows.append(current)
            current = []
        current.append(op)
        latest_response = op.response if latest_response is None else max(latest_response, op.response)
    windows.append(current)
    return windows


def _explain(ops: list[Op], location, max_states: int) -> str:
    """Find the first window (between quiescent points) that no value possible at its start
    can linearize, and describe it."""
    possible = {INITIAL_VALUE: "the initial value"}
    for index, window in enumerate(_windows(ops)):
        search = _Search(window, max_states)
        try:
            ends = search.end_values(possible)
        except CheckerGaveUp as exc:
            return (f"location {location!r}: not linearizable, but explaining it gave up in "
                    f"window {index} ({len(window)} ops): {exc}")
        if not ends:
            return _describe(location, ops, index, window, possible, search)
        origins = {}
        for value in ends:
            writers = [op for op in window if op.kind == "w" and op.value == value]
            origins[value] = (" or ".join(str(w) for w in writers[:3]) if writers
                              else possible.get(value, "an earlier write"))
        possible = origins
    # every window linearizes from some value: only the whole-history search can fail here,
    # which is impossible (the windows' searches are the same search, cut at quiescent points)
    raise AssertionError(f"location {location!r}: the windowed search disagrees with the whole one")


def _describe(location, ops, index, window, possible, search) -> str:
    lines = [
        f"location {location!r}: not linearizable ({len(ops)} ops in all).",
        f"smallest failing window: window {index} between quiescent points, {len(window)} ops, "
        f"from t={window[0].invoke} to t={max(op.response for op in window)}",
        "values the register may hold when the window starts:",
    ]
    lines += [f"  {value!r}  (from {origin})" for value, origin in possible.items()]
    depth, stuck, value = search.deepest
    if len(window) <= MAX_OPS_LISTED or stuck is None:
        lines.append("ops of the window, in order of invocation:")
        listed = window[:MAX_OPS_LISTED]
    else:
        # a long window: the ops that decide what the stuck op may see are those overlapping
        # it and the last ones that responded before it was invoked
        before = [op for op in window if op.response < stuck.invoke][-(MAX_OPS_LISTED // 2):]
        during = [op for op in window
                  if op.response >= stuck.invoke and op.invoke <= stuck.response]
        listed = (before + during)[:MAX_OPS_LISTED]
        lines.append(f"ops of the window around the op the search got stuck at ({len(listed)} "
                     f"of {len(window)}: the last ones before it, then those overlapping it):")
    lines += [f"  {op}" for op in listed]
    if len(window) > len(listed):
        lines.append(f"  ... and {len(window) - len(listed)} more")
    if stuck is not None:
        lines.append(
            f"the search linearized at most {depth} of the window's {len(window)} ops; no order "
            f"lets {stuck} take effect (the register held {value!r} at that point)"
        )
    return "\n".join(lines)
