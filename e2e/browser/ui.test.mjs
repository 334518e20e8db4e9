// order-watch's UI in a real browser (Debian's Chromium, driven by playwright-core), logged in
// through the identity provider.
//
// The support desk (issue 19): support finds an order by its external id and reads its story — the
// timeline of a priced order waiting for its customer, of a stuck one and of a rejected one, each
// saying why in words — then unfolds a trace of the technical journey, opens a span's attributes
// and follows the link from one trace to the next; a typo gets "did you mean"; the floor shows the
// orders in flight per stage and the SLO figures, and a stuck order appears on it live, without a
// reload. An order of 500 spans is rendered and its time printed (the page's own User Timing
// measures; the 200 ms target is recorded in docs/benchmarks.md, not asserted here).
//
// Roles: support reads the stuck thresholds with no control to change anything; the developer
// changes a threshold (written as a duration), audited under their name, and sees none of the
// admin's controls; the admin acknowledges an incident and erases an order's trace data after a
// confirmation.
//
// Reconciliation (issue 18, item 5): the floor lists the orders Shop, CRM, MES and order-watch
// have disagreed on for longer than the threshold, with what each says and how they differ in
// words, and the accuracy figures; an order's story says when the systems disagree on it (or are
// still catching up). Support has no Repair; the developer's repairs ask the owner to republish
// or have order-watch take the owner's record (the row goes once the systems agree), or are
// refused with the reason, and are audited.
//
// It starts order-watch itself (the binary `cargo build` made) on free ports with a database of
// its own, and stand-in systems of record (records.mjs) that order-watch reconciles, and uses the
// identity provider scripts/test starts (Keycloak with the realm in deploy/keycloak/). Run it with
// scripts/test, or by hand:
//
//   cargo build -p order-watch && (cd e2e/browser && npm ci && npm test)
//
// Settings (environment):
//   HALLMARK_TEST_OIDC_ISSUER     the hallmark realm (default http://127.0.0.1:8180/realms/hallmark)
//   HALLMARK_ALERTMANAGER_SECRET  the secret of its client alertmanager, which posts the test's
//                                 alert (default: scripts/keycloak.sh's development default)
//   HALLMARK_TEST_DATABASE_URL    a PostgreSQL URL allowed to create databases (default: as
//                                 scripts/deps.sh's HALLMARK_DB_ADMIN_URL)
//   ORDER_WATCH_BIN               the binary (default $CARGO_TARGET_DIR or target/, debug/order-watch)
//   HALLMARK_CHROMIUM             the browser (default /usr/bin/chromium)
//   HALLMARK_SCREENSHOTS          where the screenshots go (default .run/test/browser; the ones in
//                                 docs/screenshots are made with HALLMARK_SCREENSHOTS=docs/screenshots)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { accessSync, closeSync, constants, mkdirSync, openSync, readFileSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { StandInRecords } from "./records.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const issuer = process.env.HALLMARK_TEST_OIDC_ISSUER || "http://127.0.0.1:8180/realms/hallmark";
const adminUrl =
  process.env.HALLMARK_TEST_DATABASE_URL ||
  process.env.HALLMARK_DB_ADMIN_URL ||
  "postgres://hallmark:hallmark@127.0.0.1:5432/postgres";
const binary =
  process.env.ORDER_WATCH_BIN ||
  join(process.env.CARGO_TARGET_DIR || join(root, "target"), "debug", "order-watch");
const browserPath = process.env.HALLMARK_CHROMIUM || "/usr/bin/chromium";
const runDir = join(root, ".run", "test", "browser");
const shots = resolve(root, process.env.HALLMARK_SCREENSHOTS || runDir);

// A UUIDv7 (time-ordered, as the services make them; a test database named with one is swept by
// testkit when a run ends before dropping it).
function uuidv7() {
  const bytes = randomBytes(16);
  const now = BigInt(Date.now());
  for (let i = 0; i < 6; i++) bytes[i] = Number((now >> BigInt(8 * (5 - i))) & 0xffn);
  bytes[6] = (bytes[6] & 0x0f) | 0x70;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = bytes.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// `count` ports free now, all different (held open together while they are chosen).
async function freePorts(count) {
  const servers = await Promise.all(
    Array.from({ length: count }, () => new Promise((done, fail) => {
      const server = createServer();
      server.on("error", fail);
      server.listen(0, "127.0.0.1", () => done(server));
    })),
  );
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

function psql(sql) {
  execFileSync("psql", [adminUrl, "-qc", sql], { stdio: ["ignore", "ignore", "pipe"] });
}

async function until(what, seconds, check) {
  const deadline = Date.now() + seconds * 1000;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what} within ${seconds}s${last ? `: ${last.message}` : ""}`);
}

const order = uuidv7();
// An order whose trace data the admin erases.
const erased = uuidv7();
// The support desk's orders: one priced two days ago and waiting for its customer, one stuck in
// pricing, one rejected for a model with holes, and a busy one of 500 spans whose customer
// confirmed the price (a trace of its own, linked to the order's first).
const priced = uuidv7();
const stuck = uuidv7();
const rejected = uuidv7();
const busy = uuidv7();
const pricedExternal = `PO-${randomBytes(3).readUIntBE(0, 3) % 900000 + 100000}`;
// Where the trace links point (nothing answers there: the test only reads the links).
const jaeger = "http://127.0.0.1:16686";
const databaseName = `test_browser_${uuidv7().replaceAll("-", "")}`;
let databaseCreated = false;
let watch; // the order-watch process
let logPath;
let base; // where order-watch's UI and API answer
let otlp; // its OTLP/HTTP receiver
let browser;
let records; // the stand-in systems of record

function watchLog() {
  try {
    return readFileSync(logPath, "utf8").split("\n").slice(-30).join("\n");
  } catch {
    return "(no log)";
  }
}

before(async () => {
  mkdirSync(runDir, { recursive: true });
  for (const name of ["support", "developer", "admin", "desk", "floor", "reconciliation-support", "reconciliation-developer"]) rmSync(join(runDir, `failed-${name}.png`), { force: true });
  mkdirSync(shots, { recursive: true });
  // What the test needs, each said plainly when missing.
  try {
    accessSync(binary, constants.X_OK);
  } catch {
    throw new Error(`no order-watch binary at ${binary}: build it with cargo build -p order-watch (or set ORDER_WATCH_BIN)`);
  }
  const discovery = await fetch(`${issuer}/.well-known/openid-configuration`).catch((e) => e);
  assert.ok(
    discovery instanceof Response && discovery.ok,
    `the identity provider does not answer at ${issuer}: run this through scripts/test, or start Keycloak with scripts/keycloak.sh`,
  );

  psql(`CREATE DATABASE "${databaseName}"`);
  databaseCreated = true;
  const databaseUrl = new URL(adminUrl);
  databaseUrl.pathname = `/${databaseName}`;

  records = await new StandInRecords().start();
  const [http, grpc, otlpHttp] = await freePorts(3);
  base = `http://127.0.0.1:${http}`;
  otlp = `http://127.0.0.1:${otlpHttp}`;
  logPath = join(runDir, "order-watch.log");
  const log = openSync(logPath, "w");
  watch = spawn(binary, [], {
    env: {
      PATH: process.env.PATH,
      HALLMARK_ENV: "test",
      RUST_LOG: "info",
      ORDER_WATCH_HOST: "127.0.0.1",
      ORDER_WATCH_PORT: String(http),
      ORDER_WATCH_OTLP_GRPC_PORT: String(grpc),
      ORDER_WATCH_OTLP_HTTP_PORT: String(otlpHttp),
      ORDER_WATCH_DATABASE_URL: databaseUrl.toString(),
      ORDER_WATCH_OIDC_ISSUER: issuer,
      ORDER_WATCH_JAEGER_URL: jaeger,
      // The floor's counts per stage, refreshed often enough for a test to see them change.
      ORDER_WATCH_GAUGE_INTERVAL: "1s",
      // The systems of record, reconciled every second. Each round reads their changes of the
      // last hour again (the overlap), so that the test's disagreements, which began minutes
      // before order-watch started, are found; they are listed after the default 5 minutes.
      ORDER_WATCH_SHOP_URL: records.url("shop"),
      ORDER_WATCH_CRM_URL: records.url("crm"),
      ORDER_WATCH_MES_URL: records.url("mes"),
      ORDER_WATCH_RECONCILE_INTERVAL: "1s",
      ORDER_WATCH_RECONCILE_OVERLAP: "1h",
      OTEL_TRACES_EXPORTER: "none",
      OTEL_METRICS_EXPORTER: "none",
    },
    stdio: ["ignore", log, log],
  });
  closeSync(log);
  let exited = null;
  watch.on("exit", (code, signal) => (exited = signal || `exit code ${code}`));
  await until("order-watch answers /health", 30, async () => {
    if (exited) throw new Error(`order-watch stopped (${exited}); its log:\n${watchLog()}`);
    return (await fetch(`${base}/health`)).ok;
  }).catch((e) => {
    throw new Error(`${e.message}\norder-watch's log (${logPath}):\n${watchLog()}`);
  });

  browser = await chromium.launch({
    executablePath: browserPath,
    headless: true,
    // No calls home: this machine's network is closed, and a test has no use for them.
    args: ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
  }).catch((e) => {
    throw new Error(`cannot start Chromium at ${browserPath} (install Debian's chromium, or set HALLMARK_CHROMIUM): ${e.message}`);
  });

  // Disagreements from the start, so the floor shows them to every test.
  await sendDisagreements();
});

