//! A row's canonical form, its link hash, the checkpoint message and the signing keys.

use chrono::{DateTime, NaiveDate, Utc};
use sha2::{Digest, Sha256};
use tokio_postgres::Row;

use super::{SigningKey, VerifyingKey};
use crate::postgres::personal::split_attributes;
use crate::postgres::PgError;

/// Domain prefix of a row's canonical form (a row without details).
const ROW_DOMAIN: &[u8] = b"tally-activity-v1";
/// Domain prefix of the canonical form of a row with details (schema version 12).
const ROW_DOMAIN_V2: &[u8] = b"tally-activity-v2";
/// Domain prefix of the canonical form v3 (schema version 19: personal fields
/// enter only through the row's personal digest).
const ROW_DOMAIN_V3: &[u8] = b"tally-activity-v3";
/// Domain prefix of the canonical form of a row whose `chain_form` Tally does not
/// know (never written by Tally; such a row cannot match a link Tally wrote).
const ROW_DOMAIN_UNKNOWN: &[u8] = b"tally-activity-unknown-form";
/// Domain prefix of the personal part hashed into a v3 row's personal digest.
const PERSONAL_DOMAIN: &[u8] = b"tally-personal-v1";
/// Domain prefix of the message an erasure signs for an erased v1/v2 row.
const ERASED_ROW_DOMAIN: &[u8] = b"tally-erased-row-v1";
/// `chain_form` of the canonical form v3.
pub const CHAIN_FORM_V3: i16 = 3;
/// Domain prefix of a signed checkpoint message.
const CHECKPOINT_DOMAIN: &[u8] = b"tally-checkpoint-v1";
/// Domain prefix of a signed truncation record.
const TRUNCATION_DOMAIN: &[u8] = b"tally-truncation-v1";

/// The columns of a row's canonical form, in order (`attributes` as the text
/// PostgreSQL prints for the jsonb value: keys sorted, duplicates removed). Then
/// the details extension (schema version 12), the v3 columns (schema version
/// 19): `chain_form`, `chain_salt`, the erasure columns, and last the row's
/// `personal_keys` (schema version 24). [`ChainRow::from_row`] splits a v3
/// row's attributes text into its public and personal parts in Rust
/// ([`split_attributes`]), byte for byte the texts of
/// `(attributes - tally_personal_keys(attributes, personal_keys))::text` and
/// `tally_personal_attributes(attributes, personal_keys)::text`. See
/// [`ChainRow::canonical`].
pub(crate) const ROW_COLUMNS: &str =
    "id, seq, ts, received_at, tenant_id, user_id, session_id, action, \
    outcome, resource_type, resource_id, service, trace_id, span_id, attributes::text, \
    taxonomy_valid, taxonomy_reason, duration_ms, name, error_type, error_message, \
    chain_form, chain_salt, erasure_id, erased_digest, erased_signature, personal_keys";

/// An `activity_events` row as the chain sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainRow {
    /// `id`.
    pub id: uuid::Uuid,
    /// `seq`.
    pub seq: i64,
    /// `ts`.
    pub ts: DateTime<Utc>,
    /// `received_at`.
    pub received_at: DateTime<Utc>,
    /// `tenant_id`.
    pub tenant_id: Option<String>,
    /// `user_id`.
    pub user_id: Option<String>,
    /// `session_id`.
    pub session_id: Option<String>,
    /// `action`.
    pub action: Option<String>,
    /// `outcome`.
    pub outcome: Option<String>,
    /// `resource_type`.
    pub resource_type: Option<String>,
    /// `resource_id`.
    pub resource_id: Option<String>,
    /// `service`.
    pub service: Option<String>,
    /// `trace_id`.
    pub trace_id: Option<String>,
    /// `span_id`.
    pub span_id: Option<String>,
    /// `attributes::text` (v1/v2); for a v3 row the text of the attributes
    /// without their personal keys.
    pub attributes: Option<String>,
    /// `taxonomy_valid`.
    pub taxonomy_valid: Option<bool>,
    /// `taxonomy_reason`.
    pub taxonomy_reason: Option<String>,
    /// `duration_ms`.
    pub duration_ms: Option<f64>,
    /// `name`.
    pub name: Option<String>,
    /// `error_type`.
    pub error_type: Option<String>,
    /// `error_message`.
    pub error_message: Option<String>,
    /// `None`: a row stored before schema version 19 (form v1/v2); `Some(3)`: v3.
    pub chain_form: Option<i16>,
    /// The random per-row salt of the personal digest (v3; `None` once erased).
    pub chain_salt: Option<Vec<u8>>,
    /// The erasure that erased the row.
    pub erasure_id: Option<uuid::Uuid>,
    /// The personal digest kept by the erasure of a v3 row.
    pub erased_digest: Option<Vec<u8>>,
    /// The erasure's signature over an erased v1/v2 row (see [`erased_row_message`]).
    pub erased_signature: Option<Vec<u8>>,
    /// The text of the personal attributes (v3 only; `None` when there are none).
    pub personal_attributes: Option<String>,
}

