//! PostgreSQL binary `COPY` encoding of Tally's rows, straight into one buffer.
//!
//! The writers send these bytes with `COPY … FROM STDIN (FORMAT binary)`: a
//! header ([`begin`]), one tuple per row ([`activity_row`], [`token_row`]) and
//! the trailer ([`finish`]). Values are written in PostgreSQL's binary wire
//! format without intermediate values: text as its bytes with each NUL
//! (which PostgreSQL rejects) turned into U+FFFD, `jsonb` as version byte 1
//! followed by JSON text written directly from the attribute map (a NUL in a
//! key or string becomes the escape `\ufffd`).
//!
//! The column orders are those of the staging tables' `COPY` statements in
//! `activity.rs` and `tokens.rs`, which send the rows with [`copy_rows`]. The
//! encoders need no connection, so the CPU benchmark (`tally-bench pipeline`)
//! measures exactly the encoding Tally does.

use std::fmt::Write as _;

use bytes::{Buf, BufMut, BytesMut};
use chrono::{DateTime, Utc};
use futures::SinkExt;
use serde_json::{Map, Value};
use tally_model::{ActivityEvent, TokenUsage};
use tokio_postgres::Transaction;

use super::reuse::BufferPool;
use super::PgError;

/// `PGCOPY\n\xff\r\n\0`, flags 0, no header extension.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Columns of an activity row (see `activity.rs`'s `COPY_SQL`).
const ACTIVITY_COLUMNS: i16 = 21;
/// Columns of a token row (see `tokens.rs`'s `COPY_SQL`).
const TOKEN_COLUMNS: i16 = 31;

