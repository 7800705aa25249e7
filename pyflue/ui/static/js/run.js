// One run: its record (GET /runs/{id}), its events followed over SSE (GET /runs/{id}/stream,
// resumed from the last event index after a drop), the log with search and a type filter,
// the timeline, the outcome, and the actions (cancel, re-run, the equivalent curl).
// Resources (GET /runs/{id}/metrics, the record's `resources`) and artifacts
// (GET /runs/{id}/artifacts) show when the server has them, and stay hidden when it does not.

import { api, ApiError, blob, optional, sse } from "./api.js";
import {
  $, badge, bytes, el, every, runDuration, runLink, say, seconds, start, statusLabel, when,
} from "./page.js";

const MAX_LINES = 5000;
const MILESTONES = new Set(["run_start", "run_requeued", "container_created",
  "container_started", "container_exited", "container_removed", "shell_start", "shell_end",
  "model_turn_end", "tool_end", "sandbox_limit", "artifact_saved", "egress", "run_end"]);

start();
const runId = new URLSearchParams(location.search).get("id");
const runPath = `/runs/${encodeURIComponent(runId || "")}`;
const events = [];
let cursor = 0;      // the last event index received: the stream resumes after it
let run = null;
let ended = false;
let cancelAsked = false;
let launch = null;
const removed = { event: null };

const finished = (r) => r && !["queued", "running"].includes(r.status);
const short = (id) => (id ? id.slice(0, 12) : "–");
const fmtJson = (value) => JSON.stringify(value, null, 2);

// ---- the record ------------------------------------------------------------------------

function facts() {
  const now = Date.now();
  const items = [
    ["Status", badge(run.status)],
    ["Reason", run.reason || "–"],
    ["Workflow", run.workflow],
    ["Duration", seconds(runDuration(run, now)) + (finished(run) ? "" : " so far")],
    ["Image", run.image ? el("code", {}, run.image) : "–"],
    ["Attempt", String(run.attempt ?? 1)],
    ["Launch", launch ? badge(launch, launch) : "–"],
    ["Created", when(run.created_at)],
    ["Started", when(run.started_at)],
    ["Finished", when(run.finished_at)],
    ["Source", run.source || "–"],
    ["Worker", run.owner ? el("code", {}, run.owner) : "–"],
    ["Container", run.container_id ? el("code", { title: run.container_id },
      short(run.container_id)) : "–"],
    ["Container removed", run.container_removed_at ? when(run.container_removed_at)
      : (run.container_id ? "not yet" : "–")],
    ["Events", String(Math.max(run.event_count, cursor))],
  ];
  $("#facts").replaceChildren(...items.map(([key, value]) =>
    el("div", { "data-fact": key.toLowerCase() }, el("dt", {}, key), el("dd", {}, value))));
  $("#run-status").replaceChildren(badge(run.status));
}

function outcome() {
  if (!finished(run)) { $("#outcome").hidden = true; return; }
  $("#outcome").hidden = false;
  const body = [];
  if (run.status === "completed") {
    $("#outcome-title").textContent = "Result";
    body.push(el("pre", { id: "result" }, fmtJson(run.result)));
  } else {
    $("#outcome-title").textContent = "Error";
    const error = run.error || { type: run.status, message: run.reason || statusLabel(run.status) };
    body.push(el("p", { id: "error" }, el("strong", {}, error.type), ": ", error.message));
    if (error.details) {
      body.push(el("details", { open: true }, el("summary", {}, "Details / traceback"),
        el("pre", { id: "traceback" }, error.details)));
    }
  }
  $("#outcome-body").replaceChildren(...body);
}

