//! Retention: drops whole daily partitions of the raw tables older than
//! `retention.raw_days` (or, per tenant, `retention.tenants.<T>.raw_days`),
//! deletes rollup rows older than `retention.aggregate_days`, and logs what it
//! removed.
//!
//! A partition `<table>_pYYYYMMDD` (the UTC day it holds) is dropped when its day
//! is before `today - raw_days` (so at least `raw_days` whole days are kept) for
//! **every tenant whose rows it holds**, **and** its rows are already folded into
//! the rollups (its largest `seq` is at most the rollup's committed watermark)
//! **and** it holds no row at or after the cutoff. When only some of its tenants
//! are past their retention (tenants with different `raw_days`), their rows are
//! deleted from the partition, which is kept for the others (a `DELETE`, far
//! dearer than a `DROP`; see `docs/operations.md#retention`). A partition failing
//! a check is kept and logged as a warning: the next run retries it once the
//! rollup job has caught up. Partitions whose name does not follow the pattern (a
//! default partition, tables added by hand) are never touched.
//!
//! With `retention.archive`, the rows are first written to an archive with a
//! signed manifest ([`archive`](super::archive)), in the removing transaction
//! while the partition is locked against writes; when the archive cannot be
//! written, nothing is removed (`tally_retention_archive_failures_total`) and
//! the next run tries again.
//!
//! Before `activity_events` rows are removed, they are recorded per tenant in
//! `chain_truncations` in the same transaction, so the tamper-evidence chain
//! verifies across the removal.
//!
//! Over 600 lines: partition drops, per-tenant deletes and signed truncation records run in one job's transactions.

use std::time::Duration;

use chrono::{Days, NaiveDate, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::metrics::metrics;
use ed25519_dalek::Signer;
use tally_config::RetentionConfig;
use tally_model::metrics::TableLabels;

use super::archive::{write_archive, ArchiveError};
use super::chain::{key_id, SigningKey, TruncationRecord, CHAIN_LOCK_KEY, CHAIN_WATERMARK};
use super::periodic::spawn_periodically;
use super::rollup::{ACTIVITY_WATERMARK, TOKEN_WATERMARK};
use super::{PgError, PARTITION_LOCK_KEY};

/// Advisory lock key serialising retention runs over instances (the bytes `tallyret`).
pub const RETENTION_LOCK_KEY: i64 = i64::from_be_bytes(*b"tallyret");

/// Default pause between two runs of the spawned job.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// The raw tables and the rollup watermark that must cover their rows.
const RAW_TABLES: [(&str, &str); 2] = [
    ("activity_events", ACTIVITY_WATERMARK),
    ("token_usage", TOKEN_WATERMARK),
];

/// What one run removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Raw partitions dropped (table names), oldest first per table.
    pub dropped_partitions: Vec<String>,
    /// Partitions old enough to drop but kept, with the reason.
    pub kept_partitions: Vec<(String, String)>,
    /// Partitions kept for some tenants from which other tenants' rows (past
    /// their retention) were deleted: partition, tenants, rows deleted.
    pub tenant_deletions: Vec<(String, Vec<String>, u64)>,
    /// Manifests of the archives written.
    pub archives: Vec<std::path::PathBuf>,
    /// `activity_daily` rows deleted.
    pub activity_daily_deleted: u64,
    /// `token_usage_daily` rows deleted.
    pub token_usage_daily_deleted: u64,
    /// Rows deleted from the rollups derived from those two (migration 0008:
    /// `*_tenant`, `*_all`, `activity_users_daily*`, and the users whose last
    /// day is before the cutoff from `activity_user_last_seen*`; the weekly
    /// rollups of migrations 0028 and 0029, net of the cutoff's week rebuilt).
    pub derived_rollups_deleted: u64,
    /// Rows deleted from `token_metric_minutes` (older than `raw_days`) and
    /// `token_metric_series` (not seen for `raw_days`).
    pub token_metric_rows_deleted: u64,
}

