-- Reconciliation (issue 18): whether Shop, CRM, MES and order-watch agree on the status of the
-- orders that changed recently, how fast they come to agree, the disagreements that last, and
-- the repairs asked for (docs/order-watch.md, "Reconciliation").

-- Each order changed recently in any system, as the holders answered when it was last compared.
CREATE TABLE reconcile_orders (
    order_id           UUID        PRIMARY KEY,
    -- the latest time any holder recorded its status; an order that agrees leaves the table
    -- once this is older than ORDER_WATCH_RECONCILE_WINDOW
    changed_at         TIMESTAMPTZ NOT NULL,
    -- NULL until the order could be compared (every system answered)
    checked_at         TIMESTAMPTZ,
    -- the status every holder holds; NULL while they disagree
    agreed_on          TEXT,
    -- the owner's status and its owner (service.name); NULL when no owner confirms a status
    reference          TEXT,
    owner              TEXT,
    -- {"shop-api": {"status": "priced", "since": "…"}, "crm-api": null, …}
    views              JSONB       NOT NULL DEFAULT '{}',
    -- [{"system": "crm-api", "kind": "lagging", "holds": "pricing"}, …]
    mismatches         JSONB       NOT NULL DEFAULT '[]',
    -- a disagreement: since the change that began it, first seen, listed (past the threshold)
    disagreeing_since  TIMESTAMPTZ,
    detected_at        TIMESTAMPTZ,
    listed_at          TIMESTAMPTZ,
    -- the mismatches this disagreement counted already: ["crm-api/lagging", …]
    counted            JSONB       NOT NULL DEFAULT '[]',
    -- when to compare it again without a change (a disagreement, or an order not yet compared)
    recheck_at         TIMESTAMPTZ
);

CREATE INDEX reconcile_orders_changed ON reconcile_orders (changed_at);
CREATE INDEX reconcile_orders_recheck ON reconcile_orders (recheck_at) WHERE recheck_at IS NOT NULL;
CREATE INDEX reconcile_orders_listed ON reconcile_orders (listed_at) WHERE listed_at IS NOT NULL;

-- Where the last round stopped in each system's changes (domain::held::ChangedSince).
CREATE TABLE reconcile_cursors (
    system  TEXT        PRIMARY KEY,
    since   TIMESTAMPTZ NOT NULL,
    after   UUID
);

-- One replica runs a round at a time: the one holding the lease; the next is due at
-- next_round_at, whichever replica takes it.
CREATE TABLE reconcile_lease (
    id             BOOLEAN     PRIMARY KEY DEFAULT true CHECK (id),
    holder         UUID        NOT NULL,
    until          TIMESTAMPTZ NOT NULL,
    next_round_at  TIMESTAMPTZ NOT NULL
);

-- After each round, the orders tracked and how many of them agreed: the last day's rows give
-- the 24-hour accuracy.
CREATE TABLE reconcile_samples (
    id        BIGSERIAL   PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL,
    tracked   BIGINT      NOT NULL,
    agreeing  BIGINT      NOT NULL
);

CREATE INDEX reconcile_samples_at ON reconcile_samples (at);

-- Every repair asked for: who, when, which order, whom it asked and what came of it.
CREATE TABLE reconcile_repairs (
    id            BIGSERIAL   PRIMARY KEY,
    order_id      UUID        NOT NULL,
    requested_at  TIMESTAMPTZ NOT NULL,
    -- the person's name and, in brackets, their subject at the identity provider
    requested_by  TEXT        NOT NULL,
    -- the owner's status and its owner when the repair was asked (NULL: none confirmed)
    reference     TEXT,
    owner         TEXT,
    outcome       TEXT        NOT NULL
        CHECK (outcome IN ('republished', 'failed', 'not_needed', 'not_repairable')),
    -- [{"system": "mes-api", "outcome": "republished", "messages": [...]},
    --  {"system": "order-watch", "outcome": "adopted", ...}, {"system": …, "outcome": "failed", "error": "…"}]
    asked         JSONB       NOT NULL,
    detail        TEXT        NOT NULL
);

CREATE INDEX reconcile_repairs_requested ON reconcile_repairs (requested_at DESC);
CREATE INDEX reconcile_repairs_order ON reconcile_repairs (order_id);

-- An order disagreeing past the threshold opens one incident, closed when the holders agree.
ALTER TABLE incidents DROP CONSTRAINT incidents_kind_check;
ALTER TABLE incidents ADD CONSTRAINT incidents_kind_check
    CHECK (kind IN ('stuck_order', 'alert', 'disagreement'));
CREATE UNIQUE INDEX incidents_one_open_disagreement_per_order ON incidents (order_id)
    WHERE resolved_at IS NULL AND kind = 'disagreement';
