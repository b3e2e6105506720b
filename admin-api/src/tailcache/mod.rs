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

mod keyed;

use keyed::Keyed;
pub(crate) use keyed::{Page, Pages, PagesQuery};

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

/// The activity tail: events per (day, action, outcome); the (day, user) pairs and
/// whether `activity_daily` already holds each (it is counted in
/// `activity_users_daily_all` then); each user's `last_seen` in
/// `activity_user_last_seen_all` and tail days.
struct ActivityTail {
    version: Version,
    events: HashMap<(NaiveDate, String, String), i64>,
    pairs: HashMap<(NaiveDate, String), bool>,
    /// Per day, the pairs `activity_daily` does not hold yet.
    new_pairs: BTreeMap<NaiveDate, i64>,
    users: HashMap<String, TailUser>,
    /// The events per (day, tenant, user, action, outcome), as
    /// `activity_daily` keeps them.
    keyed: Keyed,
}

struct TailUser {
    last_seen: Option<NaiveDate>,
    days: Vec<NaiveDate>,
}

/// The activity tail of a window, as `/stats` uses it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ActivityView {
    /// The newest `seq` it holds (the answer's `as_of_seq`).
    pub high: i64,
    /// (day, action, events) of the window's days.
    pub events: Vec<(NaiveDate, String, i64)>,
    /// (day, users): the window's (day, user) pairs not in `activity_daily`.
    pub new_pairs: Vec<(NaiveDate, i64)>,
    /// The tail users with a row in the window whose `last_seen` in
    /// `activity_user_last_seen_all` is before `from` (or who have none).
    pub unseen_users: i64,
}

impl ActivityView {
    /// The view as statement parameters: the events' days, actions and
    /// counts, the new pairs' days and counts, `unseen_users`.
    pub(crate) fn parameters(&self) -> Vec<Box<dyn ToSql + Sync + Send>> {
        let days: Vec<NaiveDate> = self.events.iter().map(|e| e.0).collect();
        let actions: Vec<String> = self.events.iter().map(|e| e.1.clone()).collect();
        let events: Vec<i64> = self.events.iter().map(|e| e.2).collect();
        let pair_days: Vec<NaiveDate> = self.new_pairs.iter().map(|p| p.0).collect();
        let pair_users: Vec<i64> = self.new_pairs.iter().map(|p| p.1).collect();
        vec![
            Box::new(days),
            Box::new(actions),
            Box::new(events),
            Box::new(pair_days),
            Box::new(pair_users),
            Box::new(self.unseen_users),
        ]
    }
}

impl Tail for ActivityTail {
    const TABLE: &'static str = "activity_events";
    const WATERMARK: &'static str = "activity_daily";

    fn empty(version: Version) -> ActivityTail {
        ActivityTail {
            version,
            events: HashMap::new(),
            pairs: HashMap::new(),
            new_pairs: BTreeMap::new(),
            users: HashMap::new(),
            keyed: Keyed::default(),
        }
    }

    fn version(&self) -> Version {
        self.version
    }

