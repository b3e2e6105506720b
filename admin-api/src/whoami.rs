//! `GET /api/v1/whoami`: who the credential is and what it may read, so that a
//! client (the console) shows only what the caller can use.
//!
//! Needs any valid credential (no scope): `{"subject", "scopes", "tenant",
//! "auth"}`, where `tenant` is the tenant id, `"*"` for every tenant or `null`
//! for none, and `auth` says whether the API checks credentials at all.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::auth::{Caller, TenantAccess};
use crate::AppState;

/// `GET /api/v1/whoami`.
pub(crate) async fn whoami(State(state): State<AppState>, caller: Caller) -> Json<Value> {
    let tenant = match &caller.tenant {
        TenantAccess::All => json!("*"),
        TenantAccess::One(tenant) => json!(tenant),
        TenantAccess::Nothing => Value::Null,
    };
    Json(json!({
        "subject": caller.subject,
        "scopes": caller.scopes,
        "tenant": tenant,
        "auth": state.auth.is_some(),
    }))
}
