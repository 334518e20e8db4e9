-- A partner's rate tightened (or loosened) for a while, over the configured one (limits): by
-- order-watch while an incident its orders feed is open (source 'incident'), or by a developer
-- or admin by hand (source 'manual'). Every override expires: one that nobody renews lapses and
-- the configured rate applies again.
CREATE TABLE partner_limit_overrides (
    partner_id   TEXT        PRIMARY KEY,
    quota        INTEGER     NOT NULL CHECK (quota > 0),
    window_ms    BIGINT      NOT NULL CHECK (window_ms > 0),
    source       TEXT        NOT NULL CHECK (source IN ('incident', 'manual')),
    reason       TEXT        NOT NULL,
    incident_id  UUID,
    set_by       TEXT        NOT NULL,
    set_at       TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);

-- Every change of an override: set (a new rate, source or incident; a renewal that only moves the
-- expiry is not a change) and lift, with who made it.
CREATE TABLE partner_limit_changes (
    id           BIGSERIAL   PRIMARY KEY,
    at           TIMESTAMPTZ NOT NULL,
    partner_id   TEXT        NOT NULL,
    action       TEXT        NOT NULL CHECK (action IN ('set', 'lift')),
    source       TEXT        NOT NULL,
    rate         TEXT,
    reason       TEXT,
    incident_id  UUID,
    made_by      TEXT        NOT NULL,
    expires_at   TIMESTAMPTZ
);
CREATE INDEX partner_limit_changes_at ON partner_limit_changes (at DESC);

-- The interval of the rate each partner's `tat` was run up with, so that a change of rate carries
-- the orders owed over instead of the time (orders::limit).
ALTER TABLE partner_rate ADD COLUMN rate_interval INTERVAL;
