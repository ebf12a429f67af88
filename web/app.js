// app.js — the panel: contact search, the contact card, and one live
// insight per analysis type rapport serves (GET /v1/analysis-types), each
// streamed over EventSource and then rendered by render.js, with a thumbs
// up / down (and an optional reason) on each result shown. The contact is
// in the URL's hash (#contact=42), so a CRM can link or embed a card.

import * as api from "./api.js";
import { ago, el, humanize, parsePhases, renderPhases, renderResult } from "./render.js";

const $ = (id) => document.getElementById(id);

// The three the CRM product names; any other type shows with its own
// name and description, after them.
const KNOWN = {
  smart_tips: "Smart Engagement Tips",
  relationship_health: "Relationship Health",
  contextual_research: "Contextual Research",
};
const ORDER = ["smart_tips", "relationship_health", "contextual_research"];
// The server's cap on a feedback reason, in bytes of UTF-8.
const REASON_MAX = 2000;

const state = {
  types: null,          // from /v1/analysis-types
  contact: null,        // the card's contact
  insights: new Map(),  // type -> {node, stream, cachedAt, cache}
  searchSeq: 0,
};

// ---- errors people can act on ---------------------------------------------

function human(err) {
  const wait = err.retryAfter ? ` Try again in ${err.retryAfter} s.` : "";
  switch (err.code) {
    case "database_unavailable":
      return { title: "The CRM database is unavailable", text: "rapport cannot read this contact's data right now. Cached insights still show; try again in a moment.", kind: "database" };
    case "upstream_unavailable":
      return { title: "The AI model is unavailable", text: "The model provider keeps failing, so rapport has paused calls to it." + (wait || " Try again shortly."), kind: "model" };
    case "overloaded":
      return { title: "Too busy right now", text: "Many insights are being generated at once." + (wait || " Try again shortly."), kind: "busy" };
    case "refresh_rate_limited":
      return { title: "Too many refreshes", text: "Refreshing regenerates with the model; there is a limit per user." + wait, kind: "busy" };
    case "upstream_timeout":
      return { title: "The AI model did not answer in time", text: "Try again; if it keeps happening the provider is slow.", kind: "model" };
    case "upstream_error":
    case "upstream_unreachable":
    case "upstream_bad_reply":
    case "upstream_invalid_reply":
    case "upstream_refused":
      return { title: "The AI model did not give a usable answer", text: err.message, kind: "model" };
    case "contact_not_found":
      return { title: "Contact not found", text: "This contact does not exist (any more) in the CRM.", kind: "missing" };
    case "unauthorized":
    case "invalid_stream_token":
      return { title: "API key needed", text: "Enter a valid API key to see insights.", kind: "auth" };
    case "network":
      return { title: "Cannot reach rapport", text: "Check the connection, then try again.", kind: "network" };
    case "shutting_down":
      return { title: "rapport is restarting", text: "Try again in a few seconds.", kind: "network" };
    case "state_unavailable":
      return { title: "Feedback cannot be saved right now", text: "rapport's own database is unavailable." + (wait || " Try again in a moment."), kind: "database" };
    case "reason_too_long":
      return { title: "The reason is too long", text: `At most ${REASON_MAX} bytes; please shorten it.`, kind: "other" };
    default:
      return { title: "Something went wrong", text: `${err.message} (${err.code})`, kind: "other" };
  }
}

function errorBox(err) {
  const h = human(err);
  const box = el("div", { class: `error-box ${h.kind}`, "data-error": err.code },
    el("p", { class: "error-title" }, h.title),
    el("p", {}, h.text));
  if (err.requestId) box.append(el("p", { class: "muted small" }, "request " + err.requestId));
  return box;
}

// ---- the API key -----------------------------------------------------------

let keyWaiters = [];

function askForKey(message) {
  const dlg = $("key-dialog");
  $("key-error").textContent = message || "";
  $("key-button").hidden = false;
  if (!dlg.open) {
    $("key-input").value = "";
    dlg.showModal();
    $("key-input").focus();
  }
  return new Promise((resolve) => keyWaiters.push(resolve));
}