after(async () => {
  await browser?.close();
  if (watch && watch.exitCode === null && watch.signalCode === null) {
    const gone = new Promise((r) => watch.once("exit", r));
    watch.kill("SIGTERM");
    await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
    if (watch.exitCode === null && watch.signalCode === null) watch.kill("SIGKILL");
  }
  if (databaseCreated) psql(`DROP DATABASE IF EXISTS "${databaseName}" WITH (FORCE)`);
  await records?.close();
});


// ---------------------------------------------------------------------------------------------
// Journeys as the services export them (OTLP/JSON)

const attribute = (key, value) =>
  typeof value === "number" ? { key, value: { intValue: String(value) } } : { key, value: { stringValue: value } };
const hex = (bytes) => randomBytes(bytes).toString("hex");
const KIND = { internal: 1, server: 2, client: 3, producer: 4, consumer: 5 };

// Sends spans grouped by service, one OTLP/HTTP request per service.
async function exportSpans(byService) {
  const body = {
    resourceSpans: Object.entries(byService).map(([service, spans]) => ({
      resource: { attributes: [attribute("service.name", service)] },
      scopeSpans: [{ scope: { name: "browser-test" }, spans }],
    })),
  };
  const response = await fetch(`${otlp}/v1/traces`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.text();
  assert.equal(response.status, 200, `the OTLP receiver took the spans: ${answer}`);
  assert.ok(!JSON.parse(answer).partialSuccess?.rejectedSpans, `no span was rejected: ${answer}`);
}

// One order's spans, built the way Shop, CRM and MES record them: requests, transitions, database
// statements, the outbox relay's publications, consumers' processing (children of and linked to
// the publication), the price calculation, and customers' status checks, each a trace of its own.
class Journey {
  constructor(order, startMs) {
    this.order = order;
    this.at = BigInt(startMs) * 1_000_000n;
    this.trace = hex(16);
    this.byService = {};
    this.count = 0;
  }

  // A span `ms` long starting now (the journey's clock moves on by it plus a millisecond);
  // returns its reference for parents and links.
  span(service, name, { kind = "internal", parent, link, attributes = {}, error, activity = "progress", ms = 3, trace = this.trace } = {}) {
    const id = hex(8);
    const start = this.at;
    this.at += BigInt(ms + 1) * 1_000_000n;
    const attrs = [attribute("order.id", this.order), attribute("order.activity", activity)];
    for (const [key, value] of Object.entries(attributes)) attrs.push(attribute(key, value));
    (this.byService[service] ||= []).push({
      traceId: trace,
      spanId: id,
      ...(parent ? { parentSpanId: parent.spanId } : {}),
      name,
      kind: KIND[kind],
      startTimeUnixNano: String(start),
      endTimeUnixNano: String(start + BigInt(ms) * 1_000_000n),
      attributes: attrs,
      ...(link ? { links: [{ traceId: link.traceId, spanId: link.spanId }] } : {}),
      status: error ? { code: 2, message: error } : {},
    });
    this.count += 1;
    return { traceId: trace, spanId: id };
  }

  wait(ms) {
    this.at += BigInt(ms) * 1_000_000n;
  }

  db(service, summary, parent, activity = "progress") {
    const [operation, table] = summary.split(" ");
    return this.span(service, summary, {
      kind: "client", parent, activity,
      attributes: { "db.system.name": "postgresql", "db.operation.name": operation, "db.collection.name": table, "db.query.summary": summary },
    });
  }

  transition(service, from, to, parent, attributes = {}) {
    const span = this.span(service, `order ${to === "created" ? "create" : to}`, {
      parent, attributes: { "order.status.to": to, "order.stage": stageOf[to], ...(from ? { "order.status.from": from } : {}), ...attributes },
    });
    this.db(service, "UPDATE orders", span);
    return span;
  }

  publish(service, kind, parent) {
    const span = this.span(service, "publish hallmark.orders", {
      kind: "producer", parent,
      attributes: { "messaging.system": "rabbitmq", "messaging.operation.type": "send", "messaging.destination.name": "hallmark.orders", "hallmark.message.type": kind },
    });
    this.db(service, "UPDATE outbox", parent);
    return span;
  }

  consume(service, queue, producer, type, { retry = 0, waitMs = 40, failed } = {}) {
    this.wait(waitMs);
    const span = this.span(service, "process hallmark.orders", {
      kind: "consumer", parent: producer, link: producer, error: failed?.message, ms: 8,
      attributes: {
        "messaging.system": "rabbitmq", "messaging.operation.type": "process", "messaging.destination.subscription.name": queue,
        "hallmark.message.type": type,
        "hallmark.queue.wait_ms": waitMs, "hallmark.retry.count": retry,
        ...(failed ? { "hallmark.error.code": failed.code } : {}),
      },
    });
    this.db(service, "INSERT inbox", span);
    return span;
  }

  // A customer's status check: a trace of its own that only reads the order.
  statusCheck() {
    const trace = hex(16);
    const server = this.span("shop-api", "GET /api/orders/{order_id}", {
      kind: "server", trace, activity: "observation", attributes: { "http.request.method": "GET", "http.route": "/api/orders/{order_id}", "http.response.status_code": 200 },
    });
    for (const table of ["orders", "order_prices", "order_events"]) {
      this.span("shop-api", `SELECT ${table}`, { kind: "client", trace, parent: server, activity: "observation", attributes: { "db.system.name": "postgresql", "db.query.summary": `SELECT ${table}` } });
    }
  }

  // From the upload to `pricing`: Shop creates and hands over the order, CRM registers it and asks
  // MES for a price, MES starts pricing; Shop keeps its own view of each status.
  toPricing(ids) {
    const request = this.span("shop-api", "POST /api/orders", {
      kind: "server", ms: 40, attributes: { "http.request.method": "POST", "http.route": "/api/orders", "http.response.status_code": 201 },
    });
    const create = this.transition("shop-api", null, "created", request, { "order.source": ids.partner ? "partner_api" : "web", ...idAttributes(ids) });
    this.db("shop-api", "INSERT customers", create);
    this.db("shop-api", "INSERT orders", create);
    this.db("shop-api", "INSERT outbox", create);
    this.wait(120);
    const relay = this.transition("shop-api", "created", "submitted", create);
    const created = this.publish("shop-api", "order.created", relay);
    const register = this.consume("crm-api", "crm.orders", created, "order.created");
    this.db("crm-api", "INSERT orders", register);
    const registered = this.transition("crm-api", "submitted", "registered", register, { "customer.id": ids.customer, ...idAttributes(ids) });
    const asked = this.publish("crm-api", "order.pricing_requested", registered);
    const take = this.consume("mes-api", "mes.pricing", asked, "order.pricing_requested");
    this.db("mes-api", "INSERT calc_jobs", take);
    const pricing = this.transition("mes-api", "registered", "pricing", take);
    this.shopLearns(this.publish("mes-api", "order.status_changed", pricing));
    return take;
  }

  shopLearns(producer) {
    const learn = this.consume("shop-api", "shop.status", producer, "order.status_changed");
    this.db("shop-api", "UPDATE orders", learn);
  }

  // MES prices the model: the calculation engine's run and its own span; a model that cannot be
  // made is rejected.
  price(take, { rejects = false } = {}) {
    const model = this.span("mes-api", "price model", { parent: take, ms: 900, attributes: { "order.material": "gold_750", "hallmark.retry.count": 0 } });
    const run = this.span("mes-api", "mes-calc run", { kind: "client", parent: model, ms: 850 });
    this.span("mes-calc", "calculate price", {
      kind: "server", parent: run, ms: 820,
      ...(rejects ? { error: "the model is not a closed solid", attributes: { "hallmark.error.code": "stl_not_closed" } } : {}),
    });
    const to = rejects ? "rejected" : "priced";
    const moved = this.transition("mes-api", "pricing", to, model, rejects ? { "hallmark.error.code": "stl_not_closed" } : {});
    this.shopLearns(this.publish("mes-api", "order.status_changed", moved));
    return moved;
  }

  // The customer accepts the price, later, in a trace of its own linked to the order's last
  // step.
  confirm(previous) {
    this.trace = hex(16);
    const request = this.span("shop-api", "POST /api/orders/{order_id}/confirm", {
      kind: "server", link: previous, ms: 30, attributes: { "http.request.method": "POST", "http.route": "/api/orders/{order_id}/confirm", "http.response.status_code": 200 },
    });
    const confirmed = this.transition("shop-api", "priced", "confirmed", request);
    this.publish("shop-api", "order.status_changed", confirmed);
  }

  send() {
    return exportSpans(this.byService);
  }
}

const stageOf = {
  created: "intake", submitted: "registration", registered: "pricing_queue", pricing: "pricing", priced: "customer_confirmation",
  confirmed: "production_queue", rejected: "done",
};
const idAttributes = (ids) => ({
  ...(ids.external ? { "order.external_id": ids.external } : {}),
  ...(ids.partner ? { "partner.id": ids.partner } : {}),
});
const ids = (external, partner) => ({ external, partner, customer: uuidv7() });
const minutes = (n) => n * 60_000;

// The priced order: priced 2 d 4 h ago; its customer checked its status five times since.
async function sendPriced() {
  const journey = new Journey(priced, Date.now() - minutes(2 * 1440 + 4 * 60 + 5));
  journey.price(journey.toPricing(ids(pricedExternal, "acme-jewels")));
  for (let i = 0; i < 5; i++) {
    journey.wait(minutes(40));
    journey.statusCheck();
  }
  await journey.send();
  return journey.count;
}

// Stuck in pricing for 40 minutes: the calculation's first attempt failed and nothing has moved
// since (the stand-in MES cannot be asked about it, records.mjs, so order-watch flags it
// unconfirmed).
async function sendStuck() {
  const journey = new Journey(stuck, Date.now() - minutes(41));
  const take = journey.toPricing(ids(`WEB-${hex(4)}`));
  journey.wait(30_000);
  journey.span("mes-api", "price model", {
    parent: take, ms: 30_000, error: "the calculation engine did not answer within 30 s",
    attributes: { "hallmark.error.code": "timeout", "hallmark.retry.count": 1 },
  });
  await journey.send();
}

async function sendRejected() {
  const journey = new Journey(rejected, Date.now() - minutes(65));
  journey.price(journey.toPricing(ids(`WEB-${hex(4)}`)), { rejects: true });
  await journey.send();
}

// 500 spans: priced, confirmed by the customer (a linked trace), and checked on very often.
async function sendBusy() {
  const journey = new Journey(busy, Date.now() - minutes(26 * 60));
  const priced = journey.price(journey.toPricing(ids(`PO-${hex(3)}`, "goldsmith-berlin")));
  journey.wait(minutes(60));
  journey.confirm(priced);
  // Status checks are four spans each; the confirmation reads the order a few more times.
  while ((500 - journey.count) % 4) journey.db("shop-api", "SELECT orders", null, "observation");
  while (journey.count < 500) {
    journey.wait(minutes(10));
    journey.statusCheck();
  }
  assert.equal(journey.count, 500);
  await journey.send();
}

// One order's first steps, as the services export them (OTLP/JSON): the shop creates it, the
// CRM registers it, in one trace.
async function sendJourney(order) {
  const journey = new Journey(order, Date.now());
  const request = journey.span("shop-api", "POST /api/orders", { kind: "server", ms: 42, attributes: { "order.status.to": "created" } });
  journey.wait(18);
  journey.span("crm-api", "process hallmark.orders", { kind: "consumer", parent: request, ms: 25, attributes: { "order.status.to": "registered" } });
  await journey.send();
}

// An alert as Alertmanager posts it: with a token of its service identity (the client
// credentials of the client alertmanager, role alert-sender).
async function sendAlert() {
  const secret = process.env.HALLMARK_ALERTMANAGER_SECRET || "hallmark-alertmanager-local-only";
  const issued = await fetch(`${issuer}/protocol/openid-connect/token`, {
    method: "POST",
    body: new URLSearchParams({ grant_type: "client_credentials", client_id: "alertmanager", client_secret: secret }),
  });
  assert.equal(issued.status, 200, `a token of the client alertmanager: ${await issued.clone().text()}`);
  const { access_token: token } = await issued.json();
  const response = await fetch(`${base}/api/alerts`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ alerts: [{
      status: "firing",
      labels: { alertname: "QueueWaitGrowing", service: "mes-api", severity: "ticket" },
      annotations: { summary: "MES's pricing queue waits longer and longer" },
      fingerprint: "browser-test",
    }] }),
  });
  assert.equal(response.status, 200, `order-watch took the alert: ${await response.text()}`);
}

