"""The rows of ``dsm bench fault`` and what is made of them: what each row measures (its label
and the counters each access should grow), its target and its floor; the result of a run (each
row's median and percentiles, its ratios to the round trip and to its floor, CURVE's cost per
fault, a warning for each access that was not the intended fault), its table and its rows of the
combined table (``dsm bench``).

The command and its options are ``dsm.bench.fault``'s; starting the clusters and timing the
faults into these rows is ``dsm.bench.fault_measure``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dsm.bench import common, floor

#: targets, as a ratio of the fault's median to the round trip's median (issue 6's table)
TARGETS: dict[str, float] = {"home_read": 1.2, "owned_read": 1.8, "write_upgrade": 2.0,
                             "write_miss": 2.0}
#: the keyed cluster's row-key suffix
CURVE_SUFFIX = "@curve"
#: a process's figure per access below this is left out of the per-process lines (idle ones)
MIN_SHOWN = 0.5
#: the per-process times printed for every row: (the result's key, the title of its lines).
#: The second says how long each process's woken threads waited for a CPU: on a shared machine
#: that, more than the CPU, is what a fault's messages wait for (a thread per process and hop,
#: and as many ZeroMQ I/O threads)
PER_PROCESS_TIMES = (
    ("cpu_us_per_access", "CPU µs per access, by process (all threads; includes the bench's "
                          "own bookkeeping):"),
    ("run_queue_wait_us_per_access", "run-queue wait µs per access, by process (all threads: "
                                     "runnable, waiting for a CPU):"),
    ("wakeups_per_access", "wake-ups per access, by process (all threads: times put on a CPU)"),
)


@dataclass
class Row:
    key: str
    label: str
    samples_ns: list[int] = field(default_factory=list)
    #: what the faulting node's counters should grow by, per access
    expect_counters: dict[str, int] = field(default_factory=dict)
    counter_deltas: dict[str, int] = field(default_factory=dict)
    #: CPU time each process spent during this row's accesses, in ns
    cpu_ns: dict[str, int] = field(default_factory=dict)
    #: time each process's threads spent runnable but waiting for a CPU meanwhile, in ns
    wait_ns: dict[str, int] = field(default_factory=dict)
    #: times each process's threads were put on a CPU meanwhile
    wakeups: dict[str, int] = field(default_factory=dict)
    #: messages and bytes of every agent of the faulting node's cluster during the accesses
    #: (each message is one an agent sent or received: ``NodeStats.count_message``)
    messages: int = 0
    bytes: int = 0
    #: the median of each round's share, in µs
    round_medians_us: list[float] = field(default_factory=list)

    def add_samples(self, samples_ns: list[int]) -> None:
        self.samples_ns += samples_ns
        if samples_ns:
            self.round_medians_us.append(float(np.median(samples_ns)) / 1e3)

    def add_cpu(self, before: dict[str, tuple[int, int, int]],
                after: dict[str, tuple[int, int, int]]) -> None:
        """Add what each process had of the CPUs between ``before`` and ``after`` (``sched_ns``
        of each): its time on one, its time waiting for one, and its wake-ups."""
        for name, (cpu, wait, slices) in after.items():
            cpu0, wait0, slices0 = before.get(name, (cpu, wait, slices))
            self.cpu_ns[name] = self.cpu_ns.get(name, 0) + cpu - cpu0
            self.wait_ns[name] = self.wait_ns.get(name, 0) + wait - wait0
            self.wakeups[name] = self.wakeups.get(name, 0) + slices - slices0

    def stats(self) -> dict[str, float]:
        a = np.asarray(self.samples_ns, dtype=np.float64) / 1e3
        if not len(a):
            return {"n": 0, "median_us": float("nan"), "p90_us": float("nan"), "p99_us": float("nan")}
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return {"n": len(a), "median_us": float(p50), "p90_us": float(p90), "p99_us": float(p99)}


#: the baselines, measured in the same rounds as the faults: (key, label, counters per access)
BASELINE_ROWS = [
    ("rtt", "zmq DEALER/ROUTER round trip ({size})", {}),
    (floor.HOME, "floor: home read, minimal handler", {}),
    (floor.THREE_HOPS, "floor: 3 hops, minimal handler", {}),
]
#: the DSM's own measurements (the keyed cluster measures these too)
FAULT_ROWS = [
    ("home_read", "read fault, page others read (home copy / a keeper)", {"requests": 1, "pages_in": 1}),
    ("owned_read", "read fault, page owned by another node", {"requests": 1, "pages_in": 1}),
    ("write_upgrade", "write fault, upgrade, invalidates 2 copies", {"requests": 1, "upgrades": 1}),
    ("write_miss", "write fault, missing, invalidates 2 copies", {"requests": 1, "pages_in": 1}),
    ("local_fault", "local WP fault, agent only (no network)", {"faults_local": 1}),
    ("resident_read", "resident read, no fault (loop overhead)", {}),
]
ROWS = BASELINE_ROWS + FAULT_ROWS
BASELINE_KEYS = {key for key, _, _ in BASELINE_ROWS}
FLOOR_KEYS = [floor.HOME, floor.THREE_HOPS]
#: each fault's floor: a page the directory holds at home against the 2-hop floor, a page another
#: live node owns (the directory fetches it) against the 3-hop one; the other faults do more
#: than fetch one page (invalidations) or less (no network), and have none
FLOOR_OF = {"home_read": floor.HOME, "owned_read": floor.THREE_HOPS}


#: what a fault's node counts differently under a manager: (manager, row) -> counters not
#: counted (the dynamic manager's owner upgrades its shared page with no request: it
#: invalidates the copies itself)
NOT_COUNTED = {("dynamic", "write_upgrade"): ("requests",)}


def new_rows(message_bytes: int, keyed: bool, manager: str = "") -> dict[str, Row]:
    """A run's rows, by key, before any sample: the baselines and the faults, and with ``keyed``
    the same faults on the keyed cluster; ``manager``: the directories' (``NOT_COUNTED``)."""
    def counters(key: str, c: dict[str, int]) -> dict[str, int]:
        return {k: n for k, n in c.items() if k not in NOT_COUNTED.get((manager, key), ())}

    rows = {key: Row(key, label.format(size=_size(message_bytes)),
                     expect_counters=counters(key, c))
            for key, label, c in ROWS}
    if keyed:  # the same faults on the keyed cluster
        for key, label, c in FAULT_ROWS:
            rows[key + CURVE_SUFFIX] = Row(key + CURVE_SUFFIX, label + " [CURVE]",
                                           expect_counters=counters(key, c))
    return rows


