//! Tamper evidence: a per-tenant SHA-256 hash chain over `activity_events`,
//! signed checkpoints, and its verification (see `docs/tamper-evidence.md`).
//!
//! The **chainer** ([`ChainJob`]) runs after the writers commit. One run is one
//! transaction under [`CHAIN_LOCK_KEY`]: it reads the global watermark
//! (`chain_watermark.last_seq`), takes the next committed rows in `seq` order
//! (`seq` is commit-ordered, so when a row is visible every smaller `seq` is
//! committed), computes for each row
//! `row_hash = SHA-256(prev_hash || canonical form)` where `prev_hash` is the
//! tenant's previous link (32 zero bytes for its first row), inserts the links
//! into `activity_chain`, moves `chain_heads` and the watermark, and — when a
//! checkpoint is due — signs every tenant's new head with Ed25519 into
//! `chain_checkpoints`. A run cut short rolls back entirely, so every row is
//! chained exactly once, whatever the number of Tally instances.
//!
//! **Verification** ([`verify`]) re-walks one tenant's links and rows in `seq`
//! order in one read-only snapshot, recomputes every hash and checks the
//! checkpoints' signatures, and answers either "intact up to seq N" or the first
//! problem: a row `altered`, `deleted` or `inserted` out of band, or a
//! `checkpoint` that is forged or does not match the chain.
//!
//! Retention drops whole daily partitions; it records each drop in
//! `chain_truncations` (per tenant and day) in the dropping transaction. Links
//! are never dropped, so the chain continues through the dropped rows' stored
//! hashes, and a link whose row is missing is accepted only when its tenant and
//! day have such a record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use ed25519_dalek::{Signature, Signer, Verifier};
use futures::TryStreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, IsolationLevel, Row, Transaction};

pub use ed25519_dalek::{SigningKey, VerifyingKey};

use super::rollup::run_periodically;
use super::PgError;

/// Advisory lock key serialising chainer runs (the bytes `tallychn`).
pub const CHAIN_LOCK_KEY: i64 = i64::from_be_bytes(*b"tallychn");
/// `chain_watermark.name` of the activity chain.
pub const CHAIN_WATERMARK: &str = "activity_events";
/// `prev_hash` of a tenant's first link.
pub const GENESIS_HASH: [u8; 32] = [0; 32];
/// Default pause between two chainer runs.
pub const DEFAULT_CHAIN_INTERVAL: Duration = Duration::from_secs(1);
/// Default time between two signed checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);
/// Default upper bound of rows chained per run. A run that reaches it is followed at
/// once by the next, so the bound sets the chainer's memory (the rows of one run, with
/// their attributes' text: ~1.5 KiB each for ordinary events), not its throughput.
pub const DEFAULT_CHAIN_ROWS_PER_RUN: i64 = 2_000;
/// `tally_secrets.name` of the generated signing key (32-byte Ed25519 seed).
pub const SIGNING_KEY_SECRET: &str = "chain.signing_key";

/// Domain prefix of a row's canonical form.
const ROW_DOMAIN: &[u8] = b"tally-activity-v1";
/// Domain prefix of a signed checkpoint message.
const CHECKPOINT_DOMAIN: &[u8] = b"tally-checkpoint-v1";
/// Links read per verification batch.
const VERIFY_BATCH: i64 = 5_000;

/// The columns of a row's canonical form, in order (`attributes` as the text
/// PostgreSQL prints for the jsonb value: keys sorted, duplicates removed).
const ROW_COLUMNS: &str = "id, seq, ts, received_at, tenant_id, user_id, session_id, action, \
    outcome, resource_type, resource_id, service, trace_id, span_id, attributes::text, \
    taxonomy_valid, taxonomy_reason";

/// An `activity_events` row as the chain sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainRow {
    pub id: uuid::Uuid,
    pub seq: i64,
    pub ts: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub service: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    /// `attributes::text`.
    pub attributes: Option<String>,
    pub taxonomy_valid: Option<bool>,
    pub taxonomy_reason: Option<String>,
}

