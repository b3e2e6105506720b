//! Archives of what retention removes (`retention.archive`): before a raw
//! partition is dropped, or a tenant's rows are deleted from a partition kept for
//! others, its rows are written to `<dir>/<table>/<name>.ndjson` (or
//! `<name>.parquet`, `retention.archive.format: parquet`, see
//! [`parquet_file`]) with a signed `<name>.manifest.json` beside it (see
//! `docs/operations.md#archives`).
//!
//! An NDJSON data line is the row as PostgreSQL's `row_to_json` prints it (every column,
//! `attributes` byte for byte as the chain hashed it); an `activity_events` line
//! ends with `"_chain": {"prev_hash", "row_hash"}`, the row's link (null when the
//! row was not chained yet). The manifest holds the row count, the seq range, the
//! tenants with their row counts, the SHA-256 of the data file, the number of
//! chained rows and the *links digest* (SHA-256 over `seq` (8 bytes big-endian)
//! ‖ `row_hash` of every chained row, in seq order), and an Ed25519 signature by
//! the checkpoint signing key over `tally-archive-v1` followed by the manifest's
//! compact JSON with `signature` null.
//!
//! Both files are written under a temporary name, fsynced and renamed (the data
//! file first, the manifest last: a manifest means a complete archive), then the
//! directory is fsynced. [`verify_archive_dir`] checks archives back, both
//! formats through the same checks ([`RowChecks`]).
//!
//! Over 600 lines: writing an archive and checking one back share the manifest,
//! the line format and the chain-link rules; the checking half (`ArchiveCheck`
//! onwards) is the part to move to `archive/verify.rs` when this file next changes.

pub mod parquet_file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use ed25519_dalek::{Signer, Verifier};
use futures::{pin_mut, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_config::ArchiveFormat;
use tokio::io::AsyncWriteExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::chain::{hex, key_id, row_hash, ChainRow, SigningKey, VerifyingKey};
use super::PgError;

/// `format` of a manifest, and the domain prefix of its signed message.
pub const ARCHIVE_FORMAT: &str = "tally-archive-v1";
/// File name suffix of a manifest.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Size of the write buffer of a data file.
const WRITE_BUFFER: usize = 256 * 1024;

/// A tenant's rows in an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRows {
    /// The tenant (`''`: events without a tenant).
    pub tenant: String,
    /// Its rows in the archive.
    pub rows: i64,
}

/// The `<name>.manifest.json` of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`ARCHIVE_FORMAT`].
    pub format: String,
    /// `activity_events` or `token_usage`.
    pub table: String,
    /// The partition the rows came from.
    pub partition: String,
    /// Its UTC day (`YYYY-MM-DD`).
    pub day: String,
    /// `partition` (the whole partition, dropped) or `tenants` (the rows of the
    /// listed tenants, deleted from a partition kept for others).
    pub scope: String,
    /// The data file's name, in the manifest's directory.
    pub data_file: String,
    /// `ndjson` or `parquet`.
    pub data_format: String,
    /// Rows in the data file.
    pub rows: i64,
    /// The smallest `seq` archived.
    pub min_seq: Option<i64>,
    /// The largest `seq` archived.
    pub max_seq: Option<i64>,
    /// Rows per tenant.
    pub tenants: Vec<TenantRows>,
    /// Size of the data file in bytes.
    pub bytes: u64,
    /// SHA-256 of the data file, hex.
    pub sha256: String,
    /// Rows that carry their chain link (`activity_events` only).
    pub chained_rows: i64,
    /// SHA-256 over `seq ‖ row_hash` of the chained rows in seq order, hex
    /// (`null` for `token_usage`, which has no chain).
    pub links_digest: Option<String>,
    /// When the archive was written (RFC 3339, UTC).
    pub created_at: String,
    /// The signing key's id ([`key_id`]); `null` when unsigned.
    pub key_id: Option<String>,
    /// Ed25519 over [`Manifest::message`], hex; `null` when unsigned.
    pub signature: Option<String>,
}

impl Manifest {
    /// The signed message: [`ARCHIVE_FORMAT`], then the manifest as compact JSON
    /// with `signature` null.
    pub fn message(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature = None;
        let mut out = ARCHIVE_FORMAT.as_bytes().to_vec();
        // Serialising plain strings and integers cannot fail.
        if let Ok(json) = serde_json::to_vec(&unsigned) {
            out.extend_from_slice(&json);
        }
        out
    }

    fn sign(&mut self, key: &SigningKey) {
        self.key_id = Some(key_id(&key.verifying_key()));
        self.signature = None;
        self.signature = Some(hex(&key.sign(&self.message()).to_bytes()));
    }
}

