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
//! intact walk verified (`verified_from_seq`), after checking that the link and
//! row there still hash to it. The resume point is kept in memory and in
//! `chain_verify_resume` (migration 23), so a restarted process resumes too; a
//! stored point is used only while `chain_checkpoints` still holds that
//! checkpoint with that head hash. A walk that finds the chain tampered forgets
//! the tenant's point. A tenant's first walk, and `full=true` (scope `admin`
//! only), walk the whole chain; one whole walk runs at a time (a second
//! `full=true` meanwhile is 429).

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

use crate::caller::{Caller, TenantAccess, SCOPE_ACTIVITY_READ, SCOPE_ADMIN};
use crate::error::ApiError;
use crate::params::{pairs, Params};
use crate::state::AppState;

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

/// The stored resume point of a tenant, if `chain_checkpoints` still holds its
/// checkpoint with the same head hash.
const LOAD_SQL: &str = "SELECT r.seq, r.head_hash, r.signed_at, r.key_id, r.key_trusted, \
            c.signed_at, c.signature \
     FROM chain_verify_resume r JOIN chain_checkpoints c \
       ON c.tenant_id = r.tenant_id AND c.seq = r.seq AND c.head_hash = r.head_hash \
          AND c.key_id = r.key_id \
     WHERE r.tenant_id = $1";
const SAVE_SQL: &str = "SELECT tally_verify_resume_save($1, $2, $3, $4, $5, $6)";
const FORGET_SQL: &str = "SELECT tally_verify_resume_forget($1)";

impl VerifyCache {
    fn start(&self, tenant: &str) -> Option<VerifyStart> {
        self.resume
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .cloned()
    }

    /// The resume point of `tenant`: this process's, else the stored one when it
    /// was verified under the same trust as this process's (`trusted`): with
    /// trusted keys, a checkpoint one of them signed (the signature checked again
    /// here); without, one verified without trusted keys too.
    async fn start_or_stored(
        &self,
        client: &tokio_postgres::Client,
        tenant: &str,
        trusted: &[VerifyingKey],
    ) -> Result<Option<VerifyStart>, ApiError> {
        if let Some(start) = self.start(tenant) {
            return Ok(Some(start));
        }
        let Some(row) = client
            .query_opt(LOAD_SQL, &[&tenant])
            .await
            .map_err(ApiError::from_db)?
        else {
            return Ok(None);
        };
        let seq: i64 = row.try_get(0).map_err(ApiError::from_db)?;
        let head_hash: Vec<u8> = row.try_get(1).map_err(ApiError::from_db)?;
        let key_id: String = row.try_get(3).map_err(ApiError::from_db)?;
        let key_trusted: Option<bool> = row.try_get(4).map_err(ApiError::from_db)?;
        let signed_at: chrono::DateTime<chrono::Utc> = row.try_get(5).map_err(ApiError::from_db)?;
        let signature: Vec<u8> = row.try_get(6).map_err(ApiError::from_db)?;
        let same_trust = if trusted.is_empty() {
            key_trusted.is_none()
        } else {
            key_trusted == Some(true)
                && trusted.iter().any(|key| {
                    chain::key_id(key) == key_id
                        && chain::checkpoint_signed_by(
                            key, tenant, seq, &head_hash, signed_at, &signature,
                        )
                })
        };
        if !same_trust {
            return Ok(None);
        }
        let start = VerifyStart {
            seq,
            checkpoint: chain::CheckpointInfo {
                seq,
                head_hash: hex::encode(&head_hash),
                signed_at: row.try_get(2).map_err(ApiError::from_db)?,
                key_id,
                signature_valid: true,
                key_trusted,
            },
            head_hash,
        };
        self.resume
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(tenant.to_owned(), start.clone());
        Ok(Some(start))
    }

    /// Keeps the resume point of an intact `report`, or forgets the tenant's
    /// when it is tampered; answers what to store (`Some(None)`: forget).
    fn remember(&self, report: &VerifyReport) -> Option<Option<VerifyStart>> {
        let mut resume = self
            .resume
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !report.is_intact() {
            resume.remove(&report.tenant);
            return Some(None);
        }
        let start = report.resume_point()?;
        if resume.get(&report.tenant) == Some(&start) {
            // Already known (and stored): nothing to write.
            return None;
        }
        resume.insert(report.tenant.clone(), start.clone());
        Some(Some(start))
    }
}

/// Writes (or, for `None`, deletes) `tenant`'s stored resume point; a failure is
/// logged, not answered (the point is kept in memory regardless).
async fn store(client: &tokio_postgres::Client, tenant: &str, start: Option<&VerifyStart>) {
    let result = match start {
        Some(start) => {
            client
                .execute(
                    SAVE_SQL,
                    &[
                        &tenant,
                        &start.seq,
                        &start.head_hash,
                        &start.checkpoint.signed_at,
                        &start.checkpoint.key_id,
                        &start.checkpoint.key_trusted,
                    ],
                )
                .await
        }
        None => client.execute(FORGET_SQL, &[&tenant]).await,
    };
    if let Err(error) = result {
        tracing::warn!(%error, tenant, "verify: cannot store the resume point");
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
    let start = if full {
        None
    } else {
        cache
            .start_or_stored(client, tenant, &state.chain_keys)
            .await?
    };
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
    if !report.is_intact() {
        tracing::warn!(subject = %caller.subject, summary = %report.summary(), "tamper check failed");
    }
    if let Some(stored) = cache.remember(&report) {
        store(client, tenant, stored.as_ref()).await;
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
        assert_eq!(cache.remember(&report), None, "nothing to store");
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
        assert_eq!(cache.remember(&report), Some(None), "forget");
        assert_eq!(cache.start("acme"), None);
        report.status = VerifyStatus::Intact;
        let stored = cache.remember(&report).flatten().expect("to store");
        assert_eq!(stored.seq, 7);
        assert_eq!(cache.remember(&report), None, "stored already");
        let start = cache.start("acme").expect("remembered");
        assert_eq!((start.seq, start.head_hash), (7, vec![0xab; 32]));
        report.status = VerifyStatus::Tampered;
        assert_eq!(
            cache.remember(&report),
            Some(None),
            "a tampered walk forgets"
        );
        assert_eq!(cache.start("acme"), None);
        assert!(cache.full_walk.try_acquire().is_ok());
    }
}