impl ChainRow {
    /// Reads a row selected with the chain's column list.
    pub(crate) fn from_row(row: &Row) -> Result<ChainRow, PgError> {
        let chain_form: Option<i16> = row.try_get(21)?;
        let text: Option<String> = row.try_get(14)?;
        let (attributes, personal_attributes) = match (chain_form, text) {
            (Some(_), Some(text)) => {
                let keys: Option<Vec<Option<String>>> = row.try_get(26)?;
                let split = split_attributes(text, keys.as_deref().unwrap_or(&[]))
                    .map_err(|e| PgError::Integrity(e.to_string()))?;
                (Some(split.public), split.personal)
            }
            (_, text) => (text, None),
        };
        Ok(ChainRow {
            id: row.try_get(0)?,
            seq: row.try_get(1)?,
            ts: row.try_get(2)?,
            received_at: row.try_get(3)?,
            tenant_id: row.try_get(4)?,
            user_id: row.try_get(5)?,
            session_id: row.try_get(6)?,
            action: row.try_get(7)?,
            outcome: row.try_get(8)?,
            resource_type: row.try_get(9)?,
            resource_id: row.try_get(10)?,
            service: row.try_get(11)?,
            trace_id: row.try_get(12)?,
            span_id: row.try_get(13)?,
            attributes,
            taxonomy_valid: row.try_get(15)?,
            taxonomy_reason: row.try_get(16)?,
            duration_ms: row.try_get(17)?,
            name: row.try_get(18)?,
            error_type: row.try_get(19)?,
            error_message: row.try_get(20)?,
            chain_form,
            chain_salt: row.try_get(22)?,
            erasure_id: row.try_get(23)?,
            erased_digest: row.try_get(24)?,
            erased_signature: row.try_get(25)?,
            personal_attributes,
        })
    }

