"""What ``dsm top`` draws from two successive StatsReports: a table of the nodes (faults per
second by kind, pages in and out, invalidations, median and p99 fault latency) and, per array, a
map of its pages coloured by owner or state. Pure: reports in, a rich renderable out."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from dsm.core.stats import quantile_text
from dsm.managers import Manager

#: (column, counters summed) of the fault-rate columns
FAULT_KINDS = [
    ("rd/s", ("faults_missing_read",)),
    ("wr/s", ("faults_missing_write",)),
    ("wp/s", ("faults_wp_write",)),
    ("local/s", ("faults_local",)),
]
#: the node table's columns, short enough for 80 columns with node names of 12 characters
COLUMNS = ["node", "faults", *(c for c, _ in FAULT_KINDS), "in", "out", "inval", "median",
           "p99", "procs"]
#: what the columns mean, under the header
COLUMNS_LEGEND = ("faults: so far, local ones aside; per second: rd/wr a missing page read or "
                  "written, wp a write to a read copy, local served without a message; in/out: "
                  "pages received and sent; inval: copies invalidated; median and p99: fault "
                  "latency in µs, as the bound of its bucket (≤1024: at most 1024 µs)")
#: in a plain-text snapshot a page owned by the k-th node (the table's order) shows this
OWNER_MARKS = "0123456789abcdefghijklmnopqrstuvwxyz"
#: what the arrays' map means under the dynamic manager: the directory knows only whom it handed
#: a page to (it moves on node to node), and no copies
DYNAMIC_LEGEND = ("  (dynamic manager: owned = the node the directory last handed the page "
                  "to; ownership moves on node to node, and the copies are the owners' to "
                  "know)")
NODE_STYLES = ["blue", "red", "green", "magenta", "yellow", "cyan", "bright_blue", "bright_red"]
#: an array's map is at most this many lines of cells
MAP_LINES = 4
CELL = "█"


def percentile_us(counts: list[int], bounds: list[int], q: float) -> str:
    """The ``q`` quantile's bucket bound, as text (``≤256 µs``); "-" without samples."""
    return quantile_text(counts, bounds, q)


def node_table(now: dict, before: dict | None, elapsed_s: float) -> Table:
    # one space between columns (collapse_padding): with two, the twelve columns need 81 of an
    # 80-column terminal once the counts reach four digits, and a header folds ("local/" "s")
    table = Table(title="nodes", title_justify="left", expand=False, box=None, pad_edge=False,
                  collapse_padding=True)
    for name in COLUMNS:
        table.add_column(name, justify="left" if name == "node" else "right",
                         overflow="fold")
    bounds = now["latency_buckets_us"]
    for k, (node, info) in enumerate(sorted(now["nodes"].items())):
        c = info["counters"]
        old = (before or {}).get("nodes", {}).get(node, {}).get("counters", {})
        rates = []
        for _, keys in FAULT_KINDS:
            delta = sum(c.get(key, 0) - old.get(key, 0) for key in keys)
            rates.append(f"{delta / elapsed_s:.0f}" if before and elapsed_s > 0 else "-")
        faults = sum(v for key, v in c.items() if key.startswith("faults_") and key != "faults_local")
        lat = info["latency_counts"]
        table.add_row(Text(node, style=NODE_STYLES[k % len(NODE_STYLES)]), str(faults), *rates,
                      str(c.get("pages_in", 0)), str(c.get("pages_out", 0)),
                      str(c.get("invalidations", 0)), percentile_us(lat, bounds, 0.5),
                      percentile_us(lat, bounds, 0.99), str(info["processes"]))
    return table


def array_maps(now: dict, width: int, plain: bool = False) -> list[Text]:
    """Each array's map; ``plain``: without colours, a page owned by the k-th node shows its
    mark (``OWNER_MARKS[k]``), read copies ``=``."""
    colours = {node: NODE_STYLES[k % len(NODE_STYLES)] for k, node in enumerate(sorted(now["nodes"]))}
    marks = {node: OWNER_MARKS[k % len(OWNER_MARKS)] for k, node in enumerate(sorted(now["nodes"]))}
    out = []
    cells_max = max(8, (width - 2) * MAP_LINES)
    for name, first, count, runs in now["arrays"]:
        per_cell = max(1, -(-count // cells_max))
        cells: list[tuple[str, str]] = []
        # each cell shows the state of its first page: a map, not an audit
        states = []
        for n, kind, holders in runs:
            states.extend([(kind, holders)] * min(n, count))
        for i in range(0, len(states), per_cell):
            kind, holders = states[i]
            if kind == "owned":
                cells.append((marks.get(holders[0], "?") if plain else CELL,
                              colours.get(holders[0], "white")))
            elif kind == "shared":
                cells.append(("=" if plain else "▒", colours.get(holders[0], "white")))
            elif kind == "lost":
                cells.append(("X", "bold white on red"))
            else:
                cells.append(("·", "grey50"))
        head = Text(f"{name}: pages {first}-{first + count - 1}"
                    + (f", {per_cell} pages a cell" if per_cell > 1 else "") + "\n", style="bold")
        body = Text()
        for i, (ch, style) in enumerate(cells):
            body.append(ch, style=style)
            if (i + 1) % (width - 2) == 0:
                body.append("\n")
        out.append(head + body)
    return out


def render(now: dict, before: dict | None, elapsed_s: float, endpoint: str, width: int,
           live: bool = True) -> Group:
    """The view; ``live``: the interactive one (it says how to quit), else a snapshot."""
    d = now["directory"]
    header = Text(f"dsm top — directory {endpoint}: {len(now['nodes'])} nodes, "
                  f"{d.get('grants', 0)} grants, {d.get('fetches', 0)} fetches, "
                  f"{d.get('invalidations', 0)} invalidations, {d.get('pages_lost', 0)} lost "
                  "pages" + ("   (q quits)" if live else
                             f"; rates over {elapsed_s:.1f} s" if before else ""), style="bold")
    columns = Text(COLUMNS_LEGEND, style="grey62")
    if live:
        legend = Text("arrays: █ owned by the node of that colour  ▒ read copies (first "
                      "holder's colour)  · at home  X lost", style="grey62")
    else:
        legend = Text("arrays: 0-9 owned by that node (0 the first in the table)  = read "
                      "copies  · at home  X lost", style="grey62")
    if now.get("manager") == Manager.DYNAMIC.value:
        legend.append(DYNAMIC_LEGEND)
    return Group(header, columns, node_table(now, before, elapsed_s), legend,
                 *array_maps(now, width, plain=not live))
