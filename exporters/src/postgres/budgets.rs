//! Budgets (`budgets` in the config): current use per budget and period,
//! refreshed about every second into an in-memory [`BudgetBook`] that the admin
//! API answers from, and the threshold events, recorded exactly once.
//!
//! One run of [`BudgetJob::run_once`]:
//!
//! 1. In one `REPEATABLE READ` snapshot: the token rollup's watermark, the
//!    unfolded `token_usage` rows above it (summed per day, tenant and user), and
//!    in one statement for all budgets, the sums of the rollup table that fits each one's scope
//!    (`token_usage_daily` with a user, `_tenant` with a tenant only, `_all`
//!    with neither) from its period's first day. Rollup plus tail is exact,
//!    re-attributed rows included (the rollup is corrected in the re-attributing
//!    transaction, see `rollup.rs`).
//! 2. Each threshold reached and not yet recorded for the period is claimed:
//!    `INSERT INTO budget_thresholds … ON CONFLICT DO NOTHING RETURNING`. The
//!    instance whose insert returns the row sends the event (an OTLP log record,
//!    through the pipeline like any app's record: redaction, taxonomy, chain,
//!    live feed) and, once it is committed, sets `emitted_at`.
//! 3. Claims still pending after [`RESEND_AFTER`] (their claimer stopped before
//!    the event committed) are sent again by whichever instance sees them. The
//!    event is rebuilt from the claim row, so it is the same record with the same
//!    deterministic id and is stored once.
//! 4. The snapshot is published to the [`BudgetBook`] and the gauge
//!    `tally_budget_used_ratio{budget}`.
//!
//! Over 600 lines: the budget book, its refresh query and the threshold events claimed in the same transaction.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::metrics::metrics;
use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc};
use futures::FutureExt;
use serde::Serialize;
use tally_config::{BudgetConfig, BudgetLimit, BudgetPeriod};
use tally_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tally_model::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tally_model::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tally_model::otlp::resource::v1::Resource;
use tally_model::pipeline::{Consumer, Sender};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Row};

use super::periodic::spawn_periodically;
use super::rollup::TOKEN_WATERMARK;
use super::PgError;

/// Default pause between two refreshes (the answers are at most this old, plus
/// one run).
pub const DEFAULT_BUDGET_INTERVAL: Duration = Duration::from_secs(1);
/// A claim whose event has not committed after this long is sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(15);
/// Action of the event for a threshold below 1.0.
pub const BUDGET_THRESHOLD_ACTION: &str = "token.budget.threshold";
/// Action of the event for a threshold of 1.0 and above.
pub const QUOTA_EXCEED_ACTION: &str = "token.quota.exceed";
/// `service.name` of the events.
const SERVICE_NAME: &str = "tally";

/// The first instant of the period holding `now`, and the first of the next one
/// (UTC; weeks start on Monday).
pub fn period_bounds(period: BudgetPeriod, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let today = now.date_naive();
    let (start, end) = match period {
        BudgetPeriod::Day => (today, today.checked_add_days(Days::new(1))),
        BudgetPeriod::Week => {
            let back = u64::from(today.weekday().num_days_from_monday());
            let start = today.checked_sub_days(Days::new(back)).unwrap_or(today);
            (start, start.checked_add_days(Days::new(7)))
        }
        BudgetPeriod::Month => {
            let start = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap_or(today);
            (start, start.checked_add_months(Months::new(1)))
        }
    };
    let midnight = |day: NaiveDate| Utc.from_utc_datetime(&day.and_time(chrono::NaiveTime::MIN));
    let start = midnight(start);
    (start, end.map_or(DateTime::<Utc>::MAX_UTC, midnight))
}

