// dsm trace --html: the space-time diagram and the page-ownership timeline of a merged trace.
// Written for dsm (no library). The data document is described in dsm/viz/html.py. Only what is
// in view is drawn, so that traces of 100,000 steps stay usable; past DRAW_LIMIT arrows in view
// they are drawn as bundles (one line per pair of lanes and few pixels of time, its width the count).
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("dsm-data").textContent);
  const $ = (id) => document.getElementById(id);

  // --- constants (pixels unless named otherwise) --------------------------------------------------
  const AXIS_PX = 80;            // the time axis, left of the lanes
  const LANE_MIN_PX = 150;       // narrowest lane
  const PAD_PX = 20;             // above the first and below the last event
  const GAP_CAP_PX = 28;         // an idle gap, compressed, is drawn at most this tall
  const GAP_MARK_RATIO = 4;      // ... and marked as cut when it was this many times taller
  const TARGET_GAP_PX = 14;      // the default zoom puts the median gap between events at this
  const MAX_HEIGHT_PX = 8e6;     // browsers cannot scroll much taller elements
  const LABEL_LIMIT = 250;       // arrows (or state marks) in view past which labels are left out
  const DRAW_LIMIT = 5000;       // arrows in view past which they are bundled
  const BUNDLE_PX = 4;           // a bundle's height
  const HIT_PX = 6;              // how near the pointer must be to an arrow or a mark
  const TICK_PX = 70;            // time-axis labels at least this far apart
  const ZOOM_STEP = 1.5;
  const ROW_PX = 16;             // an ownership row
  const ROW_LABEL_PX = 140;      // the ownership rows' labels
  const LANE_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
                       "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];
  const MANAGER_COLOR = "#333";
  const TYPE_COLORS = { Acquire: "#1f5fbf", Grant: "#1a8f3a", Fetch: "#d9730d", Fetched: "#a65a00",
    Invalidate: "#c0392b", Invalidated: "#8e2a20", Writeback: "#7b4fb3", Drop: "#777",
    Heartbeat: "#c8c8c8", Hello: "#000", Welcome: "#000", Bye: "#000", Lost: "#000" };
  const STATE_COLORS = { invalid: "#999", shared: "#2b7bd6", exclusive: "#d62728", busy: "#e0a000" };

  // --- lanes -------------------------------------------------------------------------------------
  const lanes = D.lanes.map((l, i) => ({ name: l.name, role: l.role, index: i, color: null }));
  let nodeNumber = 0;
  for (const l of lanes) {
    l.color = l.role === "manager" ? MANAGER_COLOR : LANE_COLORS[nodeNumber++ % LANE_COLORS.length];
  }
  const laneByName = Object.fromEntries(lanes.map((l) => [l.name, l]));
  const heartbeatType = D.types.indexOf("Heartbeat");

  // --- view state ----------------------------------------------------------------------------------
  const view = {
    visibleLanes: new Set(lanes.map((l) => l.index)),
    pages: null,          // [lo, hi] or null
    from: -Infinity, to: Infinity,
    hideHeartbeats: false, showSteps: true, compress: true,
    pxPerMs: 1, zoomed: false,
    msgs: [], steps: [], rows: [],   // indices passing the filters
    T: new Float64Array(0), Y: new Float64Array(0), capped: [],
    laneX: new Map(), laneW: LANE_MIN_PX, width: 0, height: 0,
    maxTransit: 0, hits: [], ownHits: [], drawn: 0, bundled: false,
  };

  // --- filters ----------------------------------------------------------------------------------------
  function parsePages(text) {
    text = text.trim();
    if (!text) return null;
    const m = /^(\d+)(?:\s*-\s*(\d+))?$/.exec(text);
    if (!m) throw new Error(`page filter "${text}": expected a page number N or a range N-M`);
    const lo = +m[1], hi = m[2] === undefined ? lo : +m[2];
    if (hi < lo) throw new Error(`page filter "${text}": the range ends before it starts`);
    return [lo, hi];
  }
  function parseMs(text, name) {
    text = text.trim();
    if (!text) return null;
    const v = Number(text);
    if (!Number.isFinite(v)) throw new Error(`${name} "${text}": expected a time in ms`);
    return v;
  }
  function overlaps(page, count) {
    if (view.pages === null) return true;
    if (page < 0) return false;
    return page <= view.pages[1] && page + count - 1 >= view.pages[0];
  }
  function readFilters() {
    let pages = parsePages($("f-page").value);
    const arr = $("f-array").value;
    if (arr !== "") {
      const a = D.arrays[+arr];
      const range = [a.first, a.first + a.count - 1];
      pages = pages === null ? range : [Math.max(pages[0], range[0]), Math.min(pages[1], range[1])];
      if (pages[1] < pages[0]) pages = [1, 0];  // nothing: the page filter lies outside the array
    }
    view.pages = pages;
    const from = parseMs($("f-from").value, "from"), to = parseMs($("f-to").value, "to");
    view.from = from === null ? -Infinity : from;
    view.to = to === null ? Infinity : to;
    view.hideHeartbeats = $("f-heartbeats").checked;
    view.showSteps = $("f-steps").checked;
    view.compress = $("f-compress").checked;
    view.visibleLanes = new Set(lanes.filter((l) => $("f-lane-" + l.index).checked).map((l) => l.index));
  }
  function applyFilters() {
    const vl = view.visibleLanes;
    view.msgs = [];
    view.maxTransit = 0;
    D.msgs.forEach((m, i) => {
      const [ts, tr, src, dst, type, page, count, , , flags] = m;
      const oneEnd = flags & 4;
      const ends = oneEnd ? vl.has(ts !== null ? src : dst) : vl.has(src) && vl.has(dst);
      if (!ends || !overlaps(page, count)) return;
      if (view.hideHeartbeats && type === heartbeatType) return;
      const first = ts !== null ? ts : tr, last = tr !== null ? tr : ts;
      if (last < view.from || first > view.to) return;
      view.msgs.push(i);
      view.maxTransit = Math.max(view.maxTransit, last - first);
    });
    view.steps = [];
    D.steps.forEach((s, i) => {
      if (vl.has(s[1]) && overlaps(s[2], s[3]) && s[0] >= view.from && s[0] <= view.to) view.steps.push(i);
    });
    view.rows = [];
    D.own.forEach((r, i) => { if (overlaps(r[0], r[1])) view.rows.push(i); });
    buildTimeMap();
    layoutLanes();
    $("arrow-count").textContent = `${view.msgs.length} messages, ${view.steps.length} state changes`;
    $("row-count").textContent = `${view.rows.length} rows of pages`;
    document.body.dataset.arrows = view.msgs.length;
    schedule();
  }

  // --- the time map: ms -> y, idle gaps compressed ---------------------------------------------------
  function eventTimes() {
    const times = [];
    for (const i of view.msgs) {
      const m = D.msgs[i];
      if (m[0] !== null) times.push(m[0]);
      if (m[1] !== null) times.push(m[1]);
    }
    if (view.showSteps) for (const i of view.steps) times.push(D.steps[i][0]);
    if (!times.length) times.push(0);
    times.sort((a, b) => a - b);
    return Float64Array.from(times);
  }
  function buildTimeMap() {
    const T = eventTimes();
    if (!view.zoomed) {
      const gaps = [];
      for (let i = 1; i < T.length; i++) if (T[i] > T[i - 1]) gaps.push(T[i] - T[i - 1]);
      gaps.sort((a, b) => a - b);
      const median = gaps.length ? gaps[gaps.length >> 1] : 1;
      view.pxPerMs = Math.min(TARGET_GAP_PX / median, 1e6);
    }
    for (;;) {
      const Y = new Float64Array(T.length);
      const capped = [];
      Y[0] = PAD_PX;
      for (let i = 1; i < T.length; i++) {
        let dy = (T[i] - T[i - 1]) * view.pxPerMs;
        if (view.compress && dy > GAP_CAP_PX) {
          if (dy > GAP_MARK_RATIO * GAP_CAP_PX) capped.push(i);
          dy = GAP_CAP_PX;
        }
        Y[i] = Y[i - 1] + dy;
      }
      if (Y[Y.length - 1] < MAX_HEIGHT_PX || view.pxPerMs < 1e-9) {
        view.T = T; view.Y = Y; view.capped = capped;
        break;
      }
      view.pxPerMs /= 2;
    }
    view.height = view.Y[view.Y.length - 1] + PAD_PX;
    $("st-spacer").style.height = view.height + "px";
  }
  function upper(arr, v) {  // the first index with arr[i] > v
    let lo = 0, hi = arr.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (arr[mid] <= v) lo = mid + 1; else hi = mid; }
    return lo;
  }
  function yOf(t) {
    const T = view.T, Y = view.Y;
    const i = upper(T, t) - 1;
    if (i < 0) return Y[0] - Math.min((T[0] - t) * view.pxPerMs, PAD_PX);
    if (i >= T.length - 1) return Y[T.length - 1] + Math.min((t - T[T.length - 1]) * view.pxPerMs, PAD_PX);
    const span = T[i + 1] - T[i];
    return span > 0 ? Y[i] + (t - T[i]) / span * (Y[i + 1] - Y[i]) : Y[i];
  }
  function tOf(y) {
    const T = view.T, Y = view.Y;
    const i = upper(Y, y) - 1;
    if (i < 0) return T[0] - (Y[0] - y) / view.pxPerMs;
    if (i >= Y.length - 1) return T[T.length - 1] + (y - Y[Y.length - 1]) / view.pxPerMs;
    const span = Y[i + 1] - Y[i];
    return span > 0 ? T[i] + (y - Y[i]) / span * (T[i + 1] - T[i]) : T[i];
  }

  // --- lanes' places -------------------------------------------------------------------------------
  function layoutLanes() {
    const shown = lanes.filter((l) => view.visibleLanes.has(l.index));
    const avail = $("st-scroll").clientWidth - AXIS_PX;
    view.laneW = Math.max(LANE_MIN_PX, avail / Math.max(1, shown.length));
    view.width = AXIS_PX + view.laneW * shown.length;
    $("st-spacer").style.width = view.width + "px";
    view.laneX = new Map();
    const heads = $("lane-heads");
    heads.textContent = "";
    shown.forEach((l, k) => {
      const x = AXIS_PX + view.laneW * (k + 0.5);
      view.laneX.set(l.index, x);
      const head = document.createElement("div");
      head.className = "lane-head " + l.role;
      head.dataset.lane = l.name;
      head.textContent = l.name + (l.role === "manager" ? " (manager)" : "");
      head.style.left = x + "px";
      head.style.background = l.color;
      head.title = clockText(l.name);
      heads.appendChild(head);
    });
  }
  function clockText(name) {
    const c = D.clocks[name];
    if (!c) return name;
    return `${name}: clock offset to ${D.reference} ${c[0].toFixed(3)} ms ± ${c[1].toFixed(3)} ms`;
  }

  // --- drawing -------------------------------------------------------------------------------------
  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; drawDiagram(); drawOwnership(); });
  }
  function prepare(canvas, scroller) {
    const dpr = window.devicePixelRatio || 1;
    const w = scroller.clientWidth, h = scroller.clientHeight;
    canvas.style.left = scroller.scrollLeft + "px";
    canvas.style.top = scroller.scrollTop + "px";
    canvas.style.width = w + "px"; canvas.style.height = h + "px";
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return [ctx, w, h];
  }
  function fmtMs(t) {
    const a = Math.abs(t);
    return a >= 1000 ? (t / 1000).toFixed(6) + " s" : a >= 1 ? t.toFixed(3) + " ms" : (t * 1000).toFixed(1) + " µs";
  }
  function typeColor(type) { return TYPE_COLORS[D.types[type]] || "#555"; }
  function stateColor(text) {
    if (text.startsWith("owned:")) return STATE_COLORS.exclusive;
    if (text.startsWith("home{}")) return STATE_COLORS.invalid;
    if (text.startsWith("home{")) return STATE_COLORS.shared;
    return STATE_COLORS[text] || "#444";
  }
  function pagesText(page, count) { return page < 0 ? "" : count > 1 ? ` p${page}+${count}` : ` p${page}`; }

  function drawDiagram() {
    const sc = $("st-scroll");
    const [ctx, w, h] = prepare($("st-canvas"), sc);
    const x0 = sc.scrollLeft, y0 = sc.scrollTop, y1 = y0 + h;
    ctx.save();
    ctx.translate(-x0, -y0);
    // lanes
    ctx.lineWidth = 1;
    for (const [index, x] of view.laneX) {
      ctx.strokeStyle = lanes[index].color; ctx.globalAlpha = 0.35;
      ctx.beginPath(); ctx.moveTo(x, y0); ctx.lineTo(x, y1); ctx.stroke();
    }
    ctx.globalAlpha = 1;
    // idle gaps cut out of the time
    ctx.font = "10px sans-serif"; ctx.fillStyle = "#888"; ctx.strokeStyle = "#bbb";
    ctx.setLineDash([4, 4]);
    for (const i of view.capped) {
      const y = (view.Y[i] + view.Y[i - 1]) / 2;
      if (y < y0 - 10 || y > y1 + 10) continue;
      ctx.beginPath(); ctx.moveTo(AXIS_PX, y); ctx.lineTo(view.width, y); ctx.stroke();
      ctx.fillText(`${fmtMs(view.T[i] - view.T[i - 1])} idle`, AXIS_PX + 4, y - 2);
    }
    ctx.setLineDash([]);
    // the time axis
    ctx.fillStyle = "#333"; ctx.font = "11px sans-serif"; ctx.textAlign = "right";
    for (let y = Math.ceil(y0 / TICK_PX) * TICK_PX; y < y1; y += TICK_PX) {
      ctx.fillText(fmtMs(tOf(y)), x0 + AXIS_PX - 6, y + 4);
      ctx.fillRect(x0 + AXIS_PX - 4, y, 4, 1);
    }
    ctx.textAlign = "left";
    view.hits = [];
    drawArrows(ctx, y0, y1);
    if (view.showSteps) drawSteps(ctx, y0, y1);
    ctx.restore();
  }

  const firstTime = (m) => (m[0] !== null ? m[0] : m[1]);
  function arrowsInView(t0, t1) {
    const vis = view.msgs, out = [];
    let lo = 0, hi = vis.length;
    const start = t0 - view.maxTransit;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (firstTime(D.msgs[vis[mid]]) < start) lo = mid + 1; else hi = mid; }
    for (let k = lo; k < vis.length; k++) {
      const m = D.msgs[vis[k]];
      if (firstTime(m) > t1) break;
      const last = m[1] !== null ? m[1] : m[0];
      if (last >= t0) out.push(vis[k]);
    }
    return out;
  }
  function endsOf(m) {
    // [x1, y1, x2, y2, dashed]: one end only -> a stub towards the peer's lane
    const [ts, tr, src, dst] = m;
    const xs = view.laneX.get(src), xd = view.laneX.get(dst);
    if (ts !== null && tr !== null) return [xs, yOf(ts), xd, yOf(tr), false];
    if (tr === null) {  // sent, never seen received
      const y = yOf(ts), to = xd !== undefined ? xd : xs + 40;
      return [xs, y, xs + (to - xs) * 0.35, y + 12, true];
    }
    const y = yOf(tr), from = xs !== undefined ? xs : xd - 40;
    return [xd + (from - xd) * 0.35, y - 12, xd, y, true];
  }
  function drawArrows(ctx, y0, y1) {
    const inView = arrowsInView(tOf(y0), tOf(y1));
    view.drawn = inView.length;
    view.bundled = inView.length > DRAW_LIMIT;
    if (view.bundled) return drawBundles(ctx, inView);
    const labels = inView.length <= LABEL_LIMIT;
    ctx.font = "10px sans-serif";
    for (const i of inView) {
      const m = D.msgs[i];
      const [xa, ya, xb, yb, dashed] = endsOf(m);
      if (xa === undefined || xb === undefined) continue;
      const color = typeColor(m[4]);
      ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 1.3;
      ctx.setLineDash(dashed ? [3, 3] : []);
      ctx.beginPath(); ctx.moveTo(xa, ya); ctx.lineTo(xb, yb); ctx.stroke();
      ctx.setLineDash([]);
      const ang = Math.atan2(yb - ya, xb - xa);
      ctx.beginPath();
      ctx.moveTo(xb, yb);
      ctx.lineTo(xb - 7 * Math.cos(ang - 0.4), yb - 7 * Math.sin(ang - 0.4));
      ctx.lineTo(xb - 7 * Math.cos(ang + 0.4), yb - 7 * Math.sin(ang + 0.4));
      ctx.fill();
      if (labels) {
        const text = D.types[m[4]] + pagesText(m[5], m[6]);
        const xm = (xa + xb) / 2, ym = (ya + yb) / 2;
        const tw = ctx.measureText(text).width;
        ctx.fillStyle = "rgba(255,255,255,0.85)"; ctx.fillRect(xm - tw / 2 - 2, ym - 9, tw + 4, 11);
        ctx.fillStyle = color; ctx.fillText(text, xm - tw / 2, ym);
      }
      view.hits.push([xa, ya, xb, yb, "m", i]);
    }
  }
  function drawBundles(ctx, inView) {
    const bundles = new Map();
    for (const i of inView) {
      const m = D.msgs[i];
      if (m[0] === null || m[1] === null) continue;
      const key = `${m[2]}:${m[3]}:${Math.floor(yOf(m[0]) / BUNDLE_PX)}`;
      const b = bundles.get(key);
      if (b) b.n++; else bundles.set(key, { m, n: 1 });
    }
    ctx.strokeStyle = "#456";
    for (const { m, n } of bundles.values()) {
      const [xa, ya, xb, yb] = endsOf(m);
      if (xa === undefined || xb === undefined) continue;
      ctx.globalAlpha = Math.min(1, 0.25 + n / 20);
      ctx.lineWidth = Math.min(6, 1 + Math.log2(n));
      ctx.beginPath(); ctx.moveTo(xa, ya); ctx.lineTo(xb, yb); ctx.stroke();
    }
    ctx.globalAlpha = 1;
  }
  function drawSteps(ctx, y0, y1) {
    const t0 = tOf(y0), t1 = tOf(y1);
    const vis = view.steps;
    let lo = 0, hi = vis.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (D.steps[vis[mid]][0] < t0) lo = mid + 1; else hi = mid; }
    let end = lo;
    while (end < vis.length && D.steps[vis[end]][0] <= t1) end++;
    const labels = end - lo <= LABEL_LIMIT;
    ctx.font = "10px sans-serif";
    for (let k = lo; k < end; k++) {
      const s = D.steps[vis[k]];
      const x = view.laneX.get(s[1]);
      if (x === undefined) continue;
      const y = yOf(s[0]), text = D.texts[s[5]];
      ctx.fillStyle = stateColor(text);
      ctx.fillRect(x - 4, y - 4, 8, 8);
      if (labels) {
        ctx.fillStyle = "#222";
        ctx.fillText(`${D.events[s[4]]}${pagesText(s[2], s[3])} → ${text}`, x + 7, y + 3);
      }
      view.hits.push([x, y, x, y, "s", vis[k]]);
    }
  }

  function drawOwnership() {
    const sc = $("own-scroll");
    const rowsH = view.rows.length * ROW_PX + PAD_PX;
    $("own-spacer").style.height = rowsH + "px";
    const [ctx, w, h] = prepare($("own-canvas"), sc);
    const y0 = sc.scrollTop;
    const first = Math.floor(y0 / ROW_PX), last = Math.min(view.rows.length, first + Math.ceil(h / ROW_PX) + 1);
    const span = Math.max(1, view.height - 2 * PAD_PX);
    const plotW = Math.max(50, w - ROW_LABEL_PX - 10);
    const xOf = (t) => ROW_LABEL_PX + Math.max(0, Math.min(1, (yOf(t) - PAD_PX) / span)) * plotW;
    const tMin = view.T[0], tMax = view.T[view.T.length - 1];
    view.ownHits = [];
    ctx.font = "11px sans-serif";
    for (let k = first; k < last; k++) {
      const [page, count, segs] = D.own[view.rows[k]];
      const y = k * ROW_PX - y0 + 2;
      ctx.fillStyle = "#333";
      ctx.fillText(count > 1 ? `pages ${page}-${page + count - 1}` : `page ${page}`, 4, y + 11);
      for (const seg of segs) {
        const [s, e, kind, holders] = seg;
        const end = e === null ? D.end : e;
        if (end < view.from || s > view.to || end < tMin || s > tMax) continue;
        const xa = xOf(s), xb = Math.max(xa + 1, xOf(end));
        drawSegment(ctx, xa, y, xb - xa, ROW_PX - 3, D.kinds[kind], holders);
        view.ownHits.push([xa, xb, y, y + ROW_PX - 3, page, count, seg]);
      }
    }
  }
  function drawSegment(ctx, x, y, wpx, hpx, kind, holders) {
    if (kind === "owned") {
      ctx.fillStyle = lanes[holders[0]] ? lanes[holders[0]].color : "#d33";
      ctx.fillRect(x, y, wpx, hpx);
    } else if (kind === "shared") {
      const band = hpx / Math.max(1, holders.length);
      holders.forEach((hl, j) => {
        ctx.globalAlpha = 0.45;
        ctx.fillStyle = lanes[hl] ? lanes[hl].color : "#f4b6b6";
        ctx.fillRect(x, y + j * band, wpx, band);
      });
      ctx.globalAlpha = 1;
    } else {
      ctx.fillStyle = kind === "lost" ? "#000" : "#ddd";
      ctx.fillRect(x, y, wpx, hpx);
    }
  }

  // --- hovering ------------------------------------------------------------------------------------
  function distance(px, py, [xa, ya, xb, yb]) {
    const dx = xb - xa, dy = yb - ya, len2 = dx * dx + dy * dy;
    const u = len2 ? Math.max(0, Math.min(1, ((px - xa) * dx + (py - ya) * dy) / len2)) : 0;
    return Math.hypot(px - xa - u * dx, py - ya - u * dy);
  }
  function recordText(index) { return index >= 0 ? JSON.stringify(D.recs[index], null, 1) : "(not traced)"; }
  function messageText(i) {
    const m = D.msgs[i];
    const src = lanes[m[2]].name, dst = lanes[m[3]].name;
    let head = `${D.types[m[4]]}${pagesText(m[5], m[6])}: ${src} → ${dst}`;
    if (m[0] !== null && m[1] !== null) head += `, transit ${fmtMs(m[1] - m[0])}`;
    if (m[9] & 1) head += "\n(transit shorter than the clocks' uncertainty: only its direction is known)";
    if (m[9] & 2) head += "\n(its receive was drawn at its send: the clock estimate placed it before)";
    return `${head}\nsent at ${m[0] === null ? "?" : fmtMs(m[0])}: ${recordText(m[7])}\n` +
           `received at ${m[1] === null ? "?" : fmtMs(m[1])}: ${recordText(m[8])}`;
  }
  function showTip(ev, text) {
    const tip = $("tip");
    if (!text) { tip.hidden = true; return; }
    tip.textContent = text;
    tip.hidden = false;
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 530) + "px";
    tip.style.top = Math.min(ev.clientY + 14, window.innerHeight - tip.offsetHeight - 4) + "px";
  }
  $("st-canvas").addEventListener("mousemove", (ev) => {
    const sc = $("st-scroll"), r = sc.getBoundingClientRect();
    const px = ev.clientX - r.left + sc.scrollLeft, py = ev.clientY - r.top + sc.scrollTop;
    let best = null, bestD = HIT_PX;
    for (const hit of view.hits) {
      const d = distance(px, py, hit);
      if (d <= bestD) { best = hit; bestD = d; }
    }
    if (!best) return showTip(ev, view.bundled ? "many messages here: zoom in (ctrl+wheel) for each one" : "");
    showTip(ev, best[4] === "m" ? messageText(best[5]) : recordText(D.steps[best[5]][6]));
  });
  $("own-canvas").addEventListener("mousemove", (ev) => {
    const sc = $("own-scroll"), r = sc.getBoundingClientRect();
    const px = ev.clientX - r.left, py = ev.clientY - r.top;
    const hit = view.ownHits.find(([xa, xb, ya, yb]) => px >= xa && px <= xb && py >= ya && py <= yb);
    if (!hit) return showTip(ev, "");
    const [, , , , page, count, [s, e, kind, holders]] = hit;
    const who = holders.map((h) => lanes[h].name).join(", ");
    const what = { owned: `owned by ${who}`, shared: `at home, read copies: ${who}`, home: "at home, no copies", lost: "lost" }[D.kinds[kind]];
    showTip(ev, `${count > 1 ? `pages ${page}-${page + count - 1}` : `page ${page}`}: ${what}\n` +
                `from ${fmtMs(s)} to ${e === null ? "the end" : fmtMs(e)}`);
  });
  for (const id of ["st-canvas", "own-canvas"]) $(id).addEventListener("mouseleave", () => { $("tip").hidden = true; });

  // --- zoom, scroll, controls -----------------------------------------------------------------------
  function zoom(factor, anchorY) {
    const sc = $("st-scroll");
    const screenY = anchorY === undefined ? sc.clientHeight / 2 : anchorY;
    const t = tOf(sc.scrollTop + screenY);
    view.pxPerMs *= factor;
    view.zoomed = true;
    buildTimeMap();
    sc.scrollTop = Math.max(0, yOf(t) - screenY);
    schedule();
  }
  $("st-scroll").addEventListener("wheel", (ev) => {
    if (!ev.ctrlKey) return;
    ev.preventDefault();
    const r = $("st-scroll").getBoundingClientRect();
    zoom(ev.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP, ev.clientY - r.top);
  }, { passive: false });
  $("st-scroll").addEventListener("scroll", schedule);
  $("own-scroll").addEventListener("scroll", schedule);
  window.addEventListener("resize", () => { layoutLanes(); schedule(); });
  $("zoom-in").addEventListener("click", () => zoom(ZOOM_STEP));
  $("zoom-out").addEventListener("click", () => zoom(1 / ZOOM_STEP));

  function refresh() {
    try {
      readFilters();
      $("f-error").textContent = "";
    } catch (err) {
      $("f-error").textContent = err.message;
      return;
    }
    applyFilters();
  }
  $("reset").addEventListener("click", () => {
    for (const id of ["f-page", "f-from", "f-to"]) $(id).value = "";
    $("f-array").value = "";
    for (const l of lanes) $("f-lane-" + l.index).checked = true;
    view.zoomed = false;
    refresh();
  });
  function buildControls() {
    D.arrays.forEach((a, i) => {
      const o = document.createElement("option");
      o.value = i; o.textContent = `${a.name} (pages ${a.first}-${a.first + a.count - 1})`;
      $("f-array").appendChild(o);
    });
    for (const l of lanes) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox"; box.checked = true; box.id = "f-lane-" + l.index;
      label.appendChild(box);
      label.appendChild(document.createTextNode(" " + l.name));
      label.style.color = l.color;
      $("f-nodes").appendChild(label);
    }
    for (const el of $("filters").querySelectorAll("input, select")) {
      el.addEventListener(el.type === "checkbox" || el.tagName === "SELECT" ? "change" : "input", refresh);
    }
    const nodes = lanes.filter((l) => l.role !== "manager").length;
    $("summary").textContent = `${D.files.length} trace file(s), ${lanes.length - nodes} manager(s), ` +
      `${nodes} node(s), ${D.msgs.length} messages, ${D.steps.length} state changes, ` +
      `${fmtMs(D.end)}; times on ${D.reference}'s clock`;
  }

  // the tests' handle: what is shown, and a way to set the filters
  window.dsmView = {
    stats: () => ({ lanes: view.visibleLanes.size, arrows: view.msgs.length, steps: view.steps.length,
                    rows: view.rows.length, drawn: view.drawn, bundled: view.bundled }),
    firstArrowMidpoint() {  // in the diagram canvas's own coordinates
      const h = view.hits.find((hit) => hit[4] === "m");
      if (!h) return null;
      const sc = $("st-scroll");
      return [(h[0] + h[2]) / 2 - sc.scrollLeft, (h[1] + h[3]) / 2 - sc.scrollTop];
    },
    setFilters(f) {
      if ("page" in f) $("f-page").value = f.page;
      if ("array" in f) $("f-array").value = f.array === "" ? "" : String(D.arrays.findIndex((a) => a.name === f.array));
      if ("from" in f) $("f-from").value = f.from;
      if ("to" in f) $("f-to").value = f.to;
      if ("hideHeartbeats" in f) $("f-heartbeats").checked = f.hideHeartbeats;
      if ("nodes" in f) for (const l of lanes) $("f-lane-" + l.index).checked = f.nodes.includes(l.name);
      refresh();
      return this.stats();
    },
  };
  buildControls();
  refresh();
})();
