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

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::sse::Event;
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::hub::{ClientSlot, Table};
use super::{max_seq, sse_response, stream_caller, until_closed, until_credential_ends};
use crate::caller::{TenantAccess, SCOPE_ACTIVITY_READ, SCOPE_TOKENS_READ};
use crate::error::ApiError;
use crate::params::{pairs, Params};
use crate::rows::format_ts;
use crate::state::AppState;

/// Summary period.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Most groups (action classes, models) listed per summary.
pub const MAX_GROUPS: usize = 50;

/// Query parameters of `/stats/stream`.
pub const PARAMETERS: &[&str] = &["tenant", "access_token"];

#[derive(Debug, Clone, Copy)]
struct Position {
    activity: Option<i64>,
    tokens: Option<i64>,
}

/// What one shared poll computes: the rows it may see, the tenant filter, and
/// which sections (by the caller's scopes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PollKey {
    rows_of: TenantAccess,
    tenant: Option<String>,
    activity: bool,
    tokens: bool,
}

/// Summaries kept for a client that falls behind (beyond, it skips some).
const SUMMARY_BUFFER: usize = 8;

/// One poll per distinct [`PollKey`], shared by every client of that key: one
/// pool connection a second per key, not per client. A poll stops at the first
/// tick without clients.
#[derive(Default)]
pub(crate) struct Polls {
    running: Mutex<HashMap<PollKey, broadcast::Sender<Arc<str>>>>,
}

impl Polls {
    /// The summaries of `key`'s poll, starting it if none runs (from the
    /// newest rows, read before this answers, so a row committed after the
    /// client's response started is counted).
    async fn subscribe(
        self: &Arc<Self>,
        app: &AppState,
        key: PollKey,
    ) -> Result<broadcast::Receiver<Arc<str>>, ApiError> {
        if let Some(sender) = self.lock().get(&key) {
            return Ok(sender.subscribe());
        }
        let position = start_position(app, &key).await?;
        let mut running = self.lock();
        if let Some(sender) = running.get(&key) {
            return Ok(sender.subscribe());
        }
        let (sender, receiver) = broadcast::channel(SUMMARY_BUFFER);
        running.insert(key.clone(), sender.clone());
        tokio::spawn(poll(self.clone(), app.clone(), key, position, sender));
        Ok(receiver)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PollKey, broadcast::Sender<Arc<str>>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The shared poll of `key`: a summary a second while anyone listens.
async fn poll(
    polls: Arc<Polls>,
    app: AppState,
    key: PollKey,
    mut position: Position,
    sender: broadcast::Sender<Arc<str>>,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + PERIOD, PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    let closed = app.hub.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut closed => break,
        }
        {
            let mut running = polls.lock();
            if sender.receiver_count() == 0 {
                running.remove(&key);
                return;
            }
        }
        let now = Instant::now();
        let elapsed = now.duration_since(last_tick).as_secs_f64().max(0.001);
        match summary(
            &app,
            &key.rows_of,
            key.tenant.as_deref(),
            &mut position,
            elapsed,
        )
        .await
        {
            Ok(data) => {
                last_tick = now;
                let _ = sender.send(Arc::from(data.to_string()));
            }
            // Counted at the next successful tick (positions did not move).
            Err(error) => tracing::warn!(%error, "stats stream: query failed"),
        }
    }
    polls.lock().remove(&key);
}

/// The newest `seq` of each section `key` wants.
async fn start_position(app: &AppState, key: &PollKey) -> Result<Position, ApiError> {
    Ok(Position {
        activity: match key.activity {
            true => Some(max_seq(app, Table::Activity).await?),
            false => None,
        },
        tokens: match key.tokens {
            true => Some(max_seq(app, Table::Tokens).await?),
            false => None,
        },
    })
}

/// `GET /api/v1/stats/stream`.
pub(crate) async fn stats_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let pairs = pairs(&uri)?;
    let (caller, watch) = stream_caller(&state, &headers, &pairs).await?;
    let params = Params::new_brief(&pairs, PARAMETERS)?;
    let activity = caller.require_scope(SCOPE_ACTIVITY_READ).is_ok();
    let tokens = caller.require_scope(SCOPE_TOKENS_READ).is_ok();
    if !activity && !tokens {
        caller.require_scope(SCOPE_ACTIVITY_READ)?;
    }
    let tenant = caller.tenant_filter(params.text("tenant")?)?;
    let key = PollKey {
        rows_of: caller.tenant.clone(),
        tenant,
        activity,
        tokens,
    };
    let slot = state.hub.join()?;
    let heartbeat = state.hub.settings.heartbeat;
    let closed = state.hub.closed();
    let summaries = state.stats_polls.subscribe(&state, key).await?;
    let first = Event::default().comment("tally stats stream");
    let stream = futures::stream::unfold(
        (Some(first), summaries, slot),
        |(first, mut summaries, slot): (
            Option<Event>,
            broadcast::Receiver<Arc<str>>,
            ClientSlot,
        )| async move {
            if let Some(first) = first {
                return Some((Ok::<Event, Infallible>(first), (None, summaries, slot)));
            }
            loop {
                match summaries.recv().await {
                    Ok(data) => {
                        let event = Event::default().event("stats").data(&*data);
                        return Some((Ok(event), (None, summaries, slot)));
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::debug!(skipped, "stats stream: a slow client skipped summaries");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
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
    // A `self:read` caller: its own user's rows (the database's policies
    // say so too).
    let user = match rows_of {
        TenantAccess::OwnRows { user, .. } => Some(user.as_str()),
        _ => None,
    };
    let tenant_clause = match (tenant, user) {
        (Some(_), Some(_)) => " AND tenant_id = $2 AND user_id = $3",
        (Some(_), None) => " AND tenant_id = $2",
        (None, _) => "",
    };
    let tenant_param = tenant.map(str::to_owned);
    let user_param = user.map(str::to_owned);
    let mut out = Map::new();
    out.insert("ts".into(), json!(format_ts(chrono::Utc::now())));
    out.insert("interval_secs".into(), json!(elapsed));

    if let Some(after) = position.activity {
        let sql = format!(
            "SELECT split_part(action, '.', 1) AS class, count(*) AS n, max(seq) AS last \
             FROM activity_events WHERE seq > $1{tenant_clause} GROUP BY 1"
        );
        let rows = match (&tenant_param, &user_param) {
            (Some(tenant), Some(user)) => client.query(&sql, &[&after, tenant, user]).await,
            (Some(tenant), None) => client.query(&sql, &[&after, tenant]).await,
            (None, _) => client.query(&sql, &[&after]).await,
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
        let rows = match (&tenant_param, &user_param) {
            (Some(tenant), Some(user)) => client.query(&sql, &[&after, tenant, user]).await,
            (Some(tenant), None) => client.query(&sql, &[&after, tenant]).await,
            (None, _) => client.query(&sql, &[&after]).await,
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
