// The public HTTP API, as the dashboard calls it: the token from this browser session sent as
// `Authorization: Bearer`, a 401 asks for the token again, an unreachable server raises the
// banner (and every later answer lowers it). Nothing here reaches anything but this server.

const TOKEN_KEY = "pyflue.token";
const listeners = { unauthorized: [], down: [], up: [] };

export function on(what, callback) { listeners[what].push(callback); }
function tell(what, arg) { for (const callback of listeners[what]) callback(arg); }

export function getToken() { return sessionStorage.getItem(TOKEN_KEY); }
export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An answer that is not a success: `status` (0 when the server could not be reached) and the
 * API's error body `{error: {type, message, details}}` when there is one. */
export class ApiError extends Error {
  constructor(status, body, message) {
    super(message || body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
    this.type = body?.error?.type || (status === 0 ? "unreachable" : "http_error");
  }
}

function headers(extra) {
  const out = { ...extra };
  const token = getToken();
  if (token) out.Authorization = `Bearer ${token}`;
  return out;
}

async function send(path, init) {
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    tell("down", err);
    throw new ApiError(0, null, "the pyflue server cannot be reached");
  }
  tell("up");
  if (response.status === 401) {
    const body = await response.json().catch(() => null);
    tell("unauthorized", body);
    throw new ApiError(401, body);
  }
  return response;
}

/** A JSON call: resolves to the decoded body, or throws ApiError. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: headers({ Accept: "application/json" }) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await send(path, init);
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Like api(), but a 404 (a route this server does not have yet, or nothing there) is null. */
export async function optional(path, options) {
  try {
    return await api(path, options);
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return null;
    throw err;
  }
}

/** A file from the API, as a Blob (for downloads that need the token). */
export async function blob(path) {
  const response = await send(path, { headers: headers({}) });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return response.blob();
}

function parseFrame(block) {
  const frame = { id: null, event: "message", data: [] };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;  // a comment: the greeting or a keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") frame.data.push(value);
    else if (field === "id") frame.id = value;
    else if (field === "event") frame.event = value;
  }
  return frame.data.length ? { ...frame, data: frame.data.join("\n") } : null;
}

/** Server-sent events over fetch() (EventSource cannot send the Authorization header):
 * yields `{id, event, data}` frames until the server ends the stream. Resumes after
 * `lastEventId` (sent as `Last-Event-ID`, as EventSource would). */
export async function* sse(path, { lastEventId = 0, signal } = {}) {
  const extra = { Accept: "text/event-stream" };
  if (lastEventId) extra["Last-Event-ID"] = String(lastEventId);
  const response = await send(path, { headers: headers(extra), signal, cache: "no-store" });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = parseFrame(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (frame) yield frame;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
