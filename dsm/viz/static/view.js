// dsm trace --html: the space-time diagram and the page-ownership timeline of a merged trace.
// Written for dsm (no library). The data document is described in dsm/viz/html.py. Only what is
// in view is drawn, so that traces of 100,000 steps stay usable; past DRAW_LIMIT arrows in view
// they are drawn as bundles (one line per pair of lanes and few pixels of time, its width the count).
// Every colour comes from the data document's style (dsm/viz/style.py): a node's colour is its
// lane's, its arrows' (a message is drawn in its sender's colour) and its strips'; every colour
// drawn is recorded (drawnColors) and appears in the legend. Labels are placed so that none
// overlaps another (those that cannot be placed are left out, their text in the hover box).
// The step-through mode moves a cursor from message to message on both diagrams.
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
  const ROW_LABEL_PX = 170;      // the ownership rows' labels
  const PLAY_MS = 800;           // step-through: a message every this many ms when playing
  const LABEL_TRIES = [0, 12, -12, 24, -24, 36];  // vertical shifts tried to place a label
  const S = D.style;

  // --- lanes -------------------------------------------------------------------------------------
  const lanes = D.lanes.map((l, i) => ({ name: l.name, role: l.role, index: i, color: l.color }));
  const joinTypes = new Set(S.joins.map((n) => D.types.indexOf(n)).filter((i) => i >= 0));

  // --- arrays: pages named by their array and their index in it --------------------------------------
  // an array's short name: the fewest trailing dot-separated parts that no other array shares
  const arrays = D.arrays.map((a) => ({ ...a, short: a.name }));
  const tailOf = (name, k) => name.split(".").slice(-k).join(".");
  for (const a of arrays) {
    for (let k = 1; k <= a.name.split(".").length; k++) {
      const tail = tailOf(a.name, k);
      if (arrays.every((b) => b === a || tailOf(b.name, k) !== tail)) { a.short = tail; break; }
    }
  }
  function arrayOf(page) {
    let lo = 0, hi = arrays.length;  // sorted by first page
    while (lo < hi) { const mid = (lo + hi) >> 1; if (arrays[mid].first <= page) lo = mid + 1; else hi = mid; }
    const a = arrays[lo - 1];
    return a && page < a.first + a.count ? a : null;
  }
  // "a p3" (page 3 of array a), "a p3-5", or "p3" outside any array
  function pageName(page, count) {
    const a = arrayOf(page);
    const last = page + count - 1;
    if (!a) return count > 1 ? `p${page}-${last}` : `p${page}`;
    const i = page - a.first, j = Math.min(last, a.first + a.count - 1) - a.first;
    return `${a.short} ` + (j > i ? `p${i}-${j}` : `p${i}`) + (last >= a.first + a.count ? "+" : "");
  }

  // --- colours: every one drawn is recorded, and the legend must name it ----------------------------
  const drawnColors = new Set();
  function use(color) { drawnColors.add(color.toLowerCase()); return color; }

  // --- view state ----------------------------------------------------------------------------------
  const view = {
    visibleLanes: new Set(lanes.map((l) => l.index)),
    pages: null,          // [lo, hi] or null
    from: -Infinity, to: Infinity,
    hideHeartbeats: true, showSteps: true, compress: true, big: false,
    pxPerMs: 1, zoomed: false,
    msgs: [], steps: [], rows: [],   // indices passing the filters
    T: new Float64Array(0), Y: new Float64Array(0), capped: [],
    laneX: new Map(), laneW: LANE_MIN_PX, width: 0, height: 0,
    maxTransit: 0, hits: [], ownHits: [], drawn: 0, bundled: false,
    labels: [], labelsLeftOut: 0,
    cursor: -1, playing: null,   // step-through: a position in view.msgs, the play timer
  };
  const fontPx = () => (view.big ? 15 : 10);

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
  // a message passes the page filter by its own pages, or by those a lock or barrier message
  // matters to (their diffs and write notices: dsm/viz/sync.py)
  function messageOverlaps(m) {
    if (overlaps(m[5], m[6])) return true;
    return view.pages !== null && Array.isArray(m[10]) && m[10].some(([p, c]) => overlaps(p, c));
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
    view.big = $("f-big").checked;
    document.body.classList.toggle("big", view.big);
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
      if (!ends || !messageOverlaps(m)) return;
      if (view.hideHeartbeats && joinTypes.has(type)) return;
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
    view.cursor = Math.min(view.cursor, view.msgs.length - 1);
    showCursorInfo();
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
  function pagesText(page, count) { return page < 0 ? "" : " " + pageName(page, count); }
  const senderColor = (m) => lanes[m[2]].color;

  // labels: each placed where it overlaps no other label of this frame (or left out)
  function placeLabel(x, y, w, h) {
    for (const dy of LABEL_TRIES) {
      const r = [x, y + dy, x + w, y + dy + h];
      if (!view.labels.some((o) => r[0] < o[2] && o[0] < r[2] && r[1] < o[3] && o[1] < r[3])) {
        view.labels.push(r);
        return r;
      }
    }
    view.labelsLeftOut++;
    return null;
  }

  function drawDiagram() {
    const sc = $("st-scroll");
    const [ctx, w, h] = prepare($("st-canvas"), sc);
    const x0 = sc.scrollLeft, y0 = sc.scrollTop, y1 = y0 + h;
    ctx.save();
    ctx.translate(-x0, -y0);
    // lanes
    ctx.lineWidth = 2;
    for (const [index, x] of view.laneX) {
      ctx.strokeStyle = use(lanes[index].color); ctx.globalAlpha = 0.35;
      ctx.beginPath(); ctx.moveTo(x, y0); ctx.lineTo(x, y1); ctx.stroke();
    }
    ctx.globalAlpha = 1; ctx.lineWidth = 1;
    // idle gaps cut out of the time
    ctx.font = `${fontPx()}px sans-serif`; ctx.fillStyle = "#888"; ctx.strokeStyle = "#bbb";
    ctx.setLineDash([4, 4]);
    for (const i of view.capped) {
      const y = (view.Y[i] + view.Y[i - 1]) / 2;
      if (y < y0 - 10 || y > y1 + 10) continue;
      ctx.beginPath(); ctx.moveTo(AXIS_PX, y); ctx.lineTo(view.width, y); ctx.stroke();
      ctx.fillText(`${fmtMs(view.T[i] - view.T[i - 1])} idle`, AXIS_PX + 4, y - 2);
    }
    ctx.setLineDash([]);
    // the time axis
    ctx.fillStyle = "#333"; ctx.font = `${fontPx() + 1}px sans-serif`; ctx.textAlign = "right";
    for (let y = Math.ceil(y0 / TICK_PX) * TICK_PX; y < y1; y += TICK_PX) {
      ctx.fillText(fmtMs(tOf(y)), x0 + AXIS_PX - 6, y + 4);
      ctx.fillRect(x0 + AXIS_PX - 4, y, 4, 1);
    }
    ctx.textAlign = "left";
    view.hits = []; view.labels = []; view.labelsLeftOut = 0;
    drawCursor(ctx, x0, w);
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
  function drawArrow(ctx, m, i, labels, current) {
    const [xa, ya, xb, yb, dashed] = endsOf(m);
    if (xa === undefined || xb === undefined) return;
    const color = use(senderColor(m));
    ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = current ? 3.5 : 1.4;
    ctx.setLineDash(dashed ? [3, 3] : []);
    ctx.beginPath(); ctx.moveTo(xa, ya); ctx.lineTo(xb, yb); ctx.stroke();
    ctx.setLineDash([]);
    const ang = Math.atan2(yb - ya, xb - xa), head = current ? 11 : 7;
    ctx.beginPath();
    ctx.moveTo(xb, yb);
    ctx.lineTo(xb - head * Math.cos(ang - 0.4), yb - head * Math.sin(ang - 0.4));
    ctx.lineTo(xb - head * Math.cos(ang + 0.4), yb - head * Math.sin(ang + 0.4));
    ctx.fill();
    if (labels || current) {
      const text = D.types[m[4]] + pagesText(m[5], m[6]);
      const xm = (xa + xb) / 2, ym = (ya + yb) / 2, fh = fontPx() + 2;
      ctx.font = `${current ? "bold " : ""}${fontPx()}px sans-serif`;
      const tw = ctx.measureText(text).width;
      const r = placeLabel(xm - tw / 2 - 2, ym - fh + 1, tw + 4, fh);
      if (r) {
        ctx.fillStyle = "rgba(255,255,255,0.9)"; ctx.fillRect(r[0], r[1], r[2] - r[0], r[3] - r[1]);
        ctx.fillStyle = "#222"; ctx.fillText(text, r[0] + 2, r[3] - 3);
      }
    }
    view.hits.push([xa, ya, xb, yb, "m", i]);
  }
  function drawArrows(ctx, y0, y1) {
    const inView = arrowsInView(tOf(y0), tOf(y1));
    view.drawn = inView.length;
    view.bundled = inView.length > DRAW_LIMIT;
    if (view.bundled) return drawBundles(ctx, inView);
    const labels = inView.length <= LABEL_LIMIT;
    const current = view.cursor >= 0 ? view.msgs[view.cursor] : -1;
    // the cursor's message first: its label is always placed
    if (current >= 0 && inView.includes(current)) drawArrow(ctx, D.msgs[current], current, labels, true);
    for (const i of inView) if (i !== current) drawArrow(ctx, D.msgs[i], i, labels, false);
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
    for (const { m, n } of bundles.values()) {
      const [xa, ya, xb, yb] = endsOf(m);
      if (xa === undefined || xb === undefined) continue;
      ctx.strokeStyle = use(senderColor(m));
      ctx.globalAlpha = Math.min(1, 0.25 + n / 20);
      ctx.lineWidth = Math.min(6, 1 + Math.log2(n));
      ctx.beginPath(); ctx.moveTo(xa, ya); ctx.lineTo(xb, yb); ctx.stroke();
    }
    ctx.globalAlpha = 1;
  }
  // a state mark: a square in its state kind's shade, outlined (a read copy: hollow)
  function drawMark(ctx, x, y, kind, size) {
    ctx.fillStyle = use(S.states[kind].color);
    ctx.fillRect(x - size / 2, y - size / 2, size, size);
    ctx.strokeStyle = use(S.outline); ctx.lineWidth = 1;
    ctx.strokeRect(x - size / 2 + 0.5, y - size / 2 + 0.5, size - 1, size - 1);
  }
  function drawSteps(ctx, y0, y1) {
    const t0 = tOf(y0), t1 = tOf(y1);
    const vis = view.steps;
    let lo = 0, hi = vis.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (D.steps[vis[mid]][0] < t0) lo = mid + 1; else hi = mid; }
    let end = lo;
    while (end < vis.length && D.steps[vis[end]][0] <= t1) end++;
    const labels = end - lo <= LABEL_LIMIT;
    ctx.font = `${fontPx()}px sans-serif`;
    const fh = fontPx() + 2;
    for (let k = lo; k < end; k++) {
      const s = D.steps[vis[k]];
      const x = view.laneX.get(s[1]);
      if (x === undefined) continue;
      const y = yOf(s[0]), text = D.texts[s[5]];
      drawMark(ctx, x, y, s[7], view.big ? 11 : 8);
      if (labels) {
        const label = `${D.events[s[4]]}${pagesText(s[2], s[3])} → ${text}`;
        const tw = ctx.measureText(label).width;
        const r = placeLabel(x + 7, y - fh / 2, tw + 2, fh);
        if (r) {
          ctx.fillStyle = "rgba(250,250,250,0.9)"; ctx.fillRect(r[0], r[1], r[2] - r[0], r[3] - r[1]);
          ctx.fillStyle = "#222"; ctx.fillText(label, r[0] + 1, r[3] - 3);
        }
      }
      view.hits.push([x, y, x, y, "s", vis[k]]);
    }
  }

  // --- the step-through cursor ------------------------------------------------------------------
  function cursorTime() {
    if (view.cursor < 0) return null;
    const m = D.msgs[view.msgs[view.cursor]];
    return firstTime(m);
  }
  function drawCursor(ctx, x0, w) {
    const t = cursorTime();
    if (t === null) return;
    const y = yOf(t);
    ctx.strokeStyle = use(S.cursor); ctx.lineWidth = 2;
    ctx.beginPath(); ctx.moveTo(x0 + AXIS_PX - 4, y); ctx.lineTo(x0 + w, y); ctx.stroke();
    ctx.lineWidth = 1;
  }
  function showCursorInfo() {
    const info = $("step-info");
    if (view.cursor < 0) { info.textContent = "step through the messages: → next, ← previous, space play/pause"; return; }
    const i = view.msgs[view.cursor], m = D.msgs[i];
    info.textContent = `message ${view.cursor + 1} of ${view.msgs.length}: ${D.types[m[4]]}` +
      `${pagesText(m[5], m[6])}, ${lanes[m[2]].name} → ${lanes[m[3]].name}, at ${fmtMs(firstTime(m))}`;
  }
  function moveCursor(to) {
    if (!view.msgs.length) return;
    view.cursor = Math.max(0, Math.min(view.msgs.length - 1, to));
    const sc = $("st-scroll"), y = yOf(cursorTime());
    if (y < sc.scrollTop + 40 || y > sc.scrollTop + sc.clientHeight - 40) {
      sc.scrollTop = Math.max(0, y - sc.clientHeight / 3);
    }
    showCursorInfo();
    schedule();
  }
  function play(on) {
    if (on && !view.playing) {
      view.playing = setInterval(() => {
        if (view.cursor >= view.msgs.length - 1) return play(false);
        moveCursor(view.cursor + 1);
      }, PLAY_MS);
    } else if (!on && view.playing) {
      clearInterval(view.playing);
      view.playing = null;
    }
    $("step-play").textContent = view.playing ? "❚❚ pause" : "▶ play";
  }

  // --- the ownership timeline ---------------------------------------------------------------------
  function drawOwnership() {
    const sc = $("own-scroll");
    const rowPx = view.big ? ROW_PX + 6 : ROW_PX;
    const rowsH = view.rows.length * rowPx + PAD_PX;
    $("own-spacer").style.height = rowsH + "px";
    const [ctx, w, h] = prepare($("own-canvas"), sc);
    const y0 = sc.scrollTop;
    const first = Math.floor(y0 / rowPx), last = Math.min(view.rows.length, first + Math.ceil(h / rowPx) + 1);
    const span = Math.max(1, view.height - 2 * PAD_PX);
    const labelW = view.big ? ROW_LABEL_PX + 60 : ROW_LABEL_PX;
    const plotW = Math.max(50, w - labelW - 10);
    const xOf = (t) => labelW + Math.max(0, Math.min(1, (yOf(t) - PAD_PX) / span)) * plotW;
    const tMin = view.T[0], tMax = view.T[view.T.length - 1];
    const within = (s, e) => !(e < view.from || s > view.to || e < tMin || s > tMax);
    view.ownHits = [];
    ctx.font = `${fontPx() + 1}px sans-serif`;
    for (let k = first; k < last; k++) {
      const [page, count, segs, bands, marks] = D.own[view.rows[k]];
      const y = k * rowPx - y0 + 2, hpx = rowPx - 3;
      ctx.fillStyle = "#333";
      ctx.fillText(pageName(page, count), 4, y + hpx - 3, labelW - 8);
      for (const seg of segs) {
        const [s, e, kind] = seg;
        const end = e === null ? D.end : e;
        if (!within(s, end)) continue;
        const xa = xOf(s), xb = Math.max(xa + 1, xOf(end));
        drawSegment(ctx, xa, y, xb - xa, hpx, D.kinds[kind], seg[3]);
        view.ownHits.push([xa, xb, y, y + hpx, page, count, "seg", seg]);
      }
      drawBands(ctx, bands || [], y, hpx, xOf, within, page, count);
      for (const mark of marks || []) {
        const [t, kind, lane] = mark;
        if (!within(t, t)) continue;
        const x = xOf(t);
        if (D.marks[kind] === "diff") {
          ctx.fillStyle = use(S.ownership.diff.color); ctx.fillRect(x - 1, y, 2, hpx);
        } else {  // a write notice: a triangle pointing down at the row's foot
          ctx.fillStyle = use(S.ownership.notice.color);
          ctx.beginPath(); ctx.moveTo(x - 4, y + hpx - 7); ctx.lineTo(x + 4, y + hpx - 7);
          ctx.lineTo(x, y + hpx); ctx.fill();
        }
        view.ownHits.push([x - 4, x + 4, y, y + hpx, page, count, "mark", mark]);
      }
    }
    const t = cursorTime();
    if (t !== null) {
      const x = xOf(t);
      ctx.strokeStyle = use(S.cursor); ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, h); ctx.stroke();
      ctx.lineWidth = 1;
    }
  }
  function drawSegment(ctx, x, y, wpx, hpx, kind, holders) {
    if (kind === "owned") {
      ctx.fillStyle = use(lanes[holders[0]] ? lanes[holders[0]].color : S.ownership.home.color);
      ctx.fillRect(x, y, wpx, hpx);
    } else if (kind === "shared") {
      const band = hpx / Math.max(1, holders.length);
      holders.forEach((hl, j) => {
        ctx.globalAlpha = 0.45;
        ctx.fillStyle = use(lanes[hl].color);
        ctx.fillRect(x, y + j * band, wpx, band);
      });
      ctx.globalAlpha = 1;
    } else {
      ctx.fillStyle = use(S.ownership[kind].color);
      ctx.fillRect(x, y, wpx, hpx);
    }
  }
  // a release page's copies (pale bands) and twins (solid, outlined), a band per node
  function drawBands(ctx, bands, y, hpx, xOf, within, page, count) {
    const nodes = [...new Set(bands.map((b) => b[3]))].sort((a, b) => a - b);
    const bh = (hpx - 2) / Math.max(1, nodes.length);
    for (const band of bands) {
      const [s, e, kind, lane] = band;
      const end = e === null ? D.end : e;
      if (!within(s, end)) continue;
      const xa = xOf(s), xb = Math.max(xa + 2, xOf(end));
      const by = y + 1 + nodes.indexOf(lane) * bh;
      ctx.fillStyle = use(lanes[lane].color);
      if (D.bands[kind] === "copy") {
        ctx.globalAlpha = 0.35; ctx.fillRect(xa, by, xb - xa, bh); ctx.globalAlpha = 1;
      } else {
        ctx.fillRect(xa, by + 1, xb - xa, bh - 2);
        ctx.strokeStyle = use(S.outline); ctx.strokeRect(xa + 0.5, by + 1.5, xb - xa - 1, bh - 3);
      }
      view.ownHits.push([xa, xb, by, by + bh, page, count, "band", band]);
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
    if (m[5] >= 0) head += ` (page ${m[5]}${m[6] > 1 ? `+${m[6]}` : ""})`;
    if (m[0] !== null && m[1] !== null) head += `, transit ${fmtMs(m[1] - m[0])}`;
    if (Array.isArray(m[10])) head += `\nmatters to ${m[10].map(([p, c]) => pageName(p, c)).join(", ")} (its write notices)`;
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
  function ownText(page, count, what, item) {
    const where = `${pageName(page, count)} (page${count > 1 ? `s ${page}-${page + count - 1}` : ` ${page}`})`;
    if (what === "mark") {
      const [t, kind, lane] = item;
      return `${where}: ${D.marks[kind] === "diff" ? `a diff from ${lanes[lane].name} merged at home`
        : `write notice: ${lanes[lane].name}'s copy invalidated`} at ${fmtMs(t)}`;
    }
    if (what === "band") {
      const [s, e, kind, lane] = item;
      const text = D.bands[kind] === "copy" ? `${lanes[lane].name} holds a copy` : `${lanes[lane].name} twinned it and writes`;
      return `${where}: ${text}\nfrom ${fmtMs(s)} to ${e === null ? "the end" : fmtMs(e)}`;
    }
    const [s, e, kind, holders] = item;
    const who = holders.map((h) => lanes[h].name).join(", ");
    const text = { owned: `owned by ${who}`, shared: `at home, read copies: ${who}`, home: "at home, no copies",
                   lost: "lost", release: "release-consistency page at home" + (who ? `, written by ${who}` : "") }[D.kinds[kind]];
    return `${where}: ${text}\nfrom ${fmtMs(s)} to ${e === null ? "the end" : fmtMs(e)}`;
  }
  $("own-canvas").addEventListener("mousemove", (ev) => {
    const sc = $("own-scroll"), r = sc.getBoundingClientRect();
    const px = ev.clientX - r.left, py = ev.clientY - r.top;
    // marks and bands lie over segments: the last drawn first
    const hit = [...view.ownHits].reverse().find(([xa, xb, ya, yb]) => px >= xa && px <= xb && py >= ya && py <= yb);
    if (!hit) return showTip(ev, "");
    const [, , , , page, count, what, item] = hit;
    showTip(ev, ownText(page, count, what, item));
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
  $("step-next").addEventListener("click", () => moveCursor(view.cursor + 1));
  $("step-prev").addEventListener("click", () => moveCursor(view.cursor - 1));
  $("step-play").addEventListener("click", () => play(!view.playing));
  document.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT" && ev.target.type !== "checkbox" || ev.target.tagName === "SELECT") return;
    if (ev.key === "ArrowRight" || ev.key === "n") moveCursor(view.cursor + 1);
    else if (ev.key === "ArrowLeft" || ev.key === "p") moveCursor(view.cursor - 1);
    else if (ev.key === " ") play(!view.playing);
    else return;
    ev.preventDefault();
  });

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
    $("f-heartbeats").checked = true;
    for (const l of lanes) $("f-lane-" + l.index).checked = true;
    view.zoomed = false;
    play(false);
    view.cursor = -1;
    refresh();
  });

  // --- the legend: every colour the diagrams use, each with what it means -------------------------
  function legendItem(parent, color, text, shape) {
    const item = document.createElement("span");
    item.className = "lg";
    const sw = document.createElement("span");
    sw.className = "sw " + (shape || "");
    sw.dataset.color = color.toLowerCase();
    if (shape === "tri") sw.style.borderTopColor = color; else sw.style.background = color;
    item.appendChild(sw);
    item.appendChild(document.createTextNode(text));
    parent.appendChild(item);
    return item;
  }
  function buildLegend() {
    const nodes = $("lg-nodes"), states = $("lg-states"), own = $("lg-own");
    for (const l of lanes) legendItem(nodes, l.color, l.name + (l.role === "manager" ? " (manager)" : ""));
    for (const kind of Object.keys(S.states)) {
      const it = legendItem(states, S.states[kind].color, S.states[kind].text, "mark");
      it.querySelector(".sw").style.borderColor = S.outline;
      it.dataset.kind = kind;
    }
    legendItem(states, S.outline, "outline of every state mark", "line");
    const k = S.ownership;
    for (const kind of ["owned", "shared", "twin"]) {
      const it = legendItem(own, lanes.find((l) => l.role !== "manager")?.color || "#888", k[kind].text, kind);
      it.dataset.kind = kind;
    }
    for (const kind of ["home", "release", "lost"]) legendItem(own, k[kind].color, k[kind].text).dataset.kind = kind;
    legendItem(own, k.diff.color, k.diff.text, "tick").dataset.kind = "diff";
    legendItem(own, k.notice.color, k.notice.text, "tri").dataset.kind = "notice";
    legendItem(own, S.cursor, "the step-through cursor", "line").dataset.kind = "cursor";
  }
  function legendColors() {
    return [...document.querySelectorAll("#legend .sw")].map((e) => e.dataset.color);
  }

  function buildControls() {
    D.arrays.forEach((a, i) => {
      const o = document.createElement("option");
      o.value = i; o.textContent = `${arrays[i].short} (${a.name}: pages ${a.first}-${a.first + a.count - 1})`;
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
    const joins = D.msgs.filter((m) => joinTypes.has(m[4])).length;
    $("summary").textContent = `${D.files.length} trace file(s), ${lanes.length - nodes} manager(s), ` +
      `${nodes} node(s), ${D.msgs.length} messages (${joins} of joining and heartbeats, hidden), ` +
      `${D.steps.length} state changes, ${fmtMs(D.end)}; times on ${D.reference}'s clock`;
  }

  // the tests' handle: what is shown, and a way to set the filters and step
  window.dsmView = {
    stats: () => ({ lanes: view.visibleLanes.size, arrows: view.msgs.length, steps: view.steps.length,
                    rows: view.rows.length, drawn: view.drawn, bundled: view.bundled,
                    labels: view.labels.length, labelsLeftOut: view.labelsLeftOut }),
    types: () => [...new Set(view.msgs.map((i) => D.types[D.msgs[i][4]]))].sort(),
    firstArrowMidpoint() {  // in the diagram canvas's own coordinates
      const h = view.hits.find((hit) => hit[4] === "m");
      if (!h) return null;
      const sc = $("st-scroll");
      return [(h[0] + h[2]) / 2 - sc.scrollLeft, (h[1] + h[3]) / 2 - sc.scrollTop];
    },
    // every colour drawn since the last call, and those the legend shows
    colors() { const out = { drawn: [...drawnColors].sort(), legend: legendColors() }; return out; },
    labelRects: () => view.labels.map((r) => r.slice()),
    rowNames: () => view.rows.map((i) => pageName(D.own[i][0], D.own[i][1])),
    rows: () => view.rows.map((i) => ({ page: D.own[i][0], count: D.own[i][1],
      kinds: [...new Set(D.own[i][2].map((s) => D.kinds[s[2]]))],
      bands: (D.own[i][3] || []).map((b) => D.bands[b[2]]), marks: (D.own[i][4] || []).map((m) => D.marks[m[1]]) })),
    cursor: () => ({ index: view.cursor, t: cursorTime(), text: $("step-info").textContent,
                     scrollTop: $("st-scroll").scrollTop }),
    step(n) { moveCursor(view.cursor + n); return this.cursor(); },
    setFilters(f) {
      if ("page" in f) $("f-page").value = f.page;
      if ("array" in f) $("f-array").value = f.array === "" ? "" : String(D.arrays.findIndex((a) => a.name === f.array));
      if ("from" in f) $("f-from").value = f.from;
      if ("to" in f) $("f-to").value = f.to;
      if ("hideHeartbeats" in f) $("f-heartbeats").checked = f.hideHeartbeats;
      if ("big" in f) $("f-big").checked = f.big;
      if ("nodes" in f) for (const l of lanes) $("f-lane-" + l.index).checked = f.nodes.includes(l.name);
      refresh();
      return this.stats();
    },
  };
  buildLegend();
  buildControls();
  refresh();
})();