impl ChainRow {
    /// Reads a row selected with the chain's column list.
    fn from_row(row: &Row) -> Result<ChainRow, PgError> {
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
            attributes: row.try_get(14)?,
            taxonomy_valid: row.try_get(15)?,
            taxonomy_reason: row.try_get(16)?,
        })
    }

    /// The chain key of the row's tenant (`''` for no tenant).
    fn tenant(&self) -> &str {
        self.tenant_id.as_deref().unwrap_or("")
    }

    /// The canonical byte form hashed into the chain: `tally-activity-v1`, then
    /// each column in [`ROW_COLUMNS`] order as a field — `0x00` for NULL, else
    /// `0x01`, the value's length (u32 big-endian) and its bytes: uuid 16 bytes,
    /// bigint 8 bytes big-endian, timestamptz microseconds since 1970-01-01 UTC
    /// as 8 bytes big-endian, text UTF-8, boolean one byte 0/1.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(ROW_DOMAIN);
        field(&mut out, Some(self.id.as_bytes()));
        field(&mut out, Some(&self.seq.to_be_bytes()));
        field(&mut out, Some(&self.ts.timestamp_micros().to_be_bytes()));
        field(
            &mut out,
            Some(&self.received_at.timestamp_micros().to_be_bytes()),
        );
        for text in [
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
        ] {
            field(&mut out, text.as_deref().map(str::as_bytes));
        }
        field(
            &mut out,
            self.taxonomy_valid
                .map(|v| [u8::from(v)])
                .as_ref()
                .map(|b| &b[..]),
        );
        field(&mut out, self.taxonomy_reason.as_deref().map(str::as_bytes));
        out
    }
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

fn hash32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32], PgError> {
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| PgError::Integrity(format!("{what} has {} bytes, not 32", b.len())))
}

/// What one chainer run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainReport {
    /// Watermark before and after the run.
    pub from_seq: i64,
    pub to_seq: i64,
    /// Links written.
    pub rows: u64,
    /// Rows skipped because another row of the same tenant had the same `seq`
    /// (only an out-of-band insert does that; verification reports it).
    pub skipped_duplicates: u64,
    /// Checkpoints signed.
    pub checkpoints: u64,
}

/// The chainer job. Cheap to clone.
#[derive(Clone)]
pub struct ChainJob {
    signer: Option<SigningKey>,
    checkpoint_interval: Duration,
    max_rows_per_run: i64,
}

impl std::fmt::Debug for ChainJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainJob")
            .field(
                "key_id",
                &self.signer.as_ref().map(|k| key_id(&k.verifying_key())),
            )
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("max_rows_per_run", &self.max_rows_per_run)
            .finish()
    }
}

impl ChainJob {
    /// A chainer signing checkpoints with `signer` (none: no checkpoints) every
    /// `checkpoint_interval` (zero: after every run that moved a head).
    pub fn new(signer: Option<SigningKey>, checkpoint_interval: Duration) -> ChainJob {
        ChainJob {
            signer,
            checkpoint_interval,
            max_rows_per_run: DEFAULT_CHAIN_ROWS_PER_RUN,
        }
    }

    /// Bounds the rows chained per run (at least 1).
    pub fn with_max_rows_per_run(mut self, rows: i64) -> ChainJob {
        self.max_rows_per_run = rows.max(1);
        self
    }

