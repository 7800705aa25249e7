// What every page shares: the token dialog, the "server down" banner, a refresh loop, and
// small helpers to build elements and format times, durations and sizes.

import { getToken, on, setToken } from "./api.js";

/** Builds an element: el("a", {href: "#", class: "x"}, "text", child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export const STATUSES = ["queued", "running", "completed", "failed", "cancelled", "timed_out",
  "interrupted"];
export const statusLabel = (status) => String(status).replace(/_/g, " ");
export function badge(text, kind = text, title = null) {
  return el("span", { class: `badge ${kind}`, title }, statusLabel(text));
}
export const runLink = (runId) => `run.html?id=${encodeURIComponent(runId)}`;

export function seconds(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function ago(iso, now = Date.now()) {
  if (!iso) return "–";
  return `${seconds(Math.max(0, now - Date.parse(iso)))} ago`;
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "–";
  let value = Number(n);
  for (const unit of ["B", "KiB", "MiB", "GiB"]) {
    if (Math.abs(value) < 1024 || unit === "GiB") {
      return `${unit === "B" ? value : value.toFixed(1)} ${unit}`;
    }
    value /= 1024;
  }
  return `${value} B`;
}

/** A run's duration: finished, or so far. */
export function runDuration(run, now = Date.now()) {
  if (run.duration_ms !== null && run.duration_ms !== undefined) return run.duration_ms;
  if (run.started_at) return now - Date.parse(run.started_at);
  return null;
}

export function quantile(sorted, q) {
  if (!sorted.length) return null;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** Says something to screen readers and sighted users alike, in the page's status line. */
export function say(text, kind = "info") {
  const line = $("#message");
  if (!line) return;
  line.replaceChildren(text ? el("div", { class: `notice ${kind}` }, text) : "");
}

let retryNow = () => {};

/** Calls `task` now and every `ms` while the page is open; a failure waits longer (up to
 * 30 s) and the banner's "Retry now" calls it at once. */
export function every(ms, task) {
  let timer = null;
  let delay = ms;
  const tick = async () => {
    clearTimeout(timer);
    try {
      await task();
      delay = ms;
    } catch (err) {
      if (err?.status !== 401) console.warn("pyflue dashboard:", err);
      delay = Math.min(delay * 2, 30000);
    }
    timer = setTimeout(tick, document.hidden ? Math.max(delay, 10000) : delay);
  };
  retryNow = tick;
  tick();
  return tick;
}

function tokenDialog() {
  const dialog = el("dialog", { id: "token-dialog", "aria-labelledby": "token-title" });
  const input = el("input", { type: "password", id: "token-input", name: "token",
    autocomplete: "off", required: true });
  const why = el("p", { id: "token-why", class: "muted" });
  const form = el("form", { method: "dialog" },
    el("h2", { id: "token-title" }, "API token"),
    why,
    el("label", { for: "token-input" }, "The server's PYFLUE_API_TOKEN", input),
    el("p", { class: "muted" },
      "Kept in this browser tab's session only, and sent as the Authorization header."),
    el("div", { class: "actions-row" },
      el("button", { type: "submit", class: "primary" }, "Use token")));
  form.addEventListener("submit", () => {
    setToken(input.value.trim());
    location.reload();
  });
  dialog.append(form);
  document.body.append(dialog);
  return dialog;
}

function banner() {
  const node = el("div", { id: "down-banner", class: "banner", role: "alert", hidden: true },
    el("strong", {}, "The pyflue server cannot be reached."),
    el("span", {}, "Retrying on its own; what is shown may be out of date."),
    el("button", { type: "button", onclick: () => retryNow() }, "Retry now"));
  document.body.prepend(node);
  return node;
}

/** Sets the page up: banner, token dialog, the nav's current page, the token button. */
export function start() {
  const down = banner();
  const dialog = tokenDialog();
  on("down", () => { down.hidden = false; });
  on("up", () => { down.hidden = true; });
  on("unauthorized", () => {
    if (dialog.open) return;
    $("#token-why").textContent = getToken()
      ? "The server refused this token. Enter the right one."
      : "This server needs an API token.";
    dialog.showModal();
    $("#token-input").focus();
  });
  const page = (name) => (name === "./" || name === "index.html" ? "" : name);
  const here = page(location.pathname.split("/").pop());
  for (const link of document.querySelectorAll("header.top nav a")) {
    if (page(link.getAttribute("href")) === here) link.setAttribute("aria-current", "page");
  }
  const forget = $("#forget-token");
  if (forget) {
    forget.hidden = !getToken();
    forget.addEventListener("click", () => { setToken(null); location.reload(); });
  }
}