    /// Adds the rows `from < seq <= to` of the snapshot, probing the rollups
    /// for the (day, user) pairs and users it has not seen.
    async fn extend(
        &mut self,
        client: &impl GenericClient,
        from: i64,
        to: i64,
    ) -> Result<(), ApiError> {
        if to <= from {
            return Ok(());
        }
        let range = seq_range(client, "activity_events", from, to).await?;
        let sql = format!(
            "SELECT (ts AT TIME ZONE 'UTC')::date AS day, coalesce(user_id, '') AS user_id, \
                 action, outcome, count(*)::int8 AS events, tenant_id \
             FROM activity_events WHERE {range} GROUP BY 1, 2, 3, 4, 6"
        );
        let rows = client
            .query(sql.as_str(), &[])
            .await
            .map_err(ApiError::from_db)?;
        let mut fresh_pairs: HashSet<(NaiveDate, String)> = HashSet::new();
        let mut fresh_users: Vec<String> = Vec::new();
        for row in &rows {
            let day: NaiveDate = row.try_get(0).map_err(ApiError::from_db)?;
            let user: String = row.try_get(1).map_err(ApiError::from_db)?;
            let action: String = row.try_get(2).map_err(ApiError::from_db)?;
            let outcome: String = row.try_get(3).map_err(ApiError::from_db)?;
            let events: i64 = row.try_get(4).map_err(ApiError::from_db)?;
            let tenant: String = row.try_get(5).map_err(ApiError::from_db)?;
            self.keyed.add(
                day,
                [tenant, user.clone(), action.clone(), outcome.clone()],
                &[events],
                0,
            );
            *self.events.entry((day, action, outcome)).or_insert(0) += events;
            if user.is_empty() {
                continue;
            }
            let pair = (day, user);
            if !self.pairs.contains_key(&pair) {
                fresh_pairs.insert(pair.clone());
            }
            match self.users.get_mut(&pair.1) {
                Some(known) => {
                    if !known.days.contains(&day) {
                        known.days.push(day);
                    }
                }
                None => {
                    fresh_users.push(pair.1.clone());
                    self.users.insert(
                        pair.1,
                        TailUser {
                            last_seen: None,
                            days: vec![day],
                        },
                    );
                }
            }
        }
        if !fresh_pairs.is_empty() {
            let days: Vec<NaiveDate> = fresh_pairs.iter().map(|p| p.0).collect();
            let users: Vec<&str> = fresh_pairs.iter().map(|p| p.1.as_str()).collect();
            let rows = client
                .query(
                    "SELECT n.day, n.user_id, EXISTS (SELECT 1 FROM activity_daily AS d \
                         WHERE d.day = n.day AND d.user_id = n.user_id) \
                     FROM unnest($1::date[], $2::text[]) AS n (day, user_id)",
                    &[&days, &users],
                )
                .await
                .map_err(ApiError::from_db)?;
            for row in &rows {
                let day: NaiveDate = row.try_get(0).map_err(ApiError::from_db)?;
                let user: String = row.try_get(1).map_err(ApiError::from_db)?;
                let known: bool = row.try_get(2).map_err(ApiError::from_db)?;
                if !known {
                    *self.new_pairs.entry(day).or_insert(0) += 1;
                }
                self.pairs.insert((day, user), known);
            }
        }
        if !fresh_users.is_empty() {
            let rows = client
                .query(
                    "SELECT u.user_id, (SELECT l.last_seen FROM activity_user_last_seen_all AS l \
                         WHERE l.user_id = u.user_id) \
                     FROM unnest($1::text[]) AS u (user_id)",
                    &[&fresh_users],
                )
                .await
                .map_err(ApiError::from_db)?;
            for row in &rows {
                let user: String = row.try_get(0).map_err(ApiError::from_db)?;
                let last_seen: Option<NaiveDate> = row.try_get(1).map_err(ApiError::from_db)?;
                if let Some(known) = self.users.get_mut(&user) {
                    known.last_seen = last_seen;
                }
            }
        }
        self.version.high = to;
        Ok(())
    }
}

impl ActivityTail {
    fn view(&self, from: NaiveDate, to: NaiveDate) -> ActivityView {
        let within = |day: &NaiveDate| *day >= from && *day < to;
        let mut per_action: BTreeMap<(NaiveDate, &str), i64> = BTreeMap::new();
        for ((day, action, _), n) in &self.events {
            if within(day) {
                *per_action.entry((*day, action.as_str())).or_insert(0) += n;
            }
        }
        let events: Vec<(NaiveDate, String, i64)> = per_action
            .into_iter()
            .map(|((day, action), n)| (day, action.to_owned(), n))
            .collect();
        let new_pairs = self
            .new_pairs
            .range(from..to)
            .filter(|(_, n)| **n > 0)
            .map(|(day, n)| (*day, *n))
            .collect();
        let unseen_users = self
            .users
            .values()
            .filter(|u| u.days.iter().any(within) && u.last_seen.is_none_or(|seen| seen < from))
            .count() as i64;
        ActivityView {
            high: self.version.high,
            events,
            new_pairs,
            unseen_users,
        }
    }
}

