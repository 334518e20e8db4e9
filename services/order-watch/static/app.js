// order-watch's page: the support desk's daily tool. Views (the address's #fragment says which):
//   #/floor            orders in flight per stage, SLO figures, stuck orders, open incidents (live),
//                      and whether Shop, CRM, MES and order-watch agree on each order (read every
//                      few seconds: the live feed does not carry it)
//   #/search/<text>    orders found by order id, external order id, partner id or customer id
//   #/order/<id>       one order: its story first (timeline, where it is, why), then its traces
//   #/config           the configuration and its changes
// `#<order id>` (the incident webhook's links) opens that order. Everything is built with DOM
// calls and textContent, never from HTML strings. Each person sees only the controls their role
// allows (support reads; a developer changes the configuration and repairs disagreements; an
// admin also the retention, incidents and erasures); the API checks every request again.
"use strict";

// ---------------------------------------------------------------------------------------------
// Small things

const colours = { "shop-api": "#2563eb", "crm-api": "#7c3aed", "mes-api": "#ea580c", "mes-calc": "#db2777" };
const colour = (service) => colours[service] || "#0891b2";
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function button(label, onclick, cls) {
  const b = el("button", label, cls);
  b.type = "button";
  b.onclick = onclick;
  return b;
}

function row(cells) {
  const tr = el("tr");
  for (const c of cells) {
    const td = el("td");
    if (c instanceof Node) td.append(c);
    else td.textContent = String(c);
    tr.append(td);
  }
  return tr;
}

// A duration as people say it, to its two largest units: "2 d 4 h", "12 min 30 s", "45 s" (the
// server's words say it the same way).
function spell(seconds) {
  let rest = Math.max(0, Math.floor(seconds));
  const units = [[86400, "d"], [3600, "h"], [60, "min"], [1, "s"]];
  const first = units.findIndex(([size]) => rest >= size);
  if (first < 0) return "0 s";
  const parts = [];
  for (const [size, unit] of units.slice(first, first + 2)) {
    const count = Math.floor(rest / size);
    rest -= count * size;
    if (count) parts.push(`${count} ${unit}`);
  }
  return parts.join(" ");
}

