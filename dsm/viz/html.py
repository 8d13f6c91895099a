"""``dsm trace --html``: the merged trace as one self-contained page.

The page needs no network: the data (a compact JSON document, below), the script and the styles
are inlined (``static/view.js``, ``static/view.css``, written for this project, no library). The
script draws the space-time diagram and the ownership timeline on canvases and draws only what is
in view, so that traces of 100,000 steps stay usable.

The data document (times in ms from the first record, on the reference clock):

    lanes:  [{name, role, color}]               managers first
    types:  message type names; events: step event names; texts: state texts
    msgs:   [send_ms, recv_ms|null, src_lane, dst_lane, type, page|-1, count, send_rec|-1,
             recv_rec|-1, flags, related]       flags: 1 uncertain, 2 clamped, 4 one end only;
                                                related: a lock or barrier message's pages as
                                                [[first, count]...] (dsm.viz.sync), else 0
    steps:  [ms, lane, page|-1, count, event, new_text, rec, state_kind]
    recs:   the records themselves, for the hover box
    own:    [first_page, count, [[start_ms, end_ms|null, kind, [lane...]]...],
             [[start_ms, end_ms|null, band_kind, lane]...], [[ms, mark_kind, lane]...]]
    kinds:  ownership segment kinds; bands: band kinds (copy, twin); marks: mark kinds (diff,
            notice); arrays: [{name, first, count}]
    style:  the colours and legend texts (dsm.viz.style)
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from dsm.viz import ownership, style, sync
from dsm.viz.model import Timeline, kind_of

FLAG_UNCERTAIN = 1
FLAG_CLAMPED = 2
FLAG_ONE_END = 4
#: decimals kept of a time in ms (0.1 µs)
TIME_DECIMALS = 4


class _Index:
    """Strings to small integers, in order of first use."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, name: str) -> int:
        i = self._index.get(name)
        if i is None:
            i = self._index[name] = len(self.names)
            self.names.append(name)
        return i


def payload(timeline: Timeline, files: list[str]) -> dict:
    recs = timeline.records
    t0 = recs[0]["ts"] if recs else 0.0

    def ms(ts: float) -> float:
        return round((ts - t0) * 1e3, TIME_DECIMALS)

    lane_of = {name: i for i, name in enumerate(timeline.lanes)}
    rec_index = {id(r): i for i, r in enumerate(recs)}
    types, events, texts = _Index(), _Index(), _Index()
    related = sync.related_pages(timeline)
    msgs = []
    for k, m in enumerate(timeline.messages):
        s, r = m.send, m.recv
        src, dst = lane_of.get(m.src), lane_of.get(m.dst)
        if src is None or dst is None:  # a peer that left no trace: a lane of its own
            for name in (m.src, m.dst):
                if name not in lane_of:
                    lane_of[name] = len(timeline.lanes)
                    timeline.lanes.append(name)
                    timeline.roles[name] = "node"
            src, dst = lane_of[m.src], lane_of[m.dst]
        rec = m.record
        flags = ((FLAG_UNCERTAIN if rec.get("uncertain") else 0)
                 | (FLAG_CLAMPED if r is not None and r.get("clamped") else 0)
                 | (FLAG_ONE_END if s is None or r is None else 0))
        page = rec.get("page")
        msgs.append([ms(s["ts"]) if s else None, ms(r["ts"]) if r else None, src, dst,
                     types(rec["msg"]), page if isinstance(page, int) else -1,
                     int(rec.get("count", 1)) if isinstance(rec.get("count"), int) else 1,
                     rec_index[id(s)] if s else -1, rec_index[id(r)] if r else -1, flags,
                     [list(run) for run in related[k]] if k in related else 0])
    msgs.sort(key=lambda x: x[0] if x[0] is not None else x[1])
    steps = []
    step_records = []
    for r in recs:
        if kind_of(r) != "step":
            continue
        step_records.append(r)
        page = r.get("page")
        event, new = str(r.get("event", "?")), str(r.get("new", ""))
        steps.append([ms(r["ts"]), lane_of[r["who"]], page if isinstance(page, int) else -1,
                      int(r.get("count", 1)), events(event), texts(new), rec_index[id(r)],
                      style.state_kind(new, event)])
    kinds = [ownership.OWNED, ownership.SHARED, ownership.HOME, ownership.LOST, ownership.RELEASE]
    band_kinds, mark_kinds = [ownership.COPY, ownership.TWIN], [ownership.DIFF, ownership.NOTICE]

    def end_ms(end: float | None) -> float | None:
        return None if end is None else ms(end)

    managers = {n for n in timeline.lanes if timeline.roles.get(n) == "manager"}
    own = []
    for row in ownership.rows(step_records, managers or timeline.reference):
        segs = [[ms(seg.start), end_ms(seg.end), kinds.index(seg.kind),
                 [lane_of[h] for h in seg.holders if h in lane_of]] for seg in row.segments]
        bands = [[ms(b.start), end_ms(b.end), band_kinds.index(b.kind), lane_of[b.node]]
                 for b in row.bands if b.node in lane_of]
        marks = [[ms(mk.t), mark_kinds.index(mk.kind), lane_of[mk.node]]
                 for mk in row.marks if mk.node in lane_of]
        own.append([row.first, row.count, segs, bands, marks])
    end = max([ms(recs[-1]["ts"])] if recs else [0.0])
    colors = style.lane_colors(timeline.lanes, timeline.roles)
    return {
        "files": files,
        "reference": timeline.reference,
        "clocks": {w: [round(o * 1e3, TIME_DECIMALS), round(e * 1e3, TIME_DECIMALS)]
                   for w, (o, e) in timeline.clocks.items()},
        "end": end,
        "lanes": [{"name": n, "role": timeline.roles.get(n, "node"), "color": colors[n]}
                  for n in timeline.lanes],
        "types": types.names, "events": events.names, "texts": texts.names,
        "msgs": msgs, "steps": steps, "recs": [_clean(r) for r in recs],
        "own": own, "kinds": kinds, "bands": band_kinds, "marks": mark_kinds,
        "arrays": ownership.arrays(recs), "style": style.payload(),
    }


def _clean(record: dict) -> dict:
    out = dict(record)
    out.pop("ts", None)
    return out


def _static(name: str) -> str:
    return resources.files("dsm.viz").joinpath("static", name).read_text(encoding="utf-8")


def render(timeline: Timeline, files: list[str]) -> str:
    data = json.dumps(payload(timeline, files), separators=(",", ":"))
    # the document sits inside <script>: "</" must not close it
    data = data.replace("</", "<\\/")
    title = "dsm trace: " + ", ".join(Path(f).name for f in files[:4]) + (
        f" and {len(files) - 4} more" if len(files) > 4 else "")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<title>{_escape(title)}</title>\n<style>\n{_static('view.css')}\n</style></head>\n"
        f"<body>\n{_static('view.html')}\n"
        f"<script id=\"dsm-data\" type=\"application/json\">{data}</script>\n"
        f"<script>\n{_static('view.js')}\n</script>\n</body></html>\n"
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write(timeline: Timeline, files: list[str], out_path: str) -> None:
    Path(out_path).write_text(render(timeline, files), encoding="utf-8")
