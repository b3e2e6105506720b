//! Verification: re-walks one tenant's links and rows and checks the checkpoints.
//!
//! Over 600 lines: one walk with one state (links, rows, checkpoints, truncations, erasures) whose checks read each other's findings.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use ed25519_dalek::{Signature, Verifier};
use serde::Serialize;
use tokio_postgres::{Client, IsolationLevel};

use super::canonical::{
    checkpoint_message, erased_row_message, hex, key_id, row_hash, ChainRow, TruncationRecord,
    CHAIN_FORM_V3, ROW_COLUMNS,
};
use super::stored::{self, Link};
use super::{VerifyingKey, CHAIN_WATERMARK, GENESIS_HASH};
use crate::postgres::PgError;

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
    /// A `chain_truncations` record that excuses missing rows but is unsigned,
    /// not signed by a trusted key, or disagrees with the chain (seq range,
    /// counts, last hash) or with the table (rows of the day remain).
    Truncation,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The `seq` where the chain first breaks.
    pub seq: i64,
    /// What kind of break it is.
    pub kind: ProblemKind,
    /// A human explanation.
    pub detail: String,
}

/// The latest checkpoint covered by the verified part of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointInfo {
    /// The checkpoint's `seq`.
    pub seq: i64,
    /// Hex.
    pub head_hash: String,
    /// RFC 3339.
    pub signed_at: String,
    /// The id of the signing key.
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
    /// Whether the chain verifies.
    pub status: VerifyStatus,
    /// The last `seq` of this tenant whose link and row verified (`None`: none).
    pub verified_up_to_seq: Option<i64>,
    /// Rows whose hash was recomputed.
    pub rows_checked: u64,
    /// Links walked (including those whose rows retention dropped).
    pub links_checked: u64,
    /// Links whose rows were dropped by retention (recorded in `chain_truncations`).
    pub dropped_rows: u64,
    /// Rows checked that an erasure erased (each tied to its `erasures` record).
    pub erased_rows: u64,
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
    /// Checkpoints kept outside the database (`tally verify --checkpoints`) whose
    /// head hash matched the chain. Not part of the API's answer.
    #[serde(skip)]
    pub external_checkpoints_checked: u64,
    /// `None`: the whole chain was walked. Else the seq of the verified checkpoint
    /// this walk resumed from (see [`VerifyStart`]); the counts cover only the
    /// links after it.
    pub verified_from_seq: Option<i64>,
}

/// Whether `signature` is `key`'s signature of the checkpoint (`tenant`, `seq`,
/// `head_hash`, `signed_at`): for a resume point read back from the database.
pub fn checkpoint_signed_by(
    key: &VerifyingKey,
    tenant: &str,
    seq: i64,
    head_hash: &[u8],
    signed_at: DateTime<Utc>,
    signature: &[u8],
) -> bool {
    let message = checkpoint_message(tenant, seq, head_hash, signed_at);
    Signature::from_slice(signature).is_ok_and(|signature| key.verify(&message, &signature).is_ok())
}

/// Where an incremental walk resumes: a checkpoint an earlier walk verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyStart {
    /// The checkpoint's `seq`.
    pub seq: i64,
    /// The chain's `row_hash` at `seq`.
    pub head_hash: Vec<u8>,
    /// The checkpoint as reported.
    pub checkpoint: CheckpointInfo,
}