impl TailCache {
    /// The activity tail of the window `[from, to)` in `client`'s snapshot
    /// (which must see every tenant), or `None` when the caller must read the
    /// raw tail with SQL (see the module's documentation).
    pub(crate) async fn activity(
        &self,
        client: &impl GenericClient,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Option<ActivityView>, ApiError> {
        with_tail(&self.activity, client, |tail| tail.view(from, to)).await
    }

    /// The activity tail grouped like `activity_daily_all` (day, action,
    /// outcome, events) for the days in `from..to` (either end open), as
    /// statement parameters, with the newest `seq` they include; `None` as
    /// for [`TailCache::activity`].
    pub(crate) async fn activity_all(
        &self,
        client: &impl GenericClient,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Result<Option<(i64, Vec<Box<dyn ToSql + Sync + Send>>)>, ApiError> {
        with_tail(&self.activity, client, |tail| {
            let (mut days, mut actions, mut outcomes, mut events) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((day, action, outcome), n) in &tail.events {
                if from.is_some_and(|f| *day < f) || to.is_some_and(|t| *day >= t) {
                    continue;
                }
                days.push(*day);
                actions.push(action.clone());
                outcomes.push(outcome.clone());
                events.push(*n);
            }
            let params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
                Box::new(days),
                Box::new(actions),
                Box::new(outcomes),
                Box::new(events),
            ];
            (tail.version.high, params)
        })
        .await
    }
}

// ------------------------------------------------------------------ tokens

/// Scale of `cost_usd` (`numeric(20, 10)`): costs are kept as integers of
/// 1e-10 USD, so sums are exact like PostgreSQL's.
const COST_SCALE: u32 = 10;

/// Parses a `numeric` rendered as text (`-12.5`, `3`, `0.0000000001`) into
/// units of 1e-10; `None` with more than 10 decimals or out of range.
fn parse_cost(text: &str) -> Option<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (digits, ""),
    };
    if whole.is_empty()
        || fraction.len() > COST_SCALE as usize
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i128 = whole.parse().ok()?;
    let mut units = whole.checked_mul(10i128.pow(COST_SCALE))?;
    if !fraction.is_empty() {
        let value: i128 = fraction.parse().ok()?;
        let padding = COST_SCALE - fraction.len() as u32;
        units = units.checked_add(value.checked_mul(10i128.pow(padding))?)?;
    }
    Some(if negative { -units } else { units })
}

/// Units of 1e-10 as a `numeric` literal's text.
fn format_cost(units: i128) -> String {
    let scale = 10i128.pow(COST_SCALE);
    let sign = if units < 0 { "-" } else { "" };
    let magnitude = units.unsigned_abs();
    let scale = scale.unsigned_abs();
    format!("{sign}{}.{:010}", magnitude / scale, magnitude % scale)
}

/// The counted measures of the token rows, in `aggregates::TOKENS` order
/// (requests … total_tokens).
const TOKEN_COUNTS: usize = 9;

#[derive(Debug, Clone, Default)]
struct TokenSums {
    counts: [i64; TOKEN_COUNTS],
    cost: i128,
    rate_output_tokens: i64,
    rate_duration_ms: f64,
}

type SumKey = (NaiveDate, String, String, Option<String>, i16);
type HistogramKey = (NaiveDate, String, i16);

/// The token tail: the sums per (day, provider, model, outcome, duration
/// bucket), and the calls per (day, model, time-to-first-token bucket) and
/// per (day, model, output speed bucket).
struct TokenTail {
    version: Version,
    sums: HashMap<SumKey, TokenSums>,
    ttft: HashMap<HistogramKey, i64>,
    speed: HashMap<HistogramKey, i64>,
    /// The sums per (day, tenant, user, provider, model), as
    /// `token_usage_daily` keeps them.
    keyed: Keyed,
}

/// `GROUPING(bucket, ttft_bucket, speed_bucket)` of the tail's rows per
/// (day, tenant, user, provider, model) (the cache's own fourth set).
const GS_KEYED: i32 = 7;

/// `GROUPING(bucket, ttft_bucket, speed_bucket)` of the three grouping sets
/// (the values `/stats` gives its tail's `gs`).
pub(crate) const GS_SUMS: i32 = 3;
pub(crate) const GS_TTFT: i32 = 5;
pub(crate) const GS_SPEED: i32 = 6;
/// The in-memory tail's rows of durations per (model, outcome, bucket), for
/// the latency part of `/stats` (the raw tail's `GS_SUMS` rows serve both).
pub(crate) const GS_LATENCY: i32 = 4;

