// hpo dashboard: one page over the read-only JSON views of orchestrator/dashboard/app.py. Charts are Plotly's
// (plotly.min.js ships with the plotly package); this script only fetches, routes and lays out.
// Routes: #/runs (every run under the root, overlay) and #/run/NAME/RUN_ID/VIEW[?trials=..&metric=..].
"use strict";

const VIEWS = [
  ["trials", "Trials"], ["curves", "Curves"], ["parameters", "Parameters"], ["importance", "Importance"],
  ["pareto", "Pareto"], ["lineage", "Lineage"], ["ledger", "Ledger"], ["spec", "Run"],
];
const POLL_MS = 1000; // the page asks for the run's version this often; a view reloads only when it changed
const PAGE_ROWS = 100;
const PARCOORDS_LINES = 1000;
const state = {
  route: null, version: null, summary: null, busy: false,
  table: { data: null, sort: null, desc: false, filter: "", page: 0 },
  overlay: new Set(),
};
const $ = (id) => document.getElementById(id);
// A view draws after its fetch returns; by then the user (or a poll's redraw) may have moved to another route:
// a stale draw must not replace the page that is now shown.
const stale = (r) => state.route !== r;

async function get(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (!response.ok) {
    let message = `${response.status}`;
    try { message += `: ${(await response.json()).error}`; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response.json();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "onclick" || key === "oninput" || key === "onchange") node[key] = value;
    else if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function fmt(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number" && !Number.isInteger(value)) return Math.abs(value) >= 1e4 || Math.abs(value) < 1e-3 ? value.toExponential(3) : value.toPrecision(5);
  return String(value);
}

function route() {
  const [path, query] = (location.hash.slice(1) || "").split("?");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "run" && parts.length >= 3) {
    return { kind: "run", name: parts[1], runId: parts[2], view: parts[3] || "trials", query: new URLSearchParams(query || "") };
  }
  return { kind: "runs", query: new URLSearchParams(query || "") };
}

function runPath(r, view, query) {
  return `#/run/${r.name}/${r.runId}/${view}` + (query ? `?${query}` : "");
}

function api(r, view, query) {
  return `api/run/${encodeURIComponent(r.name)}/${encodeURIComponent(r.runId)}/${view}` + (query ? `?${query}` : "");
}

function tabs(r) {
  const nav = $("tabs");
  nav.replaceChildren();
  nav.append(el("a", { href: "#/runs", class: r.kind === "runs" ? "active" : "" }, "Runs"));
  if (r.kind !== "run") return;
  for (const [view, label] of VIEWS) {
    if (view === "pareto" && state.summary && !state.summary.objectives.length) continue;
    if (view === "lineage" && state.summary && !state.summary.pbt) continue;
    nav.append(el("a", { href: runPath(r, view), class: view === r.view ? "active" : "", "data-view": view }, label));
  }
}

function header(summary) {
  $("run-title").textContent = summary ? `${summary.name} / ${summary.run_id}` : "";
  const status = $("run-status");
  status.textContent = summary ? summary.status : "";
  status.className = "status " + (summary ? summary.status : "");
  status.hidden = !summary;
  $("run-count").textContent = summary ? `${summary.trials}${summary.total ? " / " + summary.total : ""} trials (${summary.running} running)` : "";
  $("run-best").textContent = summary && summary.best !== null ? `best ${summary.metric} ${fmt(summary.best)} (${summary.mode})` : "";
}

function problem(error) {
  $("view").replaceChildren(el("p", { class: "muted", "data-testid": "problem" }, String(error.message || error)));
}

// --- views ---------------------------------------------------------------------------------------------------
async function showRuns(r) {
  const listing = await get("api/runs");
  if (stale(r)) return;
  $("root").textContent = `storage: ${listing.root}`;
  const rows = listing.runs.map((run) => {
    const key = `${run.name}/${run.run_id}`;
    const box = el("input", { type: "checkbox", "data-key": key, onchange: (e) => { e.target.checked ? state.overlay.add(key) : state.overlay.delete(key); drawOverlay(); } });
    box.checked = state.overlay.has(key);
    return el("tr", {}, el("td", {}, box), el("td", {}, el("a", { href: `#/run/${key}/trials` }, run.name)), el("td", {}, run.run_id),
      el("td", {}, el("span", { class: "status " + run.status }, run.status)), el("td", {}, run.trials),
      el("td", {}, run.best === null ? "" : `${fmt(run.best)} ${run.metric} (${run.mode})`), el("td", {}, age(run.run_id, run.time)));
  });
  const table = el("table", { "data-testid": "runs" },
    el("thead", {}, el("tr", {}, ...["overlay", "job", "run", "status", "trials", "best", "age"].map((c) => el("th", {}, c)))),
    el("tbody", {}, ...rows));
  $("view").replaceChildren(el("h3", {}, `Runs (${listing.runs.length})`), table,
    el("h3", {}, "Overlay: best so far"), el("p", { class: "muted" }, "Tick runs of one job to compare them."),
    el("div", { class: "grid" }, el("div", { id: "overlay-trials", class: "chart" }), el("div", { id: "overlay-wall", class: "chart" })));
  drawOverlay();
}

function age(runId, time) {
  const m = /^(\d{4})(\d{2})(\d{2})-(\d{2})(\d{2})(\d{2})/.exec(runId);
  if (!m) return time || "";
  const seconds = (Date.now() - Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6])) / 1000;
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