function setupKeyDialog() {
  const dlg = $("key-dialog");
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    api.setKey(key, $("key-remember").checked);
    dlg.close();
    const w = keyWaiters;
    keyWaiters = [];
    w.forEach((r) => r(true));
  });
  $("key-cancel").addEventListener("click", () => {
    dlg.close();
    const w = keyWaiters;
    keyWaiters = [];
    w.forEach((r) => r(false));
  });
  $("key-button").addEventListener("click", () => askForKey().then((ok) => ok && start()));
}

// Runs fn; on a 401 asks for a key and tries again (until cancelled).
async function withAuth(fn) {
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (err.status !== 401) throw err;
      const ok = await askForKey(api.hasKey() ? "That key was refused." : "");
      if (!ok) throw err;
    }
  }
}

// ---- search ------------------------------------------------------------------

function contactLine(c) {
  return [c.title, c.company].filter(Boolean).join(" · ");
}

async function runSearch(q) {
  const seq = ++state.searchSeq;
  const status = $("results-status");
  const ul = $("results");
  status.textContent = "Searching…";
  let list;
  try {
    list = await withAuth(() => api.searchContacts(q, 20));
  } catch (err) {
    if (seq !== state.searchSeq) return;
    ul.replaceChildren();
    status.textContent = "";
    const li = el("li", { class: "results-error" }, errorBox(err));
    ul.append(li);
    return;
  }
  if (seq !== state.searchSeq) return;
  ul.replaceChildren();
  status.textContent = list.length ? `${list.length} contact${list.length === 1 ? "" : "s"}${list.length === 20 ? " (first 20)" : ""}` : "No contact matches.";
  for (const c of list) {
    const b = el("button", { type: "button", class: "result-item", "data-contact": String(c.id) },
      el("span", { class: "result-name" }, c.full_name || `#${c.id}`),
      el("span", { class: "result-sub muted" }, [c.email, contactLine(c)].filter(Boolean).join(" — ")));
    b.addEventListener("click", () => {
      location.hash = `contact=${c.id}`;
    });
    const li = el("li", {}, b);
    if (state.contact && String(state.contact.id) === String(c.id)) b.setAttribute("aria-current", "true");
    ul.append(li);
  }
}

function setupSearch() {
  const input = $("search-input");
  let timer = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => runSearch(input.value), 200);
  });
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    clearTimeout(timer);
    runSearch(input.value);
  });
  // Arrow keys move between the input and the results.
  input.addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown") {
      const first = $("results").querySelector("button");
      if (first) {
        e.preventDefault();
        first.focus();
      }
    }
  });
  $("results").addEventListener("keydown", (e) => {
    if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
    const buttons = [...$("results").querySelectorAll("button")];
    const i = buttons.indexOf(document.activeElement);
    if (i < 0) return;
    e.preventDefault();
    if (e.key === "ArrowDown" && i + 1 < buttons.length) buttons[i + 1].focus();
    else if (e.key === "ArrowUp") (i === 0 ? input : buttons[i - 1]).focus();
  });
}

// ---- the contact card --------------------------------------------------------

function showContact(c) {
  state.contact = c;
  $("card-empty").hidden = true;
  $("contact").hidden = false;
  $("contact-name").textContent = c.full_name || `Contact #${c.id}`;
  $("contact-role").textContent = contactLine(c);
  const facts = $("contact-facts");
  facts.replaceChildren();
  const add = (label, value) => {
    if (value === null || value === undefined || value === "") return;
    facts.append(el("dt", {}, label), el("dd", {}, value));
  };
  if (c.email) {
    facts.append(el("dt", {}, "Email"), el("dd", {}, el("a", { href: `mailto:${c.email}` }, c.email)));
  }
  add("Phone", c.phone);
  add("Industry", c.industry);
  const STAGE = { sql: "SQL", mql: "MQL" };
  add("Stage", c.lifecycle_stage ? STAGE[c.lifecycle_stage] || humanize(c.lifecycle_stage) : null);
  add("Owner", c.owner);
  add("Contact id", String(c.id));
  for (const b of document.querySelectorAll(".result-item")) {
    if (b.dataset.contact === String(c.id)) b.setAttribute("aria-current", "true");
    else b.removeAttribute("aria-current");
  }
  buildInsights();
}