def row_results(rows: dict[str, Row], warnings: list[str]) -> list[dict]:
    """Each row's part of the result, its ratios from the same run and rounds; a warning added to
    ``warnings`` for each counter that did not grow by what the row's accesses should make it."""
    base = rows["rtt"].stats()["median_us"]
    entries = []
    for row in rows.values():
        st = row.stats()
        target = TARGETS.get(row.key)
        ratio = st["median_us"] / base if base else float("nan")
        n = st["n"]
        rtt_rounds = rows["rtt"].round_medians_us
        per_round = [m / b for m, b in zip(row.round_medians_us, rtt_rounds) if b]
        floor_key = floor_of(row.key)
        floor_ratio, floor_rounds = None, []
        if floor_key is not None:  # against its floor, from the same run and rounds
            floor_row = rows[floor_key]
            floor_median = floor_row.stats()["median_us"]
            floor_ratio = st["median_us"] / floor_median if floor_median else float("nan")
            floor_rounds = [m / f for m, f in zip(row.round_medians_us,
                                                  floor_row.round_medians_us) if f]
        entries.append({
            "key": row.key, "label": row.label, **st, "ratio": ratio, "target": target,
            "meets_target": (ratio <= target) if target is not None else None,
            "counters": row.counter_deltas,
            "round_medians_us": row.round_medians_us,
            #: each round's median over that round's round-trip median, and their median:
            #: less sensitive to the machine's load drifting during the run
            "round_ratios": per_round,
            "median_round_ratio": float(np.median(per_round)) if per_round else float("nan"),
            #: the row's floor (None: it has none), its median over the floor's, and the
            #: median of the per-round ratios to the floor
            "floor": floor_key,
            "floor_ratio": floor_ratio,
            "median_round_floor_ratio": (float(np.median(floor_rounds)) if floor_rounds
                                         else None if floor_key is None else float("nan")),
            "cpu_us_per_access": {
                name: t / n / 1e3 for name, t in sorted(row.cpu_ns.items()) if n
            },
            "run_queue_wait_us_per_access": {
                name: t / n / 1e3 for name, t in sorted(row.wait_ns.items()) if n
            },
            "wakeups_per_access": {
                name: k / n for name, k in sorted(row.wakeups.items()) if n
            },
            #: per access: messages and bytes (every agent of the cluster), and the CPU of
            #: the manager (the directory and its shards)
            "traffic": {
                "messages": row.messages / n, "bytes": row.bytes / n,
                "manager_cpu_us": sum(t for name, t in row.cpu_ns.items()
                                      if name.startswith("directory")
                                      and "curve" not in name) / n / 1e3,
            } if n and (row.messages or row.key not in BASELINE_KEYS) else None,
        })
        n = st["n"]
        for name, per_access in row.expect_counters.items():
            got = row.counter_deltas.get(name, 0)
            if got != per_access * n:
                warnings.append(
                    f"{row.label}: the node counted {name} {got} times for {n} accesses "
                    f"(expected {per_access * n}): not every access was the intended fault"
                )
    return entries