impl VerifyReport {
    /// Where a later walk can resume: the latest checkpoint this intact walk
    /// verified (`None` when tampered or without checkpoint).
    pub fn resume_point(&self) -> Option<VerifyStart> {
        let checkpoint = self.checkpoint.as_ref().filter(|_| self.is_intact())?;
        Some(VerifyStart {
            seq: checkpoint.seq,
            head_hash: ::hex::decode(&checkpoint.head_hash).ok()?,
            checkpoint: checkpoint.clone(),
        })
    }
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
                    " ({} rows checked, {} erased, {} dropped by retention, {} not chained yet)",
                    self.rows_checked, self.erased_rows, self.dropped_rows, self.unchained_rows
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

/// A `chain_truncations` record, with what the walk learnt about it.
struct Truncation {
    record: TruncationRecord,
    /// Why its signature is not acceptable (`None`: it verifies).
    signature_problem: Option<SignatureProblem>,
    /// Links of its tenant and day walked so far whose row is missing.
    missing_links: i64,
    /// Whether the walk reached `last_chained_seq`.
    closed: bool,
}

/// An `erasures` record of the tenant, as the walk checks erased rows against it.
struct ErasureInfo {
    pseudonym: String,
    key_id: Option<String>,
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
    verify_against(client, tenant, trusted, &BTreeMap::new()).await
}

/// [`verify`], also checking `external`: the head hashes (by seq) of `tenant`'s
/// checkpoints kept outside the database (see [`read_checkpoint_dir`](super::read_checkpoint_dir)).
/// A link whose hash differs is a rewritten chain (`checkpoint`); an external
/// seq beyond the chain's end, or missing from it, is a cut (`deleted`).
pub async fn verify_against(
    client: &mut Client,
    tenant: &str,
    trusted: &[VerifyingKey],
    external: &BTreeMap<i64, Vec<u8>>,
) -> Result<VerifyReport, PgError> {
    verify_from(client, tenant, trusted, external, None).await
}

/// [`verify_against`], resuming after `start` (a checkpoint an earlier walk
/// verified) when the link and row at its seq still hash to it; otherwise (or
/// without `start`) the whole chain is walked. Changes at or below `start` are
/// not seen by a resumed walk.
pub async fn verify_from(
    client: &mut Client,
    tenant: &str,
    trusted: &[VerifyingKey],
    external: &BTreeMap<i64, Vec<u8>>,
    start: Option<&VerifyStart>,
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
    let truncation_rows = tx
        .query(
            "SELECT day, rows, min_seq, max_seq, chained_rows, last_chained_seq, \
                 last_chained_hash, dropped_at, key_id, signature FROM chain_truncations \
             WHERE table_name = 'activity_events' AND tenant_id = $1",
            &[&tenant],
        )
        .await?;
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
    let mut dropped_days: HashMap<NaiveDate, Truncation> = HashMap::new();
    for row in &truncation_rows {
        let record = TruncationRecord {
            table: "activity_events".to_owned(),
            tenant: tenant.to_owned(),
            day: row.try_get(0)?,
            rows: row.try_get(1)?,
            min_seq: row.try_get(2)?,
            max_seq: row.try_get(3)?,
            chained_rows: row.try_get::<_, Option<i64>>(4)?.unwrap_or(0),
            last_chained_seq: row.try_get(5)?,
            last_chained_hash: row.try_get(6)?,
            dropped_at: row.try_get(7)?,
        };
        let key_id: Option<String> = row.try_get(8)?;
        let signature: Option<Vec<u8>> = row.try_get(9)?;
        let signature_problem = match (key_id, signature) {
            (Some(key_id), Some(signature)) => {
                check_signature(&keys, trusted, &key_id, &signature, &record.message()).err()
            }
            _ => Some(SignatureProblem::Unsigned),
        };
        dropped_days.insert(
            record.day,
            Truncation {
                record,
                signature_problem,
                missing_links: 0,
                closed: false,
            },
        );
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
    let mut erasures: HashMap<uuid::Uuid, ErasureInfo> = HashMap::new();
    for row in tx
        .query(
            "SELECT id, pseudonym, key_id FROM erasures WHERE tenant_id = $1",
            &[&tenant],
        )
        .await?
    {
        erasures.insert(
            row.try_get(0)?,
            ErasureInfo {
                pseudonym: row.try_get(1)?,
                key_id: row.try_get(2)?,
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
    let start = match start {
        Some(start) if anchor_holds(&tx, tenant, start).await? => Some(start),
        _ => None,
    };
    if let Some(start) = start {
        for t in dropped_days.values_mut() {
            let record = &t.record;
            if record.last_chained_seq.is_none_or(|last| last <= start.seq) {
                t.closed = true;
            } else if record.min_seq.is_some_and(|min| min <= start.seq) {
                // The record spans the start: its links up to there were walked before.
                t.missing_links = tx
                    .query_one(
                        "SELECT count(*) FROM tally_chain_links($1, $4, $3) WHERE day = $2",
                        &[&tenant, &record.day, &start.seq, &i64::MIN],
                    )
                    .await?
                    .try_get(0)?;
            }
        }
    }

    let mut walk = Walk {
        tenant,
        trusted,
        keys: &keys,
        erasures: &erasures,
        dropped_days,
        checkpoints: &checkpoints,
        external,
        expected_prev: GENESIS_HASH.to_vec(),
        prev_seq: None,
        report: VerifyReport {
            tenant: tenant.to_owned(),
            status: VerifyStatus::Intact,
            verified_up_to_seq: None,
            rows_checked: 0,
            links_checked: 0,
            dropped_rows: 0,
            erased_rows: 0,
            unchained_rows: u64::try_from(unchained).unwrap_or(0),
            chain_watermark: watermark,
            checkpoints_checked: 0,
            first_problem: None,
            checkpoint: None,
            external_checkpoints_checked: 0,
            verified_from_seq: None,
        },
    };
    let mut cursor = i64::MIN;
    if let Some(start) = start {
        cursor = start.seq;
        walk.prev_seq = Some(start.seq);
        walk.expected_prev = start.head_hash.clone();
        walk.report.verified_up_to_seq = Some(start.seq);
        walk.report.verified_from_seq = Some(start.seq);
        walk.report.checkpoint = Some(start.checkpoint.clone());
    }
    let mut first = true;
    loop {
        let page = stored::page(&tx, tenant, cursor, first).await?;
        first = false;
        let last_batch = page.upper.is_none();
        let links = page.links;
        let upper = match (page.upper, links.last()) {
            (Some(upper), _) => upper,
            (None, Some(link)) => link.seq.max(watermark),
            (None, None) => watermark,
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
    erasures: &'a HashMap<uuid::Uuid, ErasureInfo>,
    dropped_days: HashMap<NaiveDate, Truncation>,
    checkpoints: &'a BTreeMap<i64, StoredCheckpoint>,
    external: &'a BTreeMap<i64, Vec<u8>>,
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
        if let Some((&seq, _)) = self
            .external
            .range(self.prev_seq.map_or(i64::MIN, |s| s.saturating_add(1))..link.seq)
            .next()
        {
            return self.problem(
                seq,
                ProblemKind::Deleted,
                format!(
                    "a checkpoint kept outside the database names seq {seq}, which is not in the \
                     chain (seq {} follows seq {:?})",
                    link.seq, self.prev_seq
                ),
            );
        }
        if rows.is_empty() {
            if !self.dropped_row(link) {
                return false;
            }
            self.report.dropped_rows += 1;
        } else {
            if let Some(t) = self.dropped_days.get(&link.day) {
                if t.record.max_seq.is_some_and(|max| link.seq <= max) {
                    let day = link.day;
                    return self.problem(
                        link.seq,
                        ProblemKind::Truncation,
                        format!(
                            "a truncation record says the rows of {day} were dropped, but this \
                             row of {day} remains"
                        ),
                    );
                }
            }
            let mut matched = false;
            let mut erasure_problem = None;
            for row in rows {
                self.report.rows_checked += 1;
                if row.is_erased() {
                    match self.erased_row(link, &prev, row) {
                        Ok(()) => {
                            matched = true;
                            self.report.erased_rows += 1;
                        }
                        Err(why) => erasure_problem = Some(why),
                    }
                } else if row_hash(&prev, &row.canonical()).as_slice() == link.row_hash.as_slice() {
                    matched = true;
                }
            }
            if !matched {
                let detail = erasure_problem.map_or_else(
                    || "the row's content does not match its chained hash".to_owned(),
                    |why| why.to_string(),
                );
                return self.problem(link.seq, ProblemKind::Altered, detail);
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
        if let Some(hash) = self.external.get(&link.seq) {
            if hash != &link.row_hash {
                return self.problem(
                    link.seq,
                    ProblemKind::Checkpoint,
                    "the head hash differs from the checkpoint kept outside the database: \
                     rows up to this seq were rewritten",
                );
            }
            self.report.external_checkpoints_checked += 1;
        }
        self.report.links_checked += 1;
        self.report.verified_up_to_seq = Some(link.seq);
        self.prev_seq = Some(link.seq);
        self.expected_prev = link.row_hash.clone();
        true
    }

    /// Checks an erased row: its erasure record exists, the row carries that
    /// record's pseudonym, and then either (v3) the row hashes to its link with
    /// the personal digest the erasure kept, or (v1/v2) the erasure's signature
    /// over the link's hash and the erased row verifies. `Err`: why not.
    fn erased_row(
        &self,
        link: &Link,
        prev: &[u8; 32],
        row: &ChainRow,
    ) -> Result<(), ErasedRowProblem> {
        let Some(erasure_id) = row.erasure_id else {
            return Err(ErasedRowProblem::NotErased);
        };
        let Some(erasure) = self.erasures.get(&erasure_id) else {
            return Err(ErasedRowProblem::NoRecord(erasure_id));
        };
        if row.user_id.as_deref() != Some(erasure.pseudonym.as_str()) {
            return Err(ErasedRowProblem::NotPseudonym(erasure_id));
        }
        if row.chain_form == Some(CHAIN_FORM_V3) {
            return if row_hash(prev, &row.canonical()).as_slice() == link.row_hash.as_slice() {
                Ok(())
            } else {
                Err(ErasedRowProblem::Altered(erasure_id))
            };
        }
        let (Some(key_id), Some(signature)) = (&erasure.key_id, &row.erased_signature) else {
            return Err(ErasedRowProblem::Unsigned(erasure_id));
        };
        let message = erased_row_message(
            self.tenant,
            row.seq,
            &link.row_hash,
            &row.canonical(),
            erasure_id,
        );
        check_signature(self.keys, self.trusted, key_id, signature, &message)
            .map(|_| ())
            .map_err(ErasedRowProblem::Signature)
    }

    /// A link whose row is missing: accepted only under a signed truncation
    /// record of its tenant and day whose seq range and counts it fits.
    fn dropped_row(&mut self, link: &Link) -> bool {
        let day = link.day;
        let Some(t) = self.dropped_days.get_mut(&day) else {
            return self.problem(
                link.seq,
                ProblemKind::Deleted,
                "the chained row is missing and no retention drop of its day is recorded",
            );
        };
        if let Some(why) = &t.signature_problem {
            let detail = format!(
                "the chained row is missing and the truncation record of {day} {why} \
                 (forged or altered record)"
            );
            return self.problem(link.seq, ProblemKind::Truncation, detail);
        }
        let record = &t.record;
        let in_range = record.min_seq.is_some_and(|min| link.seq >= min)
            && record.last_chained_seq.is_some_and(|last| link.seq <= last);
        if !in_range {
            let detail = format!(
                "the chained row is missing, outside the seq range {:?}..={:?} the truncation \
                 record of {day} signs for",
                record.min_seq, record.last_chained_seq
            );
            return self.problem(link.seq, ProblemKind::Truncation, detail);
        }
        t.missing_links += 1;
        if record.last_chained_seq == Some(link.seq) {
            t.closed = true;
            let (missing, chained) = (t.missing_links, record.chained_rows);
            let hash_matches = record.last_chained_hash.as_deref() == Some(&link.row_hash[..]);
            if missing != chained {
                return self.problem(
                    link.seq,
                    ProblemKind::Truncation,
                    format!(
                        "the truncation record of {day} signs for {chained} chained rows dropped, \
                         but {missing} rows of that day are missing from the chain"
                    ),
                );
            }
            if !hash_matches {
                return self.problem(
                    link.seq,
                    ProblemKind::Truncation,
                    format!(
                        "the truncation record of {day} signs for another hash at its last \
                         chained seq"
                    ),
                );
            }
        }
        true
    }

    fn checkpoint(&mut self, link: &Link, cp: &StoredCheckpoint) -> bool {
        self.report.checkpoints_checked += 1;
        let message = checkpoint_message(self.tenant, link.seq, &cp.head_hash, cp.signed_at);
        let trusted =
            match check_signature(self.keys, self.trusted, &cp.key_id, &cp.signature, &message) {
                Ok(trusted) => trusted,
                Err(why) => {
                    return self.problem(
                        link.seq,
                        ProblemKind::Checkpoint,
                        format!("the checkpoint {why} (forged or altered checkpoint)"),
                    )
                }
            };
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
            .external
            .range(last.map_or(i64::MIN, |s| s.saturating_add(1))..)
            .next()
        {
            self.problem(
                seq,
                ProblemKind::Deleted,
                format!(
                    "a checkpoint kept outside the database covers seq {seq}, but the chain ends \
                     at {last:?}: its tail was cut"
                ),
            );
            return;
        }
        let open = self
            .dropped_days
            .values()
            .filter(|t| !t.closed)
            .filter_map(|t| t.record.last_chained_seq.map(|seq| (seq, t.record.day)))
            .min();
        if let Some((seq, day)) = open {
            self.problem(
                seq,
                ProblemKind::Truncation,
                format!(
                    "the truncation record of {day} names seq {seq} as its last chained row, but \
                     the chain has no dropped row there"
                ),
            );
            return;
        }
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

/// Why a signature is not acceptable: the end of a sentence that names what
/// was signed ("the checkpoint is signed by key …").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SignatureProblem {
    #[error("is not signed")]
    Unsigned,
    #[error("is signed by key {0}, which is unknown")]
    UnknownKey(String),
    #[error("is signed by key {0}, which is not trusted")]
    UntrustedKey(String),
    #[error("has a signature that does not verify")]
    Invalid,
}

/// Why an erased row does not verify (see `Walk::erased_row`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ErasedRowProblem {
    #[error("the row is not erased")]
    NotErased,
    #[error(
        "the row is marked erased by erasure {0}, which has no record in erasures \
         (erased out of band, or the record was deleted)"
    )]
    NoRecord(uuid::Uuid),
    #[error("the erased row's user is not the pseudonym of its erasure {0}")]
    NotPseudonym(uuid::Uuid),
    #[error(
        "the row erased by erasure {0} does not match its chained hash \
         (its content or its kept personal digest was altered)"
    )]
    Altered(uuid::Uuid),
    #[error(
        "the row stored before canonical form v3 is marked erased by erasure {0} \
         without a signature over it"
    )]
    Unsigned(uuid::Uuid),
    #[error(
        "the erasure signature of this row stored before canonical form v3 {0} \
         (the erased row was altered)"
    )]
    Signature(SignatureProblem),
}

