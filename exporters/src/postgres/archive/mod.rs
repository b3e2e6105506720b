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
//! Writing is here; checking an archive back is `archive/verify.rs`.

pub mod parquet_file;
mod verify;

use self::verify::*;
pub use self::verify::{archive_manifests, verify_archive, verify_archive_dir, ArchiveCheck};

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
        "LEFT JOIN LATERAL (SELECT prev_hash, row_hash \
         FROM tally_chain_link(t.tenant_id, t.seq) LIMIT 1) c ON true"
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

#[cfg(test)]
mod tests;
