//! `GET /api/v1/taxonomy`: the taxonomy registry in use, as JSON.
//!
//! The registry is configuration, not tenant data: any read scope
//! (`activity:read`, `tokens:read`) or `admin` may read it, whatever the token's
//! tenant. The body is the registry (`version`, `description`, `actions` with
//! every action and `family.*` entry as declared) plus how it was loaded:
//! `mode`, `source`, `generation`, `loaded_at` and `last_reload_error` (the
//! reason the last reload failed while the file stays broken, else `null`).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::caller::{Caller, SCOPE_ACTIVITY_READ, SCOPE_ADMIN, SCOPE_SELF_READ, SCOPE_TOKENS_READ};
use crate::error::ApiError;
use crate::rows::format_ts;
use crate::state::AppState;

/// `GET /api/v1/taxonomy`.
pub(crate) async fn current(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    // A `self:read` caller reads it too: it describes actions, holds no rows.
    if ![
        SCOPE_ACTIVITY_READ,
        SCOPE_TOKENS_READ,
        SCOPE_ADMIN,
        SCOPE_SELF_READ,
    ]
    .iter()
    .any(|scope| caller.scopes.contains(*scope))
    {
        return Err(ApiError::Forbidden(
            "this token needs one of the scopes activity:read, tokens:read, self:read or admin"
                .to_owned(),
        ));
    }
    let Some(handle) = &state.taxonomy else {
        return Err(ApiError::NotFound(
            "no taxonomy registry is loaded in this process".to_owned(),
        ));
    };
    let taxonomy = handle.current();
    let status = handle.status();
    let mut body = serde_json::to_value(&*taxonomy)
        .map_err(|error| ApiError::Internal(format!("cannot serialize the taxonomy: {error}")))?;
    let loaded_at: DateTime<Utc> = status.loaded_at.into();
    if let Value::Object(map) = &mut body {
        let meta = json!({
            "mode": handle.mode().as_str(),
            "source": handle.source().to_string(),
            "generation": status.generation,
            "loaded_at": format_ts(loaded_at),
            "last_reload_error": status.last_error,
        });
        if let Value::Object(meta) = meta {
            map.extend(meta);
        }
    }
    Ok(Json(body))
}
