//! Errors of the receiver: start-up failures ([`ReceiverError`]) and the reasons a single
//! request is refused ([`RequestError`], mapped to HTTP statuses and gRPC codes).

use std::net::SocketAddr;
use std::time::Duration;

use tally_model::pipeline::ConsumeError;

use crate::budget::{DecodeRefusal, Exhausted, BUSY_RETRY_AFTER};

/// Why a request body (or one item of a REST batch) is malformed, in words for
/// its sender: answered with gRPC `INVALID_ARGUMENT` / HTTP 400 (a REST item:
/// in the answer's `rejected` list). The text names the failing field's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

impl From<String> for Malformed {
    fn from(message: String) -> Malformed {
        Malformed(message)
    }
}

impl From<&str> for Malformed {
    fn from(message: &str) -> Malformed {
        Malformed(message.to_owned())
    }
}

/// `Err(Malformed(message))`.
pub(crate) fn malformed<T>(message: String) -> Result<T, Malformed> {
    Err(Malformed(message))
}

/// Why the receiver could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// A listener could not be bound (address in use, not permitted, …).
    #[error("cannot listen on {endpoint} ({config_path}): {source}")]
    Bind {
        /// The configured address.
        endpoint: SocketAddr,
        /// The config key that set it, e.g. `receivers.otlp.grpc.endpoint`.
        config_path: &'static str,
        #[source]
        /// Why it cannot be used.
        source: std::io::Error,
    },
    /// A listener's `tls` block cannot be used (unreadable or invalid files).
    #[error(transparent)]
    Tls(#[from] tally_tls::TlsError),
    /// The OTLP gRPC server failed while serving.
    #[error("OTLP gRPC receiver failed: {0}")]
    Grpc(#[source] tonic::transport::Error),
    /// The OTLP/HTTP server failed while serving.
    #[error("OTLP/HTTP receiver failed: {0}")]
    Http(#[source] std::io::Error),
}

/// Why one export request was refused. The message names the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestError {
    /// Undecodable or invalid content: HTTP 400, gRPC `INVALID_ARGUMENT`.
    Invalid(String),
    /// No valid ingest credential: HTTP 401, gRPC `UNAUTHENTICATED`.
    Unauthenticated(String),
    /// Content type or content encoding not supported: HTTP 415.
    UnsupportedMediaType(String),
    /// Body larger than the limit, raw or decompressed: HTTP 413, gRPC `RESOURCE_EXHAUSTED`.
    TooLarge(String),
    /// A fault of the receiver itself: HTTP 500.
    Internal(String),
    /// The body did not arrive within `receivers.otlp.body_read_timeout_ms`: HTTP 408.
    Timeout(String),
    /// The in-flight bytes budget is spent: HTTP 429, gRPC `RESOURCE_EXHAUSTED`, both
    /// retryable after [`BUSY_RETRY_AFTER`](crate::budget::BUSY_RETRY_AFTER).
    Busy(Exhausted),
    /// The pipeline refused the records.
    Consume(ConsumeError),
}

impl RequestError {
    /// The human-readable message sent to the client.
    pub(crate) fn message(&self) -> String {
        match self {
            RequestError::Invalid(m)
            | RequestError::Unauthenticated(m)
            | RequestError::UnsupportedMediaType(m)
            | RequestError::TooLarge(m)
            | RequestError::Internal(m)
            | RequestError::Timeout(m) => m.clone(),
            RequestError::Busy(e) => e.message(),
            RequestError::Consume(e) => e.to_string(),
        }
    }

    /// The delay a client should wait before retrying, if the error is retryable.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            RequestError::Consume(e) => e.retry_after(),
            RequestError::Busy(_) => Some(BUSY_RETRY_AFTER),
            _ => None,
        }
    }
}

impl From<ConsumeError> for RequestError {
    fn from(e: ConsumeError) -> Self {
        match e {
            // Keep the consumer's wording: it already says what is wrong.
            ConsumeError::Invalid(m) => RequestError::Invalid(m),
            other => RequestError::Consume(other),
        }
    }
}

impl From<Exhausted> for RequestError {
    fn from(e: Exhausted) -> Self {
        RequestError::Busy(e)
    }
}

impl From<DecodeRefusal> for RequestError {
    fn from(e: DecodeRefusal) -> Self {
        match e {
            DecodeRefusal::TooLarge { wanted, budget } => {
                RequestError::TooLarge(DecodeRefusal::too_large_message(wanted, budget))
            }
            DecodeRefusal::Busy(busy) => RequestError::Busy(busy),
        }
    }
}

/// Whole seconds for a `Retry-After` header: at least 1, rounded up.
pub(crate) fn retry_after_secs(delay: Duration) -> u64 {
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    secs.max(1)
}

/// Longest error message sent to a client; longer ones keep their start and end.
pub(crate) const MAX_MESSAGE: usize = 512;

/// `message` cut to about [`MAX_MESSAGE`] bytes, keeping its start (what failed) and its
/// end (why: prost puts the reason after the path of every enclosing field, which for a
/// value nested 100 deep is several KiB).
pub(crate) fn shorten(message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut head = MAX_MESSAGE / 2;
    while !message.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = message.len() - MAX_MESSAGE / 2;
    while !message.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{} … {}", &message[..head], &message[tail..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_keep_start_and_end() {
        assert_eq!(shorten("short".into()), "short");
        let long = format!("start {} reason", "é".repeat(1000));
        let short = shorten(long);
        assert!(short.len() <= MAX_MESSAGE + 8, "{}", short.len());
        assert!(short.starts_with("start "), "{short}");
        assert!(short.ends_with(" reason"), "{short}");
        assert!(short.contains(" … "), "{short}");
    }
}
