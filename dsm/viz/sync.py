"""Which lock and barrier messages matter to which pages, so that a page filter keeps them.

Under release consistency a page's diffs and invalidations are caused by synchronization: a node
sends its diffs home, then releases (``LockRelease``, ``BarrierWait``, naming the pages it wrote
in ``notices``); another node's acquire is answered (``SyncReply``) with those write notices,
and it invalidates its copies. Those messages name no ``page`` of their own, so a filter on a
page would drop them and leave its diffs and notices unexplained. Here each one is given the
pages it matters to:

- a release or an answer: the pages of its ``notices`` (``[first, count, ...]`` runs); when the
  trace shortened a long list to its length, a release takes the pages its node diffed since its
  previous release, and an answer the pages its node took write notices for after it;
- a request and its answer go together (the same node and ``req``): the barrier arrival that
  brought a page's notices and the departure that handed them out are both kept.
"""

from __future__ import annotations

from dsm.viz.model import Message, Timeline, kind_of

#: the requests of a lock or a barrier that release (they carry write notices)
RELEASES = ("LockRelease", "BarrierWait")
#: every request a SyncReply answers
REQUESTS = ("LockAcquire", "LockRelease", "BarrierWait", "BarrierJoin")
REPLY = "SyncReply"

Runs = list[tuple[int, int]]


def _runs(notices: object) -> Runs | None:
    """``[first, count, ...]`` as runs; None when the trace kept only its length."""
    if not isinstance(notices, list):
        return None
    nums = [n for n in notices if isinstance(n, int)]
    return [(nums[i], nums[i + 1]) for i in range(0, len(nums) - 1, 2)]


def _node_of(m: Message) -> str:
    """The node end of a message between a node and a manager."""
    return m.dst if m.record["msg"] == REPLY else m.src


def _time(m: Message, at_node: bool) -> float:
    """When the node end saw it (its own record, else the other end's)."""
    if m.record["msg"] == REPLY:
        rec = m.recv if at_node and m.recv is not None else m.record
    else:
        rec = m.send if at_node and m.send is not None else m.record
    return rec["ts"]


def related_pages(timeline: Timeline) -> dict[int, Runs]:
    """Index into ``timeline.messages`` -> the page runs that lock or barrier message matters
    to (only messages that matter to some page)."""
    out: dict[int, Runs] = {}
    by_req: dict[tuple[str, object], list[int]] = {}
    # each node's diffs and write notices, in time order: for the notices the trace shortened
    diffs: dict[str, list[tuple[float, int, int]]] = {}
    notices: dict[str, list[tuple[float, int, int]]] = {}
    for m in timeline.messages:
        if m.record["msg"] == "Diff" and isinstance(m.record.get("page"), int):
            diffs.setdefault(m.src, []).append(
                (_time(m, True), m.record["page"], int(m.record.get("count", 1))))
    for r in timeline.records:
        if kind_of(r) == "step" and r.get("event") == "NOTICE" and isinstance(r.get("page"), int):
            notices.setdefault(r["who"], []).append((r["ts"], r["page"], int(r.get("count", 1))))
    last_release: dict[str, float] = {}
    sync = [(i, m) for i, m in enumerate(timeline.messages)
            if m.record["msg"] in REQUESTS or m.record["msg"] == REPLY]
    replies_at: dict[str, list[float]] = {}
    for _, m in sync:
        if m.record["msg"] == REPLY:
            replies_at.setdefault(_node_of(m), []).append(_time(m, True))
    for i, m in sync:
        node, msg, t = _node_of(m), m.record["msg"], _time(m, True)
        by_req.setdefault((node, m.record.get("req")), []).append(i)
        runs = _runs(m.record.get("notices"))
        if runs is None and msg in RELEASES:  # shortened: the diffs since its last release
            since = last_release.get(node, float("-inf"))
            runs = [(p, c) for ts, p, c in diffs.get(node, ()) if since <= ts <= t]
        elif runs is None and msg == REPLY:  # shortened: the notices it took after it
            later = [x for x in replies_at.get(node, ()) if x > t]
            until = later[0] if later else float("inf")
            runs = [(p, c) for ts, p, c in notices.get(node, ()) if t <= ts < until]
        if msg in RELEASES:
            last_release[node] = t
        if runs:
            out[i] = runs
    for members in by_req.values():  # a request and its answer matter to the same pages
        joined = sorted({run for i in members for run in out.get(i, ())})
        if joined:
            for i in members:
                out[i] = joined
    return out


def matters(runs: Runs, page: int) -> bool:
    return any(first <= page < first + count for first, count in runs)
