//! The reader task of one live-feed client: it catches up from the database in
//! `seq` order, then follows the shared tail of its table (or, for filters the
//! tail cannot evaluate, reads the database alone on every commit signal), into
//! the client's bounded buffer, retrying database failures with a backoff. The
//! request handling that starts it is the parent module.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::watch;

use super::filters::Filters;
use super::hub::{ClientSlot, Table};
use super::sse::{Frames, FramesBuilder, Outbox};
use super::{auth_expired_event, credential_end, max_seq, tail};
use crate::auth::CredentialWatch;
use crate::caller::TenantAccess;
use crate::error::ApiError;
use crate::rows::{ActivityItem, TokenItem};
use crate::state::AppState;

/// Pause before a reader retries after a database error.
pub(crate) const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest pause between a client reader's retries (the pause doubles from
/// [`RETRY_DELAY`] up to this).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(8);
/// Failed reads in a row after which a client's reader gives up: the client is
/// sent `event: unavailable` and the stream ends (about 23 s of retries).
const MAX_FAILED_READS: u32 = 6;

/// Backoff of a client's reader while the database fails.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Counts a failure; the pause before the next attempt, or `None` to give up.
    fn failed(&mut self) -> Option<Duration> {
        self.failures += 1;
        if self.failures >= MAX_FAILED_READS {
            return None;
        }
        let doubled = RETRY_DELAY.saturating_mul(1 << (self.failures - 1).min(16));
        Some(doubled.min(MAX_RETRY_DELAY))
    }
}

/// The `event: unavailable` that ends a feed whose reads kept failing.
fn unavailable_event() -> Bytes {
    let data = serde_json::json!({
        "reason": "the database kept failing; the live feed ends: reconnect later with Last-Event-ID",
    });
    Bytes::from(format!("event: unavailable\ndata: {data}\n\n"))
}
/// Largest page a reader fetches at once.
const MAX_PAGE: usize = 500;

/// What one feed client follows.
pub(super) struct Feed {
    /// The table the feed reads.
    pub(super) table: Table,
    /// The caller's tenants: the rows the database lets this feed see.
    pub(super) rows_of: TenantAccess,
    /// The client's filters.
    pub(super) filters: Filters,
    /// The page query ([`crate::params::SqlBuilder::bounded_page_sql`]).
    pub(super) sql: String,
}

impl Feed {
    /// Reads the next page of rows in `(after, high]` as encoded SSE events.
    async fn page(
        &self,
        state: &AppState,
        after: i64,
        high: i64,
        limit: usize,
    ) -> Result<Frames, ApiError> {
        let client = state.pool.get_for(&self.rows_of).await?;
        let statement = client
            .prepare_cached(&self.sql)
            .await
            .map_err(ApiError::from_db)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let params = self.filters.sql.with_bounded_page(&after, &high, &limit);
        let rows = client
            .query(&statement, &params)
            .await
            .map_err(ApiError::from_db)?;
        let mut frames = FramesBuilder::with_capacity(rows.len());
        for row in &rows {
            match self.table {
                Table::Activity => {
                    let item = ActivityItem::from_row(row).map_err(ApiError::from_db)?;
                    frames.push(item.seq, "activity", &item)
                }
                Table::Tokens => {
                    let item = TokenItem::from_row(row).map_err(ApiError::from_db)?;
                    frames.push(item.seq, "token", &item)
                }
            }
            .map_err(tail::encoding_failed)?;
        }
        Ok(frames.finish())
    }
}

/// Why a reader stops.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The client went away (or the server closes).
    Gone,
    /// The client's buffer stayed full: it was sent `event: reset`.
    Reset,
    /// The database kept failing ([`MAX_FAILED_READS`] reads in a row).
    Unavailable,
}

/// Reads the client's rows in `(after, high]` from the database, page by page,
/// into its buffer; answers the new position (`high` once every page is read).
async fn catch_up(
    state: &AppState,
    feed: &Feed,
    mut after: i64,
    high: i64,
    outbox: &mut Outbox,
) -> Result<i64, Stop> {
    let page_size = state.hub.settings.client_buffer.clamp(1, MAX_PAGE);
    let mut backoff = Backoff::default();
    loop {
        let page = tokio::select! {
            page = feed.page(state, after, high, page_size) => page,
            () = outbox.closed() => return Err(Stop::Gone),
        };
        let frames = match page {
            Ok(frames) => frames,
            Err(error) => {
                let Some(pause) = backoff.failed() else {
                    tracing::warn!(%error, table = feed.table.name(), "live feed: reading rows keeps failing; giving up");
                    return Err(Stop::Unavailable);
                };
                tracing::warn!(%error, table = feed.table.name(), ?pause, "live feed: reading rows failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = outbox.closed() => return Err(Stop::Gone),
                }
            }
        };
        backoff = Backoff::default();
        let full_page = frames.len() == page_size;
        outbox.deliver(&frames, 0, frames.len(), after).await?;
        after = frames.last_seq().unwrap_or(after).max(after);
        if !full_page {
            // Every row up to `high` is visible (commit order), so `after` moves
            // there even when no row matched: a filtered client never rescans
            // rows it skipped.
            return Ok(after.max(high));
        }
    }
}

