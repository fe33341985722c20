// Agent Passport dashboard. Plain JavaScript, no dependencies.
// Everything shown comes from the feed (GET /v1/feed, schema v1) or the
// dashboard API; every value is inserted with textContent, never as HTML.
//
// Time: the feed's events carry the server's clock. The page never compares
// them with its own clock: it learns the server's time from /api/session
// and dates everything (the chart, calls/s, expiries) on serverNow().
"use strict";

const TOKEN_KEY = "passport.token";
const TENANT_KEY = "passport.tenant";
const REPLAY_TAIL = 2000;      // stream entries replayed on a fresh connect
const MAX_DECISIONS = 500;     // rows kept in the decision log
const MAX_ACTIVITY = 100;
const MAX_SPARK = 40;          // reputation points per agent
const MAX_INCIDENTS = 200;     // incidents kept
const CLOSED_SHOWN = 5;        // closed incidents shown before "show all"
const BUCKET_MS = 30 * 1000;   // one bar of the decision chart
const BUCKETS = 30;            // 30 bars: the last 15 minutes
const WINDOW_MS = BUCKET_MS * BUCKETS;
const RATE_MS = 60 * 1000;     // calls/s is averaged over the last minute
const APPROVALS_POLL_MS = 5000;
// Time-to-resolve histogram bins (upper bounds, ms) and their labels.
const TTR_BINS = [25, 50, 100, 250, 500, 1000, 2500, Infinity];
const TTR_LABELS = ["<25ms", "<50ms", "<100ms", "<250ms", "<0.5s", "<1s", "<2.5s", "≥2.5s"];

const $ = (id) => document.getElementById(id);
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-") || k === "title" || k === "type" || k === "value" || k.startsWith("aria-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const kid of kids) if (kid != null) e.append(kid);
  return e;
};

const state = {
  token: null,
  tenant: null,
  session: null,
  skew: 0,               // server clock minus this page's clock, ms
  ws: null,
  lastId: null,          // last stream id seen: reconnect resumes after it
  retry: 0,
  retryTimer: null,
  approvalsTimer: null,
  historyFrom: null,     // server ms of the first replayed event (the chart's data starts there)
  decisions: [],         // newest first (the log and its filters)
  decisionTimes: [],     // server ms of recent decisions, in arrival order (calls/s)
  buckets: new Map(),    // floor(time / BUCKET_MS) -> {allow, deny, error}
  incidents: new Map(),  // id -> incident details (merged)
  showAllIncidents: false,
  agents: new Map(),     // id -> agent, with repAt/blockedAt: the server time its values are from
  rep: new Map(),        // id -> [{t, s}] reputation points, by time
  approvals: [],
  focusApproval: null,   // approval id to show (from an approval_url)
};

const serverNow = () => Date.now() + state.skew;
const timeOf = (t) => { const ms = Date.parse(t); return isNaN(ms) ? null : ms; };

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
  // #approval=<id> (an approval_url): show that approval once listed.
  state.focusApproval = p.get("approval") || null;
  if (p.get("large") === "1") localStorage.setItem("passport.large", "1");
  history.replaceState(null, "", location.pathname + location.search);
}

// ApiError carries a refusal's code and reasons (problem+json) to the page.
class ApiError extends Error {
  constructor(status, data) {
    super((data && data.detail) || String(status));
    this.status = status;
    this.code = (data && data.code) || "";
    this.reasons = (data && Array.isArray(data.reasons)) ? data.reasons.filter((r) => typeof r === "string") : [];
  }
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
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

// syncClock learns the server's clock from a server time taken while the
// request was in flight (the midpoint is the best guess).
function syncClock(serverTime, sent, received) {
  const t = timeOf(serverTime);
  if (t != null) state.skew = t - (sent + received) / 2;
}

async function signIn(token) {
  state.token = token;
  try {
    const sent = Date.now();
    state.session = await api("GET", "/api/session");
    syncClock(state.session.now, sent, Date.now());
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
  clearInterval(state.approvalsTimer);
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
  state.historyFrom = null;
  state.decisions = [];
  state.decisionTimes = [];
  state.buckets.clear();
  state.incidents.clear();
  state.agents.clear();
  state.rep.clear();
  state.approvals = [];
  dirty.decisions = [];
  $("decision-rows").replaceChildren();
  $("incident-rows").replaceChildren();
  $("activity-rows").replaceChildren();
  renderIncidents();
  renderAgents();
  renderStats();
  loadAgents();
  loadTargets();
  setupApprovals();
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
  if (state.lastId) q.set("since", state.lastId); else q.set("tail", String(REPLAY_TAIL));
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
    if (state.historyFrom == null) state.historyFrom = serverNow(); // nothing replayed: data starts now
    setStatus("live", "live");
    renderStats();
    return;
  }
  if (ev.id) {
    state.lastId = ev.id;
    $("last-id").textContent = "stream " + ev.id;
  }
  if (state.historyFrom == null) state.historyFrom = timeOf(ev.time);
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
    case "approval_requested":
    case "approval_approved":
    case "approval_denied": addApprovalEvent(ev); break;
  }
}