// ---------------------------------------------------------------------------------------------
// Orders the systems of record and order-watch disagree on (reconciliation)

// Fifteen orders every system and order-watch hold registered, and four they have disagreed on
// for minutes (what each stand-in system holds since when is below; order-watch's status comes
// from the spans sent):
//   lagging    MES priced it 10 min ago, Shop heard 8 min ago, CRM never did (an event lost):
//              MES republishing its event mends it;
//   ahead      order-watch saw the customer confirm the price, which Shop, whose step that is,
//              never recorded (a transaction rolled back after its span): nothing to republish;
//   watchLags  every system has the customer's confirmation but order-watch, whose spans of it
//              were lost;
//   missing    Shop handed the order over 6 min ago and CRM does not know it;
// and one whose latest change has not reached Shop yet (catchingUp), sent by the reconciliation
// test itself, as it is listed only after 5 minutes.
const disagreeing = { lagging: uuidv7(), ahead: uuidv7(), watchLags: uuidv7(), missing: uuidv7(), catchingUp: uuidv7() };
const agreeing = Array.from({ length: 15 }, () => uuidv7());

async function sendDisagreements() {
  const now = Date.now();
  const ago = (ms) => now - ms;
  await Promise.all(agreeing.map((id) => sendJourney(id)));

  const lagging = new Journey(disagreeing.lagging, ago(minutes(10)));
  lagging.price(lagging.toPricing(ids(`WEB-${hex(4)}`)));
  const ahead = new Journey(disagreeing.ahead, ago(minutes(31)));
  const priced = ahead.price(ahead.toPricing(ids(`WEB-${hex(4)}`)));
  ahead.wait(minutes(5));
  ahead.confirm(priced);
  const watchLags = new Journey(disagreeing.watchLags, ago(minutes(45)));
  watchLags.price(watchLags.toPricing(ids(`WEB-${hex(4)}`)));
  // Shop's part only: created and handed over to CRM.
  const missing = new Journey(disagreeing.missing, ago(minutes(6)));
  const request = missing.span("shop-api", "POST /api/orders", { kind: "server", ms: 40, attributes: { "http.request.method": "POST", "http.route": "/api/orders", "http.response.status_code": 201 } });
  const create = missing.transition("shop-api", null, "created", request, { "order.source": "web" });
  missing.wait(120);
  missing.publish("shop-api", "order.created", missing.transition("shop-api", "created", "submitted", create));
  for (const journey of [lagging, ahead, watchLags, missing]) await journey.send();

  // What the systems hold, once order-watch has its spans (ingest answers once they are stored):
  // a round never sees order-watch without them.
  for (const id of agreeing) records.hold(id, { shop: ["registered", now], crm: ["registered", now], mes: ["registered", now] });
  records.hold(disagreeing.lagging, { shop: ["priced", ago(minutes(8))], crm: ["pricing", ago(minutes(10))], mes: ["priced", ago(minutes(10) - 3000)] });
  records.hold(disagreeing.ahead, { shop: ["priced", ago(minutes(30))], crm: ["priced", ago(minutes(30))], mes: ["priced", ago(minutes(31) - 3000)] });
  records.hold(disagreeing.watchLags, { shop: ["confirmed", ago(minutes(40))], crm: ["confirmed", ago(minutes(40))], mes: ["confirmed", ago(minutes(40))] });
  records.hold(disagreeing.missing, { shop: ["submitted", ago(minutes(6))] });
}

