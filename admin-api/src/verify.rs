//! `GET /api/v1/verify?tenant=T`: re-walks one tenant's tamper-evidence hash
//! chain (see `docs/tamper-evidence.md`) and answers the verdict.
//!
//! Scope `activity:read` or `admin`. A tenant-scoped caller verifies its own
//! tenant (`tenant` may be omitted); a caller with every tenant (`*`) must name
//! one. A completed verification is `200` whatever its verdict: `status` is
//! `intact` or `tampered` (with `first_problem`).

use axum::extract::State;
use axum::http::Uri;
use axum::Json;

use tally_exporters::postgres::chain::{self, VerifyReport, VerifyingKey};
use tally_exporters::postgres::PgError;

use crate::auth::{Caller, TenantAccess, SCOPE_ACTIVITY_READ};
use crate::error::ApiError;
use crate::params::{pairs, Params};
use crate::AppState;

/// Public keys checkpoints must be signed with (empty: the keys recorded in
/// `chain_keys` are used); see [`AdminApi::with_chain_keys`](crate::AdminApi::with_chain_keys).
pub(crate) type TrustedKeys = std::sync::Arc<Vec<VerifyingKey>>;

/// `GET /api/v1/verify?tenant=T`.
pub(crate) async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<VerifyReport>, ApiError> {
    caller.require_scope(SCOPE_ACTIVITY_READ)?;
    let pairs = pairs(&uri)?;
    let params = Params::new(&pairs, &["tenant"])?;
    let Some(tenant) = caller.tenant_filter(params.text("tenant")?)? else {
        return Err(ApiError::invalid(
            "tenant",
            "required: the tenant whose chain to verify",
        ));
    };
    let mut client = state
        .pool
        .get_for(&TenantAccess::One(tenant.clone()))
        .await?;
    let report = chain::verify(&mut client, &tenant, &state.chain_keys)
        .await
        .map_err(|error| match error {
            PgError::Db(error) => ApiError::from_db(error),
            other => ApiError::Internal(other.to_string()),
        })?;
    if !report.is_intact() {
        tracing::warn!(subject = %caller.subject, summary = %report.summary(), "tamper check failed");
    }
    Ok(Json(report))
}