/// One budget's current state, as `GET /api/v1/budgets` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetStatus {
    /// The budget's configured name.
    pub name: String,
    /// The tenant whose usage counts (`null`: every tenant).
    pub tenant: Option<String>,
    /// The user whose usage counts (`null`: every user).
    pub user: Option<String>,
    /// `day`, `week` or `month`.
    pub period: &'static str,
    /// The start of the current period.
    pub period_start: DateTime<Utc>,
    /// The end of the current period (exclusive).
    pub period_end: DateTime<Utc>,
    /// `usd` or `tokens`.
    pub unit: &'static str,
    /// The limit, in `unit`.
    pub limit: f64,
    /// Use so far in the period, in `unit`.
    pub used: f64,
    /// `used / limit`.
    pub used_ratio: f64,
    /// `used >= limit`.
    pub exceeded: bool,
    /// The configured thresholds (fractions of the limit).
    pub thresholds: Vec<f64>,
    /// The thresholds recorded as crossed in this period, ascending.
    pub thresholds_crossed: Vec<f64>,
}

/// The budgets as of one refresh.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetSnapshot {
    /// When the use was read.
    pub as_of: DateTime<Utc>,
    /// Every configured budget.
    pub budgets: Vec<BudgetStatus>,
}

/// The latest [`BudgetSnapshot`], shared between the job and the admin API.
#[derive(Debug, Default)]
pub struct BudgetBook {
    latest: RwLock<Option<Arc<BudgetSnapshot>>>,
}

impl BudgetBook {
    /// An empty book (no refresh yet).
    pub fn new() -> Arc<BudgetBook> {
        Arc::new(BudgetBook::default())
    }

    /// The latest snapshot, `None` before the first refresh.
    pub fn snapshot(&self) -> Option<Arc<BudgetSnapshot>> {
        self.latest.read().ok().and_then(|latest| latest.clone())
    }

    /// Replaces the snapshot.
    pub fn publish(&self, snapshot: BudgetSnapshot) {
        if let Ok(mut latest) = self.latest.write() {
            *latest = Some(Arc::new(snapshot));
        }
    }
}

/// Creates `tally_budget_used_ratio{budget}` at 0 for every configured budget,
/// so the first scrape lists them.
pub fn init_metric_series(budgets: &[BudgetConfig]) {
    for budget in budgets {
        metrics().set_budget_used_ratio(&budget.name, 0.0);
    }
}

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BudgetReport {
    /// Thresholds this run claimed (and whose event it sent or tried to).
    pub claimed: usize,
    /// Events committed by this run (claimed here or resent).
    pub emitted: usize,
}

/// A crossing as stored in `budget_thresholds`: everything the event says.
#[derive(Debug, Clone)]
struct Claim {
    budget: String,
    period_start: DateTime<Utc>,
    threshold: f64,
    tenant_id: String,
    user_id: Option<String>,
    period: String,
    unit: String,
    limit_value: f64,
    used: f64,
    crossed_at: DateTime<Utc>,
}

const CLAIM_COLUMNS: &str = "budget, period_start, threshold, tenant_id, user_id, period, unit, \
    limit_value, used, crossed_at";

impl Claim {
    fn from_row(row: &Row) -> Result<Claim, PgError> {
        Ok(Claim {
            budget: row.try_get(0)?,
            period_start: row.try_get(1)?,
            threshold: row.try_get(2)?,
            tenant_id: row.try_get(3)?,
            user_id: row.try_get(4)?,
            period: row.try_get(5)?,
            unit: row.try_get(6)?,
            limit_value: row.try_get(7)?,
            used: row.try_get(8)?,
            crossed_at: row.try_get(9)?,
        })
    }

    fn action(&self) -> &'static str {
        if self.threshold >= 1.0 {
            QUOTA_EXCEED_ACTION
        } else {
            BUDGET_THRESHOLD_ACTION
        }
    }

    /// The event's log record: built from the stored claim only, so a resend is
    /// byte for byte the same record (and gets the same id).
    fn log_record(&self) -> LogRecord {
        let nanos = self
            .crossed_at
            .timestamp_nanos_opt()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        let ratio = if self.limit_value > 0.0 {
            self.used / self.limit_value
        } else {
            0.0
        };
        let mut attributes = vec![
            text("activity.action", self.action()),
            text("budget.name", &self.budget),
            text("budget.period", &self.period),
            text("token.quota.period", &self.period),
            text("budget.period_start", self.period_start.to_rfc3339()),
            double("budget.threshold", self.threshold),
            text("budget.unit", &self.unit),
            double("budget.limit", self.limit_value),
            double("budget.used", self.used),
            double("budget.used_ratio", ratio),
        ];
        if !self.tenant_id.is_empty() {
            attributes.push(text("tenant.id", &self.tenant_id));
        }
        if let Some(user) = &self.user_id {
            attributes.push(text("enduser.id", user));
        }
        LogRecord {
            time_unix_nano: nanos,
            observed_time_unix_nano: nanos,
            attributes,
            ..LogRecord::default()
        }
    }
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn double(key: &str, value: f64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::DoubleValue(value)),
        }),
        ..KeyValue::default()
    }
}

