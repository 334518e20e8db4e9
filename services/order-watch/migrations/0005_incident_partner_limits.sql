-- Partners' rates tightened at Shop while incidents their orders feed are open
-- (partner_limits): one row per incident and partner it affects.
CREATE TABLE incident_partner_limits (
    incident_id     UUID        NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    partner_id      TEXT        NOT NULL,
    -- the rate put at Shop, as Shop reads rates (`10/1m`)
    rate            TEXT        NOT NULL,
    -- when Shop first took it; NULL while it could not be put
    switched_on_at  TIMESTAMPTZ,
    -- when it was last put (first time or renewal)
    renewed_at      TIMESTAMPTZ,
    -- when it was lifted, or handed over to another open incident of the partner
    lifted_at       TIMESTAMPTZ,
    -- why the last attempt did not take
    last_error      TEXT,
    PRIMARY KEY (incident_id, partner_id)
);
CREATE INDEX incident_partner_limits_partner ON incident_partner_limits (partner_id)
    WHERE lifted_at IS NULL;
