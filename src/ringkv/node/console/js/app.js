// The console: asks the node that served this page for the cluster's state every two
// seconds and draws it. Every number on the page comes from the JSON API.

import {api, ApiError, token} from "./api.js";
import {lineChart} from "./charts.js";
import {fill, h, show} from "./dom.js";
import * as fmt from "./format.js";
import {ringDrawing, ringLegend} from "./ring.js";
import {inspect} from "./inspector.js";

const POLL_MS = 2000;
const SPAN_MS = 10 * 60 * 1000;  // the longest chart window: as much as the nodes keep
const PALETTE = ["#5b8def", "#f5b942", "#3ecf8e", "#e5697b", "#a78bfa", "#38bdf8", "#fb923c",
  "#f472b6", "#a3e635", "#94a3b8", "#2dd4bf", "#facc15"];
const ERROR_COLORS = ["#f87171", "#fb923c", "#facc15", "#f472b6", "#c084fc", "#94a3b8"];

const state = {
  timer: null,
  cluster: null,
  series: new Map(),       // member -> [{t, reads, writes, ...}] (oldest first)
  ring: null,
  ringKey: null,
  refreshing: false,
  history: null,
  lastProgress: new Map(), // member -> the last rebalance seen with work in it
  pullSeen: new Map(),     // "member@epoch" -> when this page first saw that pull running
  colors: new Map(),
  lastOk: 0,
};

function colorOf(name) {
  if (!state.colors.has(name)) state.colors.set(name, PALETTE[state.colors.size % PALETTE.length]);
  return state.colors.get(name);
}

// -- token gate -------------------------------------------------------------------------
function openGate(message) {
  stop();
  show("console", false);
  show("signout", false);
  show("gate", true);
  const err = document.getElementById("gate-error");
  err.textContent = message || "";
  err.hidden = !message;
  const input = document.getElementById("token");
  input.value = "";
  input.focus();
}

async function tryOpen() {
  try {
    if (!token.get() && await api.needsToken()) {
      openGate("");
      return;
    }
    const cluster = await api.cluster();
    show("gate", false);
    show("console", true);
    show("signout", Boolean(token.get()));
    accept(cluster);
    start();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      const had = Boolean(token.get());
      token.clear();
      openGate(had ? "The node refused this token (401 unauthorized). Check that you copied " +
        "the whole token of this cluster." : "");
    } else {
      show("gate", false);
      show("console", true);
      banner(err);
      start();
    }
  }
}

document.getElementById("gate-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = document.getElementById("token").value.trim();
  if (!value) return;
  token.set(value);
  tryOpen();
});

document.getElementById("signout").addEventListener("click", () => {
  token.clear();
  openGate("");
});

// -- polling ----------------------------------------------------------------------------
function start() {
  if (state.timer === null) state.timer = setInterval(poll, POLL_MS);
  poll();
}

function stop() {
  if (state.timer !== null) clearInterval(state.timer);
  state.timer = null;
}

function newestSample() {
  let since = null;
  for (const samples of state.series.values()) {
    const last = samples[samples.length - 1];
    if (last && (since === null || last.t < since)) since = last.t;
  }
  return since;
}

async function poll() {
  const [cluster, stats] = await Promise.allSettled([api.cluster(), api.stats(newestSample())]);
  const failed = [cluster, stats].find((r) => r.status === "rejected");
  if (failed && failed.reason instanceof ApiError && failed.reason.status === 401) {
    token.clear();
    openGate("The node no longer accepts this token (401 unauthorized): it may have been rotated.");
    return;
  }
  if (stats.status === "fulfilled") mergeStats(stats.value);
  if (cluster.status === "fulfilled") {
    accept(cluster.value);
    if (!state.ring || state.ring.epoch !== cluster.value.epoch) refreshEpochData();
  }
  if (failed) banner(failed.reason); else banner(null);
  render();
}

async function refreshEpochData() {
  if (state.refreshing) return;  // one fetch at a time, however many polls see the new epoch
  state.refreshing = true;
  try {
    const [ring, history] = await Promise.allSettled([api.ring(), api.history()]);
    if (ring.status === "fulfilled") state.ring = ring.value;
    if (history.status === "fulfilled") state.history = history.value;
  } finally {
    state.refreshing = false;
  }
  render();
}

