//! Shared tails: one reader per (table, tenant access) for every live client
//! that follows it, instead of one query per client per notification.
//!
//! A tail wakes on the hub's signal for its table, reads the newest committed
//! `seq` once, reads the rows after its position up to it once (on a connection
//! scoped to its tenant access, so row-level security applies as on the
//! per-client path), encodes each row as an SSE event once, and publishes them
//! as a [`SharedPage`]: "every row in `(after, high]` that this tenant access may
//! see". The tail keeps its last [`KEPT_PAGES`] pages as a contiguous window. A
//! client whose position is inside the window takes the rows after its position
//! from memory, keeping those its filters match ([`Cond`], the Rust form of its
//! SQL filter clauses), and moves to the window's end. A client behind the
//! window (it resumed from an older `seq`, or fell more than the window behind)
//! reads from the database itself up to the window's end, as before, so the
//! feed stays gap-free and duplicate-free either way.
//!
//! A tail starts with the first client of its key and ends when its last client
//! is gone (checked under the registry lock, so a client never joins a tail that
//! is ending).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_postgres::Row;

use super::hub::Table;
use super::max_seq;
use super::reader::RETRY_DELAY;
use super::sse::{Frames, FramesBuilder};
use crate::caller::TenantAccess;
use crate::error::ApiError;
use crate::rows::{ActivityItem, TokenItem, ACTIVITY_COLUMNS, TOKEN_COLUMNS};
use crate::state::AppState;

/// Most rows a tail reads (and publishes) at once.
const TAIL_PAGE: i64 = 1000;
/// Pages a tail keeps for clients that are a little behind (they catch up
/// from memory instead of from the database).
const KEPT_PAGES: usize = 64;

/// One row of a shared page: its `seq` and the values the filters look at
/// (its encoded event is the page's `frames` at the row's index).
#[derive(Debug)]
pub(crate) struct LiveRow {
    pub(crate) seq: i64,
    ts: DateTime<Utc>,
    /// `duration_ms` (activity rows).
    duration_ms: Option<f64>,
    /// `(column, value)` of the filterable text columns (`None` = NULL).
    columns: Vec<(&'static str, Option<String>)>,
}

impl LiveRow {
    fn column(&self, name: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(column, _)| *column == name)
            .and_then(|(_, value)| value.as_deref())
    }
}

/// Rows `(after, high]` of one table that one tenant access may see, in `seq`
/// order, and their events encoded once for every client (`frames`, one per row).
#[derive(Debug)]
pub(crate) struct SharedPage {
    pub(crate) after: i64,
    pub(crate) high: i64,
    pub(crate) rows: Vec<LiveRow>,
    pub(crate) frames: Frames,
}

