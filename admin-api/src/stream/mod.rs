//! Live feeds (Server-Sent Events): `GET /api/v1/activity/stream`,
//! `GET /api/v1/tokens/stream` and `GET /api/v1/stats/stream`.
//!
//! Each feed client has a reader task of its own that fills a bounded buffer
//! (`admin_api.sse_client_buffer` events) that the HTTP response drains. Live
//! rows come from the shared tail of its table and tenant access
//! ([`tail`]): read and encoded once per notification for every client, each
//! client keeping the rows its filters match. A client behind the tail's window
//! (replay after `Last-Event-ID` / `?after_seq=`, or too slow to see a page)
//! reads its rows from the database in `seq` order itself (`WHERE <filters> AND
//! seq > <last sent> AND seq <= <tail's high> ORDER BY seq LIMIT …`) until it
//! is inside the window again. Both paths move the same position, so there is
//! no gap and no duplicate between them, and a reconnect resumes exactly after
//! the last event received. Tails wake when the [`hub::Hub`] signals that rows
//! were committed (PostgreSQL `NOTIFY`, or a 1 s poll while the listen
//! connection is down).
//!
//! A client whose buffer stays full for [`STALL_TIMEOUT`] (it took nothing from
//! it) is sent `event: reset` (as soon as it reads again) and disconnected; so is
//! a client that followed the shared tail live and then fell behind its window
//! (it reads too slowly to keep up): a slow reader never costs database reads of
//! its own. It never slows ingestion (reads only) nor other clients (a task and a
//! buffer each). A client's database reads are counted under its caller by the
//! database gate ([`crate::fair`]), like its requests'.
//!
//! Over 600 lines: the feeds' shared request handling (query, caller, filters)
//! and the one per-client reader loop (catch up, follow the tail, read alone)
//! over the same `Feed` and outbox; the tail and the hub are modules of their own.

pub mod hub;
pub(crate) mod sse;
pub mod stats;
pub(crate) mod tail;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use tokio::sync::watch;
use tokio_postgres::types::ToSql;

use crate::activity::ActivityQuery;
use crate::auth::{Authenticator, CredentialWatch};
use crate::caller::{Caller, TenantAccess, SCOPE_ACTIVITY_READ, SCOPE_TOKENS_READ};
use crate::error::{truncate, ApiError};
use crate::rows::{ActivityItem, TokenItem, ACTIVITY_COLUMNS, TOKEN_COLUMNS};
use crate::state::AppState;
use axum::body::Bytes;
use hub::{ClientSlot, Table};
use sse::{Frames, FramesBuilder, Outbox};

/// How long a client's full buffer may stay full before the client is reset.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(1);
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

/// Query parameters of `/activity/stream` (the `/activity` filters without
/// `limit`/`cursor`, plus `after_seq` and `access_token`).
pub const ACTIVITY_STREAM_PARAMETERS: &[&str] = &[
    "tenant",
    "user",
    "action",
    "outcome",
    "resource_type",
    "resource_id",
    "trace_id",
    "name",
    "min_duration_ms",
    "from",
    "to",
    "after_seq",
    "access_token",
];

/// Query parameters of `/tokens/stream`.
pub const TOKEN_STREAM_PARAMETERS: &[&str] = &[
    "tenant",
    "user",
    "model",
    "provider",
    "operation",
    "outcome",
    "trace_id",
    "after_seq",
    "access_token",
];

/// Decoded query pairs; 400 on a malformed query.
pub(crate) fn query_pairs(uri: &Uri) -> Result<Vec<(String, String)>, ApiError> {
    crate::params::pairs(uri)
}

/// 400 for a parameter not in `accepted`.
pub(crate) fn reject_unknown(
    pairs: &[(String, String)],
    accepted: &[&str],
) -> Result<(), ApiError> {
    match pairs
        .iter()
        .find(|(name, _)| !accepted.contains(&name.as_str()))
    {
        Some((name, _)) => Err(ApiError::invalid(
            &truncate(name, 64),
            format!("unknown query parameter; accepted: {}", accepted.join(", ")),
        )),
        None => Ok(()),
    }
}

