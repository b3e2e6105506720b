//! Daily partitions of `activity_events` and `token_usage`
//! (`activity_events_pYYYYMMDD`, `token_usage_pYYYYMMDD`, UTC days), created together.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Mutex;

use chrono::{Datelike, NaiveDate};
use tokio_postgres::Client;

use super::{PgError, PARTITION_LOCK_KEY};

/// The name of the partition holding the UTC day `day`.
pub fn partition_name(day: NaiveDate) -> String {
    format!(
        "activity_events_p{:04}{:02}{:02}",
        day.year(),
        day.month(),
        day.day()
    )
}

/// The name of the `token_usage` partition holding the UTC day `day`.
pub fn token_partition_name(day: NaiveDate) -> String {
    format!(
        "token_usage_p{:04}{:02}{:02}",
        day.year(),
        day.month(),
        day.day()
    )
}

/// Creates the daily partitions (of both tables) for `from ..= through` (UTC days) that do not
/// exist yet, in one short transaction under the partition advisory lock.
pub async fn create_partitions(
    client: &Client,
    from: NaiveDate,
    through: NaiveDate,
) -> Result<(), PgError> {
    let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= through).collect();
    create_days(client, &days).await
}

/// Creates the partitions for `days` (which need not be sorted or distinct).
///
/// `CREATE TABLE … PARTITION OF` takes an ACCESS EXCLUSIVE lock on the parent:
/// a `lock_timeout` keeps a long-running reader from stalling every writer
/// queued behind this statement; the caller retries later.
pub(crate) async fn create_days(client: &Client, days: &[NaiveDate]) -> Result<(), PgError> {
    if days.is_empty() {
        return Ok(());
    }
    let mut sql = format!(
        "BEGIN; SET LOCAL client_min_messages = warning; SET LOCAL lock_timeout = '2s'; \
         SELECT pg_advisory_xact_lock({PARTITION_LOCK_KEY});"
    );
    for day in days {
        let Some(next) = day.succ_opt() else {
            continue;
        };
        let start = day_start_epoch(*day);
        let end = day_start_epoch(next);
        // Writing to a String cannot fail.
        let _ = write!(
            sql,
            " CREATE TABLE IF NOT EXISTS \"{}\" PARTITION OF activity_events \
             FOR VALUES FROM (to_timestamp({start})) TO (to_timestamp({end})); \
             CREATE TABLE IF NOT EXISTS \"{}\" PARTITION OF token_usage \
             FOR VALUES FROM (to_timestamp({start})) TO (to_timestamp({end}));",
            partition_name(*day),
            token_partition_name(*day)
        );
    }
    sql.push_str(" COMMIT;");
    if let Err(error) = client.batch_execute(&sql).await {
        // A failed multi-statement string leaves the transaction open (aborted).
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(error.into());
    }
    tracing::debug!(
        days = days.len(),
        "ensured activity_events and token_usage partitions"
    );
    Ok(())
}

fn day_start_epoch(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp())
        .unwrap_or_default()
}

/// The days known to have a partition, shared by an exporter's writers.
#[derive(Debug, Default)]
pub(crate) struct PartitionCache {
    known: Mutex<HashSet<NaiveDate>>,
}

impl PartitionCache {
    /// Makes sure every day in `days` has a partition, creating missing ones.
    pub(crate) async fn ensure(&self, client: &Client, days: &[NaiveDate]) -> Result<(), PgError> {
        let missing: Vec<NaiveDate> = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            days.iter()
                .filter(|d| !known.contains(d))
                .copied()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        create_days(client, &missing).await?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.extend(missing);
        Ok(())
    }

    /// Records `days` as having a partition.
    pub(crate) fn remember(&self, days: &[NaiveDate]) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.extend(days.iter().copied());
    }

    /// Forgets everything (a partition may have been dropped by retention).
    pub(crate) fn forget_all(&self) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bounds() {
        let day = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        assert_eq!(partition_name(day), "activity_events_p20260105");
        assert_eq!(token_partition_name(day), "token_usage_p20260105");
        assert_eq!(day_start_epoch(day), 1_767_571_200);
        let old = NaiveDate::from_ymd_opt(987, 12, 31).unwrap();
        assert_eq!(partition_name(old), "activity_events_p09871231");
    }
}
