//! The daily rollups `activity_daily` and `token_usage_daily`, and the ones
//! derived from the same rows (migration 0008: without the user, without the
//! tenant, distinct users per day, each user's last day; migration 0029: per
//! tenant, user and ISO week), maintained incrementally and exactly once.
//!
//! One run of [`RollupJob::run_once`] is **one transaction**:
//!
//! 1. `pg_advisory_xact_lock(ROLLUP_LOCK_KEY)`: runs of several Tally instances
//!    on one database are serialised.
//! 2. Per rollup, the committed watermark `rollup_watermarks.last_seq` is read
//!    `FOR UPDATE`, an upper bound `S` is chosen (see below), the raw rows with
//!    `last_seq < seq <= S` are aggregated by `INSERT … SELECT … GROUP BY … ON
//!    CONFLICT DO UPDATE SET n = n + EXCLUDED.n` into every table of that
//!    rollup (one statement with one part per table), and the watermark
//!    becomes `S`.
//! 3. `COMMIT`.
//!
//! A crash, a killed connection or a dropped future anywhere before the commit
//! rolls everything back (rollup rows and watermark together), so every raw row
//! is folded exactly once.
//!
//! Choosing `S`: `seq` is commit-ordered (writers hold the table's advisory lock
//! from `nextval` until commit, or commit in the order of their reserved ranges
//! by ticket: `activity.rs`), so when the row with `seq = s` is
//! visible every row with a smaller `seq` is committed too. `S` is therefore the
//! largest visible `seq`, bounded to [`DEFAULT_MAX_ROWS_PER_RUN`] rows per run.
//! For `token_usage`, rows still waiting for their attribution
//! (`attribution_source = 'none'`) are folded only once they are older than the
//! attribution delay (default [`DEFAULT_ATTRIBUTION_DELAY`]): the ingest side may
//! fill in a row's tenant and user with an `UPDATE` when the request span that
//! carries them arrives after the LLM span. `S` is the end of the longest prefix
//! (in `seq` order) of unfolded rows that are either settled (attributed from
//! the record or already from the trace: never attributed again) or whose
//! `received_at` is before `now() - delay`, so one recent unattributed row
//! holds back every later one. Folding settled rows at once keeps the raw tail
//! that live answers read small. Exactness does not depend on the delay: a
//! row attributed or deleted after it was folded is moved or taken out of the
//! rollups in the same transaction (see [`TokenRefold`]); the delay only makes
//! that slower path rare.

use std::time::Duration;

use tally_model::tokens::TOKEN_MEASURES;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Transaction};

use super::periodic::spawn_periodically;
use super::PgError;

/// Advisory lock key serialising rollup runs (the bytes `tallyrol`).
pub const ROLLUP_LOCK_KEY: i64 = i64::from_be_bytes(*b"tallyrol");
/// Advisory lock key serialising [`unfold_token_rows`] callers (the bytes `tallyatt`).
pub const REATTRIBUTION_LOCK_KEY: i64 = i64::from_be_bytes(*b"tallyatt");
/// Default pause between two runs of the spawned job.
pub const DEFAULT_ROLLUP_INTERVAL: Duration = Duration::from_secs(60);
/// Default age a `token_usage` row must reach before it is folded (5 minutes:
/// the default trace-attribution window).
pub const DEFAULT_ATTRIBUTION_DELAY: Duration = Duration::from_secs(300);
/// Default upper bound of raw rows folded per table and run.
pub const DEFAULT_MAX_ROWS_PER_RUN: i64 = 100_000;

/// `rollup_watermarks.name` of the activity rollup.
pub const ACTIVITY_WATERMARK: &str = "activity_daily";
/// `rollup_watermarks.name` of the token rollup.
pub const TOKEN_WATERMARK: &str = "token_usage_daily";

