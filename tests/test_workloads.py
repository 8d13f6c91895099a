"""The parallel programs of ``dsm/workloads/`` (jacobi, matmul, sort, counter): each on three
nodes at a small size, its result identical to numpy's in one process, through ``dsm demo --workload`` and
as a user runs them by hand (a directory, then ``dsm run`` per node)."""

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dsm.consistency import CONSISTENCIES
from dsm.workloads import common, counter, jacobi, matmul, sort

ROOT = Path(__file__).resolve().parents[1]
#: small sizes: each run takes a second or two of computation
SMALL = {
    "jacobi": ["--size", "96", "--iterations", "6"],
    "matmul": ["--size", "160", "--iterations", "2"],
    "sort": ["--size", "20000", "--iterations", "2"],
    "counter": ["--size", "30", "--iterations", "2"],
}
ROW = r"^{name}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(≤\d+|>\d+|-)\s*$"


def _env(tmp_path: Path) -> dict:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("DSM_AGENT_SOCKET", None)
    return env


@pytest.mark.timeout(120)
@pytest.mark.parametrize("consistency", CONSISTENCIES)
@pytest.mark.parametrize("workload", ["jacobi", "matmul", "sort", "counter"])
def test_workload_on_three_nodes_matches_numpy(tmp_path, workload, consistency):
    """Under release consistency too: every conflicting access to the data arrays is ordered by
    a lock or a barrier, so the result is numpy's bit for bit."""
    result = subprocess.run(
        [sys.executable, "-m", "dsm", "demo", "--workload", workload, "--nodes", "3",
         *SMALL[workload], "--consistency", consistency, "--timeout", "90"],
        capture_output=True, text=True, timeout=110, cwd=tmp_path, env=_env(tmp_path),
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(rf"^result: MATCH \(3 nodes, {workload}, \d+ values checked against numpy",
                     out, re.MULTILINE), out
    assert f"workload {workload}" in out
    assert f", {consistency} consistency" in out.splitlines()[0], out
    for k in range(3):
        assert re.search(ROW.format(name=f"node{k}"), out, re.MULTILINE), out
    assert re.search(r"^compute \d+\.\d\d s \(slowest node\)", out, re.MULTILINE), out
    if workload == "counter":
        assert "total 180 = 3 nodes x 60 increments" in out, out


def _start_directory(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    log = open(tmp_path / "directory.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsm", "directory", "--listen", "tcp://127.0.0.1:*",
         "--region-size", str(64 << 20)],
        stdout=subprocess.PIPE, stderr=log, text=True, env=_env(tmp_path),
    )
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline() if ready else ""
    assert line.startswith("directory listening on "), line
    return proc, line.split()[-1]


def _run_nodes(tmp_path: Path, endpoint: str, module: str, argvs: list[list[str]],
               tag: str) -> list[tuple[int, str]]:
    """``dsm run`` one node per argv (as the module docstrings say)."""
    procs = []
    for k, argv in enumerate(argvs):
        err = open(tmp_path / f"{tag}-node{k}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dsm", "run", "--directory", endpoint, "--",
             sys.executable, "-m", module, *argv],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=_env(tmp_path),
            start_new_session=True,
        ))
    out = []
    deadline = time.monotonic() + 60
    try:
        for proc in procs:
            stdout, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((proc.returncode, stdout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    return out


def _results(outputs: list[tuple[int, str]]) -> list[dict]:
    results = []
    for code, stdout in outputs:
        lines = [ln for ln in stdout.splitlines() if ln.startswith(common.RESULT_PREFIX)]
        assert code == 0 and lines, stdout
        results.append(json.loads(lines[-1][len(common.RESULT_PREFIX):]))
    return results


@pytest.mark.timeout(120)
def test_by_hand_against_a_separate_directory_and_again_on_the_same_one(tmp_path):
    directory, endpoint = _start_directory(tmp_path)
    try:
        size = ["--size", "64", "--iterations", "4"]
        # as the docstring says: --rank K --nodes 3 in three shells (one takes them from env)
        outputs = _run_nodes(tmp_path, endpoint, "dsm.workloads.jacobi",
                             [["--rank", "0", "--nodes", "3", *size],
                              ["--rank", "1", "--nodes", "3", *size],
                              ["--nodes", "3", "--rank", "2", *size]], "first")
        first = _results(outputs)
        assert sorted(r["rank"] for r in first) == [0, 1, 2]
        want = common.digest(jacobi.reference(3, 64, 4))
        for (_, stdout), res in zip(outputs, first):
            assert res["match"] and res["digest"] == want, res
            assert res["mismatches"] == 0 if res["rank"] == 0 else "mismatches" not in res
            assert re.search(r"^jacobi: .*MATCH numpy", stdout, re.MULTILINE), stdout
            assert res["stats"]["counters"], res  # the run phase moved pages
        # again on the same directory, the ranks by arrival: a new run, not the old arrays
        outputs = _run_nodes(tmp_path, endpoint, "dsm.workloads.counter",
                             [["--nodes", "2", "--size", "15", "--iterations", "1"]] * 2,
                             "second")
        second = _results(outputs)
        assert sorted(r["rank"] for r in second) == [0, 1]
        assert all(r["match"] and r["remark"].startswith("total 30 = ") for r in second), second
        outputs = _run_nodes(tmp_path, endpoint, "dsm.workloads.counter",
                             [["--nodes", "2", "--size", "15", "--iterations", "1"]] * 2, "third")
        third = _results(outputs)
        assert {r["run"] for r in third} != {r["run"] for r in second}
        assert all(r["match"] for r in third), third
    finally:
        directory.terminate()
        directory.wait(10)


def test_bad_arguments_are_refused():
    for argv in (["--nodes", "3", "--rank", "3"], ["--rank", "0"], ["--nodes", "3", "--size", "2"],
                 ["--nodes", "2", "--iterations", "0"], ["--nodes", "2", "--consistency", "weak"]):
        proc = subprocess.run([sys.executable, "-m", "dsm.workloads.jacobi", *argv],
                              capture_output=True, text=True, timeout=30, cwd=ROOT,
                              env={**os.environ, "DSM_NODES": ""})
        assert proc.returncode == 2, (argv, proc.stderr)


def test_the_consistency_comes_from_the_option_or_the_environment(monkeypatch):
    monkeypatch.delenv(common.CONSISTENCY_ENV, raising=False)
    assert common.parse_args(sort.WORKLOAD, ["--nodes", "2"]).consistency == "sequential"
    monkeypatch.setenv(common.CONSISTENCY_ENV, "release")
    assert common.parse_args(sort.WORKLOAD, ["--nodes", "2"]).consistency == "release"
    args = common.parse_args(sort.WORKLOAD, ["--nodes", "2", "--consistency", "sequential"])
    assert args.consistency == "sequential"


@pytest.mark.timeout(60)
def test_demo_refuses_release_for_a_workload_that_spins_on_shared_memory():
    # rows' barriers are slots spun on in shared memory: under release they would never change
    proc = subprocess.run([sys.executable, "-m", "dsm", "demo", "--workload", "rows",
                           "--consistency", "release"], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)
    assert proc.returncode == 2 and "rows runs under sequential consistency" in proc.stderr, (
        proc.stdout + proc.stderr)


def test_reference_mode_prints_numpy_time_and_digest():
    proc = subprocess.run([sys.executable, "-m", "dsm.workloads.sort", "--reference", "--nodes",
                           "3", "--size", "5000"], capture_output=True, text=True, timeout=30,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(common.RESULT_PREFIX))
    res = json.loads(line[len(common.RESULT_PREFIX):])
    assert res["reference"] and res["digest"] == common.digest(sort.reference(3, 5000, 2))


# --- the pieces, without a cluster -----------------------------------------------------------------
def test_jacobi_bands_cover_the_interior_and_give_numpy_bit_for_bit():
    n, nodes = 50, 3
    bands = [jacobi.band(k, nodes, n) for k in range(nodes)]
    assert bands[0][0] == 1 and bands[-1][1] == n - 1
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
    src = jacobi.initial_rows(0, n, n)
    whole, banded = src.copy(), src.copy()
    jacobi.relax(src, whole, 1, n - 1)
    for lo, hi in bands:
        jacobi.relax(src, banded, lo, hi)
    assert whole.tobytes() == banded.tobytes()


def test_matmul_tiles_are_page_aligned_and_cover_c():
    size = 200
    covered = np.zeros((size, size), np.int64)
    for offset, r0, r1, c0, c1 in matmul.tile_offsets(size):
        assert offset % (matmul.PAGE_BYTES // 8) == 0
        covered[r0:r1, c0:c1] += 1
    assert (covered == 1).all()
    c = matmul.reference(1, size, 2)["c"]
    a0, a1, b = matmul.matrix_a(size, 0), matmul.matrix_a(size, 1), matmul.matrix_b(size)
    assert np.array_equal(c, (a0.astype(np.int64) + a1.astype(np.int64)) @ b.astype(np.int64))


def test_sort_keys_are_the_same_in_any_slice_and_fill_the_buckets():
    whole = sort.keys(0, 30000, 1)
    assert np.array_equal(whole[1000:2000], sort.keys(1000, 2000, 1))
    assert not np.array_equal(whole, sort.keys(0, 30000, 2))
    assert whole.min() >= 0 and whole.max() < 1 << sort.KEY_BITS
    ref = sort.reference(3, 30000, 2)  # the last pass (1) is the result
    assert ref["histogram"].sum() == 30000 and (ref["histogram"] > 0).all()
    assert np.array_equal(ref["sorted"], np.sort(whole))
    assert np.array_equal(ref["histogram"], np.bincount(whole >> sort.SHIFT, minlength=sort.BUCKETS))


def test_counter_reference_is_exactly_n_times_m():
    for nodes, m, rounds in ((3, 10, 2), (2, 7, 1), (1, 5, 3)):
        assert counter.reference(nodes, m, rounds)["counters"].sum() == nodes * m * rounds


def test_digest_and_differences_are_bitwise():
    a = {"x": np.array([0.0, 1.0, 2.0])}
    b = {"x": np.array([-0.0, 1.0, 2.0])}
    assert common.count_differences(a, b) == 1 and common.digest(a) != common.digest(b)
    assert common.count_differences(a, {"x": a["x"].copy()}) == 0