/// A filter clause evaluated in Rust, with SQL's meaning (a NULL column never
/// matches). Built next to the SQL clause it mirrors.
#[derive(Debug, Clone)]
pub(crate) enum Cond {
    /// `column = value`.
    Eq(&'static str, String),
    /// `column <> value`.
    NotEq(&'static str, String),
    /// `column LIKE '<prefix>%'` (the prefix escaped).
    Prefix(&'static str, String),
    /// `ts >= value`.
    TsFrom(DateTime<Utc>),
    /// `ts < value`.
    TsTo(DateTime<Utc>),
    /// `duration_ms >= value`.
    MinDuration(f64),
}

impl Cond {
    fn matches(&self, row: &LiveRow) -> bool {
        match self {
            Cond::Eq(column, value) => row.column(column) == Some(value.as_str()),
            Cond::NotEq(column, value) => row.column(column).is_some_and(|v| v != value),
            Cond::Prefix(column, prefix) => row
                .column(column)
                .is_some_and(|v| v.starts_with(prefix.as_str())),
            Cond::TsFrom(from) => row.ts >= *from,
            Cond::TsTo(to) => row.ts < *to,
            Cond::MinDuration(ms) => row.duration_ms.is_some_and(|d| d >= *ms),
        }
    }
}

/// Whether `row` passes every condition.
pub(crate) fn matches(conds: &[Cond], row: &LiveRow) -> bool {
    conds.iter().all(|cond| cond.matches(row))
}

/// The last [`KEPT_PAGES`] pages of a tail, oldest first; contiguous (each
/// page's `after` is the previous page's `high`).
pub(crate) type Window = Arc<std::collections::VecDeque<Arc<SharedPage>>>;

type PageSender = watch::Sender<Window>;
/// What a client watches: the recent pages of its tail (empty until the first).
pub(crate) type PageReceiver = watch::Receiver<Window>;

/// Appends `page` to the tail's window, dropping the oldest beyond [`KEPT_PAGES`].
fn publish(sender: &PageSender, page: SharedPage) {
    sender.send_modify(|window| {
        let pages = Arc::make_mut(window);
        if pages.back().is_some_and(|last| last.high != page.after) {
            // Not contiguous (cannot happen: the tail reads from where it was).
            pages.clear();
        }
        pages.push_back(Arc::new(page));
        while pages.len() > KEPT_PAGES {
            pages.pop_front();
        }
    });
}

/// The running tails of one hub, by key.
#[derive(Default)]
pub(crate) struct Tails {
    running: Mutex<HashMap<String, PageSender>>,
}

impl std::fmt::Debug for Tails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.running.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Tails").field("running", &count).finish()
    }
}

fn key(table: Table, rows_of: &TenantAccess) -> String {
    match rows_of {
        TenantAccess::All => format!("{}:*", table.name()),
        TenantAccess::One(tenant) => format!("{}:={tenant}", table.name()),
        TenantAccess::Nothing => format!("{}:", table.name()),
        // `\0` (never in a verified claim) separates the user from the tenant.
        TenantAccess::OwnRows { tenant, user } => {
            format!("{}:={tenant}\0user={user}", table.name())
        }
    }
}

impl Tails {
    /// Follows the tail of `table` for `rows_of`, starting it if none runs.
    /// `None` when the registry lock is poisoned (the client then reads alone).
    pub(crate) fn follow(
        &self,
        state: &AppState,
        table: Table,
        rows_of: &TenantAccess,
    ) -> Option<PageReceiver> {
        let mut running = self.running.lock().ok()?;
        let key = key(table, rows_of);
        if let Some(sender) = running.get(&key) {
            return Some(sender.subscribe());
        }
        let (sender, receiver) = watch::channel(Window::default());
        running.insert(key.clone(), sender.clone());
        tokio::spawn(run(state.clone(), table, rows_of.clone(), key, sender));
        Some(receiver)
    }