/// Folds the raw `activity_events` rows `$1 < seq <= $2` into every activity
/// rollup, in one statement: all its parts read the same snapshot, so the
/// "first time this user is seen on this day" probes against `activity_daily`
/// see it as it was before this fold's inserts.
const FOLD_ACTIVITY_SQL: &str = "WITH batch AS MATERIALIZED ( \
        SELECT (ts AT TIME ZONE 'UTC')::date AS day, tenant_id, coalesce(user_id, '') AS user_id, \
            action, outcome, count(*) AS events \
        FROM activity_events WHERE seq > $1 AND seq <= $2 \
        GROUP BY 1, 2, 3, 4, 5), \
    user_days AS MATERIALIZED ( \
        SELECT DISTINCT day, tenant_id, user_id FROM batch WHERE user_id <> ''), \
    fine AS (INSERT INTO activity_daily (day, tenant_id, user_id, action, outcome, events) \
        SELECT day, tenant_id, user_id, action, outcome, events FROM batch \
        ON CONFLICT (tenant_id, day, user_id, action, outcome) \
        DO UPDATE SET events = activity_daily.events + EXCLUDED.events), \
    by_tenant AS (INSERT INTO activity_daily_tenant (day, tenant_id, action, outcome, events) \
        SELECT day, tenant_id, action, outcome, sum(events) FROM batch GROUP BY 1, 2, 3, 4 \
        ON CONFLICT (tenant_id, day, action, outcome) \
        DO UPDATE SET events = activity_daily_tenant.events + EXCLUDED.events), \
    by_all AS (INSERT INTO activity_daily_all (day, action, outcome, events) \
        SELECT day, action, outcome, sum(events) FROM batch GROUP BY 1, 2, 3 \
        ON CONFLICT (day, action, outcome) \
        DO UPDATE SET events = activity_daily_all.events + EXCLUDED.events), \
    users_tenant AS (INSERT INTO activity_users_daily (day, tenant_id, users) \
        SELECT day, tenant_id, count(*) FROM user_days AS u WHERE NOT EXISTS ( \
            SELECT 1 FROM activity_daily AS d \
            WHERE d.tenant_id = u.tenant_id AND d.day = u.day AND d.user_id = u.user_id) \
        GROUP BY 1, 2 \
        ON CONFLICT (tenant_id, day) \
        DO UPDATE SET users = activity_users_daily.users + EXCLUDED.users), \
    users_all AS (INSERT INTO activity_users_daily_all (day, users) \
        SELECT day, count(*) FROM (SELECT DISTINCT day, user_id FROM user_days) AS u \
        WHERE NOT EXISTS ( \
            SELECT 1 FROM activity_daily AS d WHERE d.user_id = u.user_id AND d.day = u.day) \
        GROUP BY 1 \
        ON CONFLICT (day) DO UPDATE SET users = activity_users_daily_all.users + EXCLUDED.users), \
    user_weekly AS (INSERT INTO activity_user_weekly (tenant_id, week, user_id, events) \
        SELECT tenant_id, date_trunc('week', day::timestamp)::date, user_id, sum(events) \
        FROM batch GROUP BY 1, 2, 3 \
        ON CONFLICT (tenant_id, user_id, week) \
        DO UPDATE SET events = activity_user_weekly.events + EXCLUDED.events), \
    seen AS (INSERT INTO activity_user_last_seen (tenant_id, user_id, last_seen) \
        SELECT tenant_id, user_id, max(day) FROM user_days GROUP BY 1, 2 \
        ON CONFLICT (tenant_id, user_id) DO UPDATE SET last_seen = EXCLUDED.last_seen \
        WHERE activity_user_last_seen.last_seen < EXCLUDED.last_seen), \
    seen_all AS (INSERT INTO activity_user_last_seen_all (user_id, last_seen) \
        SELECT user_id, max(day) FROM user_days GROUP BY 1 \
        ON CONFLICT (user_id) DO UPDATE SET last_seen = EXCLUDED.last_seen \
        WHERE activity_user_last_seen_all.last_seen < EXCLUDED.last_seen) \
    SELECT 1";

