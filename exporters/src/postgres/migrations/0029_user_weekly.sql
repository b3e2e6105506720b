-- Tally schema, version 29: per-user weekly rollups (issue 18, by-user month
-- and week pages at 10M rows). Applied by `tally migrate` and at start-up;
-- every statement is idempotent.
--
-- A page of `/tokens/usage` or `/activity/aggregates` grouped by user reads,
-- per period, the first users' rollup rows in user order (migration 0028's
-- covering indexes). Over a month that is one `token_usage_daily` row per
-- user, day, provider and model (126,701 rows for a 1,001-user page at 10M),
-- each grouped into its user's sums. These tables hold the same sums per
-- user and ISO week, without provider/model or action/outcome: a by-user page
-- whose only filters are the tenant and the user reads a period's whole weeks
-- here and only its edge days (before the first whole week, after the last)
-- from the daily tables (admin-api/src/aggregates/sql.rs).
--
-- `week` is the Monday of the week (`date_trunc('week', day)`, UTC days).
-- Kept exact like the daily tables, in the same transactions: the rollup
-- job's fold and late attribution (exporters/src/postgres/rollup.rs), the
-- erasure's re-keying to the pseudonym (erasure/finish.rs), retention (the
-- weeks that start before the cutoff are deleted and the week holding the
-- cutoff is rebuilt from the daily rows kept, `tally_retain_user_weekly`).
-- Row-level security: they have `tenant_id` and `user_id`, so
-- row_security.sql gives them the tenant and own-user policies of
-- `activity_daily` / `token_usage_daily`.
--
-- Keys: the primary key `(tenant_id, user_id, week)` carries the sums
-- (INCLUDE), so one tenant's page in user order is an index-only scan; the
-- `(week, user_id)` index carries the tenant and the sums, so one week of the
-- page over every tenant is an index-only range in user order.
CREATE TABLE IF NOT EXISTS token_usage_user_weekly (
    tenant_id              text            NOT NULL DEFAULT '',
    week                   date            NOT NULL,
    user_id                text            NOT NULL DEFAULT '',
    requests               bigint          NOT NULL DEFAULT 0,
    unknown_usage_requests bigint          NOT NULL DEFAULT 0,
    unpriced_requests      bigint          NOT NULL DEFAULT 0,
    input_tokens           bigint          NOT NULL DEFAULT 0,
    output_tokens          bigint          NOT NULL DEFAULT 0,
    cache_read_tokens      bigint          NOT NULL DEFAULT 0,
    cache_write_tokens     bigint          NOT NULL DEFAULT 0,
    reasoning_tokens       bigint          NOT NULL DEFAULT 0,
    total_tokens           bigint          NOT NULL DEFAULT 0,
    cost_usd               numeric(24, 10) NOT NULL DEFAULT 0,
    CONSTRAINT token_usage_user_weekly_pkey PRIMARY KEY (tenant_id, user_id, week)
        INCLUDE (requests, unknown_usage_requests, unpriced_requests, input_tokens,
            output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
            total_tokens, cost_usd)
);
-- One week's users in user order (a page reads each whole week as a range
-- of it, index-only: the tenant, for row security and the tenant filter, and
-- the sums are included); retention deletes by week.
CREATE INDEX IF NOT EXISTS token_usage_user_weekly_week_user_idx
    ON token_usage_user_weekly (week, user_id) INCLUDE (tenant_id, requests,
        unknown_usage_requests, unpriced_requests, input_tokens, output_tokens,
        cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd);

CREATE TABLE IF NOT EXISTS activity_user_weekly (
    tenant_id text   NOT NULL DEFAULT '',
    week      date   NOT NULL,
    user_id   text   NOT NULL DEFAULT '',
    events    bigint NOT NULL DEFAULT 0,
    CONSTRAINT activity_user_weekly_pkey PRIMARY KEY (tenant_id, user_id, week) INCLUDE (events)
);
CREATE INDEX IF NOT EXISTS activity_user_weekly_week_user_idx
    ON activity_user_weekly (week, user_id) INCLUDE (tenant_id, events);

