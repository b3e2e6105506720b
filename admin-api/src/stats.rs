//! `GET /api/v1/stats`: totals for a window of UTC days, from the rollups
//! without users (per tenant, or over every tenant for a platform caller who
//! names none; migration 0008), on one connection with the statements
//! pipelined.
//!
//! Needs `activity:read` or `tokens:read` (or `admin`); the `activity` section is
//! present only with `activity:read`/`admin`, the `tokens` section only with
//! `tokens:read`/`admin` (the other is `null`).

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use chrono::{Days, NaiveDate, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use deadpool_postgres::Transaction;

use crate::aggregates::{ACTIVITY, TOKENS};
use crate::auth::{Caller, SCOPE_ACTIVITY_READ, SCOPE_TOKENS_READ};
use crate::error::ApiError;
use crate::params::{non_empty, pairs, Params};
use crate::AppState;

/// The query parameters `GET /api/v1/stats` accepts.
pub const PARAMETERS: &[&str] = &["tenant", "from", "to"];
/// Default window: the last 7 UTC days, today included.
pub const DEFAULT_DAYS: u64 = 7;
/// Longest window, in days.
pub const MAX_DAYS: i64 = 366;
/// How many actions `top_actions` lists.
pub const TOP_ACTIONS: i64 = 10;

const TOKEN_MEASURES: &[&str] = &[
    "requests",
    "unknown_usage_requests",
    "unpriced_requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_tokens",
];

/// The response.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// First day of the window.
    pub from: String,
    /// Day after the window (exclusive).
    pub to: String,
    pub tenant_id: Option<String>,
    pub activity: Option<Value>,
    pub tokens: Option<Value>,
}

fn may(caller: &Caller, scope: &str) -> bool {
    caller.require_scope(scope).is_ok()
}

/// `GET /api/v1/stats`.
pub(crate) async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<Stats>, ApiError> {
    let activity_allowed = may(&caller, SCOPE_ACTIVITY_READ);
    let tokens_allowed = may(&caller, SCOPE_TOKENS_READ);
    if !activity_allowed && !tokens_allowed {
        return Err(ApiError::Forbidden(
            "this token lacks the activity:read and tokens:read scopes".to_owned(),
        ));
    }
    let pairs = pairs(&uri)?;
    let params = Params::new(&pairs, PARAMETERS)?;
    let tenant = caller.tenant_filter(params.text("tenant")?)?;
    // A `self:read` caller: its own user's rows (the per-user rollups).
    let user = caller.user_filter(None)?;
    let user = user.as_deref();
    let (from, to) = params.day_range()?;
    let today = Utc::now().date_naive();
    let to = match to {
        Some(to) => to,
        None => today.succ_opt().unwrap_or(today),
    };
    let from = match from {
        Some(from) => from,
        None => to.checked_sub_days(Days::new(DEFAULT_DAYS)).unwrap_or(to),
    };
    if from > to {
        return Err(ApiError::invalid("from", "must not be after to"));
    }
    if (to - from).num_days() > MAX_DAYS {
        return Err(ApiError::invalid(
            "from",
            format!("the window is longer than {MAX_DAYS} days"),
        ));
    }
    // One connection, the statements pipelined on it (sent together, answered
    // in order), instead of one checkout and round trip per statement.
    // One snapshot for every statement (see `params::snapshot`).
    let mut client = state.reads.get_for(&caller.tenant).await?;
    let tx = crate::params::snapshot(&mut client).await?;
    let (activity, tokens) = futures::try_join!(
        async {
            match activity_allowed {
                true => activity_section(&tx, tenant.as_deref(), user, from, to)
                    .await
                    .map(Some),
                false => Ok(None),
            }
        },
        async {
            match tokens_allowed {
                true => tokens_section(&tx, tenant.as_deref(), user, from, to)
                    .await
                    .map(Some),
                false => Ok(None),
            }
        },
    )?;
    tx.commit().await.map_err(ApiError::from_db)?;
    Ok(Json(Stats {
        from: from.to_string(),
        to: to.to_string(),
        tenant_id: tenant,
        activity,
        tokens,
    }))
}

