-- Issue 17's roles in full: more configuration changed at run time (masking rules and the
-- incident webhook by developers, the retention by admins), incidents acknowledged and closed by
-- hand, and an order's trace data erased on request.

-- Each part is NULL until it is changed at run time: until then the environment and the file
-- hold; a change to one part leaves the others as they were.
ALTER TABLE runtime_config
    ALTER COLUMN thresholds DROP NOT NULL,
    -- {"drop_keys": [...], "mask_keys": [...], "mask_patterns": [...]}
    ADD COLUMN masking JSONB,
    -- whether the webhook was changed at run time: then webhook_url is the one in force (NULL:
    -- none, it was cleared)
    ADD COLUMN webhook_set BOOLEAN NOT NULL DEFAULT false,
    -- may hold a credential: never copied into the audit or a log
    ADD COLUMN webhook_url TEXT,
    ADD COLUMN retention_days INTEGER CHECK (retention_days BETWEEN 1 AND 3650),
    -- raised by every change: each replica compares it with the one it applied
    ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

-- The audit names the part each change touched; the changes so far were all thresholds.
UPDATE config_changes SET before = jsonb_build_object('thresholds', before),
    after = jsonb_build_object('thresholds', after);

ALTER TABLE incidents
    -- someone is on it: when, and who (the person's name and, in brackets, their subject)
    ADD COLUMN acknowledged_at TIMESTAMPTZ,
    ADD COLUMN acknowledged_by TEXT,
    -- who closed it by hand (resolved_at is when); NULL when it resolved by itself
    ADD COLUMN closed_by TEXT;

-- Erasures of an order's trace data on request: who, when, which order, how many rows went.
-- Nothing of the order's data itself.
CREATE TABLE erasures (
    id              BIGSERIAL   PRIMARY KEY,
    order_id        UUID        NOT NULL,
    erased_at       TIMESTAMPTZ NOT NULL,
    erased_by       TEXT        NOT NULL,
    spans           BIGINT      NOT NULL,
    telemetry_gaps  BIGINT      NOT NULL,
    -- incidents that lost their link to the order
    incidents       BIGINT      NOT NULL,
    -- webhook notifications the order's alerts were taken out of
    notifications   BIGINT      NOT NULL
);