// ---------- formatting ----------

const fmtTime = (t) => {
  const ms = typeof t === "number" ? t : timeOf(t);
  if (ms == null) return "";
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
};
const fmtDur = (ms) => ms == null ? "–" : ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
// fmtRate keeps two significant digits for the slow rates a demo has.
const fmtRate = (r) => r === 0 ? "0" : r < 10 ? r.toFixed(2) : r < 100 ? r.toFixed(1) : String(Math.round(r));

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
    renderChart();
  }
  if (dirty.incidents) { dirty.incidents = false; renderIncidents(); renderTTR(); }
  if (dirty.agents) { dirty.agents = false; renderAgents(); }
}

// ---------- decisions ----------

function addDecision(ev) {
  const t = timeOf(ev.time) ?? serverNow();
  state.decisions.unshift(ev);
  if (state.decisions.length > MAX_DECISIONS * 2) state.decisions.length = MAX_DECISIONS;
  state.decisionTimes.push(t);
  if (state.decisionTimes.length > 40000) state.decisionTimes.splice(0, 20000);
  const k = Math.floor(t / BUCKET_MS);
  const b = state.buckets.get(k) || { allow: 0, deny: 0, error: 0 };
  const d = ev.decision === "allow" || ev.decision === "deny" ? ev.decision : "error";
  b[d]++;
  state.buckets.set(k, b);
  dirty.decisions.push(ev);
  if (dirty.decisions.length > MAX_DECISIONS * 2) dirty.decisions.splice(0, dirty.decisions.length - MAX_DECISIONS);
  schedule();
}

// onBehalfOf is a delegated call's chain read from the acting agent back
// to the root: "commander-1" for healer-1 acting for commander-1, or
// "mid-1 on behalf of root-1" for a longer chain.
function onBehalfOf(ev) {
  const chain = ev.chain || [];
  const out = [];
  for (let i = chain.length - 2; i >= 0; i--) out.push(chain[i].name || chain[i].id);
  return out.join(" on behalf of ");
}

function decisionRow(ev) {
  const behalf = onBehalfOf(ev);
  const agent = (ev.agent_name || ev.agent_id || "–") + (behalf ? " on behalf of " + behalf : "");
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
  if (a && !((ev.agent_name || "").toLowerCase().includes(a) || (ev.agent_id || "").toLowerCase().includes(a) ||
    (ev.chain || []).some((l) => (l.name || "").toLowerCase().includes(a) || (l.id || "").toLowerCase().includes(a)))) return false;
  if (act && !(ev.action || "").toLowerCase().includes(act)) return false;
  return true;
}

function rerenderDecisions() {
  dirty.decisions = [];
  const rows = state.decisions.filter(matchesFilter).slice(0, MAX_DECISIONS).map(decisionRow);
  $("decision-rows").replaceChildren(...rows);
}

// chartBuckets returns the last BUCKETS buckets, oldest first, and drops
// older ones.
function chartBuckets(now) {
  const last = Math.floor(now / BUCKET_MS);
  for (const k of state.buckets.keys()) if (k <= last - BUCKETS) state.buckets.delete(k);
  const out = [];
  for (let k = last - BUCKETS + 1; k <= last; k++) out.push({ k, ...(state.buckets.get(k) || { allow: 0, deny: 0, error: 0 }) });
  return out;
}

// niceMax rounds a count up to 1, 2 or 5 times a power of ten.
function niceMax(n) {
  if (n <= 1) return 1;
  const p = 10 ** Math.floor(Math.log10(n));
  for (const m of [1, 2, 5, 10]) if (m * p >= n) return m * p;
  return 10 * p;
}

