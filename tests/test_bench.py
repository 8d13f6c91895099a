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


def test_bench_fault_with_keys_measures_a_keyed_cluster_beside_the_open_one(tmp_path):
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "dsm", "keygen", str(keys)], check=True,
                   capture_output=True, timeout=30)
    out = tmp_path / "bench.json"
    proc = run_bench("--pages", "50", "--rounds", "2", "--keys", str(keys), "--json", str(out))
    result = json.loads(out.read_text())
    assert result["config"]["keys"] == str(keys)
    fault_keys = [key for key, _, _ in ROWS[1:]]
    assert [c["key"] for c in result["curve_cost"]] == fault_keys
    for key in fault_keys:  # each fault measured on both clusters, in the same rounds
        assert len(result["samples_ns"][key + "@curve"]) == 50
        assert len(result["samples_ns"][key]) == 50
    for cost in result["curve_cost"]:
        assert cost["ratio"] == pytest.approx(cost["curve_median_us"] / cost["open_median_us"])
    assert "CURVE's cost per fault" in proc.stdout
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


# --- scan, directory, jacobi and the whole suite, at tiny sizes ---------------------------------
def summary_lines(stdout, labels):
    """The table's lines that start with each label, in order (the test fails on a missing one)."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("measurement"))
    for column in ("n", "median", "p90", "p99", "unit", "ratio", "target", "verdict"):
        assert column in lines[header], lines[header]
    found = []
    for label in labels:
        match = [line for line in lines[header + 2:] if line.startswith(label)]
        assert match, (label, stdout)
        found.append(match[0])
    return found


def test_bench_scan_streams_scans_and_reads_at_random(tmp_path):
    out = tmp_path / "scan.json"
    proc = run_dsm_bench("scan", "--mib", "4", "--repeats", "2", "--random-pages", "30",
                         "--round-trips", "30", "--json", str(out))
    stream, scan, one, rand = summary_lines(proc.stdout, [
        "zmq PUSH/PULL stream", "sequential read of 4 MiB", "1 page per 4 KiB round trip",
        "random 4 KiB reads"])
    assert "MB/s" in stream and "baseline" in stream
    assert re.search(r"\d+\.\d\dx\s+>=0.4x\s+(ok|MISSED)$", scan), scan
    assert "pages/s" in rand and re.search(r"\d+\.\d\dx", rand), rand
    assert "repeat 2/2" in proc.stderr  # progress goes to stderr
    result = json.loads(out.read_text())
    s = result["samples"]
    assert len(s["stream_mbps"]) == len(s["scan_mbps"]) == 2
    assert len(s["random_ns"]) == 30 and len(s["rtt_ns"]) == 30
    assert result["scan_counters"]["pages_in"] >= 2 * 4 * 256  # every page came in
    assert result["scan_ratio"] > 0 and result["random_ratio"] > 0


def test_bench_scan_with_keys_runs_the_cluster_keyed(tmp_path):
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "dsm", "keygen", str(keys)], check=True,
                   capture_output=True, timeout=30)
    out = tmp_path / "scan.json"
    proc = run_dsm_bench("scan", "--mib", "2", "--repeats", "1", "--random-pages", "10",
                         "--round-trips", "10", "--keys", str(keys), "--json", str(out))
    assert f"CurveZMQ keys {keys}" in proc.stdout
    result = json.loads(out.read_text())
    assert result["config"]["keys"] == str(keys)
    assert result["scan_counters"]["pages_in"] >= 2 * 256  # every page came in, keyed


def test_bench_directory_measures_each_number_of_shards(tmp_path):
    out = tmp_path / "directory.json"
    proc = run_dsm_bench("directory", "--clients", "2", "--requests", "600", "--rounds", "1",
                         "--in-flight", "4", "--manager", "distributed", "--shards", "1,2",
                         "--json", str(out))
    summary_lines(proc.stdout, ["directory page requests (2 clients x 4 in flight, 1 shard)",
                                "directory request latency (2 clients x 4 in flight, 1 shard)",
                                "directory page requests (2 clients x 4 in flight, 2 shards)",
                                "directory request latency (2 clients x 4 in flight, 2 shards)"])
    assert "--manager distributed" in proc.stdout
    result = json.loads(out.read_text())
    assert sorted(result["by_shards"]) == ["1", "2"]
    for k, run in result["by_shards"].items():
        assert run["config"]["shards"] == int(k) and run["config"]["manager"] == "distributed"
        assert len(run["samples"]["latency_ns"]) == 2 * 600
        assert run["requests_per_s"] > 0
    # the top level is the first measurement's, as with one number of shards
    assert result["requests_per_s"] == result["by_shards"]["1"]["requests_per_s"]


def test_bench_directory_refuses_shards_of_a_relay():
    proc = subprocess.run([sys.executable, "-m", "dsm", "bench", "directory", "--manager",
                           "relay", "--shards", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "several shards make --manager distributed" in (
        proc.stdout + proc.stderr)


def test_bench_directory_counts_requests_per_second(tmp_path):
    out = tmp_path / "directory.json"
    proc = run_dsm_bench("directory", "--clients", "2", "--requests", "100", "--rounds", "2",
                         "--in-flight", "4", "--json", str(out))
    rate, latency = summary_lines(proc.stdout, ["directory page requests (2 clients x 4",
                                                "directory request latency"])
    assert "req/s" in rate and ">=20,000" in rate
    result = json.loads(out.read_text())
    assert len(result["samples"]["requests_per_s"]) == 2
    assert len(result["samples"]["latency_ns"]) == 2 * 2 * 100
    assert all(t > 0 for t in result["samples"]["latency_ns"])


def test_bench_jacobi_times_each_iteration_beside_numpy(tmp_path):
    out = tmp_path / "jacobi.json"
    proc = run_dsm_bench("jacobi", "--size", "48", "--iterations", "3", "--json", str(out))
    numpy_row, dsm_row = summary_lines(proc.stdout, ["jacobi 48x48 iteration, plain numpy",
                                                     "jacobi 48x48 iteration, 2 nodes"])
    assert re.search(r"\d+\.\d\dx", dsm_row), dsm_row
    assert "MATCH" in proc.stdout
    result = json.loads(out.read_text())
    assert len(result["samples"]["iteration_s"]) == 3
    assert len(result["samples"]["numpy_iteration_s"]) == 3
    assert [len(t) for t in result["samples"]["per_node_iteration_s"]] == [3, 3]


def test_bench_suite_runs_everything_into_one_table_json_and_png(tmp_path):
    from dsm.bench.suite import NAMES

    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = run_dsm_bench("--quick", "--json", str(out), "--plot", str(png))
    summary_lines(proc.stdout, ["zmq DEALER/ROUTER round trip (4 KiB)", "read fault, page at home",
                                "uncontended acquire", "sequential read of 8 MiB",
                                "random 4 KiB reads", "directory page requests",
                                "jacobi on 2 node(s)", "counter on 2 node(s)",
                                "jacobi 64x64 iteration, 2 nodes"])
    for name in NAMES:
        assert f"=== {name} " in proc.stderr, name  # progress, benchmark by benchmark
    result = json.loads(out.read_text())
    assert result["failures"] == {}
    assert list(result["benchmarks"]) == NAMES
    assert {"python", "pyzmq", "libzmq", "numpy", "kernel", "cpus"} <= set(result["environment"])
    assert result["benchmarks"]["fault"]["samples_ns"]["home_read"]
    assert result["benchmarks"]["scan"]["samples"]["scan_mbps"]
    keys = {(r["bench"], r["key"]) for r in result["summary"]}
    assert {("fault", "home_read"), ("scan", "scan"), ("directory", "directory_rate"),
            ("jacobi", "jacobi_dsm"), ("workloads", "jacobi_2")} <= keys
    for row in result["summary"]:
        assert row["verdict"] in ("ok", "MISSED", "report", "baseline"), row
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_new_benchmarks_reject_bad_arguments():
    for args in (["scan", "--mib", "0"], ["scan", "--random-pages", "0"],
                 ["directory", "--clients", "0"], ["jacobi", "--size", "2"],
                 ["--only", "nosuch"], ["all", "--skip", "fault,lock,scan,directory,workloads,jacobi"]):
        proc = subprocess.run([sys.executable, "-m", "dsm", "bench", *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