function millis(ms) {
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

const when = (iso) => new Date(iso).toLocaleString(undefined, { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", second: "2-digit" });
const clock = (iso) => new Date(iso).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const short = (id) => (id.length > 12 ? `${id.slice(0, 8)}…` : id);
// An order id shortened to its beginning and its end: UUIDv7s made within the same minute begin
// alike, and the orders a list holds often were.
const shortEnds = (id) => (id.length > 16 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id);
const words = (code) => String(code).replaceAll("_", " ");

async function json(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (response.status === 401) {
    // The session ended: log in again and come back here.
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search + location.hash);
    throw new Error("signed out");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.error ? body.error.message : `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// A change: the session's CSRF token proves the page asks; the answer's error, in words.
async function send(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRF-Token": (me && me.csrf_token) || "" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(answer.error ? answer.error.message : `${response.status} ${response.statusText}`);
  }
  return answer;
}

// ---------------------------------------------------------------------------------------------
// Who is asking, and what their role allows (the API checks it again)

let me = null;
const isDeveloper = () => me && (me.role === "developer" || me.role === "admin");
const isAdmin = () => me && me.role === "admin";

async function showWho() {
  me = await json("/api/me");
  const who = $("who");
  who.replaceChildren(el("span", `${me.name} · ${me.role || "no role"}`));
  if (me.csrf_token) {
    who.append(button("Log out", async () => {
      await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": me.csrf_token } });
      location.href = "/login";
    }));
  }
}

// ---------------------------------------------------------------------------------------------
// Views

const views = ["search", "order", "floor", "config"];

function showView(name, focus) {
  for (const view of views) $(`view-${view}`).hidden = view !== name;
  for (const view of ["floor", "config", "order"]) {
    if (view === name) $(`nav-${view}`).setAttribute("aria-current", "page");
    else $(`nav-${view}`).removeAttribute("aria-current");
  }
  if (focus) focus.focus();
}

function route() {
  const hash = decodeURIComponent(location.hash.slice(1));
  if (/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(hash)) {
    location.replace(`#/order/${hash}`);
    return;
  }
  const [, view = "", arg = ""] = hash.match(/^\/?([a-z]*)\/?(.*)$/s) || [];
  if (view === "order" && arg) showOrder(arg);
  else if (view === "search" && arg) showSearch(arg);
  else if (view === "config") {
    document.title = "order-watch · configuration";
    showView("config", $("config-title"));
  } else {
    document.title = "order-watch";
    showView("floor");
  }
}
window.addEventListener("hashchange", route);

$("search").onsubmit = (e) => {
  e.preventDefault();
  const q = $("q").value.trim();
  if (!q) return;
  const target = `#/search/${encodeURIComponent(q)}`;
  if (location.hash === target) route();
  else location.hash = target;
};

// ---------------------------------------------------------------------------------------------
// Search

const kindLabel = { order_id: "order id", external_id: "external id", partner_id: "partner", customer_id: "customer id" };

// `text` with `query` marked where it occurs (case-insensitively).
function marked(text, query) {
  const span = el("span");
  const at = text.toLowerCase().indexOf(query.toLowerCase());
  if (!query || at < 0) {
    span.textContent = text;
    return span;
  }
  span.append(text.slice(0, at), el("mark", text.slice(at, at + query.length)), text.slice(at + query.length));
  return span;
}

function statusBadge(o) {
  const status = o.status || "unknown";
  const cls = o.stuck ? "badge stuck" : o.terminal ? (status === "delivered" ? "badge done" : "badge warn") : "badge";
  return el("span", o.stuck ? `${words(status)} · stuck` : words(status), cls);
}

function orderLink(id, text) {
  const a = el("a", text || id, "mono");
  a.href = `#/order/${id}`;
  return a;
}

async function showSearch(q) {
  document.title = `order-watch · ${q}`;
  $("q").value = q;
  showView("search");
  $("search-title").textContent = `Search: ${q}`;
  $("search-hint").textContent = "Looking…";
  $("search-results").replaceChildren();
  let answer;
  try {
    answer = await json(`/api/search?q=${encodeURIComponent(q)}`);
  } catch (e) {
    $("search-hint").textContent = e.message;
    return;
  }
  // One order by its own or its external id: straight to it.
  if (answer.tier === "exact" && answer.orders.length === 1 && answer.orders[0].matched !== "partner_id" && answer.orders[0].matched !== "customer_id") {
    location.replace(`#/order/${answer.orders[0].order_id}`);
    return;
  }
  $("search-hint").textContent = answer.hint;
  const results = $("search-results");
  if (answer.partners.length && answer.tier !== "exact") {
    const list = el("ul");
    for (const p of answer.partners) {
      const li = el("li");
      li.append(button(`Partner ${p.partner_id}`, () => { location.hash = `#/search/${encodeURIComponent(p.partner_id)}`; }, "link"),
        el("span", ` — ${p.orders} ${p.orders === 1 ? "order" : "orders"}, the latest ${when(p.last_order_at)}`, "muted"));
      list.append(li);
    }
    results.append(el("h3", answer.tier === "similar" ? "Partners with a similar id" : "Partners"), list);
  }
  if (answer.orders.length) {
    const table = el("table");
    const head = el("thead");
    head.append(row(["matched", "order", "status", "waiting", "external id", "partner", "first seen"]));
    table.append(head);
    const body = el("tbody");
    for (const o of answer.orders) {
      const match = el("span");
      match.append(el("span", `${kindLabel[o.matched] || o.matched} `, "muted"), marked(o.value, answer.tier === "similar" ? "" : q));
      const tr = row([match, orderLink(o.order_id), statusBadge(o), o.terminal ? "finished" : words(o.stage),
        o.external_id || "—", o.partner_id || "—", when(o.first_seen)]);
      tr.dataset.order = o.order_id;
      body.append(tr);
    }
    table.append(body);
    results.append(table);
  }
  $("search-title").focus();
}

// ---------------------------------------------------------------------------------------------
// One order: its story

let journey = null; // the journey shown, for following links and revealing spans
let orderShown = null;

const troubleTitle = {
  stuck: "Stuck",
  rejected: "Rejected",
  failed: "Failed",
  cancelled: "Cancelled",
  dead_lettered: "A message about this order was set aside",
};

async function showOrder(id) {
  document.title = `order-watch · order ${id}`;
  orderShown = id;
  journey = null;
  const nav = $("nav-order");
  nav.hidden = false;
  nav.href = `#/order/${id}`;
  nav.textContent = `Order ${short(id)}`;
  showView("order");
  $("order-title").textContent = `Order ${id}`;
  for (const part of ["order-badge", "order-ids", "order-reconciliation", "explanations", "timeline", "order-gaps", "order-incidents", "journey-toolbar", "traces", "erase"]) $(part).replaceChildren();
  $("headline").textContent = "Loading…";
  $("order-title").focus();
  const story = json(`/api/orders/${encodeURIComponent(id)}/story`);
  const trip = json(`/api/orders/${encodeURIComponent(id)}/journey`);
  // This order's disagreement, one still under the threshold too.
  const agreement = json(`/api/reconciliation?all=true&order_id=${encodeURIComponent(id)}`).catch((e) => e);
  try {
    renderStory(await story);
  } catch (e) {
    $("headline").textContent = e.message;
    if (e.status === 404 || e.status === 400) {
      const hint = el("p");
      hint.append("Look for it by another id: ", orderLinkSearch(id));
      $("explanations").replaceChildren(hint);
    }
    trip.catch(() => {});
    return;
  }
  const answer = await agreement;
  if (orderShown === id) renderAgreement(id, answer);
  try {
    renderJourney(await trip);
  } catch (e) {
    $("traces").replaceChildren(el("p", e.message, "error"));
  }
  if (isAdmin()) $("erase").replaceChildren(erasure(id));
}

function orderLinkSearch(text) {
  const a = el("a", `search for “${text}”`);
  a.href = `#/search/${encodeURIComponent(text)}`;
  return a;
}

function renderStory(s) {
  $("order-badge").replaceChildren(statusBadge(s));
  const ids = $("order-ids");
  const id = (label, value, searchable) => {
    const span = el("span");
    span.append(`${label} `);
    if (!value) span.append(el("b", "—"));
    else if (searchable) {
      const a = el("a", value);
      a.href = `#/search/${encodeURIComponent(value)}`;
      a.title = `every order of ${label} ${value}`;
      span.append(a);
    } else span.append(el("b", value));
    ids.append(span);
  };
  id("external id", s.external_id, false);
  id("partner", s.partner_id, true);
  id("customer", s.customer_id, true);
  $("headline").textContent = s.headline;

  const explanations = $("explanations");
  for (const x of s.explanations) {
    const box = el("div", null, `explanation ${x.trouble}`);
    box.setAttribute("role", x.trouble === "cancelled" ? "note" : "alert");
    box.append(el("h3", troubleTitle[x.trouble] || words(x.trouble)), el("p", x.for_customer, "say"));
    const dev = el("p", null, "dev");
    dev.append("For developers: ");
    if (x.error_code) dev.append("code ", el("code", x.error_code), " · ");
    dev.append(x.detail);
    if (x.trace_id && x.span_id) {
      dev.append(" · ", button("show the span", () => goToSpan(x.trace_id, x.span_id), "link"));
    }
    box.append(dev);
    explanations.append(box);
  }

  const timeline = $("timeline");
  for (const step of s.timeline) {
    const li = el("li", null, [step.current ? "current" : "", step.over_threshold ? "over" : ""].join(" ").trim());
    const what = el("span", null, "what");
    what.append(step.event, el("code", step.status));
    if (step.source === "record") {
      what.append(el("div", `from ${step.service}'s own record: its spans never arrived` +
        (step.missing && step.missing.length ? ` (also missing: ${step.missing.join(", ")})` : ""), "record"));
    }
    const stay = el("div", null, "stay");
    if (step.stage_seconds !== null && step.stage_seconds !== undefined) {
      const of = step.threshold_seconds ? ` of ${spell(step.threshold_seconds)}` : "";
      const label = step.current ? `${words(step.stage)}: ${spell(step.stage_seconds)}${of} so far` : `${words(step.stage)}: ${spell(step.stage_seconds)}${of}`;
      stay.append(el("span", label));
      if (step.threshold_seconds) {
        const bar = el("div", null, step.over_threshold ? "bar over" : "bar");
        const fill = el("i");
        fill.style.width = `${Math.min(100, (step.stage_seconds / step.threshold_seconds) * 100)}%`;
        bar.append(fill);
        bar.setAttribute("role", "img");
        bar.setAttribute("aria-label", `${Math.round((step.stage_seconds / step.threshold_seconds) * 100)} % of the threshold`);
        stay.append(bar);
      }
    } else {
      stay.append(el("span", "finished", "muted"));
    }
    const service = el("span", step.service);
    service.style.color = colour(step.service);
    const jump = el("span", null, "jump");
    if (step.trace_id && step.span_id) jump.append(button("span", () => goToSpan(step.trace_id, step.span_id), "link"));
    li.append(el("span", when(step.at), "muted"), what, service, stay, jump);
    if (step.current) li.setAttribute("aria-current", "step");
    timeline.append(li);
  }
  if (!s.timeline.length) timeline.append(el("li", "No status change has been reported yet.", "muted"));

  if (s.incidents.length) {
    const box = $("order-incidents");
    box.append(el("h3", "Incidents"));
    for (const i of s.incidents) box.append(el("p", incidentTimeline(i) + ` — ${i.summary}`, "incident-line"));
  }
}

// "opened 10:02 → acknowledged by admin 10:05 → closed 10:10 (the order is moving again)".
function incidentTimeline(i) {
  const name = (who) => (who || "").replace(/ \(.*\)$/, "");
  let text = `opened ${when(i.opened_at)}`;
  if (i.acknowledged_at) text += ` → acknowledged by ${name(i.acknowledged_by)} ${when(i.acknowledged_at)}`;
  if (i.resolved_at) text += ` → ${i.closed_by ? `closed by ${name(i.closed_by)}` : "resolved"} ${when(i.resolved_at)}${i.resolution ? ` (${i.resolution})` : ""}`;
  return text;
}

// ---------------------------------------------------------------------------------------------
// One order: its traces as trees

const markLabel = {
  error: "error", dead_letter: "dead letter", retry: "retry", slow_queue: "slow queue",
  queue_wait: "queued", transition: "status", read: "read", database: "db",
};
let nextId = 0;
const newId = (prefix) => `${prefix}-${++nextId}`;

// A toggle button for `body` (collapsed unless `open`); `build` fills the body the first time
// it opens.
function disclosure(label, body, open, build) {
  const toggle = el("button", null, "toggle");
  toggle.type = "button";
  if (label instanceof Node) toggle.append(label);
  else toggle.textContent = label;
  body.id = body.id || newId("part");
  toggle.setAttribute("aria-controls", body.id);
  let built = !build;
  const set = (expanded) => {
    if (expanded && !built) {
      build();
      built = true;
    }
    toggle.setAttribute("aria-expanded", String(expanded));
    body.hidden = !expanded;
  };
  toggle.onclick = () => set(toggle.getAttribute("aria-expanded") !== "true");
  toggle.expand = () => set(true);
  toggle.collapse = () => set(false);
  set(open);
  return toggle;
}

function renderJourney(j) {
  performance.mark("journey-render-start");
  journey = j;
  journey.index = new Map(j.spans.map((s, i) => [`${s.trace_id}/${s.span_id}`, i]));
  const toolbar = $("journey-toolbar");
  const count = (n, one, many) => `${n} ${n === 1 ? one : many}`;
  toolbar.append(el("span", `${count(j.span_count, "span", "spans")} in ${count(j.traces.length, "trace", "traces")}; database statements and repeated status checks are folded.`, "muted"));
  if (j.spans_truncated) toolbar.append(el("span", `Showing the latest ${j.spans.length}.`, "badge warn"));
  toolbar.append(button("Expand all", expandAll, "secondary"), button("Collapse all", collapseAll, "secondary"));
  const gaps = $("order-gaps");
  for (const g of j.gaps) {
    gaps.append(el("div", `Spans missing: ${g.missing_services.join(", ")} between ${g.from_status || "the start"} and ${g.to_status} ` +
      `(${g.source} holds it ${g.to_status} since ${when(g.status_at)}; found ${when(g.detected_at)})`, "gap"));
  }
  const traces = $("traces");
  for (const entry of j.trees) traces.append(entry.trace ? traceEntry(entry.trace) : readsEntry(entry.reads));
  // Style and layout now, so that the measure includes them.
  void traces.offsetHeight;
  performance.measure("journey-render", "journey-render-start");
}

function spanLabel(index) {
  const s = journey.spans[index];
  return s ? `${s.service} · ${s.name}` : "a span not shown";
}

function traceEntry(trace) {
  const flagged = trace.marks.includes("error") || trace.marks.includes("dead_letter");
  const entry = el("div", null, flagged ? "entry flagged" : "entry");
  entry.dataset.trace = trace.trace_id;
  const head = el("div", null, "trace-head");
  const body = el("div", null, "trace-body");
  const label = el("span");
  label.append(el("span", clock(trace.start), "muted"), ` ${trace.title}`);
  const toggle = disclosure(label, body, flagged, () => body.append(tree(trace.roots, trace)));
  toggle.dataset.role = "trace";
  const took = Date.parse(trace.end) - Date.parse(trace.start);
  head.append(toggle, el("span", `${trace.spans} spans · ${took < 60000 ? millis(took) : spell(took / 1000)}`, "muted"));
  if (trace.statuses.length) head.append(el("span", `→ ${trace.statuses.join(", ")}`, "badge transition"));
  for (const mark of ["error", "dead_letter", "retry", "slow_queue"]) {
    if (trace.marks.includes(mark)) head.append(el("span", markLabel[mark], `badge ${mark}`));
  }
  head.append(el("code", short(trace.trace_id), "muted"));
  if (trace.url) {
    const a = el("a", "open in Jaeger ↗");
    a.href = trace.url;
    a.target = "_blank";
    a.rel = "noopener";
    a.className = "jaeger";
    head.append(a);
  }
  entry.append(head);
  if (trace.links.length || trace.linked_from.length) {
    const links = el("div", null, "trace-links");
    for (const l of trace.links) {
      const hop = el("span");
      hop.append("continues from ", button(`trace ${short(l.to_trace_id)}: ${spanLabel(journey.index.get(`${l.to_trace_id}/${l.to_span_id}`))}`,
        () => goToSpan(l.to_trace_id, l.to_span_id), "link follow"));
      links.append(hop);
    }
    for (const l of trace.linked_from) {
      const hop = el("span");
      hop.append("continues in ", button(`trace ${short(l.from_trace_id)}: ${spanLabel(journey.index.get(`${l.from_trace_id}/${l.from_span_id}`))}`,
        () => goToSpan(l.from_trace_id, l.from_span_id), "link follow"));
      links.append(hop);
    }
    entry.append(links);
  }
  entry.append(body);
  return entry;
}

function readsEntry(reads) {
  const entry = el("div", null, "entry reads");
  const body = el("div", null, "reads-body");
  const first = reads.traces[0], last = reads.traces[reads.traces.length - 1];
  const label = `${reads.label}, ${clock(first.start)} to ${clock(last.end)}`;
  const toggle = disclosure(label, body, false, () => { for (const t of reads.traces) body.append(traceEntry(t)); });
  toggle.dataset.role = "reads";
  const head = el("div", null, "trace-head");
  head.append(toggle, el("span", "only read the order", "badge read"));
  entry.append(head, body);
  return entry;
}

// The nodes of a trace as nested lists; folds closed, spans open.
function tree(nodes, trace) {
  const ul = el("ul", null, "tree");
  const start = Date.parse(trace.start);
  const length = Math.max(Date.parse(trace.end) - start, 1);
  for (const node of nodes) {
    const li = el("li");
    if (node.fold) {
      const children = tree(node.children, trace);
      const toggle = disclosure(node.label, children, false);
      toggle.classList.add("fold-row");
      toggle.dataset.role = "fold";
      li.append(toggle, children);
    } else {
      const children = node.children && node.children.length ? tree(node.children, trace) : null;
      li.append(spanRow(node, trace, start, length, children));
      if (children) li.append(children);
    }
    ul.append(li);
  }
  return ul;
}

// A span's row (its nested spans, when it has any, in `children`, which its toggle opens) and
// its details, which open on demand.
function spanRow(node, trace, start, length, children) {
  const s = journey.spans[node.span];
  const marks = node.marks || [];
  const row = el("div", null, marks.includes("error") ? "span-row error" : "span-row");
  row.dataset.span = String(node.span);
  row.tabIndex = -1;
  const name = el("span", null, "name");
  if (children) {
    const toggle = disclosure("", children, true);
    toggle.setAttribute("aria-label", `spans under ${s.service} ${s.name}`);
    name.append(toggle);
  } else {
    const leaf = el("span", null, "toggle leaf");
    leaf.setAttribute("aria-hidden", "true");
    name.append(leaf);
  }
  const service = el("span", s.service, "svc");
  service.style.color = colour(s.service);
  name.append(service, s.name);
  if (s.status_message) name.title = s.status_message;
  const badges = el("span", null, "marks");
  for (const mark of marks) {
    if (mark === "queue_wait") {
      const wait = s.attributes["hallmark.queue.wait_ms"];
      badges.append(el("span", `queued ${millis(Number(wait))}`, marks.includes("slow_queue") ? "badge slow_queue" : "badge queue_wait"));
    } else if (mark === "retry") {
      badges.append(el("span", `retry ${s.attributes["hallmark.retry.count"]}`, "badge retry"));
    } else if (mark !== "slow_queue") {
      badges.append(el("span", markLabel[mark] || mark, `badge ${mark}`));
    }
  }
  if (s.attributes["hallmark.error.code"]) badges.append(el("code", s.attributes["hallmark.error.code"], "error"));
  const lane = el("div", null, "lane");
  const bar = el("i");
  bar.style.left = `${Math.min(Math.max(((Date.parse(s.start) - start) / length) * 100, 0), 100)}%`;
  bar.style.width = `${Math.max(((Date.parse(s.end) - Date.parse(s.start)) / length) * 100, 0.3)}%`;
  bar.style.background = marks.includes("error") ? "#d92d20" : colour(s.service);
  lane.append(bar);
  const holder = el("div", null, "span");
  // The details are made when first asked for: most spans' never are.
  const more = el("button", "details", "toggle more");
  more.type = "button";
  more.setAttribute("aria-expanded", "false");
  more.setAttribute("aria-label", `details of ${s.service} ${s.name}`);
  let details = null;
  more.onclick = () => {
    if (!details) {
      details = el("div", null, "details");
      details.id = newId("details");
      details.append(spanDetails(s));
      holder.append(details);
      more.setAttribute("aria-controls", details.id);
    }
    const open = more.getAttribute("aria-expanded") !== "true";
    more.setAttribute("aria-expanded", String(open));
    details.hidden = !open;
  };
  row.append(name, badges, el("span", millis(s.duration_ms), "dur"), lane, more);
  holder.append(row);
  return holder;
}

function spanDetails(s) {
  const table = el("table");
  const add = (key, value) => {
    const tr = el("tr");
    tr.append(el("th", key, "mono"), el("td", typeof value === "string" ? value : JSON.stringify(value), "mono"));
    table.append(tr);
  };
  add("span id", s.span_id);
  add("trace id", s.trace_id);
  if (s.parent_span_id) add("parent span id", s.parent_span_id);
  add("kind", s.kind);
  add("status", s.status_message ? `${s.status}: ${s.status_message}` : s.status);
  add("activity", s.activity);
  add("start", s.start);
  add("end", s.end);
  for (const link of s.links || []) add("link", `${link.trace_id} / ${link.span_id}`);
  for (const key of Object.keys(s.attributes).sort()) add(key, s.attributes[key]);
  return table;
}

function expandAll() {
  performance.mark("journey-expand-start");
  // Each pass may build bodies holding more toggles.
  for (let pass = 0; pass < 64; pass++) {
    const closed = [...$("traces").querySelectorAll('button.toggle[aria-expanded="false"]:not(.more)')];
    if (!closed.length) break;
    for (const toggle of closed) toggle.expand();
  }
  void $("traces").offsetHeight;
  performance.measure("journey-expand-all", "journey-expand-start");
}

function collapseAll() {
  for (const toggle of $("traces").querySelectorAll('button.toggle[data-role]')) toggle.collapse();
}

// Shows span `spanId` of trace `traceId`: its trace (and any fold around it) opened, the span
// scrolled to, highlighted and focused.
function goToSpan(traceId, spanId) {
  if (!journey) return;
  const index = journey.index.get(`${traceId}/${spanId}`);
  const traces = $("traces");
  if (index === undefined) {
    traces.prepend(el("p", `That span (${short(spanId)} of trace ${short(traceId)}) is not among the spans shown: it is older than the latest ${journey.spans.length}, or its service does not report this order.`, "error"));
    return;
  }
  // Open the folds of status checks until the trace is there.
  let entry = traces.querySelector(`.entry[data-trace="${traceId}"]`);
  if (!entry) {
    for (const reads of traces.querySelectorAll('button.toggle[data-role="reads"]')) {
      reads.expand();
      entry = traces.querySelector(`.entry[data-trace="${traceId}"]`);
      if (entry) break;
    }
  }
  if (!entry) return;
  entry.querySelector('button.toggle[data-role="trace"]').expand();
  const row = entry.querySelector(`.span-row[data-span="${index}"]`);
  if (!row) return;
  // Open every collapsed part around it.
  for (let node = row.parentElement; node && node !== traces; node = node.parentElement) {
    if (node.hidden && node.id) {
      const toggle = traces.querySelector(`button[aria-controls="${node.id}"]`);
      if (toggle) toggle.expand();
    }
  }
  for (const old of traces.querySelectorAll(".highlight")) old.classList.remove("highlight");
  for (const old of traces.querySelectorAll(".entry.target")) old.classList.remove("target");
  entry.classList.add("target");
  row.classList.add("highlight");
  row.scrollIntoView({ block: "center" });
  row.focus({ preventScroll: true });
}

// An admin erases an order's trace data on request (a customer's erasure), after a second
// click that says what goes.
function erasure(id) {
  const zone = el("div", null, "danger-zone actions");
  zone.append(button("Delete trace data…", () => {
    const cancel = button("Cancel", () => zone.replaceWith(erasure(id)), "secondary");
    const confirm = button("Delete for good", async () => {
      try {
        const done = await send("DELETE", `/api/orders/${encodeURIComponent(id)}`);
        $("traces").replaceChildren();
        $("journey-toolbar").replaceChildren();
        $("erase").replaceChildren(el("p", `Trace data of order ${id} erased: ${done.spans} spans, ${done.telemetry_gaps} telemetry gaps; ${done.incidents} incidents no longer name it. Recorded under your name.`, "saved"));
        refreshFloor();
      } catch (e) {
        zone.replaceChildren(el("span", e.message, "error"));
      }
    }, "danger");
    zone.replaceChildren(el("span", `Erase every span, the journey, the ids it is found by and the telemetry gaps of order ${id}? Its incidents stay without it. This cannot be undone.`), confirm, cancel);
    confirm.focus();
  }, "danger"));
  return zone;
}

// ---------------------------------------------------------------------------------------------
// The floor, live

function percent(ratio) {
  if (ratio === null || ratio === undefined) return "—";
  const value = ratio * 100;
  return `${Number(value.toFixed(value < 1 ? 2 : 1))} %`;
}

function seconds(value) {
  if (value === null || value === undefined) return "—";
  return value < 10 ? `${value.toFixed(2)} s` : `${value.toFixed(1)} s`;
}

function objectiveCard(title, figure, [one, many]) {
  const noun = figure.samples === 1 ? one : many;
  const card = el("div", null, `card ${figure.met === false ? "bad" : figure.met ? "good" : ""}`);
  card.append(el("b", `${title} · p95, last hour`), el("div", seconds(figure.p95_seconds), "figure"));
  const objective = `objective: ${percent(figure.target)} within ${spell(figure.objective_seconds)}`;
  card.append(el("div", figure.samples
    ? `${objective} — ${percent(figure.within_objective)} of ${figure.samples} ${noun} ${figure.met ? "✓ met" : "✗ missed"}`
    : `${objective} — no ${many} in the last hour`, "muted"));
  return card;
}

let floorShown = null;

function renderFloor(floor) {
  floorShown = floor;
  if (floor.reconciliation) renderReconciliation(floor.reconciliation);
  const slo = $("slo");
  const flight = el("div", null, floor.stuck ? "card bad" : "card");
  flight.append(el("b", "Orders in flight"), el("div", `${floor.open}`, "figure"), el("div", `${floor.stuck} stuck`, floor.stuck ? "error" : "muted"));
  const silent = el("div", null, floor.slo.stuck_24h_ratio > 0 ? "card bad" : "card good");
  silent.append(el("b", "Stuck for over 24 h"), el("div", percent(floor.slo.stuck_24h_ratio), "figure"),
    el("div", `of open orders; ${percent(floor.slo.without_progress_24h_ratio)} have not moved for 24 h for any reason (a customer deciding, say)`, "muted"));
  slo.replaceChildren(flight,
    objectiveCard("Price calculation", floor.slo.price_calculation, ["calculation", "calculations"]),
    objectiveCard("Status-event delivery", floor.slo.status_event_delivery, ["event", "events"]),
    silent);

  const stages = $("stages");
  stages.replaceChildren();
  for (const s of floor.stages) {
    const stuck = s.stuck + s.unconfirmed;
    const stuckCell = stuck ? el("span", `${stuck}${s.unconfirmed ? ` (${s.unconfirmed} unconfirmed)` : ""}`, "badge stuck") : "0";
    const oldest = el("div", null, "stay");
    if (s.oldest_seconds !== null && s.oldest_seconds !== undefined) {
      oldest.append(el("span", `${spell(s.oldest_seconds)} of ${spell(s.threshold_seconds)}`));
      const bar = el("div", null, s.over_threshold ? "bar over" : "bar");
      const fill = el("i");
      fill.style.width = `${Math.min(100, (s.oldest_seconds / s.threshold_seconds) * 100)}%`;
      bar.append(fill);
      oldest.append(bar);
    } else oldest.append(el("span", "—", "muted"));
    const tr = row([el("code", s.stage), s.waiting_for, String(s.open), stuckCell, oldest, spell(s.threshold_seconds), s.owner || "—"]);
    tr.children[2].className = "num";
    tr.children[3].className = "num";
    tr.children[4].className = "oldest";
    tr.className = [s.open ? "" : "quiet", s.over_threshold ? "over" : ""].join(" ").trim();
    tr.dataset.stage = s.stage;
    stages.append(tr);
  }
  $("counted").textContent = floor.counted_at ? `Counted at ${clock(floor.counted_at)}; the counts per stage are refreshed every few seconds, the lists below live.` : "Not counted yet.";

  const stuck = $("stuck");
  stuck.replaceChildren();
  if (!floor.stuck_orders.length) stuck.append(row([el("span", "nothing is stuck", "muted")]));
  for (const o of floor.stuck_orders) {
    const tr = row([orderLink(o.order_id, short(o.order_id)), o.external_id || "—", el("span", words(o.stage), "badge stuck"), statusText(o),
      spell(o.silent_seconds), `${o.observations_since_progress}×`, confirmationBadge(o), `${o.last_service} · ${o.last_span}`]);
    tr.dataset.order = o.order_id;
    stuck.append(tr);
  }

  const head = $("incidents-head");
  if (isAdmin() && head.children.length === 5) head.append(el("th", "actions"));
  const incidents = $("incidents");
  incidents.replaceChildren();
  if (!floor.incidents.length) incidents.append(row([el("span", "none open", "muted")]));
  for (const i of floor.incidents) {
    const cells = [when(i.opened_at), words(i.kind), i.summary, i.order_id ? orderLink(i.order_id, short(i.order_id)) : "", incidentTimeline(i)];
    if (isAdmin()) cells.push(incidentActions(i));
    const tr = row(cells);
    tr.dataset.incident = i.id;
    incidents.append(tr);
  }
}

// Where the status comes from: a transition span, or a service's own record when its spans
// never arrived.
function statusText(o) {
  const status = words(o.status || "unknown");
  return o.status_source && o.status_source !== "telemetry" ? `${status} (from ${o.status_source}'s record)` : status;
}

// Whether the system that owns the order's stage confirmed it has not moved.
function confirmationBadge(o) {
  const badge = o.stuck_confirmation === "confirmed"
    ? el("span", "confirmed", "badge stuck")
    : el("span", "not confirmed", "badge unconfirmed");
  badge.title = o.confirmation || "";
  return badge;
}

// An admin's buttons on an open incident: someone is on it; it is over.
function incidentActions(i) {
  const cell = el("span", null, "actions");
  const act = (label, action, cls) => {
    cell.append(button(label, async () => {
      $("incidents-error").textContent = "";
      try { await send("POST", `/api/incidents/${i.id}/${action}`); } catch (e) { $("incidents-error").textContent = e.message; }
      await refreshFloor();
    }, cls));
  };
  if (!i.acknowledged_at) act("Acknowledge", "acknowledge");
  act("Close", "close", "secondary");
  return cell;
}

async function refreshFloor() {
  try {
    renderFloor(await json("/api/floor"));
  } catch (e) {
    live("off", `cannot refresh: ${e.message}`);
  }
}

function live(state, text) {
  const indicator = $("live");
  indicator.className = `live ${state}`;
  indicator.textContent = text;
}

// The floor's events: a reading every few seconds. A stream the server ends (every few
// minutes, and at a restart) is reconnected by the browser; one it refused (a session that
// ended) sends the person to log in.
let source = null;
let backoff = 1000;
function connectLive() {
  source = new EventSource("/api/floor/events");
  source.addEventListener("floor", (e) => {
    backoff = 1000;
    const floor = JSON.parse(e.data);
    renderFloor(floor);
    live("on", `live · ${clock(floor.at)}`);
  });
  source.addEventListener("unavailable", (e) => live("off", JSON.parse(e.data).message));
  source.onerror = async () => {
    if (source.readyState !== EventSource.CLOSED) {
      live("off", "reconnecting…");
      return;
    }
    live("off", "disconnected; reconnecting…");
    try {
      await json("/api/me");
    } catch {
      // Signed out (json() went to the login) or order-watch is away: try again later.
    }
    setTimeout(connectLive, backoff);
    backoff = Math.min(backoff * 2, 30000);
  };
}

// ---------------------------------------------------------------------------------------------
// Reconciliation: do Shop, CRM, MES and order-watch agree on each order's status?
//
// The panel comes with the floor's live feed (each reading carries the figures and the
// disagreements past the threshold, as GET /api/reconciliation answers), and is read at once
// after a repair. An order's story reads it once, to say whether the systems disagree on it.

const HOLDERS = ["shop-api", "crm-api", "mes-api", "order-watch"];
const holderName = { "shop-api": "Shop", "crm-api": "CRM", "mes-api": "MES", "order-watch": "order-watch" };
const nameOf = (holder) => holderName[holder] || holder;
// Who moves an order into each status, and so whose word on it counts (domain's
// OrderStatus::owner); every status not named here is MES's.
const statusOwner = {
  created: "shop-api", submitted: "shop-api", confirmed: "shop-api", cancelled: "shop-api",
  registered: "crm-api", shipped: "crm-api", delivered: "crm-api",
};
const ownerOf = (status) => statusOwner[status] || "mes-api";
// What a system that lags behind has not heard of yet.
const news = {
  created: "the order", submitted: "the order's hand-over", registered: "the order's registration",
  pricing: "the price calculation", priced: "the price", confirmed: "the customer's acceptance of the price",
  in_production: "production starting", quality_check: "the quality check", ready: "the order being ready to ship",
  shipped: "the shipment", delivered: "the delivery", rejected: "the rejection", cancelled: "the cancellation",
  failed: "the failure",
};
const quoted = (status) => `“${words(status)}”`;
// Most disagreements the panel lists (the longest first).
const DISAGREEMENTS_SHOWN = 50;

// How one holder disagrees with the owner's status, in words a support agent can repeat (the
// holder is named before it: "CRM has not heard of the price yet (lagging)").
function mismatchPredicate(m, d) {
  switch (m.kind) {
    case "lagging":
      return `has not heard of ${news[d.status] || `the move to ${quoted(d.status)}`} yet (lagging)`;
    case "ahead":
      return `is ahead: ${nameOf(ownerOf(m.holds))}, whose step ${quoted(m.holds)} is, does not say so (ahead)`;
    case "missing":
      return "does not know the order at all (missing)";
    case "diverged":
      return `says the order ended otherwise than ${nameOf(d.owner)}'s ${quoted(d.status)} (diverged)`;
    default:
      return `disagrees (${words(m.kind)})`;
  }
}
const mismatchWords = (m, d) => `${nameOf(m.system)} ${mismatchPredicate(m, d)}`;

function ownerWords(d) {
  return d.status && d.owner
    ? `${nameOf(d.owner)}, whose step it is, says ${quoted(d.status)}.`
    : "No system says it made any of the statuses held.";
}

// What `holder` says of the disagreeing order `d`: its status (amber when it disagrees), how,
// since when, and whether the status is its own step.
function holderCell(d, holder) {
  const view = d.views[holder];
  const mismatch = d.mismatches.find((m) => m.system === holder);
  const cell = el("div", null, "holds");
  cell.dataset.holder = holder;
  cell.append(el("span", view ? words(view.status) : "does not know it", mismatch ? "badge warn" : view ? "badge done" : "muted"));
  const about = [mismatch ? words(mismatch.kind) : "", holder === d.owner ? "its step" : "", view ? `since ${when(view.since)}` : ""];
  cell.append(el("span", about.filter(Boolean).join(" · "), "about"));
  return cell;
}

let reconciliation = null; // the latest answer the panel shows
let reconciliationReads = 0; // answers to older reads than the latest are dropped
const repairing = new Set(); // orders whose repair is under way

async function refreshReconciliation() {
  const read = ++reconciliationReads;
  let view;
  try {
    view = await json(`/api/reconciliation?limit=${DISAGREEMENTS_SHOWN}`);
  } catch (e) {
    if (read === reconciliationReads) {
      const line = $("reconciliation-read");
      line.className = "error";
      line.textContent = `Reconciliation cannot be read (${clock(new Date().toISOString())}): ${e.message}` +
        (reconciliation ? "; what is shown is from the last reading." : "");
    }
    return;
  }
  if (read !== reconciliationReads) return;
  renderReconciliation(view);
}

function renderReconciliation(view) {
  // A reading from the feed supersedes a read still under way.
  reconciliationReads += 1;
  reconciliation = view;
  const after = spell(view.threshold_seconds);
  const now = el("div", null, view.accuracy === 1 ? "card good" : "card");
  now.append(el("b", "Systems agree now"), el("div", percent(view.accuracy), "figure"),
    el("div", `${view.agreeing} of ${view.tracked} orders tracked (those whose status changed lately)`, "muted"));
  const day = el("div", null, view.accuracy_24h === 1 ? "card good" : "card");
  day.append(el("b", "Systems agreed over 24 h"), el("div", percent(view.accuracy_24h), "figure"),
    el("div", "of the orders tracked, at each comparison", "muted"));
  const listed = el("div", null, view.listed_orders ? "card bad" : "card good");
  listed.append(el("b", `Disagreeing for over ${after}`), el("div", String(view.listed_orders), "figure"),
    el("div", view.listed_orders === 1 ? "order, listed below" : view.listed_orders ? "orders, listed below" : "orders", "muted"));
  $("reconciliation-figures").replaceChildren(now, day, listed);

  const head = $("disagreements-head");
  if (isDeveloper() && head.children.length === 7) head.append(el("th", "repair"));
  // The focus stays where it was when the rows are made again.
  const active = document.activeElement;
  const focused = active && $("reconciliation").contains(active) ? active.dataset.key : undefined;
  const body = $("disagreements");
  body.replaceChildren();
  if (!view.disagreements.length) {
    const empty = view.tracked
      ? `No order has disagreed for over ${after}: Shop, CRM, MES and order-watch agree, or are catching up with a change.`
      : "No order is tracked: reconciliation compares the orders whose status changed lately (and does not run while no system of record is configured).";
    const tr = row([el("span", empty, "muted")]);
    tr.firstChild.colSpan = head.children.length;
    body.append(tr);
  }
  for (const d of view.disagreements) {
    const link = orderLink(d.order_id, shortEnds(d.order_id));
    link.title = `order ${d.order_id}`;
    link.dataset.key = `order:${d.order_id}`;
    const since = el("span", spell(d.disagreeing_seconds));
    since.title = `since ${when(d.disagreeing_since)}`;
    const differs = el("div", null, "differs");
    const list = el("ul");
    for (const m of d.mismatches) list.append(el("li", mismatchWords(m, d)));
    differs.append(el("span", ownerWords(d)), list);
    differs.title = `For developers: ${d.summary}`;
    const cells = [link, since, ...HOLDERS.map((holder) => holderCell(d, holder)), differs];
    if (isDeveloper()) cells.push(repairButton(d, showRepairOnFloor));
    const tr = row(cells);
    tr.dataset.order = d.order_id;
    body.append(tr);
  }
  if (focused) (body.querySelector(`[data-key="${focused}"]`) || $("reconciliation-title")).focus();

  const read = $("reconciliation-read");
  read.className = "muted";
  const shown = view.listed_orders > view.disagreements.length ? ` The ${view.disagreements.length} longest of ${view.listed_orders} are shown.` : "";
  read.textContent = `Read at ${clock(new Date().toISOString())}, live with the floor; the systems are compared every ${spell(view.interval_seconds)}, ` +
    `and an order is listed once they have disagreed on it for ${after}.${shown}`;
}

// A developer's (or an admin's) button that asks the system whose step the order's status is to
// send its messages again; `show` says what came of it. While the repair is under way it says so
// and does nothing, but keeps the focus (a disabled button would drop it).
function repairButton(d, show) {
  const b = button("Repair", () => { if (!repairing.has(d.order_id)) repair(d.order_id, show); }, "secondary");
  b.dataset.key = `repair:${d.order_id}`;
  b.setAttribute("aria-label", `Repair order ${d.order_id}`);
  b.title = "Ask the system whose step it is to send its messages about the order again (recorded under your name)";
  markRepairing(b, d.order_id);
  return b;
}

function markRepairing(b, id) {
  const busy = repairing.has(id);
  b.textContent = busy ? "Repairing…" : "Repair";
  if (busy) b.setAttribute("aria-disabled", "true");
  else b.removeAttribute("aria-disabled");
}

async function repair(id, show) {
  repairing.add(id);
  show(id, null);
  let outcome;
  try {
    const done = await send("POST", `/api/reconciliation/${encodeURIComponent(id)}/repair`);
    outcome = done.outcome === "failed"
      ? { ok: false, text: `Repair of order ${id} failed: ${done.detail}. Recorded under your name.` }
      : { ok: true, text: `Repair of order ${id} asked: ${done.detail}. Recorded under your name; the order is compared again at the next round.` };
  } catch (e) {
    outcome = { ok: false, text: `Repair of order ${id} not done: ${e.message}` };
  } finally {
    repairing.delete(id);
  }
  show(id, outcome);
}

// On the floor: the result under the panel, the rows read again, and again after the next
// round, which compares the order anew.
async function showRepairOnFloor(id, outcome) {
  if (!outcome) {
    $("reconciliation-status").textContent = "";
    $("reconciliation-error").textContent = "";
    if (reconciliation) renderReconciliation(reconciliation);
    return;
  }
  $(outcome.ok ? "reconciliation-status" : "reconciliation-error").textContent = outcome.text;
  await refreshReconciliation();
}

// An order's story, near its top: whether the systems disagree on it, and what each says.
function renderAgreement(id, answer) {
  const box = $("order-reconciliation");
  box.replaceChildren();
  if (answer instanceof Error) {
    box.append(el("p", `Whether Shop, CRM, MES and order-watch agree on this order cannot be read: ${answer.message}`, "muted"));
    return;
  }
  const d = answer.disagreements.find((x) => x.order_id === id);
  if (!d) return;
  const listed = Boolean(d.listed_at);
  const note = el("div", null, listed ? "explanation disagreement" : "explanation catching-up");
  note.setAttribute("role", listed ? "alert" : "note");
  note.append(el("h3", listed ? "The systems disagree about this order" : "The systems are catching up with this order"));
  note.append(el("p", listed
    ? `For ${spell(d.disagreeing_seconds)} (since ${when(d.disagreeing_since)}) Shop, CRM, MES and order-watch have not agreed on where this order is. ${ownerWords(d)}`
    : `Its latest change has not reached every system yet (for ${spell(d.disagreeing_seconds)}; it is listed on the floor after ${spell(answer.threshold_seconds)}). ${ownerWords(d)}`, "say"));
  const holders = el("ul", null, "holders");
  for (const holder of HOLDERS) {
    const view = d.views[holder];
    const mismatch = d.mismatches.find((m) => m.system === holder);
    const li = el("li");
    li.dataset.holder = holder;
    li.append(el("b", `${nameOf(holder)}: `), view ? `${quoted(view.status)} since ${when(view.since)}` : "does not know it");
    if (holder === d.owner) li.append(" (its step)");
    if (mismatch) li.append(" — ", el("span", mismatchPredicate(mismatch, d), "differs"));
    holders.append(li);
  }
  note.append(holders);
  const shop = d.views["shop-api"];
  note.append(el("p", shop ? `The customer sees what Shop says: ${quoted(shop.status)}.` : "Shop does not know this order: the customer does not see it.", "customer"));
  const dev = el("p", null, "dev");
  dev.append(`For developers: ${d.summary}`);
  if (isDeveloper()) {
    const result = el("span", null, "repair-result");
    result.setAttribute("role", "status");
    const show = (order, outcome) => {
      markRepairing(ask, order);
      result.className = outcome ? (outcome.ok ? "repair-result saved" : "repair-result error") : "repair-result";
      result.textContent = outcome ? outcome.text : "";
    };
    const ask = repairButton(d, show);
    dev.append(" · ", ask, " ", result);
  }
  note.append(dev);
  box.append(note);
}

// ---------------------------------------------------------------------------------------------
// Configuration

// Durations as people write them: 90s, 15m, 2h, 7d, or together (1d12h).
const UNITS = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
function formatDuration(seconds) {
  if (!seconds) return "0s";
  let rest = Math.round(seconds), text = "";
  for (const [unit, size] of UNITS) {
    const count = Math.floor(rest / size);
    if (count) { text += `${count}${unit}`; rest -= count * size; }
  }
  return text;
}
function parseDuration(text) {
  const t = text.trim().toLowerCase().replace(/\s+/g, "");
  if (!/^(\d+[dhms])+$/.test(t)) return null;
  let total = 0;
  for (const [, count, unit] of t.matchAll(/(\d+)([dhms])/g)) total += Number(count) * UNITS.find(([u]) => u === unit)[1];
  return total;
}

function saved(text) {
  $("config-error").textContent = "";
  $("config-status").textContent = text;
}
function failed(error) {
  $("config-status").textContent = "";
  $("config-error").textContent = error.message;
}

// Changes the configuration with merge patch `patch`; says what was saved, or why not.
async function changeConfig(patch, what) {
  try {
    await send("PATCH", "/api/config", patch);
  } catch (e) {
    failed(e);
    return;
  }
  saved(`Saved: ${what}. Every change is recorded with your name.`);
  await Promise.all([showConfig(), showHistory()]);
}

const lines = (text) => text.split("\n").map((l) => l.trim()).filter(Boolean);

// The configuration in force: support reads the thresholds; a developer changes them, the
// masking rules and the webhook; an admin also the retention.
async function showConfig() {
  const config = await json("/api/config");
  const may = isDeveloper();
  $("config-note").textContent = may
    ? (isAdmin() ? "You may change all of this." : "You may change thresholds, masking rules and the incident webhook; the retention needs the admin role.")
    : "Read only: changing thresholds needs the developer role.";
  const tbody = $("thresholds");
  tbody.replaceChildren();
  for (const [stage, seconds] of Object.entries(config.stuck_after_seconds)) {
    let cell = formatDuration(seconds);
    if (may) {
      const input = el("input");
      input.value = formatDuration(seconds);
      input.style.width = "90px";
      input.setAttribute("aria-label", `how long an order may wait in ${stage} before it is stuck (e.g. 15m, 2h, 7d)`);
      input.dataset.stage = stage;
      const save = button("Save", () => {
        const value = parseDuration(input.value);
        if (value === null) {
          failed(new Error(`"${input.value}" is not a duration: write it like 90s, 15m, 2h or 7d`));
          return;
        }
        changeConfig({ stuck_after_seconds: { [stage]: value } }, `${stage} is stuck after ${formatDuration(value)}`);
      });
      input.addEventListener("keydown", (e) => { if (e.key === "Enter") save.click(); });
      cell = el("span");
      cell.append(input, " ", save);
    }
    tbody.append(row([stage, cell]));
  }
  $("masking").hidden = !may;
  if (may) {
    $("drop-keys").value = config.masking.drop_keys.join("\n");
    $("mask-keys").value = config.masking.mask_keys.join("\n");
    $("mask-patterns").value = config.masking.mask_patterns.join("\n");
    $("webhook-now").textContent = config.webhook || "none: incidents are not announced";
  }
  $("retention").hidden = !isAdmin();
  if (isAdmin()) $("retention-days").value = String(config.retention_days);
}

$("save-masking").onclick = () => changeConfig({
  masking: {
    drop_keys: lines($("drop-keys").value),
    mask_keys: lines($("mask-keys").value),
    mask_patterns: lines($("mask-patterns").value),
  },
}, "masking rules");
$("save-webhook").onclick = async () => {
  const input = $("webhook");
  if (!input.value.trim()) { failed(new Error("write the new webhook URL first, or use Stop notifying")); return; }
  await changeConfig({ webhook: input.value.trim() }, "incident webhook");
  if (!$("config-error").textContent) input.value = "";
};
$("clear-webhook").onclick = () => changeConfig({ webhook: null }, "no incident webhook");
$("save-retention").onclick = () => {
  const days = Number($("retention-days").value);
  changeConfig({ retention_days: days }, `journeys are kept ${days} days`);
};

// What one change did, part by part, in words.
function describeChange(change) {
  const parts = [];
  const { before, after } = change;
  if (after.thresholds) {
    const b = before.thresholds, a = after.thresholds;
    if (b.default_seconds !== a.default_seconds) parts.push(`default ${formatDuration(b.default_seconds)} → ${formatDuration(a.default_seconds)}`);
    const stages = new Set([...Object.keys(b.per_stage_seconds), ...Object.keys(a.per_stage_seconds)]);
    for (const stage of stages) {
      const from = b.per_stage_seconds[stage] ?? b.default_seconds, to = a.per_stage_seconds[stage] ?? a.default_seconds;
      if (from !== to) parts.push(`${stage} ${formatDuration(from)} → ${formatDuration(to)}`);
    }
  }
  if (after.masking) {
    for (const list of ["drop_keys", "mask_keys", "mask_patterns"]) {
      const from = (before.masking[list] || []).join(", "), to = (after.masking[list] || []).join(", ");
      if (from !== to) parts.push(`masking ${list}: [${from}] → [${to}]`);
    }
  }
  if ("webhook" in after) parts.push(`webhook ${before.webhook || "none"} → ${after.webhook || "none"}`);
  if ("retention_days" in after) parts.push(`retention ${before.retention_days} → ${after.retention_days} days`);
  return parts.length ? parts.join("; ") : "nothing (the same values again)";
}

async function showHistory() {
  const changes = await json("/api/config/changes?limit=20");
  const tbody = $("history");
  tbody.replaceChildren();
  if (changes.length === 0) tbody.append(row([el("span", "no change made at run time yet", "muted")]));
  for (const change of changes) {
    const who = el("span", change.changed_by.replace(/ \(.*\)$/, ""));
    who.title = change.changed_by;
    tbody.append(row([new Date(change.changed_at).toLocaleString(), who, describeChange(change)]));
  }
}

// ---------------------------------------------------------------------------------------------
// Start: who is asking first, as what the page offers depends on their role.

showWho().then(() => {
  route();
  connectLive();
  return Promise.all([showConfig(), showHistory()]);
}).catch(() => {});