/// `WHERE day >= $1 AND day < $2 [AND tenant_id = $3 [AND user_id = $4]]`
/// and its parameters (a user only with a tenant: `self:read` callers).
fn window(
    tenant: Option<&str>,
    user: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
) -> (&'static str, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(from), Box::new(to)];
    match (tenant, user) {
        (Some(tenant), Some(user)) => {
            params.push(Box::new(tenant.to_owned()));
            params.push(Box::new(user.to_owned()));
            (
                " WHERE day >= $1 AND day < $2 AND tenant_id = $3 AND user_id = $4",
                params,
            )
        }
        (Some(tenant), None) => {
            params.push(Box::new(tenant.to_owned()));
            (" WHERE day >= $1 AND day < $2 AND tenant_id = $3", params)
        }
        (None, _) => (" WHERE day >= $1 AND day < $2", params),
    }
}

/// Runs `sql` on the section's connection (prepared once per connection).
async fn run(
    client: &Transaction<'_>,
    sql: &str,
    params: &[Box<dyn ToSql + Sync + Send>],
) -> Result<Vec<Row>, ApiError> {
    crate::params::query_on(client, sql, params).await
}

fn int(row: &Row, column: &str) -> Result<i64, ApiError> {
    let value: Option<i64> = row.try_get(column).map_err(ApiError::from_db)?;
    Ok(value.unwrap_or(0))
}

fn float(row: &Row, column: &str) -> Result<Value, ApiError> {
    let value: Option<f64> = row.try_get(column).map_err(ApiError::from_db)?;
    Ok(serde_json::Number::from_f64(value.unwrap_or(0.0)).map_or(Value::Null, Value::Number))
}

/// The rollups a section reads: the per-tenant ones when a tenant is named,
/// else the ones over every tenant (only a platform caller gets here without
/// a tenant; migration 0008).
struct Tables {
    activity: &'static str,
    users_daily: &'static str,
    last_seen: &'static str,
    tokens: &'static str,
}

fn tables(tenant: Option<&str>, user: Option<&str>) -> Tables {
    match tenant {
        // One user's rows: the rollups that keep the user.
        Some(_) if user.is_some() => Tables {
            activity: "activity_daily",
            users_daily: "activity_users_daily",
            last_seen: "activity_user_last_seen",
            tokens: "token_usage_daily",
        },
        Some(_) => Tables {
            activity: "activity_daily_tenant",
            users_daily: "activity_users_daily",
            last_seen: "activity_user_last_seen",
            tokens: "token_usage_daily_tenant",
        },
        None => Tables {
            activity: "activity_daily_all",
            users_daily: "activity_users_daily_all",
            last_seen: "activity_user_last_seen_all",
            tokens: "token_usage_daily_all",
        },
    }
}