function showCardError(err) {
  state.contact = null;
  $("contact").hidden = true;
  const empty = $("card-empty");
  empty.hidden = false;
  empty.replaceChildren(errorBox(err));
}

async function openFromHash() {
  const m = /(?:^#|&)contact=(\d{1,18})(?:&|$)/.exec(location.hash);
  if (!m) return;
  const id = m[1];
  if (state.contact && String(state.contact.id) === id) return;
  try {
    const c = await withAuth(() => api.contactById(id));
    if (!c) {
      showCardError(new api.ApiError(404, "contact_not_found", "no such contact", null, null));
      return;
    }
    showContact(c);
    $("card").focus({ preventScroll: true });
  } catch (err) {
    showCardError(err);
  }
}

// ---- insights ------------------------------------------------------------------

function typeOrder(types) {
  const names = types.filter((t) => t.loaded !== false).map((t) => t.name);
  const known = ORDER.filter((n) => names.includes(n));
  return known.concat(names.filter((n) => !ORDER.includes(n)).sort());
}

function buildInsights() {
  for (const ins of state.insights.values()) if (ins.stream) ins.stream.close();
  state.insights.clear();
  const box = $("insights");
  box.replaceChildren();
  const tpl = $("insight-template");
  for (const name of typeOrder(state.types || [])) {
    const t = state.types.find((x) => x.name === name);
    const node = tpl.content.firstElementChild.cloneNode(true);
    node.dataset.type = name;
    node.querySelector(".insight-title").textContent = KNOWN[name] || humanize(name);
    node.querySelector(".insight-desc").textContent = t.description || "";
    const label = KNOWN[name] || humanize(name);
    const btn = node.querySelector(".run");
    btn.setAttribute("aria-label", `Show ${label}`);
    const again = node.querySelector(".refresh");
    again.setAttribute("aria-label", `Refresh ${label} (ask the model again)`);
    const ins = { node, stream: null, cachedAt: null, cache: null, shown: null };
    state.insights.set(name, ins);
    setupFeedback(name, ins, label);
    // Show: the cached answer when there is one. Refresh: a new generation.
    // Try again (after an error) repeats what failed.
    btn.addEventListener("click", () => runInsight(name, node.dataset.state === "error" && ins.lastRefresh));
    again.addEventListener("click", () => runInsight(name, true));
    box.append(node);
  }
}

function setStatus(ins, text) {
  ins.node.querySelector(".insight-status").textContent = text;
}

function cacheLabel(ins) {
  const c = ins.cache;
  if (!c) return "";
  const age = ins.cachedAt !== null ? ago(Date.now() - ins.cachedAt) : "";
  switch (c.status) {
    case "hit": return `cached ${age}`;
    case "stale": return `cached ${age} · refreshing…`;
    case "revalidated": return `checked ${age}: data unchanged`;
    case "coalesced": return "generated just now (shared)";
    case "fallback": return "estimate · the model is unavailable";
    default: return `generated ${age}`;
  }
}

function paintCache(ins) {
  const badge = ins.node.querySelector(".cache");
  badge.textContent = cacheLabel(ins);
  badge.dataset.cache = ins.cache ? ins.cache.status : "";
}

function showResult(name, ins, doc, phases) {
  const node = ins.node;
  node.dataset.state = "done";
  node.querySelector(".live").hidden = true;
  node.querySelector(".insight-body").replaceChildren(renderResult(name, doc));
  ins.cache = doc.cache || null;
  const ageMs = doc.cache && typeof doc.cache.age_ms === "number" ? doc.cache.age_ms : 0;
  ins.cachedAt = Date.now() - ageMs;
  paintCache(ins);
  const ph = node.querySelector(".phases");
  ph.replaceChildren(renderPhases(phases && phases.length ? phases : parsePhases(null, doc.timings_ms)));
  node.querySelector(".insight-foot").hidden = false;
  node.querySelector(".refresh").hidden = false;
  resetFeedback(ins, doc);
  const btn = node.querySelector(".run");
  btn.disabled = false;
  btn.textContent = "Show";
  setStatus(ins, doc.fallback ? "Estimate shown: the model is unavailable." : "");
}

// ---- feedback: a vote on the result shown ------------------------------------------

const encoder = new TextEncoder();

// The block under a result: thumbs up / down (toggle buttons), then an
// optional reason and Send. The vote carries the result's script_version
// and generated_at, so the prompt author's counts are per version.
function setupFeedback(name, ins, label) {
  const fb = ins.node.querySelector(".feedback");
  const form = fb.querySelector(".feedback-form");
  const reason = fb.querySelector(".feedback-reason");
  const count = fb.querySelector(".feedback-count");
  const send = fb.querySelector(".feedback-send");
  const thumbs = [...fb.querySelectorAll(".thumb")];
  fb.querySelector(".feedback-ask").setAttribute("aria-label", `Was ${label} useful?`);
  for (const t of thumbs) {
    t.setAttribute("aria-label", t.dataset.verdict === "up" ? `${label} was useful` : `${label} was not useful`);
    t.addEventListener("click", () => {
      if (fb.dataset.feedbackState === "sent" || fb.dataset.feedbackState === "sending") return;
      for (const o of thumbs) o.setAttribute("aria-pressed", String(o === t));
      fb.dataset.verdict = t.dataset.verdict;
      fb.querySelector(".feedback-prompt").textContent =
        t.dataset.verdict === "up" ? "What made it useful?" : "What was wrong or missing?";
      fb.dataset.feedbackState = "choosing";
      fb.querySelector(".feedback-status").textContent = "";
      form.hidden = false;
      reason.focus();
    });
  }
  const cancel = () => {
    for (const o of thumbs) o.setAttribute("aria-pressed", "false");
    delete fb.dataset.verdict;
    fb.dataset.feedbackState = "idle";
    form.hidden = true;
    thumbs[0].focus();
  };
  fb.querySelector(".feedback-cancel").addEventListener("click", cancel);
  form.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      e.preventDefault();
      cancel();
    } else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  reason.addEventListener("input", () => {
    const bytes = encoder.encode(reason.value).length;
    count.textContent = bytes > REASON_MAX * 0.8 ? `${bytes} / ${REASON_MAX} bytes` : "";
    count.classList.toggle("over", bytes > REASON_MAX);
    send.disabled = bytes > REASON_MAX;
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const shown = ins.shown;
    const contact = state.contact;
    if (!shown || !contact || !fb.dataset.verdict) return;
    const status = fb.querySelector(".feedback-status");
    fb.dataset.feedbackState = "sending";
    send.disabled = true;
    status.textContent = "Sending…";
    const vote = { verdict: fb.dataset.verdict, script_version: shown.script_version };
    if (reason.value.trim()) vote.reason = reason.value.trim();
    if (shown.generated_at) vote.generated_at = shown.generated_at;
    try {
      await withAuth(() => api.sendFeedback(contact.id, name, vote));
      if (ins.shown !== shown) return; // a new result meanwhile
      fb.dataset.feedbackState = "sent";
      form.hidden = true;
      for (const t of thumbs) t.disabled = true;
      status.textContent = "Thanks for the feedback.";
      thumbs.find((t) => t.dataset.verdict === vote.verdict).focus();
    } catch (err) {
      if (ins.shown !== shown) return;
      fb.dataset.feedbackState = "error";
      fb.dataset.error = err.code;
      send.disabled = false;
      const h = human(err);
      status.textContent = `${h.title}. ${h.text}`;
      status.setAttribute("role", "alert");
    }
  });
}