/// The calls that count for output speed (as the rollup folds them).
const TIMED: &str = "duration_ms > 0 AND output_tokens IS NOT NULL";

impl Tail for TokenTail {
    const TABLE: &'static str = "token_usage";
    const WATERMARK: &'static str = "token_usage_daily";

    fn empty(version: Version) -> TokenTail {
        TokenTail {
            version,
            sums: HashMap::new(),
            ttft: HashMap::new(),
            speed: HashMap::new(),
            keyed: Keyed::default(),
        }
    }

    fn version(&self) -> Version {
        self.version
    }

    async fn extend(
        &mut self,
        client: &impl GenericClient,
        from: i64,
        to: i64,
    ) -> Result<(), ApiError> {
        if to <= from {
            return Ok(());
        }
        let range = seq_range(client, "token_usage", from, to).await?;
        let bucket = "tally_duration_bucket(duration_ms)";
        let ttft = "tally_duration_bucket(time_to_first_token_ms)";
        let speed = "tally_speed_bucket(output_tokens, duration_ms)";
        let sql = format!(
            "SELECT (ts AT TIME ZONE 'UTC')::date AS day, coalesce(provider, '') AS provider, \
                 coalesce(model, '') AS model, outcome, {bucket} AS bucket, {ttft} AS ttft_bucket, \
                 {speed} AS speed_bucket, \
                 count(*)::int8, \
                 sum(CASE WHEN usage_known THEN 0 ELSE 1 END)::int8, \
                 sum(CASE WHEN usage_known AND cost_usd IS NULL THEN 1 ELSE 0 END)::int8, \
                 sum(coalesce(input_tokens, 0))::int8, sum(coalesce(output_tokens, 0))::int8, \
                 sum(coalesce(cache_read_tokens, 0))::int8, \
                 sum(coalesce(cache_write_tokens, 0))::int8, \
                 sum(coalesce(reasoning_tokens, 0))::int8, sum(coalesce(total_tokens, 0))::int8, \
                 sum(coalesce(cost_usd, 0))::text, \
                 sum(CASE WHEN {TIMED} THEN output_tokens ELSE 0 END)::int8, \
                 sum(CASE WHEN {TIMED} THEN duration_ms ELSE 0 END)::float8, \
                 GROUPING({bucket}, {ttft}, {speed})::int4 AS gs, \
                 tenant_id, coalesce(user_id, '') AS user_id \
             FROM token_usage WHERE {range} \
             GROUP BY GROUPING SETS ((1, 2, 3, 4, 5), (1, 3, 6), (1, 3, 7), (1, 2, 3, 21, 22))"
        );
        let rows = client
            .query(sql.as_str(), &[])
            .await
            .map_err(ApiError::from_db)?;
        let bad_cost = || ApiError::Internal("a token tail cost is not a numeric(20, 10)".into());
        for row in &rows {
            let day: NaiveDate = row.try_get(0).map_err(ApiError::from_db)?;
            let model: String = row.try_get(2).map_err(ApiError::from_db)?;
            let requests: i64 = row.try_get(7).map_err(ApiError::from_db)?;
            let gs: i32 = row.try_get(19).map_err(ApiError::from_db)?;
            match gs {
                GS_KEYED => {
                    let provider: String = row.try_get(1).map_err(ApiError::from_db)?;
                    let tenant: String = row.try_get(20).map_err(ApiError::from_db)?;
                    let user: String = row.try_get(21).map_err(ApiError::from_db)?;
                    let mut counts = [0i64; TOKEN_COUNTS];
                    for (i, count) in counts.iter_mut().enumerate() {
                        *count = row.try_get(7 + i).map_err(ApiError::from_db)?;
                    }
                    let cost: String = row.try_get(16).map_err(ApiError::from_db)?;
                    let cost = parse_cost(&cost).ok_or_else(bad_cost)?;
                    self.keyed
                        .add(day, [tenant, user, provider, model], &counts, cost);
                }
                GS_TTFT => {
                    let b: i16 = row.try_get(5).map_err(ApiError::from_db)?;
                    *self.ttft.entry((day, model, b)).or_insert(0) += requests;
                }
                GS_SPEED => {
                    let b: i16 = row.try_get(6).map_err(ApiError::from_db)?;
                    *self.speed.entry((day, model, b)).or_insert(0) += requests;
                }
                _ => {
                    let provider: String = row.try_get(1).map_err(ApiError::from_db)?;
                    let outcome: Option<String> = row.try_get(3).map_err(ApiError::from_db)?;
                    let b: i16 = row.try_get(4).map_err(ApiError::from_db)?;
                    let sums = self
                        .sums
                        .entry((day, provider, model, outcome, b))
                        .or_default();
                    for (i, count) in sums.counts.iter_mut().enumerate() {
                        let value: i64 = row.try_get(7 + i).map_err(ApiError::from_db)?;
                        *count += value;
                    }
                    let cost: String = row.try_get(16).map_err(ApiError::from_db)?;
                    sums.cost += parse_cost(&cost).ok_or_else(bad_cost)?;
                    let rate_output: i64 = row.try_get(17).map_err(ApiError::from_db)?;
                    let rate_duration: f64 = row.try_get(18).map_err(ApiError::from_db)?;
                    sums.rate_output_tokens += rate_output;
                    sums.rate_duration_ms += rate_duration;
                }
            }
        }
        self.version.high = to;
        Ok(())
    }
}