function accept(cluster) {
  state.cluster = cluster;
  state.lastOk = Date.now();
  for (const m of [...cluster.members].sort((a, b) => a.name.localeCompare(b.name))) colorOf(m.name);
}

function mergeStats(stats) {
  const horizon = stats.time_ms - SPAN_MS;
  for (const member of stats.members) {
    const have = state.series.get(member.node) || [];
    const last = have.length ? have[have.length - 1].t : -Infinity;
    const merged = have.concat((member.series || []).filter((p) => p.t > last)).filter((p) => p.t >= horizon);
    state.series.set(member.node, merged);
  }
}

function banner(err) {
  const el = document.getElementById("banner");
  if (!err) { el.hidden = true; return; }
  const since = state.lastOk ? ` Last good answer at ${fmt.clock(state.lastOk)}.` : "";
  el.textContent = `${err.message}${err.code && err.status ? ` (${err.status} ${err.code})` : ""}.${since}`;
  el.hidden = false;
}

// -- rendering --------------------------------------------------------------------------
function render() {
  const c = state.cluster;
  if (!c) return;
  renderSummary(c);
  renderMembers(c);
  renderRing(c);
  renderCharts();
  renderProgress(c);
  renderTimeline();
}

function memberState(m) {
  if (m.reachable === false) return "unreachable";
  return m.state;
}

function renderSummary(c) {
  const settled = c.settled;
  fill("summary",
    h("span", {class: "epoch"}, "epoch ", h("strong", {id: "epoch"}, String(c.epoch))),
    h("span", {id: "settled", class: `pill ${settled ? "ok" : "warn"}`}, settled ? "settled" : "rebalancing"),
    h("span", {class: "muted"}, `${c.members.length} members · rf ${c.rf} · served by ${c.node}`));
  const age = (Date.now() - state.lastOk) / 1000;
  const live = age < 3 * POLL_MS / 1000;
  fill("link", h("span", {class: `dot ${live ? "live" : "dead"}`}),
    live ? `live · ${fmt.clock(state.lastOk)}` : `no answer for ${fmt.duration(age)}`);
}

function lastSample(name) {
  const samples = state.series.get(name);
  return samples && samples.length ? samples[samples.length - 1] : null;
}

function flags(m) {
  const out = [];
  if (m.disk_full) out.push(h("span", {class: "flag bad", title: "writes fail with 507 until space is freed"}, "disk full"));
  if (m.rebuilding) out.push(h("span", {class: "flag warn", title: "lost its data; pulling every range it replicates"}, "rebuilding"));
  if (m.reachable !== false && m.ready === false && !m.rebuilding) {
    out.push(h("span", {class: "flag warn", title: m.waiting || "not ready: still catching up"}, "catching up"));
  }
  if (m.waiting) out.push(h("span", {class: "flag warn", title: m.waiting}, "waiting"));
  return out;
}

function renderMembers(c) {
  const head = ["member", "state", "address", "epoch", "records", "hints", "req/s", "p99 read", "p99 write", "owns"];
  const rows = [...c.members].sort((a, b) => a.name.localeCompare(b.name)).map((m) => {
    const st = memberState(m);
    const sample = m.reachable === false ? null : lastSample(m.name);
    return h("tr", {class: `member ${st}`, "data-member": m.name},
      h("td", {}, h("span", {class: "swatch", style: {background: colorOf(m.name)}}), h("span", {class: "name"}, m.name),
        m.name === c.node ? h("span", {class: "here", title: "this node served the page"}, "●") : null),
      h("td", {class: "state-cell"}, h("span", {class: `pill state ${st}`}, st), flags(m)),
      h("td", {class: "mono small", title: m.api_url || m.url}, (m.api_url || m.url).replace(/^https?:\/\//, "")),
      h("td", {class: `num ${m.epoch !== undefined && m.epoch !== c.epoch ? "lag" : ""}`}, m.epoch ?? "–"),
      h("td", {class: "num"}, fmt.count(m.records)),
      h("td", {class: `num ${m.hints_pending ? "warn-text" : ""}`}, fmt.count(m.hints_pending)),
      h("td", {class: "num"}, sample ? fmt.rate(sample.reads + sample.writes) : "–"),
      h("td", {class: "num"}, sample ? fmt.ms(sample.read_p99_ms) : "–"),
      h("td", {class: "num"}, sample ? fmt.ms(sample.write_p99_ms) : "–"),
      h("td", {class: "num"}, fmt.percent(m.ownership)));
  });
  fill("members", h("table", {class: "table"},
    h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))), h("tbody", {}, rows)));
}

