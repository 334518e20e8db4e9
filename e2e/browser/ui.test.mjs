// order-watch's UI in a real browser (Debian's Chromium, driven by playwright-core), logged in
// through the identity provider: support sees a journey and reads the stuck thresholds with no
// control to change anything; the developer changes a threshold (written as a duration), audited
// under their name, and sees none of the admin's controls; the admin acknowledges an incident
// and erases an order's trace data after a confirmation.
//
// It starts order-watch itself (the binary `cargo build` made) on free ports with a database of
// its own, and uses the identity provider scripts/test starts (Keycloak with the realm in
// deploy/keycloak/). Run it with scripts/test, or by hand:
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
const databaseName = `test_browser_${uuidv7().replaceAll("-", "")}`;
let databaseCreated = false;
let watch; // the order-watch process
let logPath;
let base; // where order-watch's UI and API answer
let otlp; // its OTLP/HTTP receiver
let browser;

function watchLog() {
  try {
    return readFileSync(logPath, "utf8").split("\n").slice(-30).join("\n");
  } catch {
    return "(no log)";
  }
}

before(async () => {
  mkdirSync(runDir, { recursive: true });
  for (const name of ["support", "developer", "admin"]) rmSync(join(runDir, `failed-${name}.png`), { force: true });
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
});

