//! Deterministic record ids.
//!
//! An SDK that retries an export resends the same spans and log records; the id
//! derived here is the same for the same record, so the database stores it once.
//! Ids are UUIDv8 built from the first 16 bytes of a SHA-256 over a domain tag and
//! the record's identity.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Id of the activity event derived from a span: one per (trace id, span id).
pub fn span_event_id(trace_id: &[u8], span_id: &[u8]) -> Uuid {
    derive(b"tally.span.v1", trace_id, span_id)
}

/// Id of the activity event derived from a log record.
///
/// `service` is the resource's `service.name`, `encoded_record` the record's
/// protobuf encoding (identical bytes on a retry).
pub fn log_event_id(service: &str, encoded_record: &[u8]) -> Uuid {
    derive(b"tally.log.v1", service.as_bytes(), encoded_record)
}

/// Id of the token row derived from a span: one per (trace id, span id), distinct
/// from the activity event id of the same span.
pub fn token_span_id(trace_id: &[u8], span_id: &[u8]) -> Uuid {
    derive(b"tally.tokens.span.v1", trace_id, span_id)
}

/// Id of the token row derived from a log record (its protobuf bytes, identical
/// on a retry) of the resource's `service.name`.
pub fn token_log_id(service: &str, encoded_record: &[u8]) -> Uuid {
    derive(b"tally.tokens.log.v1", service.as_bytes(), encoded_record)
}

/// UUIDv8 from the first 16 bytes of SHA-256(domain, NUL, first, NUL, second).
fn derive(domain: &[u8], first: &[u8], second: &[u8]) -> Uuid {
    let mut hasher = Sha256::new();
    hasher.update(domain);
    hasher.update(b"\0");
    hasher.update(first);
    hasher.update(b"\0");
    hasher.update(second);
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_ids_are_stable_and_distinct() {
        let a = span_event_id(&[1; 16], &[2; 8]);
        assert_eq!(a, span_event_id(&[1; 16], &[2; 8]));
        assert_ne!(a, span_event_id(&[1; 16], &[3; 8]));
        assert_eq!(a.get_version_num(), 8);
    }

    #[test]
    fn log_ids_depend_on_service_and_content() {
        let a = log_event_id("svc", b"record");
        assert_eq!(a, log_event_id("svc", b"record"));
        assert_ne!(a, log_event_id("svc2", b"record"));
        assert_ne!(a, log_event_id("svc", b"record2"));
    }
}
