"""``dsm trace --png``: the space-time diagram as a picture for slides (matplotlib).

The same drawing as the page's: a lane per process (managers first), time downwards with idle
gaps compressed, an arrow per message labelled with its type and pages, the state changes as
marks on the lanes. A picture cannot be zoomed: past ``MAX_ARROWS`` messages only the first ones
are drawn (filter with ``--page`` or ``--node`` first) and the title says so.
"""

from __future__ import annotations

from dsm.extras import require
from dsm.viz.model import Timeline, kind_of

#: what needs matplotlib, in the error when it is missing
FEATURE = "the PNG view (--png)"

#: most arrows drawn in one picture
MAX_ARROWS = 400
#: labels are written only when there are at most this many arrows
MAX_LABELS = 120
#: an idle gap is drawn at most this many "event rows" tall
GAP_CAP_ROWS = 1.5
LANE_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
               "#17becf"]
TYPE_COLORS = {"Acquire": "#1f5fbf", "Grant": "#1a8f3a", "Fetch": "#d9730d", "Fetched": "#a65a00",
               "Invalidate": "#c0392b", "Invalidated": "#8e2a20", "Writeback": "#7b4fb3",
               "Heartbeat": "#c8c8c8"}
STATE_COLORS = {"invalid": "#999999", "shared": "#2b7bd6", "exclusive": "#d62728"}
INCH_PER_LANE = 2.2
INCH_PER_ROW = 0.28
MIN_HEIGHT_IN = 4.0
DPI = 150


def _compressed(times: list[float]) -> tuple[list[float], list[float]]:
    """A monotonic time -> row map in which no gap is taller than GAP_CAP_ROWS."""
    ts = sorted(set(times))
    if not ts:
        return [0.0], [0.0]
    gaps = sorted(b - a for a, b in zip(ts, ts[1:]))
    unit = gaps[len(gaps) // 2] if gaps else 1.0
    rows = [0.0]
    for a, b in zip(ts, ts[1:]):
        rows.append(rows[-1] + min((b - a) / unit if unit else 1.0, GAP_CAP_ROWS))
    return ts, rows


def write(timeline: Timeline, out_path: str) -> None:
    import bisect

    require("matplotlib", FEATURE).use("Agg")
    import matplotlib.pyplot as plt

    msgs = [m for m in timeline.messages if m.send is not None and m.recv is not None]
    truncated = len(msgs) > MAX_ARROWS
    msgs = msgs[:MAX_ARROWS]
    t_end = msgs[-1].recv["ts"] if msgs else float("inf")
    steps = [r for r in timeline.records if kind_of(r) == "step" and r["ts"] <= t_end]
    ts, rows = _compressed([m.send["ts"] for m in msgs] + [m.recv["ts"] for m in msgs]
                           + [r["ts"] for r in steps])

    def y(t: float) -> float:
        i = max(0, min(len(ts) - 2, bisect.bisect_right(ts, t) - 1))
        if len(ts) < 2:
            return rows[0]
        span = ts[i + 1] - ts[i]
        return rows[i] + ((t - ts[i]) / span * (rows[i + 1] - rows[i]) if span else 0.0)

    lanes = timeline.lanes
    x = {name: i for i, name in enumerate(lanes)}
    colors = {}
    n = 0
    for name in lanes:
        if timeline.roles.get(name) == "manager":
            colors[name] = "#333333"
        else:
            colors[name] = LANE_COLORS[n % len(LANE_COLORS)]
            n += 1
    height = max(MIN_HEIGHT_IN, (rows[-1] + 2) * INCH_PER_ROW)
    fig, ax = plt.subplots(figsize=(max(4.0, INCH_PER_LANE * len(lanes)), height))
    for name, i in x.items():
        ax.axvline(i, color=colors[name], alpha=0.4, lw=1)
    labels = len(msgs) <= MAX_LABELS
    for m in msgs:
        src, dst = x.get(m.src), x.get(m.dst)
        if src is None or dst is None:
            continue
        ya, yb = y(m.send["ts"]), y(m.recv["ts"])
        color = TYPE_COLORS.get(m.send["msg"], "#555555")
        ax.annotate("", xy=(dst, yb), xytext=(src, ya),
                    arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.0})
        if labels:
            page = m.send.get("page")
            text = m.send["msg"] + (f" p{page}" if isinstance(page, int) else "")
            if isinstance(m.send.get("count"), int) and m.send["count"] > 1:
                text += f"+{m.send['count']}"
            ax.text((src + dst) / 2, (ya + yb) / 2, text, fontsize=7, color=color, ha="center",
                    va="center", bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 0.5})
    for r in steps:
        i = x.get(r["who"])
        if i is None:
            continue
        new = str(r.get("new", ""))
        color = STATE_COLORS.get(new, "#d62728" if new.startswith("owned:") else "#444444")
        ax.plot([i], [y(r["ts"])], marker="s", ms=4, color=color)
    ax.set_xticks(range(len(lanes)), [f"{n}\n(manager)" if timeline.roles.get(n) == "manager"
                                      else n for n in lanes])
    ax.xaxis.tick_top()
    ax.set_xlim(-0.5, len(lanes) - 0.5)
    ax.set_ylim(rows[-1] + 1, -1)
    t0 = ts[0]
    ticks = rows[:: max(1, len(rows) // 12)]
    ax.set_yticks(ticks, [f"{(ts[rows.index(v)] - t0) * 1e3:.2f} ms" for v in ticks])
    title = "dsm: space-time diagram (time downwards, idle gaps compressed)"
    if truncated:
        title += f"; the first {MAX_ARROWS} of {len(timeline.messages)} messages"
    ax.set_title(title, fontsize=9, pad=24)
    for side in ("right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(out_path, dpi=DPI)
    plt.close(fig)
