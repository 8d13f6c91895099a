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


def run_dsm_bench(*args, timeout=RUN_TIMEOUT_S):
    proc = subprocess.run([sys.executable, "-m", "dsm", "bench", *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_bench_lock_prints_every_row_with_a_ratio(tmp_path):
    from dsm.bench.lock import rows_for

    out = tmp_path / "lock.json"
    proc = run_dsm_bench("lock", "--acquires", "40", "--contended", "10", "--rounds", "2",
                         "--nodes", "2", "--json", str(out))
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("measurement"))
    for column in ("n", "median", "p90", "p99", "ratio"):
        assert column in lines[header], lines[header]
    for (key, label), line in zip(rows_for(2, 64), lines[header + 2:]):
        assert line.startswith(label), (label, proc.stdout)
        assert re.search(r"\d+\.\d\dx$", line), f"no ratio in {line!r}"
    assert "shared counter: 20 increments under the lock, none lost" in proc.stdout
    result = json.loads(out.read_text())
    assert [r["key"] for r in result["rows"]] == [key for key, _ in rows_for(2, 64)]
    assert len(result["samples_ns"]["acquire"]) == 40
    assert len(result["samples_ns"]["contended_acquire"]) == 2 * 10
    assert result["rows"][0]["ratio"] == pytest.approx(1.0)


def test_bench_workloads_runs_each_program_and_its_numpy_baseline(tmp_path):
    out = tmp_path / "workloads.json"
    proc = run_dsm_bench("workloads", "--nodes", "1,2", "--problem", "jacobi=48:3",
                         "--problem", "matmul=64:1", "--problem", "sort=3000:1",
                         "--problem", "counter=5:1", "--json", str(out))
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("workload"))
    for column in ("nodes", "time s", "numpy s", "ratio", "vs 1 node", "faults", "pages in",
                   "pages out", "invalidations", "result"):
        assert column in lines[header], lines[header]
    rows = lines[header + 2:header + 2 + 8]
    assert [row.split()[0] for row in rows[::2]] == ["jacobi", "matmul", "sort", "counter"]
    assert all(row.rstrip().endswith("MATCH") and "MISMATCH" not in row for row in rows), rows
    result = json.loads(out.read_text())
    assert [(r["workload"], r["nodes"]) for r in result["runs"]] == [
        (w, n) for w in ("jacobi", "matmul", "sort", "counter") for n in (1, 2)]
    for r in result["runs"]:
        assert r["match"] and r["seconds"] > 0 and r["numpy_seconds"] >= 0, r
        if r["nodes"] == 2 and r["workload"] != "matmul":
            assert r["pages_in"] > 0 and r["invalidations"] > 0, r  # the nodes shared pages


def test_bench_lock_and_workloads_reject_bad_arguments():
    for args in (["lock", "--nodes", "1"], ["lock", "--acquires", "0"],
                 ["workloads", "--workloads", "nosuch"], ["workloads", "--nodes", "0"]):
        proc = subprocess.run([sys.executable, "-m", "dsm", "bench", *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
