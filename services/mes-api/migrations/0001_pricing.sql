-- MES's own data: what it needs to price and make each order. The status, its history and the
-- price live in the `orderbook` schema.

CREATE TABLE orders (
    id                UUID        PRIMARY KEY,
    material          TEXT        NOT NULL,
    model_key         TEXT        NOT NULL,
    model_size_bytes  BIGINT      NOT NULL,
    model_sha256      TEXT        NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The price-calculation queue. A worker claims a job with FOR UPDATE SKIP LOCKED and holds a
-- lease; a job whose lease ran out (its worker died) is claimed again.
CREATE TABLE calc_jobs (
    order_id      UUID        PRIMARY KEY REFERENCES orders (id),
    state         TEXT        NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    attempts      INTEGER     NOT NULL DEFAULT 0,
    -- a retried job waits until then
    not_before    TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until   TIMESTAMPTZ,
    -- trace context of the message that queued the job
    trace         JSONB       NOT NULL DEFAULT '{}',
    last_error    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX calc_jobs_due ON calc_jobs (not_before) WHERE state IN ('pending', 'running');