    /// The row's personal digest computed from its values: HMAC-SHA256 keyed
    /// with `chain_salt` (empty when NULL) over `tally-personal-v1` and the
    /// fields `user_id`, `session_id` and the personal attributes' text, encoded
    /// like the canonical form's fields.
    pub fn personal_digest(&self) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        let key = self.chain_salt.as_deref().unwrap_or(&[]);
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = match hmac::Hmac::<Sha256>::new_from_slice(key) {
            Ok(mac) => mac,
            Err(_) => return [0; 32],
        };
        let mut message = Vec::with_capacity(64);
        message.extend_from_slice(PERSONAL_DOMAIN);
        for text in [&self.user_id, &self.session_id, &self.personal_attributes] {
            field(&mut message, text.as_deref().map(str::as_bytes));
        }
        mac.update(&message);
        mac.finalize().into_bytes().into()
    }

    /// Whether an erasure marked the row.
    pub fn is_erased(&self) -> bool {
        self.erasure_id.is_some()
    }

    /// The chain key of the row's tenant (`''` for no tenant).
    pub(super) fn tenant(&self) -> &str {
        self.tenant_id.as_deref().unwrap_or("")
    }

    /// The canonical byte form hashed into the chain: `tally-activity-v1`, then
    /// each column in `ROW_COLUMNS` order as a field — `0x00` for NULL, else
    /// `0x01`, the value's length (u32 big-endian) and its bytes: uuid 16 bytes,
    /// bigint 8 bytes big-endian, timestamptz microseconds since 1970-01-01 UTC
    /// as 8 bytes big-endian, text UTF-8, boolean one byte 0/1.
    ///
    /// A row with details (schema version 12: `duration_ms`, `name`,
    /// `error_type`, `error_message`, at least one not NULL) starts with
    /// `tally-activity-v2` instead and has those four more fields at the end
    /// (`duration_ms` as the IEEE 754 bits of the double, 8 bytes big-endian).
    /// A row without details (every row written before version 12) keeps
    /// exactly its earlier `v1` form and still verifies; a row with details is
    /// covered by them (setting them all to NULL afterwards changes the form,
    /// so the hash no longer matches).
    ///
    /// A row with `chain_form` 3 (stored from schema version 19 on) has the
    /// form v3 instead, see [`ChainRow::canonical_v3`].
    pub fn canonical(&self) -> Vec<u8> {
        match self.chain_form {
            None => self.canonical_v1_v2(),
            Some(CHAIN_FORM_V3) => self.canonical_v3(ROW_DOMAIN_V3),
            Some(_) => self.canonical_v3(ROW_DOMAIN_UNKNOWN),
        }
    }

    /// The canonical form v3: `tally-activity-v3`, then the fields id, seq, ts,
    /// received_at, tenant_id, action, outcome, resource_type, resource_id,
    /// service, trace_id, span_id, the attributes without their personal keys,
    /// taxonomy_valid, taxonomy_reason, duration_ms, name, error_type,
    /// error_message (encoded as in v1/v2), and last the 32-byte personal digest:
    /// [`ChainRow::personal_digest`], or for an erased row the digest the erasure
    /// kept (`erased_digest`). The personal fields (`user_id`, `session_id`, the
    /// personal attributes) enter only through that digest, salted with a random
    /// per-row salt that the erasure deletes.
    fn canonical_v3(&self, domain: &[u8]) -> Vec<u8> {
        let mut out = self.head(domain);
        texts(
            &mut out,
            [
                &self.tenant_id,
                &self.action,
                &self.outcome,
                &self.resource_type,
                &self.resource_id,
                &self.service,
                &self.trace_id,
                &self.span_id,
                &self.attributes,
            ],
        );
        self.taxonomy_fields(&mut out);
        self.detail_fields(&mut out);
        if self.is_erased() {
            field(&mut out, self.erased_digest.as_deref());
        } else {
            field(&mut out, Some(&self.personal_digest()));
        }
        out
    }

    /// The v1/v2 form (rows stored before schema version 19).
    fn canonical_v1_v2(&self) -> Vec<u8> {
        let details = self.duration_ms.is_some()
            || self.name.is_some()
            || self.error_type.is_some()
            || self.error_message.is_some();
        let mut out = self.head(if details { ROW_DOMAIN_V2 } else { ROW_DOMAIN });
        texts(
            &mut out,
            [
                &self.tenant_id,
                &self.user_id,
                &self.session_id,
                &self.action,
                &self.outcome,
                &self.resource_type,
                &self.resource_id,
                &self.service,
                &self.trace_id,
                &self.span_id,
                &self.attributes,
            ],
        );
        self.taxonomy_fields(&mut out);
        if details {
            self.detail_fields(&mut out);
        }
        out
    }

    /// The start of every form: `domain`, then the fields id, seq, ts and
    /// received_at.
    fn head(&self, domain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(domain);
        field(&mut out, Some(self.id.as_bytes()));
        field(&mut out, Some(&self.seq.to_be_bytes()));
        field(&mut out, Some(&self.ts.timestamp_micros().to_be_bytes()));
        field(
            &mut out,
            Some(&self.received_at.timestamp_micros().to_be_bytes()),
        );
        out
    }

    /// The fields taxonomy_valid and taxonomy_reason.
    fn taxonomy_fields(&self, out: &mut Vec<u8>) {
        fixed(out, self.taxonomy_valid.map(|v| [u8::from(v)]));
        field(out, self.taxonomy_reason.as_deref().map(str::as_bytes));
    }

    /// The details (schema version 12): duration_ms, name, error_type,
    /// error_message.
    fn detail_fields(&self, out: &mut Vec<u8>) {
        fixed(out, self.duration_ms.map(|d| d.to_bits().to_be_bytes()));
        texts(out, [&self.name, &self.error_type, &self.error_message]);
    }
}

