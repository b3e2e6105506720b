-- Tally schema, version 17: per-call speed (issue 18). Applied by `tally migrate`
-- and at start-up; every statement is idempotent.
--
-- * token_usage.time_to_first_token_ms: the time to the first output token or
--   chunk of a streamed call, when the instrumentation reports it
--   (`gen_ai.server.time_to_first_token`, `gen_ai.response.time_to_first_chunk`,
--   in seconds; docs/tokens.md). NULL otherwise; rows stored before this
--   migration keep NULL.
-- * token_usage_latency_daily (per day x tenant x provider x model x outcome x
--   duration bucket) and token_usage_latency_daily_all (the same without the
--   tenant): how many calls took how long, and the output tokens and durations
--   of the calls that reported both, for `/stats` (success rate, p50/p95
--   duration by model, output tokens per second). Folded by the rollup job in
--   the same statement and under the same watermark as token_usage_daily
--   (exporters/src/postgres/rollup.rs), so they hold exactly the rows that one
--   holds.
--
-- Duration buckets (`bucket`): -1 = no duration reported; 0 = [0, 1) ms; b >= 1 =
-- [2^((b-1)/8), 2^(b/8)) ms, at most 255 (8 buckets per doubling: a percentile
-- read as its bucket's geometric middle is within 4.5% of the exact one).
ALTER TABLE token_usage ADD COLUMN IF NOT EXISTS time_to_first_token_ms double precision;

CREATE OR REPLACE FUNCTION tally_duration_bucket(duration_ms double precision)
RETURNS smallint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $f$
    SELECT CASE
        WHEN duration_ms IS NULL OR duration_ms < 0 OR duration_ms = 'NaN'::float8 THEN -1
        WHEN duration_ms < 1 THEN 0
        ELSE least(floor(8 * ln(duration_ms) / ln(2::float8)) + 1, 255)
    END::smallint
$f$;

CREATE TABLE IF NOT EXISTS token_usage_latency_daily (
    day                date             NOT NULL,
    tenant_id          text             NOT NULL DEFAULT '',
    provider           text             NOT NULL DEFAULT '',
    model              text             NOT NULL DEFAULT '',
    outcome            text             NOT NULL,
    bucket             smallint         NOT NULL,
    requests           bigint           NOT NULL DEFAULT 0,
    rate_output_tokens bigint           NOT NULL DEFAULT 0,
    rate_duration_ms   double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, provider, model, outcome, bucket)
);
CREATE INDEX IF NOT EXISTS token_usage_latency_daily_day_idx ON token_usage_latency_daily (day);

CREATE TABLE IF NOT EXISTS token_usage_latency_daily_all (
    day                date             NOT NULL,
    provider           text             NOT NULL DEFAULT '',
    model              text             NOT NULL DEFAULT '',
    outcome            text             NOT NULL,
    bucket             smallint         NOT NULL,
    requests           bigint           NOT NULL DEFAULT 0,
    rate_output_tokens bigint           NOT NULL DEFAULT 0,
    rate_duration_ms   double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (day, provider, model, outcome, bucket)
);

-- On an existing database: the rows token_usage_daily already holds (at or
-- below its watermark), under the rollup job's lock (ROLLUP_LOCK_KEY, the bytes
-- 'tallyrol') so that no fold runs meanwhile. Rows already dropped by retention
-- are not counted (their days show no durations).
SELECT pg_advisory_xact_lock(8386103194290384748);
INSERT INTO token_usage_latency_daily (day, tenant_id, provider, model, outcome, bucket,
        requests, rate_output_tokens, rate_duration_ms)
    SELECT (ts AT TIME ZONE 'UTC')::date, tenant_id, coalesce(provider, ''),
        coalesce(model, ''), outcome, tally_duration_bucket(duration_ms), count(*),
        coalesce(sum(output_tokens) FILTER (WHERE duration_ms > 0 AND output_tokens IS NOT NULL), 0),
        coalesce(sum(duration_ms) FILTER (WHERE duration_ms > 0 AND output_tokens IS NOT NULL), 0)
    FROM token_usage
    WHERE seq <= (SELECT last_seq FROM rollup_watermarks WHERE name = 'token_usage_daily')
      AND NOT EXISTS (SELECT 1 FROM token_usage_latency_daily)
    GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO token_usage_latency_daily_all (day, provider, model, outcome, bucket,
        requests, rate_output_tokens, rate_duration_ms)
    SELECT day, provider, model, outcome, bucket, sum(requests), sum(rate_output_tokens),
        sum(rate_duration_ms)
    FROM token_usage_latency_daily
    WHERE NOT EXISTS (SELECT 1 FROM token_usage_latency_daily_all)
    GROUP BY 1, 2, 3, 4, 5;