// A new result is shown: a fresh vote for it (none on an estimate, which
// is the script's fallback, not the model's answer).
function resetFeedback(ins, doc) {
  const fb = ins.node.querySelector(".feedback");
  ins.shown = doc.fallback || !doc.script_version ? null
    : { script_version: doc.script_version, generated_at: doc.generated_at || null };
  fb.hidden = !ins.shown;
  fb.dataset.feedbackState = "idle";
  delete fb.dataset.verdict;
  delete fb.dataset.error;
  for (const t of fb.querySelectorAll(".thumb")) {
    t.setAttribute("aria-pressed", "false");
    t.disabled = false;
  }
  fb.querySelector(".feedback-form").hidden = true;
  fb.querySelector(".feedback-reason").value = "";
  fb.querySelector(".feedback-count").textContent = "";
  fb.querySelector(".feedback-send").disabled = false;
  const status = fb.querySelector(".feedback-status");
  status.textContent = "";
  status.setAttribute("role", "status");
}

function showError(ins, err) {
  const node = ins.node;
  node.dataset.state = "error";
  const box = node.querySelector(".insight-error");
  box.hidden = false;
  box.replaceChildren(errorBox(err));
  setStatus(ins, "");
  const btn = node.querySelector(".run");
  btn.disabled = false;
  btn.textContent = "Try again";
  if (err.retryAfter) {
    // Wait out the retry hint before the button works again.
    btn.disabled = true;
    let left = err.retryAfter;
    const tick = () => {
      if (left <= 0 || !btn.disabled) {
        btn.disabled = false;
        btn.textContent = "Try again";
        return;
      }
      btn.textContent = `Try again in ${left} s`;
      left -= 1;
      setTimeout(tick, 1000);
    };
    tick();
  }
}