/// Checks a signature by key `key_id` over `message`: answers whether the key is
/// one of `trusted` (`None`: no trusted key given), or why it is not acceptable
/// (unknown key, untrusted key, signature that does not verify).
fn check_signature(
    keys: &HashMap<String, Option<VerifyingKey>>,
    trusted: &[VerifyingKey],
    key_id: &str,
    signature: &[u8],
    message: &[u8],
) -> Result<Option<bool>, SignatureProblem> {
    let Some(key) = keys.get(key_id).copied().flatten() else {
        return Err(SignatureProblem::UnknownKey(key_id.to_owned()));
    };
    let is_trusted = (!trusted.is_empty()).then(|| trusted.contains(&key));
    if is_trusted == Some(false) {
        return Err(SignatureProblem::UntrustedKey(key_id.to_owned()));
    }
    let valid = Signature::from_slice(signature)
        .is_ok_and(|signature| key.verify(message, &signature).is_ok());
    if !valid {
        return Err(SignatureProblem::Invalid);
    }
    Ok(is_trusted)
}

/// Whether the link at `start.seq` still has `start.head_hash` and its row still
/// hashes to it (a resumed walk trusts everything up to there).
async fn anchor_holds(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: &str,
    start: &VerifyStart,
) -> Result<bool, PgError> {
    // Two links at one seq (an out-of-band insert) do not anchor a walk either.
    let links = tx
        .query(
            "SELECT prev_hash, row_hash FROM tally_chain_link($1, $2)",
            &[&tenant, &start.seq],
        )
        .await?;
    let [link] = links.as_slice() else {
        return Ok(false);
    };
    let prev_hash: Vec<u8> = link.try_get(0)?;
    let link_hash: Vec<u8> = link.try_get(1)?;
    let Ok(prev) = <[u8; 32]>::try_from(prev_hash.as_slice()) else {
        return Ok(false);
    };
    if link_hash != start.head_hash {
        return Ok(false);
    }
    let rows: Vec<ChainRow> = tx
        .query(
            &format!("SELECT {ROW_COLUMNS} FROM activity_events WHERE tenant_id = $1 AND seq = $2"),
            &[&tenant, &start.seq],
        )
        .await?
        .iter()
        .map(ChainRow::from_row)
        .collect::<Result<_, _>>()?;
    Ok(rows.len() == 1 && row_hash(&prev, &rows[0].canonical())[..] == link_hash[..])
}
