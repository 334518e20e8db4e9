-- Configuration changed at run time (PATCH /api/config): the stuck thresholds in force, which
-- outlive restarts, and every change with who made it.
CREATE TABLE runtime_config (
    -- one row
    id          BOOLEAN     PRIMARY KEY DEFAULT true CHECK (id),
    -- {"default_seconds": 900, "per_stage_seconds": {"pricing": 600, ...}}
    thresholds  JSONB       NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    updated_by  TEXT        NOT NULL
);

CREATE TABLE config_changes (
    id          BIGSERIAL   PRIMARY KEY,
    changed_at  TIMESTAMPTZ NOT NULL,
    -- the person's name and, in brackets, their subject at the identity provider
    changed_by  TEXT        NOT NULL,
    before      JSONB       NOT NULL,
    after       JSONB       NOT NULL
);
