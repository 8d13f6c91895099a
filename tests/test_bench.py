"""``dsm bench fault`` runs end to end on a small size and prints every row with its ratio.
Speed is not asserted: only that the benchmark runs, checks itself and reports."""

import json
import re
import subprocess
import sys

import pytest

from dsm.bench.fault import ROWS

pytestmark = pytest.mark.timeout(300)

RUN_TIMEOUT_S = 240


def run_bench(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "dsm", "bench", "fault", *args],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def table_rows(stdout):
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("measurement"))
    return lines[header], lines[header + 2:header + 2 + len(ROWS)]


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_bench_fault_prints_every_row_with_a_ratio(tmp_path, transport):
    out = tmp_path / "bench.json"
    proc = run_bench("--pages", "50", "--rounds", "2", "--transport", transport,
                     "--json", str(out))
    header, rows = table_rows(proc.stdout)
    for column in ("n", "median", "p90", "p99", "ratio", "target"):
        assert column in header, header
    labels = [label.format(size="4 KiB") for _, label, _ in ROWS]
    for label, line in zip(labels, rows):
        assert line.startswith(label), (label, proc.stdout)
        assert re.search(r"\s50\s", line), line
        assert re.search(r"\d+\.\d\dx", line), f"no ratio in {line!r}"
    assert "round 2/2" in proc.stderr  # progress goes to stderr

    result = json.loads(out.read_text())
    assert result["config"]["transport"] == transport
    assert [r["key"] for r in result["rows"]] == [key for key, _, _ in ROWS]
    for key, _, _ in ROWS:
        samples = result["samples_ns"][key]
        assert len(samples) == 50 and all(s > 0 for s in samples), key
    assert result["rows"][0]["ratio"] == pytest.approx(1.0)
    # every access was the fault it was meant to be
    assert result["warnings"] == [], result["warnings"]


def test_bench_fault_rejects_bad_sizes():
    proc = subprocess.run([sys.executable, "-m", "dsm", "bench", "fault", "--pages", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--pages" in proc.stderr