/// A value that cannot be written in PostgreSQL's binary format.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode for COPY: {0}")]
pub struct EncodeError(&'static str);

/// Writes the binary `COPY` header.
pub fn begin(out: &mut BytesMut) {
    out.put_slice(HEADER);
}

/// Writes the binary `COPY` trailer.
pub fn finish(out: &mut BytesMut) {
    out.put_i16(-1);
}

fn null(out: &mut BytesMut) {
    out.put_i32(-1);
}

/// Text without NUL bytes: each NUL becomes U+FFFD.
fn text(out: &mut BytesMut, s: &str) -> Result<(), EncodeError> {
    let bytes = s.as_bytes();
    // Most texts hold no NUL: a memchr answers that.
    let nuls = if bytes.contains(&0) {
        bytes.iter().filter(|b| **b == 0).count()
    } else {
        0
    };
    // Each NUL (1 byte) becomes U+FFFD (3 bytes).
    let len = bytes.len() + 2 * nuls;
    let len = i32::try_from(len).map_err(|_| EncodeError("text longer than 2 GiB"))?;
    out.put_i32(len);
    if nuls == 0 {
        out.put_slice(bytes);
    } else {
        for (i, part) in bytes.split(|b| *b == 0).enumerate() {
            if i > 0 {
                out.put_slice("\u{FFFD}".as_bytes());
            }
            out.put_slice(part);
        }
    }
    Ok(())
}

fn opt_text(out: &mut BytesMut, s: Option<&str>) -> Result<(), EncodeError> {
    match s {
        Some(s) => text(out, s),
        None => {
            null(out);
            Ok(())
        }
    }
}

fn uuid(out: &mut BytesMut, id: &uuid::Uuid) {
    out.put_i32(16);
    out.put_slice(id.as_bytes());
}

fn opt_uuid(out: &mut BytesMut, id: Option<&uuid::Uuid>) {
    match id {
        Some(id) => uuid(out, id),
        None => null(out),
    }
}

fn timestamptz(out: &mut BytesMut, ts: &DateTime<Utc>) -> Result<(), EncodeError> {
    let micros = ts
        .timestamp_micros()
        .checked_sub(PG_EPOCH_MICROS)
        .ok_or(EncodeError("timestamp out of range"))?;
    out.put_i32(8);
    out.put_i64(micros);
    Ok(())
}

fn opt_bool(out: &mut BytesMut, value: Option<bool>) {
    match value {
        Some(b) => {
            out.put_i32(1);
            out.put_u8(u8::from(b));
        }
        None => null(out),
    }
}

fn opt_int8(out: &mut BytesMut, value: Option<i64>) {
    match value {
        Some(v) => {
            out.put_i32(8);
            out.put_i64(v);
        }
        None => null(out),
    }
}

fn opt_float8(out: &mut BytesMut, value: Option<f64>) {
    match value {
        Some(v) => {
            out.put_i32(8);
            out.put_f64(v);
        }
        None => null(out),
    }
}

/// A `jsonb` field: version 1, then the object as JSON text.
fn jsonb_object(out: &mut BytesMut, map: &Map<String, Value>) -> Result<(), EncodeError> {
    let at = out.len();
    out.put_i32(0); // length, patched below
    out.put_u8(1);
    json_object(out, map);
    let len = i32::try_from(out.len() - at - 4).map_err(|_| EncodeError("jsonb over 2 GiB"))?;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn json_object(out: &mut BytesMut, map: &Map<String, Value>) {
    out.put_u8(b'{');
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        json_string(out, key);
        out.put_u8(b':');
        json_value(out, value);
    }
    out.put_u8(b'}');
}

fn json_value(out: &mut BytesMut, value: &Value) {
    match value {
        Value::Null => out.put_slice(b"null"),
        Value::Bool(true) => out.put_slice(b"true"),
        Value::Bool(false) => out.put_slice(b"false"),
        // serde_json keeps numbers finite; Display is their JSON form. Writing
        // into a BytesMut cannot fail.
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => json_string(out, s),
        Value::Array(items) => {
            out.put_u8(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                json_value(out, item);
            }
            out.put_u8(b']');
        }
        Value::Object(map) => json_object(out, map),
    }
}

/// A JSON string literal; NUL becomes `\ufffd` (`jsonb` rejects `\u0000`).
fn json_string(out: &mut BytesMut, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.put_u8(b'"');
    let bytes = s.as_bytes();
    // Most strings need no escape: skip 8 bytes at a time to the first that may.
    let clean = clean_prefix(bytes);
    if clean == bytes.len() {
        out.put_slice(bytes);
        out.put_u8(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0 => b"\\ufffd",
            0x01..=0x1f => {
                out.put_slice(&bytes[start..i]);
                out.put_slice(b"\\u00");
                out.put_u8(HEX[usize::from(b >> 4)]);
                out.put_u8(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.put_slice(&bytes[start..i]);
        out.put_slice(escape);
        start = i + 1;
    }
    out.put_slice(&bytes[start..]);
    out.put_u8(b'"');
}

/// Length of the longest prefix, in whole 8-byte words, with no byte that JSON
/// escapes (control bytes, `"`, `\\`).
pub(crate) fn clean_prefix(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero ⇔ its bit 7 is set in `(x - ONES) & !x & HIGH`.
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let mut at = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        // Bytes below 0x20 (bit 7 clear), or equal to `"` or `\`.
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0;
        if control
            || has_zero(w ^ (ONES * u64::from(b'"')))
            || has_zero(w ^ (ONES * u64::from(b'\\')))
        {
            return at;
        }
        at += 8;
    }
    at
}

/// An activity row to write and its personal keys beyond the fixed set
/// (`personal_keys`, see [`PersonalKeys::of`](super::personal::PersonalKeys::of)).
#[derive(Debug)]
pub struct ActivityRow<'a> {
    /// The classified event.
    pub event: &'a ActivityEvent,
    /// Its attribute keys that are personal beyond the fixed set (the
    /// `personal_keys` column; NULL when empty).
    pub personal_keys: Vec<&'a str>,
}

/// A `text[]` value (one dimension), or NULL when `items` is empty.
fn text_array(out: &mut BytesMut, items: &[&str]) -> Result<(), EncodeError> {
    if items.is_empty() {
        null(out);
        return Ok(());
    }
    let mut body = BytesMut::with_capacity(20 + items.iter().map(|i| 4 + i.len()).sum::<usize>());
    body.put_i32(1); // dimensions
    body.put_i32(0); // no NULL element
    body.put_u32(25); // element type: text
    body.put_i32(i32::try_from(items.len()).map_err(|_| EncodeError("array too long"))?);
    body.put_i32(1); // lower bound
    for item in items {
        text(&mut body, item)?;
    }
    out.put_i32(i32::try_from(body.len()).map_err(|_| EncodeError("array too long"))?);
    out.put_slice(&body);
    Ok(())
}

/// One `activity_events` staging row: id, ts, tenant_id, user_id, session_id,
/// action, outcome, resource_type, resource_id, service, trace_id, span_id,
/// attributes, taxonomy_valid, taxonomy_reason, ingest_key_id, duration_ms, name,
/// error_type, error_message, personal_keys.
pub fn activity_row(
    out: &mut BytesMut,
    row: &ActivityRow<'_>,
    ingest_key_id: Option<&uuid::Uuid>,
) -> Result<(), EncodeError> {
    out.put_i16(ACTIVITY_COLUMNS);
    activity_fields(out, row, ingest_key_id)
}

/// An activity row written straight into `activity_events`, with the `seq`
/// its writer reserved for it under the lock and the salt of its personal
/// digest (`chain_salt`, canonical form v3).
#[derive(Debug)]
pub struct SeqActivityRow<'a> {
    /// The row's `seq`.
    pub seq: i64,
    /// The row's `chain_salt` (random; the writer hashes it into the row's link).
    pub salt: [u8; 16],
    /// The row itself.
    pub row: ActivityRow<'a>,
}

/// `chain_form` of the rows the direct `COPY` writes.
const CHAIN_FORM_V3: i16 = 3;

/// One `activity_events` row for the direct `COPY`: `seq`, then the columns of
/// [`activity_row`] in the same order, then `chain_form` (3) and `chain_salt`.
pub fn activity_row_with_seq(
    out: &mut BytesMut,
    row: &SeqActivityRow<'_>,
    ingest_key_id: Option<&uuid::Uuid>,
) -> Result<(), EncodeError> {
    out.put_i16(ACTIVITY_COLUMNS + 3);
    out.put_i32(8);
    out.put_i64(row.seq);
    activity_fields(out, &row.row, ingest_key_id)?;
    out.put_i32(2);
    out.put_i16(CHAIN_FORM_V3);
    out.put_i32(16);
    out.put_slice(&row.salt);
    Ok(())
}

/// The JSON text the encoder sends for an attribute map (after the `jsonb`
/// version byte): what PostgreSQL parses into the stored value.
pub fn json_text(map: &Map<String, Value>) -> String {
    let mut out = BytesMut::new();
    json_object(&mut out, map);
    // The encoder writes UTF-8 only (strings as is, escapes in ASCII).
    String::from_utf8_lossy(&out).into_owned()
}

fn activity_fields(
    out: &mut BytesMut,
    row: &ActivityRow<'_>,
    ingest_key_id: Option<&uuid::Uuid>,
) -> Result<(), EncodeError> {
    let e = row.event;
    uuid(out, &e.id);
    timestamptz(out, &e.ts)?;
    text(out, e.tenant_id.as_deref().unwrap_or(""))?;
    opt_text(out, e.user_id.as_deref())?;
    opt_text(out, e.session_id.as_deref())?;
    text(out, &e.action)?;
    text(out, e.outcome.as_str())?;
    opt_text(out, e.resource_type.as_deref())?;
    opt_text(out, e.resource_id.as_deref())?;
    opt_text(out, e.service.as_deref())?;
    opt_text(out, e.trace_id.as_deref())?;
    opt_text(out, e.span_id.as_deref())?;
    jsonb_object(out, &e.attributes)?;
    opt_bool(out, e.taxonomy_valid);
    opt_text(out, e.taxonomy_reason.as_deref())?;
    opt_uuid(out, ingest_key_id);
    opt_float8(out, e.duration_ms.filter(|d| d.is_finite()));
    opt_text(out, e.name.as_deref())?;
    opt_text(out, e.error_type.as_deref())?;
    opt_text(out, e.error_message.as_deref())?;
    text_array(out, &row.personal_keys)?;
    Ok(())
}

/// One `token_usage` staging row, in the column order of `tokens.rs`.
pub fn token_row(
    out: &mut BytesMut,
    r: &TokenUsage,
    ingest_key_id: Option<&uuid::Uuid>,
) -> Result<(), EncodeError> {
    out.put_i16(TOKEN_COLUMNS);
    uuid(out, &r.id);
    timestamptz(out, &r.ts)?;
    text(out, r.tenant_id.as_deref().unwrap_or(""))?;
    opt_text(out, r.user_id.as_deref())?;
    opt_text(out, r.session_id.as_deref())?;
    opt_text(out, r.service.as_deref())?;
    opt_text(out, r.trace_id.as_deref())?;
    opt_text(out, r.span_id.as_deref())?;
    opt_text(out, r.provider.as_deref())?;
    opt_text(out, r.operation.as_deref())?;
    opt_text(out, r.request_model.as_deref())?;
    opt_text(out, r.response_model.as_deref())?;
    opt_text(out, r.model.as_deref())?;
    opt_int8(out, r.input_tokens);
    opt_int8(out, r.output_tokens);
    opt_int8(out, r.cache_read_tokens);
    opt_int8(out, r.cache_write_tokens);
    opt_int8(out, r.reasoning_tokens);
    opt_int8(out, r.total_tokens);
    opt_bool(out, Some(r.usage_known));
    opt_float8(out, r.cost_usd.filter(|c| c.is_finite()));
    text(out, r.outcome.as_str())?;
    opt_float8(out, r.duration_ms.filter(|d| d.is_finite()));
    opt_float8(out, r.time_to_first_token_ms.filter(|d| d.is_finite()));
    text(out, r.attribution_source.as_str())?;
    jsonb_object(out, &r.attributes)?;
    opt_uuid(out, ingest_key_id);
    // Staging only (one row per call, see `tokens.rs`).
    text(out, &r.report.scope)?;
    opt_text(out, r.report.span_key.as_deref())?;
    opt_text(out, r.report.response_key.as_deref())?;
    opt_bool(out, Some(r.report.from_span));
    Ok(())
}

/// Bytes gathered before a chunk of `COPY` data is sent.
const COPY_CHUNK_BYTES: usize = 256 * 1024;

/// A chunk buffer's capacity: a chunk plus room for the row that crosses
/// [`COPY_CHUNK_BYTES`].
const COPY_BUFFER_BYTES: usize = COPY_CHUNK_BYTES + COPY_CHUNK_BYTES / 4;

/// The chunk buffers, kept from batch to batch (see `reuse.rs`): a writer
/// fills one while the connection may still be sending one or two.
static COPY_BUFFERS: BufferPool<BytesMut> = BufferPool::new(4, 2 * COPY_BUFFER_BYTES);

/// A chunk of `COPY` data that goes back to [`COPY_BUFFERS`] once the
/// connection has sent it (or the `COPY` is abandoned).
#[derive(Debug)]
struct Chunk(BytesMut);

impl Chunk {
    /// An empty chunk of at least [`COPY_BUFFER_BYTES`], kept from an earlier
    /// batch when there is one.
    fn new() -> Chunk {
        let mut buf = COPY_BUFFERS.take();
        // Also takes back the part already sent (`Buf::advance` moved past it).
        buf.reserve(COPY_BUFFER_BYTES);
        if buf.capacity() > COPY_BUFFERS.max_bytes() {
            buf = BytesMut::with_capacity(COPY_BUFFER_BYTES);
        }
        Chunk(buf)
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        // Takes back the part already sent, so that the pool sees the whole
        // allocation (a chunk holds it alone: no allocation here).
        buf.clear();
        buf.reserve(COPY_BUFFER_BYTES);
        COPY_BUFFERS.give(buf);
    }
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        self.0.remaining()
    }
    fn chunk(&self) -> &[u8] {
        self.0.chunk()
    }
    fn advance(&mut self, cnt: usize) {
        self.0.advance(cnt);
    }
}

