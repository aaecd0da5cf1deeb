// The hubscout page: dataset → ranking → transport plan → distillation → download, on the /v1 API.
// State lives in the URL hash (#ds=…&rank=…&distil=…), so a reload or a shared link comes back to the same results.
"use strict";

const $ = (sel) => document.querySelector(sel);
const KEY_STORE = "hubscout.apiKey";
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const state = {info: null, dataset: null, ranking: null, selected: new Set(), planTeacher: null, sortBy: null};
// One display name per metric, wherever a metric is named (checkboxes, table, notes).
const METRIC_NAMES = {ot: "OT relatedness", leep: "LEEP", nce: "NCE", hscore: "H-score", logme: "LogME"};
const metricName = (m) => METRIC_NAMES[m] || m;

// ------------------------------------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

function authHeaders() {
  const key = localStorage.getItem(KEY_STORE);
  return key ? {Authorization: `Bearer ${key}`} : {};
}

async function api(path, {method = "GET", json = undefined, body = undefined} = {}) {
  const headers = authHeaders();
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  const r = await fetch(path, {method, headers, body});
  if (!r.ok) {
    let detail = `${r.status} ${r.statusText}`;
    try { const p = await r.json(); detail = p.detail || p.title || detail; } catch (_) { /* not JSON */ }
    if (r.status === 401) showAuth(true);
    throw new ApiError(r.status, detail);
  }
  return r.headers.get("content-type")?.includes("json") ? r.json() : r;
}

function showError(err) {
  $("#error-text").textContent = err instanceof ApiError ? err.message : `Error: ${err.message || err}`;
  $("#error").hidden = false;
}

function clearError() { $("#error").hidden = true; }

function showAuth(needed) {
  const form = $("#auth");
  form.hidden = !needed && !localStorage.getItem(KEY_STORE);
  $("#api-key").value = localStorage.getItem(KEY_STORE) || "";
  $("#auth-state").textContent = localStorage.getItem(KEY_STORE) ? "saved" : "required";
}

async function busy(button, fn) {
  clearError();
  button.disabled = true;
  try { return await fn(); } catch (e) { showError(e); } finally { button.disabled = waitsForTeachers(button); }
}

// On a first start the server builds its demo teachers while it already answers: ranking and distilling wait.
const NEEDS_TEACHERS = new Set(["rank", "distil"]);
function teachersPending() { return (state.info?.repository?.state ?? "ready") !== "ready"; }
function waitsForTeachers(button) { return NEEDS_TEACHERS.has(button.id) && teachersPending(); }

