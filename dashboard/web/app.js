// Agent Passport dashboard. Plain JavaScript, no dependencies.
// Everything shown comes from the feed (GET /v1/feed, schema v1) or the
// dashboard API; every value is inserted with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "passport.token";
const TENANT_KEY = "passport.tenant";
const MAX_DECISIONS = 500;     // rows kept in the decision log
const MAX_ACTIVITY = 100;
const MAX_SPARK = 40;          // reputation points per agent
const RATE_WINDOW_MS = 10000;  // calls per second over the last 10 s
const DENY_WINDOW = 1000;      // deny rate over the last 1000 decisions
const STEPS = ["DETECTED", "DISPATCHED", "RESOLVED"];

const $ = (id) => document.getElementById(id);
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-") || k === "title" || k === "type" || k === "value") e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const kid of kids) if (kid != null) e.append(kid);
  return e;
};

const state = {
  token: null,
  tenant: null,
  session: null,
  ws: null,
  lastId: null,          // last stream id seen: reconnect resumes after it
  retry: 0,
  retryTimer: null,
  decisions: [],         // newest first
  decisionTimes: [],     // ms of recent decisions (for calls/s)
  incidents: new Map(),  // id -> incident details (merged)
  agents: new Map(),     // id -> agent
  rep: new Map(),        // id -> [scores]
};

// ---------- sign in ----------

function takeTokenFromFragment() {
  // #token=...&tenant=... : the fragment never leaves the browser. Strip
  // it at once so it is not left in the address bar or history.
  if (!location.hash || location.hash.length < 2) return;
  const p = new URLSearchParams(location.hash.slice(1));
  const tok = p.get("token");
  if (tok) sessionStorage.setItem(TOKEN_KEY, tok);
  const tenant = p.get("tenant");
  if (tenant) sessionStorage.setItem(TENANT_KEY, tenant);
  if (p.get("large") === "1") localStorage.setItem("passport.large", "1");
  history.replaceState(null, "", location.pathname + location.search);
}