/// Appends to `out` the canonical form v3 that [`ChainRow::canonical`] gives for
/// `event` once the direct `COPY` stored it with `chain_salt` `salt` (text with
/// each NUL as U+FFFD, `ts` in whole microseconds), with `seq` and `received_at`
/// zero (see [`fill_head`]). `public` and `personal` are the texts of its
/// attributes without and with only their personal keys (`None`: none), as
/// `jsonb_text::jsonb_text_split` prints them. Nothing is allocated.
pub(crate) fn append_event_v3(
    out: &mut Vec<u8>,
    event: &tally_model::ActivityEvent,
    salt: &[u8; 16],
    public: &str,
    personal: Option<&str>,
) {
    let mut put = |bytes: &[u8]| out.extend_from_slice(bytes);
    put(ROW_DOMAIN_V3);
    raw_field(Some(event.id.as_bytes()), &mut put);
    raw_field(Some(&0i64.to_be_bytes()), &mut put);
    raw_field(Some(&event.ts.timestamp_micros().to_be_bytes()), &mut put);
    raw_field(Some(&0i64.to_be_bytes()), &mut put);
    for text in [
        Some(event.tenant_id.as_deref().unwrap_or("")),
        Some(event.action.as_str()),
        Some(event.outcome.as_str()),
        event.resource_type.as_deref(),
        event.resource_id.as_deref(),
        event.service.as_deref(),
        event.trace_id.as_deref(),
        event.span_id.as_deref(),
        Some(public),
    ] {
        stored_text_field(text, &mut put);
    }
    raw_field(
        event
            .taxonomy_valid
            .map(|v| [u8::from(v)])
            .as_ref()
            .map(|b| &b[..]),
        &mut put,
    );
    stored_text_field(event.taxonomy_reason.as_deref(), &mut put);
    raw_field(
        event
            .duration_ms
            .filter(|d| d.is_finite())
            .map(|d| d.to_bits().to_be_bytes())
            .as_ref()
            .map(|b| &b[..]),
        &mut put,
    );
    for text in [
        event.name.as_deref(),
        event.error_type.as_deref(),
        event.error_message.as_deref(),
    ] {
        stored_text_field(text, &mut put);
    }
    let digest = personal_digest_of(
        salt,
        [
            event.user_id.as_deref(),
            event.session_id.as_deref(),
            personal,
        ],
    );
    raw_field(Some(&digest), &mut put);
}

/// [`ChainRow::personal_digest`] of a row with `chain_salt` `salt` and the texts
/// `user_id`, `session_id` and personal attributes as the writer holds them (each
/// NUL stored as U+FFFD).
fn personal_digest_of(salt: &[u8], texts: [Option<&str>; 3]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = match hmac::Hmac::<Sha256>::new_from_slice(salt) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    mac.update(PERSONAL_DOMAIN);
    for text in texts {
        stored_text_field(text, |bytes| mac.update(bytes));
    }
    mac.finalize().into_bytes().into()
}

/// [`field`], handed to `put` in pieces.
fn raw_field(value: Option<&[u8]>, mut put: impl FnMut(&[u8])) {
    match value {
        None => put(&[0]),
        Some(bytes) => {
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            put(&[1]);
            put(&len.to_be_bytes());
            put(bytes);
        }
    }
}

