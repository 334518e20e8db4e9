-- Fair sharing of the calc workers between requesters (a partner, or a customer): a worker
-- takes a job of the requester with the fewest calculations running and, among those, the one
-- served least recently, so one requester's queue of heavy models cannot hold everyone else's
-- quotes back by more than one calculation per requester ahead of them.
ALTER TABLE orders ADD COLUMN requester TEXT NOT NULL DEFAULT '';

-- When each requester last had a calculation started.
CREATE TABLE calc_requesters (
    requester     TEXT        PRIMARY KEY,
    last_started  TIMESTAMPTZ NOT NULL
);

CREATE INDEX calc_jobs_running ON calc_jobs (order_id) WHERE state = 'running';