fn export_request(claim: &Claim) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![text("service.name", SERVICE_NAME)],
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![claim.log_record()],
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

/// Sums of the unfolded rows of one (day, tenant, user).
struct TailGroup {
    day: NaiveDate,
    tenant: String,
    user: String,
    cost: f64,
    tokens: f64,
}

/// (day, cost, tokens) of the tail, one entry per day (few: the tail is recent).
type DaySums = Vec<(NaiveDate, f64, f64)>;

/// The tail's sums per budget scope (tenant and user, tenant, user, all) and
/// day, so that each budget adds the days of its period: linear in the tail's
/// groups plus the budgets, instead of every group visited for every budget
/// (a million visits with 100 budgets and a 100k-row tail, on the runtime
/// that serves `/budgets/check`).
#[derive(Debug, Default)]
struct TailSums {
    tenant_user: HashMap<(String, String), DaySums>,
    tenant: HashMap<String, DaySums>,
    user: HashMap<String, DaySums>,
    all: DaySums,
}

fn add_day(sums: &mut DaySums, day: NaiveDate, cost: f64, tokens: f64) {
    match sums.iter_mut().find(|(d, _, _)| *d == day) {
        Some((_, c, t)) => {
            *c += cost;
            *t += tokens;
        }
        None => sums.push((day, cost, tokens)),
    }
}

impl TailSums {
    fn new(groups: Vec<TailGroup>) -> TailSums {
        let mut sums = TailSums::default();
        for g in groups {
            add_day(&mut sums.all, g.day, g.cost, g.tokens);
            add_day(
                sums.tenant.entry(g.tenant.clone()).or_default(),
                g.day,
                g.cost,
                g.tokens,
            );
            add_day(
                sums.user.entry(g.user.clone()).or_default(),
                g.day,
                g.cost,
                g.tokens,
            );
            add_day(
                sums.tenant_user.entry((g.tenant, g.user)).or_default(),
                g.day,
                g.cost,
                g.tokens,
            );
        }
        sums
    }

    /// (cost, tokens) of the tail rows `budget` counts, from `first_day` on:
    /// the same rows as `budget.applies_to(tenant, user)` over every group.
    fn of(&self, budget: &BudgetConfig, first_day: NaiveDate) -> (f64, f64) {
        let days = match (&budget.tenant, &budget.user) {
            (Some(tenant), Some(user)) => self.tenant_user.get(&(tenant.clone(), user.clone())),
            (Some(tenant), None) => self.tenant.get(tenant),
            (None, Some(user)) => self.user.get(user),
            (None, None) => Some(&self.all),
        };
        days.into_iter()
            .flatten()
            .filter(|(day, _, _)| *day >= first_day)
            .fold((0.0, 0.0), |(c, t), (_, cost, tokens)| {
                (c + cost, t + tokens)
            })
    }
}