// Priced 38 s ago; CRM heard 15 s ago, Shop not yet.
async function sendCatchingUp() {
  const now = Date.now();
  const journey = new Journey(disagreeing.catchingUp, now - 40_000);
  journey.price(journey.toPricing(ids(`WEB-${hex(4)}`)));
  await journey.send();
  records.hold(disagreeing.catchingUp, { shop: ["pricing", now - 39_000], crm: ["priced", now - 15_000], mes: ["priced", now - 38_000] });
}

// A fresh browser (no cookies: a person who has not logged in), at order-watch's page, sent to
// the identity provider's login form and back.
async function logIn(user) {
  const context = await browser.newContext({
    // A laptop's screen.
    viewport: { width: 1366, height: 768 },
    locale: "en-GB",
    timezoneId: "UTC",
  });
  context.setDefaultTimeout(15_000);
  const page = await context.newPage();
  await page.goto(`${base}/`);
  // Not logged in: the page sent the browser to the provider's login form.
  assert.ok(
    page.url().startsWith(`${issuer}/protocol/openid-connect/auth?`),
    `${user}: at the identity provider's login, not ${page.url()}`,
  );
  assert.ok(page.url().includes("code_challenge_method=S256"), page.url());
  await page.locator("input[name=username]").fill(user);
  await page.locator("input[name=password]").fill(user);
  await Promise.all([
    page.waitForURL(`${base}/`),
    page.locator("input[name=password]").press("Enter"),
  ]);
  await page.locator("#who", { hasText: `${user} · ${user}` }).waitFor();
  assert.equal(await page.locator("#who button").textContent(), "Log out");
  return { context, page };
}


// ---------------------------------------------------------------------------------------------
// The page

// Goes to one of the page's views by its link in the navigation.
async function view(page, name) {
  await page.getByRole("navigation", { name: "Views" }).getByRole("link", { name, exact: true }).click();
}

// Finds `text` with the search box, from the keyboard.
async function find(page, text) {
  await page.locator("#q").focus();
  await page.keyboard.press("Control+A");
  await page.keyboard.type(text);
  await page.keyboard.press("Enter");
}

// Opens order `id` by searching for it and checks its story and technical journey are there.
async function openOrder(page, id) {
  await find(page, id);
  await page.locator("#order-title", { hasText: `Order ${id}` }).waitFor();
  await page.locator("#timeline li").first().waitFor();
  await page.locator("#traces .entry").first().waitFor();
}

// The timeline as [status, service] pairs.
async function timeline(page) {
  const steps = [];
  for (const step of await page.locator("#timeline li").all()) {
    steps.push([await step.locator(".what code").textContent(), await step.locator("> span").nth(2).textContent()]);
  }
  return steps;
}