/// The single value of `name`, if given (400 when repeated or empty).
pub(crate) fn single<'a>(
    pairs: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, ApiError> {
    let mut values = pairs.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::invalid(name, "given more than once"));
    }
    if let Some(value) = first {
        crate::params::check_text(name, value)?;
    }
    Ok(first.map(String::as_str))
}

/// Parses a non-negative `seq`.
pub(crate) fn parse_seq(name: &str, value: &str) -> Result<i64, ApiError> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|seq| *seq >= 0)
        .ok_or_else(|| ApiError::invalid(name, "must be a non-negative integer (a seq)"))
}

/// The caller of a stream route: the `Authorization` (or `X-API-Key`) header,
/// else `?access_token=` (browsers' `EventSource` cannot set headers), verified
/// the same way. Runs before any other parameter check, like the other routes.
pub(crate) async fn stream_caller(
    state: &AppState,
    headers: &HeaderMap,
    pairs: &[(String, String)],
) -> Result<(Caller, Option<CredentialWatch>), ApiError> {
    let Some(authenticator) = &state.auth else {
        let caller = Caller::anonymous();
        crate::audit::remember(&caller);
        return Ok((caller, None));
    };
    let mut tokens = pairs.iter().filter(|(name, _)| name == "access_token");
    let access_token = tokens.next().map(|(_, value)| value.as_str());
    if tokens.next().is_some() {
        return Err(ApiError::Unauthorized(
            "access_token given more than once".to_owned(),
        ));
    }
    let caller = Authenticator::caller(Some(authenticator), headers, access_token).await?;
    let watch = Authenticator::credential(headers, access_token)?
        .map(|credential| CredentialWatch::new(authenticator, credential));
    Ok((caller, watch))
}

/// The `event: auth_expired` that ends a live feed whose credential ended.
pub(crate) fn auth_expired_event(reason: &str) -> Bytes {
    let data = serde_json::json!({
        "reason": format!("{reason}: the live feed ends; reconnect with a valid credential and Last-Event-ID"),
    });
    Bytes::from(format!("event: auth_expired\ndata: {data}\n\n"))
}

/// Ends `stream` with `event: auth_expired` when `watch`'s credential ends
/// (the `/stats/stream` form of what [`read_feed`] does).
pub(crate) fn until_credential_ends<S>(
    stream: S,
    watch: Option<CredentialWatch>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    use futures::StreamExt;
    let (ended, reason) = tokio::sync::oneshot::channel::<&'static str>();
    let expiry = Box::pin(async move {
        let _ = ended.send(credential_end(watch).await);
    });
    stream.take_until(expiry).chain(
        futures::stream::once(async move {
            reason.await.ok().map(|reason| {
                Ok(Event::default().event("auth_expired").data(
                    serde_json::json!({
                        "reason": format!("{reason}: the live feed ends; reconnect with a valid credential"),
                    })
                    .to_string(),
                ))
            })
        })
        .filter_map(std::future::ready),
    )
}

/// Resolves with the reason when `watch`'s credential ends; never without one.
pub(crate) async fn credential_end(watch: Option<CredentialWatch>) -> &'static str {
    match watch {
        Some(watch) => watch.ended().await,
        None => std::future::pending().await,
    }
}

/// Filter clauses (`column = $n`) and their parameters; `seq` and the page
/// size are appended as the last two parameters.
#[derive(Default)]
pub(crate) struct Filters {
    clauses: Vec<String>,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
    /// The same clauses for rows of a shared tail page.
    conds: Vec<tail::Cond>,
    /// Some clause has no form in `conds`: the client reads the database itself.
    opaque: bool,
}

