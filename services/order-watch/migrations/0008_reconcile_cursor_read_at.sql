-- When the round that left each cursor began: a change that had not committed when that round
-- read can only be stamped after this less the overlap, so the next round re-reads only from
-- there (and from the cursor itself when that is earlier: a reading catching up on a backlog
-- then advances instead of re-reading the overlap for ever). Null for cursors left before.
ALTER TABLE reconcile_cursors ADD COLUMN read_at TIMESTAMPTZ;
-- Whether that round read to the end of the system's changes. A reading that stopped at its
-- page limit is behind by the time since its cursor (order_watch_reconciliation_behind_seconds).
ALTER TABLE reconcile_cursors ADD COLUMN caught_up BOOLEAN NOT NULL DEFAULT true;