async function watchBuild() {
  const box = $("#build-progress");
  for (;;) {
    const r = state.info.repository ?? {state: "ready"};
    for (const id of NEEDS_TEACHERS) $(`#${id}`).disabled = r.state !== "ready";
    box.hidden = r.state === "ready";
    box.dataset.state = r.state;
    if (r.state === "ready") return;
    box.querySelector(".bar").style.width = `${r.total ? Math.round(100 * r.built / r.total) : 0}%`;
    box.querySelector(".msg").textContent = r.state === "failed"
      ? `Building the demo teacher repository failed: ${r.error}`
      : `Building the demo teacher repository (first start): ${r.built}/${r.total || "?"} teachers`
        + (r.current ? ` · ${r.current}` : "") + " · ranking opens when they are ready";
    if (r.state === "failed") { box.classList.add("failed"); return; }
    await sleep(2000);
    try { state.info.repository = (await api("/v1/info")).repository; } catch (e) { /* retry on the next tick */ }
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls a job until it ends, drawing its progress into `box` and handing every state to `onUpdate`.
async function watchJob(jobId, box, onUpdate = () => {}) {
  box.hidden = false;
  box.className = "progress";
  box.dataset.status = "queued";
  for (let delay = 300; ; delay = Math.min(delay * 1.3, 1500)) {
    const job = await api(`/v1/jobs/${jobId}`);
    box.querySelector(".bar").style.width = `${Math.round(100 * job.progress)}%`;
    box.querySelector(".msg").textContent = jobText(job);
    box.dataset.status = job.status;
    onUpdate(job);
    if (FINAL.has(job.status)) {
      box.classList.add(job.status);
      if (job.status !== "succeeded") throw new ApiError(0, `${job.kind} job ${job.status}: ${job.error || ""}`);
      return job;
    }
    await sleep(delay);
  }
}

// One line on a job: where a queued one stands and what runs ahead, the real time a finished one took.
function jobText(job) {
  const pctDone = `${Math.round(100 * job.progress)}%`;
  if (job.status === "queued" && job.queue) {
    const q = job.queue;
    const running = q.running.map((r) => `${r.kind} ${Math.round(100 * r.progress)}%`).join(", ");
    return `queued · position ${q.position} · ${running ? `running now: ${running}` : "waiting for a worker"}`
      + (q.queued_ahead ? ` · ${q.queued_ahead} queued ahead` : "") + ` · waited ${secs(job.queued_s)}`;
  }
  if (FINAL.has(job.status) && job.computing_s !== null && job.computing_s !== undefined) {
    return `${job.status} · waited ${secs(job.queued_s)} in the queue, computed ${secs(job.computing_s)}`
      + (job.error ? ` · ${job.error}` : "");
  }
  return `${job.status} · ${pctDone} · ${job.error || job.message}`;
}

function secs(v) { return v === null || v === undefined ? "—" : `${v < 10 ? v.toFixed(1) : Math.round(v)} s`; }

// ------------------------------------------------------------------------------------------------ URL state

function hashState() { return Object.fromEntries(new URLSearchParams(location.hash.slice(1))); }

function setHash(patch) {
  const s = {...hashState(), ...patch};
  for (const k of Object.keys(s)) if (!s[k]) delete s[k];
  history.replaceState(null, "", "#" + new URLSearchParams(s).toString());
}

// ------------------------------------------------------------------------------------------------ 1. dataset

function setDataset(ds) {
  state.dataset = ds;
  const card = $("#dataset-card");
  card.hidden = false;
  const counts = Object.values(ds.class_counts);
  card.innerHTML = "";
  const strong = document.createElement("strong");
  strong.textContent = ds.name;
  card.append(strong, ` · ${ds.n_samples} images of ${ds.image_shape.join("×")} · ${ds.num_classes} classes `
    + `(${Math.min(...counts)}–${Math.max(...counts)} per class): ${ds.classes.join(", ")} `);
  const order = document.createElement("div");
  order.className = "muted class-order";
  order.textContent = "label index order (used by every result and the student's outputs): "
    + ds.classes.map((c, i) => `${i} ${c}`).join(" · ");
  card.append(order);
  const id = document.createElement("span");
  id.className = "id";
  id.textContent = ds.id;
  card.append(id);
  $("#step-rank").classList.remove("locked");
  setHash({ds: ds.id});
}

async function loadDemoTargets() {
  const targets = await api("/v1/demo-targets");
  const sel = $("#demo-name");
  sel.innerHTML = "";
  for (const t of targets) {
    const o = document.createElement("option");
    o.value = t.name;
    o.textContent = `${t.name} — ${t.classes.length} classes`;
    o.title = t.description;
    sel.append(o);
  }
}

$("#upload-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const file = $("#file").files[0];
  if (!file) return;
  busy($("#upload"), async () => {
    const form = new FormData();
    form.append("file", file);
    setDataset(await api("/v1/datasets", {method: "POST", body: form}));
  });
});

$("#demo-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy($("#demo-create"), async () => {
    setDataset(await api("/v1/datasets/demo", {method: "POST",
      json: {name: $("#demo-name").value, shots: Number($("#demo-shots").value)}}));
  });
});

// ------------------------------------------------------------------------------------------------ 2. ranking

function metricBoxes() {
  const fs = $("#metrics");
  for (const m of state.info.metrics) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = m;
    // The server's defaults (the metric that orders, and OT for the plans), and LogME to compare with.
    box.checked = (state.info.default_metrics || ["ot"]).includes(m) || m === "logme";
    label.append(box, ` ${metricName(m)}`);
    fs.append(label);
  }
}

