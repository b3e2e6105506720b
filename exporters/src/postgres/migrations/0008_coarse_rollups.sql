-- Tally schema, version 8: coarser rollups for the admin API's aggregate routes
-- (benchmark "Queries at 10 million rows"). Applied by `tally migrate` and at
-- start-up; every statement is idempotent.
--
-- activity_daily / token_usage_daily are keyed per user and day. With about one
-- event per user and day they hold about as many rows as the raw tables, and a
-- 30-day sum over every tenant read millions of rows. The tables below are
-- derived from the same raw rows by the rollup job, in the same transaction
-- and under the same watermarks (exporters/src/postgres/rollup.rs), so they
-- always agree with the fine rollups exactly:
--
-- * activity_daily_tenant / token_usage_daily_tenant: without user_id (per day
--   x tenant x action x outcome, per day x tenant x provider x model);
-- * activity_daily_all / token_usage_daily_all: without tenant_id either, for
--   platform callers (tally.tenant = '*') who do not name a tenant. They have
--   no tenant column: row_security.sql shows them to tally_api only when
--   tally.tenant is '*';
-- * activity_users_daily (per tenant and day) / activity_users_daily_all (per
--   day, over all tenants): the number of distinct non-empty user_ids in
--   activity_daily, maintained incrementally (a (day, tenant, user) counts when
--   the fold adds it to activity_daily for the first time);
-- * activity_user_last_seen (per tenant and user) / activity_user_last_seen_all
--   (per user): the newest day of the user in activity_daily. The distinct
--   users of a window that ends after every user's last day are the users with
--   last_seen >= the window's first day (an index range count instead of a
--   count(DISTINCT) over the window's rollup rows).

CREATE TABLE IF NOT EXISTS activity_daily_tenant (
    day        date   NOT NULL,
    tenant_id  text   NOT NULL DEFAULT '',
    action     text   NOT NULL,
    outcome    text   NOT NULL,
    events     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, action, outcome)
);
CREATE INDEX IF NOT EXISTS activity_daily_tenant_day_idx ON activity_daily_tenant (day);

CREATE TABLE IF NOT EXISTS activity_daily_all (
    day        date   NOT NULL,
    action     text   NOT NULL,
    outcome    text   NOT NULL,
    events     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, action, outcome)
);

CREATE TABLE IF NOT EXISTS activity_users_daily (
    day        date   NOT NULL,
    tenant_id  text   NOT NULL DEFAULT '',
    users      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day)
);
CREATE INDEX IF NOT EXISTS activity_users_daily_day_idx ON activity_users_daily (day);

