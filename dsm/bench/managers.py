"""``dsm bench --manager all`` (or ``relay,central``): the suite once per manager, one table
with a column per manager.

Each manager's pass runs every selected benchmark as the suite does, with the directories they
start running that manager (``DSM_MANAGER`` and, for the distributed one, ``DSM_SHARDS``, which
``dsm directory`` reads). The table has a row per measurement and, per manager, its median and
its ratio to the baseline measured in that pass; for the page faults also the messages and bytes
per fault (every message is sent or received by an agent: the agents' counts of what they sent to
the directory, received from it and sent to their peers) and the manager's CPU per fault (the
directory's, or all its shards'). The passes alternate with nothing else in between, so the
columns are comparable; a noisy machine still shifts them, so the ratios to each pass's own
baselines are the figures to read.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from dsm.bench.common import environment_set
from dsm.managers import MANAGER_ENV, SHARDS_ENV, Manager

#: the shards of the distributed manager's pass unless DSM_SHARDS says otherwise
DEFAULT_SHARDS = 2
ALL = "all"
#: the managers, in order, as ``--manager`` spells them
NAMES = ",".join(m.value for m in Manager)


def parse(text: str | None) -> list[str]:
    """The managers a ``--manager`` value names, in order; [] for none (the default manager)."""
    if not text:
        return []
    names = [m.value for m in Manager] if text == ALL else [
        n.strip() for n in text.split(",") if n.strip()]
    valid = {m.value for m in Manager}
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown manager(s) {', '.join(unknown)} (choose from "
                         f"{', '.join(sorted(valid))}, or {ALL})")
    return names


@contextmanager
def running(manager: str) -> Iterator[None]:
    """While inside, the directories started (as children) run ``manager``."""
    values = {MANAGER_ENV: manager}
    # one directory, or the distributed manager's shards ($DSM_SHARDS would make any other
    # manager distributed)
    values[SHARDS_ENV] = ((os.environ.get(SHARDS_ENV) or str(DEFAULT_SHARDS))
                          if manager == Manager.DISTRIBUTED.value else "1")
    with environment_set(values):
        yield


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    median = row["median"]
    text = "-" if median is None or median != median else (
        f"{median:,.0f}" if abs(median) >= 100 else f"{median:.1f}")
    ratio = row.get("ratio")
    if ratio is not None and ratio == ratio:
        text += f" ({ratio:.2f}x)"
    return text


def format_table(passes: dict[str, dict], title: str) -> str:
    """One row per measurement, a column per manager: median (ratio to its pass's baseline)."""
    managers = list(passes)
    order: list[tuple[str, str]] = []
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    labels: dict[tuple[str, str], tuple[str, str]] = {}
    for m, result in passes.items():
        for row in result["summary"]:
            key = (row["bench"], row["key"])
            if key not in cells:
                order.append(key)
                cells[key] = {}
                labels[key] = (row["label"], row["unit"])
            cells[key][m] = row
    header = ["measurement", "unit", *managers]
    lines = [[labels[k][0], labels[k][1], *(_cell(cells[k].get(m)) for m in managers)]
             for k in order]
    extra = fault_traffic(passes)
    for what, per_manager in extra:
        lines.append([what, "", *(per_manager.get(m, "-") for m in managers)])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]

    def fmt(cells_: list[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i >= 2 else c.ljust(widths[i])
                         for i, c in enumerate(cells_)).rstrip()

    out = [title, fmt(header), fmt(["-" * w for w in widths])]
    previous = None
    for k, line in zip(order + [("traffic", "")] * len(extra), lines):
        if previous is not None and k[0] != previous:
            out.append("")
        previous = k[0]
        out.append(fmt(line))
    return "\n".join(out)


def fault_traffic(passes: dict[str, dict]) -> list[tuple[str, dict[str, str]]]:
    """Per fault row of ``dsm bench fault``: messages, bytes and manager CPU per fault."""
    rows: dict[str, dict[str, str]] = {}
    order: list[str] = []
    for m, result in passes.items():
        fault = result["benchmarks"].get("fault")
        if not fault:
            continue
        for r in fault["rows"]:
            traffic = r.get("traffic")
            if not traffic or not traffic["messages"]:  # no message: nothing to compare
                continue
            for name, value in (("messages per fault", f"{traffic['messages']:.1f}"),
                                ("bytes per fault", f"{traffic['bytes']:,.0f}"),
                                ("manager CPU µs per fault", f"{traffic['manager_cpu_us']:.0f}")):
                what = f"{r['label']}: {name}"
                if what not in rows:
                    order.append(what)
                    rows[what] = {}
                rows[what][m] = value
    return [(what, rows[what]) for what in order]