/// The rollup sums of every budget in one statement: per budget (`$1` index,
/// `$2` tenant, `$3` user, `$4` first day), the one rollup table that fits its
/// scope (`token_usage_daily` with a user, `_tenant` with a tenant only, `_all`
/// with neither); the other branches are cut by their one-time filters.
const ROLLUP_SQL: &str = "SELECT b.i, coalesce(sum(r.cost_usd), 0)::float8, \
        coalesce(sum(r.total_tokens), 0)::float8 \
    FROM unnest($1::int4[], $2::text[], $3::text[], $4::date[]) AS b(i, tenant, usr, first_day) \
    LEFT JOIN LATERAL ( \
        SELECT d.cost_usd, d.total_tokens FROM token_usage_daily AS d \
        WHERE b.tenant IS NOT NULL AND b.usr IS NOT NULL \
          AND d.tenant_id = b.tenant AND d.user_id = b.usr AND d.day >= b.first_day \
        UNION ALL \
        SELECT d.cost_usd, d.total_tokens FROM token_usage_daily_tenant AS d \
        WHERE b.tenant IS NOT NULL AND b.usr IS NULL \
          AND d.tenant_id = b.tenant AND d.day >= b.first_day \
        UNION ALL \
        SELECT d.cost_usd, d.total_tokens FROM token_usage_daily AS d \
        WHERE b.tenant IS NULL AND b.usr IS NOT NULL \
          AND d.user_id = b.usr AND d.day >= b.first_day \
        UNION ALL \
        SELECT d.cost_usd, d.total_tokens FROM token_usage_daily_all AS d \
        WHERE b.tenant IS NULL AND b.usr IS NULL AND d.day >= b.first_day \
    ) AS r ON true \
    GROUP BY b.i";

/// The unfolded rows (above the watermark) from `$2` on, per day, tenant and user.
const TAIL_SQL: &str = "SELECT (ts AT TIME ZONE 'UTC')::date, tenant_id, coalesce(user_id, ''), \
        coalesce(sum(cost_usd), 0)::float8, coalesce(sum(total_tokens), 0)::float8 \
    FROM token_usage WHERE seq > $1 AND ts >= $2 GROUP BY 1, 2, 3";

/// Computes the budgets' use and records their thresholds; see the module docs.
pub struct BudgetJob {
    budgets: Vec<BudgetConfig>,
    book: Arc<BudgetBook>,
    events: Option<Arc<dyn Consumer>>,
    /// Crossings known to be claimed (by anyone): not inserted again.
    known: HashSet<(String, DateTime<Utc>, u64)>,
    resend_after: Duration,
}

impl BudgetJob {
    /// A job for `budgets` publishing to `book`; events go to `events` (the
    /// collector's pipeline). Without a consumer, crossings are claimed but
    /// stay pending, for an instance that has one to send.
    pub fn new(
        budgets: Vec<BudgetConfig>,
        book: Arc<BudgetBook>,
        events: Option<Arc<dyn Consumer>>,
    ) -> BudgetJob {
        BudgetJob {
            budgets,
            book,
            events,
            known: HashSet::new(),
            resend_after: RESEND_AFTER,
        }
    }

    /// Changes how long a pending claim waits before it is sent again.
    pub fn with_resend_after(mut self, after: Duration) -> BudgetJob {
        self.resend_after = after;
        self
    }

    /// Runs [`BudgetJob::run_once`] every `interval` on its own connection until
    /// `shutdown` turns true.
    pub fn spawn(
        self,
        url: String,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let job = Arc::new(tokio::sync::Mutex::new(self));
        spawn_periodically("budgets", url, interval, shutdown, move |client| {
            let job = job.clone();
            async move {
                job.lock().await.run_once(client).await?;
                Ok(false)
            }
            .boxed()
        })
    }

