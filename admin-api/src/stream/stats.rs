//! `GET /api/v1/stats/stream`: once a second, `event: stats` with a compact
//! summary of the rows committed since the previous one (counted by `seq`, so
//! every committed row is counted exactly once, whichever instance wrote it).
//!
//! ```json
//! {"ts":"2026-11-23T20:00:01.000000Z","interval_secs":1.0,
//!  "activity":{"events":12,"events_per_second":12.0,"by_class":{"auth":3,"doc":9},"last_seq":1042},
//!  "tokens":{"requests":2,"tokens":1830,"input_tokens":1500,"output_tokens":330,
//!            "tokens_per_second":1830.0,"by_model":{"gpt-4o":{"requests":2,"tokens":1830}},"last_seq":77}}
//! ```
//!
//! The action class is the action's first dot-separated segment (`auth` for
//! `auth.login`). `activity` needs scope `activity:read`, `tokens` needs
//! `tokens:read` (either section is left out without it; `admin` has both).
//! At most [`MAX_GROUPS`] classes and models are listed (the largest); the totals
//! count everything.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::sse::Event;
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::hub::{ClientSlot, Table};
use super::{
    max_seq, query_pairs, reject_unknown, single, sse_response, stream_caller, until_closed,
    until_credential_ends,
};
use crate::activity::format_ts;
use crate::auth::{TenantAccess, SCOPE_ACTIVITY_READ, SCOPE_TOKENS_READ};
use crate::error::ApiError;
use crate::AppState;

/// Summary period.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Most groups (action classes, models) listed per summary.
pub const MAX_GROUPS: usize = 50;

/// Query parameters of `/stats/stream`.
pub const PARAMETERS: &[&str] = &["tenant", "access_token"];

struct Position {
    activity: Option<i64>,
    tokens: Option<i64>,
}

struct StatsState {
    app: AppState,
    /// The caller's tenants: the rows the database lets this stream see.
    rows_of: TenantAccess,
    tenant: Option<String>,
    position: Position,
    ticker: tokio::time::Interval,
    last_tick: Instant,
    first: Option<Event>,
    _slot: ClientSlot,
}

/// `GET /api/v1/stats/stream`.
pub(crate) async fn stats_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(&uri)?;
    let (caller, watch) = stream_caller(&state, &headers, &pairs).await?;
    reject_unknown(&pairs, PARAMETERS)?;
    let activity = caller.require_scope(SCOPE_ACTIVITY_READ).is_ok();
    let tokens = caller.require_scope(SCOPE_TOKENS_READ).is_ok();
    if !activity && !tokens {
        caller.require_scope(SCOPE_ACTIVITY_READ)?;
    }
    let tenant = caller.tenant_filter(single(&pairs, "tenant")?.map(str::to_owned))?;
    let position = Position {
        activity: match activity {
            true => Some(max_seq(&state, Table::Activity).await?),
            false => None,
        },
        tokens: match tokens {
            true => Some(max_seq(&state, Table::Tokens).await?),
            false => None,
        },
    };
    let slot = state.hub.join()?;
    let heartbeat = state.hub.settings.heartbeat;
    let closed = state.hub.closed();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + PERIOD, PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream_state = StatsState {
        app: state,
        rows_of: caller.tenant.clone(),
        tenant,
        position,
        ticker,
        last_tick: Instant::now(),
        first: Some(Event::default().comment("tally stats stream")),
        _slot: slot,
    };
    let stream = futures::stream::unfold(stream_state, |mut state| async move {
        if let Some(first) = state.first.take() {
            return Some((Ok::<Event, Infallible>(first), state));
        }
        loop {
            state.ticker.tick().await;
            let now = Instant::now();
            let elapsed = now.duration_since(state.last_tick).as_secs_f64().max(0.001);
            match summary(
                &state.app,
                &state.rows_of,
                state.tenant.as_deref(),
                &mut state.position,
                elapsed,
            )
            .await
            {
                Ok(data) => {
                    state.last_tick = now;
                    let event = Event::default().event("stats").data(data.to_string());
                    return Some((Ok(event), state));
                }
                Err(error) => {
                    // Counted at the next successful tick (positions did not move).
                    tracing::warn!(%error, "stats stream: query failed");
                }
            }
        }
    });
    let stream = until_closed(until_credential_ends(stream, watch), closed);
    Ok(sse_response(stream, heartbeat))
}