function renderChart() {
  const NS = "http://www.w3.org/2000/svg";
  const svg = $("decision-chart");
  const now = serverNow();
  const bs = chartBuckets(now);
  const max = niceMax(Math.max(0, ...bs.map((b) => b.allow + b.deny + b.error)));
  const W = 900 / BUCKETS, H = 100;
  const kids = [];
  const rect = (cls, x, y, w, h, attrs) => {
    const r = document.createElementNS(NS, "rect");
    r.setAttribute("class", cls);
    r.setAttribute("x", x); r.setAttribute("y", y); r.setAttribute("width", w); r.setAttribute("height", h);
    for (const [k, v] of Object.entries(attrs || {})) r.setAttribute(k, v);
    return r;
  };
  // The part of the window before the feed's history began has no data.
  const from = state.historyFrom;
  if (from != null && from > now - WINDOW_MS) {
    const x = Math.max(0, Math.min(900, ((from - (now - WINDOW_MS)) / WINDOW_MS) * 900));
    kids.push(rect("nodata", 0, 0, x, H));
    $("chart-since").textContent = "since " + fmtTime(from).slice(0, 8);
  } else {
    $("chart-since").textContent = "";
  }
  kids.push(rect("grid", 0, H / 2, 900, 0.4));
  bs.forEach((b, i) => {
    const g = document.createElementNS(NS, "g");
    g.setAttribute("data-testid", "chart-bucket");
    g.setAttribute("data-allow", b.allow); g.setAttribute("data-deny", b.deny); g.setAttribute("data-error", b.error);
    let y = H;
    for (const d of ["allow", "deny", "error"]) {
      if (!b[d]) continue;
      const h = (b[d] / max) * (H - 2);
      y -= h;
      g.append(rect(d, i * W + 1, y, W - 2, h));
    }
    const t = document.createElementNS(NS, "title");
    t.textContent = fmtTime(b.k * BUCKET_MS).slice(0, 8) + ": " + b.allow + " allow, " + b.deny + " deny, " + b.error + " error";
    g.append(t);
    kids.push(g);
  });
  svg.replaceChildren(...kids);
  $("chart-max").textContent = max + " / 30 s";
  const sum = bs.reduce((a, b) => ({ allow: a.allow + b.allow, deny: a.deny + b.deny, error: a.error + b.error }), { allow: 0, deny: 0, error: 0 });
  $("sum-allow").textContent = sum.allow;
  $("sum-deny").textContent = sum.deny;
  $("sum-error").textContent = sum.error;
  const total = sum.allow + sum.deny + sum.error;
  $("stat-deny-rate").textContent = total ? (100 * (sum.deny + sum.error) / total).toFixed(1) + " %" : "–";
}

// callsPerSecond counts the decisions of the last minute on the server's
// clock: a quiet demo makes a few calls a minute, which a 10 s window
// mostly read as 0.0.
function callsPerSecond(now) {
  const times = state.decisionTimes;
  let n = 0;
  for (let i = times.length - 1; i >= 0; i--) {
    const age = now - times[i];
    if (age <= RATE_MS && age >= -5000) n++;
  }
  return n / (RATE_MS / 1000);
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
  if (d.injected_at) inc.steps.INJECTED = d.injected_at;
  if (d.detected_at) inc.steps.DETECTED = inc.steps.DETECTED || d.detected_at;
  if (d.dispatched_at) inc.steps.DISPATCHED = inc.steps.DISPATCHED || d.dispatched_at;
  if (d.resolved_at) inc.steps.RESOLVED = inc.steps.RESOLVED || d.resolved_at;
  if (d.escalated_at) inc.steps.ESCALATED = inc.steps.ESCALATED || d.escalated_at;
  if (d.state && !inc.steps[d.state]) inc.steps[d.state] = ev.time;
  inc.seen = ev.time;
  state.incidents.set(d.id, inc);
  if (state.incidents.size > MAX_INCIDENTS) {
    const oldest = [...state.incidents.values()].filter((i) => !isOpen(i)).sort((a, b) => startOf(a) - startOf(b))[0];
    if (oldest) state.incidents.delete(oldest.id);
  }
  dirty.incidents = true;
  schedule();
  activity(ev, "incident " + d.id + " " + (d.state || "") + " (" + (d.type || "") + " on " + (d.target || "") + ")");
}

