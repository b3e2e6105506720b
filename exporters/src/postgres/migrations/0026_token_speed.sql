-- Tally schema, version 26: per-call output speed percentiles (issue 18 item 3).
-- Applied by `tally migrate` and at start-up; every statement is idempotent.
--
-- `/stats` gave one output speed per window: the output tokens over the summed
-- durations of the calls (the ratio of sums, migration 0017). This adds the
-- distribution of each call's own speed, for its p50/p95:
-- * tally_speed_bucket(output_tokens, duration_ms): the bucket of the call's
--   output tokens per second (output_tokens / (duration_ms / 1000)), with the
--   buckets of tally_duration_bucket (migration 0017) read in tokens per second:
--   0 = [0, 1) tokens/s, b >= 1 = [2^((b-1)/8), 2^(b/8)) tokens/s, at most 255;
--   a percentile read as its bucket's geometric middle is within 4.5% of the
--   exact one (under 0.5 tokens/s off in bucket 0). -1 = the call does not
--   count for speed: no output_tokens or no positive duration (the calls the
--   ratio of sums leaves out too).
-- * token_usage_speed_daily (per day x tenant x provider x model x speed
--   bucket) and token_usage_speed_daily_all (the same without the tenant): how
--   many calls ran at each speed. Folded by the rollup job in the same
--   statement and under the same watermark as token_usage_daily
--   (exporters/src/postgres/rollup.rs), so they hold exactly the rows that one
--   holds.
-- No column of token_usage changes and no row of it is written.
CREATE OR REPLACE FUNCTION tally_speed_bucket(output_tokens bigint, duration_ms double precision)
RETURNS smallint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $f$
    SELECT CASE
        WHEN output_tokens IS NULL OR duration_ms IS NULL OR NOT duration_ms > 0
            OR duration_ms = 'NaN'::float8 THEN -1::smallint
        ELSE tally_duration_bucket(output_tokens * 1000.0::float8 / duration_ms)
    END
$f$;

CREATE TABLE IF NOT EXISTS token_usage_speed_daily (
    day          date     NOT NULL,
    tenant_id    text     NOT NULL DEFAULT '',
    provider     text     NOT NULL DEFAULT '',
    model        text     NOT NULL DEFAULT '',
    speed_bucket smallint NOT NULL,
    requests     bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, provider, model, speed_bucket)
);
CREATE INDEX IF NOT EXISTS token_usage_speed_daily_day_idx ON token_usage_speed_daily (day);

CREATE TABLE IF NOT EXISTS token_usage_speed_daily_all (
    day          date     NOT NULL,
    provider     text     NOT NULL DEFAULT '',
    model        text     NOT NULL DEFAULT '',
    speed_bucket smallint NOT NULL,
    requests     bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (day, provider, model, speed_bucket)
);

-- On an existing database: the rows token_usage_daily already holds (at or
-- below its watermark), under the rollup job's lock (ROLLUP_LOCK_KEY, the bytes
-- 'tallyrol') so that no fold runs meanwhile. Rows already dropped by retention
-- are not counted.
SELECT pg_advisory_xact_lock(8386103194290384748);
INSERT INTO token_usage_speed_daily (day, tenant_id, provider, model, speed_bucket, requests)
    SELECT (ts AT TIME ZONE 'UTC')::date, tenant_id, coalesce(provider, ''),
        coalesce(model, ''), tally_speed_bucket(output_tokens, duration_ms), count(*)
    FROM token_usage
    WHERE seq <= (SELECT last_seq FROM rollup_watermarks WHERE name = 'token_usage_daily')
      AND NOT EXISTS (SELECT 1 FROM token_usage_speed_daily)
    GROUP BY 1, 2, 3, 4, 5;
INSERT INTO token_usage_speed_daily_all (day, provider, model, speed_bucket, requests)
    SELECT day, provider, model, speed_bucket, sum(requests)
    FROM token_usage_speed_daily
    WHERE NOT EXISTS (SELECT 1 FROM token_usage_speed_daily_all)
    GROUP BY 1, 2, 3, 4;