fn top(groups: Vec<(String, Value, i64)>) -> Value {
    let mut groups = groups;
    groups.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    groups.truncate(MAX_GROUPS);
    let map: Map<String, Value> = groups.into_iter().map(|(k, v, _)| (k, v)).collect();
    Value::Object(map)
}

async fn summary(
    app: &AppState,
    rows_of: &TenantAccess,
    tenant: Option<&str>,
    position: &mut Position,
    elapsed: f64,
) -> Result<Value, ApiError> {
    let client = app.pool.get_for(rows_of).await?;
    let tenant_clause = if tenant.is_some() {
        " AND tenant_id = $2"
    } else {
        ""
    };
    let tenant_param = tenant.map(str::to_owned);
    let mut out = Map::new();
    out.insert("ts".into(), json!(format_ts(chrono::Utc::now())));
    out.insert("interval_secs".into(), json!(elapsed));

    if let Some(after) = position.activity {
        let sql = format!(
            "SELECT split_part(action, '.', 1) AS class, count(*) AS n, max(seq) AS last \
             FROM activity_events WHERE seq > $1{tenant_clause} GROUP BY 1"
        );
        let rows = match &tenant_param {
            Some(tenant) => client.query(&sql, &[&after, tenant]).await,
            None => client.query(&sql, &[&after]).await,
        }
        .map_err(ApiError::from_db)?;
        let mut total = 0i64;
        let mut last = after;
        let mut groups = Vec::with_capacity(rows.len());
        for row in &rows {
            let class: String = row.try_get("class").map_err(ApiError::from_db)?;
            let n: i64 = row.try_get("n").map_err(ApiError::from_db)?;
            let max: i64 = row.try_get("last").map_err(ApiError::from_db)?;
            total += n;
            last = last.max(max);
            groups.push((class, json!(n), n));
        }
        out.insert(
            "activity".into(),
            json!({
                "events": total,
                "events_per_second": total as f64 / elapsed,
                "by_class": top(groups),
                "last_seq": last,
            }),
        );
        position.activity = Some(last);
    }

    if let Some(after) = position.tokens {
        let sql = format!(
            "SELECT coalesce(model, '') AS model, count(*) AS n, \
             coalesce(sum(total_tokens), 0)::int8 AS total, \
             coalesce(sum(input_tokens), 0)::int8 AS input, \
             coalesce(sum(output_tokens), 0)::int8 AS output, max(seq) AS last \
             FROM token_usage WHERE seq > $1{tenant_clause} GROUP BY 1"
        );
        let rows = match &tenant_param {
            Some(tenant) => client.query(&sql, &[&after, tenant]).await,
            None => client.query(&sql, &[&after]).await,
        }
        .map_err(ApiError::from_db)?;
        let (mut requests, mut tokens, mut input, mut output) = (0i64, 0i64, 0i64, 0i64);
        let mut last = after;
        let mut groups = Vec::with_capacity(rows.len());
        for row in &rows {
            let model: String = row.try_get("model").map_err(ApiError::from_db)?;
            let n: i64 = row.try_get("n").map_err(ApiError::from_db)?;
            let total: i64 = row.try_get("total").map_err(ApiError::from_db)?;
            requests += n;
            tokens += total;
            input += row.try_get::<_, i64>("input").map_err(ApiError::from_db)?;
            output += row.try_get::<_, i64>("output").map_err(ApiError::from_db)?;
            last = last.max(row.try_get::<_, i64>("last").map_err(ApiError::from_db)?);
            groups.push((model, json!({ "requests": n, "tokens": total }), total));
        }
        out.insert(
            "tokens".into(),
            json!({
                "requests": requests,
                "tokens": tokens,
                "input_tokens": input,
                "output_tokens": output,
                "tokens_per_second": tokens as f64 / elapsed,
                "by_model": top(groups),
                "last_seq": last,
            }),
        );
        position.tokens = Some(last);
    }
    Ok(Value::Object(out))
}
