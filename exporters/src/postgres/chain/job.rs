//! The chainer: links newly committed rows into their tenant's chain and signs checkpoints.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ed25519_dalek::Signer;
use futures::TryStreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Transaction};

use super::canonical::{checkpoint_message, key_id, ChainRow, ROW_COLUMNS};
use super::external::{append_checkpoints, ExternalCheckpoint};
use super::link::{read_heads, Links};
use super::{SigningKey, CHAIN_LOCK_KEY, CHAIN_WATERMARK, DEFAULT_CHAIN_ROWS_PER_RUN};
use crate::postgres::periodic::spawn_periodically;
use crate::postgres::PgError;

/// What one chainer run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainReport {
    /// Watermark before and after the run.
    pub from_seq: i64,
    /// Watermark after the run.
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
    checkpoint_dir: Option<PathBuf>,
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
            .field("checkpoint_dir", &self.checkpoint_dir)
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
            checkpoint_dir: None,
        }
    }

    /// Also appends every signed checkpoint to a file of `dir` (see
    /// [`append_checkpoints`]), fsynced before the run commits: a run whose file
    /// write fails rolls back and is retried.
    pub fn with_checkpoint_dir(mut self, dir: Option<PathBuf>) -> ChainJob {
        self.checkpoint_dir = dir;
        self
    }

    /// Bounds the rows chained per run (at least 1).
    pub fn with_max_rows_per_run(mut self, rows: i64) -> ChainJob {
        self.max_rows_per_run = rows.max(1);
        self
    }

    /// Runs once in one transaction (see the module documentation). Blocks while
    /// another instance's run holds [`CHAIN_LOCK_KEY`].
    ///
    /// The watermark's row lock, which a linking writer waits for while it holds
    /// the activity lock, is taken before linking only when there are rows to
    /// link. A run that only signs checkpoints (the writers linked every row)
    /// takes it with its last statement, after the signing and the checkpoint
    /// file's write and fsync.
    pub async fn run_once(&self, client: &mut Client) -> Result<ChainReport, PgError> {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHAIN_LOCK_KEY])
            .await?;
        let mut from = chain_watermark(&tx, false).await?;
        let mut upper = self.upper(&tx, from).await?;
        if upper.is_some() {
            // Rows to link: now under the row lock, from the watermark as it is
            // once the lock is granted (a writer may have moved it meanwhile).
            from = chain_watermark(&tx, true).await?;
            upper = self.upper(&tx, from).await?;
        }
        let mut report = ChainReport {
            from_seq: from,
            to_seq: from,
            ..ChainReport::default()
        };
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

    /// The last `seq` of the next run's rows above `from`, if any.
    async fn upper(&self, tx: &Transaction<'_>, from: i64) -> Result<Option<i64>, PgError> {
        Ok(tx
            .query_one(
                "SELECT max(seq) FROM (SELECT seq FROM activity_events WHERE seq > $1 \
                 ORDER BY seq LIMIT $2) AS next_rows",
                &[&from, &self.max_rows_per_run],
            )
            .await?
            .try_get(0)?)
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
        let head_rows = tx
            .query(
                "SELECT tenant_id, seq, row_hash FROM chain_heads WHERE tenant_id = ANY($1)",
                &[&tenants],
            )
            .await?;
        read_heads(&head_rows, 0, &mut heads)?;
        let mut links = Links::with_capacity(rows.len());
        for row in &rows {
            links.push_stored(&mut heads, row);
        }
        links.set_heads(heads);
        tx.execute(
            "INSERT INTO activity_chain (tenant_id, seq, day, prev_seq, prev_hash, row_hash) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::date[], $4::int8[], $5::bytea[], \
                 $6::bytea[])",
            &[
                &links.tenant,
                &links.seq,
                &links.day,
                &links.prev_seq,
                &Links::byteas(&links.prev_hash),
                &Links::byteas(&links.hash),
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO chain_heads (tenant_id, seq, row_hash) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[]) \
             ON CONFLICT (tenant_id) DO UPDATE SET seq = EXCLUDED.seq, \
                 row_hash = EXCLUDED.row_hash, updated_at = now() \
             WHERE chain_heads.seq IS DISTINCT FROM EXCLUDED.seq",
            &[
                &links.head_tenant,
                &links.head_seq,
                &Links::byteas(&links.head_hash),
            ],
        )
        .await?;
        tx.execute(
            "UPDATE chain_watermark SET last_seq = $2, updated_at = now() WHERE name = $1",
            &[&CHAIN_WATERMARK, &to],
        )
        .await?;
        report.to_seq = to;
        report.rows = links.seq.len() as u64;
        report.skipped_duplicates += links.skipped_duplicates;
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
        if let (Some(dir), false) = (&self.checkpoint_dir, tenants.is_empty()) {
            // Written while the run holds CHAIN_LOCK_KEY, so one instance writes at a
            // time. Should the commit then fail, the same rows are chained again with
            // the same hashes (a link depends only on the rows), so the line stays true.
            let lines: Vec<ExternalCheckpoint> = (0..tenants.len())
                .map(|i| {
                    ExternalCheckpoint::new(
                        &tenants[i],
                        seqs[i],
                        &hashes[i],
                        signed[i],
                        &id,
                        &signatures[i],
                    )
                })
                .collect();
            let day = signed[0].date_naive();
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || append_checkpoints(&dir, day, &lines))
                .await
                .map_err(|e| PgError::Integrity(format!("checkpoint file writer failed: {e}")))?
                .inspect_err(|error| {
                    tracing::error!(%error, "cannot write checkpoints to exporters.postgres.tamper_evidence.checkpoint_dir; the chainer retries");
                })?;
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
        let job = self;
        let max_rows = u64::try_from(job.max_rows_per_run).unwrap_or(u64::MAX);
        spawn_periodically("chain", url, interval, shutdown, move |client| {
            let job = job.clone();
            Box::pin(async move {
                let report = job.run_once(client).await?;
                Ok(report.rows + report.skipped_duplicates >= max_rows)
            })
        })
    }
}

/// The watermark, creating its row when missing; `lock`: under its row lock.
async fn chain_watermark(tx: &Transaction<'_>, lock: bool) -> Result<i64, PgError> {
    tx.execute(
        "INSERT INTO chain_watermark (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
        &[&CHAIN_WATERMARK],
    )
    .await?;
    let sql = if lock {
        "SELECT last_seq FROM chain_watermark WHERE name = $1 FOR UPDATE"
    } else {
        "SELECT last_seq FROM chain_watermark WHERE name = $1"
    };
    Ok(tx.query_one(sql, &[&CHAIN_WATERMARK]).await?.try_get(0)?)
}