async function startRanking(button, metrics, extra = {}) {
  await busy(button, async () => {
    if (!metrics.length) throw new Error("choose at least one metric");
    // The server's default metric first when it is chosen: it orders the table (OT, when chosen, gives the plans).
    const primary = (state.info.default_metrics || ["ot"])[0];
    metrics.sort((a, b) => (b === primary) - (a === primary));
    const job = await api("/v1/rankings", {method: "POST", json: {dataset_id: state.dataset.id, metrics, ...extra}});
    setHash({rank: job.id, distil: ""});
    await showRanking(job.id);
  });
}

$("#rank-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  startRanking($("#rank"), [...document.querySelectorAll("#metrics input:checked")].map((b) => b.value));
});

// The shortlist's skipped teachers, ranked too: the same request with the shortlist off (`rank_all`).
$("#rank-all").addEventListener("click", () => {
  const sl = state.ranking.shortlist;
  startRanking($("#rank-all"), [...state.ranking.metrics], sl.rank_all || {shortlist: 0});
});

async function showRanking(jobId) {
  const job = await watchJob(jobId, $("#rank-progress"));
  const ranking = await api(job.links.result);
  state.ranking = ranking;
  state.rankJob = job;
  state.sortBy = ranking.primary;
  renderRanking(ranking);
  state.selected = new Set(ranking.teachers.length ? [ranking.teachers[0].teacher_id] : []);
  syncSelection();
  $("#step-distil").classList.remove("locked");
  if (ranking.teachers.length && ranking.teachers[0].plan) showPlan(ranking.teachers[0].teacher_id);
}

function fmt(v) {
  if (v === null || v === undefined || !isFinite(v)) return "n/a";
  return Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(4);
}

// Each teacher's place under metric m (1 = best), ties sharing a place; non-finite values last.
function ranksUnder(r, m) {
  const sign = r.directions[m] === "lower" ? 1 : -1;
  const key = (t) => { const v = t.scores[m]?.value; return v === null || v === undefined || !isFinite(v) ? Infinity : sign * v; };
  const sorted = [...r.teachers].sort((a, b) => key(a) - key(b));
  const out = {};
  sorted.forEach((t, i) => { out[t.teacher_id] = i > 0 && key(t) === key(sorted[i - 1]) ? out[sorted[i - 1].teacher_id] : i + 1; });
  return out;
}

// Kendall's τ between two rankings of the same teachers: 1 = the same order, -1 = reversed.
function kendall(a, b, ids) {
  let s = 0, n = 0;
  for (let i = 0; i < ids.length; i++) for (let j = i + 1; j < ids.length; j++) {
    const x = Math.sign(a[ids[i]] - a[ids[j]]), y = Math.sign(b[ids[i]] - b[ids[j]]);
    s += x * y; n += 1;
  }
  return n ? s / n : 1;
}

