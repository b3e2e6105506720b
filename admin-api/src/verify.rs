//! `GET /api/v1/verify?tenant=T[&full=true]`: verifies one tenant's tamper-evidence
//! hash chain (see `docs/tamper-evidence.md`) and answers the verdict.
//!
//! Scope `activity:read` or `admin`. A tenant-scoped caller verifies its own
//! tenant (`tenant` may be omitted); a caller with every tenant (`*`) verifies
//! the tenant it names, or every tenant (`{"status", "items": [report, …]}`).
//! A completed verification is `200` whatever its verdict: `status` is
//! `intact` or `tampered` (with `first_problem`).
//!
//! The walk is incremental: it resumes from the latest checkpoint an earlier
//! walk of this process verified (`verified_from_seq`), after checking that the
//! link and row there still hash to it. A tenant's first walk, and `full=true`
//! (scope `admin` only), walk the whole chain; one whole walk runs at a time
//! (a second `full=true` meanwhile is 429).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use tokio::sync::Semaphore;

use tally_exporters::postgres::chain::{
    self, VerifyReport, VerifyStart, VerifyStatus, VerifyingKey,
};
use tally_exporters::postgres::PgError;

use crate::auth::{Caller, TenantAccess, SCOPE_ACTIVITY_READ, SCOPE_ADMIN};
use crate::error::ApiError;
use crate::params::{pairs, Params};
use crate::AppState;

/// Public keys checkpoints must be signed with (empty: the keys recorded in
/// `chain_keys` are used); see [`AdminApi::with_chain_keys`](crate::AdminApi::with_chain_keys).
pub(crate) type TrustedKeys = std::sync::Arc<Vec<VerifyingKey>>;

/// What incremental verification remembers: per tenant, the latest verified
/// checkpoint, and the one permit for a whole walk.
pub(crate) struct VerifyCache {
    resume: Mutex<HashMap<String, VerifyStart>>,
    full_walk: Semaphore,
}

impl Default for VerifyCache {
    fn default() -> Self {
        VerifyCache {
            resume: Mutex::default(),
            full_walk: Semaphore::new(1),
        }
    }
}

impl VerifyCache {
    fn start(&self, tenant: &str) -> Option<VerifyStart> {
        self.resume
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .cloned()
    }

    fn remember(&self, report: &VerifyReport) {
        if let Some(start) = report.resume_point() {
            self.resume
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(report.tenant.clone(), start);
        }
    }
}

/// The answer: one tenant's report, or every tenant's (a `*` caller that named none).
#[derive(serde::Serialize)]
#[serde(untagged)]
pub(crate) enum VerifyAnswer {
    One(Box<VerifyReport>),
    All {
        /// `tampered` when any tenant is.
        status: VerifyStatus,
        items: Vec<VerifyReport>,
    },
}

/// The query parameters `GET /api/v1/verify` accepts.
pub const PARAMETERS: &[&str] = &["tenant", "full"];

/// `GET /api/v1/verify?tenant=T[&full=true]`.
pub(crate) async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<VerifyAnswer>, ApiError> {
    caller.require_not_self()?;
    caller.require_scope(SCOPE_ACTIVITY_READ)?;
    let pairs = pairs(&uri)?;
    let params = Params::new(&pairs, PARAMETERS)?;
    let full = match params.one("full")? {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::invalid("full", "must be true or false")),
    };
    // A requested whole walk: admin only, one at a time.
    let _permit =
        if full {
            caller.require_scope(SCOPE_ADMIN)?;
            Some(state.verify_cache.full_walk.try_acquire().map_err(|_| {
                ApiError::TooManyRequests {
                    message: "a full verification is already running; retry later".into(),
                    retry_after_secs: 5,
                }
            })?)
        } else {
            None
        };
    let Some(tenant) = caller.tenant_filter(params.text("tenant")?)? else {
        // A caller with every tenant: verify each of them.
        let mut client = state.pool.get_for(&TenantAccess::All).await?;
        let tenants = chain::tenants(&client).await.map_err(api_error)?;
        let mut items = Vec::with_capacity(tenants.len());
        for tenant in &tenants {
            items.push(one(&mut client, &caller, tenant, &state, full).await?);
        }
        let status = if items.iter().all(VerifyReport::is_intact) {
            VerifyStatus::Intact
        } else {
            VerifyStatus::Tampered
        };
        return Ok(Json(VerifyAnswer::All { status, items }));
    };
    let mut client = state
        .pool
        .get_for(&TenantAccess::One(tenant.clone()))
        .await?;
    let report = one(&mut client, &caller, &tenant, &state, full).await?;
    Ok(Json(VerifyAnswer::One(Box::new(report))))
}

/// Verifies `tenant`: from its remembered checkpoint unless `full` (the caller
/// then holds the whole-walk permit) or none is remembered (then waits for it).
async fn one(
    client: &mut tokio_postgres::Client,
    caller: &Caller,
    tenant: &str,
    state: &AppState,
    full: bool,
) -> Result<VerifyReport, ApiError> {
    let cache = &state.verify_cache;
    let start = if full { None } else { cache.start(tenant) };
    let _permit = match (&start, full) {
        (None, false) => Some(
            cache
                .full_walk
                .acquire()
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        ),
        _ => None,
    };
    let report = chain::verify_from(
        client,
        tenant,
        &state.chain_keys,
        &Default::default(),
        start.as_ref(),
    )
    .await
    .map_err(api_error)?;
    if report.is_intact() {
        cache.remember(&report);
    } else {
        tracing::warn!(subject = %caller.subject, summary = %report.summary(), "tamper check failed");
    }
    Ok(report)
}

fn api_error(error: PgError) -> ApiError {
    match error {
        PgError::Db(error) => ApiError::from_db(error),
        other => ApiError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_remembers_only_intact_reports_with_a_checkpoint() {
        let cache = VerifyCache::default();
        let mut report = VerifyReport {
            tenant: "acme".into(),
            status: VerifyStatus::Intact,
            verified_up_to_seq: Some(9),
            rows_checked: 9,
            links_checked: 9,
            dropped_rows: 0,
            erased_rows: 0,
            unchained_rows: 0,
            chain_watermark: 9,
            checkpoints_checked: 1,
            first_problem: None,
            checkpoint: None,
            external_checkpoints_checked: 0,
            verified_from_seq: None,
        };
        cache.remember(&report);
        assert_eq!(cache.start("acme"), None);
        report.checkpoint = Some(chain::CheckpointInfo {
            seq: 7,
            head_hash: "ab".repeat(32),
            signed_at: "2026-01-05T10:00:00.000000Z".into(),
            key_id: "00".repeat(8),
            signature_valid: true,
            key_trusted: Some(true),
        });
        report.status = VerifyStatus::Tampered;
        cache.remember(&report);
        assert_eq!(cache.start("acme"), None);
        report.status = VerifyStatus::Intact;
        cache.remember(&report);
        let start = cache.start("acme").expect("remembered");
        assert_eq!((start.seq, start.head_hash), (7, vec![0xab; 32]));
        assert!(cache.full_walk.try_acquire().is_ok());
    }
}
