// api.js — talking to rapport from the page: JSON requests with the API key
// (held in memory, or in sessionStorage for the tab when the user says so),
// stream tokens for EventSource (which cannot send Authorization), and one
// shape for every error: {status, code, message, retryAfter}.

const KEY_STORE = "rapport.apiKey";

let apiKey = null;
try {
  apiKey = sessionStorage.getItem(KEY_STORE);
} catch {
  apiKey = null; // storage off: memory only
}

// The API's base: this page's own origin, unless the page that embeds the
// panel set window.RAPPORT_BASE (a CRM on another origin, with CORS).
export const base = (globalThis.RAPPORT_BASE || "").replace(/\/$/, "");

export function hasKey() {
  return !!apiKey;
}

export function setKey(key, remember) {
  apiKey = key || null;
  try {
    if (apiKey && remember) sessionStorage.setItem(KEY_STORE, apiKey);
    else sessionStorage.removeItem(KEY_STORE);
  } catch {
    /* memory only */
  }
}

export class ApiError extends Error {
  constructor(status, code, message, retryAfter, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.requestId = requestId;
  }
}

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

async function errorFrom(resp) {
  let code = "http_" + resp.status;
  let message = resp.statusText || "request failed";
  let requestId = resp.headers.get("X-Request-Id");
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      requestId = body.request_id || requestId;
    }
  } catch {
    /* not JSON: keep the status */
  }
  const ra = parseInt(resp.headers.get("Retry-After") || "", 10);
  return new ApiError(resp.status, code, message, Number.isFinite(ra) ? ra : null, requestId);
}

// fetch() → {data, resp}; throws ApiError (status 0 when rapport is unreachable).
export async function request(path, opts = {}) {
  let resp;
  try {
    resp = await fetch(base + path, {
      method: opts.method || "GET",
      headers: headers(opts.body ? { "Content-Type": "application/json" } : {}),
      body: opts.body ? JSON.stringify(opts.body) : undefined,
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "network", "cannot reach rapport (" + e.message + ")", null, null);
  }
  if (!resp.ok) throw await errorFrom(resp);
  return { data: await resp.json(), resp };
}

export function analysisTypes() {
  return request("/v1/analysis-types").then((r) => r.data.types || []);
}

export function searchContacts(q, limit = 20) {
  const p = new URLSearchParams({ q, limit: String(limit) });
  return request("/v1/contacts?" + p).then((r) => r.data.contacts || []);
}

export async function contactById(id) {
  const list = await searchContacts(String(id), 1);
  return list.find((c) => String(c.id) === String(id)) || null;
}

function analysisPath(contactId, type) {
  return `/v1/contacts/${encodeURIComponent(contactId)}/analyses/${encodeURIComponent(type)}`;
}

// A user's vote on the result shown: {verdict, reason, script_version,
// generated_at} → the stored row (201).
export function sendFeedback(contactId, type, vote) {
  return request(analysisPath(contactId, type) + "/feedback", { method: "POST", body: vote })
    .then((r) => r.data);
}

// The plain (not streamed) answer, for learning why a stream could not
// start: EventSource reports only "error", never the status or the body.
export async function analysisPlain(contactId, type) {
  const { data, resp } = await request(analysisPath(contactId, type));
  return { result: data, serverTiming: resp.headers.get("Server-Timing"), xcache: resp.headers.get("X-Cache") };
}

// Opens the stream of one insight. handlers: meta(m), delta(text),
// result(doc), fail(ApiError). Returns {close()}.
export async function streamAnalysis(contactId, type, { refresh = false } = {}, handlers) {
  // errors=event: a generation that fails before any text still arrives
  // as an error event (code, message, retry_after), since EventSource
  // shows neither the status nor the body of a refused stream.
  const params = new URLSearchParams({ stream: "1", errors: "event" });
  if (refresh) params.set("refresh", "1");
  if (apiKey) {
    // The key never goes in a URL: a short-lived token made for this
    // contact and type does.
    const { data } = await request("/v1/stream-tokens", {
      method: "POST",
      body: { contact_id: Number(contactId), type },
    });
    params.set("token", data.token);
  }
  const es = new EventSource(base + analysisPath(contactId, type) + "?" + params);
  let opened = false;
  let done = false;
  const finish = () => {
    done = true;
    es.close();
  };
  es.addEventListener("open", () => {
    opened = true;
  });
  es.addEventListener("meta", (e) => handlers.meta(JSON.parse(e.data)));
  es.addEventListener("delta", (e) => handlers.delta(JSON.parse(e.data).text || ""));
  es.addEventListener("reset", () => handlers.reset && handlers.reset());
  es.addEventListener("result", (e) => {
    finish();
    handlers.result(JSON.parse(e.data));
  });
  es.addEventListener("error", (e) => {
    if (done) return;
    if (e.data) {
      // rapport's own error event, after the stream began
      finish();
      const err = JSON.parse(e.data).error || {};
      handlers.fail(new ApiError(err.status || 500, err.code || "error", err.message || "failed",
        err.retry_after || null, null));
      return;
    }
    finish();
    // No data: the stream was refused before any analysis ran (auth, a
    // bad id, the refresh limit) or the connection dropped. Ask once
    // without streaming to learn why (cheap: no generation starts for
    // those).
    handlers.unknown(opened);
  });
  return { close: finish };
}