/// Deletes of the derived rollups' rows older than the cutoff `$1`. A user
/// whose last day is before the cutoff has no row left in `activity_daily`.
const DERIVED_ROLLUP_DELETES: [&str; 14] = [
    "DELETE FROM activity_daily_tenant WHERE day < $1",
    "DELETE FROM activity_daily_all WHERE day < $1",
    "DELETE FROM activity_users_daily WHERE day < $1",
    "DELETE FROM activity_users_daily_all WHERE day < $1",
    "DELETE FROM activity_user_last_seen WHERE last_seen < $1",
    "DELETE FROM activity_user_last_seen_all WHERE last_seen < $1",
    "DELETE FROM token_usage_daily_tenant WHERE day < $1",
    "DELETE FROM token_usage_daily_all WHERE day < $1",
    "DELETE FROM token_usage_latency_daily WHERE day < $1",
    "DELETE FROM token_usage_latency_daily_all WHERE day < $1",
    "DELETE FROM token_usage_ttft_daily WHERE day < $1",
    "DELETE FROM token_usage_ttft_daily_all WHERE day < $1",
    "DELETE FROM token_usage_speed_daily WHERE day < $1",
    "DELETE FROM token_usage_speed_daily_all WHERE day < $1",
];

/// The retention job.
#[derive(Clone)]
pub struct RetentionJob {
    config: RetentionConfig,
    signer: Option<SigningKey>,
}

impl std::fmt::Debug for RetentionJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetentionJob")
            .field("config", &self.config)
            .field(
                "truncation_key_id",
                &self.signer.as_ref().map(|k| key_id(&k.verifying_key())),
            )
            .finish()
    }
}

impl RetentionJob {
    /// A job applying `config` (`raw_days` default 90, `aggregate_days` default
    /// 730). A value of 0 disables that half of the job (keep forever).
    pub fn new(config: RetentionConfig) -> RetentionJob {
        RetentionJob {
            config,
            signer: None,
        }
    }

    /// Signs the `chain_truncations` records of dropped `activity_events`
    /// partitions with `signer` (the checkpoint signing key). Without it the
    /// records are unsigned, and verification reports the rows they cover.
    pub fn with_signer(mut self, signer: Option<SigningKey>) -> RetentionJob {
        self.signer = signer;
        self
    }

    /// Runs once with "today" = the current UTC day.
    pub async fn run_once(&self, client: &Client) -> Result<RetentionReport, PgError> {
        self.run_once_at(client, Utc::now().date_naive()).await
    }

    /// Runs once as if the current UTC day were `today`.
    pub async fn run_once_at(
        &self,
        client: &Client,
        today: NaiveDate,
    ) -> Result<RetentionReport, PgError> {
        let mut report = RetentionReport::default();
        if let Some(oldest_kept) = self.earliest_cutoff(today) {
            for (table, watermark) in RAW_TABLES {
                self.remove_expired(client, table, watermark, today, oldest_kept, &mut report)
                    .await?;
            }
        }
        self.delete_expired_metric_rows(client, today, &mut report)
            .await?;
        if self.config.aggregate_days > 0 {
            if let Some(cutoff) =
                today.checked_sub_days(Days::new(self.config.aggregate_days.into()))
            {
                report.activity_daily_deleted = client
                    .execute("DELETE FROM activity_daily WHERE day < $1", &[&cutoff])
                    .await?;
                report.token_usage_daily_deleted = client
                    .execute("DELETE FROM token_usage_daily WHERE day < $1", &[&cutoff])
                    .await?;
                for sql in DERIVED_ROLLUP_DELETES {
                    report.derived_rollups_deleted += client.execute(sql, &[&cutoff]).await?;
                }
                // The weekly histograms (migration 0028): the weeks that start
                // before the cutoff go, the week holding it is rebuilt from the
                // daily rows kept, under the rollup job's lock.
                let weekly: i64 = client
                    .query_one("SELECT tally_retain_weekly_histograms($1)", &[&cutoff])
                    .await?
                    .get(0);
                report.derived_rollups_deleted += u64::try_from(weekly).unwrap_or(0);
                // The per-user weekly rollups (migration 0029), the same way.
                let user_weekly: i64 = client
                    .query_one("SELECT tally_retain_user_weekly($1)", &[&cutoff])
                    .await?
                    .get(0);
                report.derived_rollups_deleted += u64::try_from(user_weekly).unwrap_or(0);
                if report.activity_daily_deleted + report.token_usage_daily_deleted > 0 {
                    tracing::info!(
                        before = %cutoff,
                        activity_daily = report.activity_daily_deleted,
                        token_usage_daily = report.token_usage_daily_deleted,
                        derived = report.derived_rollups_deleted,
                        "retention deleted rollup rows older than retention.aggregate_days"
                    );
                }
            }
        }
        Ok(report)
    }

