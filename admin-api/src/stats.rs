//! `GET /api/v1/stats`: totals for a window of UTC days, from the rollups
//! without users (per tenant, or over every tenant for a platform caller who
//! names none; migration 0008) plus the raw rows they have not folded yet, on
//! one connection and in one snapshot with the statements pipelined.
//!
//! Each section is one statement that reads its raw table's unfolded tail
//! once (a materialized, grouped CTE) and answers every grouping of the section
//! from it and the rollups (`GROUPING SETS`), instead of one read of the tail
//! per grouping: the tail is the part of the answer whose cost grows with the
//! ingest rate. The statements are bound to the snapshot's watermarks and
//! oldest unfolded days and planned for them (see `crate::live`), so the tail
//! reads only the partitions that can hold it.
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
use crate::caller::{Caller, SCOPE_ACTIVITY_READ, SCOPE_TOKENS_READ};
use crate::error::ApiError;
use crate::live::Snapshot;
use crate::params::{non_empty, pairs, Params};
use crate::state::AppState;
use crate::tailcache::TailCache;

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
    /// The tenant the figures are of (`None`: every tenant the caller sees).
    pub tenant_id: Option<String>,
    /// The activity section.
    pub activity: Option<Value>,
    /// The token section.
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
    let live = crate::live::Snapshot::for_answer(&tx, tenant.is_some()).await?;
    let cache = state.tail_cache.as_ref();
    let (activity, tokens) = futures::try_join!(
        async {
            match activity_allowed {
                true => activity_section(&tx, &live, cache, tenant.as_deref(), user, from, to)
                    .await
                    .map(Some),
                false => Ok(None),
            }
        },
        async {
            match tokens_allowed {
                true => tokens_section(&tx, &live, cache, tenant.as_deref(), user, from, to)
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

/// Runs `sql` on the section's connection, bound to the snapshot's tails and
/// planned for them (see `crate::live`).
async fn run(
    client: &Transaction<'_>,
    live: &Snapshot,
    sql: &str,
    params: &[Box<dyn ToSql + Sync + Send>],
) -> Result<Vec<Row>, ApiError> {
    crate::live::query(client, live, sql, params).await
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

/// The `GROUPING(day, action)` of the per-day rows of [`activity_sql`].
const ACTIVITY_DAY: i32 = 1;
/// The `GROUPING(day, action)` of the per-action rows.
const ACTIVITY_ACTION: i32 = 2;
/// The row with the window's distinct users.
const ACTIVITY_USERS: i32 = 3;

/// The activity section in one statement, so that the raw rows not folded yet
/// are read once per request (`tail`, grouped per day, user and action) and
/// then summed per day and per action together with the rollup (`GROUPING
/// SETS`), and counted for the distinct users. Rows: `part` (see the
/// constants above), `day`, `action`, `events`, `users`, `rank` (of an
/// action, by events).
///
/// `cached`: the tail comes from the in-memory tail (`crate::tailcache`, only
/// for every tenant and no user) as parameters `$3`–`$8` (see
/// `ActivityView::parameters`) instead of being read from `activity_events`.
fn activity_sql(tenant: Option<&str>, user: Option<&str>, w: &str, cached: bool) -> String {
    let cached = cached && tenant.is_none() && user.is_none();
    let t = tables(tenant, user);
    let mut of_tail = String::new();
    if tenant.is_some() {
        of_tail.push_str(" AND tenant_id = $3");
    }
    if user.is_some() {
        of_tail.push_str(" AND coalesce(user_id, '') = $4");
    }
    let tail = match cached {
        true => "SELECT day, action, events \
                 FROM unnest($3::date[], $4::text[], $5::int8[]) AS t (day, action, events)"
            .to_owned(),
        false => ACTIVITY.tail_groups(
            &["user", "action"],
            &[],
            &[],
            (Some("$1"), Some("$2")),
            &of_tail,
        ),
    };
    let of_tenant = if tenant.is_some() {
        " AND tenant_id = $3"
    } else {
        ""
    };
    // The window's distinct users seen in the rollups since `from`, with the
    // tail's users: one hashed set; cached, the tail users the rollups do not
    // count since `from` are counted in memory.
    let window_users = match cached {
        true => format!(
            "((SELECT count(*) FROM {ls} WHERE last_seen >= $1{of_tenant}) + $8)",
            ls = t.last_seen
        ),
        false => format!(
            "(SELECT count(*) FROM (SELECT user_id FROM {ls} \
                   WHERE last_seen >= $1{of_tenant} \
                   UNION SELECT user_id FROM tail WHERE user_id <> '') AS n)",
            ls = t.last_seen
        ),
    };
    let same_tenant = if tenant.is_some() {
        " AND u.tenant_id = $3"
    } else {
        ""
    };
    // Each day's users: the rollup's count plus the tail's (day, user) pairs
    // that activity_daily does not hold yet.
    let same_day_user = if tenant.is_some() {
        "d.tenant_id = $3 AND d.day = n.day AND d.user_id = n.user_id"
    } else {
        "d.day = n.day AND d.user_id = n.user_id"
    };
    let (users_of_day, users_join, users_row) = match user {
        // One user: active on the days it has events (counted by the caller).
        Some(_) => ("0::int8".to_owned(), String::new(), String::new()),
        None => (
            "(coalesce(u.users, 0) + coalesce(p.users, 0))::int8".to_owned(),
            format!(
                " LEFT JOIN {} AS u ON s.g = {ACTIVITY_DAY} AND u.day = s.day{same_tenant} \
                 LEFT JOIN new_pairs AS p ON s.g = {ACTIVITY_DAY} AND p.day = s.day",
                t.users_daily
            ),
            // Distinct users of the window: when no user was seen on or after
            // `to`, they are exactly the users whose last day is on or after
            // `from` (an index range) together with the tail's users, counted
            // as one hashed set (a probe per tail user cost far more); NULL
            // otherwise (counted by `fallback_users_sql`).
            format!(
                " UNION ALL SELECT {ACTIVITY_USERS}, NULL::date, NULL::text, NULL::int8, \
                     CASE WHEN coalesce((SELECT max(last_seen) FROM {ls} WHERE true{of_tenant}), \
                         '-infinity'::date) < $2 \
                     THEN {window_users} END::int8, \
                     NULL::int8",
                ls = t.last_seen
            ),
        ),
    };
    let new_pairs = match user {
        Some(_) => String::new(),
        None if cached => ", new_pairs AS (SELECT day, users \
             FROM unnest($6::date[], $7::int8[]) AS p (day, users))"
            .to_owned(),
        None => format!(
            ", new_pairs AS (SELECT n.day, count(*) AS users \
             FROM (SELECT DISTINCT day, user_id FROM tail WHERE user_id <> '') AS n \
             WHERE NOT EXISTS (SELECT 1 FROM activity_daily AS d WHERE {same_day_user}) \
             GROUP BY n.day)"
        ),
    };
    format!(
        "WITH tail AS MATERIALIZED ({tail}), \
         live AS (SELECT day, action, events FROM {rollup}{w} \
             UNION ALL SELECT day, action, events FROM tail), \
         sums AS (SELECT GROUPING(day, action) AS g, day, action, sum(events)::int8 AS events, \
             row_number() OVER (PARTITION BY GROUPING(day, action) \
                 ORDER BY sum(events) DESC, action) AS rank \
             FROM live GROUP BY GROUPING SETS ((day), (action))){new_pairs} \
         SELECT s.g AS part, s.day, s.action, s.events, {users_of_day} AS users, s.rank \
         FROM sums AS s{users_join} \
         WHERE s.g = {ACTIVITY_DAY} OR s.rank <= {TOP_ACTIONS}{users_row} \
         ORDER BY part, day, rank",
        rollup = t.activity
    )
}

/// The distinct users of a window that ends before some user's last day
/// (the fast count of [`activity_sql`] does not apply): counted over
/// activity_daily and the tail.
fn fallback_users_sql(tenant: Option<&str>, w: &str) -> String {
    let of_tail = if tenant.is_some() {
        " AND tenant_id = $3"
    } else {
        ""
    };
    let tail = ACTIVITY.tail_groups(&["user"], &[], &[], (Some("$1"), Some("$2")), of_tail);
    format!(
        "SELECT count(DISTINCT user_id) FILTER (WHERE user_id <> '') AS active_users \
         FROM (SELECT user_id FROM activity_daily{w} \
               UNION ALL SELECT user_id FROM ({tail}) AS tail) AS u"
    )
}

async fn activity_section(
    client: &Transaction<'_>,
    live: &Snapshot,
    cache: &TailCache,
    tenant: Option<&str>,
    user: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Value, ApiError> {
    let (w, params) = window(tenant, user, from, to);
    // Over every tenant: the tail grouped in memory when it can answer.
    let cached = match (tenant, user) {
        (None, None) => cache.activity(client, from, to).await?,
        _ => None,
    };
    let (rows, as_of_seq) = match &cached {
        Some(view) => {
            let sql = activity_sql(tenant, user, w, true);
            let mut all = window(tenant, user, from, to).1;
            all.extend(view.parameters());
            let rows = crate::params::query_on(client, &sql, &all).await?;
            (rows, view.high)
        }
        None => {
            let sql = activity_sql(tenant, user, w, false);
            futures::try_join!(
                run(client, live, &sql, &params),
                crate::params::newest_seq(client, "activity_events"),
            )?
        }
    };
    // A self:read caller's user counts on the days it has events.
    let own = match user {
        Some(user) if !user.is_empty() => 1,
        _ => 0,
    };
    let mut events = 0i64;
    let mut known: Option<i64> = None;
    let mut top_actions = Vec::new();
    let mut daily = Vec::new();
    for row in &rows {
        let part: i32 = row.try_get("part").map_err(ApiError::from_db)?;
        match part {
            ACTIVITY_DAY => {
                let day: NaiveDate = row.try_get("day").map_err(ApiError::from_db)?;
                let day_events = int(row, "events")?;
                // The total is the sum of the days.
                events = events.saturating_add(day_events);
                let users = match user {
                    Some(_) => own,
                    None => int(row, "users")?,
                };
                daily.push(json!({
                    "day": day.to_string(),
                    "events": day_events,
                    "active_users": users,
                }));
            }
            ACTIVITY_ACTION => {
                let action: String = row.try_get("action").map_err(ApiError::from_db)?;
                top_actions.push(json!({ "action": action, "events": int(row, "events")? }));
            }
            _ => known = row.try_get("users").map_err(ApiError::from_db)?,
        }
    }
    let active_users = match (user, known) {
        (Some(_), _) => {
            if daily.is_empty() {
                0
            } else {
                own
            }
        }
        (None, Some(count)) => count,
        (None, None) => {
            let rows = run(client, live, &fallback_users_sql(tenant, w), &params).await?;
            match rows.first() {
                Some(row) => int(row, "active_users")?,
                None => 0,
            }
        }
    };
    Ok(json!({
        "as_of_seq": as_of_seq,
        "events": events,
        "active_users": active_users,
        "top_actions": top_actions,
        "daily": daily,
    }))
}

/// `GROUPING(day, provider, model)` of the rows of [`tokens_sql`]: the
/// window's totals, per day, per provider, per model; and the speed rows.
const TOKENS_TOTAL: i32 = 7;
const TOKENS_DAY: i32 = 3;
const TOKENS_PROVIDER: i32 = 5;
const TOKENS_MODEL: i32 = 6;
const TOKENS_SPEED: i32 = 8;
/// The time-to-first-token histogram rows (migration 0025).
const TOKENS_TTFT: i32 = 9;
/// The output speed histogram rows (migration 0026).
const TOKENS_RATE: i32 = 10;
/// Most models and providers listed (the largest by total tokens).
const MAX_KEYED: i64 = 1000;

/// `gs` of the tail's grouping sets in [`tokens_sql`]: by day, provider,
/// model, outcome and duration bucket; by model and time-to-first-token
/// bucket; by model and output speed bucket.
const TAIL_SUMS: i32 = crate::tailcache::GS_SUMS;
const TAIL_TTFT: i32 = crate::tailcache::GS_TTFT;
const TAIL_RATE: i32 = crate::tailcache::GS_SPEED;

/// The calls that count for output speed.
const TIMED: &str = "duration_ms > 0 AND output_tokens IS NOT NULL";

/// The tokens section in one statement: the token rows not folded yet are
/// read once (`tail`, grouped per day, provider, model, outcome and duration
/// bucket, and per model and time-to-first-token or output speed bucket: three
/// grouping sets, see `TAIL_SUMS`) and summed with
/// the rollup for the totals, the days, the providers and the models
/// (`GROUPING SETS`), with the latency rollup for the speed (migration 0017),
/// with the time-to-first-token rollup for its percentiles (migration 0025)
/// and with the output speed rollup for the per-call speed percentiles
/// (migration 0026; none of them for one user, whose speed `own_speed_sql`
/// reads). Rows: `part` (see the constants above), `day`, `key` (provider or
/// model), `bucket` (the duration bucket, or the TTFT bucket of the TTFT rows,
/// or the speed bucket of the speed rows), the measures, `failed`,
/// `rate_output_tokens`, `rate_duration_ms`, in part, day and rank order.
///
/// `cached`: the tail comes from the in-memory tail (`crate::tailcache`, only
/// for every tenant and no user) as parameters `$3`–`$22` (see
/// `TokenView::parameters`) instead of being read from `token_usage`.
fn tokens_sql(tenant: Option<&str>, user: Option<&str>, w: &str, cached: bool) -> String {
    let cached = cached && tenant.is_none() && user.is_none();
    let mut of_tail = String::new();
    if tenant.is_some() {
        of_tail.push_str(" AND tenant_id = $3");
    }
    if user.is_some() {
        of_tail.push_str(" AND coalesce(user_id, '') = $4");
    }
    let rate_output =
        format!("sum(CASE WHEN {TIMED} THEN output_tokens ELSE 0 END) AS rate_output_tokens");
    let rate_duration =
        format!("sum(CASE WHEN {TIMED} THEN duration_ms ELSE 0 END) AS rate_duration_ms");
    // Three grouping sets, told apart by `gs` (TAIL_*): the sums and
    // durations per (day, provider, model, outcome, duration bucket), the
    // time-to-first-token histogram per model and the output speed histogram
    // per model. One set of every key would multiply the histograms' buckets
    // together (a group for nearly every tail row).
    let gs = "GROUPING(tally_duration_bucket(duration_ms), \
        tally_duration_bucket(time_to_first_token_ms), \
        tally_speed_bucket(output_tokens, duration_ms)) AS gs";
    let tail = match cached {
        true => cached_token_tail(),
        false => TOKENS.tail_grouping_sets(
            &["provider", "model"],
            &[
                "outcome",
                "tally_duration_bucket(duration_ms) AS bucket",
                "tally_duration_bucket(time_to_first_token_ms) AS ttft_bucket",
                "tally_speed_bucket(output_tokens, duration_ms) AS speed_bucket",
            ],
            &[&rate_output, &rate_duration, gs],
            (Some("$1"), Some("$2")),
            &of_tail,
            // 1 day, 2 provider, 3 model, 4 outcome, 5 bucket, 6 ttft, 7 speed.
            &[&[1, 2, 3, 4, 5], &[3, 6], &[3, 7]],
        ),
    };
    let measures = TOKENS.measure_columns();
    let sums = TOKENS.measure_sums();
    // The speed rows hold `requests` and leave the other measures NULL.
    let nulls: Vec<&str> = TOKEN_MEASURES
        .iter()
        .skip(1)
        .map(|_| "NULL::int8")
        .collect();
    let nulls = nulls.join(", ");
    // One histogram section per model (calls per bucket, `-1`: not reported,
    // left out) from a bucket rollup and the tail's grouping set `tail_set`.
    let histogram = |section: i32, bucket: &str, rollup: &str, tail_set: i32| {
        format!(
            "UNION ALL SELECT {section}, NULL::date, model, {bucket}, NULL::int8, \
                 sum(requests)::int8, {nulls}, NULL::float8, NULL::int8, NULL::int8, \
                 NULL::float8 \
             FROM (SELECT model, {bucket}, requests FROM {rollup}{w} \
                   UNION ALL SELECT model, {bucket}, requests FROM tail \
                       WHERE gs = {tail_set}) AS h \
             WHERE {bucket} >= 0 \
             GROUP BY model, {bucket}"
        )
    };
    let speed = match user {
        Some(_) => String::new(),
        None => {
            let (latency, ttft, rate) = if tenant.is_some() {
                (
                    "token_usage_latency_daily",
                    "token_usage_ttft_daily",
                    "token_usage_speed_daily",
                )
            } else {
                (
                    "token_usage_latency_daily_all",
                    "token_usage_ttft_daily_all",
                    "token_usage_speed_daily_all",
                )
            };
            format!(
                " UNION ALL SELECT {TOKENS_SPEED}, NULL::date, model, bucket, NULL::int8, \
                     sum(requests)::int8, {nulls}, NULL::float8, \
                     coalesce(sum(requests) FILTER (WHERE outcome = 'failure'), 0)::int8, \
                     sum(rate_output_tokens)::int8, sum(rate_duration_ms)::float8 \
                 FROM (SELECT model, outcome, bucket, requests, rate_output_tokens, rate_duration_ms \
                       FROM {latency}{w} \
                       UNION ALL SELECT model, outcome, bucket, requests, rate_output_tokens, \
                           rate_duration_ms FROM tail WHERE gs = {latency_set}) AS l \
                 GROUP BY model, bucket \
                 {ttft_histogram} {rate_histogram}",
                latency_set = if cached {
                    crate::tailcache::GS_LATENCY
                } else {
                    TAIL_SUMS
                },
                ttft_histogram = histogram(TOKENS_TTFT, "ttft_bucket", ttft, TAIL_TTFT),
                rate_histogram = histogram(TOKENS_RATE, "speed_bucket", rate, TAIL_RATE),
            )
        }
    };
    format!(
        "WITH tail AS MATERIALIZED ({tail}), \
         sums AS (SELECT GROUPING(day, provider, model) AS g, day, provider, model, {sums}, \
             row_number() OVER (PARTITION BY GROUPING(day, provider, model) \
                 ORDER BY sum(total_tokens) DESC, provider, model) AS rank \
             FROM (SELECT day, provider, model, {measures} FROM {rollup}{w} \
                   UNION ALL SELECT day, provider, model, {measures} FROM tail \
                       WHERE gs = {TAIL_SUMS}) AS live \
             GROUP BY GROUPING SETS ((), (day), (provider), (model))) \
         SELECT g AS part, day, CASE g WHEN {TOKENS_PROVIDER} THEN provider \
                 WHEN {TOKENS_MODEL} THEN model END AS key, NULL::int2 AS bucket, rank, \
             {measures}, NULL::int8 AS failed, NULL::int8 AS rate_output_tokens, \
             NULL::float8 AS rate_duration_ms \
         FROM sums WHERE g IN ({TOKENS_TOTAL}, {TOKENS_DAY}) OR rank <= {MAX_KEYED}{speed} \
         ORDER BY part, day, rank",
        rollup = tables(tenant, user).tokens
    )
}

/// The grouped tail of [`tokens_sql`] from the in-memory tail's columns
/// (parameters `$3`–`$22`, see `TokenView::parameters`).
fn cached_token_tail() -> String {
    let counts: Vec<String> = TOKEN_MEASURES
        .iter()
        .enumerate()
        .map(|(i, _)| format!("${}::int8[]", 10 + i))
        .collect();
    let next = 10 + TOKEN_MEASURES.len();
    format!(
        "SELECT day, provider, model, outcome, bucket, ttft_bucket, speed_bucket, {measures}, \
             cost::numeric AS cost_usd, rate_output_tokens, rate_duration_ms, gs \
         FROM unnest($3::date[], $4::text[], $5::text[], $6::text[], $7::int2[], $8::int2[], \
             $9::int2[], {counts}, ${c}::text[], ${o}::int8[], ${d}::float8[], ${g}::int4[]) \
             AS t (day, provider, model, outcome, bucket, ttft_bucket, speed_bucket, {measures}, \
                 cost, rate_output_tokens, rate_duration_ms, gs)",
        measures = TOKEN_MEASURES.join(", "),
        counts = counts.join(", "),
        c = next,
        o = next + 1,
        d = next + 2,
        g = next + 3,
    )
}

fn token_measures(row: &Row, into: &mut Map<String, Value>) -> Result<(), ApiError> {
    for m in TOKEN_MEASURES {
        into.insert((*m).to_owned(), Value::from(int(row, m)?));
    }
    into.insert("cost_usd".to_owned(), float(row, "cost_usd")?);
    Ok(())
}

/// One `by_model` / `by_provider` item.
fn keyed_item(row: &Row, column: &str) -> Result<Map<String, Value>, ApiError> {
    let key: Option<String> = row.try_get("key").map_err(ApiError::from_db)?;
    let mut item = Map::new();
    item.insert(
        column.to_owned(),
        key.and_then(non_empty).map_or(Value::Null, Value::String),
    );
    token_measures(row, &mut item)?;
    Ok(item)
}

async fn tokens_section(
    client: &Transaction<'_>,
    live: &Snapshot,
    cache: &TailCache,
    tenant: Option<&str>,
    user: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Value, ApiError> {
    let (w, params) = window(tenant, user, from, to);
    // Over every tenant: the tail grouped in memory when it can answer.
    let cached = match (tenant, user) {
        (None, None) => cache.tokens(client, from, to).await?,
        _ => None,
    };
    let own_speed = user.map(|_| own_speed_sql(w));
    let (rows, as_of_seq, own_speed_rows) = futures::try_join!(
        async {
            match &cached {
                Some(view) => {
                    let sql = tokens_sql(tenant, user, w, true);
                    let mut all = window(tenant, user, from, to).1;
                    all.extend(view.parameters());
                    crate::params::query_on(client, &sql, &all).await
                }
                None => run(client, live, &tokens_sql(tenant, user, w, false), &params).await,
            }
        },
        async {
            match &cached {
                Some(view) => Ok(view.high),
                None => crate::params::newest_seq(client, "token_usage").await,
            }
        },
        async {
            match &own_speed {
                Some(sql) => run(client, live, sql, &params).await,
                None => Ok(Vec::new()),
            }
        },
    )?;
    let mut section = Map::new();
    section.insert("as_of_seq".to_owned(), Value::from(as_of_seq));
    let mut by_model = Vec::new();
    let mut by_provider = Vec::new();
    let mut daily = Vec::new();
    let mut histograms = Vec::new();
    let histogram_row =
        |row: &Row, model: String, kind: Histogram| -> Result<HistogramRow, ApiError> {
            Ok(HistogramRow {
                model,
                kind,
                bucket: row.try_get("bucket").map_err(ApiError::from_db)?,
                requests: int(row, "requests")?,
                failed: int(row, "failed")?,
                rate_output_tokens: int(row, "rate_output_tokens")?,
                rate_duration_ms: row
                    .try_get::<_, Option<f64>>("rate_duration_ms")
                    .map_err(ApiError::from_db)?
                    .unwrap_or(0.0),
            })
        };
    for row in &rows {
        let part: i32 = row.try_get("part").map_err(ApiError::from_db)?;
        match part {
            TOKENS_TOTAL => token_measures(row, &mut section)?,
            TOKENS_DAY => {
                let day: NaiveDate = row.try_get("day").map_err(ApiError::from_db)?;
                let mut item = Map::new();
                item.insert("day".to_owned(), Value::String(day.to_string()));
                token_measures(row, &mut item)?;
                daily.push(Value::Object(item));
            }
            TOKENS_PROVIDER => by_provider.push(Value::Object(keyed_item(row, "provider")?)),
            TOKENS_MODEL => by_model.push(keyed_item(row, "model")?),
            TOKENS_SPEED => {
                let model: Option<String> = row.try_get("key").map_err(ApiError::from_db)?;
                histograms.push(histogram_row(
                    row,
                    model.unwrap_or_default(),
                    Histogram::Duration,
                )?);
            }
            TOKENS_TTFT => {
                let model: Option<String> = row.try_get("key").map_err(ApiError::from_db)?;
                histograms.push(histogram_row(
                    row,
                    model.unwrap_or_default(),
                    Histogram::FirstToken,
                )?);
            }
            TOKENS_RATE => {
                let model: Option<String> = row.try_get("key").map_err(ApiError::from_db)?;
                histograms.push(histogram_row(
                    row,
                    model.unwrap_or_default(),
                    Histogram::OutputSpeed,
                )?);
            }
            _ => {}
        }
    }
    for row in &own_speed_rows {
        let model: String = row.try_get("model").map_err(ApiError::from_db)?;
        let kind: i32 = row.try_get("kind").map_err(ApiError::from_db)?;
        let kind = match kind {
            TOKENS_TTFT => Histogram::FirstToken,
            TOKENS_RATE => Histogram::OutputSpeed,
            _ => Histogram::Duration,
        };
        histograms.push(histogram_row(row, model, kind)?);
    }
    if !section.contains_key("requests") {
        // No row at all in the window: every total is 0.
        for m in TOKEN_MEASURES {
            section.insert((*m).to_owned(), Value::from(0));
        }
        section.insert("cost_usd".to_owned(), Value::from(0.0));
    }
    let (overall, per_model) = speeds(&histograms);
    overall.insert_into(&mut section);
    for item in &mut by_model {
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
    section.insert(
        "by_model".to_owned(),
        Value::Array(by_model.into_iter().map(Value::Object).collect()),
    );
    section.insert("by_provider".to_owned(), Value::Array(by_provider));
    section.insert("daily".to_owned(), Value::Array(daily));
    Ok(Value::Object(section))
}

/// The speed of one user's calls (a `self:read` caller): the latency,
/// time-to-first-token and output speed rollups keep no user, so its token
/// rows of the window are read as they are. Rows: `kind` [`TOKENS_SPEED`] (the
/// duration histogram), [`TOKENS_TTFT`] (the time-to-first-token one, of its
/// calls that reported one) or [`TOKENS_RATE`] (the output speed one, of its
/// calls that count for speed).
fn own_speed_sql(w: &str) -> String {
    let timed = "duration_ms > 0 AND output_tokens IS NOT NULL";
    format!(
        "SELECT model, CASE WHEN GROUPING(bucket) = 0 THEN bucket \
                 WHEN GROUPING(ttft_bucket) = 0 THEN ttft_bucket ELSE speed_bucket END AS bucket, \
             CASE WHEN GROUPING(bucket) = 0 THEN {TOKENS_SPEED} \
                 WHEN GROUPING(ttft_bucket) = 0 THEN {TOKENS_TTFT} ELSE {TOKENS_RATE} END AS kind, \
             count(*)::int8 AS requests, \
             count(*) FILTER (WHERE outcome = 'failure')::int8 AS failed, \
             sum(CASE WHEN {timed} THEN output_tokens ELSE 0 END)::int8 AS rate_output_tokens, \
             sum(CASE WHEN {timed} THEN duration_ms ELSE 0 END)::float8 AS rate_duration_ms \
         FROM (SELECT (ts AT TIME ZONE 'UTC')::date AS day, tenant_id, \
                   coalesce(user_id, '') AS user_id, coalesce(model, '') AS model, outcome, \
                   tally_duration_bucket(duration_ms) AS bucket, \
                   tally_duration_bucket(time_to_first_token_ms) AS ttft_bucket, \
                   tally_speed_bucket(output_tokens, duration_ms) AS speed_bucket, \
                   output_tokens, duration_ms \
               FROM token_usage \
               WHERE ts >= $1::date::timestamp AT TIME ZONE 'UTC' \
                 AND ts < $2::date::timestamp AT TIME ZONE 'UTC') AS own{w} \
         GROUP BY GROUPING SETS ((model, bucket), (model, ttft_bucket), (model, speed_bucket)) \
         HAVING GROUPING(bucket) = 0 OR (GROUPING(ttft_bucket) = 0 AND ttft_bucket >= 0) \
             OR (GROUPING(speed_bucket) = 0 AND speed_bucket >= 0)"
    )
}

/// Which histogram a [`HistogramRow`] is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Histogram {
    /// Call durations (with the calls, failures and speed sums).
    Duration,
    /// Times to first token (only `requests` and `bucket` count).
    FirstToken,
    /// Each call's output tokens per second (only `requests` and `bucket`
    /// count).
    OutputSpeed,
}

/// One row of [`tokens_sql`]'s or [`own_speed_sql`]'s histograms.
#[derive(Debug, Clone)]
struct HistogramRow {
    model: String,
    kind: Histogram,
    /// -1: no duration (or no time to first token); see [`bucket_ms`].
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
    /// (bucket, calls) of the calls that reported a time to first token.
    ttft_histogram: Vec<(i16, i64)>,
    /// (bucket, calls) of the calls' output speeds (tokens per second).
    rate_histogram: Vec<(i16, i64)>,
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
        match row.kind {
            Histogram::FirstToken | Histogram::OutputSpeed => {
                if row.bucket >= 0 {
                    let histogram = if row.kind == Histogram::FirstToken {
                        &mut self.ttft_histogram
                    } else {
                        &mut self.rate_histogram
                    };
                    add_to(histogram, row.bucket, row.requests);
                }
                return;
            }
            Histogram::Duration => {}
        }
        self.requests += row.requests;
        self.failed += row.failed;
        self.rate_output_tokens += row.rate_output_tokens;
        self.rate_duration_ms += row.rate_duration_ms;
        if row.bucket >= 0 {
            add_to(&mut self.histogram, row.bucket, row.requests);
        }
    }

    /// The `p` quantile of the durations (nearest rank: the smallest duration
    /// at or under which at least `p` of the timed calls fall), as its bucket's
    /// middle; `None` without timed calls.
    fn percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.histogram, p)
    }

    /// The `p` quantile of the times to first token, as [`Speed::percentile`].
    fn ttft_percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.ttft_histogram, p)
    }

    /// The `p` quantile of the calls' output tokens per second (the buckets
    /// read in tokens per second), as [`Speed::percentile`].
    fn rate_percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.rate_histogram, p)
    }
}

