// The runs page: GET /runs with the filters kept in the page's query string, cursor paging,
// a refresh every 2 s, and runs that are late (queued too long) or stuck (no event for a
// while, or their worker stopped answering) flagged.

import { api, optional } from "./api.js";
import {
  $, ago, badge, el, every, runDuration, runLink, say, seconds, start, STATUSES, when,
} from "./page.js";

const REFRESH_MS = 2000;
// Queued longer than `late` seconds: late; running with no event for `stuck` seconds: stuck.
// Both can be set in the page's URL (?late=60&stuck=300) and are kept with the filters.
const FIELDS = ["status", "workflow", "after", "before", "id"];
const KEPT = [...FIELDS, "cursor", "late", "stuck", "limit"];
const threshold = (name, fallback) => {
  const value = Number(new URLSearchParams(location.search).get(name));
  return value > 0 ? value : fallback;
};
const LATE_SECONDS = threshold("late", 30);
const STUCK_SECONDS = threshold("stuck", 120);
const PAGE = Math.min(threshold("limit", 25), 500);  // runs a page (?limit=, up to 500)

start();
const form = $("#filters");
const seen = new Set();
const lastEvent = new Map();  // run id -> {count, at (ms), checked (ms)}
let lostWorkers = new Set();
let firstRender = true;

function current() {
  const q = new URLSearchParams(location.search);
  return Object.fromEntries(KEPT.map((k) => [k, q.get(k) || ""]));
}

// datetime-local inputs speak local time; the URL and the API speak UTC (ISO 8601).
function toLocalInput(iso) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) return "";
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 19);
}
function fromLocalInput(value) {
  const date = new Date(value);
  return value && !Number.isNaN(date.getTime()) ? date.toISOString() : "";
}

function fillForm(filters) {
  form.status.value = STATUSES.includes(filters.status) ? filters.status : "";
  form.workflow.value = filters.workflow;
  form.after.value = toLocalInput(filters.after);
  form.before.value = toLocalInput(filters.before);
  form.id.value = filters.id;
}

function navigate(filters, push = true) {
  const q = new URLSearchParams();
  for (const key of KEPT) if (filters[key]) q.set(key, filters[key]);
  const url = `${location.pathname}${q.toString() ? `?${q}` : ""}`;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
  refresh();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  navigate({
    status: form.status.value, workflow: form.workflow.value.trim(),
    after: fromLocalInput(form.after.value), before: fromLocalInput(form.before.value),
    id: form.id.value.trim(), cursor: "", late: current().late, stuck: current().stuck,
    limit: current().limit,
  });
});
form.status.addEventListener("change", () => form.requestSubmit());
$("#f-clear").addEventListener("click", () => {
  navigate({ late: current().late, stuck: current().stuck, limit: current().limit });
});
$("#newest").addEventListener("click", () => navigate({ ...current(), cursor: "" }));
$("#newer").addEventListener("click", () => history.back());
$("#older").addEventListener("click", (event) => {
  navigate({ ...current(), cursor: event.currentTarget.dataset.cursor });
});
window.addEventListener("popstate", () => refresh());

function apiQuery(filters) {
  const q = new URLSearchParams({ limit: String(Math.floor(PAGE)) });
  if (filters.status) q.set("status", filters.status);
  if (filters.workflow) q.set("workflow", filters.workflow);
  if (filters.after) q.set("created_after", filters.after);
  if (filters.before) q.set("created_before", filters.before);
  if (filters.id) q.set("run_id", filters.id);
  if (filters.cursor) q.set("cursor", filters.cursor);
  return q;
}