const TOKEN_SUMS: &str = "count(*) AS requests, \
        count(*) FILTER (WHERE NOT usage_known) AS unknown_usage_requests, \
        count(*) FILTER (WHERE usage_known AND cost_usd IS NULL) AS unpriced_requests, \
        coalesce(sum(input_tokens), 0) AS input_tokens, \
        coalesce(sum(output_tokens), 0) AS output_tokens, \
        coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens, \
        coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens, \
        coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens, \
        coalesce(sum(total_tokens), 0) AS total_tokens, \
        coalesce(sum(cost_usd), 0) AS cost_usd, \
        coalesce(sum(output_tokens) FILTER (WHERE duration_ms > 0 AND output_tokens IS NOT NULL), 0) \
            AS rate_output_tokens, \
        coalesce(sum(duration_ms) FILTER (WHERE duration_ms > 0 AND output_tokens IS NOT NULL), 0) \
            AS rate_duration_ms";

/// The batch's keys: every key of every token rollup (the latency rollups'
/// `outcome` and duration `bucket` too, migration 0017, and the time to first
/// token's `ttft_bucket`, migration 0025, and the output speed's
/// `speed_bucket`, migration 0026), and the week (its Monday) of the weekly
/// histograms (migration 0028).
const TOKEN_KEYS: &str = "(ts AT TIME ZONE 'UTC')::date AS day, tenant_id, \
        coalesce(user_id, '') AS user_id, coalesce(provider, '') AS provider, \
        coalesce(model, '') AS model, outcome, tally_duration_bucket(duration_ms) AS bucket, \
        tally_duration_bucket(time_to_first_token_ms) AS ttft_bucket, \
        tally_speed_bucket(output_tokens, duration_ms) AS speed_bucket, \
        date_trunc('week', ts AT TIME ZONE 'UTC')::date AS week";

/// The first day of a token row's period in a rollup whose first key is
/// `key` (`day`, or `week` for the weekly histograms of migration 0028).
fn period_of_ts(key: &str) -> &'static str {
    match key {
        "week" => "date_trunc('week', ts AT TIME ZONE 'UTC')::date",
        _ => "(ts AT TIME ZONE 'UTC')::date",
    }
}

/// The measures of the latency rollups (migration 0017): calls, and the
/// output tokens and durations of the calls that reported both.
const LATENCY_MEASURES: [&str; 3] = ["requests", "rate_output_tokens", "rate_duration_ms"];

/// The measure of the time-to-first-token rollups (migration 0025) and of the
/// output speed rollups (migration 0026): calls.
const TTFT_MEASURES: [&str; 1] = ["requests"];

/// The token rollups, their keys (each one's primary key) and measures: the
/// daily one per user, the ones derived from the same rows without the user
/// (`_tenant`) and without the tenant either (`_all`, migration 0008), the
/// duration histograms per outcome (migration 0017) and the time-to-first-token
/// histograms (migration 0025) and the output speed histograms (migration
/// 0026), and the latency and output speed histograms over every tenant by
/// ISO week (migration 0028: `/stats` reads a long window's whole weeks there),
/// and the per-user sums by ISO week (migration 0029: by-user pages read a
/// period's whole weeks there).
const TOKEN_ROLLUPS: [(&str, &[&str], &[&str]); 12] = [
    (
        "token_usage_daily",
        &["day", "tenant_id", "user_id", "provider", "model"],
        &TOKEN_MEASURES,
    ),
    (
        "token_usage_daily_tenant",
        &["day", "tenant_id", "provider", "model"],
        &TOKEN_MEASURES,
    ),
    (
        "token_usage_daily_all",
        &["day", "provider", "model"],
        &TOKEN_MEASURES,
    ),
    (
        "token_usage_latency_daily",
        &["day", "tenant_id", "provider", "model", "outcome", "bucket"],
        &LATENCY_MEASURES,
    ),
    (
        "token_usage_latency_daily_all",
        &["day", "provider", "model", "outcome", "bucket"],
        &LATENCY_MEASURES,
    ),
    (
        "token_usage_ttft_daily",
        &["day", "tenant_id", "provider", "model", "ttft_bucket"],
        &TTFT_MEASURES,
    ),
    (
        "token_usage_ttft_daily_all",
        &["day", "provider", "model", "ttft_bucket"],
        &TTFT_MEASURES,
    ),
    (
        "token_usage_speed_daily",
        &["day", "tenant_id", "provider", "model", "speed_bucket"],
        &TTFT_MEASURES,
    ),
    (
        "token_usage_speed_daily_all",
        &["day", "provider", "model", "speed_bucket"],
        &TTFT_MEASURES,
    ),
    (
        "token_usage_latency_weekly_all",
        &["week", "provider", "model", "outcome", "bucket"],
        &LATENCY_MEASURES,
    ),
    (
        "token_usage_speed_weekly_all",
        &["week", "provider", "model", "speed_bucket"],
        &TTFT_MEASURES,
    ),
    (
        "token_usage_user_weekly",
        &["week", "tenant_id", "user_id"],
        &TOKEN_MEASURES,
    ),
];