def curve_cost(rows: dict[str, Row]) -> list[dict]:
    """Each fault on the keyed cluster against the same fault on the open one: the ratio of
    the medians, and the median of the rounds' ratios (robust to load drifting)."""
    out = []
    for key, _label, _ in FAULT_ROWS:
        keyed = rows.get(key + CURVE_SUFFIX)
        if keyed is None:
            continue
        open_row = rows[key]
        base = open_row.stats()["median_us"]
        per_round = [k / o for k, o in zip(keyed.round_medians_us, open_row.round_medians_us)
                     if o]
        out.append({"key": key, "open_median_us": base,
                    "curve_median_us": keyed.stats()["median_us"],
                    "ratio": keyed.stats()["median_us"] / base if base else float("nan"),
                    "median_round_ratio": (float(np.median(per_round)) if per_round
                                           else float("nan"))})
    return out


def floor_of(key: str) -> str | None:
    """The floor a row is measured against: a floor is its own; a keyed fault has the open
    one's (the floors run open: what CURVE adds shows against them too); None when none applies."""
    if key in FLOOR_KEYS:
        return key
    return FLOOR_OF.get(key.removesuffix(CURVE_SUFFIX))


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _size(nbytes: int) -> str:
    return f"{nbytes // 1024} KiB" if nbytes % 1024 == 0 else f"{nbytes} B"


