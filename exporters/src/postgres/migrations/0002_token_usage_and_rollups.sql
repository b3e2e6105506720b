-- Tally schema, version 2: the token-usage ledger and the daily rollups.
-- Applied by `tally migrate` and at start-up; every statement is idempotent.

CREATE SEQUENCE IF NOT EXISTS token_usage_seq AS bigint;

-- One row per LLM model call (inference: chat, text completion, embeddings, …).
-- Partitioned by day on `ts` like activity_events (token_usage_pYYYYMMDD).
-- `seq` is commit-ordered exactly like activity_events.seq: writers take the
-- advisory lock TOKEN_USAGE_LOCK_KEY (the bytes 'tallytok') before
-- nextval('token_usage_seq') and hold it until COMMIT. `received_at` is set with
-- clock_timestamp() under that lock, so it grows with `seq`.
-- The primary key is (ts, id), not (tenant_id, ts, id): a row's tenant and user may
-- be filled in after insert, when the request span that carries them arrives
-- after the LLM span (trace attribution), and a retried span must still dedupe.
-- Usage columns are NULL when the call reported no usage (`usage_known` false);
-- `cost_usd` is NULL when the model has no price (never priced as 0).
CREATE TABLE IF NOT EXISTS token_usage (
    id                 uuid        NOT NULL,
    seq                bigint      NOT NULL,
    ts                 timestamptz NOT NULL,
    received_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    tenant_id          text        NOT NULL DEFAULT '',
    user_id            text,
    session_id         text,
    service            text,
    trace_id           text,
    span_id            text,
    provider           text,
    operation          text,
    request_model      text,
    response_model     text,
    model              text,
    input_tokens       bigint,
    output_tokens      bigint,
    cache_read_tokens  bigint,
    cache_write_tokens bigint,
    reasoning_tokens   bigint,
    total_tokens       bigint,
    usage_known        boolean     NOT NULL DEFAULT true,
    cost_usd           numeric(20, 10),
    outcome            text        NOT NULL DEFAULT 'unknown'
                                   CHECK (outcome IN ('success', 'failure', 'unknown')),
    duration_ms        double precision,
    attribution_source text        NOT NULL DEFAULT 'none'
                                   CHECK (attribution_source IN ('record', 'trace', 'none')),
    attributes         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (ts, id)
) PARTITION BY RANGE (ts);

CREATE INDEX IF NOT EXISTS token_usage_seq_idx ON token_usage (seq);
CREATE INDEX IF NOT EXISTS token_usage_tenant_idx ON token_usage (tenant_id, ts);
CREATE INDEX IF NOT EXISTS token_usage_user_idx ON token_usage (user_id, ts);
CREATE INDEX IF NOT EXISTS token_usage_trace_idx ON token_usage (trace_id) WHERE trace_id IS NOT NULL;

-- Daily rollups (UTC days), maintained incrementally from the raw tables by the
-- rollup job, exactly once: each run folds the rows after its committed `seq`
-- watermark into the rollups and advances the watermark in the same transaction.
-- Missing identity values are '' so they can be part of the key.
CREATE TABLE IF NOT EXISTS activity_daily (
    day        date   NOT NULL,
    tenant_id  text   NOT NULL DEFAULT '',
    user_id    text   NOT NULL DEFAULT '',
    action     text   NOT NULL,
    outcome    text   NOT NULL,
    events     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, user_id, action, outcome)
);
CREATE INDEX IF NOT EXISTS activity_daily_day_idx ON activity_daily (day);

CREATE TABLE IF NOT EXISTS token_usage_daily (
    day                    date            NOT NULL,
    tenant_id              text            NOT NULL DEFAULT '',
    user_id                text            NOT NULL DEFAULT '',
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
    PRIMARY KEY (tenant_id, day, user_id, provider, model)
);
CREATE INDEX IF NOT EXISTS token_usage_daily_day_idx ON token_usage_daily (day);

-- Per rollup (name 'activity_daily' / 'token_usage_daily'): the last raw `seq` folded in.
CREATE TABLE IF NOT EXISTS rollup_watermarks (
    name       text        PRIMARY KEY,
    last_seq   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO rollup_watermarks (name) VALUES ('activity_daily'), ('token_usage_daily')
    ON CONFLICT (name) DO NOTHING;
