-- Tally schema, version 28: the per-user rollups' user indexes carry the sums
-- (issue 18, query benchmark at 10M + 10M rows). Applied by `tally migrate` and
-- at start-up; every statement is idempotent.
--
-- A page of `/tokens/usage` or `/activity/aggregates` grouped by user reads, per
-- period, the rollup's first groups in user order: `WHERE day >= $a AND day <
-- $b [AND tenant_id = $t] GROUP BY user_id ORDER BY user_id LIMIT n`, streamed
-- from the `(user_id, day)` or `(tenant_id, user_id, day)` index of migration
-- 0008. Over a month that was one heap fetch per rollup row of the page's users
-- (22,606 at 1M rows, most of the time of the month shape). The indexes below
-- replace those four with the same keys and the summed columns as INCLUDE
-- columns, so that the statement is an index-only scan (the heap is read only
-- for pages the visibility map does not mark all-visible). They replace the old
-- ones rather than adding to them: the rollup job maintains as many indexes as
-- before, each one wider.
--
-- The fold updates the measures in place (`ON CONFLICT DO UPDATE SET n = n +
-- EXCLUDED.n`). Once a measure is in an index those updates are never HOT
-- (heap-only) updates: each one adds an entry to every index of the table.
-- Measured in docs/performance.md ("Covering user indexes").
--
-- On an existing database the new indexes are built inside the migration's
-- transaction (writers of the rollups, i.e. the rollup job, wait meanwhile).
CREATE INDEX IF NOT EXISTS activity_daily_user_day_sums_idx
    ON activity_daily (user_id, day) INCLUDE (events);
DROP INDEX IF EXISTS activity_daily_user_day_idx;
CREATE INDEX IF NOT EXISTS activity_daily_tenant_user_sums_idx
    ON activity_daily (tenant_id, user_id, day) INCLUDE (events);
DROP INDEX IF EXISTS activity_daily_tenant_user_idx;

CREATE INDEX IF NOT EXISTS token_usage_daily_user_day_sums_idx
    ON token_usage_daily (user_id, day) INCLUDE (requests, unknown_usage_requests,
        unpriced_requests, input_tokens, output_tokens, cache_read_tokens,
        cache_write_tokens, reasoning_tokens, total_tokens, cost_usd);
DROP INDEX IF EXISTS token_usage_daily_user_day_idx;
CREATE INDEX IF NOT EXISTS token_usage_daily_tenant_user_sums_idx
    ON token_usage_daily (tenant_id, user_id, day) INCLUDE (requests,
        unknown_usage_requests, unpriced_requests, input_tokens, output_tokens,
        cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd);
DROP INDEX IF EXISTS token_usage_daily_tenant_user_idx;

-- Index-only scans skip the heap only for pages the visibility map marks
-- all-visible, and every fold clears that mark on the pages it writes (a
-- 100,000-row fold at 1M rows made the month page's 22,605 rollup rows heap
-- fetches again until a VACUUM). PostgreSQL's defaults vacuum these tables
-- after 20% of their rows changed (2M rows at 10M); vacuum them after 2%.
ALTER TABLE activity_daily SET (autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02);
ALTER TABLE token_usage_daily SET (autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02);

-- 2. Weekly histograms over every tenant.
--
-- `/stats` over every tenant reads the duration and output speed histograms of
-- its window (migrations 0017, 0026): about 1,400 rows per day each
-- (provider x model x outcome x duration bucket, provider x model x speed
-- bucket), 88,000 rows for a 30-day window, most of the time of that answer.
-- Over a week the same keys repeat day after day, so a weekly copy holds
-- about as many rows per week as the daily one per day. `/stats` reads the
-- window's whole ISO weeks (Monday to Sunday) here and only the days before
-- the first and after the last whole week from the daily tables.
--
-- `week` is the Monday of the week (`date_trunc('week', day)`). Kept by the
-- rollup job in the same statement and under the same watermark as the daily
-- tables (exporters/src/postgres/rollup.rs: TOKEN_ROLLUPS), late attribution
-- included (they have no tenant or user, so their sums do not change), and by
-- retention: it deletes the weeks that start before the cutoff and rebuilds
-- the week holding the cutoff from the daily rows it keeps
-- (exporters/src/postgres/retention.rs), so a weekly row always equals the sum
-- of the daily rows of its week. No tenant column: row_security.sql shows them
-- to tally_api only when tally.tenant is '*'.
CREATE TABLE IF NOT EXISTS token_usage_latency_weekly_all (
    week               date             NOT NULL,
    provider           text             NOT NULL DEFAULT '',
    model              text             NOT NULL DEFAULT '',
    outcome            text             NOT NULL,
    bucket             smallint         NOT NULL,
    requests           bigint           NOT NULL DEFAULT 0,
    rate_output_tokens bigint           NOT NULL DEFAULT 0,
    rate_duration_ms   double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (week, provider, model, outcome, bucket)
);

CREATE TABLE IF NOT EXISTS token_usage_speed_weekly_all (
    week         date     NOT NULL,
    provider     text     NOT NULL DEFAULT '',
    model        text     NOT NULL DEFAULT '',
    speed_bucket smallint NOT NULL,
    requests     bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (week, provider, model, speed_bucket)
);

-- Rebuilds both weekly tables from the daily ones, under the rollup job's lock
-- (ROLLUP_LOCK_KEY, the bytes 'tallyrol') so that no fold runs meanwhile. Used
-- by this migration on an existing database and by the benchmark's generator;
-- an operator may run it to repair them (`SELECT tally_rebuild_weekly_histograms()`).
CREATE OR REPLACE FUNCTION tally_rebuild_weekly_histograms() RETURNS void
LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM pg_advisory_xact_lock(8386103194290384748);
    DELETE FROM token_usage_latency_weekly_all;
    DELETE FROM token_usage_speed_weekly_all;
    INSERT INTO token_usage_latency_weekly_all (week, provider, model, outcome, bucket,
            requests, rate_output_tokens, rate_duration_ms)
        SELECT date_trunc('week', day::timestamp)::date, provider, model, outcome, bucket,
            sum(requests), sum(rate_output_tokens), sum(rate_duration_ms)
        FROM token_usage_latency_daily_all GROUP BY 1, 2, 3, 4, 5;
    INSERT INTO token_usage_speed_weekly_all (week, provider, model, speed_bucket, requests)
        SELECT date_trunc('week', day::timestamp)::date, provider, model, speed_bucket, sum(requests)
        FROM token_usage_speed_daily_all GROUP BY 1, 2, 3, 4;
END
$f$;

SELECT tally_rebuild_weekly_histograms();

-- Retention of the weekly tables (exporters/src/postgres/retention.rs, after
-- the daily rows before `cutoff` are deleted): the weeks that start before the
-- cutoff are deleted and the week holding the cutoff, when it starts before
-- it, is rebuilt from the daily rows kept. Under the rollup job's lock, so a
-- fold never writes that week in between. Returns the rows deleted.
CREATE OR REPLACE FUNCTION tally_retain_weekly_histograms(cutoff date) RETURNS bigint
LANGUAGE plpgsql AS $f$
DECLARE
    latency bigint;
    speed bigint;
    first_week date := date_trunc('week', cutoff::timestamp)::date;
BEGIN
    PERFORM pg_advisory_xact_lock(8386103194290384748);
    DELETE FROM token_usage_latency_weekly_all WHERE week < cutoff;
    GET DIAGNOSTICS latency = ROW_COUNT;
    DELETE FROM token_usage_speed_weekly_all WHERE week < cutoff;
    GET DIAGNOSTICS speed = ROW_COUNT;
    IF first_week < cutoff THEN
        INSERT INTO token_usage_latency_weekly_all (week, provider, model, outcome, bucket,
                requests, rate_output_tokens, rate_duration_ms)
            SELECT first_week, provider, model, outcome, bucket, sum(requests),
                sum(rate_output_tokens), sum(rate_duration_ms)
            FROM token_usage_latency_daily_all
            WHERE day >= cutoff AND day < first_week + 7
            GROUP BY 2, 3, 4, 5;
        INSERT INTO token_usage_speed_weekly_all (week, provider, model, speed_bucket, requests)
            SELECT first_week, provider, model, speed_bucket, sum(requests)
            FROM token_usage_speed_daily_all
            WHERE day >= cutoff AND day < first_week + 7
            GROUP BY 2, 3, 4;
    END IF;
    RETURN latency + speed;
END
$f$;
