-- Transactional outbox and idempotent inbox, in the `messaging` schema of each service's database.

-- A message waiting to be published. Written in the same transaction as the business change it
-- announces; the relay publishes it with publisher confirms and sets published_at.
CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,
    message_id    UUID        NOT NULL UNIQUE,
    routing_key   TEXT        NOT NULL,
    kind          TEXT        NOT NULL,
    order_id      UUID        NOT NULL,
    body          BYTEA       NOT NULL,
    -- traceparent/tracestate/baggage of the transaction that wrote the row
    trace         JSONB       NOT NULL DEFAULT '{}',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ,
    attempts      INTEGER     NOT NULL DEFAULT 0,
    last_error    TEXT
);

CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- A message a consumer has applied. The row commits with the handler's effects, so a redelivered
-- message finds it and is skipped.
CREATE TABLE inbox (
    consumer      TEXT        NOT NULL,
    message_id    UUID        NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

CREATE INDEX inbox_received_at ON inbox (received_at);
