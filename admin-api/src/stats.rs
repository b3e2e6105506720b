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
    let mut client = state.pool.get_for(&caller.tenant).await?;
    let tx = crate::params::snapshot(&mut client).await?;
    let (activity, tokens) = futures::try_join!(
        async {
            match activity_allowed {
                true => activity_section(&tx, tenant.as_deref(), from, to)
                    .await
                    .map(Some),
                false => Ok(None),
            }
        },
        async {
            match tokens_allowed {
                true => tokens_section(&tx, tenant.as_deref(), from, to)
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

/// `WHERE day >= $1 AND day < $2 [AND tenant_id = $3]` and its parameters.
fn window(
    tenant: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
) -> (&'static str, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(from), Box::new(to)];
    match tenant {
        Some(tenant) => {
            params.push(Box::new(tenant.to_owned()));
            (" WHERE day >= $1 AND day < $2 AND tenant_id = $3", params)
        }
        None => (" WHERE day >= $1 AND day < $2", params),
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

fn tables(tenant: Option<&str>) -> Tables {
    match tenant {
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
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Value, ApiError> {
    let (w, params) = window(tenant, from, to);
    let t = tables(tenant);
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
    let totals_sql = format!("SELECT sum(events)::int8 AS events FROM {live}{w}");
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
    let days_sql = format!(
        "SELECT e.day, e.events, (coalesce(u.users, 0) + coalesce(n.users, 0))::int8 AS active_users \
         FROM (SELECT day, sum(events)::int8 AS events FROM {live}{w} GROUP BY day) AS e \
         LEFT JOIN {} AS u ON u.day = e.day{same_tenant} \
         LEFT JOIN (SELECT day, count(*) AS users FROM \
             (SELECT DISTINCT day, user_id FROM {tail}{w} AND user_id <> '') AS n \
             WHERE NOT EXISTS (SELECT 1 FROM activity_daily AS d WHERE {same_day_user}) \
             GROUP BY day) AS n ON n.day = e.day \
         ORDER BY e.day",
        t.users_daily
    );
    let (totals, users, top, days, as_of_seq) = futures::try_join!(
        run(client, &totals_sql, &params),
        run(client, &users_sql, &params),
        run(client, &top_sql, &params),
        run(client, &days_sql, &params),
        crate::params::newest_seq(client, "activity_events"),
    )?;
    let events = match totals.first() {
        Some(row) => int(row, "events")?,
        None => 0,
    };
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
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Value, ApiError> {
    let (w, params) = window(tenant, from, to);
    let table = TOKENS.live(tables(tenant).tokens, "$1", "$2");
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
    let (totals, by_model, by_provider, days, as_of_seq) = futures::try_join!(
        run(client, &totals_sql, &params),
        run(client, &by_model_sql, &params),
        run(client, &by_provider_sql, &params),
        run(client, &days_sql, &params),
        crate::params::newest_seq(client, "token_usage"),
    )?;
    let mut section = Map::new();
    section.insert("as_of_seq".to_owned(), Value::from(as_of_seq));
    if let Some(row) = totals.first() {
        token_measures(row, &mut section)?;
    }
    section.insert("by_model".to_owned(), keyed_list(&by_model, "model")?);
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