    /// One refresh; see the module docs.
    pub async fn run_once(&mut self, client: &mut Client) -> Result<BudgetReport, PgError> {
        let mut report = BudgetReport::default();
        if self.budgets.is_empty() {
            self.book.publish(BudgetSnapshot {
                as_of: Utc::now(),
                budgets: Vec::new(),
            });
            return Ok(report);
        }
        let (as_of, mut statuses) = self.read_use(client).await?;
        // Claim what has been reached and is not known to be claimed.
        for status in &statuses {
            for threshold in &status.thresholds {
                if status.used_ratio < *threshold {
                    continue;
                }
                let key = (
                    status.name.clone(),
                    status.period_start,
                    threshold.to_bits(),
                );
                if self.known.contains(&key) {
                    continue;
                }
                let row = client
                    .query_opt(
                        &format!(
                            "INSERT INTO budget_thresholds (budget, period_start, threshold, \
                                tenant_id, user_id, period, unit, limit_value, used, crossed_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                                date_trunc('milliseconds', clock_timestamp())) \
                             ON CONFLICT DO NOTHING RETURNING {CLAIM_COLUMNS}"
                        ),
                        &[
                            &status.name,
                            &status.period_start,
                            threshold,
                            &status.tenant.clone().unwrap_or_default(),
                            &status.user,
                            &status.period,
                            &status.unit,
                            &status.limit,
                            &status.used,
                        ],
                    )
                    .await?;
                self.known.insert(key);
                if let Some(row) = row {
                    let claim = Claim::from_row(&row)?;
                    report.claimed += 1;
                    tracing::info!(
                        budget = %claim.budget,
                        threshold = claim.threshold,
                        used = claim.used,
                        limit = claim.limit_value,
                        "budget threshold crossed"
                    );
                    if self.emit(client, &claim).await? {
                        report.emitted += 1;
                    }
                }
            }
        }
        report.emitted += self.resend_pending(client).await?;
        // What is recorded for the current periods (claims by any instance).
        let names: Vec<&str> = statuses.iter().map(|s| s.name.as_str()).collect();
        let starts: Vec<DateTime<Utc>> = statuses.iter().map(|s| s.period_start).collect();
        let rows = client
            .query(
                "SELECT b.budget, b.threshold FROM budget_thresholds AS b \
                 JOIN unnest($1::text[], $2::timestamptz[]) AS c(budget, period_start) \
                   ON b.budget = c.budget AND b.period_start = c.period_start \
                 ORDER BY b.budget, b.threshold",
                &[&names, &starts],
            )
            .await?;
        let mut crossed: HashMap<String, Vec<f64>> = HashMap::new();
        for row in &rows {
            crossed
                .entry(row.try_get(0)?)
                .or_default()
                .push(row.try_get(1)?);
        }
        for status in &mut statuses {
            status.thresholds_crossed = crossed.remove(&status.name).unwrap_or_default();
            for threshold in &status.thresholds_crossed {
                self.known.insert((
                    status.name.clone(),
                    status.period_start,
                    threshold.to_bits(),
                ));
            }
        }
        // Forget the crossings of past periods.
        self.known.retain(|(name, start, _)| {
            statuses
                .iter()
                .any(|s| &s.name == name && s.period_start == *start)
        });
        for status in &statuses {
            metrics().set_budget_used_ratio(&status.name, status.used_ratio);
        }
        self.book.publish(BudgetSnapshot {
            as_of,
            budgets: statuses,
        });
        Ok(report)
    }