async function drawOverlay() {
  const keys = [...state.overlay];
  const data = keys.length ? await get(`api/overlay?runs=${encodeURIComponent(keys.join(","))}`) : { runs: [] };
  const byTrials = data.runs.map((run) => ({ x: run.trials, y: run.best, name: run.key, mode: "lines", line: { shape: "hv" } }));
  const byWall = data.runs.map((run) => ({ x: run.wall_s, y: run.best, name: run.key, mode: "lines", line: { shape: "hv" } }));
  if (!$("overlay-trials")) return;
  Plotly.react("overlay-trials", byTrials, { title: { text: "best so far against trials" }, xaxis: { title: { text: "trials finished" } } }, { responsive: true });
  Plotly.react("overlay-wall", byWall, { title: { text: "best so far against wall time" }, xaxis: { title: { text: "seconds since the first report" } } }, { responsive: true });
}

function trialLink(r, trial) {
  return el("a", { href: runPath(r, "curves", `trials=${trial}`), "data-trial": trial }, trial);
}

function matches(row, columns, tokens) {
  return tokens.every((token) => {
    const m = /^([\w./-]+)(:|>=|<=|>|<|=)(.+)$/.exec(token);
    if (m && columns.includes(m[1])) {
      const cell = row[columns.indexOf(m[1])];
      if (m[2] === ":" || m[2] === "=") return String(cell ?? "").toLowerCase().includes(m[3].toLowerCase());
      const a = Number(cell), b = Number(m[3]);
      if (cell === null || Number.isNaN(a) || Number.isNaN(b)) return false;
      return m[2] === ">" ? a > b : m[2] === "<" ? a < b : m[2] === ">=" ? a >= b : a <= b;
    }
    return row.some((cell) => String(cell ?? "").toLowerCase().includes(token.toLowerCase()));
  });
}

function renderTable(r) {
  const t = state.table, data = t.data;
  if (!data || !$("trial-body")) return;
  const tokens = t.filter.trim().split(/\s+/).filter(Boolean);
  let rows = data.rows.filter((row) => matches(row, data.columns, tokens));
  if (t.sort !== null) {
    const i = t.sort, sign = t.desc ? -1 : 1;
    rows = rows.slice().sort((a, b) => {
      if (a[i] === b[i]) return 0;
      if (a[i] === null) return 1;
      if (b[i] === null) return -1;
      return (a[i] < b[i] ? -1 : 1) * sign;
    });
  }
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
  t.page = Math.min(t.page, pages - 1);
  const shown = rows.slice(t.page * PAGE_ROWS, (t.page + 1) * PAGE_ROWS);
  $("trial-body").replaceChildren(...shown.map((row) => el("tr", {}, ...row.map((cell, i) => {
    const column = data.columns[i];
    if (column === "trial_id") return el("td", {}, trialLink(r, cell));
    if (column === "status") return el("td", {}, el("span", { class: "status " + cell }, cell));
    return el("td", column === "error" ? { class: "error", title: cell ?? "" } : {}, fmt(cell));
  }))));
  $("trial-shown").textContent = `${rows.length} of ${data.rows.length} trials` + (pages > 1 ? `, page ${t.page + 1} of ${pages}` : "");
  $("trial-head").querySelectorAll("th").forEach((th, i) => { th.textContent = data.columns[i] + (t.sort === i ? (t.desc ? " ▼" : " ▲") : ""); });
}