/// `WITH batch AS (… sums of the token_usage rows matching filter …)` followed
/// by one data-modifying part per token rollup built by `part(table, keys,
/// sums)`, where `sums` is a `SELECT` of the rollup's keys and measures.
fn token_statement(filter: &str, part: impl Fn(&str, &[&str], &[&str], &str) -> String) -> String {
    let mut parts = Vec::new();
    for (i, (table, keys, measures)) in TOKEN_ROLLUPS.iter().enumerate() {
        let key_list = keys.join(", ");
        let sums: Vec<String> = measures
            .iter()
            .map(|m| format!("sum({m}) AS {m}"))
            .collect();
        let select = format!(
            "SELECT {key_list}, {} FROM batch GROUP BY {key_list}",
            sums.join(", ")
        );
        parts.push(format!(
            "r{i} AS ({})",
            part(table, keys, measures, &select)
        ));
    }
    format!(
        "WITH batch AS MATERIALIZED (SELECT {TOKEN_KEYS}, {TOKEN_SUMS} FROM token_usage \
         WHERE {filter} GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10), {} SELECT 1",
        parts.join(", ")
    )
}

/// Adds the sums of the `token_usage` rows matching `filter` to every token
/// rollup (`INSERT … ON CONFLICT DO UPDATE`), in one statement.
fn fold_tokens_sql(filter: &str) -> String {
    token_statement(filter, |table, keys, measures, select| {
        let updates: Vec<String> = measures
            .iter()
            .map(|m| format!("{m} = {table}.{m} + EXCLUDED.{m}"))
            .collect();
        format!(
            "INSERT INTO {table} ({}, {}) {select} ON CONFLICT ({}) DO UPDATE SET {}",
            keys.join(", "),
            measures.join(", "),
            keys.join(", "),
            updates.join(", ")
        )
    })
}

/// Subtracts the sums of the rows matching `filter` from every token rollup.
fn unfold_tokens_sql(filter: &str) -> String {
    token_statement(filter, |table, keys, measures, select| {
        let updates: Vec<String> = measures
            .iter()
            .map(|m| format!("{m} = d.{m} - o.{m}"))
            .collect();
        let join: Vec<String> = keys.iter().map(|k| format!("d.{k} = o.{k}")).collect();
        format!(
            "UPDATE {table} AS d SET {} FROM ({select}) AS o WHERE {}",
            updates.join(", "),
            join.join(" AND ")
        )
    })
}

/// Rows of `token_usage` given by primary key (`$1` ts[], `$2` id[]), folded
/// (`seq <= $3`).
const FOLDED_ROWS: &str = "(ts, id) IN (SELECT * FROM unnest($1::timestamptz[], $2::uuid[])) \
    AND seq <= $3";

