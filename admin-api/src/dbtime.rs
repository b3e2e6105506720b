//! Each caller's budget of database time (`admin_api.limits.db_time_per_caller_percent`).
//!
//! The per-caller limits ([`crate::limits`]) bound how many requests a caller has in
//! progress, not what they cost: a caller at its concurrency limit with cheap
//! requests sends them as fast as the database answers, and one with expensive
//! requests holds connections for seconds. So every caller also has a token bucket
//! of *connection-hold time*, charged with how long each of its requests (and its
//! live feeds' reads) actually held a pooled connection, in either lane of the
//! database gate ([`crate::fair`]) and on either pool (primary or read replica).
//!
//! The bucket refills at `db_time_per_caller_percent` of one connection's time (100:
//! a caller may keep one connection busy all the time, on average) and holds
//! [`BURST`] of that rate. A request that arrives while its caller's bucket is
//! empty (in debt: its last requests held more than it had) is answered 429 with
//! `Retry-After` (how long the refill takes to pay the debt) before it does any
//! work; the requests already running finish. At 100 a caller that sends one
//! request at a time is never refused: it cannot hold connections for longer than
//! the time that passes.
//!
//! The bucket's level also ranks waiters in the gate: when connections are short,
//! a caller that used less of its budget recently is served before one that used
//! more ([`DbTimeBudget::standing`]).
//!
//! Counting is per instance and costs one short lock per check and per
//! connection given back. A caller with a full bucket is not remembered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::ApiError;

/// How many seconds of its rate a caller's bucket holds: after this long without
/// using the database, a caller may use that much at once.
pub(crate) const BURST: Duration = Duration::from_secs(10);

/// Callers remembered at most (those with a full bucket are forgotten first).
const MAX_CALLERS: usize = 10_000;

/// Longest `Retry-After` of a refusal, seconds.
const MAX_RETRY_AFTER_SECS: u64 = 60;

/// One caller's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Seconds of connection time left (negative: in debt).
    level: f64,
    /// When `level` was last brought up to date.
    updated: Instant,
}

/// The per-caller budgets of database time (see the module docs).
#[derive(Debug)]
pub(crate) struct DbTimeBudget {
    /// Refill, seconds of connection time per second.
    rate: f64,
    /// A full bucket, seconds of connection time.
    capacity: f64,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

impl Bucket {
    /// The level at `now` (refilled since `updated`, at most `capacity`).
    fn level_at(&self, now: Instant, rate: f64, capacity: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.level + elapsed * rate).min(capacity)
    }
}