/// A text as the `COPY` encoder stores it (each NUL as U+FFFD) as a [`field`],
/// handed to `put` in pieces.
fn stored_text_field(value: Option<&str>, mut put: impl FnMut(&[u8])) {
    let Some(text) = value else {
        put(&[0]);
        return;
    };
    let bytes = text.as_bytes();
    // Most texts hold no NUL: a memchr answers that.
    let nuls = if bytes.contains(&0) {
        bytes.iter().filter(|b| **b == 0).count()
    } else {
        0
    };
    // Each NUL (1 byte) becomes U+FFFD (3 bytes).
    let len = u32::try_from(bytes.len() + 2 * nuls).unwrap_or(u32::MAX);
    put(&[1]);
    put(&len.to_be_bytes());
    if nuls == 0 {
        put(bytes);
    } else {
        for (i, part) in bytes.split(|b| *b == 0).enumerate() {
            if i > 0 {
                put("\u{FFFD}".as_bytes());
            }
            put(part);
        }
    }
}

/// Sets `seq` and `received_at` in a canonical form v3 that [`ChainRow::canonical`]
/// produced (the writer computes the form before its `seq` range is reserved).
/// `false` when the bytes do not have the v3 layout.
pub(crate) fn fill_head(canonical: &mut [u8], seq: i64, received_at: DateTime<Utc>) -> bool {
    // domain, then id (0x01, length 16, 16 bytes), seq (0x01, 8, 8 bytes), ts and
    // received_at (0x01, 8, 8 bytes each).
    let seq_at = ROW_DOMAIN_V3.len() + 21;
    let received_at_at = seq_at + 26;
    let eight = 8u32.to_be_bytes();
    let field_ok = |at: usize| {
        canonical.get(at) == Some(&1) && canonical.get(at + 1..at + 5) == Some(&eight[..])
    };
    if !canonical.starts_with(ROW_DOMAIN_V3)
        || canonical.get(ROW_DOMAIN_V3.len()..ROW_DOMAIN_V3.len() + 5)
            != Some(&[1, 0, 0, 0, 16][..])
        || !field_ok(seq_at)
        || !field_ok(seq_at + 13)
        || !field_ok(received_at_at)
    {
        return false;
    }
    canonical[seq_at + 5..seq_at + 13].copy_from_slice(&seq.to_be_bytes());
    canonical[received_at_at + 5..received_at_at + 13]
        .copy_from_slice(&received_at.timestamp_micros().to_be_bytes());
    true
}

/// Text columns as fields, in order.
fn texts<const N: usize>(out: &mut Vec<u8>, values: [&Option<String>; N]) {
    for text in values {
        field(out, text.as_deref().map(str::as_bytes));
    }
}

/// A fixed-size value (integer, double bits, boolean byte) as a field.
fn fixed<const N: usize>(out: &mut Vec<u8>, value: Option<[u8; N]>) {
    field(out, value.as_ref().map(|bytes| &bytes[..]));
}

fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.push(0),
        Some(bytes) => {
            out.push(1);
            // Column values are far below 4 GiB (PostgreSQL caps a field at 1 GB).
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(bytes);
        }
    }
}

/// The message an erasure signs for an erased v1/v2 row (whose chained hash
/// covers the personal values it removed): `tally-erased-row-v1`, then the
/// fields tenant, seq (8 bytes), the link's `row_hash`, SHA-256 of the erased
/// row's canonical form and the erasure id (16 bytes), encoded like
/// [`ChainRow::canonical`]'s fields.
pub fn erased_row_message(
    tenant: &str,
    seq: i64,
    link_hash: &[u8],
    erased_canonical: &[u8],
    erasure_id: uuid::Uuid,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + tenant.len());
    out.extend_from_slice(ERASED_ROW_DOMAIN);
    field(&mut out, Some(tenant.as_bytes()));
    field(&mut out, Some(&seq.to_be_bytes()));
    field(&mut out, Some(link_hash));
    field(&mut out, Some(Sha256::digest(erased_canonical).as_slice()));
    field(&mut out, Some(erasure_id.as_bytes()));
    out
}

/// `SHA-256(prev_hash || canonical)`.
pub fn row_hash(prev_hash: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical);
    hasher.finalize().into()
}