    /// Runs once in one transaction (see the module documentation). Blocks while
    /// another instance's run holds [`CHAIN_LOCK_KEY`].
    pub async fn run_once(&self, client: &mut Client) -> Result<ChainReport, PgError> {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHAIN_LOCK_KEY])
            .await?;
        let from = chain_watermark(&tx).await?;
        let mut report = ChainReport {
            from_seq: from,
            to_seq: from,
            ..ChainReport::default()
        };
        let upper: Option<i64> = tx
            .query_one(
                "SELECT max(seq) FROM (SELECT seq FROM activity_events WHERE seq > $1 \
                 ORDER BY seq LIMIT $2) AS next_rows",
                &[&from, &self.max_rows_per_run],
            )
            .await?
            .try_get(0)?;
        if let Some(to) = upper {
            self.chain_rows(&tx, from, to, &mut report).await?;
        }
        if let Some(signer) = &self.signer {
            report.checkpoints = self.checkpoint_if_due(&tx, signer).await?;
        }
        tx.commit().await?;
        if report.rows > 0 || report.checkpoints > 0 {
            tracing::debug!(?report, "chainer run");
        }
        Ok(report)
    }

    async fn chain_rows(
        &self,
        tx: &Transaction<'_>,
        from: i64,
        to: i64,
        report: &mut ChainReport,
    ) -> Result<(), PgError> {
        // Streamed: each row is converted as it arrives, never held twice.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&from, &to];
        let stream = tx
            .query_raw(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM activity_events WHERE seq > $1 AND seq <= $2 \
                     ORDER BY seq, id"
                ),
                params,
            )
            .await?;
        futures::pin_mut!(stream);
        let mut rows = Vec::new();
        while let Some(row) = stream.try_next().await? {
            rows.push(ChainRow::from_row(&row)?);
        }
        let tenants: Vec<&str> = rows
            .iter()
            .map(ChainRow::tenant)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut heads: HashMap<String, (i64, [u8; 32])> = HashMap::new();
        for row in tx
            .query(
                "SELECT tenant_id, seq, row_hash FROM chain_heads WHERE tenant_id = ANY($1)",
                &[&tenants],
            )
            .await?
        {
            let hash = hash32(row.try_get(2)?, "chain_heads.row_hash")?;
            heads.insert(row.try_get(0)?, (row.try_get(1)?, hash));
        }
        let mut link_tenant = Vec::with_capacity(rows.len());
        let mut link_seq = Vec::with_capacity(rows.len());
        let mut link_day: Vec<NaiveDate> = Vec::with_capacity(rows.len());
        let mut link_prev_seq: Vec<Option<i64>> = Vec::with_capacity(rows.len());
        let mut link_prev_hash: Vec<Vec<u8>> = Vec::with_capacity(rows.len());
        let mut link_hash: Vec<Vec<u8>> = Vec::with_capacity(rows.len());
        for row in &rows {
            let tenant = row.tenant();
            let head = heads.get(tenant).copied();
            if head.is_some_and(|(seq, _)| seq >= row.seq) {
                // Same tenant, same seq twice: not something the writers produce.
                tracing::warn!(
                    seq = row.seq,
                    "activity_events holds two rows with one seq for a tenant; chaining the first only"
                );
                report.skipped_duplicates += 1;
                continue;
            }
            let prev_hash = head.map_or(GENESIS_HASH, |(_, hash)| hash);
            let hash = row_hash(&prev_hash, &row.canonical());
            link_tenant.push(tenant.to_owned());
            link_seq.push(row.seq);
            link_day.push(row.ts.date_naive());
            link_prev_seq.push(head.map(|(seq, _)| seq));
            link_prev_hash.push(prev_hash.to_vec());
            link_hash.push(hash.to_vec());
            heads.insert(tenant.to_owned(), (row.seq, hash));
        }
        tx.execute(
            "INSERT INTO activity_chain (tenant_id, seq, day, prev_seq, prev_hash, row_hash) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::date[], $4::int8[], $5::bytea[], \
                 $6::bytea[])",
            &[
                &link_tenant,
                &link_seq,
                &link_day,
                &link_prev_seq,
                &link_prev_hash,
                &link_hash,
            ],
        )
        .await?;
        let (head_tenants, head_seqs, head_hashes): (Vec<&str>, Vec<i64>, Vec<Vec<u8>>) = {
            let mut t = Vec::with_capacity(heads.len());
            let mut s = Vec::with_capacity(heads.len());
            let mut h = Vec::with_capacity(heads.len());
            for (tenant, (seq, hash)) in &heads {
                t.push(tenant.as_str());
                s.push(*seq);
                h.push(hash.to_vec());
            }
            (t, s, h)
        };
        tx.execute(
            "INSERT INTO chain_heads (tenant_id, seq, row_hash) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[]) \
             ON CONFLICT (tenant_id) DO UPDATE SET seq = EXCLUDED.seq, \
                 row_hash = EXCLUDED.row_hash, updated_at = now() \
             WHERE chain_heads.seq IS DISTINCT FROM EXCLUDED.seq",
            &[&head_tenants, &head_seqs, &head_hashes],
        )
        .await?;
        tx.execute(
            "UPDATE chain_watermark SET last_seq = $2, updated_at = now() WHERE name = $1",
            &[&CHAIN_WATERMARK, &to],
        )
        .await?;
        report.to_seq = to;
        report.rows = link_seq.len() as u64;
        Ok(())
    }

    /// Signs every head without a checkpoint, when the interval has passed.
    async fn checkpoint_if_due(
        &self,
        tx: &Transaction<'_>,
        signer: &SigningKey,
    ) -> Result<u64, PgError> {
        let due: Option<bool> = tx
            .query_one(
                "SELECT last_checkpoint_at IS NULL \
                     OR last_checkpoint_at <= now() - make_interval(secs => $2) \
                 FROM chain_watermark WHERE name = $1",
                &[&CHAIN_WATERMARK, &self.checkpoint_interval.as_secs_f64()],
            )
            .await?
            .try_get(0)?;
        if due != Some(true) {
            return Ok(0);
        }
        let verifying = signer.verifying_key();
        let id = key_id(&verifying);
        tx.execute(
            "INSERT INTO chain_keys (key_id, public_key) VALUES ($1, $2) \
             ON CONFLICT (key_id) DO NOTHING",
            &[&id, &verifying.as_bytes().as_slice()],
        )
        .await?;
        let heads = tx
            .query(
                "SELECT h.tenant_id, h.seq, h.row_hash, now() FROM chain_heads h \
                 WHERE NOT EXISTS (SELECT 1 FROM chain_checkpoints c \
                     WHERE c.tenant_id = h.tenant_id AND c.seq = h.seq)",
                &[],
            )
            .await?;
        let mut tenants = Vec::with_capacity(heads.len());
        let mut seqs = Vec::with_capacity(heads.len());
        let mut hashes = Vec::with_capacity(heads.len());
        let mut signed = Vec::with_capacity(heads.len());
        let mut signatures = Vec::with_capacity(heads.len());
        for head in &heads {
            let tenant: String = head.try_get(0)?;
            let seq: i64 = head.try_get(1)?;
            let hash: Vec<u8> = head.try_get(2)?;
            let now: DateTime<Utc> = head.try_get(3)?;
            let signature = signer.sign(&checkpoint_message(&tenant, seq, &hash, now));
            tenants.push(tenant);
            seqs.push(seq);
            hashes.push(hash);
            signed.push(now);
            signatures.push(signature.to_bytes().to_vec());
        }
        if !tenants.is_empty() {
            tx.execute(
                "INSERT INTO chain_checkpoints (tenant_id, seq, head_hash, signed_at, key_id, \
                     signature) \
                 SELECT t, s, h, a, $6, g FROM unnest($1::text[], $2::int8[], $3::bytea[], \
                     $4::timestamptz[], $5::bytea[]) AS u(t, s, h, a, g)",
                &[&tenants, &seqs, &hashes, &signed, &signatures, &id],
            )
            .await?;
        }
        tx.execute(
            "UPDATE chain_watermark SET last_checkpoint_at = now() WHERE name = $1",
            &[&CHAIN_WATERMARK],
        )
        .await?;
        Ok(tenants.len() as u64)
    }

    /// Runs the job on its own connection to `url` every `interval` (immediately
    /// again while a run stops at its row bound) until `shutdown` becomes `true`
    /// or its sender is dropped. Failures are logged and retried.
    pub fn spawn(
        self,
        url: String,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let job = self;
            let max_rows = u64::try_from(job.max_rows_per_run).unwrap_or(u64::MAX);
            run_periodically("chain", url, interval, shutdown, move |client| {
                let job = job.clone();
                Box::pin(async move {
                    let report = job.run_once(client).await?;
                    Ok(report.rows + report.skipped_duplicates >= max_rows)
                })
            })
            .await
        })
    }
}

