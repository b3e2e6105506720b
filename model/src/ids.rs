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

/// The log-record attribute that sets the id of its activity event: a UUID in
/// its hyphenated text form. REST ingest (`POST /api/v1/events`) sets it on
/// every item; an OTLP log record may set it too. Only the record's own
/// attribute counts (not its resource's or scope's), and a value that is not a
/// UUID is kept as an ordinary attribute.
pub const EVENT_ID_ATTRIBUTE: &str = "tally.event.id";

/// Id of a REST ingest item that names none: from `scope` (the tenant of the
/// sender's API key, `""` for none) and the item's canonical JSON with its
/// event time (sorted keys, `ts` resolved), so a resend is the same id.
pub fn rest_event_id(scope: &str, canonical: &[u8]) -> Uuid {
    derive(b"tally.rest.v1", scope.as_bytes(), canonical)
}

/// Id of the token row of a record whose event id was given
/// ([`EVENT_ID_ATTRIBUTE`]): one per event id, distinct from it.
pub fn token_event_id(event_id: &Uuid) -> Uuid {
    derive(b"tally.tokens.event.v1", event_id.as_bytes(), b"")
}

/// The id a log record's [`EVENT_ID_ATTRIBUTE`] gives, if it has a valid one.
pub fn explicit_event_id<'a>(
    mut record_attribute: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<Uuid> {
    record_attribute
        .find(|(key, _)| *key == EVENT_ID_ATTRIBUTE)
        .and_then(|(_, value)| Uuid::try_parse(value).ok())
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

    #[test]
    fn rest_ids_depend_on_scope_and_content() {
        let a = rest_event_id("t1", b"{\"action\":\"a\"}");
        assert_eq!(a, rest_event_id("t1", b"{\"action\":\"a\"}"));
        assert_ne!(a, rest_event_id("t2", b"{\"action\":\"a\"}"));
        assert_ne!(a, rest_event_id("t1", b"{\"action\":\"b\"}"));
        assert_ne!(token_event_id(&a), a);
        assert_eq!(token_event_id(&a), token_event_id(&a));
    }

    #[test]
    fn explicit_ids_must_be_uuids() {
        let id = "0190a5c8-7f3e-7a1b-9c2d-1234567890ab";
        assert_eq!(
            explicit_event_id([("x", "y"), (EVENT_ID_ATTRIBUTE, id)].into_iter()),
            Uuid::try_parse(id).ok()
        );
        assert_eq!(
            explicit_event_id([(EVENT_ID_ATTRIBUTE, "nope")].into_iter()),
            None
        );
        assert_eq!(explicit_event_id(std::iter::empty()), None);
    }
}