function renderRanking(r) {
  const table = $("#ranking-table");
  table.hidden = false;
  const arrows = (m) => (r.directions[m] === "lower" ? "↓ better" : "↑ better");
  const ranks = Object.fromEntries(r.metrics.map((m) => [m, ranksUnder(r, m)]));
  const sortBy = r.metrics.includes(state.sortBy) ? state.sortBy : r.primary;
  table.dataset.sort = sortBy;
  table.tHead.innerHTML = "";
  const hr = table.tHead.insertRow();
  const th = (text) => { const el = document.createElement("th"); el.textContent = text; hr.append(el); return el; };
  th(`# (${metricName(sortBy)})`);
  th("teacher");
  for (const m of r.metrics) {
    const el = document.createElement("th");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "sort" + (m === sortBy ? " active" : "");
    btn.dataset.metric = m;
    btn.title = `sort by ${metricName(m)}`;
    btn.textContent = `${metricName(m)} (${arrows(m)})${m === sortBy ? " ▾" : ""}`;
    btn.addEventListener("click", () => { state.sortBy = m; renderRanking(r); syncSelection(); });
    el.append(btn);
    el.setAttribute("aria-sort", m === sortBy ? "ascending" : "none");
    hr.append(el);
  }
  th("top correspondences");
  th("plan");
  th("distil");
  const body = table.tBodies[0];
  body.innerHTML = "";
  const vals = r.teachers.map((t) => t.scores[sortBy]?.value).filter((v) => v !== null && isFinite(v));
  const lo = Math.min(...vals), hi = Math.max(...vals);
  const order = [...r.teachers].sort((a, b) => ranks[sortBy][a.teacher_id] - ranks[sortBy][b.teacher_id]);
  for (const t of order) {
    const tr = body.insertRow();
    tr.dataset.teacher = t.teacher_id;
    if (ranks[sortBy][t.teacher_id] === 1) tr.className = "best";
    tr.insertCell().textContent = String(ranks[sortBy][t.teacher_id]);
    const name = tr.insertCell();
    const b = document.createElement("strong");
    b.textContent = t.teacher_id;
    name.append(b);
    if (t.name && t.name !== t.teacher_id) name.append(document.createElement("br"), t.name);
    for (const m of r.metrics) {
      const td = tr.insertCell();
      td.className = "num";
      td.dataset.metric = m;
      const v = t.scores[m]?.value;
      td.append(fmt(v));
      if (m === sortBy && hi > lo && v !== null && isFinite(v)) {
        // Longer bar = better teacher, whichever way the metric points.
        const good = r.directions[m] === "lower" ? (hi - v) / (hi - lo) : (v - lo) / (hi - lo);
        const bar = document.createElement("span");
        bar.className = "scorebar";
        bar.style.width = `${Math.round(6 + 54 * good)}px`;
        td.append(bar);
      }
      if (r.metrics.length > 1) {
        const k = document.createElement("span");
        k.className = "mrank";
        k.title = `rank under ${metricName(m)}`;
        k.textContent = `#${ranks[m][t.teacher_id]}`;
        td.append(" ", k);
      }
    }
    const corr = tr.insertCell();
    corr.className = "corr";
    const lines = Object.entries(t.correspondences || {}).filter(([, pairs]) => pairs.length)
      .map(([c, pairs]) => `${c} ← ${pairs[0][0]} ${Math.round(100 * pairs[0][1])}%`);
    corr.textContent = (lines.slice(0, 4).join("; ") + (lines.length > 4 ? `; +${lines.length - 4} more` : "")) || "—";
    const planCell = tr.insertCell();
    if (t.plan) {
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = "small plan-btn";
      btn.dataset.teacher = t.teacher_id;
      btn.textContent = "heatmap";
      btn.addEventListener("click", () => showPlan(t.teacher_id));
      planCell.append(btn);
    } else {
      planCell.textContent = "—";
    }
    const pick = tr.insertCell();
    const box = document.createElement("input");
    box.type = "checkbox";
    box.className = "pick";
    box.value = t.teacher_id;
    box.setAttribute("aria-label", `distil from ${t.teacher_id}`);
    box.addEventListener("change", () => {
      box.checked ? state.selected.add(t.teacher_id) : state.selected.delete(t.teacher_id);
      syncSelection();
    });
    pick.append(box);
  }
  renderAgreement(r, ranks);
  const note = $("#rank-note");
  note.hidden = false;
  const job = state.rankJob;
  const took = job && job.computing_s !== null && job.computing_s !== undefined
    ? `waited ${secs(job.queued_s)} in the queue, computed ${secs(job.computing_s)}`
    : `ranked in ${r.elapsed_s.toFixed(2)} s`;
  note.textContent = `${r.teachers.length} teachers for ${r.n_samples} images, ordered by ${metricName(sortBy)} `
    + `(click a metric to order by it); ${took}` + (r.teachers.every((t) => t.cached) ? " (all from the cache)." : ".");
  renderSkipped(r.shortlist);
}