function actions() {
  const live = !finished(run);
  $("#cancel").hidden = !live;
  if (!live) $("#cancel-confirm").hidden = true;
  $("#curl").textContent = curl();
  if (cancelAsked && finished(run)) {
    const gone = run.container_removed_at || removed.event?.removed;
    let text;
    if (run.status !== "cancelled") {
      text = `The run ended ${statusLabel(run.status)} before the cancel took effect.`;
    } else if (!run.container_id && !removed.event) {
      text = "Cancelled before a container was started: there is nothing to remove.";
    } else if (gone) {
      text = `Cancelled. Its container ${short(run.container_id || removed.event?.container_id)}` +
        ` is gone (removed ${when(run.container_removed_at || removed.at)}).`;
    } else {
      text = "Cancelled. Waiting for the container's removal to be confirmed…";
    }
    $("#action-result").replaceChildren(el("div", {
      class: `notice ${gone || !run.container_id ? "ok" : "info"}`, id: "cancel-result" }, text));
  }
}

function render() {
  document.title = `${run.workflow} ${statusLabel(run.status)} · pyflue`;
  $("#run-title").textContent = run.run_id;
  $("#payload").textContent = fmtJson(run.payload);
  facts();
  outcome();
  actions();
  resourcesFromRecord();
}

async function loadRun() {
  run = await api(runPath);
  render();
}

// ---- the log and the timeline ------------------------------------------------------------

function text(ev) {
  const d = ev.data || {};
  switch (ev.type) {
    case "log": return `${d.message}${d.fields && Object.keys(d.fields).length
      ? ` ${JSON.stringify(d.fields)}` : ""}`;
    case "shell_start": return `$ ${d.command}`;
    case "shell_output": return String(d.text).replace(/\n$/, "");
    case "shell_end": return `${d.shell_id} exit ${d.exit_code ?? "–"} after ${seconds(d.duration_ms)}` +
      `${d.timed_out ? " (timed out)" : ""}${d.error ? `: ${d.error}` : ""}`;
    case "run_start": return `run started: attempt ${d.attempt ?? 1}, from ${d.source}`;
    case "run_end": return endText(d);
    case "run_requeued": return `requeued (${d.reason}): attempt ${d.attempt} to come`;
    case "container_created": return `container ${short(d.container_id)} created from ${d.image} (network ${d.network}, ${d.runtime})`;
    case "container_started": return `container started ${d.launch}${d.channel ? `, channel ${d.channel}` : ""}`;
    case "container_exited": return `container exited ${d.exit_code ?? ""}${d.oom_killed ? " (OOM-killed)" : ""}, stopped by ${d.stopped_by}`;
    case "container_removed": return d.removed ? `container ${short(d.container_id)} removed${d.deferred ? " (in the background)" : ""}` : "container removal failed";
    case "model_text_delta": return d.text;
    case "model_turn_start": return `${d.session}: turn ${d.turn} with ${d.model}`;
    case "model_turn_end": return `${d.session}: turn ${d.turn} done in ${seconds(d.duration_ms)}` +
      (d.usage ? ` (${d.usage.input_tokens} in, ${d.usage.output_tokens} out)` : "") +
      (d.error ? `: ${d.error.type}: ${d.error.message}` : "");
    case "tool_start": return `${d.name} ${JSON.stringify(d.input)}`;
    case "tool_end": return `${d.name} ${d.is_error ? "failed" : "done"} in ${seconds(d.duration_ms)}`;
    case "file_read": case "file_write": return `${d.path} (${bytes(d.bytes)})`;
    case "file_op": return `${d.op} ${d.path}${d.dest ? ` → ${d.dest}` : ""}`;
    case "sandbox_limit": return d.message;
    case "artifact_saved": return `${d.name} saved from ${d.path} (${bytes(d.size)})`;
    case "egress": return `${d.decision} ${d.method} ${d.host}:${d.port}` +
      (d.decision === "allowed" ? ` (${bytes(d.bytes_up)} up, ${bytes(d.bytes_down)} down)` : "");
    default: return JSON.stringify(d);
  }
}

// "run cancelled: cancelled by request", not the error's type and message saying it twice.
function endText(d) {
  const said = `run ${statusLabel(d.status)}`;
  if (!d.error) return said;
  const message = String(d.error.message).replace(new RegExp(`^run ${d.status}: `), "");
  const type = d.error.type === d.status ? "" : `${d.error.type}: `;
  return `${said}: ${type}${message}`;
}

