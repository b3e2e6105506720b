-- Tally schema, version 13: budget thresholds crossed (`budgets` in the config).
-- One row per budget, period and threshold, claimed (INSERT … ON CONFLICT DO
-- NOTHING) before the activity event that announces the crossing is written, so
-- the event is recorded once however many instances see the crossing.
-- `crossed_at`, `used` and `limit_value` are the event's content: an instance
-- that finds a claim still pending (`emitted_at IS NULL`: its claimer stopped
-- before the event committed) re-sends the identical event, stored once under
-- its deterministic id.
CREATE TABLE IF NOT EXISTS budget_thresholds (
    budget       text             NOT NULL,
    period_start timestamptz      NOT NULL,
    threshold    double precision NOT NULL,
    tenant_id    text             NOT NULL DEFAULT '',
    user_id      text,
    period       text             NOT NULL,
    unit         text             NOT NULL,
    limit_value  double precision NOT NULL,
    used         double precision NOT NULL,
    crossed_at   timestamptz      NOT NULL,
    emitted_at   timestamptz,
    PRIMARY KEY (budget, period_start, threshold)
);
CREATE INDEX IF NOT EXISTS budget_thresholds_pending
    ON budget_thresholds (crossed_at) WHERE emitted_at IS NULL;