const isOpen = (inc) => inc.state === "DETECTED" || inc.state === "DISPATCHED" || !inc.state;
// startOf is when the fault began: its injection when announced, else its detection.
const startOf = (inc) => timeOf(inc.steps.INJECTED) ?? timeOf(inc.steps.DETECTED) ?? timeOf(inc.seen) ?? 0;

// ttrMs is the time to resolve, measured from the fault's injection when
// it is known (the fleet announced it), else from its detection.
function ttrMs(inc) {
  if (inc.state !== "RESOLVED") return null;
  const end = timeOf(inc.steps.RESOLVED);
  const start = timeOf(inc.steps.INJECTED) ?? timeOf(inc.steps.DETECTED);
  if (end == null || start == null) return null;
  return Math.max(0, end - start);
}

function incidentRow(inc) {
  const steps = el("div", { class: "steps" });
  const names = (inc.steps.INJECTED ? ["INJECTED"] : []).concat(["DETECTED", "DISPATCHED", inc.state === "ESCALATED" ? "ESCALATED" : "RESOLVED"]);
  const start = startOf(inc);
  names.forEach((s, i) => {
    const at = inc.steps[s];
    const ms = timeOf(at);
    const sub = ms == null ? "…" : i === 0 ? fmtTime(ms) : "+" + fmtDur(ms - start);
    steps.append(el("span", { class: "step" + (ms != null ? " done" : ""), "data-step": s, "data-testid": "incident-step-" + s, title: at ? s + " " + at : s },
      el("span", { class: "name", text: s }), el("span", { class: "at", text: sub })));
  });
  const ttr = ttrMs(inc);
  const ttrCell = el("td", { "data-testid": "incident-ttr", text: fmtDur(ttr) });
  if (ttr != null && !inc.steps.INJECTED) ttrCell.append(el("span", { class: "ttr-from", text: "from detection" }));
  return el("tr", { "data-testid": "incident", "data-incident-id": inc.id, "data-state": inc.state || "", title: inc.id },
    el("td", {}, el("span", { class: "pill " + (inc.state || ""), text: inc.state || "?" })),
    el("td", { class: "fault", "data-testid": "incident-fault" },
      el("div", { class: "what", title: (inc.type || "") + (inc.target ? " on " + inc.target : "") + " · " + inc.id },
        el("span", { text: inc.type || "" }), el("span", { class: "muted", "data-testid": "incident-target", text: inc.target ? "on " + inc.target : "" })),
      steps),
    ttrCell);
}

// renderIncidents shows every open incident and the last CLOSED_SHOWN
// closed ones; the rest wait behind "show all".
function renderIncidents() {
  const all = [...state.incidents.values()].sort((a, b) => startOf(b) - startOf(a));
  const open = all.filter(isOpen);
  const closed = all.filter((i) => !isOpen(i));
  const shown = open.concat(state.showAllIncidents ? closed : closed.slice(0, CLOSED_SHOWN));
  $("incident-rows").replaceChildren(...shown.map(incidentRow));
  $("incidents-empty").hidden = shown.length > 0;
  const hidden = closed.length - CLOSED_SHOWN;
  const btn = $("incidents-all");
  btn.hidden = hidden <= 0;
  btn.textContent = state.showAllIncidents ? "show fewer" : "show all (" + hidden + " more)";
  btn.setAttribute("aria-pressed", String(state.showAllIncidents));
  $("incident-count").textContent = open.length + " open · " + closed.length + " closed";
  $("stat-open").textContent = String(open.length);
}

// percentile is the nearest-rank percentile of sorted xs.
const percentile = (xs, p) => xs[Math.max(0, Math.ceil(p * xs.length) - 1)];