// Where the metrics agree: each one's best teacher and its rank correlation with the primary metric.
function renderAgreement(r, ranks) {
  const box = $("#agreement");
  box.hidden = r.metrics.length < 2 || r.teachers.length < 2;
  if (box.hidden) return;
  const ids = r.teachers.map((t) => t.teacher_id);
  const best = (m) => ids.find((id) => ranks[m][id] === 1);
  const p = r.primary;
  const parts = r.metrics.filter((m) => m !== p).map((m) => {
    const tau = kendall(ranks[p], ranks[m], ids);
    const same = best(m) === best(p);
    return `${metricName(m)}: ${same ? "same best teacher" : `best is ${best(m)}`}, `
      + `rank agreement τ = ${tau.toFixed(2)}`;
  });
  box.textContent = `Agreement with ${metricName(p)} (best: ${best(p)}). ` + parts.join(" · ")
    + ". τ = 1: the same order, 0: unrelated, −1: reversed; the #k beside each score is the teacher's rank "
    + "under that metric.";
  box.dataset.agree = String(r.metrics.every((m) => best(m) === best(p)));
}

function renderSkipped(sl) {
  const box = $("#rank-skipped");
  box.hidden = !(sl && sl.mode !== "exhaustive" && sl.not_run_count > 0);
  if (box.hidden) return;
  const names = sl.not_run.slice(0, 8).join(", ") + (sl.not_run_count > 8 ? ", …" : "");
  box.querySelector(".msg").textContent = `${sl.not_run_count} of ${sl.considered + sl.unspecified_run.length} `
    + `teachers were not ranked: ${sl.skip_reason || "ruled out by their specifications"}. Skipped: ${names}. `;
}

function syncSelection() {
  for (const box of document.querySelectorAll("#ranking-table input.pick")) box.checked = state.selected.has(box.value);
  const ids = [...state.selected];
  $("#distil-teachers").textContent = ids.length ? ids.join(", ") : "none ticked (tick one, or train CE only)";
}

function showPlan(teacherId) {
  const t = state.ranking.teachers.find((x) => x.teacher_id === teacherId);
  if (!t || !t.plan) return;
  state.planTeacher = teacherId;
  for (const b of document.querySelectorAll(".plan-btn")) b.classList.toggle("active", b.dataset.teacher === teacherId);
  const sec = $("#step-plan");
  sec.hidden = false;
  sec.dataset.teacher = teacherId;
  $("#plan-title").textContent = `${teacherId} → your classes`;
  const p = t.plan;
  const note = $("#plan-note");
  note.hidden = !p.truncated;
  if (p.truncated) {
    const kept = p.kept_share.reduce((a, b) => a + b, 0) / Math.max(p.kept_share.length, 1);
    note.textContent = `The teacher has ${p.teacher_num_classes} classes: the plan keeps the `
      + `${p.teacher_classes.length} that carry the most mass (${Math.round(100 * kept)}% of it on average)`
      + (p.target_num_classes > p.target_classes.length
        ? `, for the first ${p.target_classes.length} of your ${p.target_num_classes} classes.` : ".");
  }
  drawPlan(p, false);
  fillClassList($("#correspondences"), t.correspondences, pairLine(" ← ", "share", (v) => `${Math.round(100 * v)}%`));
  fillClassList($("#matches"), t.matches, pairLine(" ≈ ", "cost", (v) => `(cost ${v.toFixed(3)})`));
}

// A class list's line: the teacher classes of [name, number] pairs after `sep`, each number in a span of `cls`.
function pairLine(sep, cls, show) {
  return (li, pairs) => {
    li.append(sep);
    pairs.forEach(([name, v], i) => {
      if (i) li.append(", ");
      li.append(name + " ");
      const s = document.createElement("span");
      s.className = cls;
      s.textContent = show(v);
      li.append(s);
    });
    if (!pairs.length) li.append("—");
  };
}

// One list item per target class: its name in bold, then what ``line`` appends (names only ever as text).
function fillClassList(ul, byClass, line) {
  ul.innerHTML = "";
  for (const [c, pairs] of Object.entries(byClass || {})) {
    const li = document.createElement("li");
    const b = document.createElement("strong");
    b.textContent = c;
    li.append(b);
    line(li, pairs);
    ul.append(li);
  }
}

const PLAN_ROWS = 25;