impl TokenTail {
    /// The window's tail in as few rows as `/stats` needs: the sums per
    /// (day, provider, model) ([`GS_SUMS`]), the durations per (model,
    /// outcome, duration bucket) ([`GS_LATENCY`]) and the two histograms per
    /// (model, bucket) ([`GS_TTFT`], [`GS_SPEED`]); the last three without a
    /// day (the window is applied here).
    fn view(&self, from: NaiveDate, to: NaiveDate) -> TokenView {
        let within = |day: &NaiveDate| *day >= from && *day < to;
        let mut view = TokenView {
            high: self.version.high,
            ..TokenView::default()
        };
        let mut sums: BTreeMap<(NaiveDate, &str, &str), TokenSums> = BTreeMap::new();
        let mut latency: BTreeMap<(&str, Option<&str>, i16), TokenSums> = BTreeMap::new();
        for ((day, provider, model, outcome, bucket), group) in &self.sums {
            if !within(day) {
                continue;
            }
            let total = sums
                .entry((*day, provider.as_str(), model.as_str()))
                .or_default();
            for (t, n) in total.counts.iter_mut().zip(group.counts) {
                *t += n;
            }
            total.cost += group.cost;
            let timed = latency
                .entry((model.as_str(), outcome.as_deref(), *bucket))
                .or_default();
            timed.counts[0] += group.counts[0];
            timed.rate_output_tokens += group.rate_output_tokens;
            timed.rate_duration_ms += group.rate_duration_ms;
        }
        for ((day, provider, model), total) in &sums {
            view.push(
                GS_SUMS,
                Some(*day),
                Some((*provider).to_owned()),
                (*model).to_owned(),
                None,
                (None, None, None),
                total,
            );
        }
        for ((model, outcome, bucket), timed) in &latency {
            view.push(
                GS_LATENCY,
                None,
                None,
                (*model).to_owned(),
                outcome.map(str::to_owned),
                (Some(*bucket), None, None),
                timed,
            );
        }
        for (set, histogram) in [(GS_TTFT, &self.ttft), (GS_SPEED, &self.speed)] {
            let mut calls: BTreeMap<(&str, i16), i64> = BTreeMap::new();
            for ((day, model, bucket), requests) in histogram {
                if within(day) {
                    *calls.entry((model.as_str(), *bucket)).or_insert(0) += requests;
                }
            }
            for ((model, bucket), requests) in calls {
                let buckets = match set {
                    GS_TTFT => (None, Some(bucket), None),
                    _ => (None, None, Some(bucket)),
                };
                let sums = TokenSums {
                    counts: [requests, 0, 0, 0, 0, 0, 0, 0, 0],
                    ..TokenSums::default()
                };
                view.push(set, None, None, model.to_owned(), None, buckets, &sums);
            }
        }
        view
    }
}

