-- The status machine as this service sees it, in the `orderbook` schema of the service's database.

-- One row per order the service knows: its current status and the trace context of the last
-- work done on it here (later work started by a person links to that context).
CREATE TABLE orders (
    order_id         UUID        PRIMARY KEY,
    status           TEXT        NOT NULL,
    -- the Idempotency-Key the order was created with, for order.idempotency_key on spans
    idempotency_key  TEXT,
    trace            JSONB       NOT NULL DEFAULT '{}',
    -- the price that came with `priced` (domain::pricing::Quote as JSON)
    price            JSONB,
    -- the reason that came with `rejected`, `failed` or `cancelled` ({code, message})
    reason           JSONB,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX orders_status ON orders (status);

-- Every status the order took, as seen here, with who made the move.
CREATE TABLE history (
    id            BIGSERIAL   PRIMARY KEY,
    order_id      UUID        NOT NULL REFERENCES orders (order_id),
    from_status   TEXT,
    to_status     TEXT        NOT NULL,
    -- service.name of the owner that made the transition
    source        TEXT        NOT NULL,
    reason_code   TEXT,
    reason        TEXT,
    occurred_at   TIMESTAMPTZ NOT NULL,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX history_order ON history (order_id, occurred_at);
