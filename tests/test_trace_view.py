"""The message-level trace, the clock estimates, and the HTML page drawn from them.

The browser test opens the page of a known small trace in a real headless Chromium (Debian's
``chromium`` driven by Playwright); it is skipped, saying why, where either is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsm.clocksync import ClockSync, estimate
from dsm.viz import html, model, ownership
from tests.cluster import NodeProcess

pytestmark = pytest.mark.timeout(90)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: skews injected into two agents' clocks, in seconds: far beyond any transit time
SKEW_A_S, SKEW_B_S = 3.0, -2.0
#: how close the merged offsets must come to the injected skews (a loopback round trip's width)
OFFSET_TOLERANCE_S = 0.05
PAGE_LOAD_TIMEOUT_MS = 20_000


# --- clocks ---------------------------------------------------------------------------------------

def test_an_ntp_estimate_is_the_round_trips_midpoint_and_the_narrowest_wins():
    assert estimate(10.0, 15.5, 11.0) == (5.0, 0.5)
    sync = ClockSync(window=3)
    assert sync.sample(10.0, 15.5, 11.0) == (5.0, 0.5)
    assert sync.sample(20.0, 25.0, 20.2) == pytest.approx((4.9, 0.1))
    assert sync.sample(30.0, 35.0, 31.0) is None  # wider: the narrower one stays
    with pytest.raises(ValueError, match="cannot end"):
        estimate(2.0, 0.0, 1.0)


def _msg(t, who, peer, direction, msg, mid, **fields):
    return {"t": t, "who": who, "peer": peer, "dir": direction, "msg": msg, "id": mid, **fields}


def test_offsets_and_message_bounds_put_every_receive_after_its_send():
    # node "a" runs 100 s ahead and has no clock record: the messages alone must fix it
    recs = [
        {"t": 0.0, "who": "directory", "role": "manager", "wall": 0, "pid": 1},
        {"t": 100.0, "who": "a", "role": "node", "wall": 0, "pid": 2},
        _msg(100.001, "a", "directory", "send", "Acquire", "a#1>directory:1", page=0, count=1),
        _msg(0.002, "directory", "a", "recv", "Acquire", "a#1>directory:1", page=0, count=1),
        _msg(0.003, "directory", "a", "send", "Grant", "directory>a#1:1", page=0, count=1),
        _msg(100.004, "a", "directory", "recv", "Grant", "directory>a#1:1", page=0, count=1),
    ]
    tl = model.build(recs)
    assert tl.lanes == ["directory", "a"]
    assert len(tl.messages) == 2
    for m in tl.messages:
        assert m.recv["ts"] >= m.send["ts"], m
    assert tl.clocks["a"][0] == pytest.approx(-100.0, abs=0.01)


def test_a_page_sent_node_to_node_bounds_both_clocks_beside_the_reference():
    # a and b each agree with the directory unshifted, but b's clock is 5 ms behind a's: a's
    # PeerPage to b would arrive before it left; b must move forward, within its own bounds
    recs = [
        {"t": 0.0, "who": "directory", "role": "manager", "wall": 0, "pid": 1},
        {"t": 0.0, "who": "a", "role": "node", "wall": 0, "pid": 2},
        {"t": 0.0, "who": "b", "role": "node", "wall": 0, "pid": 3},
        _msg(0.010, "directory", "a", "send", "Fetch", "directory>a#1:1", page=0, count=1),
        _msg(0.012, "a", "directory", "recv", "Fetch", "directory>a#1:1", page=0, count=1),
        _msg(0.013, "a", "b", "send", "PeerPage", "a#1>b#1:1", page=0, count=1),
        _msg(0.009, "b", "a", "recv", "PeerPage", "a#1>b#1:1", page=0, count=1),
        _msg(0.010, "b", "directory", "send", "Received", "b#1>directory:1", page=0, count=1),
        _msg(0.030, "directory", "b", "recv", "Received", "b#1>directory:1", page=0, count=1),
    ]
    tl = model.build(recs)
    for m in tl.messages:
        assert m.recv["ts"] >= m.send["ts"], m
        assert not m.recv.get("clamped"), m
    assert tl.clocks["a"][0] == 0.0
    assert 0.004 <= tl.clocks["b"][0] <= 0.020


def test_skewed_agent_clocks_merge_with_every_receive_after_its_send(directory, tmp_path):
    nodes = []
    try:
        for name, skew in (("a", SKEW_A_S), ("b", SKEW_B_S)):
            nodes.append(NodeProcess(directory.endpoint, name, tmp_path, env={
                "DSM_TRACE": str(tmp_path / f"{name}.trace"),
                "DSM_TRACE_CLOCK_SKEW_S": str(skew)}))
        a, b = nodes
        a.run("x = node.array('s', (4096,), np.int64); x[0] = 1; x[600] = 2")
        b.run("x = node.array('s', (4096,), np.int64); v = int(x[0]) + int(x[600]); x[0] = 3")
        a.run("v = int(x[0])", "v")
    finally:
        for n in nodes:
            n.close()
    directory.kill()
    files = [str(directory.trace_path), str(tmp_path / "a.trace"), str(tmp_path / "b.trace")]
    raw = [r for f in files for r in model.read_trace(f)]
    by_id = {}
    for r in raw:
        if model.kind_of(r) == "msg":
            by_id.setdefault(r["id"], {})[r["dir"]] = r
    pairs = [p for p in by_id.values() if len(p) == 2]
    assert len(pairs) >= 10
    # uncorrected, the skews put receives before their sends
    assert any(p["recv"]["t"] < p["send"]["t"] for p in pairs)
    tl = model.merge(files)
    paired = [m for m in tl.messages if m.send is not None and m.recv is not None]
    assert len(paired) == len(pairs)
    for m in paired:
        assert m.recv["ts"] >= m.send["ts"], (m.send, m.recv)
        assert not m.recv.get("clamped"), m.recv
    assert tl.clocks["a"][0] == pytest.approx(-SKEW_A_S, abs=OFFSET_TOLERANCE_S)
    assert tl.clocks["b"][0] == pytest.approx(-SKEW_B_S, abs=OFFSET_TOLERANCE_S)
    assert set(tl.lanes) == {"directory", "a", "b"}
    kinds = {r["msg"] for r in raw if model.kind_of(r) == "msg"}
    assert {"Hello", "Welcome", "Acquire", "Grant", "Fetch", "Fetched", "Invalidate"} <= kinds


# --- a known small trace --------------------------------------------------------------------------

def known_trace(tmp_path: Path) -> tuple[list[str], int, int]:
    """A directory and nodes a, b: a writes page 0 and 8, b reads page 0, a writes page 0 again,
    plus a heartbeat. Returns the files, the messages and those about page 0."""
    d = [{"t": 0.0, "who": "directory", "role": "manager", "wall": 0, "pid": 1},
         {"t": 0.0001, "who": "directory", "array": "grid", "page": 0, "count": 16}]
    nodes = {n: [{"t": 0.0, "who": n, "role": "node", "wall": 0, "pid": 2 + i}]
             for i, n in enumerate("ab")}
    count = {}
    messages = 0
    page0 = 0
    t = [0.001]

    def send(src, dst, msg, page=None, then=None):
        nonlocal messages, page0
        link = (src, dst)
        count[link] = count.get(link, 0) + 1
        mid = f"{src if src == 'directory' else src + '#1'}>{dst if dst == 'directory' else dst + '#1'}:{count[link]}"
        fields = {} if page is None else {"page": page, "count": 1}
        t[0] += 0.001
        (d if src == "directory" else nodes[src]).append(
            _msg(t[0], src, dst, "send", msg, mid, **fields))
        t[0] += 0.0005
        (d if dst == "directory" else nodes[dst]).append(
            _msg(t[0], dst, src, "recv", msg, mid, **fields))
        if then is not None:
            who, old, new, event = then
            (d if who == "directory" else nodes[who]).append(
                {"t": t[0] + 0.0001, "who": who, "node": dst if who == "directory" else who,
                 "page": page, "event": event, "old": old, "new": new})
        messages += 1
        page0 += page == 0

    send("a", "directory", "Acquire", 0)
    send("directory", "a", "Grant", 0, ("directory", "home{}", "owned:a", "WRITE"))
    send("a", "directory", "Acquire", 8)
    send("directory", "a", "Grant", 8, ("directory", "home{}", "owned:a", "WRITE"))
    send("b", "directory", "Acquire", 0)
    send("directory", "a", "Fetch", 0)
    send("a", "directory", "Fetched", 0, ("a", "exclusive", "shared", "FETCH"))
    send("directory", "b", "Grant", 0, ("directory", "busy", "home{a,b}", "READ"))
    send("a", "directory", "Heartbeat")
    send("a", "directory", "Acquire", 0)
    send("directory", "b", "Invalidate", 0)
    send("b", "directory", "Invalidated", 0, ("b", "shared", "invalid", "INVALIDATE"))
    send("directory", "a", "Grant", 0, ("directory", "busy", "owned:a", "WRITE"))
    files = []
    for name, recs in [("directory", d), *nodes.items()]:
        path = tmp_path / f"{name}.trace"
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
        files.append(str(path))
    return files, messages, page0


def test_the_known_trace_pairs_every_message_and_draws_ownership(tmp_path):
    files, messages, page0 = known_trace(tmp_path)
    tl = model.merge(files)
    assert len(tl.messages) == messages
    assert all(m.send and m.recv for m in tl.messages)
    rows = ownership.rows(tl.steps())
    row0 = next(r for r in rows if r.first == 0)
    assert [(s.kind, s.holders) for s in row0.segments] == [
        ("owned", ("a",)), ("shared", ("a", "b")), ("owned", ("a",))]
    data = html.payload(tl, files)
    assert data["arrays"] == [{"name": "grid", "first": 0, "count": 16}]
    assert len(data["msgs"]) == messages
    out = subprocess.run([sys.executable, "-m", "dsm", "trace", *files, "--html",
                          str(tmp_path / "t.html"), "--png", str(tmp_path / "t.png")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "t.html").read_text()
    assert "<script src" not in page and "http://" not in page and "https://" not in page
    assert (tmp_path / "t.png").stat().st_size > 10_000


def _browser():
    """Playwright and a Chromium it can drive, or a skip saying which is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install playwright)"
        print(f"skipped: {reason}")
        pytest.skip(reason)
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        print(f"skipped: {reason}")
        pytest.skip(reason)
    return sync_playwright