async function showTrials(r, reload) {
  const data = await get(api(r, "trials"));
  if (stale(r)) return;
  state.table.data = data;
  if (!reload || !$("trial-body")) {
    const filter = el("input", { type: "search", placeholder: "filter: text, status:running, lr>0.01", value: state.table.filter, "data-testid": "filter",
      oninput: (e) => { state.table.filter = e.target.value; state.table.page = 0; renderTable(r); } });
    const prev = el("button", { onclick: () => { state.table.page = Math.max(0, state.table.page - 1); renderTable(r); } }, "‹");
    const next = el("button", { onclick: () => { state.table.page += 1; renderTable(r); } }, "›");
    const head = el("tr", { id: "trial-head" }, ...data.columns.map((c, i) => el("th", {
      onclick: () => { const t = state.table; t.desc = t.sort === i ? !t.desc : false; t.sort = i; renderTable(r); },
    }, c)));
    $("view").replaceChildren(el("div", { class: "controls" }, filter, prev, next, el("span", { id: "trial-shown", class: "muted" })),
      el("div", { class: "tablewrap" }, el("table", { "data-testid": "trials" }, el("thead", {}, head), el("tbody", { id: "trial-body" }))));
  } else if ($("trial-head").children.length !== data.columns.length) {
    return showTrials(r, false);
  }
  renderTable(r);
}

async function showCurves(r) {
  const metric = r.query.get("metric") || "";
  const trials = r.query.get("trials") || "";
  const data = await get(api(r, "curves", new URLSearchParams({ metric, trials }).toString()));
  if (stale(r)) return;
  if (!$("curves")) {
    const select = el("select", { id: "curve-metric", onchange: (e) => { location.hash = runPath(r, "curves", new URLSearchParams({ metric: e.target.value, trials }).toString()); } },
      ...data.metrics.map((m) => { const o = el("option", { value: m }, m); o.selected = m === data.metric; return o; }));
    const input = el("input", { type: "search", id: "curve-trials", placeholder: "trials, e.g. trial_0001,trial_0004 (empty: the best 20 and the running)", value: trials, size: 60 });
    const show = el("button", { onclick: () => { location.hash = runPath(r, "curves", new URLSearchParams({ metric: data.metric, trials: input.value.replace(/\s+/g, "") }).toString()); } }, "Show");
    $("view").replaceChildren(el("div", { class: "controls" }, "metric", select, input, show), el("div", { id: "curves", class: "chart", "data-testid": "curves" }));
  }
  const traces = data.curves.map((c) => ({ x: c.x, y: c.y, name: c.trial_id, mode: "lines+markers", marker: { size: 4 } }));
  const stopped = data.curves.filter((c) => c.stopped_early && c.x.length);
  if (stopped.length) {
    traces.push({ x: stopped.map((c) => c.x[c.x.length - 1]), y: stopped.map((c) => c.y[c.y.length - 1]), text: stopped.map((c) => c.trial_id),
      name: "stopped by the scheduler", mode: "markers", marker: { symbol: "x", size: 11, color: "#b03a3a" } });
  }
  Plotly.react("curves", traces, { showlegend: true, title: { text: `${data.metric} by epoch (${data.curves.length} trials)` }, xaxis: { title: { text: "epoch" } }, yaxis: { title: { text: data.metric } } }, { responsive: true });
}

async function showParameters(r) {
  const data = await get(api(r, "parameters"));
  if (stale(r)) return;
  const names = Object.keys(data.params);
  if (!$("parcoords")) {
    $("view").replaceChildren(el("div", { id: "parcoords", class: "chart", "data-testid": "parcoords" }), el("h3", {}, "Slices"), el("div", { id: "slices", class: "grid" }));
  }
  // parallel coordinates of the best PARCOORDS_LINES trials: 10,000 lines take ~8 s to draw in a browser without
  // a GPU (measured) and read as a smear anyway; the slices show every trial
  const scored = data.objective.map((v, i) => [v, i]).filter(([v]) => v !== null).sort((a, b) => (a[0] - b[0]) * (data.mode === "min" ? 1 : -1));
  const chosen = new Set(scored.slice(0, PARCOORDS_LINES).map(([, i]) => i));
  const keep = data.objective.map((_, i) => chosen.has(i));
  const pick = (values) => values.filter((_, i) => keep[i]);
  const dimensions = names.map((name) => {
    const p = data.params[name];
    if (p.numeric) return { label: name, values: pick(p.values) };
    const index = new Map(p.categories.map((c, i) => [c, i]));
    return { label: name, values: pick(p.values).map((v) => index.get(String(v))), tickvals: p.categories.map((_, i) => i), ticktext: p.categories };
  });
  dimensions.push({ label: data.metric, values: pick(data.objective) });
  Plotly.react("parcoords", [{ type: "parcoords", dimensions, line: { color: pick(data.objective), colorscale: "Viridis", reversescale: data.mode === "min", showscale: true } }],
    { title: { text: `hyperparameters against best ${data.metric} (` + (scored.length > PARCOORDS_LINES ? `the best ${PARCOORDS_LINES} of ${scored.length} trials)` : `${scored.length} trials)`) } }, { responsive: true });
  const slices = $("slices");
  if (slices.children.length !== names.length) slices.replaceChildren(...names.map((n) => el("div", { class: "chart", "data-slice": n })));
  names.forEach((name, i) => {
    const p = data.params[name];
    Plotly.react(slices.children[i], [{ x: p.values, y: data.objective, text: data.trials, mode: "markers", type: p.numeric && p.values.length > 5000 ? "scattergl" : "scatter", marker: { size: 6, opacity: 0.7 } }],
      { title: { text: name }, xaxis: { title: { text: name }, type: p.numeric ? "-" : "category" }, yaxis: { title: { text: data.metric } } }, { responsive: true });
  });
}