function renderTTR() {
  const ttrs = [...state.incidents.values()].map(ttrMs).filter((x) => x != null).sort((a, b) => a - b);
  const counts = TTR_BINS.map(() => 0);
  for (const x of ttrs) counts[TTR_BINS.findIndex((b) => x < b)]++;
  const max = Math.max(1, ...counts);
  $("ttr-histogram").replaceChildren(...counts.map((n, i) => el("div", { class: "bin", "data-testid": "ttr-bin", "data-count": n, title: TTR_LABELS[i] + ": " + n },
    el("span", { class: "n", text: n ? String(n) : "" }),
    el("div", { class: "bar" + (n ? "" : " zero") }),
    el("span", { class: "lbl", text: TTR_LABELS[i] }))));
  // Heights are set through the CSSOM (the CSP allows no inline style attributes).
  [...$("ttr-histogram").querySelectorAll(".bar")].forEach((b, i) => { b.style.height = (counts[i] / max) * 2.6 + "rem"; });
  if (ttrs.length) {
    const p50 = fmtDur(percentile(ttrs, 0.5)), p95 = fmtDur(percentile(ttrs, 0.95));
    $("ttr-summary").textContent = "p50 " + p50 + " · p95 " + p95 + " · n " + ttrs.length;
    $("stat-ttr-p50").textContent = p50;
    $("stat-ttr-p95").textContent = p95;
  } else {
    $("ttr-summary").textContent = "none resolved yet";
    $("stat-ttr-p50").textContent = "–";
    $("stat-ttr-p95").textContent = "–";
  }
}

// ---------- agents ----------

// addRepPoint keeps an agent's reputation history in time order.
function addRepPoint(id, t, s) {
  const h = state.rep.get(id) || [];
  let i = h.length;
  while (i > 0 && h[i - 1].t > t) i--;
  if (!(i > 0 && h[i - 1].t === t && h[i - 1].s === s)) h.splice(i, 0, { t, s });
  while (h.length > MAX_SPARK) h.shift();
  state.rep.set(id, h);
}

async function loadAgents() {
  const tenant = state.tenant;
  try {
    const data = await api("GET", "/api/tenants/" + encodeURIComponent(tenant) + "/agents");
    if (tenant !== state.tenant) return;
    // as_of is the server time before the authority was asked: every
    // event older than it is already in these values.
    const asOf = timeOf(data.as_of) ?? serverNow();
    for (const a of data.agents || []) {
      const cur = state.agents.get(a.id);
      const agent = Object.assign({}, cur || {}, a);
      // A feed event newer than this answer wins over it.
      if (cur && cur.repAt > asOf) agent.reputation = cur.reputation; else agent.repAt = asOf;
      if (cur && cur.blockedAt > asOf) agent.blocked = cur.blocked; else agent.blockedAt = asOf;
      state.agents.set(a.id, agent);
      if (typeof a.reputation === "number") addRepPoint(a.id, asOf, a.reputation);
    }
    $("agent-error").textContent = "";
    renderAgents();
  } catch (e) {
    $("agent-error").textContent = "Agents: " + e.message;
  }
}

// addReputation applies a reputation event. A replayed event older than
// the value read from the API joins the history but never replaces it.
function addReputation(ev) {
  const d = ev.details || {};
  const id = d.agent_id || ev.agent_id;
  if (!id || typeof d.score !== "number") return;
  const t = timeOf(ev.time) ?? serverNow();
  addRepPoint(id, t, d.score);
  const a = state.agents.get(id);
  if (a && !(a.repAt > t)) { a.reputation = d.score; a.repAt = t; }
  dirty.agents = true;
  schedule();
}

function setBlocked(ev, blocked) {
  const d = ev.details || {};
  const id = d.agent_id || ev.agent_id;
  const a = state.agents.get(id);
  const t = timeOf(ev.time) ?? serverNow();
  if (a && !(a.blockedAt > t)) { a.blocked = blocked; a.blockedAt = t; dirty.agents = true; schedule(); }
  const name = (a && a.name) || id;
  activity(ev, (blocked ? "blocked " : "unblocked ") + name + (d.reason ? ": " + d.reason : ""));
}

function sparkline(points) {
  const NS = "http://www.w3.org/2000/svg";
  const w = 44, h = 16;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("aria-hidden", "true");
  const v = points.length === 1 ? [points[0], points[0]] : points;
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
    const hist = (state.rep.get(a.id) || []).map((p) => p.s);
    const name = a.name || a.id;
    return el("tr", { "data-testid": "agent", "data-agent-id": a.id, "data-blocked": String(!!a.blocked) },
      el("td", { class: "name", "data-testid": "agent-name", text: name, title: name + " · " + (a.type || "") + (a.blocked ? " · blocked" : "") + " · " + a.id }),
      el("td", {}, el("span", { class: "pill " + (a.trust_level || ""), text: a.trust_level || "" })),
      el("td", {}, el("span", { class: "rep" }, el("span", { "data-testid": "reputation", text: rep }), sparkline(hist.length ? hist : [a.reputation || 0]))),
      el("td", {}, btn));
  });
  $("agent-rows").replaceChildren(...rows);
  const blocked = list.filter((a) => a.blocked).length;
  $("agent-count").textContent = list.length + (blocked ? " · " + blocked + " blocked" : "");
}

