// render.js — DOM for results: one renderer per known analysis type and a
// generic one for any type a script adds. Text goes in with textContent
// only, never as HTML, so nothing a model writes can run in the page.

export function el(tag, attrs = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") n.className = v;
    else if (k === "text") n.textContent = v;
    else n.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    n.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return n;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  return n;
}

export function humanize(key) {
  const s = String(key).replace(/_/g, " ");
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function list(items, cls) {
  const ul = el("ul", { class: cls });
  for (const it of items || []) ul.append(el("li", {}, typeof it === "string" ? it : JSON.stringify(it)));
  return ul;
}

// ---- relationship_health: a gauge, the trend, the reasons ----------------

const TREND = {
  improving: { arrow: "↗", label: "Improving", cls: "good" },
  stable: { arrow: "→", label: "Stable", cls: "ok" },
  cooling: { arrow: "↘", label: "Cooling", cls: "warn" },
  at_risk: { arrow: "↓", label: "At risk", cls: "bad" },
};

function band(score) {
  if (score >= 70) return "good";
  if (score >= 40) return "warn";
  return "bad";
}

export function gauge(score) {
  const s = Math.max(0, Math.min(100, Number(score) || 0));
  const r = 52;
  const len = Math.PI * r; // a half circle
  const box = svg("svg", { viewBox: "0 0 120 70", class: "gauge-svg", "aria-hidden": "true" });
  box.append(svg("path", { d: "M 8 62 A 52 52 0 0 1 112 62", class: "gauge-track" }));
  box.append(svg("path", {
    d: "M 8 62 A 52 52 0 0 1 112 62",
    class: "gauge-value " + band(s),
    "stroke-dasharray": `${(len * s) / 100} ${len}`,
  }));
  const t = svg("text", { x: "60", y: "58", class: "gauge-number" });
  t.textContent = String(s);
  box.append(t);
  return el("div", { class: "gauge", role: "img", "aria-label": `Health score ${s} out of 100` }, box);
}

function renderHealth(r) {
  const trend = TREND[r.trend] || { arrow: "•", label: humanize(r.trend || "unknown"), cls: "ok" };
  const head = el("div", { class: "health-head" },
    gauge(r.score),
    el("div", {},
      el("p", { class: `trend ${trend.cls}` },
        el("span", { "aria-hidden": "true" }, trend.arrow + " "), trend.label),
      r.summary ? el("p", { class: "summary" }, r.summary) : null));
  const out = el("div", { class: "health" }, head);
  if (r.reasons && r.reasons.length) {
    out.append(el("h4", {}, "Why"), list(r.reasons, "reasons"));
  }
  return out;
}

// ---- smart_tips: a list of actions ---------------------------------------

const CHANNEL = { email: "Email", call: "Call", meeting: "Meeting", linkedin: "LinkedIn", other: "Other" };

function renderTips(r) {
  const ol = el("ol", { class: "tips" });
  for (const t of r.tips || []) {
    ol.append(el("li", { class: "tip" },
      el("p", { class: "tip-title" }, t.title || ""),
      el("p", { class: "tip-action" }, t.action || ""),
      t.why ? el("p", { class: "tip-why muted" }, "Why: " + t.why) : null,
      el("p", { class: "tip-meta" },
        t.channel ? el("span", { class: "badge" }, CHANNEL[t.channel] || humanize(t.channel)) : null,
        t.timing ? el("span", { class: "badge soft" }, t.timing) : null)));
  }
  return ol;
}

// ---- contextual_research: sections ----------------------------------------

const RESEARCH = [
  ["company_overview", "Company"],
  ["industry_context", "Industry"],
  ["talking_points", "Talking points"],
  ["open_questions", "Open questions"],
  ["risks", "Risks"],
];

function renderResearch(r) {
  const out = el("div", { class: "research" });
  for (const [k, title] of RESEARCH) {
    const v = r[k];
    if (v === undefined || v === null || (Array.isArray(v) && !v.length) || v === "") continue;
    out.append(el("section", { class: "research-section" },
      el("h4", {}, title), Array.isArray(v) ? list(v) : el("p", {}, v)));
  }
  return out;
}

// ---- any other type ---------------------------------------------------------

const HIDDEN_KEYS = new Set(["source", "signals", "note"]);

export function renderGeneric(value, depth = 0) {
  if (value === null || value === undefined) return el("span", { class: "muted" }, "—");
  if (Array.isArray(value)) {
    const ul = el("ul", { class: "generic-list" });
    for (const v of value) ul.append(el("li", {}, renderGeneric(v, depth + 1)));
    return ul;
  }
  if (typeof value === "object") {
    if (depth > 4) return el("code", {}, JSON.stringify(value));
    const dl = el("dl", { class: "generic" });
    for (const [k, v] of Object.entries(value)) {
      if (depth === 0 && HIDDEN_KEYS.has(k)) continue;
      dl.append(el("dt", {}, humanize(k)), el("dd", {}, renderGeneric(v, depth + 1)));
    }
    return dl;
  }
  if (typeof value === "boolean") return el("span", {}, value ? "yes" : "no");
  return el("span", {}, String(value));
}

const RENDERERS = {
  relationship_health: renderHealth,
  smart_tips: renderTips,
  contextual_research: renderResearch,
};

// The result object of a result document, the way its type calls for.
export function renderResult(type, doc) {
  const r = doc.result || {};
  const fn = RENDERERS[type];
  const body = el("div", { class: "result", "data-type": type, "data-renderer": fn ? type : "generic" });
  if (doc.fallback || r.source === "heuristic") {
    body.append(el("p", { class: "estimate" },
      el("strong", {}, "Estimate"), " — " + (r.note || "the AI model is unavailable right now; this is a heuristic from the CRM data.")));
  }
  let inner;
  try {
    inner = fn ? fn(r) : renderGeneric(r);
  } catch {
    inner = renderGeneric(r); // a result of an unexpected shape still shows
  }
  body.append(inner);
  return body;
}

// ---- time and phases --------------------------------------------------------

export function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 45) return s <= 5 ? "just now" : `${s} s ago`;
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min ago`;
  const h = Math.round(m / 60);
  if (h < 48) return `${h} h ago`;
  return `${Math.round(h / 24)} days ago`;
}

// "db;dur=1.2, script;dur=0.3, llm;dur=1210.5, total;dur=1213"
export function parseServerTiming(header) {
  if (!header) return [];
  return header.split(",").map((part) => {
    const [name, ...params] = part.trim().split(";");
    const out = { name: name.trim() };
    for (const p of params) {
      const [k, v] = p.trim().split("=");
      if (k === "dur") out.dur = parseFloat(v);
      if (k === "desc") out.desc = (v || "").replace(/^"|"$/g, "");
    }
    return out;
  }).filter((p) => p.name);
}

// The same phases from a result document's timings_ms.
// A phase that took no time (a cache hit reads no database and calls no
// model) is left out.
export function phasesFromTimings(t) {
  if (!t) return [];
  return ["db", "script", "llm", "total"]
    .filter((k) => typeof t[k] === "number" && (k === "total" || t[k] > 0))
    .map((k) => ({ name: k, dur: t[k] }));
}

const PHASE_LABEL = { db: "database", script: "script", llm: "model", total: "total", cache: "cache" };

export function renderPhases(phases) {
  const frag = document.createDocumentFragment();
  for (const p of phases) {
    const label = PHASE_LABEL[p.name] || p.name;
    const v = typeof p.dur === "number" ? (p.dur >= 100 ? p.dur.toFixed(0) : p.dur.toFixed(p.dur < 1 ? 2 : 1)) + " ms" : p.desc || "";
    frag.append(el("span", { class: "phase", "data-phase": p.name }, `${label} ${v}`));
  }
  return frag;
}

// The phases of an answer: its Server-Timing header when the page could
// read one (a plain request), else the same figures from the result
// document's timings_ms (a stream has no such header: its timings are
// known only at its end, and they come in the result).
export function parsePhases(serverTiming, timings) {
  const fromHeader = parseServerTiming(serverTiming);
  return fromHeader.length ? fromHeader : phasesFromTimings(timings);
}