    /// Deletes the per-minute token metric rows (and series states) older than
    /// their tenant's raw retention: the default `raw_days` for tenants without
    /// their own setting, each `retention.tenants` entry for its tenant.
    async fn delete_expired_metric_rows(
        &self,
        client: &Client,
        today: NaiveDate,
        report: &mut RetentionReport,
    ) -> Result<(), PgError> {
        let overridden: Vec<&str> = self.config.tenants.keys().map(String::as_str).collect();
        let midnight = |day: NaiveDate| day.and_time(chrono::NaiveTime::MIN).and_utc();
        let mut deleted = 0;
        if let Some(cutoff) = cutoff(self.config.raw_days, today) {
            let since = midnight(cutoff);
            deleted += client
                .execute(
                    "DELETE FROM token_metric_minutes WHERE minute < $1 AND tenant_id <> ALL($2)",
                    &[&since, &overridden],
                )
                .await?;
            deleted += client
                .execute(
                    "DELETE FROM token_metric_series WHERE seen_at < $1 AND tenant_id <> ALL($2)",
                    &[&since, &overridden],
                )
                .await?;
        }
        for tenant in &overridden {
            let Some(cutoff) = self.cutoff_of(tenant, today) else {
                continue;
            };
            let since = midnight(cutoff);
            deleted += client
                .execute(
                    "DELETE FROM token_metric_minutes WHERE minute < $1 AND tenant_id = $2",
                    &[&since, tenant],
                )
                .await?;
            deleted += client
                .execute(
                    "DELETE FROM token_metric_series WHERE seen_at < $1 AND tenant_id = $2",
                    &[&since, tenant],
                )
                .await?;
        }
        report.token_metric_rows_deleted += deleted;
        if deleted > 0 {
            tracing::info!(
                rows = deleted,
                "retention deleted token metric rows older than their tenant's raw retention"
            );
        }
        Ok(())
    }

    /// The cutoff of `tenant` (its rows of days before it are expired), `None`
    /// when it keeps its rows forever.
    fn cutoff_of(&self, tenant: &str, today: NaiveDate) -> Option<NaiveDate> {
        cutoff(self.config.raw_days_of(tenant), today)
    }

    /// The latest cutoff of any retention setting: no partition of that day or
    /// later can hold an expired row. `None`: every setting keeps forever.
    fn earliest_cutoff(&self, today: NaiveDate) -> Option<NaiveDate> {
        std::iter::once(self.config.raw_days)
            .chain(self.config.tenants.values().map(|t| t.raw_days))
            .filter_map(|days| cutoff(days, today))
            .max()
    }

