//! `GET /api/v1/whoami`: who the credential is and what it may read, so that a
//! client (the console) shows only what the caller can use.
//!
//! Needs any valid credential (no scope): `{"subject", "scopes", "tenant",
//! "user", "auth"}`, where `tenant` is the tenant id, `"*"` for every tenant or
//! `null` for none, `user` the one user whose rows a `self:read` caller reads
//! (`null` for every other caller), and `auth` says whether the API checks
//! credentials at all.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::caller::{Caller, TenantAccess};
use crate::state::AppState;

/// `GET /api/v1/whoami`.
pub(crate) async fn whoami(State(state): State<AppState>, caller: Caller) -> Json<Value> {
    let tenant = match &caller.tenant {
        TenantAccess::All => json!("*"),
        TenantAccess::One(tenant) => json!(tenant),
        TenantAccess::Nothing => Value::Null,
        TenantAccess::OwnRows { tenant, .. } => json!(tenant),
    };
    Json(json!({
        "subject": caller.subject,
        "scopes": caller.scopes,
        "tenant": tenant,
        "user": caller.own_user(),
        "auth": state.auth.is_some(),
    }))
}