// One order's first steps, as the services export them (OTLP/JSON): the shop creates it, the
// CRM registers it, in one trace.
async function sendJourney(order) {
  const trace = randomBytes(16).toString("hex");
  const first = randomBytes(8).toString("hex");
  const start = BigInt(Date.now()) * 1_000_000n;
  const ms = 1_000_000n;
  const attribute = (key, value) => ({ key, value: { stringValue: value } });
  const resource = (service, spans) => ({
    resource: { attributes: [attribute("service.name", service)] },
    scopeSpans: [{ scope: { name: "browser-test" }, spans }],
  });
  const span = (id, parent, name, kind, from, to, status) => ({
    traceId: trace,
    spanId: id,
    ...(parent ? { parentSpanId: parent } : {}),
    name,
    kind,
    startTimeUnixNano: String(start + from * ms),
    endTimeUnixNano: String(start + to * ms),
    attributes: [
      attribute("order.id", order),
      attribute("order.status.to", status),
      attribute("order.activity", "progress"),
    ],
    status: {},
  });
  const body = {
    resourceSpans: [
      resource("shop-api", [span(first, null, "POST /api/orders", 2, 0n, 42n, "created")]),
      resource("crm-api", [span(randomBytes(8).toString("hex"), first, "process hallmark.orders", 5, 60n, 85n, "registered")]),
    ],
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

// A fresh browser (no cookies: a person who has not logged in), at order-watch's page, sent to
// the identity provider's login form and back.
async function logIn(user) {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 900 },
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

async function showJourney(page, id = order) {
  await page.locator("#order").fill(id);
  await page.getByRole("button", { name: "Show journey" }).click();
  const journey = page.locator("#journey");
  await journey.locator(".facts").waitFor();
  assert.equal(await journey.locator("h2").textContent(), `Journey of ${id}`);
  const text = await journey.textContent();
  assert.ok(text.includes("registered"), `the journey shows the order registered: ${text}`);
  assert.ok(!(await journey.locator(".error").count()), `the journey shows no error: ${text}`);
  const services = await journey.locator(".row > span:first-child").allTextContents();
  assert.deepEqual(services, ["shop-api", "crm-api"], "both spans, in order");
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

// What only an admin is offered: incident actions, the retention, erasing an order's trace data.
async function adminControls(page) {
  return {
    incidentButtons: await page.locator("#incidents button").count(),
    retention: await page.locator("#retention").isVisible(),
    erase: await page.getByRole("button", { name: "Delete trace data…" }).count(),
  };
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

    await page.locator("#config-note", { hasText: "Read only: changing thresholds needs the developer role." }).waitFor();
    const shown = await thresholds(page);
    assert.equal(shown.pricing, "15m", JSON.stringify(shown));
    assert.equal(shown.customer_confirmation, "7d", JSON.stringify(shown));
    assert.equal(await page.locator("#config input:visible, #config textarea:visible").count(), 0, "nothing can be edited");
    assert.equal(await page.locator("#config button:visible").count(), 0, "no Save button");
    assert.ok(await page.locator("#masking").isHidden(), "no masking rules or webhook");
    await alertRow(page).waitFor();
    assert.deepEqual(await adminControls(page), { incidentButtons: 0, retention: false, erase: 0 });

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
    await page.locator("#config-note", { hasText: "You may change thresholds, masking rules and the incident webhook" }).waitFor();
    const pricing = page.locator("input[data-stage=pricing]");
    const save = page.locator("#thresholds tr", { has: pricing }).getByRole("button", { name: "Save" });
    assert.equal(await pricing.inputValue(), "15m");

    // Something that is no duration is said so, and nothing is sent.
    await pricing.fill("soon");
    await save.click();
    await page.locator("#config-error", { hasText: "\"soon\" is not a duration: write it like 90s, 15m, 2h or 7d" }).waitFor();

    await pricing.fill("30m");
    const [saved] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${base}/api/config` && r.request().method() === "PATCH"),
      save.click(),
    ]);
    assert.equal(saved.status(), 200, await saved.text());
    await page.locator("#config-status", { hasText: "Saved: pricing is stuck after 30m." }).waitFor();
    assert.equal(await page.locator("#config-error").textContent(), "");

    // The server's own refusal, in its words: a pattern that is no regular expression.
    await page.locator("#mask-patterns").fill("(unclosed");
    await page.getByRole("button", { name: "Save masking rules" }).click();
    await page.locator("#config-error", { hasText: "masking.mask_patterns[0]: `(unclosed` is not a regular expression" }).waitFor();

    // Stored, not just shown: a reload reads it back, and the history says who changed what.
    await page.reload();
    await page.locator("#who", { hasText: "developer · developer" }).waitFor();
    await until("the reloaded page shows 30m for pricing", 10, async () => (await thresholds(page)).pricing === "30m");
    await page.locator("#history tr", { hasText: "pricing 15m → 30m" }).waitFor();
    assert.equal(await page.locator("#history tr").count(), 1, "the refused change is no change");
    assert.equal(await page.locator("#history tr td").nth(1).textContent(), "developer");
    await showJourney(page);

    // None of the admin's controls, and the API agrees.
    await alertRow(page).waitFor();
    assert.deepEqual(await adminControls(page), { incidentButtons: 0, retention: false, erase: 0 });
    const me = await (await page.request.get(`${base}/api/me`)).json();
    const refused = await page.request.patch(`${base}/api/config`, {
      headers: { "x-csrf-token": me.csrf_token },
      data: { retention_days: 7 },
    });
    assert.equal(refused.status(), 403, await refused.text());
    await page.screenshot({ path: join(shots, "order-watch-developer.png"), fullPage: true });

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
    await page.locator("#config-note", { hasText: "You may change all of this." }).waitFor();
    assert.ok(await page.locator("#retention").isVisible(), "the retention is the admin's");
    assert.equal(await page.locator("#retention-days").inputValue(), "30");

    // Acknowledged: the row says by whom, and the button is gone (closing is still offered).
    const incident = alertRow(page);
    await incident.waitFor();
    await Promise.all([
      page.waitForResponse((r) => r.url().endsWith("/acknowledge") && r.status() === 200),
      incident.getByRole("button", { name: "Acknowledge" }).click(),
    ]);
    await alertRow(page).locator("td", { hasText: /^by admin, / }).waitFor();
    assert.equal(await alertRow(page).getByRole("button", { name: "Acknowledge" }).count(), 0);
    assert.equal(await alertRow(page).getByRole("button", { name: "Close" }).count(), 1);
    const incidents = await (await page.request.get(`${base}/api/incidents`)).json();
    const acknowledged = incidents.find((i) => i.fingerprint === "browser-test");
    assert.ok(acknowledged.acknowledged_by.startsWith("admin ("), JSON.stringify(acknowledged));
    assert.equal(acknowledged.resolved_at, null, "still open");

    await showJourney(page);
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