def test_the_page_in_a_real_browser(tmp_path):
    sync_playwright = _browser()
    files, messages, page0 = known_trace(tmp_path)
    out_html = tmp_path / "view.html"
    tl = model.merge(files)
    html.write(tl, files, str(out_html))
    errors: list[str] = []
    shot = tmp_path / "view.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM)
                                     else shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "about:"))
                    else errors.append(f"network request: {r.url}"))
            page.goto(out_html.as_uri(), timeout=PAGE_LOAD_TIMEOUT_MS)
            page.wait_for_function("window.dsmView !== undefined", timeout=PAGE_LOAD_TIMEOUT_MS)
            heads = page.eval_on_selector_all(".lane-head", "els => els.map(e => e.dataset.lane)")
            assert heads == ["directory", "a", "b"]
            stats = page.evaluate("window.dsmView.stats()")
            assert stats["lanes"] == 3 and stats["arrows"] == messages, stats
            assert stats["drawn"] > 0
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot of the trace view: {shot}")
            # the page filter leaves page 0's messages only
            stats = page.evaluate("window.dsmView.setFilters({page: '0'})")
            assert stats["arrows"] == page0, stats
            assert stats["rows"] == 1
            # hiding node b hides every message to or from it
            stats = page.evaluate("window.dsmView.setFilters({page: '', nodes: ['directory', 'a']})")
            to_b = sum(1 for m in tl.messages if "b" in (m.src, m.dst))
            assert stats["lanes"] == 2 and stats["arrows"] == messages - to_b, stats
            assert page.eval_on_selector_all(".lane-head", "els => els.length") == 2
            stats = page.evaluate("window.dsmView.setFilters({nodes: ['directory', 'a', 'b'], "
                                  "hideHeartbeats: true})")
            assert stats["arrows"] == messages - 1
            # a bad filter is reported on the page, not thrown
            page.evaluate("window.dsmView.setFilters({page: 'x'})")
            assert "expected a page number" in page.inner_text("#f-error")
            # hovering an arrow shows its whole record
            page.evaluate("window.dsmView.setFilters({page: '', hideHeartbeats: false})")
            page.wait_for_function("window.dsmView.firstArrowMidpoint() !== null",
                                   timeout=PAGE_LOAD_TIMEOUT_MS)  # drawn in the next frame
            box = page.locator("#st-canvas").bounding_box()
            x, y = page.evaluate("window.dsmView.firstArrowMidpoint()")
            page.mouse.move(box["x"] + x, box["y"] + y)
            tip = page.inner_text("#tip")
            assert '"msg"' in tip and '"id"' in tip and "transit" in tip, tip
        finally:
            browser.close()
    assert not errors, errors
    assert shot.stat().st_size > 10_000
