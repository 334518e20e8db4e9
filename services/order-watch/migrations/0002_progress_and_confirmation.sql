-- Stuck means stuck (docs/order-watch.md): an order's deadline follows its progress only, reads
-- of it are observations, and before an order is called stuck the system that owns its stage is
-- asked; when that system has moved on, order-watch records a telemetry gap instead.

ALTER TABLE orders
    -- end of the latest span that moved the order (`order.activity` = progress, not failed)
    ADD COLUMN last_progress TIMESTAMPTZ,
    -- requests that only read the order (observation SERVER spans) since its last progress
    ADD COLUMN observations_since_progress BIGINT NOT NULL DEFAULT 0,
    -- where `status` comes from: 'telemetry' (a transition span) or the service whose own
    -- record order-watch took it from when its spans were missing
    ADD COLUMN status_source TEXT NOT NULL DEFAULT 'telemetry',
    -- when the detector looks at the order next: its deadline while it is not stuck, the next
    -- re-confirmation while it is, a short lease while a confirmation is under way; NULL once
    -- terminal
    ADD COLUMN check_at TIMESTAMPTZ,
    -- for a stuck order: 'confirmed' (its system of record holds it where order-watch does) or
    -- 'unconfirmed' (that system could not be asked; flagged all the same)
    ADD COLUMN stuck_confirmation TEXT CHECK (stuck_confirmation IN ('confirmed', 'unconfirmed')),
    -- what the system of record answered, in words
    ADD COLUMN confirmation TEXT,
    ADD COLUMN confirmed_at TIMESTAMPTZ;

-- Journeys stored before this migration knew no difference between progress and reads.
UPDATE orders SET last_progress = last_seen,
    check_at = CASE WHEN terminal THEN NULL WHEN stuck_since IS NULL THEN deadline ELSE now() END,
    stuck_confirmation = CASE WHEN stuck_since IS NOT NULL THEN 'unconfirmed' END,
    confirmation = CASE WHEN stuck_since IS NOT NULL
        THEN 'flagged before order-watch confirmed stuck orders; being confirmed now' END;
ALTER TABLE orders ALTER COLUMN last_progress SET NOT NULL;

DROP INDEX orders_due;
-- The detector's queue.
CREATE INDEX orders_check ON orders (check_at) WHERE check_at IS NOT NULL;
DROP INDEX orders_stuck;
CREATE INDEX orders_stuck ON orders (last_progress) WHERE stuck_since IS NOT NULL;

-- Why an incident closed: the order moved again, or its system of record had moved on.
ALTER TABLE incidents ADD COLUMN resolution TEXT;

-- A stretch of an order's life whose spans never reached order-watch, found when the system of
-- record held the order further along than its spans said.
CREATE TABLE telemetry_gaps (
    id                BIGSERIAL   PRIMARY KEY,
    order_id          UUID        NOT NULL,
    detected_at       TIMESTAMPTZ NOT NULL,
    -- the system asked (service.name) and the status it held, since when
    source            TEXT        NOT NULL,
    to_status         TEXT        NOT NULL,
    status_at         TIMESTAMPTZ NOT NULL,
    -- the status order-watch had from the spans (NULL: none)
    from_status       TEXT,
    -- the owners of the moves between the two, whose transition spans never arrived
    missing_services  TEXT[]      NOT NULL
);

CREATE INDEX telemetry_gaps_order ON telemetry_gaps (order_id, detected_at);
