-- Each partner's order budget (orders::limit): its theoretical arrival time under GCRA. One row
-- per partner that ever ordered; shared by every Shop replica.
CREATE TABLE partner_rate (
    partner_id  TEXT        PRIMARY KEY,
    tat         TIMESTAMPTZ NOT NULL
);