/// Writing an archive failed: nothing is removed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The directory or a file could not be created, written, synced or renamed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        #[source]
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading the rows failed.
    #[error(transparent)]
    Db(#[from] PgError),
}

impl From<tokio_postgres::Error> for ArchiveError {
    fn from(error: tokio_postgres::Error) -> Self {
        ArchiveError::Db(error.into())
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let context = context.into();
    move |source| ArchiveError::Io { context, source }
}

/// What one archive holds.
#[derive(Debug, Clone)]
pub struct Archived {
    /// The manifest's path.
    pub manifest_path: PathBuf,
    /// The manifest written.
    pub manifest: Manifest,
}

/// Writes the rows of `partition` (of `table`, the UTC day `day`) to an archive
/// in `<dir>/<table>/`, as NDJSON or Parquet (`format`): every row, or with
/// `tenants` only theirs (named `<partition>.tenants-<min_seq>-<max_seq>`).
/// Reads in the caller's transaction (the caller locks the partition against
/// writes first). Answers `None` when there is no row to archive.
#[allow(clippy::too_many_arguments)]
pub async fn write_archive(
    client: &Client,
    dir: &Path,
    format: ArchiveFormat,
    table: &str,
    partition: &str,
    day: NaiveDate,
    tenants: Option<&[String]>,
    signer: Option<&SigningKey>,
) -> Result<Option<Archived>, ArchiveError> {
    let table_dir = dir.join(table);
    tokio::fs::create_dir_all(&table_dir)
        .await
        .map_err(io(format!(
            "cannot create the archive directory {}",
            table_dir.display()
        )))?;
    let temp = table_dir.join(format!(
        ".{partition}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let result = match format {
        ArchiveFormat::Ndjson => write_rows(client, &temp, table, partition, tenants).await,
        ArchiveFormat::Parquet => {
            parquet_file::write_rows(client, &temp, table, partition, tenants).await
        }
    };
    let scan = match result {
        Ok(scan) => scan,
        Err(error) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(error);
        }
    };
    if scan.rows == 0 {
        let _ = tokio::fs::remove_file(&temp).await;
        return Ok(None);
    }
    let name = match tenants {
        None => partition.to_owned(),
        Some(_) => format!(
            "{partition}.tenants-{}-{}",
            scan.min_seq.unwrap_or_default(),
            scan.max_seq.unwrap_or_default()
        ),
    };
    let extension = match format {
        ArchiveFormat::Ndjson => "ndjson",
        ArchiveFormat::Parquet => "parquet",
    };
    let data_file = format!("{name}.{extension}");
    let data_path = table_dir.join(&data_file);
    tokio::fs::rename(&temp, &data_path)
        .await
        .map_err(io(format!(
            "cannot rename the archive {}",
            data_path.display()
        )))?;
    let mut manifest = Manifest {
        format: ARCHIVE_FORMAT.to_owned(),
        table: table.to_owned(),
        partition: partition.to_owned(),
        day: day.format("%Y-%m-%d").to_string(),
        scope: if tenants.is_some() {
            "tenants"
        } else {
            "partition"
        }
        .to_owned(),
        data_file,
        data_format: extension.to_owned(),
        rows: scan.rows,
        min_seq: scan.min_seq,
        max_seq: scan.max_seq,
        tenants: scan
            .tenants
            .into_iter()
            .map(|(tenant, rows)| TenantRows { tenant, rows })
            .collect(),
        bytes: scan.bytes,
        sha256: hex(&scan.sha256),
        chained_rows: scan.chained_rows,
        links_digest: (table == "activity_events").then(|| hex(&scan.links_digest)),
        created_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        key_id: None,
        signature: None,
    };
    if let Some(key) = signer {
        manifest.sign(key);
    }
    let manifest_path = table_dir.join(format!("{name}{MANIFEST_SUFFIX}"));
    let mut text = serde_json::to_vec_pretty(&manifest).map_err(|e| ArchiveError::Io {
        context: "cannot encode the archive manifest".into(),
        source: std::io::Error::other(e),
    })?;
    text.push(b'\n');
    let temp_manifest = table_dir.join(format!(
        ".{name}.{}.manifest.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let written = async {
        let mut file = tokio::fs::File::create(&temp_manifest)
            .await
            .map_err(io(format!("cannot create {}", temp_manifest.display())))?;
        file.write_all(&text)
            .await
            .map_err(io(format!("cannot write {}", temp_manifest.display())))?;
        file.sync_all()
            .await
            .map_err(io(format!("cannot fsync {}", temp_manifest.display())))?;
        tokio::fs::rename(&temp_manifest, &manifest_path)
            .await
            .map_err(io(format!("cannot rename {}", manifest_path.display())))
    }
    .await;
    if let Err(error) = written {
        let _ = tokio::fs::remove_file(&temp_manifest).await;
        return Err(error);
    }
    let dir_handle = table_dir.clone();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir_handle)?.sync_all())
        .await
        .map_err(|e| ArchiveError::Io {
            context: "fsync of the archive directory".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(io(format!("cannot fsync {}", table_dir.display())))?;
    Ok(Some(Archived {
        manifest_path,
        manifest,
    }))
}

/// What the scan of the rows found.
#[derive(Default)]
struct Scan {
    rows: i64,
    min_seq: Option<i64>,
    max_seq: Option<i64>,
    tenants: BTreeMap<String, i64>,
    bytes: u64,
    sha256: [u8; 32],
    chained_rows: i64,
    links_digest: [u8; 32],
}

impl Scan {
    /// Counts a row written.
    fn count(&mut self, seq: i64, tenant: &str) {
        self.rows += 1;
        self.min_seq = Some(self.min_seq.map_or(seq, |m| m.min(seq)));
        self.max_seq = Some(self.max_seq.map_or(seq, |m| m.max(seq)));
        match self.tenants.get_mut(tenant) {
            Some(count) => *count += 1,
            None => {
                self.tenants.insert(tenant.to_owned(), 1);
            }
        }
    }
}

/// Streams `SELECT columns` over the rows to archive, in seq order: the
/// partition's rows as `t` (with `tenants`, only theirs), each joined with its
/// chain link as `c` (`activity_events`; no link for `token_usage`).
async fn select_rows(
    client: &Client,
    table: &str,
    partition: &str,
    tenants: Option<&[String]>,
    columns: &str,
) -> Result<tokio_postgres::RowStream, ArchiveError> {
    let quoted = format!("\"{}\"", partition.replace('"', "\"\""));
    let link = if table == "activity_events" {
        "LEFT JOIN activity_chain c ON c.tenant_id = t.tenant_id AND c.seq = t.seq"
    } else {
        "LEFT JOIN (SELECT NULL::text AS tenant_id, NULL::bigint AS seq, \
         NULL::bytea AS prev_hash, NULL::bytea AS row_hash) c ON false"
    };
    let filter = if tenants.is_some() {
        "WHERE t.tenant_id = ANY($1)"
    } else {
        ""
    };
    let sql = format!("SELECT {columns} FROM {quoted} t {link} {filter} ORDER BY t.seq");
    let owned: Vec<String> = tenants.map(<[String]>::to_vec).unwrap_or_default();
    let params: Vec<&(dyn ToSql + Sync)> = if tenants.is_some() {
        vec![&owned]
    } else {
        Vec::new()
    };
    Ok(client.query_raw(&sql, params).await?)
}

/// Streams the rows into `path` (created), fsynced, as NDJSON; answers what
/// was written.
async fn write_rows(
    client: &Client,
    path: &Path,
    table: &str,
    partition: &str,
    tenants: Option<&[String]>,
) -> Result<Scan, ArchiveError> {
    // A v3 activity row (canonical form 3) is hashed over its attributes without
    // their personal keys and, apart, its personal attributes: both as the chainer
    // computes them, kept in the line's `_chain` so the archive verifies offline.
    let parts = if table == "activity_events" {
        "CASE WHEN t.chain_form IS NOT NULL \
            THEN (t.attributes - tally_personal_keys(t.attributes, t.personal_keys))::text END, \
         CASE WHEN t.chain_form IS NOT NULL THEN tally_personal_attributes(t.attributes, t.personal_keys)::text END"
    } else {
        "NULL::text, NULL::text"
    };
    let rows = select_rows(
        client,
        table,
        partition,
        tenants,
        &format!("row_to_json(t)::text, t.seq, t.tenant_id, c.prev_hash, c.row_hash, {parts}"),
    )
    .await?;
    pin_mut!(rows);
    let file = tokio::fs::File::create(path)
        .await
        .map_err(io(format!("cannot create the archive {}", path.display())))?;
    let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut scan = Scan::default();
    let mut file_hash = Sha256::new();
    let mut links = Sha256::new();
    let mut line: Vec<u8> = Vec::with_capacity(4096);
    let activity = table == "activity_events";
    while let Some(row) = rows.try_next().await? {
        let json: &str = row.try_get(0)?;
        let seq: i64 = row.try_get(1)?;
        let tenant: &str = row.try_get(2)?;
        let prev_hash: Option<&[u8]> = row.try_get(3)?;
        let hash: Option<&[u8]> = row.try_get(4)?;
        let chained_attributes: Option<&str> = row.try_get(5)?;
        let personal_attributes: Option<&str> = row.try_get(6)?;
        let Some(body) = json.strip_suffix('}') else {
            return Err(
                PgError::Integrity(format!("row_to_json gave no object for seq {seq}")).into(),
            );
        };
        line.clear();
        line.extend_from_slice(body.as_bytes());
        if activity {
            match (prev_hash, hash) {
                (Some(prev), Some(hash)) => {
                    line.extend_from_slice(b",\"_chain\":{\"prev_hash\":\"");
                    push_hex(&mut line, prev);
                    line.extend_from_slice(b"\",\"row_hash\":\"");
                    push_hex(&mut line, hash);
                    line.push(b'"');
                    for (name, text) in [
                        ("attributes", chained_attributes),
                        ("personal", personal_attributes),
                    ] {
                        if let Some(text) = text {
                            line.extend_from_slice(format!(",\"{name}\":").as_bytes());
                            serde_json::to_writer(&mut line, text).map_err(|e| {
                                PgError::Integrity(format!("cannot encode seq {seq}: {e}"))
                            })?;
                        }
                    }
                    line.push(b'}');
                    links.update(seq.to_be_bytes());
                    links.update(hash);
                    scan.chained_rows += 1;
                }
                _ => line.extend_from_slice(b",\"_chain\":null"),
            }
        }
        line.extend_from_slice(b"}\n");
        file_hash.update(&line);
        out.write_all(&line)
            .await
            .map_err(io(format!("cannot write the archive {}", path.display())))?;
        scan.bytes += line.len() as u64;
        scan.count(seq, tenant);
    }
    out.flush()
        .await
        .map_err(io(format!("cannot write the archive {}", path.display())))?;
    out.get_ref()
        .sync_all()
        .await
        .map_err(io(format!("cannot fsync the archive {}", path.display())))?;
    scan.sha256 = file_hash.finalize().into();
    scan.links_digest = links.finalize().into();
    Ok(scan)
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
}

/// The check of one archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveCheck {
    /// The manifest's path.
    pub manifest: PathBuf,
    /// Rows read from the data file.
    pub rows: i64,
    /// Chained rows whose hash was recomputed from the archived row.
    pub rows_rehashed: i64,
    /// Links compared with the chain in the database.
    pub links_matched_in_database: i64,
    /// What does not match (empty: intact).
    pub problems: Vec<String>,
}

impl ArchiveCheck {
    /// Whether the archive matches its manifest (and the chain).
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// An `activity_events` data line, as far as the chain's canonical form needs it.
#[derive(Deserialize)]
struct ArchivedActivity<'a> {
    id: uuid::Uuid,
    seq: i64,
    ts: String,
    received_at: String,
    tenant_id: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    service: Option<String>,
    trace_id: Option<String>,
    span_id: Option<String>,
    #[serde(borrow)]
    attributes: Option<&'a serde_json::value::RawValue>,
    taxonomy_valid: Option<bool>,
    taxonomy_reason: Option<String>,
    #[serde(default)]
    duration_ms: Option<Double>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error_message: Option<String>,
    #[serde(default)]
    chain_form: Option<i16>,
    #[serde(default)]
    chain_salt: Option<String>,
    #[serde(default)]
    erasure_id: Option<uuid::Uuid>,
    #[serde(default)]
    erased_digest: Option<String>,
    #[serde(default)]
    erased_signature: Option<String>,
    #[serde(rename = "_chain")]
    chain: Option<ArchivedLink>,
}

/// Why an archived activity line cannot be hashed again.
#[derive(Debug, thiserror::Error)]
enum LineProblem {
    #[error("{0}")]
    Json(serde_json::Error),
    #[error("{0} is not a timestamp")]
    Timestamp(&'static str),
    #[error("duration_ms is not a number")]
    Duration,
    #[error("attributes differ from the parts the chain hashed")]
    Parts,
    #[error("a chain hash is not 32 bytes of hex")]
    Hash,
    #[error("{0} is not a bytea")]
    Bytea(&'static str),
    #[error("{0} does not have the column's type")]
    Column(&'static str),
}

/// A `bytea` as `row_to_json` prints it (`\\x` and hex).
fn bytea(text: &Option<String>, column: &'static str) -> Result<Option<Vec<u8>>, LineProblem> {
    match text {
        None => Ok(None),
        Some(text) => text
            .strip_prefix("\\x")
            .and_then(|hex| ::hex::decode(hex).ok())
            .map(Some)
            .ok_or(LineProblem::Bytea(column)),
    }
}

/// Whether `whole` (the archived attributes) is exactly `chained` plus `personal`
/// (a v3 row's two hashed parts), compared as JSON values.
fn parts_make_whole(whole: Option<&str>, chained: Option<&str>, personal: Option<&str>) -> bool {
    let parse = |text: Option<&str>| -> Option<serde_json::Map<String, serde_json::Value>> {
        match serde_json::from_str(text?).ok()? {
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        }
    };
    let Some(whole) = parse(whole) else {
        return chained.is_none() && personal.is_none();
    };
    let mut joined = parse(chained).unwrap_or_default();
    for (key, value) in parse(personal).unwrap_or_default() {
        if joined.insert(key, value).is_some() {
            return false;
        }
    }
    joined == whole
}

/// A double as `row_to_json` prints it: a number, or `"NaN"` / `"Infinity"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Double {
    Number(f64),
    Text(String),
}

impl Double {
    fn value(&self) -> Option<f64> {
        match self {
            Double::Number(n) => Some(*n),
            Double::Text(t) => match t.as_str() {
                "NaN" => Some(f64::NAN),
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                _ => None,
            },
        }
    }
}

#[derive(Deserialize)]
struct ArchivedLink {
    prev_hash: String,
    row_hash: String,
    /// A v3 row's attributes without their personal keys, as chained.
    #[serde(default)]
    attributes: Option<String>,
    /// A v3 row's personal attributes, as chained.
    #[serde(default)]
    personal: Option<String>,
}

/// A line's seq and tenant (both tables).
#[derive(Deserialize)]
struct ArchivedKey {
    seq: i64,
    tenant_id: Option<String>,
}

fn timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A chain link: `prev_hash` and `row_hash`.
type Link = ([u8; 32], [u8; 32]);

/// An archived row's chain link and, for a v3 row, the two attribute parts the
/// chain hashed (both formats).
struct ArchivedLinkParts {
    prev_hash: [u8; 32],
    row_hash: [u8; 32],
    attributes: Option<String>,
    personal: Option<String>,
}

/// Completes an archived activity row read from either format: `row` without
/// its attributes, `whole` the archived attributes' text, `link` the archived
/// link. A v3 row's parts must make up its whole attributes.
fn linked(
    mut row: ChainRow,
    whole: Option<&str>,
    link: Option<ArchivedLinkParts>,
) -> Result<(ChainRow, Option<Link>), LineProblem> {
    let Some(link) = link else {
        row.attributes = whole.map(str::to_owned);
        return Ok((row, None));
    };
    if row.chain_form.is_some() {
        if !parts_make_whole(whole, link.attributes.as_deref(), link.personal.as_deref()) {
            return Err(LineProblem::Parts);
        }
        row.attributes = link.attributes;
    } else {
        row.attributes = whole.map(str::to_owned);
    }
    row.personal_attributes = link.personal;
    Ok((row, Some((link.prev_hash, link.row_hash))))
}

/// The chain row of an archived NDJSON activity line, its link, or why not.
fn chain_row(line: &str) -> Result<(ChainRow, Option<Link>), LineProblem> {
    let a: ArchivedActivity = serde_json::from_str(line).map_err(LineProblem::Json)?;
    let ts = timestamp(&a.ts).ok_or(LineProblem::Timestamp("ts"))?;
    let received_at = timestamp(&a.received_at).ok_or(LineProblem::Timestamp("received_at"))?;
    let duration_ms = match &a.duration_ms {
        None => None,
        Some(d) => Some(d.value().ok_or(LineProblem::Duration)?),
    };
    let link = match a.chain {
        None => None,
        Some(link) => {
            let decode = |text: &str| -> Result<[u8; 32], LineProblem> {
                ::hex::decode(text)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                    .ok_or(LineProblem::Hash)
            };
            Some(ArchivedLinkParts {
                prev_hash: decode(&link.prev_hash)?,
                row_hash: decode(&link.row_hash)?,
                attributes: link.attributes,
                personal: link.personal,
            })
        }
    };
    let row = ChainRow {
        id: a.id,
        seq: a.seq,
        ts,
        received_at,
        tenant_id: a.tenant_id,
        user_id: a.user_id,
        session_id: a.session_id,
        action: a.action,
        outcome: a.outcome,
        resource_type: a.resource_type,
        resource_id: a.resource_id,
        service: a.service,
        trace_id: a.trace_id,
        span_id: a.span_id,
        attributes: None,
        taxonomy_valid: a.taxonomy_valid,
        taxonomy_reason: a.taxonomy_reason,
        duration_ms,
        name: a.name,
        error_type: a.error_type,
        error_message: a.error_message,
        chain_form: a.chain_form,
        chain_salt: bytea(&a.chain_salt, "chain_salt")?,
        erasure_id: a.erasure_id,
        erased_digest: bytea(&a.erased_digest, "erased_digest")?,
        erased_signature: bytea(&a.erased_signature, "erased_signature")?,
        personal_attributes: None,
    };
    linked(row, a.attributes.map(|raw| raw.get()), link)
}

/// Links checked against the database at once.
const LINK_BATCH: usize = 5_000;
/// Problems listed per archive at most.
const MAX_PROBLEMS: usize = 20;
/// Read buffer of a data file.
const READ_BUFFER: usize = 256 * 1024;

/// The checks of an archive's rows, the same for both formats: each format's
/// reader hands every row's seq and tenant to [`RowChecks::count`] and every
/// `activity_events` row's chain row to [`RowChecks::chained`];
/// [`RowChecks::finish`] compares the totals with the manifest.
struct RowChecks<'c> {
    check: ArchiveCheck,
    activity: bool,
    database: Option<&'c Client>,
    tenants: BTreeMap<String, i64>,
    min_seq: Option<i64>,
    max_seq: Option<i64>,
    links: Sha256,
    chained: i64,
    pending: Vec<(String, i64, [u8; 32])>,
}

impl<'c> RowChecks<'c> {
    fn new(check: ArchiveCheck, table: &str, database: Option<&'c Client>) -> Self {
        RowChecks {
            check,
            activity: table == "activity_events",
            database,
            tenants: BTreeMap::new(),
            min_seq: None,
            max_seq: None,
            links: Sha256::new(),
            chained: 0,
            pending: Vec::new(),
        }
    }