impl Filters {
    fn param(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    /// Adds `column = value`.
    pub(crate) fn eq(&mut self, column: &'static str, value: String) {
        self.push_cond(tail::Cond::Eq(column, value.clone()));
        let placeholder = self.param(value);
        self.clauses.push(format!("{column} = {placeholder}"));
    }

    /// Adds `column <> value`.
    pub(crate) fn not_eq(&mut self, column: &'static str, value: String) {
        self.push_cond(tail::Cond::NotEq(column, value.clone()));
        let placeholder = self.param(value);
        self.clauses.push(format!("{column} <> {placeholder}"));
    }

    /// Adds `ts >= from`.
    pub(crate) fn ts_from(&mut self, from: chrono::DateTime<chrono::Utc>) {
        self.push_cond(tail::Cond::TsFrom(from));
        let placeholder = self.param(from);
        self.clauses.push(format!("ts >= {placeholder}"));
    }

    /// Adds `ts < to`.
    pub(crate) fn ts_to(&mut self, to: chrono::DateTime<chrono::Utc>) {
        self.push_cond(tail::Cond::TsTo(to));
        let placeholder = self.param(to);
        self.clauses.push(format!("ts < {placeholder}"));
    }

    fn push_cond(&mut self, cond: tail::Cond) {
        self.conds.push(cond);
    }

    /// `SELECT <columns> FROM <table> WHERE <filters> AND seq > $k ORDER BY seq LIMIT $k+1`.
    pub(crate) fn seq_page_sql(&self, table: &str, columns: &str) -> String {
        let seq = self.params.len() + 1;
        let limit = seq + 1;
        let mut clauses = self.clauses.clone();
        clauses.push(format!("seq > ${seq}"));
        format!(
            "SELECT {columns} FROM {table} WHERE {} ORDER BY seq LIMIT ${limit}",
            clauses.join(" AND ")
        )
    }

    /// `SELECT <columns> FROM <table> WHERE <filters> AND seq > $k AND seq <= $k+1
    /// ORDER BY seq LIMIT $k+2`.
    pub(crate) fn bounded_page_sql(&self, table: &str, columns: &str) -> String {
        let after = self.params.len() + 1;
        let high = after + 1;
        let limit = after + 2;
        let mut clauses = self.clauses.clone();
        clauses.push(format!("seq > ${after}"));
        clauses.push(format!("seq <= ${high}"));
        format!(
            "SELECT {columns} FROM {table} WHERE {} ORDER BY seq LIMIT ${limit}",
            clauses.join(" AND ")
        )
    }

    /// The parameters followed by `after`, `high` and `limit`.
    pub(crate) fn with_bounded_page<'a>(
        &'a self,
        after: &'a i64,
        high: &'a i64,
        limit: &'a i64,
    ) -> Vec<&'a (dyn ToSql + Sync)> {
        let mut params = self.with_page(after, high);
        params.push(limit);
        params
    }

    /// The parameters followed by `after` and `limit`.
    pub(crate) fn with_page<'a>(
        &'a self,
        after: &'a i64,
        limit: &'a i64,
    ) -> Vec<&'a (dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|param| param.as_ref() as &(dyn ToSql + Sync))
            .collect();
        params.push(after);
        params.push(limit);
        params
    }
}

/// The activity filters of an [`ActivityQuery`] as [`Filters`]: the same
/// clauses `GET /activity` uses.
pub(crate) fn activity_filters(query: &ActivityQuery) -> Filters {
    use crate::activity::ActionFilter;
    use tail::Cond;
    let sql = query.filter_sql();
    // The Rust form of `ActivityQuery::filter_sql`'s clauses, one for one.
    let mut conds = Vec::new();
    let text = [
        ("tenant_id", &query.tenant),
        ("user_id", &query.user),
        ("resource_type", &query.resource_type),
        ("resource_id", &query.resource_id),
        ("trace_id", &query.trace_id),
        ("name", &query.name),
    ];
    for (column, value) in text {
        if let Some(value) = value {
            conds.push(Cond::Eq(column, value.clone()));
        }
    }
    match &query.action {
        ActionFilter::Any => {}
        ActionFilter::Exact(action) => conds.push(Cond::Eq("action", action.clone())),
        ActionFilter::Prefix(prefix) => conds.push(Cond::Prefix("action", prefix.clone())),
    }
    if let Some(outcome) = query.outcome {
        conds.push(Cond::Eq("outcome", outcome.as_str().to_owned()));
    }
    if let Some(ms) = query.min_duration_ms {
        conds.push(Cond::MinDuration(ms));
    }
    if let Some(from) = query.from {
        conds.push(Cond::TsFrom(from));
    }
    if let Some(to) = query.to {
        conds.push(Cond::TsTo(to));
    }
    // Every clause has its condition, or the shared path is not used.
    let opaque = conds.len() != sql.clauses.len();
    Filters {
        clauses: sql.clauses,
        params: sql.params,
        conds,
        opaque,
    }
}