async fn activity_section(
    client: &Transaction<'_>,
    tenant: Option<&str>,
    user: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Value, ApiError> {
    let (w, params) = window(tenant, user, from, to);
    let t = tables(tenant, user);
    let same_tenant = if tenant.is_some() {
        " AND u.tenant_id = $3"
    } else {
        ""
    };
    let of_tenant = if tenant.is_some() {
        " AND tenant_id = $3"
    } else {
        ""
    };
    let live = ACTIVITY.live(t.activity, "$1", "$2");
    let tail = ACTIVITY.tail_of(&["tenant", "user"], "$1", "$2");
    // The users of the raw rows not folded yet; `tail_user_filter` keeps
    // those the rollups do not already count for the window (see below).
    let new_in_window = if tenant.is_some() {
        "NOT EXISTS (SELECT 1 FROM activity_user_last_seen AS l \
         WHERE l.tenant_id = $3 AND l.user_id = n.user_id AND l.last_seen >= $1)"
    } else {
        "NOT EXISTS (SELECT 1 FROM activity_user_last_seen_all AS l \
         WHERE l.user_id = n.user_id AND l.last_seen >= $1)"
    };
    // Distinct users of the window: when no user was seen on or after `to`,
    // they are exactly the users whose last day is on or after `from` (an
    // index range count) plus the users of the raw rows not folded yet who are
    // not among them; NULL otherwise (counted from activity_daily below).
    let users_sql = format!(
        "SELECT CASE WHEN coalesce((SELECT max(last_seen) FROM {ls} WHERE true{of_tenant}), \
             '-infinity'::date) < $2 \
         THEN (SELECT count(*) FROM {ls} WHERE last_seen >= $1{of_tenant}) \
            + (SELECT count(*) FROM (SELECT DISTINCT user_id FROM {tail}{w} AND user_id <> '') \
               AS n WHERE {new_in_window}) END AS active_users",
        ls = t.last_seen
    );
    let top_sql = format!(
        "SELECT action, sum(events)::int8 AS events FROM {live}{w} \
         GROUP BY action ORDER BY 2 DESC, 1 LIMIT {TOP_ACTIONS}"
    );
    // Each day's users: the rollup's count plus the tail's (day, user) pairs
    // that activity_daily does not hold yet.
    let same_day_user = if tenant.is_some() {
        "d.tenant_id = $3 AND d.day = n.day AND d.user_id = n.user_id"
    } else {
        "d.day = n.day AND d.user_id = n.user_id"
    };
    let days_sql = match user {
        // One user: active on the days it has events.
        Some(_) => format!(
            "SELECT day, sum(events)::int8 AS events, \
                 (count(DISTINCT user_id) FILTER (WHERE user_id <> ''))::int8 AS active_users \
             FROM {live}{w} GROUP BY day ORDER BY day"
        ),
        None => format!(
        "SELECT e.day, e.events, (coalesce(u.users, 0) + coalesce(n.users, 0))::int8 AS active_users \
         FROM (SELECT day, sum(events)::int8 AS events FROM {live}{w} GROUP BY day) AS e \
         LEFT JOIN {} AS u ON u.day = e.day{same_tenant} \
         LEFT JOIN (SELECT day, count(*) AS users FROM \
             (SELECT DISTINCT day, user_id FROM {tail}{w} AND user_id <> '') AS n \
             WHERE NOT EXISTS (SELECT 1 FROM activity_daily AS d WHERE {same_day_user}) \
             GROUP BY day) AS n ON n.day = e.day \
         ORDER BY e.day",
        t.users_daily
    ),
    };
    // The total is the sum of the days (one read of the tail fewer).
    let (users, top, days, as_of_seq) = futures::try_join!(
        async {
            match user {
                // Counted from activity_daily and the tail below.
                Some(_) => Ok(Vec::new()),
                None => run(client, &users_sql, &params).await,
            }
        },
        run(client, &top_sql, &params),
        run(client, &days_sql, &params),
        crate::params::newest_seq(client, "activity_events"),
    )?;
    let mut events = 0i64;
    for row in &days {
        events = events.saturating_add(int(row, "events")?);
    }
    let known: Option<i64> = match users.first() {
        Some(row) => row.try_get("active_users").map_err(ApiError::from_db)?,
        None => None,
    };
    let active_users = match known {
        Some(count) => count,
        None => {
            let rows = run(
                client,
                &format!(
                    "SELECT count(DISTINCT user_id) FILTER (WHERE user_id <> '') AS active_users \
                     FROM (SELECT user_id FROM activity_daily{w} \
                           UNION ALL SELECT user_id FROM {tail}{w}) AS u"
                ),
                &params,
            )
            .await?;
            match rows.first() {
                Some(row) => int(row, "active_users")?,
                None => 0,
            }
        }
    };
    let mut top_actions = Vec::with_capacity(top.len());
    for row in &top {
        let action: String = row.try_get("action").map_err(ApiError::from_db)?;
        top_actions.push(json!({ "action": action, "events": int(row, "events")? }));
    }
    let mut daily = Vec::with_capacity(days.len());
    for row in &days {
        let day: NaiveDate = row.try_get("day").map_err(ApiError::from_db)?;
        daily.push(json!({
            "day": day.to_string(),
            "events": int(row, "events")?,
            "active_users": int(row, "active_users")?,
        }));
    }
    Ok(json!({
        "as_of_seq": as_of_seq,
        "events": events,
        "active_users": active_users,
        "top_actions": top_actions,
        "daily": daily,
    }))
}

fn token_select() -> String {
    let mut columns: Vec<String> = TOKEN_MEASURES
        .iter()
        .map(|m| format!("sum({m})::int8 AS {m}"))
        .collect();
    columns.push("sum(cost_usd)::float8 AS cost_usd".to_owned());
    columns.join(", ")
}

fn token_measures(row: &Row, into: &mut Map<String, Value>) -> Result<(), ApiError> {
    for m in TOKEN_MEASURES {
        into.insert((*m).to_owned(), Value::from(int(row, m)?));
    }
    into.insert("cost_usd".to_owned(), float(row, "cost_usd")?);
    Ok(())
}

fn keyed_list(rows: &[Row], column: &str) -> Result<Value, ApiError> {
    let mut list = Vec::with_capacity(rows.len());
    for row in rows {
        let key: String = row.try_get(column).map_err(ApiError::from_db)?;
        let mut item = Map::new();
        item.insert(
            column.to_owned(),
            non_empty(key).map_or(Value::Null, Value::String),
        );
        token_measures(row, &mut item)?;
        list.push(Value::Object(item));
    }
    Ok(Value::Array(list))
}

async fn tokens_section(
    client: &Transaction<'_>,
    tenant: Option<&str>,
    user: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Value, ApiError> {
    let (w, params) = window(tenant, user, from, to);
    let table = TOKENS.live(tables(tenant, user).tokens, "$1", "$2");
    let select = token_select();
    let by = |column: &str| {
        format!(
            "SELECT {column}, {select} FROM {table}{w} \
             GROUP BY {column} ORDER BY total_tokens DESC, {column} LIMIT 1000"
        )
    };
    let totals_sql = format!("SELECT {select} FROM {table}{w}");
    let by_model_sql = by("model");
    let by_provider_sql = by("provider");
    let days_sql = format!("SELECT day, {select} FROM {table}{w} GROUP BY day ORDER BY day");
    let speed_sql = match user {
        Some(_) => own_speed_sql(w),
        None => speed_sql(tenant.is_some(), w),
    };
    let (totals, by_model, by_provider, days, as_of_seq, speed_rows) = futures::try_join!(
        run(client, &totals_sql, &params),
        run(client, &by_model_sql, &params),
        run(client, &by_provider_sql, &params),
        run(client, &days_sql, &params),
        crate::params::newest_seq(client, "token_usage"),
        run(client, &speed_sql, &params),
    )?;
    let mut histograms = Vec::with_capacity(speed_rows.len());
    for row in &speed_rows {
        histograms.push(HistogramRow {
            model: row.try_get("model").map_err(ApiError::from_db)?,
            bucket: row.try_get("bucket").map_err(ApiError::from_db)?,
            requests: int(row, "requests")?,
            failed: int(row, "failed")?,
            rate_output_tokens: int(row, "rate_output_tokens")?,
            rate_duration_ms: row
                .try_get::<_, Option<f64>>("rate_duration_ms")
                .map_err(ApiError::from_db)?
                .unwrap_or(0.0),
        });
    }
    let (overall, per_model) = speeds(&histograms);
    let mut section = Map::new();
    section.insert("as_of_seq".to_owned(), Value::from(as_of_seq));
    if let Some(row) = totals.first() {
        token_measures(row, &mut section)?;
    }
    overall.insert_into(&mut section);
    let mut by_model = keyed_list(&by_model, "model")?;
    for item in by_model.as_array_mut().into_iter().flatten() {
        if let Value::Object(item) = item {
            let model = item
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default();
            per_model
                .get(model)
                .cloned()
                .unwrap_or_default()
                .insert_into(item);
        }
    }
    section.insert("by_model".to_owned(), by_model);
    section.insert(
        "by_provider".to_owned(),
        keyed_list(&by_provider, "provider")?,
    );
    let mut daily = Vec::with_capacity(days.len());
    for row in &days {
        let day: NaiveDate = row.try_get("day").map_err(ApiError::from_db)?;
        let mut item = Map::new();
        item.insert("day".to_owned(), Value::String(day.to_string()));
        token_measures(row, &mut item)?;
        daily.push(Value::Object(item));
    }
    section.insert("daily".to_owned(), Value::Array(daily));
    Ok(Value::Object(section))
}

/// The calls of the window per model and duration bucket (migration 0017),
/// live like the other sums: the latency rollup plus the token rows not folded
/// yet, under the window `w`.
fn speed_sql(one_tenant: bool, w: &str) -> String {
    let (table, tenant_column) = if one_tenant {
        ("token_usage_latency_daily", "tenant_id, ")
    } else {
        ("token_usage_latency_daily_all", "")
    };
    let timed = "duration_ms > 0 AND output_tokens IS NOT NULL";
    format!(
        "SELECT model, bucket, sum(requests)::int8 AS requests, \
             coalesce(sum(requests) FILTER (WHERE outcome = 'failure'), 0)::int8 AS failed, \
             sum(rate_output_tokens)::int8 AS rate_output_tokens, \
             sum(rate_duration_ms)::float8 AS rate_duration_ms \
         FROM (SELECT day, {tenant_column}model, outcome, bucket, requests, rate_output_tokens, \
                   rate_duration_ms FROM {table} \
               UNION ALL \
               SELECT (ts AT TIME ZONE 'UTC')::date, {tenant_column}coalesce(model, ''), outcome, \
                   tally_duration_bucket(duration_ms), 1::int8, \
                   CASE WHEN {timed} THEN output_tokens ELSE 0 END, \
                   CASE WHEN {timed} THEN duration_ms ELSE 0 END \
               FROM token_usage WHERE seq > coalesce((SELECT last_seq FROM rollup_watermarks \
                   WHERE name = 'token_usage_daily'), 0) \
                 AND ts >= $1::date::timestamp AT TIME ZONE 'UTC' \
                 AND ts < $2::date::timestamp AT TIME ZONE 'UTC') AS live{w} \
         GROUP BY model, bucket"
    )
}

/// [`speed_sql`] for one user's calls (a `self:read` caller): the latency
/// rollups keep no user, so its token rows of the window are read as they are.
fn own_speed_sql(w: &str) -> String {
    let timed = "duration_ms > 0 AND output_tokens IS NOT NULL";
    format!(
        "SELECT model, bucket, count(*)::int8 AS requests, \
             count(*) FILTER (WHERE outcome = 'failure')::int8 AS failed, \
             sum(CASE WHEN {timed} THEN output_tokens ELSE 0 END)::int8 AS rate_output_tokens, \
             sum(CASE WHEN {timed} THEN duration_ms ELSE 0 END)::float8 AS rate_duration_ms \
         FROM (SELECT (ts AT TIME ZONE 'UTC')::date AS day, tenant_id, \
                   coalesce(user_id, '') AS user_id, coalesce(model, '') AS model, outcome, \
                   tally_duration_bucket(duration_ms) AS bucket, output_tokens, duration_ms \
               FROM token_usage \
               WHERE ts >= $1::date::timestamp AT TIME ZONE 'UTC' \
                 AND ts < $2::date::timestamp AT TIME ZONE 'UTC') AS own{w} \
         GROUP BY model, bucket"
    )
}

/// One row of [`speed_sql`].
#[derive(Debug, Clone)]
struct HistogramRow {
    model: String,
    /// -1: no duration; see [`bucket_ms`].
    bucket: i16,
    requests: i64,
    failed: i64,
    rate_output_tokens: i64,
    rate_duration_ms: f64,
}

/// Success rate, duration percentiles and output speed of a set of calls.
#[derive(Debug, Clone, Default, PartialEq)]
struct Speed {
    requests: i64,
    failed: i64,
    /// (bucket, calls) of the calls that reported a duration.
    histogram: Vec<(i16, i64)>,
    rate_output_tokens: i64,
    rate_duration_ms: f64,
}

/// The duration a bucket stands for, in ms: the geometric middle of
/// `[2^((b-1)/8), 2^(b/8))` (within 4.5% of any duration in it); 0.5 for
/// bucket 0 (`[0, 1)`).
fn bucket_ms(bucket: i16) -> f64 {
    if bucket <= 0 {
        0.5
    } else {
        2f64.powf((f64::from(bucket) - 0.5) / 8.0)
    }
}

impl Speed {
    fn add(&mut self, row: &HistogramRow) {
        self.requests += row.requests;
        self.failed += row.failed;
        self.rate_output_tokens += row.rate_output_tokens;
        self.rate_duration_ms += row.rate_duration_ms;
        if row.bucket >= 0 {
            match self.histogram.iter_mut().find(|(b, _)| *b == row.bucket) {
                Some((_, n)) => *n += row.requests,
                None => self.histogram.push((row.bucket, row.requests)),
            }
        }
    }

    /// The `p` quantile of the durations (nearest rank: the smallest duration
    /// at or under which at least `p` of the timed calls fall), as its bucket's
    /// middle; `None` without timed calls.
    fn percentile(&self, p: f64) -> Option<f64> {
        let mut histogram = self.histogram.clone();
        histogram.sort_unstable();
        let timed: i64 = histogram.iter().map(|(_, n)| n).sum();
        if timed <= 0 {
            return None;
        }
        let rank = (p * timed as f64).ceil().max(1.0) as i64;
        let mut seen = 0;
        for (bucket, n) in histogram {
            seen += n;
            if seen >= rank {
                return Some(round3(bucket_ms(bucket)));
            }
        }
        None
    }

    fn insert_into(&self, into: &mut Map<String, Value>) {
        let number = |v: Option<f64>| {
            v.and_then(serde_json::Number::from_f64)
                .map_or(Value::Null, Value::Number)
        };
        into.insert("failed_requests".to_owned(), Value::from(self.failed));
        into.insert(
            "success_rate".to_owned(),
            number(
                (self.requests > 0)
                    .then(|| (self.requests - self.failed) as f64 / self.requests as f64),
            ),
        );
        into.insert("duration_p50_ms".to_owned(), number(self.percentile(0.5)));
        into.insert("duration_p95_ms".to_owned(), number(self.percentile(0.95)));
        into.insert(
            "output_tokens_per_second".to_owned(),
            number((self.rate_duration_ms > 0.0).then(|| {
                round3(self.rate_output_tokens as f64 / (self.rate_duration_ms / 1000.0))
            })),
        );
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The speed of every call, and per model ('' = none).
fn speeds(rows: &[HistogramRow]) -> (Speed, std::collections::HashMap<String, Speed>) {
    let mut overall = Speed::default();
    let mut per_model: std::collections::HashMap<String, Speed> = Default::default();
    for row in rows {
        overall.add(row);
        per_model.entry(row.model.clone()).or_default().add(row);
    }
    (overall, per_model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, bucket: i16, requests: i64, failed: i64) -> HistogramRow {
        HistogramRow {
            model: model.to_owned(),
            bucket,
            requests,
            failed,
            rate_output_tokens: 0,
            rate_duration_ms: 0.0,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank_over_the_buckets() {
        // 100 ms is bucket floor(8 * log2(100)) + 1 = 54.
        let (overall, per_model) = speeds(&[
            row("a", 54, 90, 0),
            row("a", 80, 10, 5),
            row("a", -1, 20, 5),
            row("b", 0, 1, 0),
        ]);
        let a = &per_model["a"];
        let p50 = a.percentile(0.5).unwrap();
        assert!((p50 - 100.0).abs() / 100.0 < 0.045, "{p50}");
        // The 95th of 100 timed calls is in the slow bucket.
        let p95 = a.percentile(0.95).unwrap();
        assert!((p95 - 2f64.powf(79.5 / 8.0)).abs() < 0.01, "{p95}");
        assert_eq!(per_model["b"].percentile(0.5), Some(0.5));
        assert_eq!(Speed::default().percentile(0.5), None);
        assert_eq!(overall.requests, 121);
        let mut item = Map::new();
        a.insert_into(&mut item);
        assert_eq!(item["failed_requests"], 10);
        assert_eq!(item["success_rate"].as_f64(), Some(110.0 / 120.0));
        assert_eq!(item["output_tokens_per_second"], Value::Null);
    }

    #[test]
    fn output_speed_is_tokens_over_the_timed_seconds() {
        let mut speed = Speed::default();
        speed.add(&HistogramRow {
            model: String::new(),
            bucket: 70,
            requests: 2,
            failed: 0,
            rate_output_tokens: 300,
            rate_duration_ms: 1500.0,
        });
        let mut item = Map::new();
        speed.insert_into(&mut item);
        assert_eq!(item["output_tokens_per_second"].as_f64(), Some(200.0));
        assert_eq!(item["success_rate"].as_f64(), Some(1.0));
    }
}