-- Like the daily tables (migration 0028): index-only reads need all-visible
-- pages, and every fold clears the bits of the pages it writes.
ALTER TABLE token_usage_user_weekly SET (autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02);
ALTER TABLE activity_user_weekly SET (autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02);

-- Rebuilds both tables from the daily ones, under the rollup job's lock
-- (ROLLUP_LOCK_KEY, the bytes 'tallyrol') so that no fold runs meanwhile. Used
-- by this migration on an existing database and by the benchmark's generator;
-- an operator may run it to repair them (`SELECT tally_rebuild_user_weekly()`).
CREATE OR REPLACE FUNCTION tally_rebuild_user_weekly() RETURNS void
LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM pg_advisory_xact_lock(8386103194290384748);
    DELETE FROM token_usage_user_weekly;
    DELETE FROM activity_user_weekly;
    INSERT INTO token_usage_user_weekly (tenant_id, week, user_id, requests,
            unknown_usage_requests, unpriced_requests, input_tokens, output_tokens,
            cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd)
        SELECT tenant_id, date_trunc('week', day::timestamp)::date, user_id, sum(requests),
            sum(unknown_usage_requests), sum(unpriced_requests), sum(input_tokens),
            sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens),
            sum(reasoning_tokens), sum(total_tokens), sum(cost_usd)
        FROM token_usage_daily GROUP BY 1, 2, 3;
    INSERT INTO activity_user_weekly (tenant_id, week, user_id, events)
        SELECT tenant_id, date_trunc('week', day::timestamp)::date, user_id, sum(events)
        FROM activity_daily GROUP BY 1, 2, 3;
END
$f$;

SELECT tally_rebuild_user_weekly();

-- Retention (exporters/src/postgres/retention.rs, after the daily rows before
-- `cutoff` are deleted): the weeks that start before the cutoff are deleted
-- and the week holding the cutoff, when it starts before it, is rebuilt from
-- the daily rows kept. Under the rollup job's lock, so a fold never writes
-- that week in between. Returns the rows deleted.
CREATE OR REPLACE FUNCTION tally_retain_user_weekly(cutoff date) RETURNS bigint
LANGUAGE plpgsql AS $f$
DECLARE
    tokens bigint;
    activity bigint;
    first_week date := date_trunc('week', cutoff::timestamp)::date;
BEGIN
    PERFORM pg_advisory_xact_lock(8386103194290384748);
    DELETE FROM token_usage_user_weekly WHERE week < cutoff;
    GET DIAGNOSTICS tokens = ROW_COUNT;
    DELETE FROM activity_user_weekly WHERE week < cutoff;
    GET DIAGNOSTICS activity = ROW_COUNT;
    IF first_week < cutoff THEN
        INSERT INTO token_usage_user_weekly (tenant_id, week, user_id, requests,
                unknown_usage_requests, unpriced_requests, input_tokens, output_tokens,
                cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd)
            SELECT tenant_id, first_week, user_id, sum(requests), sum(unknown_usage_requests),
                sum(unpriced_requests), sum(input_tokens), sum(output_tokens),
                sum(cache_read_tokens), sum(cache_write_tokens), sum(reasoning_tokens),
                sum(total_tokens), sum(cost_usd)
            FROM token_usage_daily
            WHERE day >= cutoff AND day < first_week + 7
            GROUP BY 1, 3;
        INSERT INTO activity_user_weekly (tenant_id, week, user_id, events)
            SELECT tenant_id, first_week, user_id, sum(events)
            FROM activity_daily
            WHERE day >= cutoff AND day < first_week + 7
            GROUP BY 1, 3;
    END IF;
    RETURN tokens + activity;
END
$f$;