async fn chain_watermark(tx: &Transaction<'_>) -> Result<i64, PgError> {
    tx.execute(
        "INSERT INTO chain_watermark (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
        &[&CHAIN_WATERMARK],
    )
    .await?;
    Ok(tx
        .query_one(
            "SELECT last_seq FROM chain_watermark WHERE name = $1 FOR UPDATE",
            &[&CHAIN_WATERMARK],
        )
        .await?
        .try_get(0)?)
}

/// The verdict of [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyStatus {
    /// Every chained row and checkpoint checked out.
    Intact,
    /// See [`VerifyReport::first_problem`].
    Tampered,
}

/// What kind of tampering was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemKind {
    /// The row exists but its content (or its link) changed.
    Altered,
    /// A chained row is missing and no retention drop accounts for it.
    Deleted,
    /// A row (or link) that the chainer did not write.
    Inserted,
    /// A checkpoint whose signature does not verify, whose key is not trusted,
    /// or whose head hash differs from the chain (the chain was rewritten).
    Checkpoint,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The `seq` where the chain first breaks.
    pub seq: i64,
    pub kind: ProblemKind,
    /// A human explanation.
    pub detail: String,
}

/// The latest checkpoint covered by the verified part of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointInfo {
    pub seq: i64,
    /// Hex.
    pub head_hash: String,
    /// RFC 3339.
    pub signed_at: String,
    pub key_id: String,
    /// Whether the signature verifies (always true for a reported checkpoint).
    pub signature_valid: bool,
    /// Whether the signing key is one the verifier was told to trust (`None`:
    /// no trusted key given; the keys recorded in `chain_keys` were used).
    pub key_trusted: Option<bool>,
}