    async fn remove_expired(
        &self,
        client: &Client,
        table: &str,
        watermark_name: &str,
        today: NaiveDate,
        latest_cutoff: NaiveDate,
        report: &mut RetentionReport,
    ) -> Result<(), PgError> {
        let rows = client
            .query(
                "SELECT c.relname::text FROM pg_inherits i \
                 JOIN pg_class c ON c.oid = i.inhrelid \
                 JOIN pg_class p ON p.oid = i.inhparent \
                 WHERE p.relname = $1 AND p.relnamespace = c.relnamespace \
                   AND p.relnamespace = to_regnamespace(current_schema())::oid \
                 ORDER BY 1",
                &[&table],
            )
            .await?;
        for row in rows {
            let name: String = row.get(0);
            let Some(day) = partition_day(table, &name) else {
                continue;
            };
            if day >= latest_cutoff {
                continue;
            }
            let outcome = match self
                .remove_one(client, table, &name, day, watermark_name, today)
                .await
            {
                // Busy parent (a long reader): keep it, retry next run.
                Err(error)
                    if error.sql_state()
                        == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                {
                    Removal::Kept("its table is busy (lock timeout); retried next run".to_owned())
                }
                other => other?,
            };
            match outcome {
                Removal::Nothing => {}
                Removal::Dropped(archive) => {
                    tracing::info!(
                        partition = %name,
                        day = %day,
                        archive = ?archive.as_ref().map(|a| a.manifest_path.display().to_string()),
                        "retention dropped partition older than retention.raw_days"
                    );
                    if let Some(archive) = archive {
                        count_archived(table, archive.manifest.rows);
                        report.archives.push(archive.manifest_path);
                    }
                    report.dropped_partitions.push(name);
                }
                Removal::Deleted(tenants, deleted, archive) => {
                    tracing::info!(
                        partition = %name,
                        day = %day,
                        tenants = tenants.len(),
                        rows = deleted,
                        "retention deleted the rows of tenants past their retention.tenants raw_days \
                         from a partition kept for others"
                    );
                    if let Some(archive) = archive {
                        count_archived(table, archive.manifest.rows);
                        report.archives.push(archive.manifest_path);
                    }
                    report.tenant_deletions.push((name, tenants, deleted));
                }
                Removal::Kept(reason) => {
                    tracing::warn!(partition = %name, reason = %reason, "retention kept an expired partition");
                    report.kept_partitions.push((name, reason));
                }
                Removal::ArchiveFailed(error) => {
                    metrics()
                        .retention_archive_failures
                        .get_or_create(&TableLabels {
                            table: table_label(table),
                        })
                        .inc();
                    tracing::error!(
                        partition = %name,
                        error = %error,
                        "retention cannot write the archive (retention.archive.dir): nothing is \
                         removed until it can; retried next run"
                    );
                    report
                        .kept_partitions
                        .push((name, format!("the archive could not be written: {error}")));
                    // The next partitions would fail alike: wait for the next run.
                    break;
                }
            }
        }
        Ok(())
    }