/// The token tail of a window, as columns (one element per group), in the
/// shape of `/stats`' grouped tail (see `stats::tokens_sql`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TokenView {
    /// The newest `seq` it holds (the answer's `as_of_seq`).
    pub high: i64,
    day: Vec<Option<NaiveDate>>,
    provider: Vec<Option<String>>,
    model: Vec<String>,
    outcome: Vec<Option<String>>,
    bucket: Vec<Option<i16>>,
    ttft_bucket: Vec<Option<i16>>,
    speed_bucket: Vec<Option<i16>>,
    counts: [Vec<i64>; TOKEN_COUNTS],
    cost: Vec<String>,
    rate_output_tokens: Vec<i64>,
    rate_duration_ms: Vec<f64>,
    gs: Vec<i32>,
}

impl TokenView {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        gs: i32,
        day: Option<NaiveDate>,
        provider: Option<String>,
        model: String,
        outcome: Option<String>,
        (bucket, ttft, speed): (Option<i16>, Option<i16>, Option<i16>),
        sums: &TokenSums,
    ) {
        self.gs.push(gs);
        self.day.push(day);
        self.provider.push(provider);
        self.model.push(model);
        self.outcome.push(outcome);
        self.bucket.push(bucket);
        self.ttft_bucket.push(ttft);
        self.speed_bucket.push(speed);
        for (column, value) in self.counts.iter_mut().zip(sums.counts) {
            column.push(value);
        }
        self.cost.push(format_cost(sums.cost));
        self.rate_output_tokens.push(sums.rate_output_tokens);
        self.rate_duration_ms.push(sums.rate_duration_ms);
    }

    /// The number of statement parameters [`TokenView::parameters`] gives.
    #[cfg(test)]
    pub(crate) const PARAMETERS: usize = 11 + TOKEN_COUNTS;

    /// The columns as statement parameters: day, provider, model, outcome,
    /// bucket, ttft_bucket, speed_bucket, the nine counts, cost (text),
    /// rate_output_tokens, rate_duration_ms, gs.
    pub(crate) fn parameters(&self) -> Vec<Box<dyn ToSql + Sync + Send>> {
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
            Box::new(self.day.clone()),
            Box::new(self.provider.clone()),
            Box::new(self.model.clone()),
            Box::new(self.outcome.clone()),
            Box::new(self.bucket.clone()),
            Box::new(self.ttft_bucket.clone()),
            Box::new(self.speed_bucket.clone()),
        ];
        for column in &self.counts {
            params.push(Box::new(column.clone()));
        }
        params.push(Box::new(self.cost.clone()));
        params.push(Box::new(self.rate_output_tokens.clone()));
        params.push(Box::new(self.rate_duration_ms.clone()));
        params.push(Box::new(self.gs.clone()));
        params
    }
}