async function runInsight(name, refresh) {
  const ins = state.insights.get(name);
  const contact = state.contact;
  if (!ins || !contact) return;
  if (ins.stream) ins.stream.close();
  const node = ins.node;
  const live = node.querySelector(".live");
  ins.lastRefresh = refresh;
  node.dataset.state = "loading";
  node.querySelector(".insight-error").hidden = true;
  // The vote is on the result shown: none while another one comes.
  ins.shown = null;
  node.querySelector(".feedback").hidden = true;
  live.textContent = "";
  live.hidden = true;
  setStatus(ins, refresh ? "Refreshing…" : "Loading…");
  const stillHere = () => state.contact === contact && state.insights.get(name) === ins;
  const handlers = {
    meta(m) {
      if (!stillHere()) return;
      const what = { miss: "Generating…", coalesced: "Joining a generation in progress…", hit: "Cached", stale: "Cached · refreshing…", fallback: "The model is unavailable: estimating…" };
      setStatus(ins, what[m.cache] || "Loading…");
      node.dataset.cache = m.cache;
    },
    delta(text) {
      if (!stillHere()) return;
      live.hidden = false;
      node.dataset.state = "streaming";
      live.textContent += text;
      live.scrollTop = live.scrollHeight;
    },
    reset() {
      if (stillHere()) live.textContent = "";
    },
    result(doc) {
      ins.stream = null;
      if (stillHere()) showResult(name, ins, doc, null);
    },
    fail(err) {
      ins.stream = null;
      if (stillHere()) showError(ins, err);
    },
    async unknown(opened) {
      ins.stream = null;
      if (!stillHere()) return;
      if (opened && live.textContent) {
        showError(ins, new api.ApiError(0, "network", "the stream was cut", null, null));
        return;
      }
      // The stream did not start: its HTTP status is the reason, which
      // EventSource hides. The plain request says it (and a fallback or
      // a cached answer may be there meanwhile).
      try {
        const r = await withAuth(() => api.analysisPlain(contact.id, name));
        if (stillHere()) showResult(name, ins, r.result, parsePhases(r.serverTiming, r.result.timings_ms));
      } catch (err) {
        if (stillHere()) showError(ins, err);
      }
    },
  };
  try {
    ins.stream = await withAuth(() => api.streamAnalysis(contact.id, name, { refresh }, handlers));
  } catch (err) {
    showError(ins, err);
  }
}

// ---- start -------------------------------------------------------------------------

async function start() {
  try {
    state.types = await withAuth(() => api.analysisTypes());
  } catch (err) {
    $("results-status").textContent = "";
    $("results").replaceChildren(el("li", { class: "results-error" }, errorBox(err)));
    return;
  }
  if (api.hasKey()) $("key-button").hidden = false;
  await openFromHash();
  await runSearch($("search-input").value);
  document.body.dataset.ready = "1";
}

setupKeyDialog();
setupSearch();
window.addEventListener("hashchange", openFromHash);
// Ages ("cached 3 min ago") stay true while the page is open.
setInterval(() => {
  for (const ins of state.insights.values()) if (ins.cache) paintCache(ins);
}, 15000);
start();