def format_table(result: dict) -> str:
    cfg = result["config"]
    header = ["measurement", "n", "median µs", "p90 µs", "p99 µs", "/ rtt", "/ floor", "target"]
    numbers = range(1, 7)  # the columns right-aligned: the numbers and the ratios
    lines = []
    for r in result["rows"]:
        if r["target"] is None:
            target = "-"
        else:
            target = f"<={r['target']:.1f}x " + ("ok" if r["meets_target"] else "MISSED")
        lines.append([r["label"], str(r["n"]), f"{r['median_us']:.1f}", f"{r['p90_us']:.1f}",
                      f"{r['p99_us']:.1f}", _ratio(r["ratio"]), _ratio(r.get("floor_ratio")),
                      target])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in numbers else c.ljust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    env = result["environment"]
    title = (f"dsm bench fault: transport {cfg['transport']}, {cfg['pages']} pages per fault row, "
             f"{cfg['round_trips']} round trips, {cfg['rounds']} rounds; / rtt = median / round-"
             f"trip median, / floor = median / its floor's median (home read: the 2-hop floor, "
             f"owned read: the 3-hop one) (pyzmq {env['pyzmq']}, libzmq {env['libzmq']}, "
             f"{env['cpus']} cpus)")
    out = [title, fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt(line) for line in lines]
    medians = result["rows"][0]["round_medians_us"]
    if len(medians) > 1:
        # the resident reads are the timing loop, not a fault: no ratio worth a robust estimate
        measured = [r for r in result["rows"][1:]
                    if not r["key"].startswith("resident_read")]
        out.append("round-trip median per round (µs): " + ", ".join(f"{m:.1f}" for m in medians))
        out.append("median of the per-round ratios (robust to load drifting during the run): "
                   + ", ".join(f"{r['key']} {r['median_round_ratio']:.2f}x" for r in measured))
        over_floor = [r for r in measured
                      if r.get("floor") is not None and r["key"] not in FLOOR_KEYS]
        if over_floor:
            out.append("median of the per-round ratios to the floor: "
                       + ", ".join(f"{r['key']} {r['median_round_floor_ratio']:.2f}x"
                                   for r in over_floor))
    if result.get("curve_cost"):
        out.append("")
        out.append(f"CURVE's cost per fault (keys {cfg['keys']}): keyed cluster / open cluster, "
                   "same run, same rounds")
        for c in result["curve_cost"]:
            out.append(f"  {c['key']:<14} open {c['open_median_us']:7.1f} µs  CURVE "
                       f"{c['curve_median_us']:7.1f} µs  ratio {c['ratio']:.2f}x  (median of the "
                       f"per-round ratios {c['median_round_ratio']:.2f}x)")
    out.append("")
    for key, title in PER_PROCESS_TIMES:
        out.append(title)
        for r in result["rows"]:
            busy = sorted(((t, name) for name, t in r.get(key, {}).items() if t >= MIN_SHOWN),
                          reverse=True)
            cells = ", ".join(f"{name} {t:.1f}" for t, name in busy) or "-"
            out.append(f"  {r['label'].ljust(widths[0])}  {cells}")
    traffic = [r for r in result["rows"] if r.get("traffic")]
    if traffic:
        out.append("")
        out.append("per access: messages and bytes (every agent's, sent or received), and the "
                   "manager's CPU:")
        for r in traffic:
            t = r["traffic"]
            out.append(f"  {r['label'].ljust(widths[0])}  {t['messages']:.1f} messages, "
                       f"{t['bytes']:,.0f} bytes, manager {t['manager_cpu_us']:.0f} µs")
    return "\n".join(out)


def summary(result: dict) -> list[dict]:
    """The combined table's rows (``dsm bench``): every fault against the round trip."""
    rows = []
    curve = {c["key"] + CURVE_SUFFIX: c for c in result.get("curve_cost", [])}
    for r in result["rows"]:
        samples = np.asarray(result["samples_ns"][r["key"]], dtype=np.float64) / common.NS_PER_US
        if r["key"] in curve:  # against the same fault on the open cluster
            rows.append(common.summary_row("fault", r["key"], r["label"], "µs", samples,
                                           ratio=curve[r["key"]]["ratio"],
                                           baseline=r["key"][:-len(CURVE_SUFFIX)]))
        elif r["key"] == "rtt":
            rows.append(common.summary_row("fault", r["key"], r["label"], "µs", samples,
                                           is_baseline=True))
        else:
            rows.append(common.summary_row("fault", r["key"], r["label"], "µs", samples,
                                           ratio=r["ratio"], baseline="rtt",
                                           at_most=TARGETS.get(r["key"])))
    return rows