/// Changing the tenant or user of `token_usage` rows that may already be folded
/// into `token_usage_daily`: call [`unfold_token_rows`] before the `UPDATE` and
/// [`TokenRefold::refold`] after it, in the same transaction.
///
/// `unfold_token_rows` takes `FOR SHARE` on the token watermark (waiting for a
/// running rollup to commit, and keeping the next one from starting until this
/// transaction ends) and subtracts the rows' current contribution from the
/// rollup if they are at or below the watermark; `refold` adds their new
/// contribution back. The rollup then always equals the sums over the folded
/// rows' current values, whenever the attribution arrives. Callers are
/// serialised by [`REATTRIBUTION_LOCK_KEY`] until their transaction ends, so keep
/// these transactions short.
#[derive(Debug)]
#[must_use = "call refold after the UPDATE"]
pub struct TokenRefold {
    ts: Vec<chrono::DateTime<chrono::Utc>>,
    ids: Vec<uuid::Uuid>,
    watermark: i64,
}

/// See [`TokenRefold`]. `rows` are the `(ts, id)` primary keys of the rows about
/// to change.
pub async fn unfold_token_rows(
    tx: &Transaction<'_>,
    rows: &[(chrono::DateTime<chrono::Utc>, uuid::Uuid)],
) -> Result<TokenRefold, PgError> {
    // Re-attributions are rare: serialising them keeps two of them from
    // deadlocking on the same rollup groups.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&REATTRIBUTION_LOCK_KEY],
    )
    .await?;
    let watermark: i64 = tx
        .query_opt(
            "SELECT last_seq FROM rollup_watermarks WHERE name = $1 FOR SHARE",
            &[&TOKEN_WATERMARK],
        )
        .await?
        .map(|row| row.get(0))
        .unwrap_or(0);
    let refold = TokenRefold {
        ts: rows.iter().map(|(ts, _)| *ts).collect(),
        ids: rows.iter().map(|(_, id)| *id).collect(),
        watermark,
    };
    if !refold.ids.is_empty() {
        // Lock the rows first: a concurrent re-attribution of the same rows
        // commits before their current values are read (next statement).
        tx.execute(
            "SELECT 1 FROM token_usage WHERE (ts, id) IN \
             (SELECT * FROM unnest($1::timestamptz[], $2::uuid[])) ORDER BY ts, id FOR UPDATE",
            &[&refold.ts, &refold.ids],
        )
        .await?;
        tx.execute(
            &unfold_tokens_sql(FOLDED_ROWS),
            &[&refold.ts, &refold.ids, &refold.watermark],
        )
        .await?;
        for (table, keys, _) in TOKEN_ROLLUPS {
            let period = keys.first().copied().unwrap_or("day");
            tx.execute(
                &format!(
                    "DELETE FROM {table} WHERE requests = 0 AND {period} IN \
                     (SELECT DISTINCT {} FROM unnest($1::timestamptz[]) AS ts)",
                    period_of_ts(period)
                ),
                &[&refold.ts],
            )
            .await?;
        }
    }
    Ok(refold)
}

impl TokenRefold {
    /// Adds the rows' current values back into the rollup (see [`TokenRefold`]).
    pub async fn refold(self, tx: &Transaction<'_>) -> Result<(), PgError> {
        if !self.ids.is_empty() {
            tx.execute(
                &fold_tokens_sql(FOLDED_ROWS),
                &[&self.ts, &self.ids, &self.watermark],
            )
            .await?;
        }
        Ok(())
    }
}

/// What one run folded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupReport {
    /// `activity_daily` watermark before and after the run.
    pub activity_from_seq: i64,
    /// Watermark after the run.
    pub activity_to_seq: i64,
    /// Raw `activity_events` rows folded.
    pub activity_rows: u64,
    /// `token_usage_daily` watermark before and after the run.
    pub tokens_from_seq: i64,
    /// Watermark after the run.
    pub tokens_to_seq: i64,
    /// Raw `token_usage` rows folded.
    pub token_rows: u64,
}

impl RollupReport {
    /// Whether the run folded any raw row.
    pub fn folded_anything(&self) -> bool {
        self.activity_rows > 0 || self.token_rows > 0
    }
}