async function toggleBlock(a) {
  const path = "/api/tenants/" + encodeURIComponent(state.tenant) + "/agents/" + encodeURIComponent(a.id) + (a.blocked ? "/unblock" : "/block");
  try {
    await api("POST", path, a.blocked ? undefined : { reason: "blocked from the dashboard" });
    a.blocked = !a.blocked; // the feed confirms with agent_blocked/agent_unblocked
    a.blockedAt = serverNow();
    renderAgents();
    $("agent-error").textContent = "";
  } catch (e) {
    $("agent-error").textContent = (a.blocked ? "Unblock" : "Block") + " failed: " + e.message;
  }
}

// ---------- approvals ----------

// The panel stays hidden until the API offers approvals. Each pending
// approval shows the exact call (method, path, query, body), the agent,
// the action, the reasons and who approved so far, with Approve and Deny.
// The server escapes control and invisible characters in what the agent
// sent, and everything is inserted as text.
function setupApprovals() {
  clearInterval(state.approvalsTimer);
  const offered = !!(state.session && state.session.approvals);
  $("approvals").hidden = !offered;
  $("approval-rows").replaceChildren();
  if (!offered) return;
  loadApprovals();
  state.approvalsTimer = setInterval(loadApprovals, APPROVALS_POLL_MS);
}

async function loadApprovals() {
  const tenant = state.tenant;
  try {
    const data = await api("GET", "/api/tenants/" + encodeURIComponent(tenant) + "/approvals");
    if (tenant !== state.tenant) return;
    state.approvals = Array.isArray(data.approvals) ? data.approvals : [];
    renderApprovals();
  } catch (_) { /* keep the last list; the next poll retries */ }
}

// approvalKey changes when a row must be drawn anew (not for the clock).
const approvalKey = (a) => [a.id, a.state, (a.approvers || []).join(",")].join("|");

function renderApprovals() {
  const now = serverNow();
  const list = state.approvals.filter((a) => (timeOf(a.expires_at) ?? Infinity) > now);
  const box = $("approval-rows");
  // Rows are kept while their approval is unchanged, so a comment being
  // typed survives the poll.
  const old = new Map([...box.children].map((li) => [li.dataset.key, li]));
  const rows = list.map((a) => old.get(approvalKey(a)) || approvalRow(a));
  for (const [i, a] of list.entries()) {
    const left = timeOf(a.expires_at);
    rows[i].querySelector(".expires").textContent = left == null ? "" : "expires in " + fmtLeft(left - now);
  }
  if (rows.length !== box.children.length || rows.some((r, i) => box.children[i] !== r)) box.replaceChildren(...rows);
  $("approvals-empty").hidden = list.length > 0;
  $("approval-count").textContent = list.length ? String(list.length) : "";
  if (state.focusApproval) {
    const li = box.querySelector('li[data-approval-id="' + CSS.escape(state.focusApproval) + '"]');
    if (li) {
      li.classList.add("focus");
      li.scrollIntoView({ block: "nearest" });
      state.focusApproval = null;
    }
  }
}

