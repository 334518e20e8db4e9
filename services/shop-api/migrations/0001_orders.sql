-- Shop's own order data. The status, its history, the price and a rejection reason live in the
-- `orderbook` schema.

CREATE TABLE customers (
    id          UUID        PRIMARY KEY,
    -- normalized (trimmed, lowercase); the natural key of a customer
    email       TEXT        NOT NULL UNIQUE,
    name        TEXT        NOT NULL,
    phone       TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id                UUID        PRIMARY KEY,
    -- the Idempotency-Key (or the order id when the client sent none), unique per partner
    idempotency_key   TEXT        NOT NULL,
    -- '' for the web shop, so the uniqueness below covers it
    idempotency_scope TEXT        NOT NULL,
    -- SHA-256 of the request (order JSON and model bytes), to tell a replay from a reuse
    request_hash      TEXT        NOT NULL,
    customer_id       UUID        NOT NULL REFERENCES customers (id),
    source            TEXT        NOT NULL,
    partner_id        TEXT,
    external_id       TEXT,
    material          TEXT        NOT NULL,
    size              TEXT,
    comment           TEXT,
    model_key         TEXT        NOT NULL,
    model_file_name   TEXT        NOT NULL,
    model_size_bytes  BIGINT      NOT NULL,
    model_sha256      TEXT        NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT orders_idempotency UNIQUE (idempotency_scope, idempotency_key)
);

CREATE INDEX orders_customer ON orders (customer_id);
