// The health page: GET /health (engine, load, warm pool), GET /workers (heartbeats), the
// queue and the running runs (GET /runs?status=...), and the container start latency p50/p95
// computed here from recent runs' events (run_start to container_started, by launch).

import { api, optional } from "./api.js";
import {
  $, ago, badge, el, every, quantile, runLink, seconds, start, when,
} from "./page.js";

const RECENT = 40;       // runs whose start latency is measured
const QUEUE_PAGE = 500;  // the queue is counted up to this many
start();

const latency = new Map();  // run id -> {ms, launch} once its container started (never changes)

function card(key, value, note = "", id = null) {
  return el("div", { class: "card", id },
    el("div", { class: "k" }, key), el("div", { class: "v" }, value),
    note ? el("div", { class: "muted" }, note) : "");
}

async function measure(run) {
  if (latency.has(run.run_id) || !run.started_at) return;
  const page = await api(`/runs/${encodeURIComponent(run.run_id)}/events?types=run_start,container_started&limit=20`);
  const begun = page.events.filter((e) => e.type === "run_start").pop();
  const started = page.events.find((e) => e.type === "container_started"
    && (!begun || e.event_index > begun.event_index));
  if (begun && started) {
    latency.set(run.run_id, { ms: Date.parse(started.timestamp) - Date.parse(begun.timestamp),
      launch: started.data.launch });
  } else if (run.status !== "running" && run.status !== "queued") {
    latency.set(run.run_id, null);  // it never started a container: nothing to measure
  }
}

function percentiles(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return { p50: quantile(sorted, 0.5), p95: quantile(sorted, 0.95), n: sorted.length };
}

function latencyCards(recent) {
  const measured = recent.map((r) => latency.get(r.run_id)).filter(Boolean);
  const all = percentiles(measured.map((m) => m.ms));
  const byLaunch = ["warm", "cold"].map((kind) => [kind,
    percentiles(measured.filter((m) => m.launch === kind).map((m) => m.ms))]);
  const note = byLaunch.filter(([, p]) => p.n)
    .map(([kind, p]) => `${kind}: p50 ${seconds(p.p50)}, p95 ${seconds(p.p95)} (${p.n})`)
    .join("; ");
  $("#latency-note").textContent = all.n
    ? `Start latency: from run_start to container_started over the last ${all.n} runs that `
      + `started a container. ${note}.`
    : "Start latency: no recent run started a container yet.";
  return [card("Start latency p50", seconds(all.p50), `${all.n} runs`, "card-p50"),
    card("Start latency p95", seconds(all.p95), note.split("; ")[0] || "", "card-p95")];
}

function renderPool(pool) {
  if (!pool.length) {
    $("#pool").replaceChildren(el("p", { class: "muted" },
      "No warm pool (PYFLUE_POOL_SIZE=0, or no image pooled yet): every run starts cold."));
    return;
  }
  $("#pool").replaceChildren(el("table", {},
    el("thead", {}, el("tr", {}, ...["Image", "Fill", "Ready", "Starting", "Size"]
      .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...pool.map((p) => el("tr", {},
      el("td", { class: "mono" }, p.image),
      el("td", {}, el("meter", { min: "0", max: String(p.size || 1), value: String(p.ready),
        "aria-label": `${p.ready} of ${p.size} ready` }), ` ${p.ready}/${p.size}`),
      el("td", {}, String(p.ready)), el("td", {}, String(p.starting)),
      el("td", {}, String(p.size)))))));
}

function renderWorkers(answer) {
  const body = $("#workers tbody");
  if (answer === null) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: "5", class: "muted" },
      "This server does not list its workers (no GET /workers).")));
    return;
  }
  const now = Date.now();
  body.replaceChildren(...(answer.workers.length ? answer.workers.map((w) => el("tr", {},
    el("td", { class: "mono" }, w.worker),
    el("td", {}, w.lost ? badge("lost", "lost", `silent for more than ${answer.lease_seconds} s`)
      : badge("alive", "completed")),
    el("td", { title: when(w.seen_at) }, `${seconds(w.age_seconds * 1000)} ago`),
    el("td", { title: when(w.started_at) }, ago(w.started_at, now)),
    el("td", {}, String(w.running)))) : [el("tr", {}, el("td", { colspan: "5", class: "muted" },
    "No worker has sent a heartbeat."))]));
}

async function refresh() {
  let health;
  try {
    health = await api("/health");
  } catch (err) {
    if (err.status !== 503 || !err.body) throw err;
    health = err.body;  // 503: the engine is down; the body still says everything
  }
  const [queued, running, recent, workers] = await Promise.all([
    api(`/runs?status=queued&limit=${QUEUE_PAGE}`),
    api("/runs?status=running&limit=100"),
    api(`/runs?limit=${RECENT}`),
    optional("/workers"),
  ]);
  await Promise.all(recent.runs.map((run) => measure(run).catch(() => {})));
  $("#health-state").replaceChildren(health.ok ? badge("ok", "completed")
    : badge("degraded", "failed"));
  const queueDepth = queued.runs.length + (queued.next_cursor ? "+" : "");
  const cards = [
    card("Queue depth", String(queueDepth), "runs waiting", "card-queue"),
    card("Running", `${health.running} / ${health.max_concurrency}`, "on this server", "card-running"),
    card("Engine", health.engine ? (health.engine.up ? "up" : "down") : "–",
      health.engine ? `since ${when(health.engine.since)}` : "no engine watched", "card-engine"),
    card("Version", health.version, "", "card-version"),
    ...latencyCards(recent.runs),
  ];
  if (health.pool?.length) {
    const ready = health.pool.reduce((n, p) => n + p.ready, 0);
    const size = health.pool.reduce((n, p) => n + p.size, 0);
    cards.splice(2, 0, card("Pool fill", `${ready} / ${size}`, "warm containers ready", "card-pool"));
  }
  $("#cards").replaceChildren(...cards);
  $("#message").replaceChildren(health.reason
    ? el("div", { class: "notice bad", role: "alert" }, health.reason) : "");
  renderWorkers(workers);
  renderPool(health.pool || []);
  $("#running-list").replaceChildren(...(running.runs.length ? running.runs.map((run) =>
    el("li", {}, el("a", { href: runLink(run.run_id), class: "mono" }, run.run_id),
      ` · ${run.workflow} · started ${ago(run.started_at)}`))
    : [el("li", { class: "muted" }, "Nothing is running.")]));
}

every(5000, refresh);