/// The outcome of verifying one tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The tenant (`''`: events without a tenant).
    pub tenant: String,
    pub status: VerifyStatus,
    /// The last `seq` of this tenant whose link and row verified (`None`: none).
    pub verified_up_to_seq: Option<i64>,
    /// Rows whose hash was recomputed.
    pub rows_checked: u64,
    /// Links walked (including those whose rows retention dropped).
    pub links_checked: u64,
    /// Links whose rows were dropped by retention (recorded in `chain_truncations`).
    pub dropped_rows: u64,
    /// Rows after the chainer's watermark: not chained yet (not an error).
    pub unchained_rows: u64,
    /// The chainer's global watermark at verification time.
    pub chain_watermark: i64,
    /// Checkpoints of this tenant whose signature and head were checked.
    pub checkpoints_checked: u64,
    /// `None` when intact.
    pub first_problem: Option<Problem>,
    /// The latest valid checkpoint at or before `verified_up_to_seq`.
    pub checkpoint: Option<CheckpointInfo>,
}

impl VerifyReport {
    /// Whether the chain verified.
    pub fn is_intact(&self) -> bool {
        self.status == VerifyStatus::Intact
    }

    /// One line for humans: `tenant T: intact up to seq N …` or the problem.
    pub fn summary(&self) -> String {
        let tenant = if self.tenant.is_empty() {
            "(no tenant)".to_owned()
        } else {
            format!("tenant {}", self.tenant)
        };
        match &self.first_problem {
            None => {
                let mut line = match self.verified_up_to_seq {
                    Some(seq) => format!("{tenant}: intact up to seq {seq}"),
                    None => format!("{tenant}: intact (nothing chained yet)"),
                };
                line.push_str(&format!(
                    " ({} rows checked, {} dropped by retention, {} not chained yet)",
                    self.rows_checked, self.dropped_rows, self.unchained_rows
                ));
                if let Some(cp) = &self.checkpoint {
                    line.push_str(&format!(
                        "; signed checkpoint at seq {} ({}, key {})",
                        cp.seq, cp.signed_at, cp.key_id
                    ));
                }
                line
            }
            Some(problem) => format!(
                "{tenant}: TAMPERED: {} at seq {}: {}",
                serde_json::to_value(problem.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                problem.seq,
                problem.detail
            ),
        }
    }
}

/// A link of `activity_chain`.
struct Link {
    seq: i64,
    day: NaiveDate,
    prev_seq: Option<i64>,
    prev_hash: Vec<u8>,
    row_hash: Vec<u8>,
}

struct StoredCheckpoint {
    head_hash: Vec<u8>,
    signed_at: DateTime<Utc>,
    key_id: String,
    signature: Vec<u8>,
}

/// The tenants that have links or rows (for verifying all of them).
pub async fn tenants(client: &Client) -> Result<Vec<String>, PgError> {
    Ok(client
        .query(
            "SELECT tenant_id FROM chain_heads UNION SELECT DISTINCT tenant_id FROM activity_events \
             ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.try_get::<_, Option<String>>(0))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect())
}

/// Verifies `tenant`'s chain (`''`: events without a tenant) in one read-only
/// snapshot. With `trusted` keys, a checkpoint signed by any other key is a
/// problem; without, the keys recorded in `chain_keys` are used (which someone
/// with write access to the database could replace: pass the configured key).
pub async fn verify(
    client: &mut Client,
    tenant: &str,
    trusted: &[VerifyingKey],
) -> Result<VerifyReport, PgError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let watermark: i64 = tx
        .query_opt(
            "SELECT last_seq FROM chain_watermark WHERE name = $1",
            &[&CHAIN_WATERMARK],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?
        .unwrap_or(0);
    let unchained: i64 = tx
        .query_one(
            "SELECT count(*) FROM activity_events WHERE tenant_id = $1 AND seq > $2",
            &[&tenant, &watermark],
        )
        .await?
        .try_get(0)?;
    let dropped_days: HashSet<NaiveDate> = tx
        .query(
            "SELECT day FROM chain_truncations WHERE table_name = 'activity_events' \
             AND tenant_id = $1",
            &[&tenant],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut keys: HashMap<String, Option<VerifyingKey>> = HashMap::new();
    for row in tx
        .query("SELECT key_id, public_key FROM chain_keys", &[])
        .await?
    {
        let bytes: Vec<u8> = row.try_get(1)?;
        let key = <[u8; 32]>::try_from(bytes.as_slice())
            .ok()
            .and_then(|b| VerifyingKey::from_bytes(&b).ok());
        keys.insert(row.try_get(0)?, key);
    }
    for key in trusted {
        keys.insert(key_id(key), Some(*key));
    }
    let mut checkpoints: BTreeMap<i64, StoredCheckpoint> = BTreeMap::new();
    for row in tx
        .query(
            "SELECT seq, head_hash, signed_at, key_id, signature FROM chain_checkpoints \
             WHERE tenant_id = $1",
            &[&tenant],
        )
        .await?
    {
        checkpoints.insert(
            row.try_get(0)?,
            StoredCheckpoint {
                head_hash: row.try_get(1)?,
                signed_at: row.try_get(2)?,
                key_id: row.try_get(3)?,
                signature: row.try_get(4)?,
            },
        );
    }
    let head: Option<(i64, Vec<u8>)> = tx
        .query_opt(
            "SELECT seq, row_hash FROM chain_heads WHERE tenant_id = $1",
            &[&tenant],
        )
        .await?
        .map(|row| Ok::<_, PgError>((row.try_get(0)?, row.try_get(1)?)))
        .transpose()?;

    let mut walk = Walk {
        tenant,
        trusted,
        keys: &keys,
        dropped_days: &dropped_days,
        checkpoints: &checkpoints,
        expected_prev: GENESIS_HASH.to_vec(),
        prev_seq: None,
        report: VerifyReport {
            tenant: tenant.to_owned(),
            status: VerifyStatus::Intact,
            verified_up_to_seq: None,
            rows_checked: 0,
            links_checked: 0,
            dropped_rows: 0,
            unchained_rows: u64::try_from(unchained).unwrap_or(0),
            chain_watermark: watermark,
            checkpoints_checked: 0,
            first_problem: None,
            checkpoint: None,
        },
    };
    let mut cursor = i64::MIN;
    loop {
        let links: Vec<Link> = tx
            .query(
                "SELECT seq, day, prev_seq, prev_hash, row_hash FROM activity_chain \
                 WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&tenant, &cursor, &VERIFY_BATCH],
            )
            .await?
            .iter()
            .map(|row| {
                Ok::<_, PgError>(Link {
                    seq: row.try_get(0)?,
                    day: row.try_get(1)?,
                    prev_seq: row.try_get(2)?,
                    prev_hash: row.try_get(3)?,
                    row_hash: row.try_get(4)?,
                })
            })
            .collect::<Result<_, _>>()?;
        let last_batch = (links.len() as i64) < VERIFY_BATCH;
        let upper = match links.last() {
            Some(link) if !last_batch => link.seq,
            Some(link) => link.seq.max(watermark),
            None => watermark,
        };
        let rows: Vec<ChainRow> = if upper > cursor {
            tx.query(
                &format!(
                    "SELECT {ROW_COLUMNS} FROM activity_events \
                     WHERE tenant_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq, id"
                ),
                &[&tenant, &cursor, &upper],
            )
            .await?
            .iter()
            .map(ChainRow::from_row)
            .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        if !walk.merge(links, rows) || last_batch {
            break;
        }
        cursor = upper;
    }
    walk.finish(head);
    tx.commit().await?;
    Ok(walk.report)
}

/// The state of one verification walk.
struct Walk<'a> {
    tenant: &'a str,
    trusted: &'a [VerifyingKey],
    keys: &'a HashMap<String, Option<VerifyingKey>>,
    dropped_days: &'a HashSet<NaiveDate>,
    checkpoints: &'a BTreeMap<i64, StoredCheckpoint>,
    expected_prev: Vec<u8>,
    prev_seq: Option<i64>,
    report: VerifyReport,
}

impl Walk<'_> {
    fn problem(&mut self, seq: i64, kind: ProblemKind, detail: impl Into<String>) -> bool {
        self.report.status = VerifyStatus::Tampered;
        self.report.first_problem = Some(Problem {
            seq,
            kind,
            detail: detail.into(),
        });
        false
    }

    /// Walks one batch (links and rows in the same seq window, both ordered by
    /// seq); answers `false` at the first problem.
    fn merge(&mut self, links: Vec<Link>, rows: Vec<ChainRow>) -> bool {
        let mut rows = rows.into_iter().peekable();
        for link in links {
            // Rows before this link have no link: inserted out of band.
            if let Some(row) = rows.next_if(|row| row.seq < link.seq) {
                return self.problem(
                    row.seq,
                    ProblemKind::Inserted,
                    "a row at or below the chain watermark has no link",
                );
            }
            let mut same: Vec<ChainRow> = Vec::new();
            while let Some(row) = rows.next_if(|row| row.seq == link.seq) {
                same.push(row);
            }
            if !self.link(&link, &same) {
                return false;
            }
        }
        if let Some(row) = rows.next() {
            return self.problem(
                row.seq,
                ProblemKind::Inserted,
                "a row at or below the chain watermark has no link",
            );
        }
        true
    }

    fn link(&mut self, link: &Link, rows: &[ChainRow]) -> bool {
        if link.prev_seq != self.prev_seq {
            return match (link.prev_seq, self.prev_seq) {
                (Some(expected), Some(seen)) if expected < seen => self.problem(
                    seen,
                    ProblemKind::Inserted,
                    format!("the link of seq {seen} is not part of the chain (seq {} follows seq {expected})", link.seq),
                ),
                (Some(expected), _) => self.problem(
                    expected,
                    ProblemKind::Deleted,
                    format!("the row and link of seq {expected} are missing (seq {} follows it)", link.seq),
                ),
                (None, Some(seen)) => self.problem(
                    link.seq,
                    ProblemKind::Inserted,
                    format!("the link of seq {} claims to start the chain, after seq {seen}", link.seq),
                ),
                (None, None) => true,
            };
        }
        if link.prev_hash != self.expected_prev {
            let seq = self.prev_seq.unwrap_or(link.seq);
            return self.problem(
                seq,
                ProblemKind::Altered,
                format!(
                    "the chain breaks between seq {seq} and seq {}: a row and its link were rewritten",
                    link.seq
                ),
            );
        }
        let prev: [u8; 32] = match self.expected_prev.as_slice().try_into() {
            Ok(prev) => prev,
            Err(_) => {
                return self.problem(
                    link.seq,
                    ProblemKind::Altered,
                    "a link hash is not 32 bytes",
                )
            }
        };
        if rows.is_empty() {
            if !self.dropped_days.contains(&link.day) {
                return self.problem(
                    link.seq,
                    ProblemKind::Deleted,
                    "the chained row is missing and no retention drop of its day is recorded",
                );
            }
            self.report.dropped_rows += 1;
        } else {
            let mut matched = false;
            for row in rows {
                self.report.rows_checked += 1;
                if row_hash(&prev, &row.canonical()).as_slice() == link.row_hash.as_slice() {
                    matched = true;
                }
            }
            if !matched {
                return self.problem(
                    link.seq,
                    ProblemKind::Altered,
                    "the row's content does not match its chained hash",
                );
            }
            if rows.len() > 1 {
                return self.problem(
                    link.seq,
                    ProblemKind::Inserted,
                    "another row was inserted with the seq of a chained row",
                );
            }
        }
        if let Some(checkpoint) = self.checkpoints.get(&link.seq) {
            if !self.checkpoint(link, checkpoint) {
                return false;
            }
        }
        self.report.links_checked += 1;
        self.report.verified_up_to_seq = Some(link.seq);
        self.prev_seq = Some(link.seq);
        self.expected_prev = link.row_hash.clone();
        true
    }

    fn checkpoint(&mut self, link: &Link, cp: &StoredCheckpoint) -> bool {
        self.report.checkpoints_checked += 1;
        let key = self.keys.get(&cp.key_id).copied().flatten();
        let Some(key) = key else {
            return self.problem(
                link.seq,
                ProblemKind::Checkpoint,
                format!("the checkpoint's key {} is unknown", cp.key_id),
            );
        };
        let trusted = (!self.trusted.is_empty()).then(|| self.trusted.contains(&key));
        if trusted == Some(false) {
            return self.problem(
                link.seq,
                ProblemKind::Checkpoint,
                format!(
                    "the checkpoint is signed by key {}, which is not trusted",
                    cp.key_id
                ),
            );
        }
        let message = checkpoint_message(self.tenant, link.seq, &cp.head_hash, cp.signed_at);
        let valid = Signature::from_slice(&cp.signature)
            .is_ok_and(|signature| key.verify(&message, &signature).is_ok());
        if !valid {
            return self.problem(
                link.seq,
                ProblemKind::Checkpoint,
                "the checkpoint's signature does not verify (forged or altered checkpoint)",
            );
        }
        if cp.head_hash != link.row_hash {
            return self.problem(
                link.seq,
                ProblemKind::Checkpoint,
                "the signed head hash differs from the chain: rows up to this seq were rewritten",
            );
        }
        self.report.checkpoint = Some(CheckpointInfo {
            seq: link.seq,
            head_hash: hex(&cp.head_hash),
            signed_at: cp
                .signed_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            key_id: cp.key_id.clone(),
            signature_valid: true,
            key_trusted: trusted,
        });
        true
    }

    /// Checks what the walk could not see: checkpoints and the head beyond the
    /// last link (the chain's tail was cut).
    fn finish(&mut self, head: Option<(i64, Vec<u8>)>) {
        if self.report.first_problem.is_some() {
            return;
        }
        let last = self.report.verified_up_to_seq;
        if let Some((&seq, _)) = self
            .checkpoints
            .range(last.map_or(i64::MIN, |s| s.saturating_add(1))..)
            .next()
        {
            self.problem(
                seq,
                ProblemKind::Deleted,
                format!("a signed checkpoint covers seq {seq}, but the chain ends before it"),
            );
            return;
        }
        match head {
            Some((seq, hash)) if Some(seq) != last || hash != self.expected_prev => {
                self.problem(
                    seq,
                    ProblemKind::Deleted,
                    format!("the chain head is seq {seq}, but the chain ends at {last:?}"),
                );
            }
            None if last.is_some() => {
                self.problem(
                    last.unwrap_or_default(),
                    ProblemKind::Inserted,
                    "links exist but the tenant has no chain head",
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ChainRow {
        ChainRow {
            id: uuid::Uuid::nil(),
            seq: 7,
            ts: DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap_or_default(),
            received_at: DateTime::from_timestamp(1_700_000_001, 0).unwrap_or_default(),
            tenant_id: Some("acme".into()),
            user_id: None,
            session_id: None,
            action: Some("login".into()),
            outcome: Some("success".into()),
            resource_type: None,
            resource_id: None,
            service: None,
            trace_id: None,
            span_id: None,
            attributes: Some("{}".into()),
            taxonomy_valid: Some(true),
            taxonomy_reason: None,
        }
    }

    #[test]
    fn canonical_form_distinguishes_null_empty_and_field_boundaries() {
        let base = row().canonical();
        let mut empty_user = row();
        empty_user.user_id = Some(String::new());
        assert_ne!(base, empty_user.canonical());
        let mut a = row();
        a.user_id = Some("ab".into());
        a.session_id = Some("c".into());
        let mut b = row();
        b.user_id = Some("a".into());
        b.session_id = Some("bc".into());
        assert_ne!(a.canonical(), b.canonical());
        let mut flag = row();
        flag.taxonomy_valid = Some(false);
        assert_ne!(base, flag.canonical());
        assert_eq!(base, row().canonical());
    }

    #[test]
    fn hash_depends_on_the_previous_hash() {
        let canonical = row().canonical();
        let first = row_hash(&GENESIS_HASH, &canonical);
        assert_ne!(first, row_hash(&first, &canonical));
        assert_eq!(first, row_hash(&GENESIS_HASH, &canonical));
    }

    #[test]
    fn key_ids_are_16_hex_digits() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let id = key_id(&key.verifying_key());
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(signing_key_from_seed(&[1; 31]).is_err());
        let seed_b64 = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
        let from_b64 = signing_key_from_config(seed_b64).map(|k| k.to_bytes());
        assert_eq!(from_b64.ok(), Some([42; 32]));
        let from_hex = signing_key_from_config(&"2a".repeat(32)).map(|k| k.to_bytes());
        assert_eq!(from_hex.ok(), Some([42; 32]));
        assert!(signing_key_from_config("not a key").is_err());
        assert!(signing_key_from_config("AAAA").is_err());
    }
}