    /// Each budget's use in its current period, from one snapshot.
    async fn read_use(
        &self,
        client: &mut Client,
    ) -> Result<(DateTime<Utc>, Vec<BudgetStatus>), PgError> {
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        // Short statements whose tail estimate is a guess: never worth a JIT
        // compile (see the admin API's connections).
        // A background refresh every second: one core at most, never a parallel
        // plan that takes every core from the process answering checks from its
        // result (and from the collector) for the length of the statement.
        tx.batch_execute("SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0")
            .await?;
        let as_of: DateTime<Utc> = tx.query_one("SELECT now()", &[]).await?.try_get(0)?;
        let bounds: Vec<(DateTime<Utc>, DateTime<Utc>)> = self
            .budgets
            .iter()
            .map(|b| period_bounds(b.period, as_of))
            .collect();
        let earliest = bounds
            .iter()
            .map(|(start, _)| *start)
            .min()
            .unwrap_or(as_of);
        let watermark: i64 = tx
            .query_opt(
                "SELECT last_seq FROM rollup_watermarks WHERE name = $1",
                &[&TOKEN_WATERMARK],
            )
            .await?
            .map(|row| row.try_get(0))
            .transpose()?
            .unwrap_or(0);
        let mut tail = Vec::new();
        for row in tx.query(TAIL_SQL, &[&watermark, &earliest]).await? {
            tail.push(TailGroup {
                day: row.try_get(0)?,
                tenant: row.try_get(1)?,
                user: row.try_get(2)?,
                cost: row.try_get(3)?,
                tokens: row.try_get(4)?,
            });
        }
        let indexes: Vec<i32> = (0..self.budgets.len())
            .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
            .collect();
        let tenants: Vec<Option<&str>> = self.budgets.iter().map(|b| b.tenant.as_deref()).collect();
        let users: Vec<Option<&str>> = self.budgets.iter().map(|b| b.user.as_deref()).collect();
        let first_days: Vec<NaiveDate> =
            bounds.iter().map(|(start, _)| start.date_naive()).collect();
        let mut sums = vec![(0.0, 0.0); self.budgets.len()];
        for row in tx
            .query(ROLLUP_SQL, &[&indexes, &tenants, &users, &first_days])
            .await?
        {
            let i: i32 = row.try_get(0)?;
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| sums.get_mut(i)) {
                *slot = (row.try_get(1)?, row.try_get(2)?);
            }
        }
        let tail = TailSums::new(tail);
        let mut statuses = Vec::with_capacity(self.budgets.len());
        for ((budget, (start, end)), (cost, tokens)) in self.budgets.iter().zip(bounds).zip(sums) {
            let first_day = start.date_naive();
            let (tail_cost, tail_tokens) = tail.of(budget, first_day);
            let (cost, tokens) = (cost + tail_cost, tokens + tail_tokens);
            let limit = budget.limit();
            let used = match limit {
                BudgetLimit::Usd(_) => cost,
                BudgetLimit::Tokens(_) => tokens,
            };
            let used_ratio = if limit.value() > 0.0 {
                used / limit.value()
            } else {
                0.0
            };
            statuses.push(BudgetStatus {
                name: budget.name.clone(),
                tenant: budget.tenant.clone(),
                user: budget.user.clone(),
                period: budget.period.as_str(),
                period_start: start,
                period_end: end,
                unit: limit.unit(),
                limit: limit.value(),
                used,
                used_ratio,
                exceeded: used_ratio >= 1.0,
                thresholds: budget.thresholds.clone(),
                thresholds_crossed: Vec::new(),
            });
        }
        tx.commit().await?;
        Ok((as_of, statuses))
    }

    /// Sends `claim`'s event and marks it emitted once committed. Answers whether
    /// it was; a failure leaves the claim pending (sent again later).
    async fn emit(&self, client: &Client, claim: &Claim) -> Result<bool, PgError> {
        let Some(events) = &self.events else {
            return Ok(false);
        };
        match events
            .consume_logs(export_request(claim), Sender::anonymous())
            .await
        {
            Ok(report) if report.rejected == 0 => {}
            Ok(report) => {
                // Quarantined in rejected_events (stored, not lost): not sent again.
                tracing::error!(
                    budget = %claim.budget,
                    message = %report.message,
                    "the {} event was rejected by the taxonomy",
                    claim.action()
                );
            }
            Err(error) => {
                tracing::warn!(
                    budget = %claim.budget,
                    %error,
                    "the {} event could not be recorded yet; it will be sent again",
                    claim.action()
                );
                return Ok(false);
            }
        }
        client
            .execute(
                "UPDATE budget_thresholds SET emitted_at = clock_timestamp() \
                 WHERE tenant_id = $4 AND budget = $1 AND period_start = $2 \
                   AND threshold = $3 AND emitted_at IS NULL",
                &[
                    &claim.budget,
                    &claim.period_start,
                    &claim.threshold,
                    &claim.tenant_id,
                ],
            )
            .await?;
        Ok(true)
    }

    /// Sends the events of claims left pending longer than `resend_after`.
    async fn resend_pending(&self, client: &Client) -> Result<usize, PgError> {
        if self.events.is_none() {
            return Ok(0);
        }
        let after = self.resend_after.as_secs_f64();
        let rows = client
            .query(
                &format!(
                    "SELECT {CLAIM_COLUMNS} FROM budget_thresholds \
                     WHERE emitted_at IS NULL \
                       AND crossed_at < clock_timestamp() - make_interval(secs => $1) \
                     ORDER BY crossed_at LIMIT 100"
                ),
                &[&after],
            )
            .await?;
        let mut emitted = 0;
        for row in &rows {
            let claim = Claim::from_row(row)?;
            tracing::info!(budget = %claim.budget, threshold = claim.threshold, "re-sending a pending budget event");
            if self.emit(client, &claim).await? {
                emitted += 1;
            }
        }
        Ok(emitted)
    }
}

#[cfg(test)]
mod tests;
