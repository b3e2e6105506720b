//! The unfolded tails grouped in memory, for live answers over every tenant
//! (issue 18).
//!
//! A live answer adds the raw rows above a rollup's watermark (the tail) to the
//! rollup. For an answer over every tenant (a platform caller naming no
//! tenant) that tail is every tenant's newest rows: reading and grouping it at
//! each request cost 100–1000 ms with a 100,000-row tail (docs/performance.md).
//! This module keeps, per raw table, the tail grouped by the keys the answers
//! need, and answers read it instead of the raw rows.
//!
//! **Exactness.** A cached tail is valid for a version `(W, G, H)`: the rollup
//! watermark `W`, the change generation `G` of its raw table (migration 0027:
//! bumped in the same transaction as any update or delete of a raw row, any
//! write to the rollups the activity cache probes, and retention's partition
//! drops) and the newest `seq` `H` it holds; it holds exactly the raw rows with
//! `W < seq <= H`, grouped. Each answer reads `(W', G', H')` in its own
//! `REPEATABLE READ` snapshot (the snapshot every statement of the answer
//! reads), then:
//! * `W' = W`, `G' = G`, `H' >= H`: the rows `H < seq <= H'` are read in that
//!   snapshot and added (`seq` is commit-ordered: once the row with `seq = H`
//!   was visible, no row with a smaller `seq` can appear later), then the
//!   cache answers for `H'`;
//! * `H' < H` with the same `W` and `G` (this snapshot is older than the
//!   cache): `None`, the caller answers with its SQL over the raw tail;
//! * otherwise the cache is rebuilt from the rows `W' < seq <= H'` in this
//!   snapshot (one read of the tail, what every request cost before).
//!
//! Tails longer than [`MAX_TAIL_SEQS`] (by `seq` span) are not cached: the
//! caller's SQL answers.
//!
//! The cache is only ever built and read for answers over every tenant: the
//! snapshot must see every tenant's rows (`tally.tenant = '*'`).
//!
//! Each tail also keeps its rows grouped by every key of its per-user rollup
//! (`keyed`): the aggregates grouped by user of a platform caller (with or
//! without a tenant filter) take each period's first groups of the tail from
//! there instead of reading the raw rows.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDate;
use deadpool_postgres::GenericClient;
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;

use crate::error::ApiError;

mod activity;
mod keyed;
mod memo;
mod tokens;

pub(crate) use self::activity::*;
pub(crate) use self::tokens::*;
use keyed::Keyed;
pub(crate) use keyed::{Page, Pages, PagesQuery};
pub(crate) use memo::{MemoKey, RollupMemo};

/// The longest tail (`seq` span above the watermark) kept in memory; above
/// it, answers read the raw tail with SQL as without a cache.
pub(crate) const MAX_TAIL_SEQS: i64 = 1_000_000;

/// The in-memory tails of both raw tables (shared by every request).
#[derive(Default)]
pub(crate) struct TailCache {
    activity: Mutex<Option<ActivityTail>>,
    tokens: Mutex<Option<TokenTail>>,
    /// Whether the database sorts the rollups' text keys by code point (see
    /// [`TailCache::byte_order`]).
    byte_order: tokio::sync::OnceCell<bool>,
    /// The rollups' part of `/stats`' speed histograms over every tenant, per
    /// window and token rollup version (`crate::stats`).
    pub(crate) token_histograms: RollupMemo<Vec<crate::stats::HistogramRow>>,
}

/// Which cached tail a page of an aggregate grouped by user reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grouped {
    /// `activity_events`, keyed like `activity_daily`.
    Activity,
    /// `token_usage`, keyed like `token_usage_daily`.
    Tokens,
}

/// True when the database's default collation, which the rollups' and raw
/// tables' text columns use, orders text by code point, i.e. like Rust's
/// `str` (UTF-8 bytes): `C`/`POSIX` or libc's `C.UTF-8`. Any other collation
/// (a language's, ICU) answers false, and the pages grouped by user read the
/// raw tail with SQL.
const BYTE_ORDER_SQL: &str = "SELECT coalesce((SELECT d.datlocprovider = 'c' \
        AND lower(replace(d.datcollate, '-', '')) IN ('c', 'posix', 'c.utf8') \
        FROM pg_database AS d WHERE d.datname = current_database()), false) \
    AND NOT EXISTS (SELECT 1 FROM pg_attribute AS a \
        WHERE a.attrelid IN ('activity_events'::regclass, 'activity_daily'::regclass, \
            'token_usage'::regclass, 'token_usage_daily'::regclass) \
        AND a.attnum > 0 AND a.attcollation NOT IN (0, 100, 950, 951))";

/// What a cached tail holds: the raw rows with `watermark < seq <= high`, as
/// of change generation `generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    watermark: i64,
    generation: i64,
    high: i64,
}

/// What to do with a cached tail for a snapshot's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Add the rows `from < seq <= to` (nothing when equal).
    Extend { from: i64 },
    /// Build it again from the rows above the watermark.
    Rebuild,
    /// The snapshot is older than the cache: do not use it.
    Skip,
    /// The tail is too long to keep.
    TooLong,
}

