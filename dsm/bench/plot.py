"""``--plot FILE``: one PNG of a benchmark run (matplotlib: the ``plot`` extra; imported only here).

Six panels, each drawn from whatever the run measured (a panel whose benchmark did not run says
so): the fault latencies and the lock latencies as distributions (CDFs, log time axis) beside the
bare round trip; the scan's bandwidth beside the stream's with the target; the page rates (random
reads against one page per round trip, the directory's requests against its target); the
workloads' times against plain numpy; Jacobi's iteration times against numpy's.
"""

from __future__ import annotations

import numpy as np

from dsm.bench.common import NS_PER_US, PLOT_FEATURE, US_PER_S
from dsm.extras import require

FIGURE_INCHES = (18, 14)
DPI = 100
#: the fault rows drawn (the resident read is the timing loop, not a fault)
FAULT_KEYS = ("rtt", "home_read", "owned_read", "write_upgrade", "write_miss", "local_fault")
#: the lock rows drawn (the handoffs are one value per round)
LOCK_KEYS = ("rtt", "acquire", "release", "contended_acquire", "counter_acquire")
BASELINE_COLOR = "0.35"
DSM_COLOR = "tab:blue"
TARGET_COLOR = "tab:red"


def _suite(result: dict) -> dict[str, dict]:
    """The benchmarks' results by name, from a suite's result or a single benchmark's."""
    if "benchmarks" in result:
        return result["benchmarks"]
    return {result["benchmark"]: result}


def _not_run(ax, what: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"{what}: not run", ha="center", va="center", fontsize=12, color="0.5",
            transform=ax.transAxes)


def _cdf(ax, samples_us, label: str, **style) -> None:
    x = np.sort(np.asarray(samples_us, dtype=np.float64))
    if not len(x):
        return
    y = np.arange(1, len(x) + 1) / len(x)
    median = float(np.median(x))
    ax.step(x, y, where="post", label=f"{label} (median {median:.0f} µs)", **style)


def _latency_panel(ax, result: dict | None, keys: tuple[str, ...], title: str,
                   extra: list[tuple[str, list]] = ()) -> None:
    if result is None:
        _not_run(ax, title)
        return
    labels = {r["key"]: r["label"] for r in result["rows"]}
    ratios = {r["key"]: r["ratio"] for r in result["rows"]}
    for key in keys:
        if key not in result["samples_ns"]:
            continue
        us = np.asarray(result["samples_ns"][key], dtype=np.float64) / NS_PER_US
        if key == "rtt":
            _cdf(ax, us, labels[key], color=BASELINE_COLOR, linewidth=2.5, linestyle="--")
        else:
            _cdf(ax, us, f"{labels[key]}: {ratios[key]:.2f}x", linewidth=1.5)
    for label, us in extra:
        _cdf(ax, us, label, linewidth=1.5, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("latency, µs (log scale)")
    ax.set_ylabel("fraction of accesses ≤ latency")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    # below the axes: inside, it would hide the curves' tails
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)


def _bars(ax, names: list[str], samples: list, colors: list[str],
          spread: tuple[float, float] = (0, 100)) -> None:
    """Bars at the medians, whiskers over the ``spread`` percentiles of the samples."""
    medians, low, high = [], [], []
    for s in samples:
        a = np.asarray(s, dtype=np.float64)
        m = float(np.median(a)) if len(a) else 0.0
        lo, hi = np.percentile(a, spread) if len(a) else (m, m)
        medians.append(m)
        low.append(m - lo)
        high.append(hi - m)
    xs = np.arange(len(names))
    ax.bar(xs, medians, color=colors, yerr=[low, high], capsize=4)
    for x, m in zip(xs, medians):
        ax.annotate(f"{m:,.0f}", (x, m), textcoords="offset points", xytext=(6, 4), ha="left",
                    fontsize=9)
    ax.set_xticks(xs)
    ax.set_xticklabels(names, fontsize=8.5)


def _scan_panel(ax, scan: dict | None) -> None:
    if scan is None:
        _not_run(ax, "scan")
        return
    s, mib = scan["samples"], scan["config"]["mib"]
    _bars(ax, ["zmq PUSH/PULL\n64 KiB frames", f"DSM sequential read\n({mib} MiB, other node)",
               "A's writes\n(fresh pages)"],
          [s["stream_mbps"], s["scan_mbps"], s["fill_mbps"]],
          [BASELINE_COLOR, DSM_COLOR, "tab:cyan"])
    target = scan["scan_target"] * scan["stream_mbps"]
    ax.axhline(target, color=TARGET_COLOR, linestyle="--",
               label=f"target: {scan['scan_target']:g}x the stream ({target:,.0f} MB/s)")
    ax.set_ylabel("MB/s (bar: median, whiskers: min..max)")
    ax.set_title(f"Bandwidth: scan {scan['scan_ratio']:.2f}x the stream")
    ax.legend(fontsize=8, loc="upper right")