function tone(ev) {
  const d = ev.data || {};
  if (ev.type === "log") return d.level;
  if (ev.type === "shell_output") return d.stream;
  if (ev.type === "run_end" && d.is_error) return "error";
  if (ev.type === "sandbox_limit") return "error";
  if (ev.type === "egress" && d.decision === "denied") return "warn";
  return "";
}

function lineOf(ev) {
  const level = ev.type === "log" ? ` ${ev.data.level}` : "";
  return el("div", { class: `line ${tone(ev)}`, "data-type": ev.type, "data-index": ev.event_index },
    el("span", { class: "i" }, `#${ev.event_index}`),
    el("span", { class: "t" }, new Date(ev.timestamp).toLocaleTimeString()),
    el("span", { class: "y" }, ev.type + level),
    el("span", { class: "x" }, text(ev)));
}

function matches(ev) {
  const type = $("#log-type").value;
  const query = $("#log-search").value.trim().toLowerCase();
  if (type && ev.type !== type) return false;
  return !query || `${ev.type} ${text(ev)}`.toLowerCase().includes(query);
}

function scrollLog() {
  const log = $("#log");
  if ($("#log-follow").checked) log.scrollTop = log.scrollHeight;
}

function countLines() {
  const shown = $("#log").childElementCount;
  $("#log-count").textContent = `${shown} of ${events.length} events`;
}

function redraw() {
  const picked = events.filter(matches).slice(-MAX_LINES);
  $("#log").replaceChildren(...picked.map(lineOf));
  countLines();
  scrollLog();
}

function knowType(type) {
  const select = $("#log-type");
  if ([...select.options].some((o) => o.value === type)) return;
  select.append(el("option", { value: type }, type));
}

function addTimeline(ev) {
  if (!MILESTONES.has(ev.type)) return;
  const origin = Date.parse(events[0].timestamp);
  $("#timeline").append(el("li", { "data-type": ev.type },
    el("span", { class: "at" }, `+${seconds(Date.parse(ev.timestamp) - origin)}`),
    el("span", {}, el("strong", {}, ev.type), " ", text(ev))));
}

