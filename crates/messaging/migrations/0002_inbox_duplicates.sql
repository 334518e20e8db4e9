-- How often each applied message came again: duplicates are expected (at-least-once delivery)
-- and harmless, and counting them where they are skipped makes that visible.
ALTER TABLE inbox
    ADD COLUMN duplicates        INTEGER     NOT NULL DEFAULT 0,
    ADD COLUMN last_duplicate_at TIMESTAMPTZ;
