//! `GET /healthz` (the process answers) and `GET /readyz` (it can do its job).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

/// How long `/readyz` waits for `SELECT 1`.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /healthz`: always 200 `{"status":"ok"}`.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 `{"status":"ok"}` when the pipeline reports ready and the
/// database answers `SELECT 1` within a second; else 503
/// `{"status":"unavailable","reason":"..."}`.
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let unavailable = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": reason })),
        )
    };
    if state.readiness.draining() {
        return unavailable("shutting down");
    }
    if !state.readiness.is_ready() {
        return unavailable("the pipeline reports the database as down");
    }
    let probe = async {
        let client = state.pool.get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    };
    match tokio::time::timeout(READY_TIMEOUT, probe).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({ "status": "ok" }))),
        Ok(Err(error)) => {
            tracing::warn!(%error, "readyz: database check failed");
            unavailable("the database does not answer")
        }
        Err(_) => unavailable("the database did not answer within 1s"),
    }
}
