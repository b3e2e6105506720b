//! `GET /api/v1/verify?tenant=T`: re-walks one tenant's tamper-evidence hash
//! chain (see `docs/tamper-evidence.md`) and answers the verdict.
//!
//! Scope `activity:read` or `admin`. A tenant-scoped caller verifies its own
//! tenant (`tenant` may be omitted); a caller with every tenant (`*`) verifies
//! the tenant it names, or every tenant (`{"status", "items": [report, …]}`).
//! A completed verification is `200` whatever its verdict: `status` is
//! `intact` or `tampered` (with `first_problem`).

use axum::extract::State;
use axum::http::Uri;
use axum::Json;

use tally_exporters::postgres::chain::{self, VerifyReport, VerifyStatus, VerifyingKey};
use tally_exporters::postgres::PgError;

use crate::auth::{Caller, TenantAccess, SCOPE_ACTIVITY_READ};
use crate::error::ApiError;
use crate::params::{pairs, Params};
use crate::AppState;

/// Public keys checkpoints must be signed with (empty: the keys recorded in
/// `chain_keys` are used); see [`AdminApi::with_chain_keys`](crate::AdminApi::with_chain_keys).
pub(crate) type TrustedKeys = std::sync::Arc<Vec<VerifyingKey>>;

/// The answer: one tenant's report, or every tenant's (a `*` caller that named none).
#[derive(serde::Serialize)]
#[serde(untagged)]
pub(crate) enum VerifyAnswer {
    One(VerifyReport),
    All {
        /// `tampered` when any tenant is.
        status: VerifyStatus,
        items: Vec<VerifyReport>,
    },
}

/// The query parameters `GET /api/v1/verify` accepts.
pub const PARAMETERS: &[&str] = &["tenant"];

/// `GET /api/v1/verify?tenant=T`.
pub(crate) async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<VerifyAnswer>, ApiError> {
    caller.require_not_self()?;
    caller.require_scope(SCOPE_ACTIVITY_READ)?;
    let pairs = pairs(&uri)?;
    let params = Params::new(&pairs, PARAMETERS)?;
    let Some(tenant) = caller.tenant_filter(params.text("tenant")?)? else {
        // A caller with every tenant: verify each of them.
        let mut client = state.pool.get_for(&TenantAccess::All).await?;
        let tenants = chain::tenants(&client).await.map_err(api_error)?;
        let mut items = Vec::with_capacity(tenants.len());
        for tenant in &tenants {
            items.push(one(&mut client, &caller, tenant, &state.chain_keys).await?);
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
    let report = one(&mut client, &caller, &tenant, &state.chain_keys).await?;
    Ok(Json(VerifyAnswer::One(report)))
}

async fn one(
    client: &mut tokio_postgres::Client,
    caller: &Caller,
    tenant: &str,
    keys: &[VerifyingKey],
) -> Result<VerifyReport, ApiError> {
    let report = chain::verify(client, tenant, keys)
        .await
        .map_err(api_error)?;
    if !report.is_intact() {
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