// A long plan (an ImageNet teacher keeps 60 rows) first shows its heaviest rows only, in their stored order.
function drawPlan(p, all) {
  const more = $("#plan-more");
  let shown = p;
  if (!all && p.teacher_classes.length > PLAN_ROWS) {
    const mass = p.share.map((r) => r.reduce((a, b) => a + b, 0));
    const keep = mass.map((m, i) => [m, i]).sort((a, b) => b[0] - a[0]).slice(0, PLAN_ROWS).map((x) => x[1])
      .sort((a, b) => a - b);
    shown = {...p, teacher_classes: keep.map((i) => p.teacher_classes[i]), share: keep.map((i) => p.share[i])};
  }
  more.hidden = p.teacher_classes.length <= PLAN_ROWS;
  more.textContent = all ? `show the top ${PLAN_ROWS} rows` : `show all ${p.teacher_classes.length} rows`;
  more.onclick = () => drawPlan(p, !all);
  charts.drawHeatmap($("#plan-svg"), shown);
}

// ------------------------------------------------------------------------------------------------ 3. distillation

$("#distil-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy($("#distil"), async () => {
    const ceOnly = $("#ce-only").checked;
    const body = {dataset_id: state.dataset.id, teacher_ids: ceOnly ? [] : [...state.selected], ce_only: ceOnly};
    if (!ceOnly && !body.teacher_ids.length) throw new Error("tick at least one teacher in the ranking");
    const arch = $("#student-arch").value.trim();
    if (arch) body.student_arch = arch;
    if ($("#epochs").value) body.epochs = Number($("#epochs").value);
    if ($("#min-steps").value !== "") body.min_steps = Number($("#min-steps").value);
    const job = await api("/v1/distillations", {method: "POST", json: body});
    setHash({distil: job.id});
    await showDistillation(job.id);
  });
});

async function showDistillation(jobId) {
  $("#student-card").hidden = true;
  $("#curves").hidden = false;
  let cfg = {};
  const draw = (curves) => charts.drawCurves($("#loss-svg"), $("#acc-svg"), curves || {}, cfg);
  draw({});
  let last = -1;
  const job = await watchJob(jobId, $("#distil-progress"), (j) => {
    cfg = j.params?.config || {};
    lossNote(cfg);
    const n = j.curves?.epoch?.length ?? 0;
    if (n !== last) { last = n; draw(j.curves); $("#curves").dataset.epochs = n; }
  });
  const student = await api(job.links.result);
  draw(student.metrics.curves);
  $("#curves").dataset.epochs = student.metrics.curves?.epoch?.length ?? 0;
  renderStudent(student);
}

// The loss panel's scale: total = CE + λ·τ²·OT, so the OT term is drawn as it enters the total.
function lossNote(cfg) {
  const note = $("#loss-note");
  if (cfg.ce_only) { note.textContent = "Cross-entropy only: no teacher term."; return; }
  if (cfg.lam === undefined || cfg.tau === undefined) return;
  const scale = cfg.lam * cfg.tau * cfg.tau;
  note.textContent = `total loss = cross-entropy + λ·τ²·OT, with λ = ${cfg.lam}, τ = ${cfg.tau}: the OT term is `
    + `drawn multiplied by λ·τ² = ${+scale.toFixed(3)}, as it enters the total (τ² keeps the softened term's `
    + "gradients at the size of the cross-entropy's), so the two drawn terms add up to the total.";
}

function pct(v) { return v === null || v === undefined ? "n/a" : `${(100 * v).toFixed(1)}%`; }

function listStudentSizes(sizes) {
  // The sizes by name with their parameter counts, as the API lists them (at 10 classes, RGB).
  const list = $("#archs");
  for (const z of sizes) {
    const o = document.createElement("option");
    o.value = z.name;
    o.label = `${z.name}: ${z.params.toLocaleString("en")} parameters (${z.arch})`;
    list.append(o);
  }
}

