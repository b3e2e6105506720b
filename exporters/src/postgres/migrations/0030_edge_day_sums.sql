-- Tally schema, version 30: the per-user daily rollups' day indexes carry the
-- sums (issue 18, by-user month pages at 10M rows). Applied by `tally migrate`
-- and at start-up; every statement is idempotent.
--
-- A by-user page of `/tokens/usage` or `/activity/aggregates` reads a
-- period's whole ISO weeks from the per-user weekly rollups (migration 0029)
-- and each edge day (before the first whole week, after the last) from the
-- daily rollup: `WHERE day = d [AND tenant_id = t] GROUP BY user_id ORDER BY
-- user_id LIMIT n`, a range of the `(day, user_id)` index or, for one tenant,
-- of the primary key `(tenant_id, day, user_id, …)`. Neither carried the
-- measures, so every row of the range was a heap fetch: at 10M rows one edge
-- day of the largest tenant is ~9,600 `activity_daily` rows on ~8,900 heap
-- pages, ~90% of that page's statement when the pages are not cached.
--
-- Here those two indexes carry the measures (and the day index the tenant,
-- which row security filters on), so that an edge day is an index-only range.
-- No index is added: each is replaced by a wider one. The fold's updates were
-- already never HOT (the measures are in migration 0028's indexes), so they
-- insert into every index as before, each entry wider. Measured in
-- docs/performance.md ("Edge days index-only").
--
-- On an existing database the indexes are rebuilt inside the migration's
-- transaction (writers of the rollups, i.e. the rollup job, wait meanwhile).

-- 1. activity_daily: the primary key carries `events`. ON CONFLICT on the key
-- columns infers it as before (INCLUDE columns are not part of the key).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
               WHERE indexrelid = 'activity_daily_pkey'::regclass
                 AND indnatts = indnkeyatts) THEN
        ALTER TABLE activity_daily
            DROP CONSTRAINT activity_daily_pkey,
            ADD CONSTRAINT activity_daily_pkey
                PRIMARY KEY (tenant_id, day, user_id, action, outcome) INCLUDE (events);
    END IF;
END
$$;

-- 2. The `(day, user_id)` indexes carry the tenant and the measures.
CREATE INDEX IF NOT EXISTS activity_daily_day_user_sums_idx
    ON activity_daily (day, user_id) INCLUDE (tenant_id, events);
DROP INDEX IF EXISTS activity_daily_day_user_idx;

CREATE INDEX IF NOT EXISTS token_usage_daily_day_user_sums_idx
    ON token_usage_daily (day, user_id) INCLUDE (tenant_id, requests,
        unknown_usage_requests, unpriced_requests, input_tokens, output_tokens,
        cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd);
DROP INDEX IF EXISTS token_usage_daily_day_user_idx;