impl TailCache {
    /// The token tail of the window `[from, to)` in `client`'s snapshot (which
    /// must see every tenant), or `None` when the caller must read the raw
    /// tail with SQL (see the module's documentation).
    pub(crate) async fn tokens(
        &self,
        client: &impl GenericClient,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Option<TokenView>, ApiError> {
        with_tail(&self.tokens, client, |tail| tail.view(from, to)).await
    }

    /// Whether Rust's `str` order is the database's order of the rollups'
    /// text keys (see [`BYTE_ORDER_SQL`]); asked once.
    pub(crate) async fn byte_order(&self, client: &impl GenericClient) -> Result<bool, ApiError> {
        self.byte_order
            .get_or_try_init(|| async {
                let row = client
                    .query_one(BYTE_ORDER_SQL, &[])
                    .await
                    .map_err(ApiError::from_db)?;
                let byte_order: bool = row.try_get(0).map_err(ApiError::from_db)?;
                if !byte_order {
                    tracing::info!(
                        "the database does not sort text by code point: aggregates grouped by \
                         user over every tenant read the raw tail"
                    );
                }
                Ok::<bool, ApiError>(byte_order)
            })
            .await
            .copied()
    }

    /// The first groups per period of the tail of `table` in `client`'s
    /// snapshot (which must see every tenant; see [`keyed`]), with the newest
    /// `seq` they include; `None` as for [`TailCache::tokens`].
    pub(crate) async fn pages(
        &self,
        client: &impl GenericClient,
        table: Grouped,
        query: &PagesQuery<'_>,
    ) -> Result<Option<(i64, Pages)>, ApiError> {
        match table {
            Grouped::Activity => {
                with_tail(&self.activity, client, |tail| {
                    (tail.version.high, tail.keyed.pages(query))
                })
                .await
            }
            Grouped::Tokens => {
                with_tail(&self.tokens, client, |tail| {
                    (tail.version.high, tail.keyed.pages(query))
                })
                .await
            }
        }
    }

    /// The token tail grouped like `token_usage_daily_all` (day, provider,
    /// model, the nine counts, cost as text) for the days in `from..to`
    /// (either end open), as statement parameters (13 arrays), with the newest
    /// `seq` they include; `None` as for [`TailCache::tokens`].
    pub(crate) async fn tokens_all(
        &self,
        client: &impl GenericClient,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Result<Option<(i64, Vec<Box<dyn ToSql + Sync + Send>>)>, ApiError> {
        with_tail(&self.tokens, client, |tail| {
            let mut groups: BTreeMap<(NaiveDate, &str, &str), TokenSums> = BTreeMap::new();
            for ((day, provider, model, _, _), sums) in &tail.sums {
                if from.is_some_and(|f| *day < f) || to.is_some_and(|t| *day >= t) {
                    continue;
                }
                let group = groups
                    .entry((*day, provider.as_str(), model.as_str()))
                    .or_default();
                for (total, n) in group.counts.iter_mut().zip(sums.counts) {
                    *total += n;
                }
                group.cost += sums.cost;
            }
            let mut days = Vec::new();
            let mut providers = Vec::new();
            let mut models = Vec::new();
            let mut counts: [Vec<i64>; TOKEN_COUNTS] = Default::default();
            let mut costs = Vec::new();
            for ((day, provider, model), sums) in groups {
                days.push(day);
                providers.push(provider.to_owned());
                models.push(model.to_owned());
                for (column, n) in counts.iter_mut().zip(sums.counts) {
                    column.push(n);
                }
                costs.push(format_cost(sums.cost));
            }
            let mut params: Vec<Box<dyn ToSql + Sync + Send>> =
                vec![Box::new(days), Box::new(providers), Box::new(models)];
            for column in counts {
                params.push(Box::new(column));
            }
            params.push(Box::new(costs));
            (tail.version.high, params)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(watermark: i64, generation: i64, high: i64) -> Version {
        Version {
            watermark,
            generation,
            high,
        }
    }

    #[test]
    fn a_cache_is_extended_only_for_its_watermark_and_generation() {
        assert_eq!(step(None, v(10, 0, 20)), Step::Rebuild);
        assert_eq!(
            step(Some(v(10, 0, 15)), v(10, 0, 20)),
            Step::Extend { from: 15 }
        );
        assert_eq!(
            step(Some(v(10, 0, 20)), v(10, 0, 20)),
            Step::Extend { from: 20 }
        );
        assert_eq!(step(Some(v(10, 0, 25)), v(10, 0, 20)), Step::Skip);
        assert_eq!(step(Some(v(10, 0, 15)), v(12, 0, 20)), Step::Rebuild);
        assert_eq!(step(Some(v(10, 0, 15)), v(10, 1, 20)), Step::Rebuild);
        assert_eq!(
            step(Some(v(10, 0, 15)), v(10, 0, 10 + MAX_TAIL_SEQS + 1)),
            Step::TooLong
        );
    }

    #[test]
    fn costs_round_trip_exactly() {
        for (text, units) in [
            ("0", 0i128),
            ("0.0000000001", 1),
            ("12.5", 125_000_000_000),
            ("-3.0000000002", -30_000_000_002),
            ("123456789012.1234567890", 1_234_567_890_121_234_567_890),
        ] {
            assert_eq!(parse_cost(text), Some(units), "{text}");
        }
        assert_eq!(format_cost(125_000_000_000), "12.5000000000");
        assert_eq!(format_cost(-30_000_000_002), "-3.0000000002");
        assert_eq!(format_cost(1), "0.0000000001");
        assert_eq!(parse_cost("1.00000000001"), None);
        assert_eq!(parse_cost("1e5"), None);
        assert_eq!(parse_cost(""), None);
    }
}