/// The message a checkpoint signs: `tally-checkpoint-v1`, then the fields
/// tenant (UTF-8), seq (8 bytes), head hash (32 bytes) and signed_at
/// (microseconds, 8 bytes), encoded like [`ChainRow::canonical`]'s fields.
pub fn checkpoint_message(
    tenant: &str,
    seq: i64,
    head_hash: &[u8],
    signed_at: DateTime<Utc>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + tenant.len());
    out.extend_from_slice(CHECKPOINT_DOMAIN);
    field(&mut out, Some(tenant.as_bytes()));
    field(&mut out, Some(&seq.to_be_bytes()));
    field(&mut out, Some(head_hash));
    field(&mut out, Some(&signed_at.timestamp_micros().to_be_bytes()));
    out
}

/// What a signed `chain_truncations` row states: retention dropped the rows of
/// `tenant` on `day` from `table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncationRecord {
    /// The table the rows were dropped from.
    pub table: String,
    /// The tenant (`''`: events without a tenant).
    pub tenant: String,
    /// The day dropped.
    pub day: NaiveDate,
    /// Rows dropped (chained or not).
    pub rows: i64,
    /// The smallest `seq` dropped.
    pub min_seq: Option<i64>,
    /// The largest `seq` dropped.
    pub max_seq: Option<i64>,
    /// Rows dropped that were chained (seq at or below the chain watermark).
    pub chained_rows: i64,
    /// The largest chained seq dropped, and its link's `row_hash`.
    pub last_chained_seq: Option<i64>,
    /// The `row_hash` of the link at `last_chained_seq`.
    pub last_chained_hash: Option<Vec<u8>>,
    /// When the rows were dropped.
    pub dropped_at: DateTime<Utc>,
}

impl TruncationRecord {
    /// The message a truncation record's signature covers: `tally-truncation-v1`,
    /// then the fields table, tenant, day (`YYYY-MM-DD`), rows, min_seq, max_seq,
    /// chained_rows, last_chained_seq (integers 8 bytes big-endian), last_chained_hash
    /// and dropped_at (microseconds, 8 bytes), encoded like [`ChainRow::canonical`]'s
    /// fields (NULL as `0x00`).
    pub fn message(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.tenant.len() + self.table.len());
        out.extend_from_slice(TRUNCATION_DOMAIN);
        field(&mut out, Some(self.table.as_bytes()));
        field(&mut out, Some(self.tenant.as_bytes()));
        field(
            &mut out,
            Some(self.day.format("%Y-%m-%d").to_string().as_bytes()),
        );
        field(&mut out, Some(&self.rows.to_be_bytes()));
        fixed(&mut out, self.min_seq.map(i64::to_be_bytes));
        fixed(&mut out, self.max_seq.map(i64::to_be_bytes));
        field(&mut out, Some(&self.chained_rows.to_be_bytes()));
        fixed(&mut out, self.last_chained_seq.map(i64::to_be_bytes));
        field(&mut out, self.last_chained_hash.as_deref());
        field(
            &mut out,
            Some(&self.dropped_at.timestamp_micros().to_be_bytes()),
        );
        out
    }
}

/// The id of a public key: hex of the first 8 bytes of SHA-256(public key).
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex(&digest[..8])
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A signing key from its 32-byte seed.
pub fn signing_key_from_seed(seed: &[u8]) -> Result<SigningKey, PgError> {
    let seed: [u8; 32] = seed.try_into().map_err(|_| {
        PgError::Integrity(format!(
            "an Ed25519 signing key seed has 32 bytes, not {}",
            seed.len()
        ))
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A signing key from `exporters.postgres.tamper_evidence.signing_key`: the
/// 32-byte seed in base64 (standard or URL-safe alphabet, padding optional) or
/// as 64 hex digits. Surrounding whitespace is ignored.
pub fn signing_key_from_config(text: &str) -> Result<SigningKey, PgError> {
    use base64::Engine;
    let text = text.trim();
    let seed = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| PgError::Integrity("the signing key is not valid hex".into()))?
    } else {
        let unpadded = text.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(unpadded)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(unpadded))
            .map_err(|_| {
                PgError::Integrity("the signing key is neither base64 nor 64 hex digits".into())
            })?
    };
    signing_key_from_seed(&seed)
}

pub(super) fn hash32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32], PgError> {
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| PgError::Integrity(format!("{what} has {} bytes, not 32", b.len())))
}

#[cfg(test)]
mod tests;
