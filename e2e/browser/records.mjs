// Stand-in systems of record for the browser test: Shop's, CRM's and MES's status listings and
// republish requests (the contract in crates/domain/src/held.rs), served on one port under
// /shop, /crm and /mes, so that order-watch's reconciler finds orders the systems disagree on and
// a repair has an owner to ask. The same listing served by the real services is tested in e2e
// (e2e/tests/reconciliation.rs); order-watch's component tests use a stand-in like this one
// (services/order-watch/tests/api/helpers.rs).
//
// The stand-ins know only the orders the test gives them. A request by ids about none of those is
// answered 503, as by a system that cannot be asked: the stuck detector's question about the
// test's other orders then stays unanswered, and they are flagged "not confirmed" as when no system
// of record is configured at all.
//
// A republish request makes the other stand-ins that know the order and lag behind take the
// status republished, as their consumers would when the event they missed arrives again.

import { createServer } from "node:http";
import { randomUUID } from "node:crypto";

export const SYSTEMS = ["shop", "crm", "mes"];

// The happy path's order; an end (rejected, cancelled, failed) is never left.
const PATH = ["created", "submitted", "registered", "pricing", "priced", "confirmed", "in_production", "quality_check", "ready", "shipped", "delivered"];
const ENDS = ["rejected", "cancelled", "failed", "delivered"];
const supersedes = (next, current) =>
  !ENDS.includes(current) && (ENDS.includes(next) || PATH.indexOf(next) > PATH.indexOf(current) || (current === "quality_check" && next === "in_production"));

export class StandInRecords {
  constructor() {
    // "system/order id" → { order_id, status, at (ms) }
    this.held = new Map();
    // [system, order id] of each republish request, in order.
    this.republished = [];
  }

  async start() {
    this.server = createServer((request, response) => this.answer(request, response));
    await new Promise((done) => this.server.listen(0, "127.0.0.1", done));
    this.base = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  close() {
    this.server?.closeAllConnections?.();
    return new Promise((done) => (this.server ? this.server.close(done) : done()));
  }

  // The base URL order-watch is given for `system` (ORDER_WATCH_SHOP_URL, …).
  url(system) {
    return `${this.base}/${system}`;
  }

  // Each system holds `order` as `statuses` says ({ shop: ["priced", ms], crm: null, … }; a
  // system left out or null does not know it).
  hold(order, statuses) {
    for (const system of SYSTEMS) {
      const held = statuses[system];
      if (held) this.held.set(`${system}/${order}`, { order_id: order, status: held[0], at: held[1] });
      else this.held.delete(`${system}/${order}`);
    }
  }

  knows(order) {
    return SYSTEMS.some((system) => this.held.has(`${system}/${order}`));
  }

  answer(request, response) {
    const url = new URL(request.url, this.base);
    const reply = (status, body) => {
      response.writeHead(status, { "content-type": "application/json" });
      response.end(JSON.stringify(body));
    };
    const listing = url.pathname.match(/^\/(shop|crm|mes)\/api\/orders\/statuses$/);
    if (listing && request.method === "GET") return reply(...this.listing(listing[1], url.searchParams));
    const republish = url.pathname.match(/^\/(shop|crm|mes)\/api\/orders\/([0-9a-f-]{36})\/republish$/);
    if (republish && request.method === "POST") return reply(...this.republish(republish[1], republish[2]));
    reply(404, { error: { code: "not_found", message: `the stand-in does not serve ${request.method} ${url.pathname}` } });
  }

  // GET /api/orders/statuses: by ids, or changed since (oldest change first, keyset-paged by
  // (time, order id)).
  listing(system, query) {
    const view = ({ order_id, status, at }) => ({ order_id, status, updated_at: new Date(at).toISOString() });
    if (query.has("changed_since")) {
      const since = Date.parse(query.get("changed_since"));
      const after = query.get("after");
      const limit = Number(query.get("limit") || 1000);
      const changed = [...this.held.entries()]
        .filter(([key, held]) => key.startsWith(`${system}/`) && (held.at > since || (held.at === since && (!after || held.order_id > after))))
        .map(([, held]) => held)
        .sort((a, b) => a.at - b.at || (a.order_id < b.order_id ? -1 : 1));
      const page = changed.slice(0, limit);
      const last = page.at(-1);
      const next = changed.length > limit ? { since: new Date(last.at).toISOString(), after: last.order_id } : undefined;
      return [200, { orders: page.map(view), ...(next ? { next } : {}) }];
    }
    const ids = (query.get("ids") || "").split(",").filter(Boolean);
    if (!ids.some((id) => this.knows(id))) {
      return [503, { error: { code: "unavailable", message: "the stand-in answers only about the test's reconciliation orders" } }];
    }
    const orders = ids.map((id) => this.held.get(`${system}/${id}`)).filter(Boolean).map(view);
    return [200, { orders }];
  }

  // POST /api/orders/{id}/republish: the system's latest status event sent again.
  republish(system, order) {
    this.republished.push([system, order]);
    const held = this.held.get(`${system}/${order}`);
    if (!held) return [404, { error: { code: "order_not_found", message: `${system} does not know order ${order}` } }];
    const now = Date.now();
    for (const other of SYSTEMS) {
      const theirs = this.held.get(`${other}/${order}`);
      if (other !== system && theirs && supersedes(held.status, theirs.status)) {
        this.held.set(`${other}/${order}`, { ...theirs, status: held.status, at: now });
      }
    }
    return [200, {
      order_id: order,
      messages: [{
        message_id: randomUUID(),
        type: "order.status_changed",
        routing_key: `order.status_changed.${held.status}`,
        published_at: new Date(held.at).toISOString(),
      }],
    }];
  }
}
