"""``dsm trace --png``: the space-time diagram as a picture for slides (matplotlib).

The same drawing as the page's, in the same colours (``dsm.viz.style``): a lane per process
(managers first), time downwards with idle gaps compressed, an arrow per message in its sender's
colour labelled with its type and page (array and index), the state changes as marks on the
lanes, and a legend. A picture cannot be zoomed or scrolled: it shows the messages of a time
window (``--from``/``--to``, ms from the trace's start; ``--page`` first to follow one page),
at most ``MAX_ARROWS`` of them, and is never taller than ``MAX_HEIGHT_IN``. Its title says what
it shows and its footer what it left out (later messages, joins and heartbeats, labels that had
no room), and so does ``write``'s return value.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from dsm.extras import require
from dsm.viz import style
from dsm.viz.model import Message, Timeline, kind_of
from dsm.viz.ownership import arrays as array_records

#: what needs matplotlib, in the error when it is missing
FEATURE = "the PNG view (--png)"

#: most arrows drawn in one picture (each labelled)
MAX_ARROWS = 60
#: an idle gap is drawn at most this many "event rows" tall
GAP_CAP_ROWS = 1.5
INCH_PER_LANE = 2.4
INCH_PER_ROW = 0.24
MIN_HEIGHT_IN = 4.0
#: the picture's height at most (rows are squeezed to fit; 16 in at 150 dpi: 2,400 px)
MAX_HEIGHT_IN = 16.0
#: room for the title, the lane names, the legend and the footer
MARGIN_IN = 2.6
DPI = 150
#: labels closer than this (in rows) on one lane pair collide: the later one is left out
LABEL_ROWS = 0.9


@dataclass
class Drawn:
    """What the picture shows and what it left out (``write``'s answer, printed by the command)."""

    arrows: int
    of: int  #: messages in the window (joins and heartbeats included unless shown)
    later: int  #: messages of the window past MAX_ARROWS, not drawn
    joins: int  #: joins and heartbeats hidden
    labels_left_out: int
    from_ms: float
    to_ms: float

    def summary(self) -> str:
        parts = [f"{self.arrows} of {self.of} messages, {self.from_ms:.3f} to {self.to_ms:.3f} ms"]
        left = []
        if self.later:
            left.append(f"{self.later} later messages (--from/--to, --page to choose)")
        if self.joins:
            left.append(f"{self.joins} joins and heartbeats (--joins to draw them)")
        if self.labels_left_out:
            left.append(f"{self.labels_left_out} labels that had no room")
        return parts[0] + ("; left out: " + ", ".join(left) if left else "; nothing left out")


def _compressed(times: list[float]) -> tuple[list[float], list[float]]:
    """A monotonic time -> row map in which no gap is taller than GAP_CAP_ROWS."""
    ts = sorted(set(times))
    if not ts:
        return [0.0], [0.0]
    gaps = sorted(b - a for a, b in zip(ts, ts[1:]))
    unit = gaps[len(gaps) // 2] if gaps else 1.0
    rows = [0.0]
    for a, b in zip(ts, ts[1:]):
        rows.append(rows[-1] + min(max((b - a) / unit if unit else 1.0, 0.6), GAP_CAP_ROWS))
    return ts, rows


def _page_name(page: int, count: int, arrays: list[dict]) -> str:
    for a in arrays:
        if a["first"] <= page < a["first"] + a["count"]:
            short = a["name"].rsplit(".", 1)[-1]
            i = page - a["first"]
            return f"{short} p{i}" + (f"-{i + count - 1}" if count > 1 else "")
    return f"p{page}" + (f"-{page + count - 1}" if count > 1 else "")


def write(timeline: Timeline, out_path: str, from_ms: float | None = None,
          to_ms: float | None = None, joins: bool = False) -> Drawn:
    require("matplotlib", FEATURE).use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    t0 = timeline.records[0]["ts"] if timeline.records else 0.0
    lo = t0 + (from_ms or 0.0) / 1e3
    hi = t0 + to_ms / 1e3 if to_ms is not None else float("inf")

    def in_window(m: Message) -> bool:
        return lo <= m.send["ts"] <= hi or lo <= m.recv["ts"] <= hi

    window = [m for m in timeline.messages
              if m.send is not None and m.recv is not None and in_window(m)]
    hidden = [] if joins else [m for m in window if m.record["msg"] in style.JOIN_MESSAGES]
    shown = [m for m in window if joins or m.record["msg"] not in style.JOIN_MESSAGES]
    msgs = shown[:MAX_ARROWS]
    t_first = min([m.send["ts"] for m in msgs], default=lo)
    t_end = max([m.recv["ts"] for m in msgs], default=lo)
    steps = [r for r in timeline.records
             if kind_of(r) == "step" and t_first <= r["ts"] <= t_end]
    ts, rows = _compressed([m.send["ts"] for m in msgs] + [m.recv["ts"] for m in msgs]
                           + [r["ts"] for r in steps])
    # squeeze the rows to fit the height cap
    scale = min(1.0, (MAX_HEIGHT_IN - MARGIN_IN) / max(1e-9, (rows[-1] + 2) * INCH_PER_ROW))
    rows = [r * scale for r in rows]

    def y(t: float) -> float:
        i = max(0, min(len(ts) - 2, bisect.bisect_right(ts, t) - 1))
        if len(ts) < 2:
            return rows[0]
        span = ts[i + 1] - ts[i]
        return rows[i] + ((t - ts[i]) / span * (rows[i + 1] - rows[i]) if span else 0.0)

    lanes = timeline.lanes
    x = {name: i for i, name in enumerate(lanes)}
    colors = style.lane_colors(lanes, timeline.roles)
    arrays = array_records(timeline.records)
    height = min(MAX_HEIGHT_IN, max(MIN_HEIGHT_IN, (rows[-1] + 2) * INCH_PER_ROW + MARGIN_IN))
    fig, ax = plt.subplots(figsize=(max(6.0, INCH_PER_LANE * len(lanes)), height))
    for name, i in x.items():
        ax.axvline(i, color=colors[name], alpha=0.4, lw=1.5)
    placed: dict[tuple[int, int], list[float]] = {}
    left_out = 0
    for m in msgs:
        src, dst = x.get(m.src), x.get(m.dst)
        if src is None or dst is None:
            continue
        ya, yb = y(m.send["ts"]), y(m.recv["ts"])
        color = colors[m.src]
        ax.annotate("", xy=(dst, yb), xytext=(src, ya),
                    arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.1})
        page = m.record.get("page")
        text = m.record["msg"]
        if isinstance(page, int):
            count = m.record.get("count")
            text += " " + _page_name(page, count if isinstance(count, int) else 1, arrays)
        ym = (ya + yb) / 2
        key = (min(src, dst), max(src, dst))
        if any(abs(ym - other) < LABEL_ROWS * scale for other in placed.get(key, ())):
            left_out += 1
            continue
        placed.setdefault(key, []).append(ym)
        ax.text((src + dst) / 2, ym, text, fontsize=7, color="#222222", ha="center",
                va="center", bbox={"fc": "white", "ec": "none", "alpha": 0.85, "pad": 0.5})
    for r in steps:
        i = x.get(r["who"])
        if i is None:
            continue
        kind = style.state_kind(str(r.get("new", "")), str(r.get("event", "")))
        ax.plot([i], [y(r["ts"])], marker="s", ms=5, color=style.STATE_KINDS[kind][0],
                markeredgecolor=style.MARK_OUTLINE, markeredgewidth=0.6, ls="none")
    ax.set_xticks(range(len(lanes)), [f"{n}\n(manager)" if timeline.roles.get(n) == "manager"
                                      else n for n in lanes])
    ax.xaxis.tick_top()
    for label, name in zip(ax.get_xticklabels(), lanes):
        label.set_color(colors[name])
        label.set_fontweight("bold")
    ax.set_xlim(-0.5, len(lanes) - 0.5)
    ax.set_ylim(rows[-1] + 1, -1)
    ticks = rows[:: max(1, len(rows) // 12)]
    ax.set_yticks(ticks, [f"{(ts[rows.index(v)] - t0) * 1e3:.3f} ms" for v in ticks])
    for side in ("right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    drawn = Drawn(len(msgs), len(window), len(shown) - len(msgs), len(hidden), left_out,
                  (t_first - t0) * 1e3 if msgs else (from_ms or 0.0),
                  (t_end - t0) * 1e3 if msgs else (from_ms or 0.0))
    fig.suptitle("dsm: space-time diagram (time downwards, idle gaps compressed; arrows in "
                 f"their sender's colour)\n{drawn.summary()}", fontsize=9)
    handles = [Line2D([], [], color=colors[n], lw=3, label=n) for n in lanes]
    handles += [Line2D([], [], marker="s", ls="none", color=c, markeredgecolor=style.MARK_OUTLINE,
                       label=text.split(" (")[0]) for c, text in style.STATE_KINDS.values()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=7,
               frameon=False)
    fig.tight_layout(rect=(0, 0.9 / height, 1, 1 - 0.3 / height))
    fig.savefig(out_path, dpi=DPI)
    plt.close(fig)
    return drawn

