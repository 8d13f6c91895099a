"""The protocol trace: every step of a page's life, merged across the directory and the agents."""

import json
import subprocess
import sys

import pytest

from dsm.commands.trace import involves
from dsm.viz.model import kind_of

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("manager", ["relay", "central"])
def test_directory_trace_records_each_step_of_a_page(make_node, directory, manager):
    a, b = make_node("a"), make_node("b")
    a.run("x = node.array('t', (512,), np.int64); x[0] = 1")
    b.run("x = node.array('t', (512,), np.int64); v = int(x[0])")
    a.run("x[0] = 2")
    directory.kill()  # flushes the trace
    records = [json.loads(line) for line in open(directory.trace_path)]
    step_records = [r for r in records if kind_of(r) == "step"]
    page0 = [r for r in step_records if involves(r, 0, None)]
    steps = [(r["event"], r["node"], r["new"]) for r in page0 if r["new"] != "busy"]
    assert steps[:3] == [("WRITE", "a", "owned:a"), ("READ", "b", "home{a,b}"),
                         ("WRITE", "a", "owned:a")]
    for r in step_records:
        assert {"t", "who", "node", "page", "event", "old", "new"} <= r.keys()
    # and each message, once as it arrived and once as it left
    messages = [r for r in records if kind_of(r) == "msg"]
    for r in messages:
        assert {"t", "who", "peer", "dir", "msg", "id"} <= r.keys()
    got = {(r["dir"], r["msg"], r["peer"]) for r in messages if involves(r, 0, None)}
    # a's upgrade: granted at once, b acknowledges straight to a (or, if it cannot reach a,
    # through here), and a confirms once it has
    assert {("recv", "Acquire", "a"), ("send", "Grant", "a"), ("recv", "Acquire", "b"),
            ("send", "Fetch", "a"), ("recv", "Fetched", "a"),
            ("send", "Invalidate", "b"), ("recv", "Received", "a")} <= got
    if manager == "relay":  # the page comes to b through the directory
        assert ("send", "Grant", "b") in got
    else:  # straight from a: b confirms it
        assert ("recv", "Received", "b") in got and ("send", "Grant", "b") not in got
    out = subprocess.run([sys.executable, "-m", "dsm", "trace", str(directory.trace_path),
                          "--page", "0"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "READ" in out.stdout and "owned:a" in out.stdout


def _simulate(tmp_path, *flags):
    out = subprocess.run([sys.executable, "-m", "dsm.sim", *flags, "--trace", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return sorted(str(p) for p in tmp_path.glob("*.trace"))


def test_a_simulated_schedule_writes_the_traces_a_real_run_does(tmp_path):
    from dsm.viz.model import merge
    files = _simulate(tmp_path / "rc", "--seed", "5", "--release-pages", "2")
    assert [f.rsplit("/", 1)[1] for f in files] == ["directory.trace", "n0.trace", "n1.trace",
                                                    "n2.trace"]
    tl = merge(files)
    assert tl.lanes == ["directory", "n0", "n1", "n2"] and tl.roles["directory"] == "manager"
    # every message sent was received (nobody died), once, and after it was sent
    assert tl.messages and all(m.send and m.recv for m in tl.messages)
    assert all(m.recv["ts"] > m.send["ts"] for m in tl.messages)
    assert len({m.send["id"] for m in tl.messages}) == len(tl.messages)
    kinds = {m.record["msg"] for m in tl.messages}
    # (a release carries its diffs: the directory's DIFF steps are what shows them)
    assert {"Acquire", "Grant", "Dirtied", "BarrierWait", "SyncReply"} <= kinds, kinds
    events = {(r["who"] == "directory", r["event"]) for r in tl.steps()}
    assert {(True, "DIFF"), (False, "TWIN"), (False, "NOTICE"), (False, "GRANT")} <= events
    arrays = [(r["array"], r["page"], r["count"]) for r in tl.records if kind_of(r) == "array"]
    assert arrays == [("release", 0, 2), ("sequential", 2, 4)]
    # the same seed writes the same traces
    again = _simulate(tmp_path / "again", "--seed", "5", "--release-pages", "2")
    assert [open(f).read().splitlines()[1:] for f in files] == \
        [open(f).read().splitlines()[1:] for f in again]  # (the start lines hold the pid)
    out = subprocess.run([sys.executable, "-m", "dsm", "trace", *files, "--html",
                          str(tmp_path / "sim.html")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and (tmp_path / "sim.html").stat().st_size > 10_000, out.stderr


def test_a_simulated_death_is_traced_and_its_lost_messages_have_one_end(tmp_path):
    from dsm.viz.model import merge
    files = _simulate(tmp_path, "--seed", "11", "--deaths", "1", "--ops", "30")
    tl = merge(files)
    assert any(r.get("event") == "KILLED" for r in tl.steps())
    assert any(r.get("event") == "NOTICED" for r in tl.steps())
    for m in tl.messages:  # a receive always pairs with its send (lost ones: the send only)
        assert m.send is not None, m.recv