    /// Removes what is expired in `partition` in one transaction: the whole
    /// partition when every tenant in it is past its retention, else the rows of
    /// the tenants that are, unless a check fails (answered as `Kept`).
    async fn remove_one(
        &self,
        client: &Client,
        table: &str,
        partition: &str,
        day: NaiveDate,
        watermark_name: &str,
        today: NaiveDate,
    ) -> Result<Removal, PgError> {
        let quoted = quote_ident(partition);
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '5s'; \
                 SELECT pg_advisory_xact_lock({RETENTION_LOCK_KEY});"
            ))
            .await?;
        let result = async {
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&quoted])
                .await?
                .try_get(0)?;
            if !exists {
                return Ok(Removal::Nothing);
            }
            // No row arrives, changes or leaves while it is archived and removed.
            client
                .batch_execute(&format!("LOCK TABLE {quoted} IN SHARE ROW EXCLUSIVE MODE"))
                .await?;
            if table == "activity_events" {
                // No chainer run links these rows meanwhile: the archive's links and
                // the truncation record see the same chain.
                client
                    .batch_execute(&format!("SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY})"))
                    .await?;
            }
            let plan = if self.config.tenants.is_empty() {
                match cutoff(self.config.raw_days, today) {
                    Some(cutoff) if day < cutoff => Plan::Drop(cutoff),
                    _ => Plan::Keep,
                }
            } else {
                let tenants = partition_tenants(client, &quoted).await?;
                self.plan(&tenants, day, today)
            };
            let (tenants, cutoff) = match plan {
                Plan::Keep => return Ok(Removal::Nothing),
                Plan::Drop(cutoff) => (None, Some(cutoff)),
                Plan::Delete(tenants) => (Some(tenants), None),
            };
            let row = client
                .query_one(
                    &format!(
                        "SELECT (SELECT max(seq) FROM {quoted} \
                                   WHERE $3::text[] IS NULL OR tenant_id = ANY($3)), \
                                (SELECT count(*) FROM (SELECT 1 FROM {quoted} \
                                   WHERE $1::date IS NOT NULL \
                                   AND ts >= $1::date::timestamp AT TIME ZONE 'UTC' LIMIT 1) AS x), \
                                (SELECT last_seq FROM rollup_watermarks WHERE name = $2)"
                    ),
                    &[&cutoff, &watermark_name, &tenants],
                )
                .await?;
            let max_seq: Option<i64> = row.get(0);
            let late_rows: i64 = row.get(1);
            let watermark: Option<i64> = row.get(2);
            if let (Some(cutoff), true) = (cutoff, late_rows > 0) {
                return Ok(Removal::Kept(format!(
                    "it holds rows at or after the cutoff {cutoff}"
                )));
            }
            if let Some(max_seq) = max_seq {
                let watermark = watermark.unwrap_or(0);
                if max_seq > watermark {
                    return Ok(Removal::Kept(format!(
                        "its rows up to seq {max_seq} are not rolled up yet ({table} rollup watermark {watermark})"
                    )));
                }
            }
            let archive = match &self.config.archive {
                None => None,
                Some(config) => match write_archive(
                    client,
                    &config.dir,
                    config.format,
                    table,
                    partition,
                    day,
                    tenants.as_deref(),
                    self.signer.as_ref(),
                )
                .await
                {
                    Ok(archive) => archive,
                    Err(ArchiveError::Db(error)) => return Err(error),
                    Err(error @ ArchiveError::Io { .. }) => {
                        return Ok(Removal::ArchiveFailed(error.to_string()))
                    }
                },
            };
            if table == "activity_events" {
                record_truncation(client, partition, self.signer.as_ref(), tenants.as_deref())
                    .await?;
            }
            match tenants {
                None => {
                    client
                        .batch_execute(&format!(
                            "SELECT pg_advisory_xact_lock({PARTITION_LOCK_KEY}); DROP TABLE {quoted}; \
                             SELECT tally_bump_tail_generation('{table}')"
                        ))
                        .await?;
                    Ok(Removal::Dropped(archive))
                }
                Some(tenants) => {
                    let deleted = client
                        .execute(
                            &format!("DELETE FROM {quoted} WHERE tenant_id = ANY($1)"),
                            &[&tenants],
                        )
                        .await?;
                    // A partition's own DELETE fires no trigger of the parent:
                    // the cached live tails (migration 0027) are told here.
                    client
                        .execute("SELECT tally_bump_tail_generation($1)", &[&table])
                        .await?;
                    Ok(Removal::Deleted(tenants, deleted, archive))
                }
            }
        }
        .await;
        match result {
            Ok(removal @ (Removal::Kept(_) | Removal::ArchiveFailed(_))) => {
                client.batch_execute("ROLLBACK").await?;
                Ok(removal)
            }
            Ok(removal) => {
                client.batch_execute("COMMIT").await?;
                Ok(removal)
            }
            Err(error) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(error)
            }
        }
    }

    /// What to remove from a partition of `day` holding `tenants`' rows.
    fn plan(&self, tenants: &[String], day: NaiveDate, today: NaiveDate) -> Plan {
        let expired = |tenant: &str| self.cutoff_of(tenant, today).is_some_and(|c| day < c);
        if tenants.is_empty() {
            // An empty partition goes with the default retention.
            return match cutoff(self.config.raw_days, today) {
                Some(cutoff) if day < cutoff => Plan::Drop(cutoff),
                _ => Plan::Keep,
            };
        }
        let past: Vec<String> = tenants.iter().filter(|t| expired(t)).cloned().collect();
        if past.len() == tenants.len() {
            // Every row is before the earliest of its tenants' cutoffs.
            let earliest = tenants
                .iter()
                .filter_map(|t| self.cutoff_of(t, today))
                .min()
                .unwrap_or(today);
            Plan::Drop(earliest)
        } else if past.is_empty() {
            Plan::Keep
        } else {
            Plan::Delete(past)
        }
    }

    /// Runs the job on its own connection to `url` every `interval` (default
    /// [`DEFAULT_RETENTION_INTERVAL`]), the first run right away, until
    /// `shutdown` becomes `true` or its sender is dropped. Failures are logged
    /// and retried at the next tick.
    pub fn spawn(
        self,
        url: String,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let job = self;
        spawn_periodically("retention", url, interval, shutdown, move |client| {
            let job = job.clone();
            Box::pin(async move {
                job.run_once(client).await?;
                Ok(false)
            })
        })
    }
}

