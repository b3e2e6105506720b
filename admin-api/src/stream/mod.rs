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
//! This module is the feeds' request handling (query, caller, filters, where to
//! start); the per-client reader loop is [`reader`], the filters in both their
//! SQL and in-memory forms [`filters`], the shared tail [`tail`], the commit
//! signals [`hub`] and the client buffer and SSE framing [`sse`].

mod filters;
pub mod hub;
mod reader;
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

use crate::activity::{ActionFilter, ActivityQuery};
use crate::auth::{Authenticator, CredentialWatch};
use crate::caller::{Caller, SCOPE_ACTIVITY_READ, SCOPE_TOKENS_READ};
use crate::error::ApiError;
use crate::params::{pairs, parse_seq, Params};
use crate::rows::{ACTIVITY_COLUMNS, TOKEN_COLUMNS};
use crate::state::AppState;
use axum::body::Bytes;
use filters::{activity_filters, Filters};
use hub::Table;
use reader::{read_feed, Feed};

/// How long a client's full buffer may stay full before the client is reset.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(1);
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
    let pairs = pairs(&uri)?;
    let (caller, watch) = stream_caller(&state, &headers, &pairs).await?;
    let params = Params::new_brief(&pairs, ACTIVITY_STREAM_PARAMETERS)?;
    caller.require_scope(SCOPE_ACTIVITY_READ)?;
    let after_seq = params.one("after_seq")?;
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
    if query.action == ActionFilter::Any {
        filters.not_eq("action", crate::audit::AUDIT_VIEW_ACTION.to_owned());
    }
    serve_feed(
        state,
        &headers,
        &caller,
        watch,
        Table::Activity,
        filters,
        after_seq,
    )
    .await
}

/// `GET /api/v1/tokens/stream`.
pub(crate) async fn tokens_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let pairs = pairs(&uri)?;
    let (caller, watch) = stream_caller(&state, &headers, &pairs).await?;
    let params = Params::new_brief(&pairs, TOKEN_STREAM_PARAMETERS)?;
    caller.require_scope(SCOPE_TOKENS_READ)?;
    let after_seq = params.one("after_seq")?;
    let mut filters = Filters::default();
    if let Some(tenant) = caller.tenant_filter(params.text("tenant")?)? {
        filters.eq("tenant_id", tenant);
    }
    if let Some(user) = caller.user_filter(params.text("user")?)? {
        filters.eq("user_id", user);
    }
    for (name, column) in [
        ("model", "model"),
        ("provider", "provider"),
        ("operation", "operation"),
    ] {
        if let Some(value) = params.text(name)? {
            filters.eq(column, value);
        }
    }
    if let Some(outcome) = params.outcome()? {
        filters.eq("outcome", outcome.as_str().to_owned());
    }
    if let Some(trace_id) = params.trace_id()? {
        filters.eq("trace_id", trace_id);
    }
    serve_feed(
        state,
        &headers,
        &caller,
        watch,
        Table::Tokens,
        filters,
        after_seq,
    )
    .await
}

/// Finds where the feed of `table` starts (after `after_seq` or
/// `Last-Event-ID`), takes a client slot, starts the reader and answers with
/// the event stream.
async fn serve_feed(
    state: AppState,
    headers: &HeaderMap,
    caller: &Caller,
    watch: Option<CredentialWatch>,
    table: Table,
    filters: Filters,
    after_seq: Option<&str>,
) -> Result<Response, ApiError> {
    let columns = match table {
        Table::Activity => ACTIVITY_COLUMNS,
        Table::Tokens => TOKEN_COLUMNS,
    };
    let sql = filters.sql.bounded_page_sql(table.name(), columns);
    let after = start_after(&state, headers, after_seq, table).await?;
    let feed = Feed {
        table,
        rows_of: caller.tenant.clone(),
        filters,
        sql,
    };
    let subject = caller.subject.as_str();
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