/// Encodes rows from `rows` into `buf` until it holds [`COPY_CHUNK_BYTES`] or
/// more (answers `true`: a chunk to send) or the rows run out (`false`).
fn fill<R: ?Sized>(
    buf: &mut BytesMut,
    rows: &mut std::slice::Iter<'_, (&R, Option<uuid::Uuid>)>,
    encode: fn(&mut BytesMut, &R, Option<&uuid::Uuid>) -> Result<(), EncodeError>,
) -> Result<bool, EncodeError> {
    for (row, key) in rows {
        encode(buf, row, key.as_ref())?;
        if buf.len() >= COPY_CHUNK_BYTES {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Sends `rows` (each with the ingest key that wrote it) through `copy_sql` (a
/// `COPY … FROM STDIN (FORMAT binary)`, as text or prepared), encoded by `encode` into
/// buffers sent in chunks of about [`COPY_CHUNK_BYTES`] and kept for the next
/// batch ([`COPY_BUFFERS`]). Returns the rows the server copied.
pub(crate) async fn copy_rows<R, S>(
    tx: &Transaction<'_>,
    copy_sql: &S,
    rows: &[(&R, Option<uuid::Uuid>)],
    encode: fn(&mut BytesMut, &R, Option<&uuid::Uuid>) -> Result<(), EncodeError>,
) -> Result<u64, PgError>
where
    S: ?Sized + tokio_postgres::ToStatement,
{
    let sink = tx.copy_in::<_, Chunk>(copy_sql).await?;
    futures::pin_mut!(sink);
    let mut rows = rows.iter();
    let mut buf = Chunk::new();
    begin(&mut buf.0);
    while fill(&mut buf.0, &mut rows, encode).map_err(|e| PgError::Integrity(e.to_string()))? {
        let full = std::mem::replace(&mut buf, Chunk::new());
        sink.as_mut().send(full).await?;
    }
    finish(&mut buf.0);
    sink.as_mut().send(buf).await?;
    Ok(sink.finish().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_text(map: &Map<String, Value>) -> String {
        let mut out = BytesMut::new();
        json_object(&mut out, map);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn json_round_trips_and_scrubs_nul() {
        let value = serde_json::json!({
            "a\u{0}b": "x\u{0}y",
            "lit": "\\u0000",
            "ctl": "\u{1}\u{1f}\n\r\t\"\\",
            "n": [1, -2, 3.5, 1e300, true, false, null],
            "o": {"k": "v"},
            "u": "é€😀",
        });
        let Value::Object(map) = value else {
            unreachable!()
        };
        let back: Value = serde_json::from_str(&json_text(&map)).unwrap();
        assert_eq!(back["a\u{fffd}b"], "x\u{fffd}y");
        assert_eq!(back["lit"], "\\u0000");
        assert_eq!(back["ctl"], "\u{1}\u{1f}\n\r\t\"\\");
        assert_eq!(
            back["n"],
            serde_json::json!([1, -2, 3.5, 1e300, true, false, null])
        );
        assert_eq!(back["o"]["k"], "v");
        assert_eq!(back["u"], "é€😀");
    }

    #[test]
    fn escapes_found_at_every_position() {
        for special in ['"', '\\', '\n', '\u{1}', '\u{0}', '\u{1f}'] {
            for at in 0..24 {
                let mut s: String = "é".repeat(3) + &"a".repeat(21);
                s.insert(at.min(s.len()) & !1, special);
                let mut map = Map::new();
                map.insert("k".into(), Value::String(s.clone()));
                let back: Value = serde_json::from_str(&json_text(&map)).unwrap();
                assert_eq!(
                    back["k"],
                    s.replace('\u{0}', "\u{fffd}"),
                    "{special:?} at {at}"
                );
            }
        }
    }

    /// The chunks [`copy_rows`] sends for `rows`, each consumed as the
    /// connection consumes it, then dropped (back to the pool).
    fn chunks(rows: &[(&[u8], Option<uuid::Uuid>)]) -> Vec<Vec<u8>> {
        fn raw(out: &mut BytesMut, row: &[u8], _: Option<&uuid::Uuid>) -> Result<(), EncodeError> {
            out.put_slice(row);
            Ok(())
        }
        let mut sent = Vec::new();
        let mut rows = rows.iter();
        let mut buf = Chunk::new();
        begin(&mut buf.0);
        let mut send = |mut chunk: Chunk| {
            let mut bytes = Vec::new();
            while chunk.has_remaining() {
                let part = chunk.chunk().len().min(1000);
                bytes.extend_from_slice(&chunk.chunk()[..part]);
                chunk.advance(part);
            }
            sent.push(bytes);
        };
        while fill(&mut buf.0, &mut rows, raw).unwrap() {
            send(std::mem::replace(&mut buf, Chunk::new()));
        }
        finish(&mut buf.0);
        send(buf);
        sent
    }

    #[test]
    fn reused_chunk_buffers_send_exactly_the_rows_bytes() {
        // Rows of many sizes (one larger than a whole chunk buffer), three batches
        // in a row: the later ones fill buffers the earlier ones gave back.
        let rows: Vec<Vec<u8>> = (0..900usize)
            .map(|i| {
                let len = if i == 450 {
                    3 * COPY_BUFFER_BYTES
                } else {
                    (i * 7919) % 4000
                };
                (0..len).map(|b| (b * 31 + i) as u8).collect()
            })
            .collect();
        let refs: Vec<(&[u8], Option<uuid::Uuid>)> = rows.iter().map(|r| (&r[..], None)).collect();
        let mut expected = HEADER.to_vec();
        for row in &rows {
            expected.extend_from_slice(row);
        }
        expected.extend_from_slice(&(-1i16).to_be_bytes());
        for batch in 0..3 {
            let sent = chunks(&refs);
            assert!(sent.len() > 3, "several chunks");
            for chunk in &sent[..sent.len() - 1] {
                assert!(
                    chunk.len() >= COPY_CHUNK_BYTES,
                    "batch {batch}: a short chunk"
                );
            }
            assert_eq!(sent.concat(), expected, "batch {batch}");
        }
        // The buffers went back (at most the pool's bound), the oversized one not.
        let kept = COPY_BUFFERS.kept();
        assert!((1..=4).contains(&kept), "{kept} kept");
        let buffer = COPY_BUFFERS.take();
        assert!(buffer.capacity() <= COPY_BUFFERS.max_bytes());
        COPY_BUFFERS.give(buffer);
    }

    #[test]
    fn text_scrubs_nul() {
        let mut out = BytesMut::new();
        text(&mut out, "a\0b").unwrap();
        assert_eq!(&out[..4], &5i32.to_be_bytes());
        assert_eq!(&out[4..], "a\u{FFFD}b".as_bytes());
    }

    #[test]
    fn timestamps_count_from_2000() {
        let mut out = BytesMut::new();
        let ts = DateTime::from_timestamp(946_684_801, 0).unwrap();
        timestamptz(&mut out, &ts).unwrap();
        assert_eq!(&out[4..], &1_000_000i64.to_be_bytes());
    }
}
