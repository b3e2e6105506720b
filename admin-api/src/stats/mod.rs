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
use tally_model::tokens::TOKEN_COUNT_MEASURES as TOKEN_MEASURES;

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

mod activity;
mod speed;
#[cfg(test)]
mod tests;
mod tokens;

use self::activity::*;
pub(crate) use self::speed::HistogramRow;
use self::speed::*;
use self::tokens::*;