function approvalRow(a) {
  const call = (a.path || "") + (a.query ? "?" + a.query : "");
  const approvers = a.approvers || [];
  const need = a.required_approvers || 1;
  const comment = el("input", { type: "text", "data-testid": "approval-comment", placeholder: "comment (kept in the audit trail)", maxLength: 1024 });
  const approve = el("button", { type: "button", "data-testid": "approval-approve", text: "Approve" });
  const deny = el("button", { type: "button", class: "danger", "data-testid": "approval-deny", text: "Deny" });
  const err = el("p", { class: "error", "data-testid": "approval-error", role: "alert" });
  const li = el("li", { "data-testid": "approval", "data-approval-id": a.id || "", "data-key": approvalKey(a) },
    el("div", { class: "approval-head" },
      el("span", { class: "pill DISPATCHED", text: a.method || "" }),
      el("span", { class: "what", "data-testid": "approval-call", text: call + " · " + (a.agent || ""), title: (a.id || "") + ": " + call }),
      el("span", { class: "muted expires" })),
    el("div", { class: "approval-meta muted", "data-testid": "approval-meta" },
      [a.action, a.resource ? "on " + a.resource : "", (a.reasons || []).join(", "),
        approvers.length + " of " + need + " approver" + (need === 1 ? "" : "s") + (approvers.length ? " (" + approvers.join(", ") + ")" : "")]
        .filter(Boolean).join(" · ")),
    a.reason ? el("div", { class: "approval-why", text: a.reason }) : null,
    a.body ? el("pre", { class: "approval-body", "data-testid": "approval-body",
      title: (a.body_bytes || 0) + " bytes, sha256 " + (a.body_sha256 || ""),
      text: (a.body_encoding ? "(" + a.body_encoding + ") " : "") + a.body + (a.body_truncated ? "\n… (" + a.body_bytes + " bytes in all)" : "") }) : null,
    el("div", { class: "approval-actions" }, comment, approve, deny),
    err);
  const decide = async (ok) => {
    approve.disabled = deny.disabled = true;
    err.textContent = "";
    try {
      const path = "/api/tenants/" + encodeURIComponent(state.tenant) + "/approvals/" + encodeURIComponent(a.id) + (ok ? "/approve" : "/deny");
      const data = await api("POST", path, { comment: comment.value.trim() });
      li.dataset.state = (data.approval && data.approval.state) || "";
      await loadApprovals();
    } catch (e) {
      err.textContent = (ok ? "Approve" : "Deny") + " refused" + (e.code ? " (" + e.code + ")" : "") + ": " + e.message;
      approve.disabled = deny.disabled = false;
    }
  };
  approve.addEventListener("click", () => decide(true));
  deny.addEventListener("click", () => decide(false));
  return li;
}

const fmtLeft = (ms) => ms < 60000 ? Math.max(0, Math.round(ms / 1000)) + " s" : Math.round(ms / 60000) + " min";

// An approval was asked for or decided: the list changes now, not at the
// next poll; the activity log says who decided.
function addApprovalEvent(ev) {
  const d = ev.details || {};
  const what = ev.type === "approval_requested" ? "approval asked for " : ev.type === "approval_approved" ? "approved by " + (d.approver || "?") + ": " : "denied by " + (d.approver || "?") + ": ";
  activity(ev, what + (ev.method || "") + " " + (ev.path || "") + (d.state ? " (" + d.state + ")" : ""));
  if (state.session && state.session.approvals) loadApprovals();
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
  out.className = "";
  out.textContent = "firing " + type + " at " + target + "…";
  try {
    await api("POST", "/api/tenants/" + encodeURIComponent(state.tenant) + "/chaos", { type, target });
    out.textContent = "fired " + type + " at " + target;
  } catch (e) {
    // A refusal says why: its code and the policy's reasons.
    out.className = "refused";
    out.dataset.code = e.code || "";
    out.replaceChildren(el("div", { "data-testid": "chaos-refusal", text: (e.code ? "refused (" + e.code + "): " : "chaos failed: ") + e.message }));
    if (e.reasons && e.reasons.length) {
      out.append(el("ul", { "data-testid": "chaos-reasons" }, ...e.reasons.map((r) => el("li", { text: r }))));
    }
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
  $("stat-cps").textContent = fmtRate(callsPerSecond(serverNow()));
  renderChart();
  renderTTR();
  if (state.approvals.length) renderApprovals();
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
  $("incidents-all").addEventListener("click", () => { state.showAllIncidents = !state.showAllIncidents; renderIncidents(); });
  for (const id of ["filter-decision", "filter-agent", "filter-action"]) $(id).addEventListener("input", rerenderDecisions);
  $("decision-filters").addEventListener("submit", (e) => e.preventDefault());
  setInterval(renderStats, 1000);
  setInterval(() => { if (state.token && state.tenant) loadAgents(); }, 15000);
  const tok = sessionStorage.getItem(TOKEN_KEY);
  if (tok) signIn(tok);
});