impl DbTimeBudget {
    /// Budgets refilled at `percent` of one connection's time (at least 1).
    pub(crate) fn new(percent: u32) -> Arc<DbTimeBudget> {
        let rate = f64::from(percent.max(1)) / 100.0;
        Arc::new(DbTimeBudget {
            rate,
            capacity: rate * BURST.as_secs_f64(),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Bucket>> {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Charges `caller` with a connection it held from `since` to `now`. The refill
    /// over the hold counts in full (not cut at a full bucket): a caller holding one
    /// connection at a time at 100% is never in debt, however long each hold.
    pub(crate) fn charge(&self, caller: &Arc<str>, since: Instant, now: Instant) {
        let (rate, capacity) = (self.rate, self.capacity);
        let held = now.saturating_duration_since(since).as_secs_f64();
        let mut buckets = self.lock();
        let bucket = buckets.entry(caller.clone()).or_insert(Bucket {
            level: capacity,
            updated: since,
        });
        // Up to date at the hold's start (or at the last charge, if later: a hold
        // that overlapped another of the caller's, whose charge refilled the overlap).
        let from = since.max(bucket.updated);
        let level = bucket.level_at(from, rate, capacity);
        let refill = now.saturating_duration_since(from).as_secs_f64() * rate;
        bucket.level = (level + refill - held).min(capacity);
        bucket.updated = now.max(bucket.updated);
        if buckets.len() > MAX_CALLERS {
            forget_fullest(&mut buckets, now, rate, capacity);
        }
    }

    /// `Ok` when `caller` may start a request at `now`; else how long until its
    /// bucket is no longer in debt (at least 1 s, for `Retry-After`).
    pub(crate) fn check(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        let buckets = self.lock();
        let Some(bucket) = buckets.get(caller) else {
            return Ok(());
        };
        let level = bucket.level_at(now, self.rate, self.capacity);
        if level >= 0.0 {
            return Ok(());
        }
        let secs = (-level / self.rate)
            .ceil()
            .clamp(1.0, MAX_RETRY_AFTER_SECS as f64);
        Err(Duration::from_secs_f64(secs))
    }

    /// The refill rate, percent of one connection's time.
    pub(crate) fn percent(&self) -> u32 {
        (self.rate * 100.0).round() as u32
    }

    /// The 429 for a caller told to wait `wait` ([`DbTimeBudget::check`]).
    pub(crate) fn refusal(&self, wait: Duration) -> ApiError {
        ApiError::TooManyRequests {
            message: format!(
                "this caller's requests held the database's connections longer than its budget \
                 allows (admin_api.limits.db_time_per_caller_percent = {}); retry after {} s",
                self.percent(),
                wait.as_secs()
            ),
            retry_after_secs: wait.as_secs(),
        }
    }

    /// How much of its bucket `caller` has left at `now`, in ms (higher: served
    /// first by the gate when connections are short).
    pub(crate) fn standing(&self, caller: &str, now: Instant) -> i64 {
        let level = self
            .lock()
            .get(caller)
            .map_or(self.capacity, |b| b.level_at(now, self.rate, self.capacity));
        (level * 1000.0) as i64
    }
}

/// Forgets the callers whose bucket is full, then (if still too many) those with
/// the most left, down to half of [`MAX_CALLERS`].
fn forget_fullest(buckets: &mut HashMap<Arc<str>, Bucket>, now: Instant, rate: f64, capacity: f64) {
    buckets.retain(|_, b| b.level_at(now, rate, capacity) < capacity);
    if buckets.len() <= MAX_CALLERS / 2 {
        return;
    }
    let mut levels: Vec<f64> = buckets
        .values()
        .map(|b| b.level_at(now, rate, capacity))
        .collect();
    levels.sort_unstable_by(f64::total_cmp);
    let cut = levels[MAX_CALLERS / 2];
    buckets.retain(|_, b| b.level_at(now, rate, capacity) < cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn a_caller_over_its_bucket_is_refused_until_the_refill_pays_the_debt() {
        // 50%: refilled at half a connection, 5 s in a full bucket.
        let budget = DbTimeBudget::new(50);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let a = caller("a");
        assert!(
            budget.check("a", t0).is_ok(),
            "a new caller has a full bucket"
        );
        // Four connections held together for 2 s: 8 s used, 1 s refilled meanwhile.
        for _ in 0..4 {
            budget.charge(&a, t0, t1);
        }
        assert_eq!(
            budget.check("a", t1),
            Err(Duration::from_secs(4)),
            "2 s of debt at 0.5 s/s"
        );
        assert!(
            budget.check("b", t1).is_ok(),
            "another caller is not in debt"
        );
        let later = t1 + Duration::from_secs(2);
        assert_eq!(budget.check("a", later), Err(Duration::from_secs(2)));
        assert!(budget.check("a", t1 + Duration::from_secs(4)).is_ok());
        // The caller that used less ranks higher.
        assert!(budget.standing("b", later) > budget.standing("a", later));
    }

    #[test]
    fn a_caller_with_one_request_at_a_time_is_never_refused_at_100_percent() {
        let budget = DbTimeBudget::new(100);
        let a = caller("a");
        let mut now = Instant::now();
        // Holds of every length up to 3 bursts (a 30 s request), each followed by the
        // next at once: a sequential caller holds at most the time that passes.
        for i in 0..2_000u64 {
            let since = now;
            now += Duration::from_millis((i * 7_919) % 30_000);
            budget.charge(&a, since, now);
            assert!(budget.check("a", now).is_ok(), "refused after hold {i}");
        }
        // Two at a time for longer than the burst: in debt.
        let since = now;
        now += BURST * 2;
        budget.charge(&a, since, now);
        budget.charge(&a, since, now);
        assert!(budget.check("a", now).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten_first_and_debts_kept() {
        let budget = DbTimeBudget::new(100);
        let now = Instant::now();
        let long_ago = now - Duration::from_secs(60);
        let debtor = caller("debtor");
        for _ in 0..3 {
            budget.charge(&debtor, long_ago, now);
        }
        let recent = now - Duration::from_millis(1);
        for i in 0..MAX_CALLERS {
            budget.charge(&caller(&format!("c{i}")), recent, now);
        }
        let later = now + Duration::from_secs(1);
        budget.charge(&caller("last"), now, later);
        let buckets = budget.lock();
        assert!(buckets.len() <= MAX_CALLERS, "{}", buckets.len());
        assert!(buckets.contains_key("debtor"), "a debt is not forgotten");
        drop(buckets);
        assert!(budget.check("debtor", later).is_err());
    }
}
