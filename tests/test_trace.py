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
    assert {("recv", "Acquire", "a"), ("send", "Grant", "a"), ("recv", "Acquire", "b"),
            ("send", "Fetch", "a"), ("recv", "Fetched", "a"),
            ("send", "Invalidate", "b"), ("recv", "Invalidated", "b")} <= got
    if manager == "relay":  # the page comes to b through the directory
        assert ("send", "Grant", "b") in got
    else:  # straight from a: b confirms it
        assert ("recv", "Received", "b") in got and ("send", "Grant", "b") not in got
    out = subprocess.run([sys.executable, "-m", "dsm", "trace", str(directory.trace_path),
                          "--page", "0"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "READ" in out.stdout and "owned:a" in out.stdout
