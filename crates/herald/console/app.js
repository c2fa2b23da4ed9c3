// Herald console: plain JavaScript, no build step, no third-party code.
// Every datum comes from the /v1 API with the operator's bearer token, kept
// in sessionStorage (this tab only). The DOM is built with nodes, never from
// HTML strings, so nothing a receiver or an event wrote can become markup.
"use strict";

const TOKEN_KEY = "herald.token";
const STATUSES = ["pending", "retrying", "delivered", "failed", "render_failed"];

// ------------------------------------------------------------ small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

// replaceChildren without the absent ones (null would become "null").
function put(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function say(text) {
  document.getElementById("status").textContent = text;
}

function badge(status) {
  return el("span", { class: `badge s-${status}` }, status);
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString(undefined, { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

// datetime-local values are local times without a zone.
function localInput(date) {
  const p = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${p(date.getMonth() + 1)}-${p(date.getDate())}T${p(date.getHours())}:${p(date.getMinutes())}`;
}

function params() {
  const hash = location.hash.slice(1);
  const q = hash.indexOf("?");
  return { path: q < 0 ? hash : hash.slice(0, q), query: new URLSearchParams(q < 0 ? "" : hash.slice(q + 1)) };
}

// ---------------------------------------------------------------- the API

class Unauthorized extends Error {}

let calls = 0; // API calls made, for the page-view figure in the docs.

async function api(method, path, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) throw new Unauthorized();
  const init = { method, headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  calls += 1;
  document.body.dataset.apiCalls = String(calls);
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new Unauthorized();
  }
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const msg = data.error ? `${data.error.code}: ${data.error.message}` : `HTTP ${resp.status}`;
    const e = new Error(msg);
    e.status = resp.status;
    e.body = data;
    throw e;
  }
  return data;
}

let webhookCache = null;
async function webhookIds() {
  if (!webhookCache) webhookCache = (await api("GET", "/v1/webhooks")).webhooks.map((w) => w.id);
  return webhookCache;
}

function webhookSelect(id, selected) {
  return webhookIds().then((ids) =>
    el("select", { id, name: "webhook", required: true },
      ids.map((w) => el("option", { value: w, selected: w === selected }, w))));
}

// ------------------------------------------------------------ login, router

function showLogin(message) {
  stopLive();
  document.getElementById("nav").hidden = true;
  document.getElementById("view").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("token").focus();
}

async function login(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  const token = input.value.trim();
  input.value = "";
  sessionStorage.setItem(TOKEN_KEY, token);
  webhookCache = null;
  try {
    await webhookIds();
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(e instanceof Unauthorized ? "This token was refused." : `Herald did not answer: ${e.message}`);
    return;
  }
  if (!location.hash || location.hash === "#/login") location.hash = "#/history";
  else route();
}

let liveTimer = null;
function stopLive() {
  if (liveTimer) clearInterval(liveTimer);
  liveTimer = null;
}

const views = {
  history: viewHistory,
  n: viewNotification,
  circuits: viewCircuits,
  preview: viewPreview,
  live: viewLive,
};

async function route() {
  stopLive();
  if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin();
  const { path, query } = params();
  const [name, arg] = path.replace(/^\//, "").split("/");
  const view = views[name] || viewHistory;
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  for (const a of document.querySelectorAll("nav a")) {
    const current = a.getAttribute("href") === `#/${name}` || (name === "n" && a.getAttribute("href") === "#/history");
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const root = document.getElementById("view");
  root.hidden = false;
  root.replaceChildren(el("p", { class: "note" }, "Loading…"));
  try {
    await view(root, arg ? decodeURIComponent(arg) : null, query);
    document.body.dataset.view = name || "history";
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin("The token was refused. Log in again.");
    root.replaceChildren(el("h1", {}, "Something went wrong"), el("p", { class: "error", role: "alert" }, e.message));
  }
}

function heading(root, text, ...rest) {
  const h = el("h1", { tabindex: "-1" }, text);
  put(root, h, ...rest);
  h.focus();
  return h;
}

// ----------------------------------------------------------------- history

async function viewHistory(root, _arg, query) {
  const ids = await webhookIds();
  if (ids.length === 0) {
    heading(root, "Communication history", el("p", {}, "No webhook is defined."));
    return;
  }
  const webhook = query.get("webhook") || ids[0];
  const status = query.get("status") || "";
  const now = new Date();
  const from = query.get("from") ? new Date(query.get("from")) : new Date(now - 7 * 86400e3);
  const to = query.get("to") ? new Date(query.get("to")) : null;
  const cursor = query.get("cursor") || "";

  const statusSelect = el("select", { id: "f-status", name: "status" },
    el("option", { value: "" }, "any status"),
    STATUSES.map((s) => el("option", { value: s, selected: s === status }, s)));
  const form = el("form", { class: "filters", "aria-label": "Filters" },
    el("div", {}, el("label", { for: "f-webhook" }, "Webhook"), await webhookSelect("f-webhook", webhook)),
    el("div", {}, el("label", { for: "f-status" }, "Status"), statusSelect),
    el("div", {}, el("label", { for: "f-from" }, "From"), el("input", { id: "f-from", type: "datetime-local", value: localInput(from) })),
    el("div", {}, el("label", { for: "f-to" }, "To (empty: now)"), el("input", { id: "f-to", type: "datetime-local", value: to ? localInput(to) : "" })),
    el("div", {}, el("button", { type: "submit" }, "Search")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    q.set("webhook", form.querySelector("#f-webhook").value);
    const s = form.querySelector("#f-status").value;
    if (s) q.set("status", s);
    const f = form.querySelector("#f-from").value;
    if (f) q.set("from", new Date(f).toISOString());
    const t = form.querySelector("#f-to").value;
    if (t) q.set("to", new Date(t).toISOString());
    location.hash = `#/history?${q}`;
  });

  const range = new URLSearchParams({ webhook, from: from.toISOString() });
  if (to) range.set("to", to.toISOString());
  const listQuery = new URLSearchParams(range);
  if (status) listQuery.set("status", status);
  listQuery.set("limit", "50");
  if (cursor) listQuery.set("cursor", cursor);

  const countsLine = el("p", { id: "counts", class: "note", "aria-live": "polite" }, "Counting…");
  const tableWrap = el("div", { class: "table-wrap" });
  const pager = el("div", { class: "row" });
  heading(root, "Communication history", form, countsLine, tableWrap, pager, bulkPanel(webhook, status, from, to));

  const page = await api("GET", `/v1/notifications?${listQuery}`);
  const rows = page.items.map(({ notification: n, state }) =>
    el("tr", {},
      el("td", {}, el("a", { href: `#/n/${n.id}` }, when(n.created_at))),
      el("td", {}, badge(state.status)),
      el("td", {}, n.event_type),
      el("td", {}, n.subject ?? "—"),
      el("td", {}, String(state.attempts)),
      el("td", { class: "mono" }, n.id)));
  tableWrap.replaceChildren(rows.length === 0
    ? el("p", {}, "No notification matches.")
    : el("table", { id: "history" },
      el("caption", { class: "note" }, `${webhook}, newest first`),
      el("thead", {}, el("tr", {}, ["Created", "Status", "Event type", "Subject", "Attempts", "Notification id"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows)));
  const nav = (c) => {
    const q = new URLSearchParams(params().query);
    if (c) q.set("cursor", c);
    else q.delete("cursor");
    return `#/history?${q}`;
  };
  put(pager,
    cursor ? el("a", { href: nav(null) }, "First page") : null,
    page.next_cursor ? el("a", { href: nav(page.next_cursor), id: "older" }, "Older") : null);
  document.body.dataset.rendered = "history";
  // For herald-bench console: time to the first render, and API calls.
  document.body.dataset.renderedMs = String(Math.round(performance.now()));

  // The counts come after the page: a long range takes longer to count.
  api("GET", `/v1/notifications/counts?${range}`).then((c) => {
    const mark = c.complete ? "" : "+";
    countsLine.replaceChildren(`${c.total}${mark} in range: `,
      ...STATUSES.filter((s) => c.counts[s]).flatMap((s, i) => [i ? ", " : "",
        el("a", { href: `#/history?${new URLSearchParams({ ...Object.fromEntries(range), status: s })}`, "data-status": s }, `${s} ${c.counts[s]}${mark}`)]));
    for (const opt of statusSelect.options) {
      if (opt.value) opt.textContent = `${opt.value} (${c.counts[opt.value] || 0}${mark})`;
    }
    document.body.dataset.countedMs = String(Math.round(performance.now()));
  }).catch((e) => { countsLine.textContent = `Counts unavailable: ${e.message}`; });
}

function bulkPanel(webhook, status, from, to) {
  const target = status || "failed";
  const panel = el("section", { class: "panel", "aria-labelledby": "bulk-title" });
  const body = { webhook, status: target, from: from.toISOString() };
  if (to) body.to = to.toISOString();
  const out = el("div", { id: "bulk-result", "aria-live": "polite" });
  const start = el("button", { type: "button", id: "bulk-start", class: "secondary" }, `Re-send every ${target} notification in this range…`);
  start.addEventListener("click", async () => {
    start.disabled = true;
    try {
      const dry = await api("POST", "/v1/notifications/resend", { ...body, dry_run: true });
      const n = `${dry.matched}${dry.complete ? "" : "+"}`;
      if (dry.matched === 0) {
        out.replaceChildren(el("p", {}, `No ${target} notification of ${webhook} in this range.`));
        start.disabled = false;
        return;
      }
      const confirm = el("button", { type: "button", id: "bulk-confirm" }, `Re-send ${n}`);
      const cancel = el("button", { type: "button", class: "secondary" }, "Cancel");
      cancel.addEventListener("click", () => { out.replaceChildren(); start.disabled = false; start.focus(); });
      confirm.addEventListener("click", async () => {
        confirm.disabled = cancel.disabled = true;
        try {
          const r = await api("POST", "/v1/notifications/resend", body);
          out.replaceChildren(el("p", { id: "bulk-queued" }, `Queued ${r.queued} re-sends. Their attempts appear on each notification's page.`));
        } catch (e) {
          if (e instanceof Unauthorized) return showLogin("The token was refused. Log in again.");
          out.replaceChildren(el("p", { class: "error", role: "alert" }, e.message));
        }
        start.disabled = false;
      });
      out.replaceChildren(el("p", { id: "bulk-count" }, `${n} ${target} notifications of ${webhook} match. Each stored request is sent again as it is.`), el("div", { class: "row" }, confirm, cancel));
      confirm.focus();
    } catch (e) {
      if (e instanceof Unauthorized) return showLogin("The token was refused. Log in again.");
      out.replaceChildren(el("p", { class: "error", role: "alert" }, e.message));
      start.disabled = false;
    }
  });
  panel.append(el("h2", { id: "bulk-title" }, "Bulk re-send"), start, out);
  return panel;
}

// ----------------------------------------------------- one notification

async function viewNotification(root, id) {
  const record = await api("GET", `/v1/notifications/${encodeURIComponent(id)}`);
  const n = record.notification;
  const facts = el("dl", { class: "facts" },
    el("dt", {}, "webhook-id (give this to the receiver's team)"), el("dd", { class: "mono", id: "webhook-id" }, n.id),
    el("dt", {}, "Webhook"), el("dd", {}, el("a", { href: `#/history?webhook=${encodeURIComponent(n.webhook_id)}` }, n.webhook_id)),
    el("dt", {}, "Status"), el("dd", { id: "state" }, badge(record.state.status)),
    el("dt", {}, "Attempts"), el("dd", {}, String(record.state.attempts)),
    el("dt", {}, "Next attempt"), el("dd", {}, when(record.state.next_attempt_at)),
    el("dt", {}, "Event"), el("dd", {}, `${n.event_type} · ${n.event_source} · ${n.event_id}`),
    el("dt", {}, "Subject"), el("dd", {}, n.subject ?? "—"),
    el("dt", {}, "Created"), el("dd", {}, when(n.created_at)));
  const timeline = el("div", { id: "attempts" });
  const rendered = n.content.rendered;
  const request = rendered ? requestView(rendered, true) : el("p", { class: "error", id: "render-error" }, `Not rendered: ${n.content.render_failed.error}`);
  const actions = el("div", { class: "row" });
  const out = el("p", { id: "resend-result", "aria-live": "polite" });
  if (rendered) {
    const button = el("button", { type: "button", id: "resend" }, "Re-send the stored request");
    button.addEventListener("click", async () => {
      button.disabled = true;
      const before = record.attempts.length;
      try {
        await api("POST", `/v1/notifications/${n.id}/resend`);
        out.textContent = "Re-send queued; waiting for its attempt…";
        const done = await waitForAttempt(n.id, before, timeline);
        out.textContent = done ? "The re-send was attempted: see the timeline." : "Queued; the attempt has not been recorded yet. Refresh later.";
      } catch (e) {
        if (e instanceof Unauthorized) return showLogin("The token was refused. Log in again.");
        out.textContent = e.message;
      }
      button.disabled = false;
    });
    actions.append(button);
  }
  const refresh = el("button", { type: "button", class: "secondary" }, "Refresh");
  refresh.addEventListener("click", route);
  actions.append(refresh);
  heading(root, "Notification", facts, actions, out,
    el("h2", {}, "Request as stored and sent"), request,
    el("h2", {}, "Attempts"), timeline);
  timeline.replaceChildren(attemptsView(record.attempts));
  document.body.dataset.rendered = "notification";
}

// Polls the record until it has more than `before` attempts (at most 60 s).
async function waitForAttempt(id, before, timeline) {
  for (let i = 0; i < 120; i++) {
    await new Promise((r) => setTimeout(r, 500));
    const record = await api("GET", `/v1/notifications/${id}`);
    if (record.attempts.length > before) {
      timeline.replaceChildren(attemptsView(record.attempts));
      document.getElementById("state").replaceChildren(badge(record.state.status));
      return true;
    }
  }
  return false;
}

function headerValue(v) {
  if (v.text !== undefined) return el("span", {}, v.text);
  // A secret is stored as a reference; its value is read at send time only.
  return el("span", { class: "masked" }, `${v.secret.prefix || ""}•••••• (secret ${v.secret.name})`);
}

function requestView(r, stored) {
  const headers = el("table", { id: "headers" },
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Header"), el("th", { scope: "col" }, "Value"))),
    el("tbody", {},
      el("tr", {}, el("td", {}, "content-type"), el("td", {}, r.content_type)),
      r.headers.map((h) => el("tr", {}, el("td", {}, h.name), el("td", {}, headerValue(h.value)))),
      el("tr", {}, el("td", {}, "webhook-id, webhook-timestamp, webhook-signature"),
        el("td", { class: "masked" }, stored ? "added at each attempt, signed with the webhook's signing secrets" : "added at send time"))));
  let pretty = null;
  try { pretty = JSON.stringify(JSON.parse(r.body), null, 2); } catch (_) { /* not JSON */ }
  const raw = el("pre", { id: "body-raw", "aria-label": "Body, raw" }, r.body);
  const shown = el("pre", { id: "body-pretty", "aria-label": "Body, pretty-printed" }, pretty ?? r.body);
  raw.hidden = pretty !== null;
  shown.hidden = pretty === null;
  const toggle = (showRaw) => {
    raw.hidden = !showRaw;
    shown.hidden = showRaw;
    bPretty.setAttribute("aria-pressed", String(!showRaw));
    bRaw.setAttribute("aria-pressed", String(showRaw));
  };
  const bPretty = el("button", { type: "button", class: "secondary", "aria-pressed": String(pretty !== null), disabled: pretty === null, onclick: () => toggle(false) }, "Pretty");
  const bRaw = el("button", { type: "button", class: "secondary", id: "show-raw", "aria-pressed": String(pretty === null), onclick: () => toggle(true) }, "Raw bytes");
  return el("div", {},
    el("p", { class: "mono", id: "request-line" }, `${r.method} ${r.url}`),
    el("div", { class: "table-wrap" }, headers),
    el("h3", {}, `Body (${new TextEncoder().encode(r.body).length} bytes)`),
    el("div", { class: "row", role: "group", "aria-label": "Body view" }, bPretty, bRaw),
    shown, raw);
}

function attemptsView(attempts) {
  if (attempts.length === 0) return el("p", {}, "No attempt yet.");
  return el("ol", { class: "timeline" },
    [...attempts].reverse().map((a) =>
      el("li", { "data-trigger": a.trigger, "data-outcome": a.outcome },
        el("strong", {}, `#${a.attempt_no} ${a.trigger}`), " ", badge(a.outcome),
        a.http_status ? ` HTTP ${a.http_status}` : "",
        ` · ${when(a.started_at)} · ${a.duration_ms} ms`,
        a.error ? el("div", { class: "error" }, a.error) : null,
        a.next_attempt_at ? el("div", {}, `Next attempt due ${when(a.next_attempt_at)}`) : null,
        a.response_excerpt ? el("details", {}, el("summary", {}, "Response excerpt"), el("pre", {}, a.response_excerpt)) : null)));
}

// ----------------------------------------------------------------- circuits

async function viewCircuits(root) {
  const { circuits } = await api("GET", "/v1/circuits");
  const out = el("p", { id: "circuit-result", "aria-live": "polite" });
  const rows = circuits.map((c) => {
    const button = el("button", { type: "button", class: "secondary", "data-webhook": c.webhook_id }, `Force close ${c.webhook_id}`);
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const r = await api("POST", `/v1/circuits/${encodeURIComponent(c.webhook_id)}/close`);
        await route();
        document.getElementById("circuit-result").textContent = `${r.change.webhook_id} is ${r.change.state} (by ${r.change.changed_by}).`;
      } catch (e) {
        if (e instanceof Unauthorized) return showLogin("The token was refused. Log in again.");
        out.textContent = e.message;
        button.disabled = false;
      }
    });
    return el("tr", { "data-webhook": c.webhook_id },
      el("td", {}, c.webhook_id), el("td", {}, badge(c.state)),
      el("td", {}, when(c.since)), el("td", {}, c.until ? when(c.until) : "—"),
      el("td", {}, c.changed_by), el("td", {}, c.reason), el("td", {}, button));
  });
  heading(root, "Circuit breakers",
    el("p", { class: "note" }, "An open circuit parks its webhook's jobs until the cool-down ends, then a sample of probes decides. Forcing it closed sends the parked jobs at once."),
    circuits.length === 0
      ? el("p", {}, "No circuit has ever opened (Kafka mode lists only webhooks whose circuit has changed).")
      : el("div", { class: "table-wrap" }, el("table", { id: "circuits" },
        el("thead", {}, el("tr", {}, ["Webhook", "State", "Since", "Until", "Changed by", "Why", ""].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows))),
    out);
  document.body.dataset.rendered = "circuits";
}

// ---------------------------------------------------------- template preview

const SAMPLE_EVENT = JSON.stringify({
  specversion: "1.0", id: "evt-preview-1", source: "/core/loans", type: "bank.loan.disbursed",
  subject: "loan-42", time: new Date().toISOString(), data: { amount: 125000, currency: "EUR" },
}, null, 2);

async function viewPreview(root) {
  const select = await webhookSelect("p-webhook", null);
  const area = el("textarea", { id: "p-event", rows: "14", spellcheck: "false" }, SAMPLE_EVENT);
  const out = el("div", { id: "preview-result", "aria-live": "polite" });
  const form = el("form", {},
    el("div", { class: "row" }, el("div", {}, el("label", { for: "p-webhook" }, "Webhook "), select)),
    el("label", { for: "p-event" }, "Event (CloudEvent, structured JSON)"), area,
    el("div", { class: "row" }, el("button", { type: "submit", id: "p-render" }, "Render")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    out.replaceChildren(el("p", { class: "note" }, "Rendering…"));
    try {
      const r = await api("POST", `/v1/webhooks/${encodeURIComponent(select.value)}/preview`, area.value);
      const note = r.matches ? null : el("p", { class: "note" }, "Note: this webhook does not match this event (type or filter); rendered anyway.");
      if (r.request) {
        put(out, el("h2", {}, "What would be sent"), note, requestView(r.request, false));
      } else {
        const p = r.error.position;
        put(out, el("h2", {}, "The template fails"), note,
          p ? el("p", { id: "error-position" }, `Template ${p.part}, line ${p.line}, column ${p.column}`) : null,
          el("p", { class: "error", role: "alert", id: "render-error" }, r.error.message));
      }
    } catch (err) {
      if (err instanceof Unauthorized) return showLogin("The token was refused. Log in again.");
      out.replaceChildren(el("p", { class: "error", role: "alert", id: "render-error" }, err.message));
    }
  });
  heading(root, "Template preview",
    el("p", { class: "note" }, "Renders an event with a webhook's templates, as ingest would. Nothing is stored or sent."),
    form, out);
  document.body.dataset.rendered = "preview";
}

// --------------------------------------------------------------- live chart

const SAMPLES = 60; // at 5 s each: the last 5 minutes
const SERIES = [["delivered", "delivered"], ["failed", "failed_attempts"], ["retries", "retries_scheduled"]];

async function viewLive(root) {
  const history = [];
  const charts = el("div", { class: "charts", id: "charts" });
  heading(root, "Live counters",
    el("p", { class: "note" }, "Deliveries, failed attempts and retries per webhook, every 5 seconds over the last 5 minutes, from this process's own metrics (in Kafka mode: this delivery worker only). Totals count since the process started."),
    charts);
  const sample = async () => {
    const s = await api("GET", "/v1/stats");
    history.push(s);
    if (history.length > SAMPLES + 1) history.shift();
    charts.replaceChildren(...Object.keys(s.webhooks).sort().map((w) => chart(w, history)));
    if (Object.keys(s.webhooks).length === 0) charts.replaceChildren(el("p", {}, "No attempt made by this process yet."));
    document.body.dataset.rendered = "live";
  };
  await sample();
  liveTimer = setInterval(() => sample().catch((e) => {
    stopLive();
    if (e instanceof Unauthorized) showLogin("The token was refused. Log in again.");
  }), 5000);
}

function chart(webhook, history) {
  const W = 300, H = 100;
  const deltas = (key) => history.slice(1).map((s, i) => {
    const now = s.webhooks[webhook]?.[key] ?? 0;
    const before = history[i].webhooks[webhook]?.[key] ?? 0;
    return Math.max(0, now - before);
  });
  const series = SERIES.map(([name, key]) => [name, deltas(key)]);
  const max = Math.max(1, ...series.flatMap(([, d]) => d));
  const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  for (const [name, d] of series) {
    if (d.length === 0) continue;
    const step = W / Math.max(1, SAMPLES - 1);
    const x0 = W - step * (d.length - 1);
    const points = d.map((v, i) => `${(x0 + i * step).toFixed(1)},${(H - 4 - (v / max) * (H - 8)).toFixed(1)}`);
    if (points.length === 1) points.unshift(`${(x0 - step).toFixed(1)},${points[0].split(",")[1]}`);
    box.append(svg("polyline", { class: `l-${name}`, points: points.join(" ") }));
  }
  const last = history[history.length - 1].webhooks[webhook] || {};
  const recent = (d) => d.reduce((a, b) => a + b, 0);
  box.setAttribute("aria-label", `${webhook}: ` + series.map(([name, d]) => `${recent(d)} ${name}`).join(", ") + " in the charted minutes");
  return el("figure", { class: "chart", "data-webhook": webhook },
    el("figcaption", {}, el("strong", {}, webhook)),
    box,
    el("ul", { class: "legend" }, SERIES.map(([name, key], i) =>
      el("li", { class: `k-${name}`, "data-series": name }, `${name}: ${recent(series[i][1])} recent, ${last[key] ?? 0} total`))));
}

// ------------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-form").addEventListener("submit", login);
  document.getElementById("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    webhookCache = null;
    location.hash = "#/login";
    showLogin("Logged out.");
  });
  // The location hash is the router's: the skip link moves focus itself.
  document.querySelector(".skip").addEventListener("click", (e) => {
    e.preventDefault();
    document.getElementById("main").focus();
  });
  window.addEventListener("hashchange", route);
  route();
});
