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
from dsm.managers import Manager
from dsm.viz import html, model, ownership, png, style
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
    if directory.manager is Manager.DYNAMIC:
        # the pages asked of their probable owners and served node to node, each confirmed
        assert {"Hello", "Welcome", "PageRequest", "Served", "Taken"} <= kinds, kinds
    else:
        assert {"Hello", "Welcome", "Acquire", "Grant", "Fetch", "Fetched",
                "Invalidate"} <= kinds, kinds


# --- a known small trace --------------------------------------------------------------------------

#: the release-consistency page of the known trace (page 0 of array "halo")
RELEASE_PAGE = 16
#: its lock and barrier messages: each node's BarrierWait and the SyncReply answering it
RELEASE_SYNC = 4


def known_trace(tmp_path: Path) -> tuple[list[str], int, int]:
    """A directory and nodes a, b: a writes page 0 and 8, b reads page 0, a writes page 0 again,
    plus a join and a heartbeat; then a release page (16): both read it, a twins it, writes and
    sends its diff home, both meet at a barrier whose departure hands b the write notice.
    Returns the files, the messages and those about page 0."""
    d = [{"t": 0.0, "who": "directory", "role": "manager", "wall": 0, "pid": 1},
         {"t": 0.0001, "who": "directory", "array": "app.grid", "page": 0, "count": 16},
         {"t": 0.0001, "who": "directory", "array": "app.halo", "page": 16, "count": 1}]
    nodes = {n: [{"t": 0.0, "who": n, "role": "node", "wall": 0, "pid": 2 + i}]
             for i, n in enumerate("ab")}
    count = {}
    messages = 0
    page0 = 0
    t = [0.001]

    def step(who, page, event, old, new, node=None):
        t[0] += 0.0002
        (d if who == "directory" else nodes[who]).append(
            {"t": t[0], "who": who, "node": node or who, "page": page, "event": event,
             "old": old, "new": new})

    def send(src, dst, msg, page=None, then=None, **extra):
        nonlocal messages, page0
        link = (src, dst)
        count[link] = count.get(link, 0) + 1
        mid = f"{src if src == 'directory' else src + '#1'}>{dst if dst == 'directory' else dst + '#1'}:{count[link]}"
        fields = ({} if page is None else {"page": page, "count": 1}) | extra
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

    send("b", "directory", "Hello")
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
    rp = RELEASE_PAGE
    for n in "ab":  # both read the release page
        send(n, "directory", "Acquire", rp)
        step("directory", rp, "READ", "release home", "release home", node=n)
        send("directory", n, "Grant", rp, (n, "invalid", "clean", "GRANT"))
    step("a", rp, "TWIN", "clean", "dirty")
    send("a", "directory", "Dirtied", rp)
    send("a", "directory", "Diff", rp, ("directory", "", "release home", "DIFF"))
    d[-1]["node"] = "a"
    step("a", rp, "DIFF", "dirty", "clean")
    send("directory", "a", "DiffApplied", rp)
    send("a", "directory", "BarrierWait", req=1, name="phase", notices=[rp, 1])
    send("b", "directory", "BarrierWait", req=1, name="phase", notices=[])
    send("directory", "a", "SyncReply", req=1, notices=[])
    send("directory", "b", "SyncReply", req=1, notices=[rp, 1])
    step("b", rp, "NOTICE", "held", "invalid")
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
    # the release page: at home throughout, with both copies, a's twin, its diff, b's notice
    rel = next(r for r in rows if r.first == RELEASE_PAGE)
    assert [s.kind for s in rel.segments] == ["release"]
    assert {(b.kind, b.node) for b in rel.bands} == {("copy", "a"), ("copy", "b"), ("twin", "a")}
    assert [(m.kind, m.node) for m in rel.marks] == [("diff", "a"), ("notice", "b")]
    data = html.payload(tl, files)
    assert data["arrays"] == [{"name": "app.grid", "first": 0, "count": 16},
                              {"name": "app.halo", "first": 16, "count": 1}]
    assert len(data["msgs"]) == messages
    # the barrier's messages matter to the release page (its write notices)
    related = [m for m in data["msgs"] if m[10]]
    assert len(related) == RELEASE_SYNC and all(m[10] == [[RELEASE_PAGE, 1]] for m in related)
    # one colour per node, none of them a state's or a strip's
    colors = [lane["color"] for lane in data["lanes"]]
    assert len(set(colors)) == len(colors)
    assert not set(colors) & {c for c, _ in style.STATE_KINDS.values()}
    out = subprocess.run([sys.executable, "-m", "dsm", "trace", *files, "--html",
                          str(tmp_path / "t.html"), "--png", str(tmp_path / "t.png")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "t.html").read_text()
    assert "<script src" not in page and "http://" not in page and "https://" not in page
    assert (tmp_path / "t.png").stat().st_size > 10_000
    # the picture left out the join and the heartbeat, and says so
    assert "2 joins and heartbeats" in out.stdout, out.stdout
    # text: a page's filter keeps the barrier messages that carry its write notices
    out = subprocess.run([sys.executable, "-m", "dsm", "trace", *files, "--page",
                          str(RELEASE_PAGE), "--messages"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("BarrierWait") == 2 * 2 and out.stdout.count("SyncReply") == 2 * 2


def big_trace(tmp_path: Path, messages: int) -> list[str]:
    """A directory and three nodes trading ``messages`` Acquire/Grant pairs over 64 pages."""
    recs = [{"t": 0.0, "who": "directory", "role": "manager", "wall": 0, "pid": 1},
            {"t": 0.0, "who": "directory", "array": "big", "page": 0, "count": 64}]
    per = {"directory": recs}
    t = 0.001
    counts: dict = {}
    for k in range(messages // 2):
        n = f"n{k % 3}"
        per.setdefault(n, [{"t": 0.0, "who": n, "role": "node", "wall": 0, "pid": 2}])
        for src, dst, msg in ((n, "directory", "Acquire"), ("directory", n, "Grant")):
            counts[(src, dst)] = counts.get((src, dst), 0) + 1
            mid = f"{src}>{dst}:{counts[(src, dst)]}"
            per[src].append(_msg(t, src, dst, "send", msg, mid, page=k % 64, count=1))
            per[dst].append(_msg(t + 0.0003, dst, src, "recv", msg, mid, page=k % 64, count=1))
            t += 0.0005
    files = []
    for name, rs in per.items():
        path = tmp_path / f"{name}.trace"
        path.write_text("".join(json.dumps(r) + "\n" for r in rs))
        files.append(str(path))
    return files


def test_the_png_of_a_long_trace_is_capped_labelled_and_says_what_it_left_out(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread
    files = big_trace(tmp_path, 4000)
    out = subprocess.run([sys.executable, "-m", "dsm", "trace", *files, "--png",
                          str(tmp_path / "all.png")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{png.MAX_ARROWS} of 4000 messages" in out.stdout
    assert f"left out: {4000 - png.MAX_ARROWS} later messages" in out.stdout
    height, width = imread(str(tmp_path / "all.png")).shape[:2]
    assert height <= png.MAX_HEIGHT_IN * png.DPI + 1 and width < 2000, (width, height)
    # a time window, and a page in it
    out = subprocess.run([sys.executable, "-m", "dsm", "trace", *files, "--png",
                          str(tmp_path / "w.png"), "--from", "500", "--to", "510",
                          "--page", "3"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, last = (float(x) for x in
                   out.stdout.split("messages, ")[1].split(" ms")[0].split(" to "))
    assert 499 <= first and last <= 511, out.stdout
    assert "nothing left out" in out.stdout, out.stdout


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


def _open(browser, path: Path, errors: list[str]):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "about:"))
            else errors.append(f"network request: {r.url}"))
    page.goto(path.as_uri(), timeout=PAGE_LOAD_TIMEOUT_MS)
    page.wait_for_function("window.dsmView !== undefined", timeout=PAGE_LOAD_TIMEOUT_MS)
    page.wait_for_function("window.dsmView.stats().drawn > 0", timeout=PAGE_LOAD_TIMEOUT_MS)
    return page


def _assert_legend_complete(page) -> None:
    colors = page.evaluate("window.dsmView.colors()")
    assert colors["drawn"], colors
    assert set(colors["drawn"]) <= set(colors["legend"]), colors


def _assert_no_label_overlaps(page) -> None:
    rects = page.evaluate("window.dsmView.labelRects()")
    assert rects
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_the_page_in_a_real_browser(tmp_path):
    sync_playwright = _browser()
    files, messages, page0 = known_trace(tmp_path)
    out_html = tmp_path / "view.html"
    tl = model.merge(files)
    html.write(tl, files, str(out_html))
    sim_html = tmp_path / "sim.html"
    sim_files = simulated_traces(tmp_path / "sim")
    html.write(model.merge(sim_files), sim_files, str(sim_html))
    errors: list[str] = []
    shot = tmp_path / "view.png"
    joins = sum(1 for m in tl.messages if m.record["msg"] in style.JOIN_MESSAGES)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM)
                                     else shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            page = _open(browser, out_html, errors)
            heads = page.eval_on_selector_all(".lane-head", "els => els.map(e => e.dataset.lane)")
            assert heads == ["directory", "a", "b"]
            # by default: joins and heartbeats hidden
            stats = page.evaluate("window.dsmView.stats()")
            assert joins == 2
            assert stats["lanes"] == 3 and stats["arrows"] == messages - joins, stats
            assert not set(page.evaluate("window.dsmView.types()")) & set(style.JOIN_MESSAGES)
            assert stats["drawn"] > 0
            # one colour per node: its lane head's is its legend swatch's
            lane_colors = page.eval_on_selector_all(
                ".lane-head", "els => els.map(e => getComputedStyle(e).backgroundColor)")
            swatches = page.eval_on_selector_all(
                "#lg-nodes .sw", "els => els.map(e => getComputedStyle(e).backgroundColor)")
            assert lane_colors == swatches and len(set(swatches)) == 3
            # every colour drawn is in the legend; no label lies over another
            _assert_legend_complete(page)
            _assert_no_label_overlaps(page)
            # strips named by their array and index; the release page with twin, diff, notice
            assert page.evaluate("window.dsmView.rowNames()") == ["grid p0", "grid p8", "halo p0"]
            rel = page.evaluate("window.dsmView.rows()")[2]
            assert rel["kinds"] == ["release"] and "twin" in rel["bands"], rel
            assert sorted(rel["marks"]) == ["diff", "notice"], rel
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot of the trace view: {shot}")
            # step through: the keyboard and the buttons move the cursor on both diagrams
            page.locator("#st-canvas").click(position={"x": 5, "y": 5})
            page.keyboard.press("ArrowRight")
            page.keyboard.press("ArrowRight")
            first = page.evaluate("window.dsmView.cursor()")
            assert first["index"] == 1 and "message 2 of" in first["text"], first
            page.click("#step-next")
            later = page.evaluate("window.dsmView.cursor()")
            assert later["index"] == 2 and later["t"] >= first["t"], later
            page.click("#step-prev")
            assert page.evaluate("window.dsmView.cursor()")["index"] == 1
            page.wait_for_timeout(100)  # drawn in the next frame: the cursor's colour too
            _assert_legend_complete(page)
            assert style.CURSOR_COLOR in page.evaluate("window.dsmView.colors()")["drawn"]
            page.evaluate("window.dsmView.setFilters({big: true})")
            page.screenshot(path=str(tmp_path / "step.png"))
            page.evaluate("window.dsmView.setFilters({big: false})")
            # the page filter leaves page 0's messages only
            stats = page.evaluate("window.dsmView.setFilters({page: '0'})")
            assert stats["arrows"] == page0, stats
            assert stats["rows"] == 1
            # ... and a release page's, with the barrier messages that carry its notices
            page.evaluate(f"window.dsmView.setFilters({{page: '{RELEASE_PAGE}'}})")
            types = page.evaluate("window.dsmView.types()")
            assert "BarrierWait" in types and "SyncReply" in types and "Diff" in types, types
            # hiding node b hides every message to or from it
            stats = page.evaluate("window.dsmView.setFilters({page: '', nodes: ['directory', 'a'], "
                                  "hideHeartbeats: false})")
            to_b = sum(1 for m in tl.messages if "b" in (m.src, m.dst))
            assert stats["lanes"] == 2 and stats["arrows"] == messages - to_b, stats
            assert page.eval_on_selector_all(".lane-head", "els => els.length") == 2
            stats = page.evaluate("window.dsmView.setFilters({nodes: ['directory', 'a', 'b']})")
            assert stats["arrows"] == messages
            # a bad filter is reported on the page, not thrown
            page.evaluate("window.dsmView.setFilters({page: 'x'})")
            assert "expected a page number" in page.inner_text("#f-error")
            # hovering an arrow shows its whole record
            page.evaluate("window.dsmView.setFilters({page: ''})")
            page.wait_for_function("window.dsmView.firstArrowMidpoint() !== null",
                                   timeout=PAGE_LOAD_TIMEOUT_MS)  # drawn in the next frame
            box = page.locator("#st-canvas").bounding_box()
            x, y = page.evaluate("window.dsmView.firstArrowMidpoint()")
            page.mouse.move(box["x"] + x, box["y"] + y)
            tip = page.inner_text("#tip")
            assert '"msg"' in tip and '"id"' in tip and "transit" in tip, tip
            # a simulated schedule is drawn as a real run is
            sim = _open(browser, sim_html, errors)
            heads = sim.eval_on_selector_all(".lane-head", "els => els.map(e => e.dataset.lane)")
            assert heads == ["directory", "n0", "n1", "n2"]
            names = sim.evaluate("window.dsmView.rowNames()")
            assert names[0].startswith("release p0") and any(
                n.startswith("sequential") for n in names), names
            _assert_legend_complete(sim)
            _assert_no_label_overlaps(sim)
            sim.screenshot(path=str(tmp_path / "sim.png"))
        finally:
            browser.close()
    assert not errors, errors
    assert shot.stat().st_size > 10_000


def simulated_traces(directory: Path, seed: int = 5) -> list[str]:
    """The traces of a simulated schedule with release pages (``python -m dsm.sim --trace``)."""
    out = subprocess.run([sys.executable, "-m", "dsm.sim", "--seed", str(seed),
                          "--release-pages", "2", "--trace", str(directory)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return sorted(str(p) for p in directory.glob("*.trace"))