fn step(cached: Option<Version>, now: Version) -> Step {
    if now.high.saturating_sub(now.watermark) > MAX_TAIL_SEQS {
        return Step::TooLong;
    }
    match cached {
        Some(c) if c.watermark == now.watermark && c.generation == now.generation => {
            if c.high <= now.high {
                Step::Extend { from: c.high }
            } else {
                Step::Skip
            }
        }
        _ => Step::Rebuild,
    }
}

/// The watermark, the generation and the newest visible `seq`: the largest
/// `max_seq` of `tally_tail_days` (migration 0020; written in each inserting
/// transaction, so a snapshot that sees a row sees an entry at least its
/// `seq`, and commit order makes every smaller `seq` visible too), or the
/// watermark when larger. A few rows, where `tally_newest_seq` plans a
/// `max(seq)` over every partition (15–130 ms measured under load).
const VERSION_SQL: &str = "SELECT w.last_seq, \
        coalesce((SELECT sum(n) FROM tally_tail_generations WHERE raw_table = $1), 0)::int8, \
        greatest(w.last_seq, coalesce((SELECT max(max_seq) FROM tally_tail_days \
            WHERE raw_table = $1), 0))::int8 \
    FROM (SELECT coalesce((SELECT last_seq FROM rollup_watermarks WHERE name = $2), 0)::int8 \
          AS last_seq) AS w";

async fn version(
    client: &impl GenericClient,
    table: &str,
    watermark: &str,
) -> Result<Version, ApiError> {
    let statement = client
        .prepare_cached(VERSION_SQL)
        .await
        .map_err(ApiError::from_db)?;
    let row = client
        .query_one(&statement, &[&table, &watermark])
        .await
        .map_err(ApiError::from_db)?;
    Ok(Version {
        watermark: row.try_get(0).map_err(ApiError::from_db)?,
        generation: row.try_get(1).map_err(ApiError::from_db)?,
        high: row.try_get(2).map_err(ApiError::from_db)?,
    })
}

/// `seq > from AND seq <= to AND ts >= <the oldest day holding a row above
/// from>`, with literals, so that the statement is planned for them and reads
/// only the partitions that can hold such rows (see `crate::live`).
async fn seq_range(
    client: &impl GenericClient,
    table: &str,
    from: i64,
    to: i64,
) -> Result<String, ApiError> {
    let statement = client
        .prepare_cached(
            "SELECT min(day) FROM tally_tail_days WHERE raw_table = $1 AND max_seq > $2",
        )
        .await
        .map_err(ApiError::from_db)?;
    let row = client
        .query_one(&statement, &[&table, &from])
        .await
        .map_err(ApiError::from_db)?;
    let floor: Option<NaiveDate> = row.try_get(0).map_err(ApiError::from_db)?;
    let floor = match floor {
        Some(day) => format!("'{day} 00:00:00+00'::timestamptz"),
        None => "'infinity'::timestamptz".to_owned(),
    };
    Ok(format!("seq > {from} AND seq <= {to} AND ts >= {floor}"))
}

/// A raw table's tail as the cache keeps it: built empty, extended by `seq`
/// ranges, valid for its [`Version`].
trait Tail: Sized {
    /// The raw table.
    const TABLE: &'static str;
    /// Its `rollup_watermarks.name`.
    const WATERMARK: &'static str;
    /// A tail holding nothing, for `version` (whose `high` is its watermark).
    fn empty(version: Version) -> Self;
    /// What it holds.
    fn version(&self) -> Version;
    /// Adds the rows `from < seq <= to` of `client`'s snapshot.
    async fn extend(
        &mut self,
        client: &impl GenericClient,
        from: i64,
        to: i64,
    ) -> Result<(), ApiError>;
}

/// Brings the tail in `slot` to `client`'s snapshot (extended, rebuilt or
/// dropped, see [`step`]) and answers from it; `None` when the caller must
/// read the raw tail with SQL.
async fn with_tail<C: Tail, T>(
    slot: &Mutex<Option<C>>,
    client: &impl GenericClient,
    answer: impl FnOnce(&C) -> T,
) -> Result<Option<T>, ApiError> {
    let now = version(client, C::TABLE, C::WATERMARK).await?;
    let mut cache = slot.lock().await;
    match step(cache.as_ref().map(Tail::version), now) {
        Step::Skip => return Ok(None),
        Step::TooLong => {
            *cache = None;
            return Ok(None);
        }
        Step::Extend { from: high } => {
            if let Some(tail) = cache.as_mut() {
                if let Err(error) = tail.extend(client, high, now.high).await {
                    // Half extended: not valid for any version.
                    *cache = None;
                    return Err(error);
                }
            }
        }
        Step::Rebuild => {
            *cache = None;
            let mut tail = C::empty(Version {
                high: now.watermark,
                ..now
            });
            tail.extend(client, now.watermark, now.high).await?;
            *cache = Some(tail);
        }
    }
    Ok(cache.as_ref().map(answer))
}

// ---------------------------------------------------------------- activity

#[cfg(test)]
mod tests;