async function showImportance(r) {
  if (!$("importance")) $("view").replaceChildren(el("div", { id: "importance", class: "chart", "data-testid": "importance" }));
  const data = await get(api(r, "importance"));
  if (stale(r)) return;
  const entries = Object.entries(data.importance).reverse();
  Plotly.react("importance", [{ type: "bar", orientation: "h", x: entries.map((e) => e[1]), y: entries.map((e) => e[0]) }],
    { title: { text: entries.length ? `hyperparameter importance (fANOVA over ${data.trials} trials)` : "importance needs at least 4 trials that reported" }, margin: { l: 140 } }, { responsive: true });
}

async function showPareto(r) {
  const data = await get(api(r, "pareto"));
  if (stale(r)) return;
  if (!$("pareto")) $("view").replaceChildren(el("div", { class: "grid" }, el("div", { id: "pareto", class: "chart", "data-testid": "pareto" }), el("div", { id: "hypervolume", class: "chart" })));
  if (data.objectives.length < 2) { $("pareto").textContent = "one objective: no Pareto front"; return; }
  const [a, b] = data.objectives.map((o) => o[0]);
  const part = (front) => data.points.filter((p) => p.on_front === front);
  Plotly.react("pareto", [false, true].map((front) => ({
    x: part(front).map((p) => p.values[a]), y: part(front).map((p) => p.values[b]), text: part(front).map((p) => p.trial_id),
    mode: "markers", name: front ? "on the front" : "dominated", marker: { size: front ? 10 : 6, color: front ? "#b03a3a" : "#8892a6" },
  })), { title: { text: `Pareto front (${data.objectives.map((o) => o.join(" ")).join(", ")})` }, xaxis: { title: { text: a } }, yaxis: { title: { text: b } } }, { responsive: true });
  const t0 = data.hypervolume.length ? data.hypervolume[0].t : 0;
  Plotly.react("hypervolume", [{ x: data.hypervolume.map((h) => h.t - t0), y: data.hypervolume.map((h) => h.hypervolume), mode: "lines+markers", line: { shape: "hv" } }],
    { title: { text: "hypervolume as trials finished" }, xaxis: { title: { text: "seconds" } } }, { responsive: true });
}

async function showLineage(r) {
  const data = await get(api(r, "lineage"));
  if (stale(r)) return;
  const schedules = Object.values(data.schedules);
  // only the hyperparameters PBT changed: a value that differs between trials or steps
  const params = Object.keys(schedules[0] || {}).filter((k) => k !== "x" && new Set(schedules.flatMap((s) => s[k].map(String))).size > 1);
  const edges = el("table", { "data-testid": "lineage" }, el("thead", {}, el("tr", {}, el("th", {}, "trial"), el("th", {}, "continued from"), el("th", {}, "at step"))),
    el("tbody", {}, ...data.edges.map((e) => el("tr", {}, el("td", {}, trialLink(r, e.trial_id)), el("td", {}, trialLink(r, e.parent)), el("td", {}, e.step)))));
  $("view").replaceChildren(el("h3", {}, `Exploits (${data.edges.length})`), edges, el("h3", {}, "Schedules"), el("div", { id: "schedules", class: "grid" }, ...params.map((p) => el("div", { class: "chart", "data-param": p }))));
  params.forEach((p, i) => {
    const traces = Object.entries(data.schedules).map(([trial, s]) => ({ x: s.x, y: s[p], name: trial, mode: "lines", line: { shape: "hv" } }));
    Plotly.react($("schedules").children[i], traces, { title: { text: `${p} by epoch` } }, { responsive: true });
  });
}

