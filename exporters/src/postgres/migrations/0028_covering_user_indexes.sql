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