function renderRing(c) {
  const r = state.ring;
  if (!r) { fill("ring", h("p", {class: "muted"}, "loading the ring…")); return; }
  // Redrawn only when it changed: a thousand arcs every two seconds would be waste.
  const key = JSON.stringify([r.epoch, c.members.map((m) => [m.name, m.ownership])]);
  if (key === state.ringKey) return;
  state.ringKey = key;
  const note = r.base ? `epoch ${r.epoch} is moving ${fmt.percent(r.moving_fraction)} of the token space` :
    `${r.vnodes} virtual nodes per member`;
  fill("ring-note", note);
  const drawings = [];
  if (r.base) {
    drawings.push(h("figure", {}, ringDrawing(r.base, {label: "base", sub: "last settled", colorOf}),
      h("figcaption", {}, "base ring (reads)")));
  }
  drawings.push(h("figure", {}, ringDrawing(r.target, {label: r.base ? "target" : `epoch ${r.epoch}`,
    sub: `${r.target.members.length} members · rf ${r.rf}`, colorOf, moving: r.moving || []}),
  h("figcaption", {}, r.base ? "target ring (reads after settling; writes go to both)" : "outer band: first replica; inner: second, third")));
  fill("ring", h("div", {class: `rings ${r.base ? "two" : "one"}`}, drawings), ringLegend(c.members, colorOf));
}

function seriesOf(field, names) {
  // Samples of every member are taken on the same wall-clock grid: sum them per instant.
  const byT = new Map();
  for (const name of names) {
    for (const p of state.series.get(name) || []) {
      const v = typeof field === "function" ? field(p) : p[field];
      if (v === null || v === undefined) continue;
      byT.set(p.t, [...(byT.get(p.t) || []), v]);
    }
  }
  return [...byT.entries()].sort((a, b) => a[0] - b[0]);
}

/** The charts' window: as much as the nodes have sampled, in whole minutes, 2 to 10. */
function chartSpan(now) {
  let oldest = now;
  for (const samples of state.series.values()) if (samples.length) oldest = Math.min(oldest, samples[0].t);
  const minutes = Math.ceil((now - oldest) / 60000);
  return Math.min(SPAN_MS, Math.max(2, minutes) * 60000);
}

function renderCharts() {
  const names = [...state.series.keys()];
  const now = Date.now();
  const spanMs = chartSpan(now);
  const sum = (vals) => vals.reduce((a, b) => a + b, 0);
  const max = (vals) => Math.max(...vals);
  const agg = (field, how) => seriesOf(field, names).map(([t, vals]) => [t, how(vals)]);
  fill("chart-throughput", lineChart([
    {name: "reads", color: "#5b8def", points: agg("reads", sum)},
    {name: "writes", color: "#f5b942", points: agg("writes", sum)},
  ], {now, spanMs, format: fmt.rate}));
  fill("chart-latency", lineChart([
    {name: "read p99", color: "#3ecf8e", points: agg("read_p99_ms", max)},
    {name: "write p99", color: "#a78bfa", points: agg("write_p99_ms", max)},
  ], {now, spanMs, format: (v) => fmt.ms(v)}));
  const codes = new Set();
  for (const samples of state.series.values()) for (const p of samples) for (const code of Object.keys(p.errors || {})) codes.add(code);
  const errorSeries = [...codes].sort().map((code, i) => ({
    name: code, color: ERROR_COLORS[i % ERROR_COLORS.length],
    points: agg((p) => (p.errors || {})[code] || 0, sum),
  }));
  fill("chart-errors", lineChart(errorSeries, {now, spanMs, format: fmt.rate, empty: "no errors"}));
}

/** The mean of a member's `field` over its samples of the last `seconds`, counting only
 * samples since `sinceMs` (when its pull was first seen): null until there is one. */