// The order of the first tests: its journey opened, its one trace unfolded from the keyboard.
async function showJourney(page, id = order) {
  await openOrder(page, id);
  assert.deepEqual(await timeline(page), [["created", "shop-api"], ["registered", "crm-api"]]);
  assert.ok(!(await page.locator("#explanations .explanation").count()), "nothing to explain");
  const toggle = page.locator('#traces button.toggle[data-role="trace"]').first();
  await toggle.focus();
  await page.keyboard.press("Enter");
  assert.equal(await toggle.getAttribute("aria-expanded"), "true");
  assert.deepEqual(await page.locator("#traces .span-row .svc").allTextContents(), ["shop-api", "crm-api"], "both spans, nested");
}
// The thresholds table, stage → what the row shows (text, or the input's value: a duration).
async function thresholds(page) {
  await page.locator("#thresholds tr").first().waitFor();
  const rows = {};
  for (const row of await page.locator("#thresholds tr").all()) {
    const stage = await row.locator("td").first().textContent();
    const input = row.locator("input");
    rows[stage] = (await input.count()) ? await input.inputValue() : await row.locator("td").nth(1).textContent();
  }
  return rows;
}

// The open incident the test's alert opened, as its row shows it.
function alertRow(page) {
  return page.locator("#incidents tr", { hasText: "MES's pricing queue waits longer and longer" });
}

// What only an admin is offered: erasing the trace data of the order shown, incident actions
// (on the floor), the retention (in the configuration, where this leaves the page).
async function adminControls(page) {
  const erase = await page.getByRole("button", { name: "Delete trace data…" }).count();
  await view(page, "Floor");
  await alertRow(page).waitFor();
  const incidentButtons = await page.locator("#incidents button").count();
  await view(page, "Configuration");
  await page.locator("#config-note").waitFor();
  return { incidentButtons, retention: await page.locator("#retention").isVisible(), erase };
}

// The reconciliation panel's row of order `id`.
function disagreementRow(page, id) {
  return page.locator(`#disagreements tr[data-order="${id}"]`);
}

// What a row says of how the systems differ: the owner's word, then each holder that disagrees.
async function differs(row) {
  return [await row.locator(".differs > span").textContent(), ...(await row.locator(".differs li").allTextContents())];
}

// Ten times the 500-span target: what fails the test (the target itself is measured, not asserted).
const SLOW_RENDER_MS = 2000;

// The durations the page measured with the User Timing API, the latest of each name.
async function measured(page, name) {
  return page.evaluate((n) => performance.getEntriesByName(n).at(-1)?.duration, name);
}

// On failure, what the browser showed.
async function keepFailure(page, name, run) {
  try {
    await run();
  } catch (e) {
    await page.screenshot({ path: join(runDir, `failed-${name}.png`), fullPage: true }).catch(() => {});
    throw new Error(`${e.message}\n(the page as it was: ${join(runDir, `failed-${name}.png`)}; order-watch's log: ${logPath})`, { cause: e });
  }
}


test("support logs in, sees an order's journey and reads the thresholds without a way to change them", async () => {
  await sendJourney(order);
  await sendJourney(erased);
  await sendAlert();
  const { context, page } = await logIn("support");
  await keepFailure(page, "support", async () => {
    await showJourney(page);
    assert.deepEqual(await adminControls(page), { incidentButtons: 0, retention: false, erase: 0 });

    await page.locator("#config-note", { hasText: "Read only: changing thresholds needs the developer role." }).waitFor();
    const shown = await thresholds(page);
    assert.equal(shown.pricing, "15m", JSON.stringify(shown));
    assert.equal(shown.customer_confirmation, "7d", JSON.stringify(shown));
    assert.equal(await page.locator("#config input:visible, #config textarea:visible").count(), 0, "nothing can be edited");
    assert.equal(await page.locator("#config button:visible").count(), 0, "no Save button");
    assert.ok(await page.locator("#masking").isHidden(), "no masking rules or webhook");

    // Nor behind the page's back: the session's own CSRF token does not make support a developer.
    const me = await (await page.request.get(`${base}/api/me`)).json();
    assert.equal(me.role, "support");
    const refused = await page.request.patch(`${base}/api/config`, {
      headers: { "x-csrf-token": me.csrf_token },
      data: { stuck_after_seconds: { pricing: 60 } },
    });
    assert.equal(refused.status(), 403, await refused.text());
    const config = await (await page.request.get(`${base}/api/config`)).json();
    assert.equal(config.stuck_after_seconds.pricing, 900, "unchanged");

    await page.screenshot({ path: join(shots, "order-watch-support.png"), fullPage: true });
  });
  await context.close();
});

