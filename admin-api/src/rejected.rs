//! `GET /api/v1/rejected` (the quarantine) and `POST /api/v1/rejected/replay`
//! (re-validate quarantined records against the current taxonomy and store the
//! ones that now pass, exactly once). Both need the `admin` scope and are
//! tenant-scoped like every route.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use tally_exporters::postgres::PgError;

use crate::caller::{Caller, SCOPE_ADMIN};
use crate::error::ApiError;
use crate::params::{pairs, Params};
use crate::rows::format_ts;
use crate::state::AppState;

/// Replays quarantined records; implemented by the collector, which owns the
/// taxonomy validator and the write path.
pub trait Replayer: Send + Sync + 'static {
    /// Re-validates up to `request.limit` quarantined records (oldest first) and
    /// stores those that pass, deleting them from `rejected_events` in the same
    /// transaction; the others stay, with their new reason.
    fn replay(&self, request: ReplayRequest) -> BoxFuture<'static, Result<ReplayReport, PgError>>;
}

/// Which quarantined records to replay.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Only this tenant's records (forced for tenant-scoped callers).
    pub tenant: Option<String>,
    /// Only records quarantined for this reason code.
    pub reason: Option<String>,
    /// At most this many records (default 1000, at most 10,000).
    #[serde(default, deserialize_with = "integral")]
    pub limit: Option<i64>,
}

/// An optional JSON integer, written `36` or `36.0` (both are integers to JSON
/// Schema, hence to the OpenAPI document); `36.5` is refused.
fn integral<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let number: Option<serde_json::Number> = Option::deserialize(deserializer)?;
    let Some(number) = number else {
        return Ok(None);
    };
    if let Some(n) = number.as_i64() {
        return Ok(Some(n));
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        _ => Err(serde::de::Error::custom(format!(
            "limit: expected an integer, got {number}"
        ))),
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records now stored in `activity_events` (and removed from the quarantine).
    pub replayed: u64,
    /// Records that still fail and stay quarantined.
    pub still_rejected: u64,
}

/// Shared handle to the replayer.
pub type SharedReplayer = Arc<dyn Replayer>;

/// The query parameters `GET /api/v1/rejected` accepts.
pub const PARAMETERS: &[&str] = &["tenant", "reason", "limit", "cursor"];

/// One quarantined record.
#[derive(Debug, Serialize)]
pub(crate) struct RejectedItem {
    id: String,
    seq: i64,
    received_at: String,
    tenant_id: Option<String>,
    reason: String,
    record: Value,
}

/// A page of the quarantine, newest first.
#[derive(Debug, Serialize)]
pub(crate) struct RejectedPage {
    items: Vec<RejectedItem>,
    next_cursor: Option<String>,
}

/// `GET /api/v1/rejected?tenant&reason&limit&cursor`.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<RejectedPage>, ApiError> {
    caller.require_scope(SCOPE_ADMIN)?;
    let pairs = pairs(&uri)?;
    let params = Params::new(&pairs, PARAMETERS)?;
    let tenant = caller.tenant_filter(params.text("tenant")?)?;
    let reason = params.text("reason")?;
    let limit = params.limit(state.default_page_size, state.max_page_size)?;
    let cursor: Option<i64> = match params.one("cursor")? {
        Some(text) => Some(
            text.parse()
                .map_err(|_| ApiError::invalid("cursor", "not a cursor from this route"))?,
        ),
        None => None,
    };
    let client = state.pool.get_for(&caller.tenant).await?;
    let rows = client
        .query(
            "SELECT id, seq, received_at, tenant_id, reason, record FROM rejected_events \
             WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR reason = $2) \
               AND ($3::int8 IS NULL OR seq < $3) \
             ORDER BY seq DESC LIMIT $4",
            &[&tenant, &reason, &cursor, &(i64::from(limit) + 1)],
        )
        .await
        .map_err(ApiError::from_db)?;
    let has_more = rows.len() > limit as usize;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows.iter().take(limit as usize) {
        let id: uuid::Uuid = row.try_get(0).map_err(ApiError::from_db)?;
        let tenant_id: String = row.try_get(3).map_err(ApiError::from_db)?;
        items.push(RejectedItem {
            id: id.to_string(),
            seq: row.try_get(1).map_err(ApiError::from_db)?,
            received_at: format_ts(row.try_get(2).map_err(ApiError::from_db)?),
            tenant_id: (!tenant_id.is_empty()).then_some(tenant_id),
            reason: row.try_get(4).map_err(ApiError::from_db)?,
            record: row.try_get(5).map_err(ApiError::from_db)?,
        });
    }
    let next_cursor = if has_more {
        items.last().map(|item| item.seq.to_string())
    } else {
        None
    };
    Ok(Json(RejectedPage { items, next_cursor }))
}

/// `POST /api/v1/rejected/replay` with an optional JSON body [`ReplayRequest`].
pub(crate) async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Json<ReplayReport>, ApiError> {
    caller.require_scope(SCOPE_ADMIN)?;
    let mut request: ReplayRequest = if body.is_empty() {
        ReplayRequest::default()
    } else {
        // An object only: serde would also take a struct from a JSON array.
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::invalid("body", e.to_string()))?;
        if !value.is_object() {
            return Err(ApiError::invalid("body", "must be a JSON object"));
        }
        serde_json::from_value(value).map_err(|e| ApiError::invalid("body", e.to_string()))?
    };
    for (name, value) in [("tenant", &request.tenant), ("reason", &request.reason)] {
        if let Some(value) = value {
            crate::params::check_text(name, value)?;
        }
    }
    let limit = request.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 10000"));
    }
    request.limit = Some(limit);
    request.tenant = caller.tenant_filter(request.tenant.take())?;
    let Some(replayer) = &state.replayer else {
        return Err(ApiError::NotFound(
            "replay is not available in this process".to_owned(),
        ));
    };
    let report = replayer
        .replay(request)
        .await
        .map_err(|message| ApiError::Unavailable(format!("replay failed: {message}")))?;
    tracing::info!(
        subject = %caller.subject,
        replayed = report.replayed,
        still_rejected = report.still_rejected,
        "rejected events replayed"
    );
    Ok(Json(report))
}