/// The rollup job. Cheap to clone; holds only its settings.
#[derive(Debug, Clone)]
pub struct RollupJob {
    attribution_delay: Duration,
    max_rows_per_run: i64,
}

impl Default for RollupJob {
    fn default() -> Self {
        RollupJob::new(DEFAULT_ATTRIBUTION_DELAY)
    }
}

impl RollupJob {
    /// A job folding `token_usage` rows once they are `attribution_delay` old
    /// (default [`DEFAULT_ATTRIBUTION_DELAY`]).
    pub fn new(attribution_delay: Duration) -> RollupJob {
        RollupJob {
            attribution_delay,
            max_rows_per_run: DEFAULT_MAX_ROWS_PER_RUN,
        }
    }

    /// Bounds the raw rows folded per table and run (at least 1; default
    /// [`DEFAULT_MAX_ROWS_PER_RUN`]).
    pub fn with_max_rows_per_run(mut self, rows: i64) -> RollupJob {
        self.max_rows_per_run = rows.max(1);
        self
    }

    /// Runs once: folds the new raw rows of both tables, in one transaction (see
    /// the module documentation). Blocks while another instance's run holds
    /// [`ROLLUP_LOCK_KEY`].
    pub async fn run_once(&self, client: &mut Client) -> Result<RollupReport, PgError> {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ROLLUP_LOCK_KEY])
            .await?;
        let mut report = RollupReport::default();

        let (from, to, rows) = self.fold_activity(&tx).await?;
        report.activity_from_seq = from;
        report.activity_to_seq = to;
        report.activity_rows = rows;

        let (from, to, rows) = self.fold_tokens(&tx).await?;
        report.tokens_from_seq = from;
        report.tokens_to_seq = to;
        report.token_rows = rows;

        tx.commit().await?;
        if report.folded_anything() {
            tracing::debug!(?report, "rollup run folded rows");
        }
        Ok(report)
    }

    async fn fold_activity(&self, tx: &Transaction<'_>) -> Result<(i64, i64, u64), PgError> {
        let from = watermark(tx, ACTIVITY_WATERMARK).await?;
        let upper: Option<i64> = tx
            .query_one(
                "SELECT max(seq) FROM (SELECT seq FROM activity_events WHERE seq > $1 \
                 ORDER BY seq LIMIT $2) AS next_rows",
                &[&from, &self.max_rows_per_run],
            )
            .await?
            .get(0);
        let Some(to) = upper else {
            return Ok((from, from, 0));
        };
        let rows: i64 = tx
            .query_one(
                "SELECT count(*) FROM activity_events WHERE seq > $1 AND seq <= $2",
                &[&from, &to],
            )
            .await?
            .get(0);
        tx.execute(FOLD_ACTIVITY_SQL, &[&from, &to]).await?;
        set_watermark(tx, ACTIVITY_WATERMARK, to).await?;
        Ok((from, to, u64::try_from(rows).unwrap_or(0)))
    }

    async fn fold_tokens(&self, tx: &Transaction<'_>) -> Result<(i64, i64, u64), PgError> {
        let from = watermark(tx, TOKEN_WATERMARK).await?;
        let delay_secs = self.attribution_delay.as_secs_f64();
        // The first unfolded row still inside the delay and still waiting for
        // its attribution bounds the prefix; it is searched among the rows
        // after the watermark (few, recent) through the seq index, so a clock
        // that steps back cannot let a young row through. Rows whose
        // attribution is settled (from the record itself or already from the
        // trace: only `none` rows are ever attributed later) do not wait.
        let upper: Option<i64> = tx
            .query_one(
                "WITH young AS ( \
                     SELECT min(seq) AS seq FROM token_usage \
                     WHERE seq > $1 AND received_at >= now() - make_interval(secs => $3) \
                       AND attribution_source = 'none') \
                 SELECT max(seq) FROM (SELECT t.seq FROM token_usage t, young \
                     WHERE t.seq > $1 AND (young.seq IS NULL OR t.seq < young.seq) \
                     ORDER BY t.seq LIMIT $2) AS next_rows",
                &[&from, &self.max_rows_per_run, &delay_secs],
            )
            .await?
            .get(0);
        let Some(to) = upper else {
            return Ok((from, from, 0));
        };
        let rows: i64 = tx
            .query_one(
                "SELECT count(*) FROM token_usage WHERE seq > $1 AND seq <= $2",
                &[&from, &to],
            )
            .await?
            .get(0);
        tx.execute(&fold_tokens_sql("seq > $1 AND seq <= $2"), &[&from, &to])
            .await?;
        set_watermark(tx, TOKEN_WATERMARK, to).await?;
        Ok((from, to, u64::try_from(rows).unwrap_or(0)))
    }

    /// Runs the job on its own connection to `url` every `interval` (default
    /// [`DEFAULT_ROLLUP_INTERVAL`]; immediately again while a run stops at its
    /// row bound) until `shutdown` becomes `true` or its sender is dropped.
    /// Failures (database down, a killed connection) are logged and retried
    /// with a fresh connection at the next tick; a run interrupted by shutdown
    /// is rolled back and loses nothing.
    pub fn spawn(
        self,
        url: String,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let job = self;
        let max_rows = u64::try_from(job.max_rows_per_run).unwrap_or(u64::MAX);
        spawn_periodically("rollup", url, interval, shutdown, move |client| {
            let job = job.clone();
            Box::pin(async move {
                let report = job.run_once(client).await?;
                record_lag(client).await?;
                // The shared trace identities live as long as the attribution window.
                super::trace_identities::prune_trace_identities(client, job.attribution_delay)
                    .await?;
                // Saturated: more rows are waiting, go again without pausing.
                Ok(report.activity_rows >= max_rows || report.token_rows >= max_rows)
            })
        })
    }
}