/// Records in `chain_truncations`, per tenant, what dropping the
/// `activity_events` partition `partition` removes (rows, seq range, the chained
/// rows, the last chained seq and its hash) and signs each record with `signer`,
/// so that verification accounts for the missing rows (see
/// [`chain`](super::chain)). Runs in the dropping transaction.
async fn record_truncation(
    client: &Client,
    partition: &str,
    signer: Option<&SigningKey>,
    tenants: Option<&[String]>,
) -> Result<(), PgError> {
    let Some(day) = partition_day("activity_events", partition) else {
        return Ok(());
    };
    let quoted = quote_ident(partition);
    let recorded = client
        .query(
            &format!(
                "WITH wm AS (SELECT coalesce((SELECT last_seq FROM chain_watermark \
                     WHERE name = $3), 0) AS last_seq), \
                 dropped AS ( \
                     SELECT tenant_id, count(*) AS rows, min(seq) AS min_seq, max(seq) AS max_seq, \
                         count(*) FILTER (WHERE seq <= wm.last_seq) AS chained_rows, \
                         max(seq) FILTER (WHERE seq <= wm.last_seq) AS last_chained_seq \
                     FROM {quoted} AS p, wm WHERE $4::text[] IS NULL OR p.tenant_id = ANY($4) \
                     GROUP BY tenant_id) \
                 INSERT INTO chain_truncations AS t (table_name, partition_name, day, tenant_id, \
                     rows, min_seq, max_seq, chained_rows, last_chained_seq, last_chained_hash) \
                 SELECT 'activity_events', $1, $2, d.tenant_id, d.rows, d.min_seq, d.max_seq, \
                     d.chained_rows, d.last_chained_seq, c.row_hash \
                 FROM dropped d LEFT JOIN LATERAL (SELECT row_hash \
                     FROM tally_chain_link(d.tenant_id, d.last_chained_seq) LIMIT 1) c ON true \
                 ON CONFLICT (table_name, day, tenant_id) DO UPDATE SET \
                     rows = t.rows + EXCLUDED.rows, \
                     min_seq = least(t.min_seq, EXCLUDED.min_seq), \
                     max_seq = greatest(t.max_seq, EXCLUDED.max_seq), \
                     chained_rows = coalesce(t.chained_rows, 0) + EXCLUDED.chained_rows, \
                     last_chained_seq = greatest(t.last_chained_seq, EXCLUDED.last_chained_seq), \
                     last_chained_hash = CASE WHEN t.last_chained_seq IS NULL \
                         OR EXCLUDED.last_chained_seq > t.last_chained_seq \
                         THEN EXCLUDED.last_chained_hash ELSE t.last_chained_hash END, \
                     dropped_at = EXCLUDED.dropped_at, key_id = NULL, signature = NULL \
                 RETURNING t.tenant_id, t.rows, t.min_seq, t.max_seq, t.chained_rows, \
                     t.last_chained_seq, t.last_chained_hash, t.dropped_at"
            ),
            &[&partition, &day, &CHAIN_WATERMARK, &tenants],
        )
        .await?;
    if let Some(signer) = signer {
        let id = key_id(&signer.verifying_key());
        client
            .execute(
                "INSERT INTO chain_keys (key_id, public_key) VALUES ($1, $2) \
                 ON CONFLICT (key_id) DO NOTHING",
                &[&id, &signer.verifying_key().as_bytes().as_slice()],
            )
            .await?;
        let mut tenants = Vec::with_capacity(recorded.len());
        let mut signatures = Vec::with_capacity(recorded.len());
        for row in &recorded {
            let record = TruncationRecord {
                table: "activity_events".to_owned(),
                tenant: row.try_get(0)?,
                day,
                rows: row.try_get(1)?,
                min_seq: row.try_get(2)?,
                max_seq: row.try_get(3)?,
                chained_rows: row.try_get::<_, Option<i64>>(4)?.unwrap_or(0),
                last_chained_seq: row.try_get(5)?,
                last_chained_hash: row.try_get(6)?,
                dropped_at: row.try_get(7)?,
            };
            signatures.push(signer.sign(&record.message()).to_bytes().to_vec());
            tenants.push(record.tenant);
        }
        client
            .execute(
                "UPDATE chain_truncations t SET key_id = $3, signature = u.s \
                 FROM unnest($1::text[], $2::bytea[]) AS u(tenant, s) \
                 WHERE t.table_name = 'activity_events' AND t.day = $4 AND t.tenant_id = u.tenant",
                &[&tenants, &signatures, &id, &day],
            )
            .await?;
    } else if !recorded.is_empty() {
        tracing::warn!(
            partition,
            "retention recorded an unsigned truncation (no checkpoint signing key): \
             verification reports the dropped rows as unaccounted for"
        );
    }
    tracing::debug!(
        partition,
        tenants = recorded.len(),
        "retention recorded the drop for the hash chain"
    );
    Ok(())
}