/// What one feed client follows.
struct Feed {
    table: Table,
    /// The caller's tenants: the rows the database lets this feed see.
    rows_of: TenantAccess,
    filters: Filters,
    sql: String,
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
        let params = self.filters.with_bounded_page(&after, &high, &limit);
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

/// The newest committed `seq` of `table` over every tenant (0 when empty):
/// where a feed without `after_seq`/`Last-Event-ID` starts. Read through the
/// `SECURITY DEFINER` function `tally_newest_seq`, since the API's own
/// connections see only their caller's tenant.
pub(crate) async fn max_seq(state: &AppState, table: Table) -> Result<i64, ApiError> {
    let client = state.pool.get().await.map_err(ApiError::from_pool)?;
    let statement = client
        .prepare_cached("SELECT tally_newest_seq($1)")
        .await
        .map_err(ApiError::from_db)?;
    let row = client
        .query_one(&statement, &[&table.name()])
        .await
        .map_err(ApiError::from_db)?;
    row.try_get(0).map_err(ApiError::from_db)
}

/// Where to start: `Last-Event-ID` (what `EventSource` sends on reconnect) wins
/// over `?after_seq=`; with neither, live from now.
async fn start_after(
    state: &AppState,
    headers: &HeaderMap,
    after_seq: Option<&str>,
    table: Table,
) -> Result<i64, ApiError> {
    if let Some(value) = headers.get("last-event-id") {
        let value = value
            .to_str()
            .map_err(|_| ApiError::invalid("Last-Event-ID", "must be a seq"))?;
        if !value.trim().is_empty() {
            return parse_seq("Last-Event-ID", value);
        }
    }
    match after_seq {
        Some(value) => parse_seq("after_seq", value),
        None => max_seq(state, table).await,
    }
}

/// `GET /api/v1/activity/stream`.
pub(crate) async fn activity_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(&uri)?;
    let (caller, watch) = stream_caller(&state, &headers, &pairs).await?;
    reject_unknown(&pairs, ACTIVITY_STREAM_PARAMETERS)?;
    caller.require_scope(SCOPE_ACTIVITY_READ)?;
    let after_seq = single(&pairs, "after_seq")?;
    let filter_pairs: Vec<(String, String)> = pairs
        .iter()
        .filter(|(name, _)| name != "after_seq" && name != "access_token")
        .cloned()
        .collect();
    let mut query = ActivityQuery::parse(&filter_pairs, 1, 1)?;
    query.tenant = caller.tenant_filter(query.tenant.take())?;
    query.user = caller.user_filter(query.user.take())?;
    let mut filters = activity_filters(&query);
    // Reads are audited: a client that re-reads on each live event would feed
    // itself its own audit.log.view events. They are streamed only on request.
    if query.action == crate::activity::ActionFilter::Any {
        filters.not_eq("action", crate::audit::AUDIT_VIEW_ACTION.to_owned());
    }
    let sql = filters.bounded_page_sql("activity_events", ACTIVITY_COLUMNS);
    let after = start_after(&state, &headers, after_seq, Table::Activity).await?;
    let feed = Feed {
        table: Table::Activity,
        rows_of: caller.tenant.clone(),
        filters,
        sql,
    };
    serve_feed(state, feed, after, &caller.subject, watch)
}

