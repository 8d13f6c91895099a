"""``dsm demo``: a directory and N nodes on this machine, a shared computation checked against
numpy, a table per node, a verdict and an exit status that says it."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dsm.commands import demo
from dsm.managers import Manager
from dsm.workloads import rows as w
from tests.cluster import manager_of

#: a table row: the node's name, seven counters and the median fault latency
ROW = r"^{name}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(≤\d+|>\d+|-)\s*$"


def run_demo(tmp_path, *args: str, timeout: float = 150.0, cwd=None):
    # TMPDIR: the demo's work directory (kept when a run fails) goes into this test's tmp_path
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("DSM_AGENT_SOCKET", None)
    return subprocess.run([sys.executable, "-m", "dsm", "demo", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)


def counters_of(stdout: str, name: str) -> list[int]:
    match = re.search(ROW.format(name=name), stdout, re.MULTILINE)
    assert match, f"no table row for {name} in:\n{stdout}"
    return [int(v) for v in match.groups()[:-1]]


@pytest.mark.timeout(180)
def test_three_nodes_over_tcp_match_numpy(tmp_path):
    # run from elsewhere than the checkout: the workload module must still be found
    result = run_demo(tmp_path, "--nodes", "3", cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"^result: MATCH \(3 nodes, .*checked against numpy", out, re.MULTILINE), out
    assert "MISMATCH" not in out
    header = next(line for line in out.splitlines() if line.startswith("node "))
    for column in ("missing rd", "missing wr", "wp wr", "pages in", "pages out", "invalidations",
                   "median fault µs"):
        assert column in header
    for k in range(3):
        missing_rd, missing_wr, wp_wr, requests, pages_in, pages_out, invalidations = \
            counters_of(out, f"node{k}")
        # every node read pages others wrote, was asked for pages it wrote, and lost copies
        assert missing_rd > 0 and wp_wr > 0
        assert pages_in > 0 and pages_out > 0 and invalidations > 0
        # a request may bring several pages (read-ahead batches), but every node made some
        assert requests > 0
    assert counters_of(out, "all")[0] > 0
    assert not re.search(r"^node3\s", out, re.MULTILINE)


@pytest.mark.timeout(180)
def test_a_distributed_manager_of_shards_serves_the_demo(tmp_path):
    # a grid of 768 rows of 768 float64: 4.5 MiB, the stripes of all three shards
    result = run_demo(tmp_path, "--workload", "jacobi", "--size", "768", "--nodes", "2",
                      "--manager", "distributed", "--shards", "3")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "a distributed manager of 3 shards" in out
    assert re.search(r"^result: MATCH \(2 nodes, jacobi", out, re.MULTILINE), out


def test_the_demo_refuses_shards_of_a_central_manager(tmp_path):
    result = run_demo(tmp_path, "--manager", "central", "--shards", "2", timeout=60)
    assert result.returncode == 2 and "several make --manager distributed" in result.stderr


@pytest.mark.timeout(180)
def test_two_nodes_over_ipc_write_traces(tmp_path):
    traces = tmp_path / "traces"
    result = run_demo(tmp_path, "--nodes", "2", "--transport", "ipc", "--size", "24",
                      "--rounds", "3", "--trace", str(traces))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "over ipc" in out
    assert re.search(r"^result: MATCH \(2 nodes", out, re.MULTILINE), out
    for name in ("node0", "node1"):
        counters_of(out, name)
    assert not re.search(r"^node2\s", out, re.MULTILINE)
    names = sorted(p.name for p in traces.iterdir())
    shards = [n for n in names if re.fullmatch(r"directory\.shard\d+\.trace", n)]  # ($DSM_SHARDS)
    assert [n for n in names if n not in shards] == ["directory.trace", "node0.trace",
                                                    "node1.trace"]
    # a page asked for and its answer: of the directory (or its shard), or under the dynamic
    # manager of the page's probable owner, node or directory (the demo's manager is the
    # suite's default: it is given no --manager)
    request_and_answer = ({"PageRequest", "Served"} if manager_of() is Manager.DYNAMIC
                          else {"Acquire", "Grant"})
    for path in traces.iterdir():
        lines = path.read_text().splitlines()
        assert lines, f"{path.name} is empty"
        records = [json.loads(line) for line in lines]
        events = {r["event"] for r in records if "event" in r}  # the steps
        messages = {r["msg"] for r in records if "dir" in r}  # and the messages
        if path.name.startswith("node"):
            assert {"ACQUIRE", "GRANT"} <= events, events
            assert {"Hello", "Welcome", *request_and_answer} <= messages, messages


@pytest.mark.timeout(120)
def test_a_run_that_does_not_finish_is_a_mismatch_and_leaves_no_process(tmp_path):
    result = run_demo(tmp_path, "--size", "4000", "--rounds", "500", "--timeout", "6", timeout=60)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert re.search(r"^result: MISMATCH", out, re.MULTILINE), out
    assert "did not finish in time" in result.stderr, result.stderr
    endpoint = re.search(r"directory on (\S+),", out)
    assert endpoint, out
    leftovers = [cmdline for _, _, cmdline in _processes() if endpoint.group(1) in cmdline]
    assert not leftovers, leftovers


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent's pid, command line) of every process but zombies."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[-1].split()[:2]
        except OSError:
            continue
        if state != "Z":
            found.append((int(entry), int(ppid), cmdline))
    return found


def _descendant(ancestor: int, start: str, *words: str) -> int | None:
    """A process below ``ancestor`` whose command line starts with ``start`` and holds every one
    of ``words``."""
    procs = _processes()
    below = {ancestor}
    grew = True
    while grew:
        more = {pid for pid, ppid, _ in procs if ppid in below} - below
        below |= more
        grew = bool(more)
    return next((pid for pid, _, cmdline in procs
                 if pid in below and pid != ancestor and cmdline.startswith(start)
                 and all(w in cmdline for w in words)), None)


@pytest.mark.timeout(120)
def test_a_node_that_crashes_mid_run_is_named_as_crashed_not_a_mismatch(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("DSM_AGENT_SOCKET", None)
    # a run far longer than the test: node 1's workload is killed while it computes
    demo_proc = subprocess.Popen([sys.executable, "-m", "dsm", "demo", "--size", "4000",
                                  "--rounds", "500", "--timeout", "100"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        # the workload's python, not the `dsm run` that started it with the same arguments
        workload_of_node1 = (f"{sys.executable} -m dsm.workloads.rows ", "--rank 1 ")
        while (workload := _descendant(demo_proc.pid, *workload_of_node1)) is None:
            assert demo_proc.poll() is None and time.monotonic() < deadline, "no node 1"
            time.sleep(0.1)
        time.sleep(2)  # attached, its arrays made, computing
        os.kill(workload, signal.SIGKILL)
        out, err = demo_proc.communicate(timeout=60)
    finally:
        if demo_proc.poll() is None:  # it stops its cluster on SIGTERM
            demo_proc.terminate()
            try:
                demo_proc.wait(30)
            except subprocess.TimeoutExpired:
                demo_proc.kill()
                demo_proc.wait()
    assert demo_proc.returncode == 1, out + err
    assert re.search(r"^result: CRASHED \((.*; )?node1 killed by SIGKILL \(status 137\)", out,
                     re.MULTILINE), out + err
    assert "MISMATCH" not in out, out
    # the node's own log says what `dsm run` saw (its workload's interpreter, as the demo ran
    # it: `python` in CI's virtual environment, `python3` or a full path elsewhere)
    assert f"{os.path.basename(sys.executable)} was killed by SIGKILL (status 137)" in err, err
    endpoint = re.search(r"directory on (\S+),", out)
    assert endpoint, out
    leftovers = [cmdline for _, _, cmdline in _processes() if endpoint.group(1) in cmdline]
    assert not leftovers, leftovers


@pytest.mark.parametrize("args", [["--nodes", "0"], ["--nodes", "4", "--size", "3"],
                                  ["--rounds", "0"]])
def test_bad_arguments_are_refused(tmp_path, args):
    result = run_demo(tmp_path, *args, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr


def test_the_reference_does_not_depend_on_how_rows_are_split():
    one, hist1 = w.reference(1, 20, 4)
    three, hist3 = w.reference(3, 20, 4)
    assert np.array_equal(one, three)
    assert np.array_equal(hist1.sum(axis=0), hist3.sum(axis=0))
    assert hist3.shape == (3, w.BINS) and (hist3 > 0).any(axis=1).all()
    # the block boundaries fall inside pages: neighbouring nodes write the same page
    lo, hi = w.block(1, 3, 20)
    assert (lo * w.COLUMNS * 8) % 4096 != 0


def test_demo_defaults_are_the_workloads():
    assert (demo.DEFAULT_SIZE, demo.DEFAULT_ROUNDS) == (w.DEFAULT_SIZE, w.DEFAULT_ROUNDS)