fn add_to(histogram: &mut Vec<(i16, i64)>, bucket: i16, calls: i64) {
    match histogram.iter_mut().find(|(b, _)| *b == bucket) {
        Some((_, n)) => *n += calls,
        None => histogram.push((bucket, calls)),
    }
}

/// The `p` quantile (nearest rank) of a histogram of (bucket, calls), as its
/// bucket's middle; `None` when it holds no call.
fn percentile(histogram: &[(i16, i64)], p: f64) -> Option<f64> {
    let mut histogram = histogram.to_vec();
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

impl Speed {
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
            "time_to_first_token_p50_ms".to_owned(),
            number(self.ttft_percentile(0.5)),
        );
        into.insert(
            "time_to_first_token_p95_ms".to_owned(),
            number(self.ttft_percentile(0.95)),
        );
        into.insert(
            "output_tokens_per_second".to_owned(),
            number((self.rate_duration_ms > 0.0).then(|| {
                round3(self.rate_output_tokens as f64 / (self.rate_duration_ms / 1000.0))
            })),
        );
        into.insert(
            "output_tokens_per_second_p50".to_owned(),
            number(self.rate_percentile(0.5)),
        );
        into.insert(
            "output_tokens_per_second_p95".to_owned(),
            number(self.rate_percentile(0.95)),
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
            kind: Histogram::Duration,
            bucket,
            requests,
            failed,
            rate_output_tokens: 0,
            rate_duration_ms: 0.0,
        }
    }

    /// Each section reads its raw table's unfolded tail once per request,
    /// whoever asks (every tenant, one tenant, one user).
    #[test]
    fn each_section_reads_its_tail_once() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        for (tenant, user) in [(None, None), (Some("t"), None), (Some("t"), Some("u"))] {
            let (w, params) = window(tenant, user, day, day);
            let activity = activity_sql(tenant, user, w, false);
            let tokens = tokens_sql(tenant, user, w, false);
            if std::env::var_os("TALLY_PRINT_SQL").is_some() {
                println!(
                    "-- {tenant:?} {user:?} ({} parameters)\n{activity};\n{tokens};",
                    params.len()
                );
            }
            assert_eq!(
                activity.matches("FROM activity_events WHERE seq >").count(),
                1,
                "{activity}"
            );
            assert_eq!(activity.matches("token_usage").count(), 0, "{activity}");
            assert_eq!(
                tokens.matches("FROM token_usage WHERE seq >").count(),
                1,
                "{tokens}"
            );
            assert_eq!(
                tokens.contains("token_usage_latency"),
                user.is_none(),
                "{tokens}"
            );
            assert_eq!(
                tokens.contains("token_usage_ttft_daily"),
                user.is_none(),
                "{tokens}"
            );
            assert_eq!(
                tokens.contains("token_usage_speed_daily"),
                user.is_none(),
                "{tokens}"
            );
            // Every placeholder is bound, and no other.
            for (i, _) in params.iter().enumerate() {
                let placeholder = format!("${}", i + 1);
                assert!(activity.contains(&placeholder) && tokens.contains(&placeholder));
            }
            let next = format!("${}", params.len() + 1);
            assert!(!activity.contains(&next) && !tokens.contains(&next));
        }
    }

    /// With the in-memory tail, no statement reads a raw table, and the
    /// parameters are exactly the window's and the view's.
    #[test]
    fn cached_sections_read_no_raw_table() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let (w, params) = window(None, None, day, day);
        let activity = activity_sql(None, None, w, true);
        let tokens = tokens_sql(None, None, w, true);
        for sql in [&activity, &tokens] {
            assert!(!sql.contains("FROM activity_events"), "{sql}");
            assert!(!sql.contains("FROM token_usage "), "{sql}");
            assert!(!sql.contains("rollup_watermarks"), "{sql}");
        }
        let activity_last = params.len() + 6;
        assert!(
            activity.contains(&format!("${activity_last}")),
            "{activity}"
        );
        assert!(!activity.contains(&format!("${}", activity_last + 1)));
        let tokens_last = params.len() + crate::tailcache::TokenView::PARAMETERS;
        assert!(tokens.contains(&format!("${tokens_last}:")), "{tokens}");
        assert!(!tokens.contains(&format!("${}", tokens_last + 1)));
        // One tenant or one user: never the cached form.
        assert_eq!(
            activity_sql(Some("t"), None, w, true),
            activity_sql(Some("t"), None, w, false)
        );
        assert_eq!(
            tokens_sql(Some("t"), Some("u"), w, true),
            tokens_sql(Some("t"), Some("u"), w, false)
        );
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
            kind: Histogram::Duration,
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
        // No speed histogram row: no per-call percentiles.
        assert_eq!(item["output_tokens_per_second_p50"], Value::Null);
    }

    /// The per-call speed percentiles come from the speed histogram only, and
    /// its rows change neither the calls nor the durations.
    #[test]
    fn per_call_speed_percentiles_read_the_speed_buckets() {
        let speed_row = |model: &str, bucket: i16, requests: i64| HistogramRow {
            model: model.to_owned(),
            kind: Histogram::OutputSpeed,
            bucket,
            requests,
            failed: 0,
            rate_output_tokens: 0,
            rate_duration_ms: 0.0,
        };
        // 50 tokens/s is bucket floor(8 * log2(50)) + 1 = 46; 200 tokens/s 62.
        let (overall, per_model) = speeds(&[
            row("a", 54, 10, 1),
            speed_row("a", 46, 6),
            speed_row("a", 62, 4),
            speed_row("b", 62, 10),
            speed_row("b", -1, 3),
        ]);
        assert_eq!(overall.requests, 10);
        assert_eq!(overall.failed, 1);
        let p50 = per_model["a"].rate_percentile(0.5).expect("p50");
        assert!((p50 - 50.0).abs() / 50.0 < 0.045, "{p50}");
        let p95 = per_model["a"].rate_percentile(0.95).expect("p95");
        assert!((p95 - 200.0).abs() / 200.0 < 0.045, "{p95}");
        // Overall: 14 of 20 calls at ~200 tokens/s.
        let mut item = Map::new();
        overall.insert_into(&mut item);
        let p50 = item["output_tokens_per_second_p50"].as_f64().expect("p50");
        assert!((p50 - 200.0).abs() / 200.0 < 0.045, "{item:?}");
        assert_eq!(per_model["b"].requests, 0);
        assert_eq!(per_model["a"].percentile(0.5), overall.percentile(0.5));
    }
}
