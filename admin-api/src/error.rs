//! [`ApiError`]: every failure of the admin API, and its JSON response
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An admin API error: start-up failures and request failures alike.
///
/// As a response, each variant has a status and a stable `code`; `Internal`
/// (and the start-up variants) never show their details to the client, they are
/// logged instead.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_parameter`: a query parameter is unknown, repeated or has a bad value.
    #[error("{parameter}: {message}")]
    InvalidParameter {
        /// The parameter's name.
        parameter: String,
        /// What is wrong with its value.
        message: String,
    },
    /// 400 `window_too_large`: an aggregate window longer than its grain allows.
    #[error("{0}")]
    WindowTooLarge(String),
    /// 400 `invalid_cursor`: the `cursor` is not one this API handed out.
    #[error("cursor: {0}")]
    InvalidCursor(String),
    /// 401 `unauthorized`: missing, malformed, expired or badly signed token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `forbidden`: valid token without the needed scope or tenant.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 405 `method_not_allowed`.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 429 `too_many_requests`: the caller is over one of its limits
    /// (`admin_api.limits`); answered with `Retry-After: retry_after_secs`.
    #[error("{message}")]
    TooManyRequests {
        /// Why.
        message: String,
        /// When to retry, in seconds.
        retry_after_secs: u64,
    },
    /// 504 `timeout`: the request took longer than `admin_api.limits.request_timeout_ms`.
    #[error("{0}")]
    Timeout(String),
    /// 503 `unavailable`: the database cannot be reached (or timed out).
    #[error("{0}")]
    Unavailable(String),
    /// 500 `internal`: the detail is logged, the client sees a generic message.
    #[error("internal error: {0}")]
    Internal(String),
    /// Start-up: the configuration or database URL is unusable.
    #[error("invalid admin API configuration: {0}")]
    Config(String),
    /// Start-up: `admin_api.tls` cannot be used (unreadable or invalid files).
    #[error(transparent)]
    Tls(#[from] tally_tls::TlsError),
    /// Start-up: the listen address cannot be bound.
    #[error("cannot bind admin API to {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why it cannot be bound.
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("admin API server failed: {0}")]
    Serve(std::io::Error),
}

impl ApiError {
    /// A 400 `invalid_parameter` naming `parameter`.
    pub fn invalid(parameter: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidParameter {
            parameter: parameter.to_owned(),
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidParameter { .. }
            | ApiError::InvalidCursor(_)
            | ApiError::WindowTooLarge(_) => StatusCode::BAD_REQUEST,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_)
            | ApiError::Config(_)
            | ApiError::Bind { .. }
            | ApiError::Serve(_)
            | ApiError::Tls(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable `code`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidParameter { .. } => "invalid_parameter",
            ApiError::InvalidCursor(_) => "invalid_cursor",
            ApiError::WindowTooLarge(_) => "window_too_large",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::Timeout(_) => "timeout",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_)
            | ApiError::Config(_)
            | ApiError::Bind { .. }
            | ApiError::Serve(_)
            | ApiError::Tls(_) => "internal",
        }
    }

    /// Maps a pool checkout failure: the database cannot be reached.
    pub(crate) fn from_pool(error: deadpool_postgres::PoolError) -> Self {
        tracing::warn!(error = %error, "admin API cannot get a database connection");
        ApiError::Unavailable("the database is unavailable".to_owned())
    }

    /// Maps a query failure: connection problems and timeouts are 503, the rest 500.
    pub(crate) fn from_db(error: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let unavailable = match error.code() {
            Some(code) => {
                let code_text = code.code();
                code_text.starts_with("08") // connection exception
                    || code_text.starts_with("53") // insufficient resources
                    || *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CRASH_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW
                    || *code == SqlState::QUERY_CANCELED
            }
            None => {
                error.is_closed()
                    || std::error::Error::source(&error)
                        .is_some_and(|source| source.is::<std::io::Error>())
            }
        };
        if unavailable {
            tracing::warn!(error = %error, "admin API query failed: database unavailable");
            if error.code() == Some(&SqlState::QUERY_CANCELED) {
                if crate::db::past_deadline() {
                    // Cancelled by the statement timeout a checkout set from the
                    // request's deadline: the same 504 the deadline gives.
                    return ApiError::Timeout(
                        "the request took longer than admin_api.limits.request_timeout_ms; narrow it (e.g. with from/to)".to_owned(),
                    );
                }
                return ApiError::Unavailable(
                    "the query took too long; narrow it (e.g. with from/to)".to_owned(),
                );
            }
            ApiError::Unavailable("the database is unavailable".to_owned())
        } else {
            ApiError::Internal(error.to_string())
        }
    }
}

/// `Retry-After` of a 503 `unavailable` (no database connection in time, too many
/// live feeds, the database down), seconds.
pub(crate) const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

/// `Retry-After` of a 504 `timeout`, seconds: the same request is likely to take as
/// long again, so not at once.
pub(crate) const TIMEOUT_RETRY_AFTER_SECS: u64 = 5;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(_)
            | ApiError::Config(_)
            | ApiError::Bind { .. }
            | ApiError::Serve(_) => {
                tracing::error!(error = %self, "admin API internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let body = json!({ "error": { "code": self.code(), "message": message } });
        let mut response = (status, Json(body)).into_response();
        let retry_after = match &self {
            ApiError::TooManyRequests {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            ApiError::Timeout(_) => Some(TIMEOUT_RETRY_AFTER_SECS),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tally\""),
            );
        }
        response
    }
}

/// Fallback for unknown routes: 404 `not_found`.
pub(crate) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", truncate(uri.path(), 200)))
}

/// Fallback for a known route with the wrong method: 405 `method_not_allowed`.
pub(crate) async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(format!("method {method} is not allowed on this route"))
}

/// Cuts client-supplied text echoed in messages to `max` characters.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_owned(),
    }
}