    /// Removes the tail `key` if no client follows it any more; true if removed.
    fn release_if_unused(&self, key: &str, sender: &PageSender) -> bool {
        let Ok(mut running) = self.running.lock() else {
            return true;
        };
        if sender.receiver_count() == 0 {
            running.remove(key);
            true
        } else {
            false
        }
    }
}

/// The tail task.
async fn run(
    state: AppState,
    table: Table,
    rows_of: TenantAccess,
    key: String,
    sender: PageSender,
) {
    let mut notified = state.hub.subscribe(table);
    let sql = format!(
        "SELECT {} FROM {} WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
        match table {
            Table::Activity => ACTIVITY_COLUMNS,
            Table::Tokens => TOKEN_COLUMNS,
        },
        table.name()
    );
    let mut position: Option<i64> = None;
    loop {
        notified.borrow_and_update();
        if state.hub.tails.release_if_unused(&key, &sender) {
            return;
        }
        match read(&state, table, &rows_of, &sql, position, &sender).await {
            Ok(reached) => position = Some(reached),
            Err(error) => {
                tracing::warn!(%error, table = table.name(), "live feed: the shared tail failed to read; retrying");
                tokio::select! {
                    () = tokio::time::sleep(RETRY_DELAY) => continue,
                    () = sender.closed() => continue,
                }
            }
        }
        tokio::select! {
            changed = notified.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = sender.closed() => {}
        }
    }
}

/// Reads from `position` (or, the first time, from the newest `seq`) up to the
/// newest committed `seq`, publishing each page; answers the position reached.
async fn read(
    state: &AppState,
    table: Table,
    rows_of: &TenantAccess,
    sql: &str,
    position: Option<i64>,
    sender: &PageSender,
) -> Result<i64, ApiError> {
    let high = max_seq(state, table).await?;
    let Some(mut after) = position else {
        // The window starts here: clients behind it read the database themselves.
        publish(
            sender,
            SharedPage {
                after: high,
                high,
                rows: Vec::new(),
                frames: Frames::default(),
            },
        );
        return Ok(high);
    };
    if after >= high {
        return Ok(after);
    }
    let client = state.pool.get_for(rows_of).await?;
    let statement = client
        .prepare_cached(sql)
        .await
        .map_err(ApiError::from_db)?;
    while after < high {
        let rows = client
            .query(&statement, &[&after, &high, &TAIL_PAGE])
            .await
            .map_err(ApiError::from_db)?;
        let full = rows.len() as i64 == TAIL_PAGE;
        let mut live = Vec::with_capacity(rows.len());
        let mut frames = FramesBuilder::with_capacity(rows.len());
        for row in &rows {
            live.push(live_row(table, row, &mut frames)?);
        }
        let page_high = match (full, live.last()) {
            (true, Some(last)) => last.seq,
            _ => high,
        };
        publish(
            sender,
            SharedPage {
                after,
                high: page_high,
                rows: live,
                frames: frames.finish(),
            },
        );
        after = page_high;
    }
    Ok(after)
}

fn live_row(table: Table, row: &Row, frames: &mut FramesBuilder) -> Result<LiveRow, ApiError> {
    let ts: DateTime<Utc> = row.try_get("ts").map_err(ApiError::from_db)?;
    // The filter columns as stored (`tenant_id` '' rather than null).
    let tenant = |tenant_id: &Option<String>| Some(tenant_id.clone().unwrap_or_default());
    let mut duration_ms = None;
    let (seq, columns) = match table {
        Table::Activity => {
            let item = ActivityItem::from_row(row).map_err(ApiError::from_db)?;
            let columns = vec![
                ("tenant_id", tenant(&item.tenant_id)),
                ("user_id", item.user_id.clone()),
                ("action", Some(item.action.clone())),
                ("outcome", Some(item.outcome.clone())),
                ("resource_type", item.resource_type.clone()),
                ("resource_id", item.resource_id.clone()),
                ("trace_id", item.trace_id.clone()),
                ("name", item.name.clone()),
            ];
            duration_ms = item.duration_ms;
            frames
                .push(item.seq, "activity", &item)
                .map_err(encoding_failed)?;
            (item.seq, columns)
        }
        Table::Tokens => {
            let item = TokenItem::from_row(row).map_err(ApiError::from_db)?;
            let columns = vec![
                ("tenant_id", tenant(&item.tenant_id)),
                ("user_id", item.user_id.clone()),
                ("model", item.model.clone()),
                ("provider", item.provider.clone()),
                ("operation", item.operation.clone()),
                ("outcome", Some(item.outcome.clone())),
                ("trace_id", item.trace_id.clone()),
            ];
            frames
                .push(item.seq, "token", &item)
                .map_err(encoding_failed)?;
            (item.seq, columns)
        }
    };
    Ok(LiveRow {
        seq,
        ts,
        duration_ms,
        columns,
    })
}

pub(crate) fn encoding_failed(error: serde_json::Error) -> ApiError {
    ApiError::Internal(format!("encoding a row: {error}"))
}
