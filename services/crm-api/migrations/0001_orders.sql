-- CRM's view of orders, with the customer's contact data managers need. The status and its history
-- live in the `orderbook` schema.

CREATE TABLE orders (
    id                UUID        PRIMARY KEY,
    customer_id       UUID        NOT NULL,
    customer_name     TEXT        NOT NULL,
    customer_email    TEXT        NOT NULL,
    customer_phone    TEXT,
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
    -- the carrier's tracking number, once shipped
    tracking_number   TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX orders_created_at ON orders (created_at DESC, id DESC);
