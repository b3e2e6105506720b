//! `GET /api/v1/export`: the raw rows of `activity_events` or `token_usage` in
//! `seq` order after `after_seq`, for SIEM tailers, as NDJSON (`format=ndjson`,
//! native columns; `ocsf`; `ecs`), CEF lines (`format=cef`) or CSV
//! (`format=csv`, RFC 4180 with a header row), optionally only the rows whose
//! event time `ts` is in `[from, to)`. The body is streamed row by row.
//!
//! Gap-free: `seq` is commit-ordered (writers hold the table's advisory lock
//! from `nextval` until commit, or commit in the order of their reserved ranges
//! by ticket; see `docs/schema.md`), so `WHERE seq > after_seq ORDER
//! BY seq` never skips a row that commits later. The position to continue from
//! is in the `X-Next-After-Seq` header (the last row's `seq`, or `after_seq`
//! when the page is empty); `X-Has-More: true` says a full page came back and
//! the tailer should ask again at once.

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};

use crate::caller::{Caller, SCOPE_ACTIVITY_READ, SCOPE_TOKENS_READ};
use crate::error::ApiError;
use crate::params::{pairs, Params, SqlBuilder};
use crate::rows::{ActivityItem, RawRow, TokenItem, ACTIVITY_COLUMNS, TOKEN_COLUMNS};
use crate::siem::{cef, csv, ecs, ocsf};
use crate::state::AppState;

/// Query parameters of `/export`.
pub const PARAMETERS: &[&str] = &[
    "table",
    "after_seq",
    "limit",
    "format",
    "tenant",
    "from",
    "to",
];
/// Rows per response when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 1000;
/// Largest accepted `limit`.
pub const MAX_LIMIT: u32 = 10_000;

/// Header with the `after_seq` of the next request.
pub const NEXT_AFTER_SEQ: &str = "x-next-after-seq";
/// Header saying whether more rows were already there (`true`/`false`).
pub const HAS_MORE: &str = "x-has-more";

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON row per line.
    Ndjson,
    /// OCSF events.
    Ocsf,
    /// Elastic Common Schema documents.
    Ecs,
    /// ArcSight CEF lines.
    Cef,
    /// Comma-separated values.
    Csv,
}

impl Format {
    fn parse(value: &str) -> Result<Format, ApiError> {
        match value {
            "ndjson" => Ok(Format::Ndjson),
            "ocsf" => Ok(Format::Ocsf),
            "ecs" => Ok(Format::Ecs),
            "cef" => Ok(Format::Cef),
            "csv" => Ok(Format::Csv),
            _ => Err(ApiError::invalid(
                "format",
                "must be one of ndjson, ocsf, ecs, cef, csv",
            )),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Cef => "text/plain; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8; header=present",
            _ => "application/x-ndjson",
        }
    }

    /// The first chunk of the body: the CSV header record (nothing otherwise).
    fn header(self, activity: bool) -> Option<&'static str> {
        match (self, activity) {
            (Format::Csv, true) => Some(csv::ACTIVITY_HEADER),
            (Format::Csv, false) => Some(csv::TOKEN_HEADER),
            _ => None,
        }
    }

    /// One output line, with its line end.
    fn line(self, row: &RawRow) -> Result<String, ApiError> {
        if self == Format::Csv {
            return Ok(csv::encode(row));
        }
        let encoded = match (self, row) {
            (Format::Ndjson, RawRow::Activity(item)) => serde_json::to_string(item),
            (Format::Ndjson, RawRow::Token(item)) => serde_json::to_string(item),
            (Format::Ocsf, row) => serde_json::to_string(&ocsf::encode(row)),
            (Format::Ecs, row) => serde_json::to_string(&ecs::encode(row)),
            (Format::Cef, row) => Ok(cef::encode(row)),
            (Format::Csv, row) => Ok(csv::encode(row)),
        };
        let mut line = encoded.map_err(|e| ApiError::Internal(format!("encoding a row: {e}")))?;
        line.push('\n');
        Ok(line)
    }
}