def _rates_panel(ax, scan: dict | None, directory: dict | None) -> None:
    if scan is None and directory is None:
        _not_run(ax, "scan and directory")
        return
    names, samples, colors = [], [], []
    if scan is not None:
        rtt_us = np.asarray(scan["samples"]["rtt_ns"], dtype=np.float64) / NS_PER_US
        random_us = np.asarray(scan["samples"]["random_ns"], dtype=np.float64) / NS_PER_US
        names += ["1 page per\n4 KiB round trip", "random 4 KiB reads\n(fresh node)"]
        samples += [US_PER_S / rtt_us, US_PER_S / random_us]
        colors += [BASELINE_COLOR, DSM_COLOR]
    if directory is not None:
        cfg = directory["config"]
        names.append(f"directory requests\n({cfg['clients']} clients x {cfg['in_flight']})")
        samples.append(directory["samples"]["requests_per_s"])
        colors.append("tab:green")
    _bars(ax, names, samples, colors, spread=(10, 90))
    if directory is not None:
        x = len(names) - 1
        ax.hlines(directory["target_per_s"], x - 0.45, x + 0.45, color=TARGET_COLOR,
                  linestyle="--", label=f"directory target {directory['target_per_s']:,}/s")
        ax.legend(fontsize=8, loc="upper left")
    title = "Rates"
    if scan is not None:
        title += f": random reads {scan['random_ratio']:.2f}x one page per round trip"
    ax.set_title(title)
    ax.set_ylabel("per second (bar: median, whiskers: p10..p90)")


def _workloads_panel(ax, workloads: dict | None) -> None:
    if workloads is None:
        _not_run(ax, "workloads")
        return
    runs = workloads["runs"]
    names = list(dict.fromkeys(r["workload"] for r in runs))
    counts = sorted({r["nodes"] for r in runs})
    width = 0.8 / (len(counts) + 1)
    xs = np.arange(len(names))
    numpy_s = [float(np.median([r["numpy_seconds"] for r in runs if r["workload"] == w]))
               for w in names]
    ax.bar(xs - 0.4 + width / 2, numpy_s, width, color=BASELINE_COLOR, label="plain numpy")
    for k, n in enumerate(counts):
        values = [next((r["seconds"] for r in runs if r["workload"] == w and r["nodes"] == n),
                       np.nan) for w in names]
        ax.bar(xs - 0.4 + width * (k + 1.5), values, width, label=f"{n} node(s)")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels(names)
    ax.set_ylabel("seconds, run phase (log scale)")
    ax.set_title("Workloads: DSM on N nodes vs plain numpy")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(counts) + 1,
              frameon=False)
    ax.grid(True, axis="y", which="both", alpha=0.3)


def _jacobi_panel(ax, jacobi: dict | None) -> None:
    if jacobi is None:
        _not_run(ax, "jacobi")
        return
    cfg, s = jacobi["config"], jacobi["samples"]
    data = [np.asarray(s["numpy_iteration_s"]) * 1000, np.asarray(s["iteration_s"]) * 1000]
    ax.boxplot(data, showfliers=True)
    for k, d in enumerate(data):
        ax.scatter(np.full(len(d), k + 1.0) + np.linspace(-0.08, 0.08, len(d)), d, s=12,
                   color=[BASELINE_COLOR, DSM_COLOR][k], zorder=3)
    ax.set_xticks([1, 2])
    ax.set_xticklabels(["plain numpy\n(one process)", f"DSM, {cfg['nodes']} nodes\n(slowest node)"])
    ax.set_yscale("log")
    ax.set_ylabel("ms per iteration (log scale)")
    ax.set_title(f"Jacobi {cfg['size']}x{cfg['size']}, {cfg['iterations']} iterations: "
                 f"{jacobi['ratio']:.2f}x numpy")
    ax.grid(True, axis="y", which="both", alpha=0.3)


def plot(result: dict, path: str) -> None:
    require("matplotlib", PLOT_FEATURE).use("Agg")
    import matplotlib.pyplot as plt

    runs = _suite(result)
    fig, axes = plt.subplots(2, 3, figsize=FIGURE_INCHES,
                             gridspec_kw={"hspace": 0.75, "wspace": 0.25})
    scan = runs.get("scan")
    extra = []
    if scan is not None:
        random_us = np.asarray(scan["samples"]["random_ns"], dtype=np.float64) / NS_PER_US
        extra.append(("random 4 KiB reads (scan bench)", random_us))
    _latency_panel(axes[0, 0], runs.get("fault"), FAULT_KEYS,
                   "Fault latency beside a bare 4 KiB round trip", extra)
    _latency_panel(axes[1, 0], runs.get("lock"), LOCK_KEYS,
                   "Lock latency beside a bare round trip")
    _scan_panel(axes[0, 1], scan)
    _rates_panel(axes[0, 2], scan, runs.get("directory"))
    _workloads_panel(axes[1, 1], runs.get("workloads"))
    _jacobi_panel(axes[1, 2], runs.get("jacobi"))
    env = next(iter(runs.values()))["environment"] if runs else {}
    transport = next(iter(runs.values()))["config"].get("transport", "?") if runs else "?"
    fig.suptitle(f"dsm bench: every measurement beside its baseline from the same run "
                 f"(transport {transport}, {env.get('cpus', '?')} cpus, pyzmq "
                 f"{env.get('pyzmq', '?')}, kernel {env.get('kernel', '?')})", fontsize=13)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.94, bottom=0.13)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