/// `GET /api/v1/tokens/stream`.
pub(crate) async fn tokens_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(&uri)?;
    let (caller, watch) = stream_caller(&state, &headers, &pairs).await?;
    reject_unknown(&pairs, TOKEN_STREAM_PARAMETERS)?;
    caller.require_scope(SCOPE_TOKENS_READ)?;
    let after_seq = single(&pairs, "after_seq")?;
    let mut filters = Filters::default();
    let tenant = caller.tenant_filter(single(&pairs, "tenant")?.map(str::to_owned))?;
    if let Some(tenant) = tenant {
        filters.eq("tenant_id", tenant);
    }
    if let Some(user) = caller.user_filter(single(&pairs, "user")?.map(str::to_owned))? {
        filters.eq("user_id", user);
    }
    for (name, column) in [
        ("model", "model"),
        ("provider", "provider"),
        ("operation", "operation"),
    ] {
        if let Some(value) = single(&pairs, name)? {
            filters.eq(column, value.to_owned());
        }
    }
    if let Some(outcome) = single(&pairs, "outcome")? {
        let outcome = tally_model::Outcome::parse(outcome).ok_or_else(|| {
            ApiError::invalid("outcome", "must be one of success, failure, unknown")
        })?;
        filters.eq("outcome", outcome.as_str().to_owned());
    }
    if let Some(trace_id) = single(&pairs, "trace_id")? {
        if trace_id.len() != 32 || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::invalid(
                "trace_id",
                "must be 32 hexadecimal characters",
            ));
        }
        filters.eq("trace_id", trace_id.to_ascii_lowercase());
    }
    let sql = filters.bounded_page_sql("token_usage", TOKEN_COLUMNS);
    let after = start_after(&state, &headers, after_seq, Table::Tokens).await?;
    let feed = Feed {
        table: Table::Tokens,
        rows_of: caller.tenant.clone(),
        filters,
        sql,
    };
    serve_feed(state, feed, after, &caller.subject, watch)
}

/// Takes a client slot, starts the reader and answers with the event stream.
fn serve_feed(
    state: AppState,
    feed: Feed,
    after: i64,
    subject: &str,
    watch: Option<CredentialWatch>,
) -> Result<Response, ApiError> {
    // The reader owns the slot: it lives as long as the client is connected,
    // and ends at a reset, so a reset client that never reads again (and
    // keeps its connection open) does not hold a slot.
    let slot = state.hub.join()?;
    let state_closed = state.hub.closed();
    let settings = state.hub.settings;
    let notified = state.hub.subscribe(feed.table);
    // The queued bytes of every feed of the caller share one budget.
    let budget = sse::CALLER_BUFFER
        .try_with(Clone::clone)
        .unwrap_or_else(|_| sse::CallerBuffer::new(sse::CALLER_BUFFER_BYTES));
    let (outbox, outlet) = sse::client_buffer(settings.client_buffer, feed.table, budget);
    tracing::debug!(
        subject,
        table = feed.table.name(),
        after,
        "live feed client connected"
    );
    let reader = read_feed(state, feed, after, outbox, notified, slot, watch);
    // The reader's database reads are ranked under the feed's caller.
    match crate::fair::CALLER.try_with(Arc::clone) {
        Ok(caller) => tokio::spawn(crate::fair::CALLER.scope(caller, reader)),
        Err(_) => tokio::spawn(reader),
    };
    let first = sse::comment(&format!("tally live feed after_seq={after}"));
    Ok(sse::feed_response(
        first,
        outlet,
        settings.heartbeat,
        state_closed,
    ))
}

/// Ends `stream` when `closed` resolves (the server shuts down).
pub(crate) fn until_closed<S>(
    stream: S,
    closed: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    futures::StreamExt::take_until(stream, Box::pin(closed))
}

/// The SSE response with heartbeat comments and no proxy buffering.
pub(crate) fn sse_response<S>(stream: S, heartbeat: Duration) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"));
    (
        [(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        )],
        sse,
    )
        .into_response()
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
async fn read_feed(
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
