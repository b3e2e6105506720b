//! `POST /api/v1/erasures` (erase one user of one tenant, see docs/privacy.md)
//! and `GET /api/v1/erasures` (the erasure records). Both need the `admin`
//! scope; a tenant-scoped admin erases and lists in its own tenant only, a
//! `self:read` caller neither.
//!
//! The POST records the erasure (idempotent: the same tenant and user answer
//! the existing record) and runs it in the background on its own connection;
//! the answer is `202` with the record while it is pending, `200` with the
//! record when it was already done. A crash meanwhile is no loss: pending
//! erasures are resumed by every instance (see `Eraser::resume_pending`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_exporters::postgres::erasure::{
    list_erasures, Eraser, ErasureError, ErasureRecord, ErasureRequest,
};

use crate::caller::{Caller, SCOPE_ADMIN};
use crate::error::ApiError;
use crate::params::{pairs, Params};
use crate::state::AppState;

/// The query parameters `GET /api/v1/erasures` accepts.
pub const PARAMETERS: &[&str] = &["tenant", "limit"];

/// What runs erasures for the API: the database to write to and the eraser.
#[derive(Clone, Debug)]
pub struct ErasureService {
    database_url: String,
    eraser: Eraser,
}

impl ErasureService {
    /// Erasures run on connections of their own to `database_url`.
    pub fn new(database_url: &str, eraser: Eraser) -> ErasureService {
        ErasureService {
            database_url: database_url.to_owned(),
            eraser,
        }
    }
}

/// The body of `POST /api/v1/erasures`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseBody {
    tenant: Option<String>,
    user_id: Option<String>,
    reason: Option<String>,
}

/// The erasure records, newest first.
#[derive(Debug, Serialize)]
pub(crate) struct ErasureList {
    items: Vec<ErasureRecord>,
}

/// `POST /api/v1/erasures` with `{tenant, user_id, reason}`.
pub(crate) async fn erase(
    State(state): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require_not_self()?;
    caller.require_scope(SCOPE_ADMIN)?;
    // An object only: serde would also take a struct from a JSON array.
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    if !value.is_object() {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let body: EraseBody =
        serde_json::from_value(value).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    let Some(tenant) = caller.tenant_filter(body.tenant)? else {
        return Err(ApiError::invalid(
            "tenant",
            "name the tenant whose user is erased ('' for events without a tenant)",
        ));
    };
    let (Some(user), Some(reason)) = (body.user_id, body.reason) else {
        return Err(ApiError::invalid("body", "user_id and reason are required"));
    };
    let request = ErasureRequest {
        tenant,
        user,
        reason,
        requested_by: caller.subject.clone(),
    };
    request.check().map_err(|e| match e {
        ErasureError::Invalid(message) => ApiError::invalid("body", message),
        other => ApiError::Unavailable(other.to_string()),
    })?;
    let Some(service) = &state.eraser else {
        return Err(ApiError::NotFound(
            "erasure is not available in this process".to_owned(),
        ));
    };
    let (client, _) = tally_exporters::postgres::connect(&service.database_url)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot reach the database: {e}")))?;
    let (record, created) = service
        .eraser
        .request(&client, &request)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot record the erasure: {e}")))?;
    drop(client);
    if record.is_done() {
        return Ok((StatusCode::OK, Json(record)).into_response());
    }
    if created {
        tracing::info!(
            erasure = %record.id,
            tenant = %record.tenant_id,
            pseudonym = %record.pseudonym,
            requested_by = %caller.subject,
            "erasure requested"
        );
    }
    let service = Arc::new(service.clone());
    let id = record.id;
    tokio::spawn(async move {
        let result = async {
            let (mut client, _) = tally_exporters::postgres::connect(&service.database_url)
                .await
                .map_err(ErasureError::from)?;
            service.eraser.run(&mut client, id).await
        }
        .await;
        if let Err(error) = result {
            tracing::error!(erasure = %id, %error, "erasure stopped; it stays pending and is resumed");
        }
    });
    Ok((StatusCode::ACCEPTED, Json(record)).into_response())
}

/// `GET /api/v1/erasures?tenant&limit`.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<ErasureList>, ApiError> {
    caller.require_not_self()?;
    caller.require_scope(SCOPE_ADMIN)?;
    let pairs = pairs(&uri)?;
    let params = Params::new(&pairs, PARAMETERS)?;
    let tenant = caller.tenant_filter(params.text("tenant")?)?;
    let limit = params.limit(state.default_page_size, state.max_page_size)?;
    let client = state.pool.get_for(&caller.tenant).await?;
    let items = list_erasures(&client, tenant.as_deref(), i64::from(limit))
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot list erasures: {e}")))?;
    Ok(Json(ErasureList { items }))
}
