-- Tally schema, version 1: the activity log.
-- Applied by `tally migrate` and at start-up; every statement is idempotent.

CREATE SEQUENCE IF NOT EXISTS activity_events_seq AS bigint;

-- One row per user action. Range-partitioned by day on the event time `ts`;
-- daily partitions (activity_events_pYYYYMMDD, UTC days) are created ahead by the
-- exporter, and on demand for older or later days.
-- `seq` is commit-ordered: rows are given their seq while the writer holds the
-- transaction-scoped advisory lock 8386103194289267572 (the bytes 'tallyact',
-- ACTIVITY_EVENTS_LOCK_KEY) until it commits, so a reader that remembers the last
-- seq it saw never skips a row committed later. Anything else that inserts into
-- activity_events must take the same lock before nextval('activity_events_seq').
-- `tenant_id` is '' when the event carried no tenant (it is part of the primary key).
CREATE TABLE IF NOT EXISTS activity_events (
    id            uuid        NOT NULL,
    seq           bigint      NOT NULL,
    ts            timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    tenant_id     text        NOT NULL DEFAULT '',
    user_id       text,
    session_id    text,
    action        text        NOT NULL,
    outcome       text        NOT NULL CHECK (outcome IN ('success', 'failure', 'unknown')),
    resource_type text,
    resource_id   text,
    service       text,
    trace_id      text,
    span_id       text,
    attributes    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (tenant_id, ts, id)
) PARTITION BY RANGE (ts);

CREATE INDEX IF NOT EXISTS activity_events_seq_idx ON activity_events (seq);
CREATE INDEX IF NOT EXISTS activity_events_ts_idx ON activity_events (ts, id);
CREATE INDEX IF NOT EXISTS activity_events_user_idx ON activity_events (user_id, ts);
CREATE INDEX IF NOT EXISTS activity_events_trace_idx ON activity_events (trace_id) WHERE trace_id IS NOT NULL;

-- Records Tally accepted but could not store as activity (quarantine).
CREATE SEQUENCE IF NOT EXISTS rejected_events_seq AS bigint;
CREATE TABLE IF NOT EXISTS rejected_events (
    id           uuid        NOT NULL,
    seq          bigint      NOT NULL DEFAULT nextval('rejected_events_seq'),
    received_at  timestamptz NOT NULL DEFAULT now(),
    tenant_id    text        NOT NULL DEFAULT '',
    reason       text        NOT NULL,
    record       jsonb       NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX IF NOT EXISTS rejected_events_seq_idx ON rejected_events (seq);
