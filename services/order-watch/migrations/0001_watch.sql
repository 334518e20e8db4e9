-- order-watch's state: every span of every order, each order's journey summary and deadline,
-- incidents and the webhook notifications still to deliver.

-- One row per order order-watch has seen a span of.
CREATE TABLE orders (
    order_id      UUID        PRIMARY KEY,
    first_seen    TIMESTAMPTZ NOT NULL,
    -- end of the latest span (capped at receipt time + 1 minute against skewed clocks)
    last_seen     TIMESTAMPTZ NOT NULL,
    -- the owner's latest status, from `order.status.to`; NULL until a transition span arrived
    status        TEXT,
    status_at     TIMESTAMPTZ,
    stage         TEXT        NOT NULL,
    terminal      BOOLEAN     NOT NULL DEFAULT false,
    -- when the order counts as stuck if no span arrives: last_seen + the stage's threshold;
    -- NULL for terminal orders
    deadline      TIMESTAMPTZ,
    -- set when the detector found the deadline passed; cleared by the next span
    stuck_since   TIMESTAMPTZ,
    span_count    BIGINT      NOT NULL DEFAULT 0,
    error_count   BIGINT      NOT NULL DEFAULT 0,
    max_retries   BIGINT      NOT NULL DEFAULT 0,
    dead_letters  BIGINT      NOT NULL DEFAULT 0,
    last_service  TEXT        NOT NULL DEFAULT '',
    last_span     TEXT        NOT NULL DEFAULT '',
    updated_at    TIMESTAMPTZ NOT NULL
);

-- The detector's queue: open orders not yet stuck, by deadline.
CREATE INDEX orders_due ON orders (deadline) WHERE stuck_since IS NULL AND deadline IS NOT NULL;
CREATE INDEX orders_stuck ON orders (stuck_since) WHERE stuck_since IS NOT NULL;
CREATE INDEX orders_last_seen ON orders (last_seen);

-- Every span of every order, from every trace. Re-sent spans are ignored (primary key).
CREATE TABLE spans (
    order_id        UUID        NOT NULL,
    trace_id        BYTEA       NOT NULL,
    span_id         BYTEA       NOT NULL,
    parent_span_id  BYTEA,
    service         TEXT        NOT NULL,
    name            TEXT        NOT NULL,
    kind            SMALLINT    NOT NULL,
    start_time      TIMESTAMPTZ NOT NULL,
    end_time        TIMESTAMPTZ NOT NULL,
    -- 0 unset, 1 ok, 2 error
    status_code     SMALLINT    NOT NULL,
    status_message  TEXT        NOT NULL DEFAULT '',
    attributes      JSONB       NOT NULL,
    -- [{"trace_id": hex, "span_id": hex}]
    links           JSONB       NOT NULL,
    PRIMARY KEY (order_id, trace_id, span_id)
);

CREATE INDEX spans_order_time ON spans (order_id, start_time);

-- Incidents: a stuck order (one open at a time per order) or an alert Alertmanager sent.
CREATE TABLE incidents (
    id           UUID        PRIMARY KEY,
    kind         TEXT        NOT NULL CHECK (kind IN ('stuck_order', 'alert')),
    order_id     UUID,
    -- Alertmanager's fingerprint of the alert
    fingerprint  TEXT,
    stage        TEXT,
    status       TEXT,
    summary      TEXT        NOT NULL,
    labels       JSONB       NOT NULL DEFAULT '{}',
    opened_at    TIMESTAMPTZ NOT NULL,
    resolved_at  TIMESTAMPTZ
);

CREATE UNIQUE INDEX incidents_one_open_per_order ON incidents (order_id)
    WHERE resolved_at IS NULL AND kind = 'stuck_order';
CREATE UNIQUE INDEX incidents_one_open_per_alert ON incidents (fingerprint)
    WHERE resolved_at IS NULL AND kind = 'alert';
CREATE INDEX incidents_opened_at ON incidents (opened_at DESC);

-- Notifications to the configured webhook, written with the incident change and sent with
-- retries by whichever replica claims them.
CREATE TABLE notifications (
    id               BIGSERIAL   PRIMARY KEY,
    payload          JSONB       NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts         INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at     TIMESTAMPTZ,
    last_error       TEXT
);

CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE delivered_at IS NULL;