/// `GET /api/v1/export`.
pub(crate) async fn export(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Response, ApiError> {
    let pairs = pairs(&uri)?;
    let params = Params::new_brief(&pairs, PARAMETERS)?;
    let (table, columns, scope) = match params.one("table")? {
        None | Some("activity_events") => {
            ("activity_events", ACTIVITY_COLUMNS, SCOPE_ACTIVITY_READ)
        }
        Some("token_usage") => ("token_usage", TOKEN_COLUMNS, SCOPE_TOKENS_READ),
        Some(_) => {
            return Err(ApiError::invalid(
                "table",
                "must be activity_events or token_usage",
            ))
        }
    };
    caller.require_scope(scope)?;
    let after = params.seq("after_seq")?.unwrap_or(0);
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let format = match params.one("format")? {
        Some(value) => Format::parse(value)?,
        None => Format::Ndjson,
    };
    let (from, to) = params.instant_range()?;
    let mut filters = SqlBuilder::default();
    if let Some(tenant) = caller.tenant_filter(params.text("tenant")?)? {
        filters.push("tenant_id = ", tenant);
    }
    if let Some(user) = caller.user_filter(None)? {
        filters.push("user_id = ", user);
    }
    if let Some(from) = from {
        filters.push("ts >= ", from);
    }
    if let Some(to) = to {
        filters.push("ts < ", to);
    }
    // First the page's bounds (its seqs only), so the headers can say where
    // the next page starts; then its rows, streamed line by line. Every row up
    // to `next` is committed (seq is commit-ordered), so both see the same rows.
    // The body streams after the response started, past the request's deadline:
    // its statements are bound by the connection's own statement timeout.
    let client = state
        .reads
        .get_bound(&caller.tenant, crate::db::Bound::Connection)
        .await?;
    let bounds = client
        .prepare_cached(&filters.seq_page_sql(table, "seq"))
        .await
        .map_err(ApiError::from_db)?;
    let fetch = i64::from(limit) + 1;
    let seqs = client
        .query(&bounds, &filters.with_page(&after, &fetch))
        .await
        .map_err(ApiError::from_db)?;
    let has_more = seqs.len() > limit as usize;
    let next = match seqs.get(seqs.len().min(limit as usize).wrapping_sub(1)) {
        Some(row) => row.try_get::<_, i64>(0).map_err(ApiError::from_db)?,
        None => after,
    };
    drop(seqs);
    let activity = table == "activity_events";
    let header = format.header(activity);
    let body = if next > after {
        let rows = client
            .prepare_cached(&filters.bounded_page_sql(table, columns))
            .await
            .map_err(ApiError::from_db)?;
        let stream = client
            .query_raw(&rows, filters.with_bounded_page(&after, &next, &fetch))
            .await
            .map_err(ApiError::from_db)?;
        // The connection stays with the body until its last row is sent.
        let lines = futures::StreamExt::map(stream, move |row| {
            let _connection = &client;
            let line = row.map_err(ApiError::from_db).and_then(|row| {
                let row = if activity {
                    RawRow::Activity(Box::new(
                        ActivityItem::from_row(&row).map_err(ApiError::from_db)?,
                    ))
                } else {
                    RawRow::Token(Box::new(
                        TokenItem::from_row(&row).map_err(ApiError::from_db)?,
                    ))
                };
                Ok(axum::body::Bytes::from(format.line(&row)?))
            });
            line.map_err(|error| {
                tracing::warn!(%error, "export: a row failed mid-response; ending it");
                std::io::Error::other(error.to_string())
            })
        });
        let head = futures::stream::iter(
            header.map(|h| Ok::<_, std::io::Error>(axum::body::Bytes::from_static(h.as_bytes()))),
        );
        axum::body::Body::from_stream(futures::StreamExt::chain(head, lines))
    } else {
        drop(client);
        match header {
            Some(header) => axum::body::Body::from(header),
            None => axum::body::Body::empty(),
        }
    };
    tracing::debug!(subject = %caller.subject, table, after, next, has_more, "export");
    let next_header =
        HeaderValue::from_str(&next.to_string()).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            ),
            (HeaderName::from_static(NEXT_AFTER_SEQ), next_header),
            (
                HeaderName::from_static(HAS_MORE),
                HeaderValue::from_static(if has_more { "true" } else { "false" }),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response())
}
