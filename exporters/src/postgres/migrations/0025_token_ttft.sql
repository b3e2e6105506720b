-- Tally schema, version 25: time-to-first-token percentiles (issue 18 item 3).
-- Applied by `tally migrate` and at start-up; every statement is idempotent.
--
-- token_usage.time_to_first_token_ms exists since migration 0017; this adds
-- its histograms, for the p50/p95 of `/stats`:
-- * token_usage_ttft_daily (per day x tenant x provider x model x TTFT bucket)
--   and token_usage_ttft_daily_all (the same without the tenant): how many
--   calls reported a time to first token in each bucket (`ttft_bucket`, the
--   buckets of tally_duration_bucket, migration 0017: -1 = not reported).
--   Folded by the rollup job in the same statement and under the same
--   watermark as token_usage_daily (exporters/src/postgres/rollup.rs), so they
--   hold exactly the rows that one holds.
-- No column of token_usage changes and no row of it is written.
CREATE TABLE IF NOT EXISTS token_usage_ttft_daily (
    day         date     NOT NULL,
    tenant_id   text     NOT NULL DEFAULT '',
    provider    text     NOT NULL DEFAULT '',
    model       text     NOT NULL DEFAULT '',
    ttft_bucket smallint NOT NULL,
    requests    bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, provider, model, ttft_bucket)
);
CREATE INDEX IF NOT EXISTS token_usage_ttft_daily_day_idx ON token_usage_ttft_daily (day);

CREATE TABLE IF NOT EXISTS token_usage_ttft_daily_all (
    day         date     NOT NULL,
    provider    text     NOT NULL DEFAULT '',
    model       text     NOT NULL DEFAULT '',
    ttft_bucket smallint NOT NULL,
    requests    bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (day, provider, model, ttft_bucket)
);

-- On an existing database: the rows token_usage_daily already holds (at or
-- below its watermark), under the rollup job's lock (ROLLUP_LOCK_KEY, the bytes
-- 'tallyrol') so that no fold runs meanwhile. Rows already dropped by retention
-- are not counted.
SELECT pg_advisory_xact_lock(8386103194290384748);
INSERT INTO token_usage_ttft_daily (day, tenant_id, provider, model, ttft_bucket, requests)
    SELECT (ts AT TIME ZONE 'UTC')::date, tenant_id, coalesce(provider, ''),
        coalesce(model, ''), tally_duration_bucket(time_to_first_token_ms), count(*)
    FROM token_usage
    WHERE seq <= (SELECT last_seq FROM rollup_watermarks WHERE name = 'token_usage_daily')
      AND NOT EXISTS (SELECT 1 FROM token_usage_ttft_daily)
    GROUP BY 1, 2, 3, 4, 5;
INSERT INTO token_usage_ttft_daily_all (day, provider, model, ttft_bucket, requests)
    SELECT day, provider, model, ttft_bucket, sum(requests)
    FROM token_usage_ttft_daily
    WHERE NOT EXISTS (SELECT 1 FROM token_usage_ttft_daily_all)
    GROUP BY 1, 2, 3, 4;