function receive(ev) {
  if (ev.event_index <= cursor) return;  // already shown (a replay after a reconnect)
  cursor = ev.event_index;
  events.push(ev);
  knowType(ev.type);
  if (matches(ev)) {
    const log = $("#log");
    log.append(lineOf(ev));
    while (log.childElementCount > MAX_LINES) log.firstChild.remove();
    scrollLog();
  }
  countLines();
  addTimeline(ev);
  if (ev.type === "container_started") launch = ev.data.launch;
  if (ev.type === "container_removed") removed.event = ev.data;
  if (ev.type === "container_removed") removed.at = ev.timestamp;
  if (["run_start", "container_started", "container_removed", "run_end", "run_requeued"]
    .includes(ev.type)) {
    loadRun().catch(() => {});
  }
  if (ev.type === "run_end") ended = true;
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** Follows the stream until run_end; after a drop, reconnects from the last index seen. */
async function follow() {
  let delay = 500;
  const state = $("#stream-state");
  while (!ended) {
    state.textContent = cursor ? `· following (resumed after event ${cursor})` : "· following";
    try {
      for await (const frame of sse(`${runPath}/stream`, { lastEventId: cursor })) {
        receive(JSON.parse(frame.data));
        delay = 500;
      }
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;  // the token dialog is up
      if (err instanceof ApiError && err.status === 404) { say(`No run ${runId}.`, "bad"); return; }
    }
    if (ended) break;
    state.textContent = `· connection lost; reconnecting after event ${cursor}…`;
    await sleep(delay);
    delay = Math.min(delay * 2, 10000);
  }
  state.textContent = "· complete";
}

// ---- resources and artifacts (when the server has them) ----------------------------------

function definitionList(object) {
  const known = Object.entries(object).filter(([, value]) => value !== null && value !== undefined);
  return el("dl", { class: "facts" }, ...known.map(([key, value]) => {
    const big = /byte|mem|disk/i.test(key) && typeof value === "number";
    const shown = big ? bytes(value) : (typeof value === "object" ? JSON.stringify(value) : String(value));
    return el("div", {}, el("dt", {}, key.replace(/_/g, " ")), el("dd", {}, shown));
  }));
}

function sparkline(values, label) {
  if (values.length < 2) return null;
  const max = Math.max(...values, 1e-9);
  const points = values.map((v, i) =>
    `${(i / (values.length - 1)) * 100},${40 - (v / max) * 38}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 100 42");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "spark");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  svg.append(line);
  return svg;
}

let samplesShown = null;

function resourcesFromRecord() {
  const parts = [];
  if (run.resources && typeof run.resources === "object" && run.resources.samples !== 0) {
    parts.push(el("h3", {}, "Summary"), definitionList(run.resources));
  }
  if (samplesShown) parts.push(samplesShown);
  $("#resources").hidden = !parts.length;
  $("#resources-body").replaceChildren(...parts);
}

async function loadMetrics() {
  const answer = await optional(`${runPath}/metrics`);
  if (answer === null) return false;
  const samples = Array.isArray(answer) ? answer
    : (answer.samples || answer.metrics || answer.points || []);
  if (samples.length) {
    const last = samples[samples.length - 1];
    const cpu = samples.map((s) => Number(s.cpuUsedPct ?? s.cpu_used_pct ?? 0));
    const mem = samples.map((s) => Number(s.memUsed ?? s.mem_used ?? 0));
    samplesShown = el("div", {},
      el("h3", {}, `Latest sample (${samples.length} taken)`), definitionList(last),
      el("div", { class: "grid2" },
        el("div", {}, el("p", { class: "muted" }, `CPU %, peak ${Math.max(...cpu).toFixed(1)}`),
          sparkline(cpu, "CPU use over the run")),
        el("div", {}, el("p", { class: "muted" }, `Memory, peak ${bytes(Math.max(...mem))}`),
          sparkline(mem, "memory use over the run"))));
  }
  if (run) resourcesFromRecord();
  return true;
}

async function download(name) {
  const path = name.split("/").map(encodeURIComponent).join("/");
  const data = await blob(`${runPath}/artifacts/${path}`);
  const url = URL.createObjectURL(data);
  const link = el("a", { href: url, download: name.split("/").pop() });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function loadArtifacts() {
  const answer = await optional(`${runPath}/artifacts`);
  if (answer === null) { $("#artifacts").hidden = true; return; }
  const list = Array.isArray(answer) ? answer : (answer.artifacts || []);
  $("#artifacts").hidden = false;
  if (!list.length) {
    $("#artifacts-body").replaceChildren(el("p", { class: "muted" }, "No artifacts saved."));
    return;
  }
  $("#artifacts-body").replaceChildren(el("table", {},
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Name"),
      el("th", { scope: "col" }, "Size"), el("th", { scope: "col" }, "Type"),
      el("th", { scope: "col" }, el("span", { class: "muted" }, "Download")))),
    el("tbody", {}, ...list.map((item) => {
      const name = typeof item === "string" ? item : (item.name || item.path);
      const size = item.size ?? item.bytes ?? item.size_bytes;
      return el("tr", { "data-artifact": name }, el("td", { class: "mono", title: item.path || null }, name),
        el("td", {}, bytes(size)), el("td", {}, item.content_type || "–"),
        el("td", {}, el("button", { type: "button", "aria-label": `Download ${name}`,
          onclick: () => download(name)
          .catch((err) => say(`Download failed: ${err.message}`, "bad")) }, "Download")));
    }))));
}

// ---- actions ------------------------------------------------------------------------------

const quote = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;

function curl() {
  const url = `${location.origin}/workflows/${encodeURIComponent(run.workflow)}`;
  return [
    `curl -sS -X POST ${quote(url)}`,
    `  -H "Authorization: Bearer $PYFLUE_API_TOKEN"`,
    `  -H 'Content-Type: application/json'`,
    `  -d ${quote(JSON.stringify({ payload: run.payload }))}`,
  ].join(" \\\n");
}

$("#cancel").addEventListener("click", () => {
  $("#cancel-confirm").hidden = false;
  $("#cancel-yes").focus();
});
$("#cancel-no").addEventListener("click", () => {
  $("#cancel-confirm").hidden = true;
  $("#cancel").focus();
});
$("#cancel-yes").addEventListener("click", async () => {
  $("#cancel-confirm").hidden = true;
  try {
    const answer = await api(`${runPath}/cancel`, { method: "POST" });
    cancelAsked = true;
    $("#action-result").replaceChildren(el("div", { class: "notice info", id: "cancel-result" },
      answer.status === "cancelled" ? "Cancelled." : "Cancelling: stopping its container…"));
    await loadRun();
    watchRemoval();
  } catch (err) {
    $("#action-result").replaceChildren(el("div", { class: "notice bad" },
      `Cancel refused: ${err.message}`));
  }
});

// After the end, the container may be removed in the background: look until it is.
async function watchRemoval() {
  for (let i = 0; i < 60; i += 1) {
    if (finished(run) && (run.container_removed_at || !run.container_id)) return;
    await sleep(500);
    await loadRun().catch(() => {});
  }
}

$("#rerun").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  button.disabled = true;
  try {
    // The same payload and the same uploaded files (a run without uploads has none to copy).
    const answer = await api(`/workflows/${encodeURIComponent(run.workflow)}` +
      `?uploads_from=${encodeURIComponent(run.run_id)}`, {
      method: "POST", body: { payload: run.payload } });
    location.href = runLink(answer.run_id);
  } catch (err) {
    $("#action-result").replaceChildren(el("div", { class: "notice bad" },
      `Re-run refused: ${err.message}`));
    button.disabled = false;
  }
});

$("#copy-curl").addEventListener("click", async () => {
  const command = curl();
  let told = "Copied the curl command (it reads the token from $PYFLUE_API_TOKEN).";
  try {
    // A browser that neither copies nor refuses (a pending permission) gets 2 s.
    await Promise.race([navigator.clipboard.writeText(command),
      sleep(2000).then(() => { throw new Error("the clipboard did not answer"); })]);
  } catch {
    const pre = $("#curl");
    pre.closest("details").open = true;
    getSelection().selectAllChildren(pre);
    told = "Selected the curl command below: press Ctrl+C to copy it.";
  }
  $("#action-result").replaceChildren(el("div", { class: "notice ok", id: "copy-result" }, told));
});

for (const id of ["#log-search", "#log-type"]) $(id).addEventListener("input", redraw);
$("#log-follow").addEventListener("change", scrollLog);

// ---- start ---------------------------------------------------------------------------------

async function main() {
  if (!runId) { say("No run id: open a run from the runs page.", "bad"); return; }
  try {
    await loadRun();
  } catch (err) {
    if (err.status === 404) say(`No run ${runId}: it may have been deleted.`, "bad");
    if (err.status !== 401 && err.status !== 404) setTimeout(main, 3000);
    return;
  }
  follow();
  loadArtifacts().catch(() => {});
  let metrics = await loadMetrics().catch(() => false);
  every(2000, async () => {
    if (!finished(run)) await loadRun();
    else facts();
    if (metrics && !finished(run)) metrics = await loadMetrics();
  });
  every(1000, async () => { if (run && !finished(run)) facts(); });
  const afterEnd = setInterval(async () => {
    if (!ended) return;
    clearInterval(afterEnd);
    await loadRun().catch(() => {});
    loadArtifacts().catch(() => {});
    if (metrics) loadMetrics().catch(() => {});
  }, 500);
}

main();