/// Sets `tally_rollup_lag_seq`: how far (in `seq`) the raw tables are ahead of
/// their rollup watermarks, summed over both tables. Token rows inside the
/// attribution delay count as lag too (they wait by design).
async fn record_lag(client: &tokio_postgres::Client) -> Result<(), PgError> {
    let lag: i64 = client
        .query_one(
            "SELECT greatest(coalesce((SELECT max(seq) FROM activity_events), 0) \
                 - (SELECT last_seq FROM rollup_watermarks WHERE name = $1), 0) \
              + greatest(coalesce((SELECT max(seq) FROM token_usage), 0) \
                 - (SELECT last_seq FROM rollup_watermarks WHERE name = $2), 0)",
            &[&ACTIVITY_WATERMARK, &TOKEN_WATERMARK],
        )
        .await?
        .try_get::<_, Option<i64>>(0)?
        .unwrap_or(0);
    crate::metrics::metrics().rollup_lag_seq.set(lag);
    Ok(())
}

/// The watermark of `name`, locked for this transaction.
async fn watermark(tx: &Transaction<'_>, name: &str) -> Result<i64, PgError> {
    let row = tx
        .query_opt(
            "SELECT last_seq FROM rollup_watermarks WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .await?;
    match row {
        Some(row) => Ok(row.get(0)),
        None => {
            // Only if someone deleted it: start from the beginning.
            tx.execute(
                "INSERT INTO rollup_watermarks (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                &[&name],
            )
            .await?;
            let row = tx
                .query_one(
                    "SELECT last_seq FROM rollup_watermarks WHERE name = $1 FOR UPDATE",
                    &[&name],
                )
                .await?;
            Ok(row.get(0))
        }
    }
}

async fn set_watermark(tx: &Transaction<'_>, name: &str, seq: i64) -> Result<(), PgError> {
    tx.execute(
        "UPDATE rollup_watermarks SET last_seq = $2, updated_at = now() WHERE name = $1",
        &[&name, &seq],
    )
    .await?;
    Ok(())
}