/** Why a run stands out, or null: late (queued too long) or stuck. */
function flag(run, now) {
  if (run.status === "queued") {
    const waited = (now - Date.parse(run.created_at)) / 1000;
    if (waited > LATE_SECONDS) {
      return { kind: "late", why: `queued for ${seconds(waited * 1000)}` };
    }
  }
  if (run.status === "running") {
    if (run.owner && lostWorkers.has(run.owner)) {
      return { kind: "stuck", why: `its worker ${run.owner} stopped sending heartbeats` };
    }
    const last = lastEvent.get(run.run_id);
    if (last && (now - last.at) / 1000 > STUCK_SECONDS) {
      return { kind: "stuck", why: `no event for ${seconds(now - last.at)}` };
    }
  }
  return null;
}

// For a running run: when its last event came (one event read, again only when its
// event_count moved or 10 s passed).
async function watchRunning(runs, now) {
  await Promise.all(runs.filter((r) => r.status === "running").map(async (run) => {
    const known = lastEvent.get(run.run_id);
    if (known && known.count === run.event_count && now - known.checked < 10000) return;
    const after = Math.max(0, run.event_count - 1);
    const page = await api(`/runs/${encodeURIComponent(run.run_id)}/events?after=${after}&limit=1`);
    const event = page.events[page.events.length - 1];
    const at = event ? Date.parse(event.timestamp) : Date.parse(run.started_at || run.created_at);
    lastEvent.set(run.run_id, { count: run.event_count, at, checked: now });
  }));
}

function row(run, now) {
  const flagged = flag(run, now);
  const fresh = !firstRender && !seen.has(run.run_id);
  seen.add(run.run_id);
  const classes = [flagged ? "flagged" : "", fresh ? "fresh" : ""].join(" ").trim();
  return el("tr", { class: classes || null, "data-run-id": run.run_id, "data-status": run.status },
    el("td", {}, badge(run.status), flagged ? " " : "",
      flagged ? badge(flagged.kind, flagged.kind, flagged.why) : "",
      flagged ? el("div", { class: "muted" }, flagged.why) : ""),
    el("td", {}, el("a", { href: runLink(run.run_id), class: "mono" }, run.run_id)),
    el("td", {}, run.workflow),
    el("td", { title: when(run.created_at) }, ago(run.created_at, now)),
    el("td", {}, seconds(runDuration(run, now))),
    el("td", {}, String(run.attempt ?? 1)),
    el("td", {}, run.source || ""));
}

async function loadWorkflows() {
  const answer = await optional("/workflows");
  const list = $("#workflow-names");
  list.replaceChildren(...(answer?.workflows || []).map((w) => el("option", { value: w.name })));
}

async function refresh() {
  const filters = current();
  fillForm(filters);
  let page;
  try {
    page = await api(`/runs?${apiQuery(filters)}`);
  } catch (err) {
    if (err.status === 400 || err.status === 404 || err.status === 422) {
      say(`These filters cannot be used: ${err.message}`, "bad");
      $("#runs tbody").replaceChildren();
      return;
    }
    throw err;
  }
  const workers = await optional("/workers").catch(() => null);
  lostWorkers = new Set((workers?.workers || []).filter((w) => w.lost).map((w) => w.worker));
  const now = Date.now();
  await watchRunning(page.runs, now).catch(() => {});
  say("");
  const rows = page.runs.map((run) => row(run, now));
  firstRender = false;
  $("#runs tbody").replaceChildren(...(rows.length ? rows : [el("tr", {},
    el("td", { colspan: "7", class: "muted" }, "No runs match these filters."))]));
  const older = $("#older");
  older.disabled = !page.next_cursor;
  older.dataset.cursor = page.next_cursor || "";
  $("#newer").disabled = !filters.cursor || history.length < 2;
  $("#newest").disabled = !filters.cursor;
  const flagged = page.runs.filter((run) => flag(run, now)).length;
  $("#page-note").textContent = `${page.runs.length} shown` +
    (flagged ? `, ${flagged} need attention` : "");
  $("#live").textContent = `· live, updated ${new Date(now).toLocaleTimeString()}`;
}

loadWorkflows().catch(() => {});
every(REFRESH_MS, refresh);
