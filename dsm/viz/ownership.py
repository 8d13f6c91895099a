"""Who owns each page and who holds copies of it, over time, from the directory's step records.

The directory's records say each page's state after each step: ``owned:NODE`` (NODE holds the
only, writable copy), ``home{A,B}`` (the directory holds the home copy, A and B read copies),
``lost``; ``DROP`` records remove one node from a page's copies. Pages whose whole histories are
the same (a run written and read together) become one row, so that a 256 MiB array scanned in
large runs is a handful of strips, not 65,536.

A release-consistency page (``dsm.directory.release``) has no owner while nodes write it: its
home (``release home``) merges the diffs they send at their releases. Its row is drawn from the
nodes' own records too: each node's copy (from its grant to the write notice or the give-back
that invalidates it), its twins (``TWIN`` to ``DIFF``: the node is writing), each diff merged at
home (the directory's ``DIFF``) and each write notice (the node's ``NOTICE``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_HOME = re.compile(r"home\{(.*)\}$")
_RELEASE_WRITERS = re.compile(r"\{(.*) writing\}$")

#: segment kinds
OWNED = "owned"
SHARED = "shared"  #: at home, with read copies
HOME = "home"  #: at home, nobody holds it
LOST = "lost"
RELEASE = "release"  #: a release-consistency page at home (its holders: the writers it names)

#: bands over a release page's row: a node's copy, and its twin (it is writing the copy)
COPY = "copy"
TWIN = "twin"
#: marks on a release page's row: a diff merged at home, a write notice to a node
DIFF = "diff"
NOTICE = "notice"
#: a node's step that ends its copy of a page (a write notice, an invalidation, a give-back...)
_COPY_ENDS = {"NOTICE", "INVALIDATE", "GIVEBACK", "DISCARD", "LOST", "FETCH"}


@dataclass(frozen=True)
class Segment:
    start: float  #: ts of the step that made it
    end: float | None  #: None: still so at the end of the trace
    kind: str
    holders: tuple[str, ...]  #: the owner, or the copy holders


@dataclass(frozen=True)
class Band:
    """A node's copy of a release page (``COPY``) or its twin (``TWIN``), from ``start`` to
    ``end`` (None: the trace's end)."""

    start: float
    end: float | None
    kind: str
    node: str


@dataclass(frozen=True)
class Mark:
    t: float
    kind: str  #: DIFF or NOTICE
    node: str


@dataclass
class Row:
    first: int
    count: int
    segments: list[Segment]
    bands: list[Band] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)


def parse_state(text: str) -> tuple[str, tuple[str, ...]] | None:
    """(kind, holders) of a directory state text; None for transient or unknown ones."""
    if text.startswith("owned:"):
        return OWNED, (text[len("owned:"):],)
    # release-consistency pages (dsm.directory.release): a private page is its holder's as an
    # owned one is; the home with nodes writing their twinned copies shows them as holders
    if text.startswith("private:"):
        return OWNED, (text[len("private:"):],)
    if text.startswith("release home"):
        m = _RELEASE_WRITERS.search(text)
        return RELEASE, tuple(m.group(1).split(",")) if m else ()
    m = _HOME.match(text)
    if m:
        holders = tuple(h for h in m.group(1).split(",") if h)
        return (SHARED, holders) if holders else (HOME, ())
    if text == "lost":
        return LOST, ()
    return None


def rows(steps: list[dict], manager: str | set[str] = "directory") -> list[Row]:
    """Ownership rows from ``steps`` (step records with ``ts``, in time order): the manager's,
    and the nodes' for the overlays of release pages. ``manager``: the manager's name, or the
    names of a sharded manager's shards."""
    managers = {manager} if isinstance(manager, str) else set(manager)
    history: dict[int, list[tuple[float, str, tuple[str, ...]]]] = {}
    for r in steps:
        if r.get("who") not in managers or "page" not in r:
            continue
        first, count = int(r["page"]), int(r.get("count", 1))
        if r.get("event") == "DROP":
            for page in range(first, first + count):
                h = history.get(page)
                if h and h[-1][1] == SHARED and r["node"] in h[-1][2]:
                    holders = tuple(x for x in h[-1][2] if x != r["node"])
                    h.append((r["ts"], SHARED if holders else HOME, holders))
            continue
        state = parse_state(str(r.get("new", "")))
        if state is None:
            continue
        for page in range(first, first + count):
            h = history.setdefault(page, [])
            if h and (h[-1][1], h[-1][2]) == state:
                continue
            h.append((r["ts"], *state))
    release = {page for page, h in history.items() if any(k == RELEASE for _, k, _ in h)}
    bands, marks = _release_overlays(steps, managers, release)
    out: list[Row] = []
    for page in sorted(history):
        changes = history[page]
        segments = [Segment(t, changes[i + 1][0] if i + 1 < len(changes) else None, kind, holders)
                    for i, (t, kind, holders) in enumerate(changes)]
        row = Row(page, 1, segments, bands.get(page, []), marks.get(page, []))
        last = out[-1] if out else None
        if (last and last.first + last.count == page and last.segments == segments
                and last.bands == row.bands and last.marks == row.marks):
            last.count += 1
        else:
            out.append(row)
    return out


def _release_overlays(steps: list[dict], managers: set[str], pages: set[int]
                      ) -> tuple[dict[int, list[Band]], dict[int, list[Mark]]]:
    """The copies, twins, diffs and write notices of the release pages ``pages``."""
    bands: dict[int, list[Band]] = {}
    marks: dict[int, list[Mark]] = {}
    open_: dict[tuple[int, str, str], float] = {}  # (page, kind, node) -> start

    def close(page: int, kind: str, node: str, t: float) -> None:
        start = open_.pop((page, kind, node), None)
        if start is not None:
            bands.setdefault(page, []).append(Band(start, t, kind, node))

    for r in steps:
        if "page" not in r or not isinstance(r.get("page"), int):
            continue
        event, who, t = r.get("event"), r.get("who"), r["ts"]
        first, count = r["page"], int(r.get("count", 1))
        for page in range(first, first + count):
            if page not in pages:
                continue
            if who in managers:
                if event == "DIFF":
                    marks.setdefault(page, []).append(Mark(t, DIFF, str(r.get("node"))))
                continue
            new = str(r.get("new", ""))
            if event == "GRANT" and new != "invalid":
                open_.setdefault((page, COPY, who), t)
            elif event == "TWIN":
                open_.setdefault((page, COPY, who), t)
                open_.setdefault((page, TWIN, who), t)
            elif event == "DIFF":
                close(page, TWIN, who, t)
            elif event in _COPY_ENDS and new in ("invalid", "lost"):
                close(page, TWIN, who, t)
                close(page, COPY, who, t)
                if event == "NOTICE":
                    marks.setdefault(page, []).append(Mark(t, NOTICE, who))
    for (page, kind, node), start in open_.items():
        bands.setdefault(page, []).append(Band(start, None, kind, node))
    for page in bands:
        bands[page].sort(key=lambda b: (b.start, b.kind, b.node))
    return bands, marks


def arrays(records: list[dict]) -> list[dict]:
    """The allocations named in the trace's array records: ``{"name", "first", "count"}``."""
    seen: dict[str, dict] = {}
    for r in records:
        if "array" in r and "event" not in r:
            seen.setdefault(r["array"], {"name": r["array"], "first": int(r["page"]),
                                         "count": int(r.get("count", 1))})
    return sorted(seen.values(), key=lambda a: a["first"])