    /// Whether the rows' chain is checked (`activity_events`).
    fn activity(&self) -> bool {
        self.activity
    }

    /// Whether enough problems are listed: the reader only counts bytes on.
    fn full(&self) -> bool {
        self.check.problems.len() > MAX_PROBLEMS
    }

    /// Lists a problem (up to [`MAX_PROBLEMS`]).
    fn problem(&mut self, text: String) {
        if !self.full() {
            self.check.problems.push(text);
        }
    }

    /// Counts a row read.
    fn count(&mut self, seq: i64, tenant: Option<String>) {
        self.check.rows += 1;
        self.min_seq = Some(self.min_seq.map_or(seq, |m| m.min(seq)));
        self.max_seq = Some(self.max_seq.map_or(seq, |m| m.max(seq)));
        *self.tenants.entry(tenant.unwrap_or_default()).or_insert(0) += 1;
    }

    /// Checks an activity row (`place`: where it is in the file): re-hashed
    /// against its link, the link digested and, with a database, queued for the
    /// comparison with the chain.
    async fn chained(
        &mut self,
        place: &str,
        seq: i64,
        row: Result<(ChainRow, Option<Link>), LineProblem>,
    ) -> Result<(), PgError> {
        match row {
            Err(why) => self.problem(format!("{place} (seq {seq}): {why}")),
            Ok((_, None)) => {}
            Ok((row, Some((prev, hash)))) => {
                self.chained += 1;
                self.links.update(row.seq.to_be_bytes());
                self.links.update(hash);
                if row_hash(&prev, &row.canonical()) == hash {
                    self.check.rows_rehashed += 1;
                } else {
                    self.problem(format!(
                        "{place} (seq {}): the row does not hash to its chain link \
                         (altered in the archive)",
                        row.seq
                    ));
                }
                if let Some(client) = self.database {
                    self.pending
                        .push((row.tenant_id.clone().unwrap_or_default(), row.seq, hash));
                    if self.pending.len() >= LINK_BATCH {
                        compare_links(client, &mut self.pending, &mut self.check).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Compares what was read (the data file's `bytes` and `sha256`) with the
    /// manifest; answers the check.
    async fn finish(
        mut self,
        manifest: &Manifest,
        bytes: u64,
        sha256: &str,
    ) -> Result<ArchiveCheck, PgError> {
        let check = &mut self.check;
        if check.problems.len() > MAX_PROBLEMS {
            check.problems.push("(more problems not listed)".into());
        }
        if bytes != manifest.bytes {
            check.problems.push(format!(
                "the data file has {bytes} bytes, the manifest says {}",
                manifest.bytes
            ));
        }
        if sha256 != manifest.sha256 {
            check.problems.push(format!(
                "the data file's SHA-256 is {sha256}, the manifest says {}",
                manifest.sha256
            ));
        }
        if check.rows != manifest.rows {
            check.problems.push(format!(
                "the data file has {} rows, the manifest says {}",
                check.rows, manifest.rows
            ));
        }
        let (min_seq, max_seq) = (self.min_seq, self.max_seq);
        if (min_seq, max_seq) != (manifest.min_seq, manifest.max_seq) {
            check.problems.push(format!(
                "the rows' seq range is {min_seq:?}..={max_seq:?}, the manifest says {:?}..={:?}",
                manifest.min_seq, manifest.max_seq
            ));
        }
        let listed: BTreeMap<String, i64> = manifest
            .tenants
            .iter()
            .map(|t| (t.tenant.clone(), t.rows))
            .collect();
        if listed != self.tenants {
            check
                .problems
                .push("the rows' tenants or their counts differ from the manifest's".into());
        }
        if self.activity {
            if self.chained != manifest.chained_rows {
                check.problems.push(format!(
                    "{} rows carry a chain link, the manifest says {}",
                    self.chained, manifest.chained_rows
                ));
            }
            let digest = hex(&self.links.finalize());
            if manifest.links_digest.as_deref() != Some(digest.as_str()) {
                check.problems.push(
                    "the links digest of the archived rows differs from the manifest's".into(),
                );
            }
        }
        if let Some(client) = self.database {
            compare_links(client, &mut self.pending, check).await?;
        }
        Ok(self.check)
    }
}

/// Checks one archive: the manifest's signature (with `trusted` keys), the data
/// file's size, SHA-256, row count, seq range and tenants, and for
/// `activity_events` every chained row's hash recomputed from the archived row
/// (the chain's canonical form) and the links digest; with `database`, each link
/// is also compared with the chain's (`activity_chain` keeps links after their
/// rows are dropped). The data file is NDJSON or Parquet (the manifest's
/// `data_format`); both are read through the same checks.
pub async fn verify_archive(
    manifest_path: &Path,
    trusted: &[VerifyingKey],
    database: Option<&Client>,
) -> Result<ArchiveCheck, PgError> {
    let mut check = ArchiveCheck {
        manifest: manifest_path.to_owned(),
        rows: 0,
        rows_rehashed: 0,
        links_matched_in_database: 0,
        problems: Vec::new(),
    };
    let text = std::fs::read_to_string(manifest_path).map_err(|e| {
        PgError::io(
            format!("cannot read the manifest {}", manifest_path.display()),
            e,
        )
    })?;
    let manifest: Manifest = match serde_json::from_str(&text) {
        Ok(manifest) => manifest,
        Err(e) => {
            check
                .problems
                .push(format!("the manifest is not valid: {e}"));
            return Ok(check);
        }
    };
    if manifest.format != ARCHIVE_FORMAT {
        check
            .problems
            .push(format!("unknown archive format {:?}", manifest.format));
        return Ok(check);
    }
    check_signature(&manifest, trusted, &mut check.problems);
    let name_ok = !manifest.data_file.is_empty()
        && !manifest.data_file.contains(['/', '\\'])
        && manifest.data_file != ".."
        && manifest.data_file != ".";
    if !name_ok {
        check.problems.push(format!(
            "data_file {:?} is not a file name",
            manifest.data_file
        ));
        return Ok(check);
    }
    let data_path = manifest_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(&manifest.data_file);
    let mut checks = RowChecks::new(check, &manifest.table, database);
    let read = match manifest.data_format.as_str() {
        "ndjson" => check_ndjson_rows(&data_path, &mut checks).await?,
        "parquet" => parquet_file::check_rows(&data_path, &mut checks).await?,
        other => {
            checks.problem(format!("unknown data format {other:?}"));
            None
        }
    };
    match read {
        Some((sha256, bytes)) => checks.finish(&manifest, bytes, &sha256).await,
        None => Ok(checks.check),
    }
}

/// Reads an NDJSON data file into `checks`, line by line (memory stays bounded
/// whatever the archive's size); answers the file's SHA-256 and size, `None`
/// when it cannot be opened.
async fn check_ndjson_rows(
    data_path: &Path,
    checks: &mut RowChecks<'_>,
) -> Result<Option<(String, u64)>, PgError> {
    let file = match std::fs::File::open(data_path) {
        Ok(file) => file,
        Err(e) => {
            checks.problem(format!(
                "cannot read the data file {}: {e}",
                data_path.display()
            ));
            return Ok(None);
        }
    };
    let mut reader = std::io::BufReader::with_capacity(READ_BUFFER, file);
    let mut file_hash = Sha256::new();
    let mut bytes = 0u64;
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    let mut at = 0usize;
    loop {
        buffer.clear();
        let read = std::io::BufRead::read_until(&mut reader, b'\n', &mut buffer).map_err(|e| {
            PgError::io(
                format!("cannot read the data file {}", data_path.display()),
                e,
            )
        })?;
        if read == 0 {
            break;
        }
        file_hash.update(&buffer);
        bytes += read as u64;
        at += 1;
        if checks.full() {
            continue;
        }
        let Ok(line) = std::str::from_utf8(&buffer) else {
            checks.problem(format!("line {at} is not UTF-8"));
            continue;
        };
        let line = line.strip_suffix('\n').unwrap_or(line);
        let key: ArchivedKey = match serde_json::from_str(line) {
            Ok(key) => key,
            Err(e) => {
                checks.problem(format!("line {at} is not an archived row: {e}"));
                continue;
            }
        };
        checks.count(key.seq, key.tenant_id);
        if checks.activity() {
            checks
                .chained(&format!("line {at}"), key.seq, chain_row(line))
                .await?;
        }
    }
    Ok(Some((hex(&file_hash.finalize()), bytes)))
}

/// Compares the archived links in `pending` with `activity_chain`, then empties it.
async fn compare_links(
    client: &Client,
    pending: &mut Vec<(String, i64, [u8; 32])>,
    check: &mut ArchiveCheck,
) -> Result<(), PgError> {
    if pending.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = pending.iter().map(|(t, _, _)| t.as_str()).collect();
    let seqs: Vec<i64> = pending.iter().map(|(_, s, _)| *s).collect();
    let hashes: Vec<&[u8]> = pending.iter().map(|(_, _, h)| &h[..]).collect();
    let rows = client
        .query(
            "SELECT a.seq, c.row_hash = a.hash FROM unnest($1::text[], $2::int8[], \
             $3::bytea[]) AS a(tenant, seq, hash) LEFT JOIN activity_chain c \
             ON c.tenant_id = a.tenant AND c.seq = a.seq",
            &[&tenants, &seqs, &hashes],
        )
        .await?;
    for row in rows {
        let seq: i64 = row.try_get(0)?;
        match row.try_get::<_, Option<bool>>(1)? {
            Some(true) => check.links_matched_in_database += 1,
            Some(false) if check.problems.len() <= MAX_PROBLEMS => check.problems.push(format!(
                "seq {seq}: the archived link differs from the chain in the database"
            )),
            None if check.problems.len() <= MAX_PROBLEMS => check.problems.push(format!(
                "seq {seq}: the chain in the database has no link for this archived row"
            )),
            _ => {}
        }
    }
    pending.clear();
    Ok(())
}

fn check_signature(manifest: &Manifest, trusted: &[VerifyingKey], problems: &mut Vec<String>) {
    let (Some(id), Some(signature)) = (&manifest.key_id, &manifest.signature) else {
        problems.push("the manifest is not signed".into());
        return;
    };
    let Some(key) = trusted.iter().find(|k| &key_id(k) == id) else {
        problems.push(format!(
            "the manifest is signed by key {id}, which is not the trusted signing key"
        ));
        return;
    };
    let valid = ::hex::decode(signature)
        .ok()
        .and_then(|bytes| ed25519_dalek::Signature::from_slice(&bytes).ok())
        .is_some_and(|s| key.verify(&manifest.message(), &s).is_ok());
    if !valid {
        problems.push("the manifest's signature does not verify (altered manifest)".into());
    }
}

/// The manifests under `dir`: in `dir` itself and in its subdirectories (one
/// level: `<dir>/<table>/`), sorted.
pub fn archive_manifests(dir: &Path) -> Result<Vec<PathBuf>, PgError> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    let read = |d: &Path| {
        std::fs::read_dir(d).map_err(|e| {
            PgError::io(
                format!("cannot read the archive directory {}", d.display()),
                e,
            )
        })
    };
    for entry in read(dir)? {
        let entry = entry.map_err(|e| PgError::io(format!("cannot read {}", dir.display()), e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(entry.path());
        }
    }
    for d in &dirs {
        for entry in read(d)? {
            let entry =
                entry.map_err(|e| PgError::io(format!("cannot read {}", d.display()), e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(MANIFEST_SUFFIX) && !name.starts_with('.') {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Checks every archive under `dir` (see [`verify_archive`]).
pub async fn verify_archive_dir(
    dir: &Path,
    trusted: &[VerifyingKey],
    database: Option<&Client>,
) -> Result<Vec<ArchiveCheck>, PgError> {
    let mut checks = Vec::new();
    for manifest in archive_manifests(dir)? {
        checks.push(verify_archive(&manifest, trusted, database).await?);
    }
    Ok(checks)
}

#[cfg(test)]
mod tests;