/// The newest committed `seq` of the feed's table, retried until it is read.
async fn newest_seq(state: &AppState, feed: &Feed, outbox: &Outbox) -> Result<i64, Stop> {
    let mut backoff = Backoff::default();
    loop {
        let high = tokio::select! {
            high = max_seq(state, feed.table) => high,
            () = outbox.closed() => return Err(Stop::Gone),
        };
        match high {
            Ok(high) => return Ok(high),
            Err(error) => {
                let Some(pause) = backoff.failed() else {
                    tracing::warn!(%error, table = feed.table.name(), "live feed: reading the newest seq keeps failing; giving up");
                    return Err(Stop::Unavailable);
                };
                tracing::warn!(%error, table = feed.table.name(), ?pause, "live feed: reading the newest seq failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = outbox.closed() => return Err(Stop::Gone),
                }
            }
        }
    }
}

/// The reader task of one client: takes its rows from the shared tail's pages
/// when its position is inside them, else from the database, then waits for the
/// next page, until the client goes away or is reset.
pub(super) async fn read_feed(
    state: AppState,
    feed: Feed,
    after: i64,
    outbox: Outbox,
    notified: watch::Receiver<u64>,
    slot: ClientSlot,
    credential: Option<CredentialWatch>,
) {
    let mut outbox = outbox;
    let tail = if feed.filters.opaque {
        None
    } else {
        state.hub.tails.follow(&state, feed.table, &feed.rows_of)
    };
    let reading = async {
        match tail {
            Some(pages) => follow_tail(&state, &feed, after, &mut outbox, pages).await,
            None => read_alone(&state, &feed, after, &mut outbox, notified).await,
        }
    };
    let ended = tokio::select! {
        stop = reading => match stop {
            Err(Stop::Unavailable) => Some(unavailable_event()),
            Err(Stop::Reset) => {
                // A client that does not read keeps its slot a while after the reset:
                // it cannot have every new row pushed to a fresh feed it never reads.
                if let Ok(caller) = crate::fair::CALLER.try_with(Arc::clone) {
                    state.limits.hold_stream(&caller, crate::limits::RESET_HOLD);
                }
                None
            }
            _ => None,
        },
        reason = credential_end(credential) => {
            tracing::info!(table = feed.table.name(), reason, "live feed: credential ended; closing the feed");
            Some(auth_expired_event(reason))
        }
    };
    if let Some(last) = ended {
        outbox.end_with(last);
    }
    drop(slot);
}

/// [`read_feed`] with a shared tail.
async fn follow_tail(
    state: &AppState,
    feed: &Feed,
    mut after: i64,
    outbox: &mut Outbox,
    mut pages: tail::PageReceiver,
) -> Result<(), Stop> {
    // Whether the client was inside the window once (it follows live).
    let mut live = false;
    loop {
        // Mark the window seen before using it: a newer one wakes us again.
        let window = pages.borrow_and_update().clone();
        match window.front() {
            Some(oldest) if oldest.after <= after => {
                live = true;
                // Inside the window: take the rows after `after` from memory.
                let first = window.partition_point(|page| page.high <= after);
                for page in window.range(first..) {
                    let start = page.rows.partition_point(|row| row.seq <= after);
                    // Runs of consecutive matching rows, each handed over as one chunk.
                    let mut run: Option<usize> = None;
                    for (index, row) in page.rows.iter().enumerate().skip(start) {
                        let matched = tail::matches(&feed.filters.conds, row);
                        match (run, matched) {
                            (None, true) => run = Some(index),
                            (Some(from), false) => {
                                outbox.deliver(&page.frames, from, index, after).await?;
                                run = None;
                            }
                            _ => {}
                        }
                    }
                    if let Some(from) = run {
                        outbox
                            .deliver(&page.frames, from, page.rows.len(), after)
                            .await?;
                    }
                    after = after.max(page.high);
                }
            }
            Some(_) if live => {
                // Fell behind while following live: too slow to keep up.
                return Err(outbox.reset_behind(after));
            }
            Some(_) => {
                // Behind the window (a resumed client): read the database up to its end.
                let high = window.back().map_or(after, |page| page.high);
                after = catch_up(state, feed, after, high, outbox).await?;
            }
            None => {
                let high = newest_seq(state, feed, outbox).await?;
                after = catch_up(state, feed, after, high, outbox).await?;
            }
        }
        tokio::select! {
            changed = pages.changed() => {
                if changed.is_err() {
                    return Err(Stop::Gone);
                }
            }
            () = outbox.closed() => return Err(Stop::Gone),
        }
    }
}

/// [`read_feed`] without a shared tail: reads the database on every signal.
async fn read_alone(
    state: &AppState,
    feed: &Feed,
    mut after: i64,
    outbox: &mut Outbox,
    mut notified: watch::Receiver<u64>,
) -> Result<(), Stop> {
    loop {
        // Mark the signal seen before reading: a commit after this wakes us again.
        notified.borrow_and_update();
        let high = newest_seq(state, feed, outbox).await?;
        after = catch_up(state, feed, after, high, outbox).await?;
        tokio::select! {
            changed = notified.changed() => {
                if changed.is_err() {
                    return Err(Stop::Gone);
                }
            }
            () = outbox.closed() => return Err(Stop::Gone),
        }
    }
}