test("the developer logs in and changes the pricing threshold, which is audited under their name, and sees no admin control", async () => {
  const { context, page } = await logIn("developer");
  await keepFailure(page, "developer", async () => {
    await view(page, "Configuration");
    await page.locator("#config-note", { hasText: "You may change thresholds, masking rules and the incident webhook" }).waitFor();
    const pricing = page.locator("input[data-stage=pricing]");
    const save = page.locator("#thresholds tr", { has: pricing }).getByRole("button", { name: "Save" });
    assert.equal(await pricing.inputValue(), "15m");

    // Something that is no duration is said so, and nothing is sent.
    await pricing.fill("soon");
    await save.click();
    await page.locator("#config-error", { hasText: "\"soon\" is not a duration: write it like 90s, 15m, 2h or 7d" }).waitFor();

    // Enter saves too.
    await pricing.fill("30m");
    const [saved] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${base}/api/config` && r.request().method() === "PATCH"),
      pricing.press("Enter"),
    ]);
    assert.equal(saved.status(), 200, await saved.text());
    await page.locator("#config-status", { hasText: "Saved: pricing is stuck after 30m." }).waitFor();
    assert.equal(await page.locator("#config-error").textContent(), "");

    // The server's own refusal, in its words: a pattern that is no regular expression.
    await page.locator("#mask-patterns").fill("(unclosed");
    await page.getByRole("button", { name: "Save masking rules" }).click();
    await page.locator("#config-error", { hasText: "masking.mask_patterns[0]: `(unclosed` is not a regular expression" }).waitFor();

    // Stored, not just shown: a reload (of the same view) reads it back, and the history says who
    // changed what.
    await page.reload();
    await page.locator("#who", { hasText: "developer · developer" }).waitFor();
    await until("the reloaded page shows 30m for pricing", 10, async () => (await thresholds(page)).pricing === "30m");
    await page.locator("#history tr", { hasText: "pricing 15m → 30m" }).waitFor();
    assert.equal(await page.locator("#history tr").count(), 1, "the refused change is no change");
    assert.equal(await page.locator("#history tr td").nth(1).textContent(), "developer");
    await page.screenshot({ path: join(shots, "order-watch-developer.png"), fullPage: true });

    // None of the admin's controls, and the API agrees.
    await showJourney(page);
    assert.deepEqual(await adminControls(page), { incidentButtons: 0, retention: false, erase: 0 });
    const me = await (await page.request.get(`${base}/api/me`)).json();
    const refused = await page.request.patch(`${base}/api/config`, {
      headers: { "x-csrf-token": me.csrf_token },
      data: { retention_days: 7 },
    });
    assert.equal(refused.status(), 403, await refused.text());

    // The audit, read with the same session.
    const answer = await page.request.get(`${base}/api/config/changes`);
    assert.equal(answer.status(), 200, await answer.text());
    const changes = await answer.json();
    assert.equal(changes.length, 1, JSON.stringify(changes));
    const [change] = changes;
    assert.ok(change.changed_by.startsWith("developer ("), change.changed_by);
    assert.equal(change.after.thresholds.per_stage_seconds.pricing, 1800, JSON.stringify(change));
    const before = change.before.thresholds;
    assert.equal(before.per_stage_seconds.pricing ?? before.default_seconds, 900, JSON.stringify(change));
  });
  await context.close();
});

test("the admin logs in, acknowledges an incident and erases an order's trace data after confirming", async () => {
  const { context, page } = await logIn("admin");
  await keepFailure(page, "admin", async () => {
    await view(page, "Configuration");
    await page.locator("#config-note", { hasText: "You may change all of this." }).waitFor();
    assert.ok(await page.locator("#retention").isVisible(), "the retention is the admin's");
    assert.equal(await page.locator("#retention-days").inputValue(), "30");

    // Acknowledged: the row says by whom, and the button is gone (closing is still offered).
    await view(page, "Floor");
    // An admin may repair what the systems disagree on, as a developer may.
    await page.locator("#reconciliation").getByRole("button", { name: /^Repair order / }).first().waitFor();
    const incident = alertRow(page);
    await incident.waitFor();
    await Promise.all([
      page.waitForResponse((r) => r.url().endsWith("/acknowledge") && r.status() === 200),
      incident.getByRole("button", { name: "Acknowledge" }).click(),
    ]);
    await alertRow(page).locator("td", { hasText: /→ acknowledged by admin / }).waitFor();
    assert.equal(await alertRow(page).getByRole("button", { name: "Acknowledge" }).count(), 0);
    assert.equal(await alertRow(page).getByRole("button", { name: "Close" }).count(), 1);
    const incidents = await (await page.request.get(`${base}/api/incidents`)).json();
    const acknowledged = incidents.find((i) => i.fingerprint === "browser-test");
    assert.ok(acknowledged.acknowledged_by.startsWith("admin ("), JSON.stringify(acknowledged));
    assert.equal(acknowledged.resolved_at, null, "still open");
    await page.screenshot({ path: join(shots, "order-watch-admin.png"), fullPage: true });

    // Erasing asks first; cancelling keeps everything.
    await showJourney(page, erased);
    await page.getByRole("button", { name: "Delete trace data…" }).click();
    await page.locator("#journey", { hasText: "This cannot be undone." }).waitFor();
    await page.getByRole("button", { name: "Cancel" }).click();
    assert.equal((await page.request.get(`${base}/api/orders/${erased}/journey`)).status(), 200);
    await page.getByRole("button", { name: "Delete trace data…" }).click();
    await Promise.all([
      page.waitForResponse((r) => r.url() === `${base}/api/orders/${erased}` && r.request().method() === "DELETE" && r.status() === 200),
      page.getByRole("button", { name: "Delete for good" }).click(),
    ]);
    await page.locator("#journey", { hasText: `Trace data of order ${erased} erased: 2 spans` }).waitFor();
    assert.equal((await page.request.get(`${base}/api/orders/${erased}/journey`)).status(), 404);
    const erasures = await (await page.request.get(`${base}/api/erasures`)).json();
    assert.equal(erasures.length, 1, JSON.stringify(erasures));
    assert.ok(erasures[0].erased_by.startsWith("admin ("), JSON.stringify(erasures));
    // The other order is untouched.
    assert.equal((await page.request.get(`${base}/api/orders/${order}/journey`)).status(), 200);
  });
  await context.close();
});

test("support finds an order by its external id, reads the stories of a priced and a rejected order, unfolds a trace and follows a link between traces", async () => {
  await sendPriced();
  await sendRejected();
  await sendBusy();
  const { context, page } = await logIn("support");
  await keepFailure(page, "desk", async () => {
    // Found by its external id, typed in lower case, from the keyboard: the one order opens.
    await find(page, pricedExternal.toLowerCase());
    await page.locator("#order-title", { hasText: `Order ${priced}` }).waitFor();
    assert.equal(new URL(page.url()).hash, `#/order/${priced}`);
    await page.locator("#timeline li").nth(4).waitFor();
    assert.deepEqual(await timeline(page), [
      ["created", "shop-api"], ["submitted", "shop-api"], ["registered", "crm-api"], ["pricing", "mes-api"], ["priced", "mes-api"],
    ]);
    assert.equal(await page.locator("#headline").textContent(), "Waiting for customer confirmation for 2 d 4 h of 7 d.");
    const now = page.locator('#timeline li[aria-current="step"]');
    assert.match(await now.textContent(), /customer confirmation: 2 d 4 h of 7 d so far/);
    assert.match(await page.locator("#order-ids").textContent(), new RegExp(`external id ${pricedExternal}.*partner acme-jewels`));
    assert.equal(await page.locator("#explanations .explanation").count(), 0, "nothing wrong");
    // The technical journey second: the status checks folded, each trace linked to Jaeger.
    await page.locator("#traces .entry.reads", { hasText: "5 status checks by shop-api" }).waitFor();
    const jaegerLink = await page.locator("#traces a.jaeger").first().getAttribute("href");
    assert.ok(jaegerLink.startsWith(`${jaeger}/trace/`), jaegerLink);
    await page.screenshot({ path: join(shots, "order-watch-priced.png"), fullPage: true });

    // A typo gets "did you mean".
    const last = pricedExternal.slice(-2);
    const typo = last[0] !== last[1]
      ? pricedExternal.slice(0, -2) + last[1] + last[0]
      : pricedExternal.slice(0, -1) + ((Number(last[1]) + 1) % 10);
    await find(page, typo);
    await page.locator("#search-hint", { hasText: `No id is “${typo}”. Did you mean one of these?` }).waitFor();
    const suggestion = page.locator(`#search-results tr[data-order="${priced}"]`);
    await suggestion.waitFor();
    await page.screenshot({ path: join(shots, "order-watch-search.png"), fullPage: true });
    await suggestion.getByRole("link").click();
    await page.locator("#order-title", { hasText: `Order ${priced}` }).waitFor();

    // A rejected order says why, in words, with the code for developers, and shows the span.
    await openOrder(page, rejected);
    assert.match(await page.locator("#headline").textContent(), /^Rejected 1 h \d+ min ago\.$/);
    const why = page.locator("#explanations .explanation.rejected");
    assert.equal(await why.locator("h3").textContent(), "Rejected");
    assert.match(await why.locator(".say").textContent(), /^The 3D model is not a closed solid: its surface has holes/);
    assert.equal(await why.locator(".dev code").textContent(), "stl_not_closed");
    await why.getByRole("button", { name: "show the span" }).click();
    const culprit = page.locator("#traces .span-row.highlight");
    await culprit.waitFor();
    assert.match(await culprit.textContent(), /order rejected/);
    assert.deepEqual((await timeline(page)).map(([status]) => status), ["created", "submitted", "registered", "pricing", "rejected"]);
    await page.screenshot({ path: join(shots, "order-watch-rejected.png"), fullPage: true });

    // 500 spans: the page measures its rendering, folded and all of it unfolded. The target
    // (200 ms) is the benchmark's (docs/benchmarks.md, from the line printed below); here only
    // ten times that fails, a regression rather than a busy machine.
    await openOrder(page, busy);
    const render = await measured(page, "journey-render");
    assert.ok(render !== undefined && render < SLOW_RENDER_MS, `the 500-span journey rendered in ${render} ms`);
    const work = page.locator('#traces button.toggle[data-role="trace"]');
    assert.equal(await work.count(), 2, "the order's first trace and the customer's confirmation");

    // Unfold the first trace from the keyboard; a span's attributes on demand.
    await work.first().focus();
    await page.keyboard.press("Enter");
    assert.equal(await work.first().getAttribute("aria-expanded"), "true");
    const pricedRow = page.locator("#traces .span-row", { hasText: "order priced" });
    await pricedRow.getByRole("button", { name: "details of mes-api order priced" }).click();
    await page.locator("#traces .details table", { hasText: "order.status.to" }).first().waitFor();
    const folds = page.locator('#traces button.toggle[data-role="fold"]', { hasText: "database statements" });
    assert.ok((await folds.count()) > 0, "database statements folded");
    assert.equal(await folds.first().getAttribute("aria-expanded"), "false");

    // Follow the link from the confirmation's trace back to the order's first: the price it
    // accepted.
    const hop = page.locator("#traces .trace-links button.follow", { hasText: "mes-api · order priced" });
    await work.nth(1).click();
    await hop.click();
    const target = page.locator("#traces .span-row.highlight");
    await target.waitFor();
    assert.match(await target.textContent(), /order priced/);
    assert.equal(await page.evaluate(() => document.activeElement.classList.contains("span-row")), true, "the span has the focus");
    // And forward again.
    await page.locator("#traces .trace-links button.follow", { hasText: "POST /api/orders/{order_id}/confirm" }).click();
    await page.locator("#traces .span-row.highlight", { hasText: "POST /api/orders/{order_id}/confirm" }).waitFor();
    await page.screenshot({ path: join(shots, "order-watch-trace.png") });

    await page.getByRole("button", { name: "Expand all" }).click();
    assert.equal(await page.locator("#traces .span-row").count(), 500);
    const expand = await measured(page, "journey-expand-all");
    assert.ok(expand !== undefined && expand < SLOW_RENDER_MS, `all 500 spans unfolded in ${expand} ms`);
    const answer = await page.evaluate((path) => {
      const entry = performance.getEntriesByType("resource").filter((e) => e.name.endsWith(path)).at(-1);
      return entry && { ms: entry.duration, bytes: entry.encodedBodySize };
    }, `/api/orders/${busy}/journey`);
    console.log(`500-span journey: rendered in ${render.toFixed(1)} ms, unfolded in ${expand.toFixed(1)} ms; ` +
      `its answer (${Math.round(answer.bytes / 1024)} KiB) arrived in ${answer.ms.toFixed(0)} ms`);
  });
  await context.close();
});

test("the floor shows orders in flight per stage and the SLO figures, a stuck order appears on it live, and its story says why", async () => {
  const { context, page } = await logIn("support");
  await keepFailure(page, "floor", async () => {
    await page.locator("#live.on").waitFor();
    const waiting = page.locator('#stages tr[data-stage="customer_confirmation"]');
    await until("the floor counts the priced order", 15, async () => Number(await waiting.locator("td").nth(2).textContent()) >= 1);
    assert.match(await waiting.textContent(), /waiting for customer confirmation.*2 d 4 h of 7 d/);

    // No reload: the order goes stuck and the floor shows it.
    await sendStuck();
    const row = page.locator(`#stuck tr[data-order="${stuck}"]`);
    await row.waitFor({ timeout: 20_000 });
    assert.match(await row.textContent(), /pricing.*not confirmed/);
    await page.locator('#stages tr[data-stage="pricing"] .badge.stuck').waitFor({ timeout: 15_000 });
    await page.locator("#incidents tr", { hasText: "no progress in pricing" }).waitFor();
    const delivery = page.locator("#slo .card", { hasText: "Status-event delivery" });
    await until("the delivery figure counts the stuck order's events", 15, async () => /of \d+ events?/.test(await delivery.textContent()));
    assert.match(await page.locator("#slo").textContent(), /Price calculation · p95, last hour/);
    await page.screenshot({ path: join(shots, "order-watch-floor.png"), fullPage: true });

    await row.getByRole("link").click();
    await page.locator("#order-title", { hasText: `Order ${stuck}` }).waitFor();
    await page.locator("#explanations .explanation.stuck").waitFor();
    // The developer made pricing's threshold 30 minutes.
    assert.match(await page.locator("#headline").textContent(),
      /^Waiting for the price calculation for 4\d min( \d+ s)? of 30 min\. Stuck: no progress for 4\d min( \d+ s)?\.$/);
    const why = page.locator("#explanations .explanation.stuck");
    assert.match(await why.locator(".say").textContent(),
      /^The order is waiting for the price calculation and has not moved for 4\d min( \d+ s)?; this normally takes under 30 min\. The team has been alerted\. An attempt to calculate the price failed for a technical reason on our side; it is retried automatically\.$/);
    assert.equal(await why.locator(".dev code").textContent(), "timeout");
    assert.equal(await page.locator('#timeline li[aria-current="step"].over').count(), 1, "over its threshold");
    await page.screenshot({ path: join(shots, "order-watch-stuck.png"), fullPage: true });
  });
  await context.close();
});

test("reconciliation: the floor lists what the systems disagree on and what each says, an order's story says so, and developers repair", async () => {
  {
    const { context, page } = await logIn("support");
    await keepFailure(page, "reconciliation-support", async () => {
      const panel = page.locator("#reconciliation");
      // Longest first; each past the 5 minutes.
      await until("the four disagreements listed", 15, async () => (await panel.locator("#disagreements tr[data-order]").count()) === 4);
      assert.deepEqual(await panel.locator("#disagreements tr[data-order]").evaluateAll((rows) => rows.map((r) => r.dataset.order)),
        [disagreeing.watchLags, disagreeing.ahead, disagreeing.lagging, disagreeing.missing]);
      const figures = panel.locator("#reconciliation-figures");
      assert.match(await figures.textContent(), /^Systems agree now78\.9 %15 of 19 orders tracked \(those whose status changed lately\)Systems agreed over 24 h\d+(\.\d+)? %.*Disagreeing for over 5 min4orders, listed below$/);

      // What each system says, and how they differ in words.
      const lagging = disagreementRow(page, disagreeing.lagging);
      assert.match(await lagging.locator("td").nth(1).textContent(), /^[89] min( \d+ s)?$/);
      assert.match(await lagging.locator('[data-holder="shop-api"]').textContent(), /^pricedsince /);
      assert.match(await lagging.locator('[data-holder="crm-api"]').textContent(), /^pricinglagging · since /);
      assert.match(await lagging.locator('[data-holder="mes-api"]').textContent(), /^pricedits step · since /);
      assert.match(await lagging.locator('[data-holder="order-watch"]').textContent(), /^pricedsince /);
      assert.deepEqual(await differs(lagging), ["MES, whose step it is, says “priced”.", "CRM has not heard of the price yet (lagging)"]);
      assert.deepEqual(await differs(disagreementRow(page, disagreeing.ahead)),
        ["MES, whose step it is, says “priced”.", "order-watch is ahead: Shop, whose step “confirmed” is, does not say so (ahead)"]);
      assert.deepEqual(await differs(disagreementRow(page, disagreeing.watchLags)),
        ["Shop, whose step it is, says “confirmed”.", "order-watch has not heard of the customer's acceptance of the price yet (lagging)"]);
      const missing = disagreementRow(page, disagreeing.missing);
      assert.deepEqual(await differs(missing), ["Shop, whose step it is, says “submitted”.", "CRM does not know the order at all (missing)"]);
      assert.equal(await missing.locator('[data-holder="crm-api"]').textContent(), "does not know itmissing");
      assert.equal(await missing.locator('[data-holder="mes-api"]').textContent(), "does not know it", "MES is not told before registration");

      // Support repairs nothing: no button, and the API agrees.
      assert.equal(await panel.getByRole("button").count(), 0);
      assert.equal(await panel.locator("#disagreements-head th").count(), 7);
      const me = await (await page.request.get(`${base}/api/me`)).json();
      const refused = await page.request.post(`${base}/api/reconciliation/${disagreeing.lagging}/repair`, { headers: { "x-csrf-token": me.csrf_token } });
      assert.equal(refused.status(), 403, await refused.text());

      // The order's link, from the keyboard, opens its story, which says so near the top.
      await lagging.getByRole("link").focus();
      await page.keyboard.press("Enter");
      await page.locator("#order-title", { hasText: `Order ${disagreeing.lagging}` }).waitFor();
      const note = page.locator("#order-reconciliation .explanation.disagreement");
      await note.waitFor();
      assert.equal(await note.locator("h3").textContent(), "The systems disagree about this order");
      assert.match(await note.locator(".say").textContent(),
        /^For [89] min( \d+ s)? \(since .+\) Shop, CRM, MES and order-watch have not agreed on where this order is\. MES, whose step it is, says “priced”\.$/);
      const said = await note.locator("li").allTextContents();
      assert.equal(said.length, 4, JSON.stringify(said));
      assert.match(said[0], /^Shop: “priced” since [^—]+$/);
      assert.match(said[1], /^CRM: “pricing” since .+ — has not heard of the price yet \(lagging\)$/);
      assert.match(said[2], /^MES: “priced” since .+ \(its step\)$/);
      assert.match(said[3], /^order-watch: “priced” since [^—]+$/);
      assert.equal(await note.locator(".customer").textContent(), "The customer sees what Shop says: “priced”.");
      assert.equal(await note.getByRole("button").count(), 0, "support repairs nothing");

      // An order whose latest change is still on its way: said, but not as a disagreement, and
      // not on the floor.
      await sendCatchingUp();
      await until("reconciliation compares the order changed lately", 15, async () => {
        const answer = await (await page.request.get(`${base}/api/reconciliation?all=true`)).json();
        return answer.disagreements.some((d) => d.order_id === disagreeing.catchingUp && !d.listed_at);
      });
      await openOrder(page, disagreeing.catchingUp);
      const catching = page.locator("#order-reconciliation .explanation.catching-up");
      assert.equal(await catching.locator("h3").textContent(), "The systems are catching up with this order");
      assert.match(await catching.locator(".say").textContent(),
        /^Its latest change has not reached every system yet \(for [^;]+; it is listed on the floor after 5 min\)\. MES, whose step it is, says “priced”\.$/);
      assert.match((await catching.locator("li").allTextContents())[0], /^Shop: “pricing” since .+ — has not heard of the price yet \(lagging\)$/);
      assert.equal(await catching.locator(".customer").textContent(), "The customer sees what Shop says: “pricing”.");
      // One they agree on: nothing said.
      await openOrder(page, agreeing[0]);
      assert.equal(await page.locator("#order-reconciliation > *").count(), 0);
      await view(page, "Floor");
      await disagreementRow(page, disagreeing.lagging).waitFor();
      assert.equal(await disagreementRow(page, disagreeing.catchingUp).count(), 0, "under the threshold");
    });
    await context.close();
  }

  const { context, page } = await logIn("developer");
  await keepFailure(page, "reconciliation-developer", async () => {
    const panel = page.locator("#reconciliation");
    await disagreementRow(page, disagreeing.lagging).waitFor();
    assert.equal(await panel.locator("#disagreements-head th").last().textContent(), "repair");
    assert.equal(await panel.getByRole("button", { name: /^Repair order / }).count(), 4);
    await panel.screenshot({ path: join(shots, "order-watch-reconciliation.png") });

    // Nothing republishing can mend: refused with the reason, and the focus stays.
    const ahead = disagreementRow(page, disagreeing.ahead);
    await ahead.getByRole("button", { name: "Repair" }).focus();
    const [refused] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${base}/api/reconciliation/${disagreeing.ahead}/repair`),
      page.keyboard.press("Enter"),
    ]);
    assert.equal(refused.status(), 409, await refused.text());
    await panel.locator("#reconciliation-error", {
      hasText: `Repair of order ${disagreeing.ahead} not done: republishing cannot mend this, a person decides: ` +
        "the owner mes-api holds priced; order-watch is ahead of the owner (holds confirmed)",
    }).waitFor();
    assert.equal(await ahead.count(), 1, "still listed");
    assert.equal(await page.evaluate(() => document.activeElement.dataset.key), `repair:${disagreeing.ahead}`);

    // CRM lags: MES sends its event again, CRM catches up, and the row goes at the next round.
    const lagging = disagreementRow(page, disagreeing.lagging);
    const [asked] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${base}/api/reconciliation/${disagreeing.lagging}/repair`),
      lagging.getByRole("button", { name: "Repair" }).click(),
    ]);
    assert.equal(asked.status(), 200, await asked.text());
    await panel.locator("#reconciliation-status", {
      hasText: `Repair of order ${disagreeing.lagging} asked: mes-api sent 1 message again (order.status_changed.priced). Recorded under your name`,
    }).waitFor();
    assert.deepEqual(records.republished, [["mes", disagreeing.lagging]]);
    await lagging.waitFor({ state: "detached", timeout: 20_000 });
    assert.match(await panel.locator("#reconciliation-figures .card", { hasText: "Disagreeing for over 5 min" }).textContent(), /5 min3orders/);

    // From an order's story: order-watch lost the spans of the customer's confirmation, so it
    // takes Shop's record (with a telemetry gap); nobody is asked to republish.
    await disagreementRow(page, disagreeing.watchLags).getByRole("link").click();
    const note = page.locator("#order-reconciliation .explanation.disagreement");
    await note.waitFor();
    await note.getByRole("button", { name: "Repair" }).click();
    await note.locator(".repair-result.saved", { hasText: `Repair of order ${disagreeing.watchLags} asked: order-watch took shop-api's record` }).waitFor();
    assert.deepEqual(records.republished, [["mes", disagreeing.lagging]]);
    await view(page, "Floor");
    await disagreementRow(page, disagreeing.ahead).waitFor();
    await disagreementRow(page, disagreeing.watchLags).waitFor({ state: "detached", timeout: 20_000 });

    // All audited under the developer's name, newest first.
    const repairs = await (await page.request.get(`${base}/api/reconciliation/repairs`)).json();
    assert.deepEqual(repairs.map((r) => [r.order_id, r.outcome]),
      [[disagreeing.watchLags, "republished"], [disagreeing.lagging, "republished"], [disagreeing.ahead, "not_repairable"]]);
    assert.ok(repairs.every((r) => r.requested_by.startsWith("developer (")), JSON.stringify(repairs));
  });
  await context.close();
});