CREATE TABLE IF NOT EXISTS activity_users_daily_all (
    day        date   NOT NULL PRIMARY KEY,
    users      bigint NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS activity_user_last_seen (
    tenant_id  text NOT NULL DEFAULT '',
    user_id    text NOT NULL,
    last_seen  date NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX IF NOT EXISTS activity_user_last_seen_idx ON activity_user_last_seen (tenant_id, last_seen);

CREATE TABLE IF NOT EXISTS activity_user_last_seen_all (
    user_id    text NOT NULL PRIMARY KEY,
    last_seen  date NOT NULL
);
CREATE INDEX IF NOT EXISTS activity_user_last_seen_all_idx ON activity_user_last_seen_all (last_seen);

CREATE TABLE IF NOT EXISTS token_usage_daily_tenant (
    day                    date            NOT NULL,
    tenant_id              text            NOT NULL DEFAULT '',
    provider               text            NOT NULL DEFAULT '',
    model                  text            NOT NULL DEFAULT '',
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
    PRIMARY KEY (tenant_id, day, provider, model)
);
CREATE INDEX IF NOT EXISTS token_usage_daily_tenant_day_idx ON token_usage_daily_tenant (day);

CREATE TABLE IF NOT EXISTS token_usage_daily_all (
    day                    date            NOT NULL,
    provider               text            NOT NULL DEFAULT '',
    model                  text            NOT NULL DEFAULT '',
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
    PRIMARY KEY (day, provider, model)
);

-- Grouping by user in user order, period by period (the aggregate routes with
-- group_by=user stop after one page of users instead of grouping the whole
-- window), and the rollup job's "first time this user is seen on this day over
-- all tenants" probe.
CREATE INDEX IF NOT EXISTS activity_daily_user_day_idx ON activity_daily (user_id, day);
CREATE INDEX IF NOT EXISTS activity_daily_tenant_user_idx ON activity_daily (tenant_id, user_id, day);
CREATE INDEX IF NOT EXISTS token_usage_daily_user_day_idx ON token_usage_daily (user_id, day);
CREATE INDEX IF NOT EXISTS token_usage_daily_tenant_user_idx ON token_usage_daily (tenant_id, user_id, day);

-- `GET /export` for a tenant-scoped caller (`tenant_id = $1 AND seq > $2 ORDER
-- BY seq`): a direct range read instead of walking the seq index and dropping
-- the other tenants' rows. One more index maintained on every insert into
-- activity_events (cost measured in docs/performance.md).
CREATE INDEX IF NOT EXISTS activity_events_tenant_seq_idx ON activity_events (tenant_id, seq);

-- Rebuilds every derived rollup above from activity_daily and
-- token_usage_daily (which stay the reference), under the rollup job's lock
-- (ROLLUP_LOCK_KEY, the bytes 'tallyrol'), so it never races a fold. Used by
-- this migration on an existing database and by the benchmark's generator; an
-- operator may run it to repair the derived tables (`SELECT
-- tally_rebuild_coarse_rollups()`).
CREATE OR REPLACE FUNCTION tally_rebuild_coarse_rollups() RETURNS void
LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM pg_advisory_xact_lock(8386103194290384748);
    DELETE FROM activity_daily_tenant;
    DELETE FROM activity_daily_all;
    DELETE FROM activity_users_daily;
    DELETE FROM activity_users_daily_all;
    DELETE FROM activity_user_last_seen;
    DELETE FROM activity_user_last_seen_all;
    DELETE FROM token_usage_daily_tenant;
    DELETE FROM token_usage_daily_all;
    INSERT INTO activity_daily_tenant (day, tenant_id, action, outcome, events)
        SELECT day, tenant_id, action, outcome, sum(events) FROM activity_daily
        GROUP BY 1, 2, 3, 4;
    INSERT INTO activity_daily_all (day, action, outcome, events)
        SELECT day, action, outcome, sum(events) FROM activity_daily_tenant
        GROUP BY 1, 2, 3;
    INSERT INTO activity_users_daily (day, tenant_id, users)
        SELECT day, tenant_id, count(*) FROM
            (SELECT DISTINCT day, tenant_id, user_id FROM activity_daily WHERE user_id <> '') AS u
        GROUP BY 1, 2;
    INSERT INTO activity_users_daily_all (day, users)
        SELECT day, count(*) FROM
            (SELECT DISTINCT day, user_id FROM activity_daily WHERE user_id <> '') AS u
        GROUP BY 1;
    INSERT INTO activity_user_last_seen (tenant_id, user_id, last_seen)
        SELECT tenant_id, user_id, max(day) FROM activity_daily WHERE user_id <> ''
        GROUP BY 1, 2;
    INSERT INTO activity_user_last_seen_all (user_id, last_seen)
        SELECT user_id, max(last_seen) FROM activity_user_last_seen GROUP BY 1;
    INSERT INTO token_usage_daily_tenant (day, tenant_id, provider, model, requests,
            unknown_usage_requests, unpriced_requests, input_tokens, output_tokens,
            cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd)
        SELECT day, tenant_id, provider, model, sum(requests), sum(unknown_usage_requests),
            sum(unpriced_requests), sum(input_tokens), sum(output_tokens),
            sum(cache_read_tokens), sum(cache_write_tokens), sum(reasoning_tokens),
            sum(total_tokens), sum(cost_usd)
        FROM token_usage_daily GROUP BY 1, 2, 3, 4;
    INSERT INTO token_usage_daily_all (day, provider, model, requests,
            unknown_usage_requests, unpriced_requests, input_tokens, output_tokens,
            cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd)
        SELECT day, provider, model, sum(requests), sum(unknown_usage_requests),
            sum(unpriced_requests), sum(input_tokens), sum(output_tokens),
            sum(cache_read_tokens), sum(cache_write_tokens), sum(reasoning_tokens),
            sum(total_tokens), sum(cost_usd)
        FROM token_usage_daily_tenant GROUP BY 1, 2, 3;
END
$f$;

SELECT tally_rebuild_coarse_rollups();