async function api(method, path, body) {
  const opts = { method, headers: { "Authorization": "Bearer " + state.token }, cache: "no-store" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  let data = null;
  try { data = await resp.json(); } catch (_) { /* empty body */ }
  if (resp.status === 401) { signOut("The token was refused. Sign in again."); throw new Error("unauthorized"); }
  if (!resp.ok) throw new Error((data && data.detail) || resp.statusText);
  return data;
}

async function signIn(token) {
  state.token = token;
  try {
    state.session = await api("GET", "/api/session");
  } catch (e) {
    if (e.message !== "unauthorized") $("signin-error").textContent = "Sign-in failed: " + e.message;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  $("signin-error").textContent = "";
  const link = $("authority-link");
  link.textContent = "authority: " + state.session.authority_url;
  link.href = state.session.authority_url;
  setupTenants();
}

function signOut(msg) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  closeFeed();
  setStatus("signed-out", "signed out");
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = msg || "";
}

function setupTenants() {
  const sel = $("tenant");
  const input = $("tenant-input");
  sel.replaceChildren();
  const tenants = state.session.tenants || [];
  const wanted = sessionStorage.getItem(TENANT_KEY);
  if (tenants.length === 0) {
    sel.hidden = true;
    input.hidden = false;
    input.value = wanted || "";
    if (input.value) selectTenant(input.value);
    return;
  }
  sel.hidden = false;
  input.hidden = true;
  for (const t of tenants) sel.append(el("option", { value: t, text: t }));
  sel.value = tenants.includes(wanted) ? wanted : tenants[0];
  selectTenant(sel.value);
}

function selectTenant(t) {
  if (!t) return;
  sessionStorage.setItem(TENANT_KEY, t);
  state.tenant = t;
  state.lastId = null;
  state.decisions = [];
  state.decisionTimes = [];
  state.incidents.clear();
  state.agents.clear();
  state.rep.clear();
  dirty.decisions = [];
  $("decision-rows").replaceChildren();
  $("incident-rows").replaceChildren();
  $("activity-rows").replaceChildren();
  renderIncidents();
  loadAgents();
  loadTargets();
  openFeed();
}

// ---------- feed ----------

function setStatus(s, text) {
  const e = $("feed-status");
  e.dataset.state = s;
  e.textContent = text;
}

function closeFeed() {
  clearTimeout(state.retryTimer);
  if (state.ws) {
    state.ws.onclose = null;
    state.ws.close(1000);
    state.ws = null;
  }
}

async function openFeed() {
  closeFeed();
  if (!state.token || !state.tenant) return;
  const tenant = state.tenant;
  setStatus(state.lastId ? "reconnecting" : "connecting", state.lastId ? "reconnecting…" : "connecting…");
  let ticket;
  try {
    // The token goes in a header; the URL carries only a 30 s single-use ticket.
    ticket = (await api("POST", "/v1/feed/ticket", { tenant })).ticket;
  } catch (e) {
    if (state.token) scheduleReconnect();
    return;
  }
  if (tenant !== state.tenant) return;
  const q = new URLSearchParams({ ticket });
  if (state.lastId) q.set("since", state.lastId); else q.set("tail", "2000");
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(proto + "//" + location.host + "/v1/feed?" + q.toString());
  state.ws = ws;
  // A frame carries one or more events, one JSON object per line.
  ws.onmessage = (m) => { for (const line of String(m.data).split("\n")) if (line) onEvent(line); };
  ws.onclose = (e) => {
    state.ws = null;
    if (e.code === 1008) { signOut("Feed closed: " + (e.reason || "credential no longer valid")); return; }
    scheduleReconnect();
  };
}

function onEvent(line) {
  let ev;
  try { ev = JSON.parse(line); } catch (_) { return; }
  if (ev.v !== 1) return; // unknown schema version: ignore rather than misread
  if (ev.type === "live") {
    state.retry = 0;
    setStatus("live", "live");
    renderStats();
    return;
  }
  if (ev.id) {
    state.lastId = ev.id;
    $("last-id").textContent = "stream " + ev.id;
  }
  handle(ev);
}

function scheduleReconnect() {
  setStatus("reconnecting", "reconnecting…");
  clearTimeout(state.retryTimer);
  const delay = Math.min(10000, 300 * 2 ** state.retry) * (0.75 + Math.random() / 2);
  state.retry = Math.min(state.retry + 1, 6);
  state.retryTimer = setTimeout(openFeed, delay);
}

function handle(ev) {
  switch (ev.type) {
    case "decision": addDecision(ev); break;
    case "incident": addIncident(ev); break;
    case "reputation": addReputation(ev); break;
    case "agent_blocked": setBlocked(ev, true); break;
    case "agent_unblocked": setBlocked(ev, false); break;
    case "chaos": addChaos(ev); break;
  }
}

// ---------- decisions ----------

const fmtTime = (t) => {
  if (!t) return "";
  const d = new Date(t);
  if (isNaN(d)) return "";
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
};

// Rendering is coalesced to one pass per animation frame, so a busy feed
// (thousands of events a second) costs one DOM update per frame, not per
// event.
const dirty = { decisions: [], incidents: false, agents: false, scheduled: false };

function schedule() {
  if (dirty.scheduled) return;
  dirty.scheduled = true;
  requestAnimationFrame(flush);
}

function flush() {
  dirty.scheduled = false;
  if (dirty.decisions.length) {
    const rows = $("decision-rows");
    const frag = document.createDocumentFragment();
    // Newest first: the pending list is oldest first.
    for (let i = dirty.decisions.length - 1; i >= 0 && frag.childNodes.length < MAX_DECISIONS; i--) {
      if (matchesFilter(dirty.decisions[i])) frag.append(decisionRow(dirty.decisions[i]));
    }
    dirty.decisions = [];
    rows.prepend(frag);
    while (rows.children.length > MAX_DECISIONS) rows.lastChild.remove();
  }
  if (dirty.incidents) { dirty.incidents = false; renderIncidents(); }
  if (dirty.agents) { dirty.agents = false; renderAgents(); }
}

function addDecision(ev) {
  state.decisions.unshift(ev);
  if (state.decisions.length > DENY_WINDOW * 2) state.decisions.length = DENY_WINDOW;
  state.decisionTimes.push(Date.parse(ev.time) || Date.now());
  if (state.decisionTimes.length > 40000) state.decisionTimes.splice(0, 20000);
  dirty.decisions.push(ev);
  if (dirty.decisions.length > MAX_DECISIONS * 2) dirty.decisions.splice(0, dirty.decisions.length - MAX_DECISIONS);
  schedule();
}

function decisionRow(ev) {
  const agent = ev.agent_name || ev.agent_id || "–";
  return el("tr", { "data-testid": "decision", "data-decision": ev.decision || "", "data-id": ev.id || "" },
    el("td", { text: fmtTime(ev.time) }),
    el("td", { text: agent, title: ev.agent_id || "" }),
    el("td", { text: ev.action || ((ev.method || "") + " " + (ev.path || "")) }),
    el("td", { text: ev.resource || "" }),
    el("td", {}, el("span", { class: "pill " + (ev.decision || ""), text: ev.decision || "?" })),
    el("td", { class: "muted", text: (ev.reasons || []).join(", ") }));
}

function matchesFilter(ev) {
  const d = $("filter-decision").value;
  const a = $("filter-agent").value.trim().toLowerCase();
  const act = $("filter-action").value.trim().toLowerCase();
  if (d && ev.decision !== d) return false;
  if (a && !((ev.agent_name || "").toLowerCase().includes(a) || (ev.agent_id || "").toLowerCase().includes(a))) return false;
  if (act && !(ev.action || "").toLowerCase().includes(act)) return false;
  return true;
}

function rerenderDecisions() {
  dirty.decisions = [];
  const rows = state.decisions.filter(matchesFilter).slice(0, MAX_DECISIONS).map(decisionRow);
  $("decision-rows").replaceChildren(...rows);
}

// ---------- incidents ----------

function addIncident(ev) {
  let d = {};
  try { d = typeof ev.details === "string" ? JSON.parse(ev.details) : (ev.details || {}); } catch (_) { return; }
  if (!d.id) return;
  const prev = state.incidents.get(d.id) || { steps: {} };
  const inc = Object.assign(prev, d);
  inc.steps = prev.steps || {};
  // Step times from the timeline, the *_at fields, or the record time.
  for (const s of d.timeline || []) if (s.state && s.at && !inc.steps[s.state]) inc.steps[s.state] = s.at;
  if (d.detected_at) inc.steps.DETECTED = inc.steps.DETECTED || d.detected_at;
  if (d.dispatched_at) inc.steps.DISPATCHED = inc.steps.DISPATCHED || d.dispatched_at;
  if (d.resolved_at) inc.steps.RESOLVED = inc.steps.RESOLVED || d.resolved_at;
  if (d.state && !inc.steps[d.state]) inc.steps[d.state] = ev.time;
  inc.seen = ev.time;
  state.incidents.set(d.id, inc);
  dirty.incidents = true;
  schedule();
  activity(ev, "incident " + d.id + " " + (d.state || "") + " (" + (d.type || "") + " on " + (d.target || "") + ")");
}

function resolutionMs(inc) {
  if (typeof inc.resolution_ms === "number" && inc.resolution_ms > 0) return inc.resolution_ms;
  const a = Date.parse(inc.steps.DETECTED), b = Date.parse(inc.steps.RESOLVED);
  return isNaN(a) || isNaN(b) ? null : b - a;
}

const fmtDur = (ms) => ms == null ? "–" : ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";

function renderIncidents() {
  const list = [...state.incidents.values()].sort((a, b) => String(b.steps.DETECTED || b.seen).localeCompare(String(a.steps.DETECTED || a.seen)));
  const rows = list.slice(0, 50).map((inc) => {
    const steps = el("div", { class: "steps" });
    const names = inc.state === "ESCALATED" ? ["DETECTED", "DISPATCHED", "ESCALATED"] : STEPS;
    names.forEach((s, i) => {
      if (i > 0) steps.append(el("span", { class: "arrow", text: "→" }));
      const at = inc.steps[s];
      let sub = at ? fmtTime(at) : "…";
      if (at && i > 0 && inc.steps.DETECTED) {
        const dt = Date.parse(at) - Date.parse(inc.steps.DETECTED);
        if (!isNaN(dt)) sub += " (+" + fmtDur(dt) + ")";
      }
      steps.append(el("span", { class: "step" + (at ? " done" : ""), "data-step": s, "data-testid": "incident-step-" + s },
        el("span", { class: "name", text: s }), el("span", { class: "at", text: sub })));
    });
    return el("tr", { "data-testid": "incident", "data-incident-id": inc.id, "data-state": inc.state || "" },
      el("td", { class: "inc-id" }, el("span", { class: "pill " + (inc.state || ""), text: inc.state || "?" }), " ", el("span", { class: "muted", text: inc.id })),
      el("td", { "data-testid": "incident-fault" }, el("div", { text: inc.type || "" }), el("div", { class: "muted", "data-testid": "incident-target", text: inc.target ? "on " + inc.target : "" })),
      el("td", {}, steps),
      el("td", { "data-testid": "incident-ttr", text: inc.state === "RESOLVED" ? fmtDur(resolutionMs(inc)) : "–" }));
  });
  $("incident-rows").replaceChildren(...rows);
  $("incidents-empty").hidden = rows.length > 0;
}

// ---------- agents ----------

async function loadAgents() {
  const tenant = state.tenant;
  try {
    const data = await api("GET", "/api/tenants/" + encodeURIComponent(tenant) + "/agents");
    if (tenant !== state.tenant) return;
    for (const a of data.agents || []) {
      state.agents.set(a.id, a);
      const h = state.rep.get(a.id) || [];
      if (h.length === 0) h.push(a.reputation);
      state.rep.set(a.id, h);
    }
    $("agent-error").textContent = "";
    renderAgents();
  } catch (e) {
    $("agent-error").textContent = "Agents: " + e.message;
  }
}

function addReputation(ev) {
  const d = ev.details || {};
  const id = d.agent_id || ev.agent_id;
  if (!id || typeof d.score !== "number") return;
  const h = state.rep.get(id) || [];
  h.push(d.score);
  if (h.length > MAX_SPARK) h.shift();
  state.rep.set(id, h);
  const a = state.agents.get(id);
  if (a) a.reputation = d.score;
  dirty.agents = true;
  schedule();
}

function setBlocked(ev, blocked) {
  const d = ev.details || {};
  const id = d.agent_id || ev.agent_id;
  const a = state.agents.get(id);
  if (a) { a.blocked = blocked; dirty.agents = true; schedule(); }
  const name = (a && a.name) || id;
  activity(ev, (blocked ? "blocked " : "unblocked ") + name + (d.reason ? ": " + d.reason : ""));
}

function sparkline(values) {
  const NS = "http://www.w3.org/2000/svg";
  const w = 64, h = 20;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("aria-hidden", "true");
  const v = values.length === 1 ? [values[0], values[0]] : values;
  const pts = v.map((s, i) => `${(i * (w - 2)) / (v.length - 1) + 1},${h - 1 - (Math.max(0, Math.min(100, s)) / 100) * (h - 2)}`);
  const pl = document.createElementNS(NS, "polyline");
  pl.setAttribute("points", pts.join(" "));
  svg.append(pl);
  return svg;
}

function renderAgents() {
  const list = [...state.agents.values()].sort((a, b) => (a.name || "").localeCompare(b.name || ""));
  const rows = list.map((a) => {
    const btn = el("button", {
      type: "button", class: a.blocked ? "" : "danger",
      "data-testid": (a.blocked ? "unblock-" : "block-") + a.name, text: a.blocked ? "Unblock" : "Block",
    });
    btn.addEventListener("click", () => toggleBlock(a));
    const rep = typeof a.reputation === "number" ? a.reputation.toFixed(1) : "–";
    return el("tr", { "data-testid": "agent", "data-agent-id": a.id, "data-blocked": String(!!a.blocked) },
      el("td", {}, el("div", { text: a.name || a.id }), el("div", { class: "muted", text: a.type || "" })),
      el("td", {}, el("span", { class: "pill " + (a.trust_level || ""), text: a.trust_level || "" })),
      el("td", {}, el("span", { class: "rep" }, el("span", { "data-testid": "reputation", text: rep }), sparkline(state.rep.get(a.id) || [a.reputation || 0]))),
      el("td", {}, el("span", { class: "pill " + (a.blocked ? "blocked" : "active"), "data-testid": "agent-state", text: a.blocked ? "blocked" : "active" })),
      el("td", {}, btn));
  });
  $("agent-rows").replaceChildren(...rows);
}

async function toggleBlock(a) {
  const path = "/api/tenants/" + encodeURIComponent(state.tenant) + "/agents/" + encodeURIComponent(a.id) + (a.blocked ? "/unblock" : "/block");
  try {
    await api("POST", path, a.blocked ? undefined : { reason: "blocked from the dashboard" });
    a.blocked = !a.blocked; // the feed confirms with agent_blocked/agent_unblocked
    renderAgents();
    $("agent-error").textContent = "";
  } catch (e) {
    $("agent-error").textContent = (a.blocked ? "Unblock" : "Block") + " failed: " + e.message;
  }
}

// ---------- chaos ----------

async function loadTargets() {
  const tenant = state.tenant;
  const sel = $("chaos-target");
  const box = $("chaos-buttons");
  try {
    const data = await api("GET", "/api/tenants/" + encodeURIComponent(tenant) + "/targets");
    if (tenant !== state.tenant) return;
    sel.replaceChildren(...(data.targets || []).map((t) => el("option", { value: t, text: t })));
    box.replaceChildren(...(data.chaos_types || []).map((type) => {
      const b = el("button", { type: "button", id: "chaos-" + type, "data-testid": "chaos-" + type, text: type.replace("_", " ") });
      b.addEventListener("click", () => fireChaos(type));
      return b;
    }));
  } catch (e) {
    $("chaos-result").textContent = "Targets: " + e.message;
  }
}

async function fireChaos(type) {
  const target = $("chaos-target").value;
  const out = $("chaos-result");
  out.textContent = "firing " + type + " at " + target + "…";
  try {
    await api("POST", "/api/tenants/" + encodeURIComponent(state.tenant) + "/chaos", { type, target });
    out.textContent = "fired " + type + " at " + target;
  } catch (e) {
    out.textContent = "chaos failed: " + e.message;
  }
}

function addChaos(ev) {
  const d = ev.details || {};
  activity(ev, "chaos " + (d.action || "inject") + " " + (d.type || "") + " at " + (d.target || ""));
}

function activity(ev, text) {
  const list = $("activity-rows");
  list.prepend(el("li", { "data-testid": "activity-" + ev.type }, el("time", { text: fmtTime(ev.time) + " " }), text));
  while (list.children.length > MAX_ACTIVITY) list.lastChild.remove();
}

// ---------- headline figures ----------

function renderStats() {
  const now = Date.now();
  const times = state.decisionTimes;
  let n = 0;
  for (let i = times.length - 1; i >= 0 && now - times[i] <= RATE_WINDOW_MS; i--) if (times[i] <= now + 1000) n++;
  $("stat-cps").textContent = (n / (RATE_WINDOW_MS / 1000)).toFixed(1);
  const recent = state.decisions.slice(0, DENY_WINDOW);
  $("stat-deny-rate").textContent = recent.length ? (100 * recent.filter((d) => d.decision !== "allow").length / recent.length).toFixed(1) + " %" : "–";
  const ttr = [...state.incidents.values()].filter((i) => i.state === "RESOLVED").map(resolutionMs).filter((x) => x != null).sort((a, b) => a - b);
  if (ttr.length) {
    $("stat-ttr-mean").textContent = fmtDur(ttr.reduce((a, b) => a + b, 0) / ttr.length);
    $("stat-ttr-p95").textContent = fmtDur(ttr[Math.max(0, Math.ceil(0.95 * ttr.length) - 1)]);
  } else {
    $("stat-ttr-mean").textContent = "–";
    $("stat-ttr-p95").textContent = "–";
  }
  $("stat-open").textContent = String([...state.incidents.values()].filter((i) => i.state !== "RESOLVED").length);
}

// ---------- start ----------

function setLarge(on) {
  document.documentElement.classList.toggle("large", on);
  $("large-type").setAttribute("aria-pressed", String(on));
  localStorage.setItem("passport.large", on ? "1" : "0");
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromFragment();
  setLarge(localStorage.getItem("passport.large") === "1" || new URLSearchParams(location.search).get("large") === "1");
  $("large-type").addEventListener("click", () => setLarge(!document.documentElement.classList.contains("large")));
  $("sign-out").addEventListener("click", () => signOut(""));
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = $("signin-token").value.trim();
    $("signin-token").value = "";
    if (v) signIn(v);
  });
  $("tenant").addEventListener("change", (e) => selectTenant(e.target.value));
  $("tenant-input").addEventListener("change", (e) => selectTenant(e.target.value.trim()));
  for (const id of ["filter-decision", "filter-agent", "filter-action"]) $(id).addEventListener("input", rerenderDecisions);
  $("decision-filters").addEventListener("submit", (e) => e.preventDefault());
  setInterval(renderStats, 1000);
  setInterval(() => { if (state.token && state.tenant) loadAgents(); }, 15000);
  const tok = sessionStorage.getItem(TOKEN_KEY);
  if (tok) signIn(tok);
});