/// What one partition's transaction did.
enum Removal {
    /// Nothing was expired (or the partition was gone).
    Nothing,
    /// The partition was dropped (after its archive, if any).
    Dropped(Option<super::archive::Archived>),
    /// These tenants' rows were deleted (after their archive, if any).
    Deleted(Vec<String>, u64, Option<super::archive::Archived>),
    /// A check failed: nothing removed, for this reason.
    Kept(String),
    /// The archive could not be written: nothing removed.
    ArchiveFailed(String),
}

/// What to remove from one partition.
enum Plan {
    Keep,
    /// The whole partition; rows must be before this cutoff.
    Drop(NaiveDate),
    /// These tenants' rows.
    Delete(Vec<String>),
}

/// `today - days`, `None` for 0 (keep forever).
fn cutoff(days: u32, today: NaiveDate) -> Option<NaiveDate> {
    if days == 0 {
        return None;
    }
    today.checked_sub_days(Days::new(days.into()))
}

/// The distinct tenants of a partition, by skipping through its
/// `(tenant_id, …)` index (one index probe per tenant, not a scan).
async fn partition_tenants(client: &Client, quoted: &str) -> Result<Vec<String>, PgError> {
    let rows = client
        .query(
            &format!(
                "WITH RECURSIVE t(tenant) AS ( \
                     (SELECT tenant_id FROM {quoted} ORDER BY tenant_id LIMIT 1) \
                     UNION ALL \
                     SELECT (SELECT tenant_id FROM {quoted} WHERE tenant_id > t.tenant \
                             ORDER BY tenant_id LIMIT 1) FROM t WHERE t.tenant IS NOT NULL) \
                 SELECT tenant FROM t WHERE tenant IS NOT NULL"
            ),
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| row.try_get::<_, String>(0).map_err(PgError::from))
        .collect()
}