function studentLines(s) {
  // What the result says beside the accuracy: the CE-only control, the student's size, the schedule run.
  const lines = [];
  const ce = s.ce_only;
  if (ce && ce.same_student) lines.push("This is the cross-entropy-only student.");
  else if (ce) lines.push(`CE-only control (same student, split, schedule and seed${ce.cached ? ", cached" : ""}): `
    + `validation accuracy ${pct(ce.val_accuracy)}; the teachers added `
    + `${s.gain_vs_ce === null || s.gain_vs_ce === undefined ? "n/a" : `${(100 * s.gain_vs_ce).toFixed(1)} points`}.`);
  if (s.student) lines.push(`${s.student.size ? `Size ${s.student.size}, ` : ""}`
    + `${s.student.params.toLocaleString("en")} parameters`
    + (s.student.teacher_params ? ` (smallest teacher ${s.student.teacher_params.toLocaleString("en")})` : "")
    + `${s.student.larger_than_teachers ? ": larger than its teacher, as asked" : ""}.`);
  if (s.schedule) lines.push(`Schedule: ${s.schedule.note}.`);
  return lines;
}

function renderStudent(s) {
  const card = $("#student-card");
  card.hidden = false;
  card.innerHTML = "";
  const m = s.metrics;
  const strong = document.createElement("strong");
  strong.textContent = `Student ${s.student_arch}`;
  card.append(strong, ` from ${s.teacher_ids.join(", ") || "no teacher (cross-entropy only)"}: `
    + `train accuracy ${pct(m.train_accuracy)}, validation accuracy ${pct(m.val_accuracy)} `
    + `(${m.n_val} held-out images), ${m.epochs} epochs / ${m.steps} steps in ${m.elapsed_s.toFixed(1)} s. `
    + `Outputs in label index order: ${(s.config.classes || []).map((c, i) => `${i} ${c}`).join(" · ")}. `);
  for (const line of studentLines(s)) {
    const p = document.createElement("p");
    p.className = "student-line";
    p.textContent = line;
    card.append(p);
  }
  const btn = document.createElement("button");
  btn.id = "download";
  btn.type = "button";
  btn.textContent = `Download student (${(s.archive_bytes / 1e6).toFixed(1)} MB zip)`;
  btn.addEventListener("click", () => busy(btn, () => download(s)));
  card.append(btn);
}

async function download(s) {
  // A plain link cannot carry the Authorization header: fetch the archive and hand it over as a blob.
  const r = await api(s.download);
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = `student-${s.id}.zip`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ------------------------------------------------------------------------------------------------ start

$("#error-close").addEventListener("click", clearError);
$("#auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("#api-key").value.trim();
  key ? localStorage.setItem(KEY_STORE, key) : localStorage.removeItem(KEY_STORE);
  showAuth(state.info?.auth_required);
  start();
});

let started = false;

// Another hash in an open tab (a pasted link, back/forward) is another state: show it from scratch.
window.addEventListener("hashchange", () => {
  if (!started) return;
  resetPage();
  loadFromHash().catch(showError);
});

function resetPage() {
  Object.assign(state, {dataset: null, ranking: null, rankJob: null, selected: new Set(), planTeacher: null,
                        sortBy: null});
  for (const sel of ["#dataset-card", "#rank-progress", "#rank-note", "#ranking-table", "#agreement", "#step-plan",
                     "#distil-progress", "#curves", "#student-card"]) $(sel).hidden = true;
  $("#step-rank").classList.add("locked");
  $("#step-distil").classList.add("locked");
  clearError();
}

async function loadFromHash() {
  const h = hashState();
  if (h.ds) setDataset(await api(`/v1/datasets/${encodeURIComponent(h.ds)}`));
  if (h.rank) await showRanking(h.rank);
  if (h.distil) await showDistillation(h.distil);
  document.body.dataset.loaded = location.hash;
}

async function start() {
  try {
    if (!state.info) {
      state.info = await api("/v1/info");
      $("#version").textContent = state.info.version;
      listStudentSizes(state.info.student_sizes || []);
      showAuth(state.info.auth_required);
      metricBoxes();
      watchBuild();
    }
    if (state.info.auth_required && !localStorage.getItem(KEY_STORE)) return;  // wait for a key
    if (started) return;
    started = true;
    await loadDemoTargets();
    await loadFromHash();
  } catch (e) {
    started = false;
    showError(e);
  }
}

document.body.dataset.ready = "1";
start();
