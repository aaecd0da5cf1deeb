// Two small SVG charts, no library: the transport plan heatmap and the training curves.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs = {}, parent = null, text = null) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== null) el.textContent = text;
  if (parent) parent.appendChild(el);
  return el;
}

function clearSvg(svg) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
}

// White → deep blue, perceptually even enough for shares in [0, 1].
function shareColour(v) {
  const t = Math.sqrt(Math.max(0, Math.min(1, v)));  // small shares stay visible
  const from = [255, 255, 255], to = [23, 63, 150];
  const c = from.map((f, i) => Math.round(f + (to[i] - f) * t));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function clip(s, n) {
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

// plan: {teacher_classes, target_classes, share[rows][cols]} (the API's TransportPlan).
function drawHeatmap(svg, plan) {
  clearSvg(svg);
  const rows = plan.teacher_classes, cols = plan.target_classes;
  const cell = Math.max(14, Math.min(52, Math.floor(560 / Math.max(cols.length, 1))));
  const cellH = Math.max(12, Math.min(32, cell));
  const rowLabel = Math.min(170, 12 + 6.4 * Math.max(...rows.map((r) => clip(r, 26).length)));
  const colLabel = Math.min(130, 16 + 4.7 * Math.max(...cols.map((c) => clip(c, 24).length)));
  const left = rowLabel + 8, top = colLabel + 8;
  const width = left + cell * cols.length + 70, height = top + cellH * rows.length + 12;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const showNumbers = cell >= 30 && cellH >= 18;
  cols.forEach((c, j) => {
    const x = left + j * cell + cell / 2;
    svgEl("text", {x, y: top - 6, transform: `rotate(-45 ${x} ${top - 6})`, "class": "col-label"}, svg, clip(c, 24));
  });
  rows.forEach((r, i) => {
    const y = top + i * cellH + cellH / 2 + 4;
    svgEl("text", {x: left - 6, y, "text-anchor": "end", "class": "row-label"}, svg, clip(r, 26));
    cols.forEach((c, j) => {
      const v = plan.share[i][j];
      const rect = svgEl("rect", {x: left + j * cell, y: top + i * cellH, width: cell - 1, height: cellH - 1,
                                  fill: shareColour(v), "class": "cell"}, svg);
      svgEl("title", {}, rect, `${r} → ${c}: ${(100 * v).toFixed(1)}%`);
      if (showNumbers && v >= 0.05) {
        // Inline style: the stylesheet's text colour would win over a fill attribute.
        svgEl("text", {x: left + j * cell + cell / 2, y: top + i * cellH + cellH / 2 + 4, "text-anchor": "middle",
                       style: `fill:${v > 0.45 ? "#fff" : "#1d2430"}`}, svg, Math.round(100 * v).toString());
      }
    });
  });
  // Colour scale.
  const sx = left + cell * cols.length + 18, sh = Math.max(60, Math.min(160, cellH * rows.length));
  for (let k = 0; k < 20; k++) {
    svgEl("rect", {x: sx, y: top + sh * (1 - (k + 1) / 20), width: 12, height: sh / 20 + 0.5,
                   fill: shareColour((k + 0.5) / 20)}, svg);
  }
  svgEl("text", {x: sx + 16, y: top + 8}, svg, "100%");
  svgEl("text", {x: sx + 16, y: top + sh}, svg, "0%");
}

function niceTicks(lo, hi, n = 5) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(+v.toFixed(10));
  return out;
}

// series: [{name, xs, ys, colour, dash?}]; ys may hold nulls (skipped).
function drawLines(svg, series, {title = "", ylabel = "", ymin = null, ymax = null, xlabel = "epoch"} = {}) {
  clearSvg(svg);
  const W = svg.clientWidth || 480, H = svg.clientHeight || 240;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svgEl("text", {x: 48, y: 15, "font-weight": "600"}, svg, title);
  // The legend flows left to right under the title, wrapping where the next entry would not fit: entries are
  // measured as drawn, so none overlaps another or the title whatever the width.
  const legend = svgEl("g", {"class": "legend"}, svg);
  let lx = 48, ly = 32;
  for (const s of series) {
    const item = svgEl("g", {"class": "legend-item"}, legend);
    svgEl("line", {x1: 0, x2: 16, y1: -4, y2: -4, stroke: s.colour, "stroke-width": 2,
                   "stroke-dasharray": s.dash || ""}, item);
    const label = svgEl("text", {x: 20, y: 0, style: `fill:${s.colour}`}, item, s.name);
    const w = 20 + (label.getComputedTextLength ? label.getComputedTextLength() : 6.5 * s.name.length) + 14;
    if (lx > 48 && lx + w > W - 12) { lx = 48; ly += 15; }
    item.setAttribute("transform", `translate(${lx} ${ly})`);
    lx += w;
  }
  const m = {l: 48, r: 12, t: ly + 10, b: 34};
  const pts = series.flatMap((s) => s.xs.map((x, i) => [x, s.ys[i]]).filter((p) => p[1] !== null && isFinite(p[1])));
  if (!pts.length) {
    svgEl("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, svg, "waiting for the first epoch…");
    return;
  }
  const x0 = Math.min(...pts.map((p) => p[0]), 1), x1 = Math.max(...pts.map((p) => p[0]), 2);
  let y0 = ymin ?? Math.min(...pts.map((p) => p[1])), y1 = ymax ?? Math.max(...pts.map((p) => p[1]));
  if (ymin === null) y0 = Math.min(0, y0);
  if (y1 <= y0) y1 = y0 + 1;
  const X = (x) => m.l + (W - m.l - m.r) * (x - x0) / (x1 - x0);
  const Y = (y) => H - m.b - (H - m.t - m.b) * (y - y0) / (y1 - y0);
  const grid = svgEl("g", {"class": "grid"}, svg), axis = svgEl("g", {"class": "axis"}, svg);
  for (const t of niceTicks(y0, y1, 4)) {
    svgEl("line", {x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t)}, grid);
    svgEl("text", {x: m.l - 6, y: Y(t) + 4, "text-anchor": "end"}, axis, String(+t.toFixed(3)));
  }
  for (const t of niceTicks(x0, x1, 6).filter((t) => Number.isInteger(t))) {
    svgEl("line", {x1: X(t), x2: X(t), y1: H - m.b, y2: H - m.b + 4}, axis);
    svgEl("text", {x: X(t), y: H - m.b + 16, "text-anchor": "middle"}, axis, String(t));
  }
  svgEl("line", {x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b}, axis);
  svgEl("line", {x1: m.l, x2: m.l, y1: m.t, y2: H - m.b}, axis);
  svgEl("text", {x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle"}, axis, xlabel);
  svgEl("text", {x: 12, y: (m.t + H - m.b) / 2, transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})`,
                 "text-anchor": "middle"}, axis, ylabel);
  for (const s of series) {
    const p = s.xs.map((x, i) => [x, s.ys[i]]).filter((q) => q[1] !== null && isFinite(q[1]));
    if (!p.length) continue;
    svgEl("polyline", {points: p.map(([x, y]) => `${X(x)},${Y(y)}`).join(" "), fill: "none", stroke: s.colour,
                       "stroke-width": 2, "stroke-dasharray": s.dash || "", "class": "series"}, svg);
    if (p.length < 30) for (const [x, y] of p) svgEl("circle", {cx: X(x), cy: Y(y), r: 2.5, fill: s.colour}, svg);
  }
}

// cfg: the job's DistillConfig (lam, tau). The OT term enters the total as λ·τ²·OT: drawn so, the two terms add
// up to the total on one axis instead of a raw OT below 1 beside a total of 4–9.
function drawCurves(lossSvg, accSvg, curves, cfg = {}) {
  const xs = curves.epoch || [];
  const scale = cfg.lam !== undefined && cfg.tau !== undefined ? cfg.lam * cfg.tau * cfg.tau : null;
  const ot = (curves.ot || []).map((v) => (v === null || scale === null ? v : v * scale));
  drawLines(lossSvg, [
    {name: "total loss", xs, ys: curves.loss || [], colour: "#2457c5"},
    {name: "cross-entropy", xs, ys: curves.ce || [], colour: "#98a2b3", dash: "4 3"},
    {name: scale === null ? "OT term" : "λ·τ²·OT term", xs, ys: ot, colour: "#e07b00", dash: "2 3"},
  ], {title: "loss", ylabel: "loss"});
  drawLines(accSvg, [
    {name: "train", xs, ys: curves.train_acc || [], colour: "#2457c5"},
    {name: "validation", xs, ys: curves.val_acc || [], colour: "#067647"},
  ], {title: "accuracy", ylabel: "accuracy", ymin: 0, ymax: 1});
}

window.charts = {drawHeatmap, drawCurves, drawLines, shareColour};