function recentRate(name, field, seconds, sinceMs) {
  const from = Math.max(Date.now() - seconds * 1000, sinceMs);
  const samples = (state.series.get(name) || []).filter((p) => p.t > from);
  if (!samples.length) return null;
  return samples.reduce((a, p) => a + (p[field] || 0), 0) / samples.length;
}

function renderProgress(c) {
  const rows = [];
  let active = false;
  for (const m of [...c.members].sort((a, b) => a.name.localeCompare(b.name))) {
    const p = m.rebalance;
    if (p && p.ranges_total > 0) state.lastProgress.set(m.name, p);
    const shown = p && p.ranges_total > 0 ? p : state.lastProgress.get(m.name);
    if (!shown) continue;
    const current = shown === p;
    active = active || (current && p.active);
    const done = shown.ranges_total - shown.ranges_left;
    const fraction = shown.ranges_total ? done / shown.ranges_total : 1;
    const pull = `${m.name}@${shown.epoch}`;
    if (current && p.active && !state.pullSeen.has(pull)) state.pullSeen.set(pull, Date.now());
    const since = state.pullSeen.get(pull) || 0;
    const bps = current && p.active ? recentRate(m.name, "handoff_bytes_per_s", 6, since) : null;
    const rangesPerS = current && p.active ? recentRate(m.name, "handoff_ranges_per_s", 10, since) : null;
    // Records left is an estimate from the ranges pulled so far: shown once a tenth is done.
    const recordsLeft = done >= shown.ranges_total / 10 && done > 0
      ? (shown.keys_received / done) * shown.ranges_left : null;
    const eta = rangesPerS > 0 ? shown.ranges_left / rangesPerS : null;
    const details = [
      `${done} of ${shown.ranges_total} ranges`,
      `${fmt.count(shown.keys_received)} records received (${fmt.bytes(shown.bytes_received)})`,
    ];
    if (current && p.active) {
      details.push(recordsLeft === null ? "records left: measuring" : `≈ ${fmt.count(recordsLeft)} records left`);
      details.push(bps === null ? "– /s" : `${fmt.bytes(bps)}/s`);
      details.push(`ETA ${eta === null ? "measuring" : fmt.duration(eta)}`);
    } else {
      details.push(current ? "done" : `done (epoch ${shown.epoch})`);
    }
    rows.push(h("div", {class: `bar-row ${current && p.active ? "active" : "done"}`, "data-member": m.name},
      h("div", {class: "bar-head"}, h("span", {class: "swatch", style: {background: colorOf(m.name)}}),
        h("span", {class: "name"}, m.name), h("span", {class: "bar-pct"}, fmt.percent(fraction))),
      h("progress", {max: shown.ranges_total || 1, value: done, "aria-label": `${m.name} re-replication`}),
      h("div", {class: "muted small"}, details.join(" · "))));
  }
  const headline = active ? "Pulling ranges to restore rf copies" :
    c.settled ? "Nothing to move: every range has its replicas" : "Waiting for the epoch to settle";
  fill("progress", h("p", {class: `progress-head ${active ? "warn-text" : ""}`}, headline),
    rows.length ? rows : h("p", {class: "muted small"}, "No re-replication since this page opened."));
}

function kindOf(text) {
  if (/ removed| leaving| unreachable/.test(text)) return "remove";
  if (/ joined|formed/.test(text)) return "join";
  if (/promoted|settled/.test(text)) return "ok";
  return "other";
}

function renderTimeline() {
  const hist = state.history;
  if (!hist) return;
  const now = Date.now();
  const items = [...hist.changes].reverse().slice(0, 30).map((ch) =>
    h("li", {class: `change ${kindOf(ch.change)}`},
      h("span", {class: "change-dot"}),
      h("div", {class: "change-body"},
        h("div", {class: "change-text"}, ch.change),
        h("div", {class: "muted small", title: new Date(ch.time_ms).toISOString()},
          `${fmt.clock(ch.time_ms)} · ${fmt.when(ch.time_ms, now)}`))));
  fill("timeline", items.length ? items : h("li", {class: "muted"}, "no changes recorded"));
}

// -- key inspector ----------------------------------------------------------------------
document.getElementById("inspect-form").addEventListener("submit", (event) => {
  event.preventDefault();
  inspect(document.getElementById("inspect-key").value, colorOf);
});

tryOpen();