fn table_label(table: &str) -> &'static str {
    if table == "activity_events" {
        "activity_events"
    } else {
        "token_usage"
    }
}

fn count_archived(table: &str, rows: i64) {
    metrics()
        .retention_archived_rows
        .get_or_create(&TableLabels {
            table: table_label(table),
        })
        .inc_by(u64::try_from(rows).unwrap_or(0));
}

/// The UTC day of a partition named `<table>_pYYYYMMDD`.
pub fn partition_day(table: &str, name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix(table)?.strip_prefix("_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_config::TenantRetentionConfig;

    fn plan_of(job: &RetentionJob, tenants: &[&str], age: u64) -> String {
        let today = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap_or_default();
        let tenants: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
        match job.plan(&tenants, today - Days::new(age), today) {
            Plan::Keep => "keep".into(),
            Plan::Drop(cutoff) => format!("drop<{}", (today - cutoff).num_days()),
            Plan::Delete(tenants) => format!("delete {}", tenants.join(",")),
        }
    }

    #[test]
    fn plans_follow_each_tenants_retention() {
        let job = RetentionJob::new(RetentionConfig {
            raw_days: 90,
            tenants: [("long", 365), ("short", 30), ("forever", 0)]
                .into_iter()
                .map(|(t, d)| (t.to_owned(), TenantRetentionConfig { raw_days: d }))
                .collect(),
            ..RetentionConfig::default()
        });
        let today = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap_or_default();
        assert_eq!(job.earliest_cutoff(today), Some(today - Days::new(30)));
        // Day 60 ago: only short is past its retention.
        assert_eq!(
            plan_of(&job, &["long", "other", "short"], 60),
            "delete short"
        );
        assert_eq!(plan_of(&job, &["short"], 60), "drop<30");
        assert_eq!(plan_of(&job, &["other"], 60), "keep");
        // Day 100 ago: short and the default are past; long is not.
        assert_eq!(
            plan_of(&job, &["long", "other", "short"], 100),
            "delete other,short"
        );
        // Every tenant past: dropped, rows before the earliest of their cutoffs.
        assert_eq!(plan_of(&job, &["other", "short"], 100), "drop<90");
        assert_eq!(plan_of(&job, &["long", "other"], 400), "drop<365");
        // A tenant kept forever keeps its partitions; others' rows go.
        assert_eq!(plan_of(&job, &["forever", "other"], 400), "delete other");
        assert_eq!(plan_of(&job, &["forever"], 4000), "keep");
        // An empty partition goes with the default.
        assert_eq!(plan_of(&job, &[], 60), "keep");
        assert_eq!(plan_of(&job, &[], 91), "drop<90");
        // Keep-forever default, one short tenant: only its rows ever go.
        let job = RetentionJob::new(RetentionConfig {
            raw_days: 0,
            tenants: [("short".to_owned(), TenantRetentionConfig { raw_days: 7 })].into(),
            ..RetentionConfig::default()
        });
        assert_eq!(plan_of(&job, &["a", "short"], 10), "delete short");
        assert_eq!(plan_of(&job, &[], 1000), "keep");
        assert_eq!(plan_of(&job, &["short"], 10), "drop<7");
        let none = RetentionJob::new(RetentionConfig {
            raw_days: 0,
            ..RetentionConfig::default()
        });
        assert_eq!(none.earliest_cutoff(today), None);
    }

    #[test]
    fn partition_days() {
        assert_eq!(
            partition_day("token_usage", "token_usage_p20260105"),
            NaiveDate::from_ymd_opt(2026, 1, 5)
        );
        assert_eq!(partition_day("token_usage", "token_usage_default"), None);
        assert_eq!(partition_day("token_usage", "token_usage_p2026010"), None);
        assert_eq!(partition_day("token_usage", "token_usage_p20261399"), None);
        assert_eq!(
            partition_day("activity_events", "token_usage_p20260105"),
            None
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
