"""Who owns each page and who holds copies of it, over time, from the directory's step records.

The directory's records say each page's state after each step: ``owned:NODE`` (NODE holds the
only, writable copy), ``home{A,B}`` (the directory holds the home copy, A and B read copies),
``lost``; ``DROP`` records remove one node from a page's copies. Pages whose whole histories are
the same (a run written and read together) become one row, so that a 256 MiB array scanned in
large runs is a handful of strips, not 65,536.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HOME = re.compile(r"home\{(.*)\}$")
_RELEASE_WRITERS = re.compile(r"\{(.*) writing\}$")

#: segment kinds
OWNED = "owned"
SHARED = "shared"  #: at home, with read copies
HOME = "home"  #: at home, nobody holds it
LOST = "lost"


@dataclass(frozen=True)
class Segment:
    start: float  #: ts of the step that made it
    end: float | None  #: None: still so at the end of the trace
    kind: str
    holders: tuple[str, ...]  #: the owner, or the copy holders


@dataclass
class Row:
    first: int
    count: int
    segments: list[Segment]


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
        writers = tuple(m.group(1).split(",")) if m else ()
        return (SHARED, writers) if writers else (HOME, ())
    m = _HOME.match(text)
    if m:
        holders = tuple(h for h in m.group(1).split(",") if h)
        return (SHARED, holders) if holders else (HOME, ())
    if text == "lost":
        return LOST, ()
    return None


def rows(steps: list[dict], manager: str = "directory") -> list[Row]:
    """Ownership rows from ``steps`` (step records with ``ts``, in time order)."""
    history: dict[int, list[tuple[float, str, tuple[str, ...]]]] = {}
    for r in steps:
        if r.get("who") != manager or "page" not in r:
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
    out: list[Row] = []
    for page in sorted(history):
        changes = history[page]
        segments = [Segment(t, changes[i + 1][0] if i + 1 < len(changes) else None, kind, holders)
                    for i, (t, kind, holders) in enumerate(changes)]
        if out and out[-1].first + out[-1].count == page and out[-1].segments == segments:
            out[-1].count += 1
        else:
            out.append(Row(page, 1, segments))
    return out


def arrays(records: list[dict]) -> list[dict]:
    """The allocations named in the trace's array records: ``{"name", "first", "count"}``."""
    seen: dict[str, dict] = {}
    for r in records:
        if "array" in r and "event" not in r:
            seen.setdefault(r["array"], {"name": r["array"], "first": int(r["page"]),
                                         "count": int(r.get("count", 1))})
    return sorted(seen.values(), key=lambda a: a["first"])