async function showLedger(r) {
  const data = await get(api(r, "ledger"));
  if (stale(r)) return;
  const priced = Object.values(data.totals).some((t) => t.cost > 0) || data.budget.cost;
  const unit = priced ? "cost" : (Object.values(data.totals).some((t) => t.gpu_hours > 0) ? "gpu_hours" : "cpu_hours");
  if (!$("ledger")) $("view").replaceChildren(el("div", { id: "ledger", class: "chart", "data-testid": "ledger" }), el("div", { id: "ledger-totals" }));
  const traces = Object.entries(data.series).map(([node, s]) => ({ x: s.t, y: s[unit], name: node, mode: "lines", line: { shape: "hv" } }));
  const shapes = data.budget[unit] ? [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: data.budget[unit], y1: data.budget[unit], line: { dash: "dash", color: "#b03a3a" } }] : [];
  Plotly.react("ledger", traces, { title: { text: `${unit} spent over time, by node type` + (data.budget[unit] ? ` (budget ${data.budget[unit]})` : "") }, xaxis: { title: { text: "seconds since the first trial started" } }, shapes }, { responsive: true });
  const columns = ["node type", "trials", "cpu_hours", "gpu_hours", "cost"];
  $("ledger-totals").replaceChildren(el("table", {}, el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", {}, c)))),
    el("tbody", {}, ...Object.entries(data.totals).map(([node, t]) => el("tr", {}, el("td", {}, node), el("td", {}, t.trials), el("td", {}, fmt(t.cpu_hours)), el("td", {}, fmt(t.gpu_hours)), el("td", {}, fmt(t.cost)))))));
}

async function showSpec(r) {
  const s = state.summary;
  const pull = el("code", { id: "pull-command" }, s.pull);
  const copy = el("button", { "data-testid": "copy-pull", onclick: async () => {
    try { await navigator.clipboard.writeText(s.pull); copy.textContent = "copied"; } catch (_) {
      const range = document.createRange(); range.selectNodeContents(pull); getSelection().removeAllRanges(); getSelection().addRange(range); copy.textContent = "selected: press Ctrl-C";
    }
  } }, "copy the pull command");
  $("view").replaceChildren(el("p", {}, `status ${s.status}, ${s.trials} trials (${s.done} ended, ${s.running} running), ${s.reports} reports`),
    el("p", {}, "results: ", el("code", { "data-testid": "results-uri" }, s.uri)), el("p", {}, pull, " ", copy),
    el("h3", {}, "Spec"), el("pre", { "data-testid": "spec" }, JSON.stringify(s.spec, null, 2)));
}

const SHOW = { trials: showTrials, curves: showCurves, parameters: showParameters, importance: showImportance, pareto: showPareto, lineage: showLineage, ledger: showLedger, spec: showSpec };

async function render(reload) {
  const r = route();
  state.route = r;
  try {
    if (r.kind === "runs") {
      header(null); tabs(r);
      return await showRuns(r);
    }
    if (!reload) {
      const summary = await get(api(r, "summary"));
      if (stale(r)) return;
      state.summary = summary; state.version = summary.version; header(summary);
    }
    tabs(r);
    $("root").textContent = state.summary ? `results: ${state.summary.uri}` : "";
    await (SHOW[r.view] || showTrials)(r, reload);
    document.body.dataset.version = state.version;
  } catch (error) { problem(error); }
}

async function poll() {
  const r = state.route;
  if (!r || state.busy) return;
  state.busy = true;
  const began = performance.now();
  try {
    if (r.kind === "run") {
      const summary = await get(api(r, "summary"));
      if (stale(r)) return;
      state.summary = summary;
      header(summary);
      if (summary.version !== state.version) {
        state.version = summary.version;
        if (r.view !== "spec") await (SHOW[r.view] || showTrials)(r, true);
        document.body.dataset.version = state.version;
        // how long this refresh took, from its first request to the view redrawn (bench/dashboard.py reads it)
        document.body.dataset.refreshMs = String(Math.round(performance.now() - began));
      }
    }
  } catch (error) { /* the next poll tries again: a store that is slow now may answer then */ }
  finally { state.busy = false; }
}

async function start() {
  if (!location.hash) {
    try {
      const first = (await get("api/first")).first;
      location.replace(first ? `#/run/${first}/trials` : "#/runs");
    } catch (error) { problem(error); return; }
  }
  window.addEventListener("hashchange", () => { $("view").replaceChildren(); render(false); });
  await render(false);
  setInterval(poll, POLL_MS);
}

start();
