//! `GET /api/v1/stats`: totals for a window of UTC days, from the daily rollups.
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

use crate::auth::{Caller, TenantAccess, SCOPE_ACTIVITY_READ, SCOPE_TOKENS_READ};
use crate::error::ApiError;
use crate::params::{non_empty, pairs, query, Params, SqlBuilder};
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
    let activity = if activity_allowed {
        Some(activity_section(&state, &caller.tenant, tenant.as_deref(), from, to).await?)
    } else {
        None
    };
    let tokens = if tokens_allowed {
        Some(tokens_section(&state, &caller.tenant, tenant.as_deref(), from, to).await?)
    } else {
        None
    };
    Ok(Json(Stats {
        from: from.to_string(),
        to: to.to_string(),
        tenant_id: tenant,
        activity,
        tokens,
    }))
}

/// `WHERE day >= from AND day < to [AND tenant_id = tenant]`.
fn window(tenant: Option<&str>, from: NaiveDate, to: NaiveDate) -> SqlBuilder {
    let mut sql = SqlBuilder::default();
    sql.push("day >= ", from);
    sql.push("day < ", to);
    if let Some(tenant) = tenant {
        sql.push("tenant_id = ", tenant.to_owned());
    }
    sql
}

fn int(row: &Row, column: &str) -> Result<i64, ApiError> {
    let value: Option<i64> = row.try_get(column).map_err(ApiError::from_db)?;
    Ok(value.unwrap_or(0))
}

fn float(row: &Row, column: &str) -> Result<Value, ApiError> {
    let value: Option<f64> = row.try_get(column).map_err(ApiError::from_db)?;
    Ok(serde_json::Number::from_f64(value.unwrap_or(0.0)).map_or(Value::Null, Value::Number))
}

async fn activity_section(
    state: &AppState,
    rows_of: &TenantAccess,
    tenant: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Value, ApiError> {
    let sql = window(tenant, from, to);
    let w = sql.where_clause();
    let params = &sql.params;
    let totals = query(
        state,
        rows_of,
        &format!(
            "SELECT sum(events)::int8 AS events, \
             count(DISTINCT user_id) FILTER (WHERE user_id <> '') AS active_users \
             FROM activity_daily{w}"
        ),
        params,
    )
    .await?;
    let (events, active_users) = match totals.first() {
        Some(row) => (int(row, "events")?, int(row, "active_users")?),
        None => (0, 0),
    };
    let top = query(
        state,
        rows_of,
        &format!(
            "SELECT action, sum(events)::int8 AS events FROM activity_daily{w} \
             GROUP BY action ORDER BY 2 DESC, 1 LIMIT {TOP_ACTIONS}"
        ),
        params,
    )
    .await?;
    let mut top_actions = Vec::with_capacity(top.len());
    for row in &top {
        let action: String = row.try_get("action").map_err(ApiError::from_db)?;
        top_actions.push(json!({ "action": action, "events": int(row, "events")? }));
    }
    let days = query(
        state,
        rows_of,
        &format!(
            "SELECT day, sum(events)::int8 AS events, \
             count(DISTINCT user_id) FILTER (WHERE user_id <> '') AS active_users \
             FROM activity_daily{w} GROUP BY day ORDER BY day"
        ),
        params,
    )
    .await?;
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

async fn tokens_section(
    state: &AppState,
    rows_of: &TenantAccess,
    tenant: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Value, ApiError> {
    let sql = window(tenant, from, to);
    let w = sql.where_clause();
    let params: &[Box<dyn ToSql + Sync + Send>] = &sql.params;
    let select = token_select();
    let mut section = Map::new();
    let totals = query(
        state,
        rows_of,
        &format!("SELECT {select} FROM token_usage_daily{w}"),
        params,
    )
    .await?;
    if let Some(row) = totals.first() {
        token_measures(row, &mut section)?;
    }
    for (name, column) in [("by_model", "model"), ("by_provider", "provider")] {
        let rows = query(
            state,
            rows_of,
            &format!(
                "SELECT {column}, {select} FROM token_usage_daily{w} \
                 GROUP BY {column} ORDER BY total_tokens DESC, {column} LIMIT 1000"
            ),
            params,
        )
        .await?;
        let mut list = Vec::with_capacity(rows.len());
        for row in &rows {
            let key: String = row.try_get(column).map_err(ApiError::from_db)?;
            let mut item = Map::new();
            item.insert(
                column.to_owned(),
                non_empty(key).map_or(Value::Null, Value::String),
            );
            token_measures(row, &mut item)?;
            list.push(Value::Object(item));
        }
        section.insert(name.to_owned(), Value::Array(list));
    }
    let rows = query(
        state,
        rows_of,
        &format!("SELECT day, {select} FROM token_usage_daily{w} GROUP BY day ORDER BY day"),
        params,
    )
    .await?;
    let mut daily = Vec::with_capacity(rows.len());
    for row in &rows {
        let day: NaiveDate = row.try_get("day").map_err(ApiError::from_db)?;
        let mut item = Map::new();
        item.insert("day".to_owned(), Value::String(day.to_string()));
        token_measures(row, &mut item)?;
        daily.push(Value::Object(item));
    }
    section.insert("daily".to_owned(), Value::Array(daily));
    Ok(Value::Object(section))
}
