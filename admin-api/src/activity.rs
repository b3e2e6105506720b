//! `GET /api/v1/activity`: the filtered, cursor-paginated activity log.
//!
//! Every filter value is bound as a query parameter; the SQL text only depends on
//! which filters are present. Pages are newest first (`ORDER BY ts DESC, id DESC`)
//! and fetched with `limit + 1` rows to know whether another page exists.

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::ToSql;

use tally_model::Outcome;

use crate::caller::{Caller, SCOPE_ACTIVITY_READ};
use crate::cursor::Cursor;
use crate::error::ApiError;
use crate::params::{Params, SqlBuilder};
use crate::state::AppState;

/// The query parameters `GET /api/v1/activity` accepts.
pub const PARAMETERS: &[&str] = &[
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
    "limit",
    "cursor",
];

/// Largest `min_duration_ms` accepted: about 31 years (the OpenAPI `maximum`).
pub const MAX_DURATION_MS: f64 = 1e12;

/// Parses `min_duration_ms`: a finite number of milliseconds, 0 ..= [`MAX_DURATION_MS`].
pub(crate) fn min_duration_ms(value: &str) -> Result<f64, ApiError> {
    match value.trim().parse::<f64>() {
        Ok(ms) if ms.is_finite() && (0.0..=MAX_DURATION_MS).contains(&ms) => Ok(ms),
        _ => Err(ApiError::invalid(
            "min_duration_ms",
            "must be a number of milliseconds between 0 and 1000000000000",
        )),
    }
}

/// How `action` is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionFilter {
    /// `action=*` or absent.
    Any,
    /// `action=auth.login`.
    Exact(String),
    /// `action=auth.*`: actions starting with `auth.` (the prefix keeps the dot).
    Prefix(String),
}

/// A parsed and validated activity query.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityQuery {
    /// Only this tenant's rows (`tenant`).
    pub tenant: Option<String>,
    /// Only this user's rows (`user`).
    pub user: Option<String>,
    /// Only these actions (`action`, exact or `prefix.*`).
    pub action: ActionFilter,
    /// Only this outcome (`outcome`).
    pub outcome: Option<Outcome>,
    /// Only this resource type (`resource_type`).
    pub resource_type: Option<String>,
    /// Only this resource id (`resource_id`).
    pub resource_id: Option<String>,
    /// Only this trace (`trace_id`).
    pub trace_id: Option<String>,
    /// Exact `name` (span name or log event name).
    pub name: Option<String>,
    /// Rows with `duration_ms >=` this (rows without a duration never match).
    pub min_duration_ms: Option<f64>,
    /// Inclusive lower bound on `ts`.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `ts`.
    pub to: Option<DateTime<Utc>>,
    /// Page size (`limit`).
    pub limit: u32,
    /// Where the page starts (`cursor`).
    pub cursor: Option<Cursor>,
}

impl ActivityQuery {
    /// Parses decoded `name=value` pairs; unknown, repeated or bad parameters are 400.
    pub fn parse(
        pairs: &[(String, String)],
        default_limit: u32,
        max_limit: u32,
    ) -> Result<ActivityQuery, ApiError> {
        let params = Params::new(pairs, PARAMETERS)?;
        let action = match params.one("action")? {
            None | Some("*") => ActionFilter::Any,
            Some(value) => match value.strip_suffix(".*") {
                Some(prefix) if !prefix.is_empty() && !prefix.contains('*') => {
                    ActionFilter::Prefix(format!("{prefix}."))
                }
                _ if value.contains('*') => {
                    return Err(ApiError::invalid(
                        "action",
                        "'*' is only allowed alone or as a trailing '.*' (e.g. auth.*)",
                    ))
                }
                _ => ActionFilter::Exact(value.to_owned()),
            },
        };
        let outcome = params.outcome()?;
        let (from, to) = params.time_range()?;
        Ok(ActivityQuery {
            tenant: params.text("tenant")?,
            user: params.text("user")?,
            action,
            outcome,
            resource_type: params.text("resource_type")?,
            resource_id: params.text("resource_id")?,
            trace_id: params.trace_id()?,
            name: params.text("name")?,
            min_duration_ms: params
                .one("min_duration_ms")?
                .map(min_duration_ms)
                .transpose()?,
            from,
            to,
            limit: params.limit(default_limit, max_limit)?,
            cursor: params.one("cursor")?.map(Cursor::decode).transpose()?,
        })
    }

    /// The SQL text and its parameters (`limit + 1` rows).
    pub fn to_sql(&self) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
        let mut sql = self.filter_sql();
        if let Some(cursor) = self.cursor {
            let ts = sql.param(cursor.ts);
            let id = sql.param(cursor.id);
            sql.clauses.push(format!("(ts, id) < ({ts}, {id})"));
        }
        let where_clause = sql.where_clause();
        let limit = sql.param(i64::from(self.limit) + 1);
        let text = format!(
            "SELECT {COLUMNS} FROM activity_events{where_clause} ORDER BY ts DESC, id DESC LIMIT {limit}"
        );
        (text, sql.params)
    }

    /// The filter clauses (no cursor, no limit), shared with the live feed.
    pub(crate) fn filter_sql(&self) -> SqlBuilder {
        let mut sql = SqlBuilder::default();
        if let Some(tenant) = &self.tenant {
            sql.push("tenant_id = ", tenant.clone());
        }
        if let Some(user) = &self.user {
            sql.push("user_id = ", user.clone());
        }
        match &self.action {
            ActionFilter::Any => {}
            ActionFilter::Exact(action) => sql.push("action = ", action.clone()),
            ActionFilter::Prefix(prefix) => sql.push_with_suffix(
                "action LIKE ",
                format!("{}%", escape_like(prefix)),
                " ESCAPE '\\'",
            ),
        }
        if let Some(outcome) = self.outcome {
            sql.push("outcome = ", outcome.as_str().to_owned());
        }
        if let Some(resource_type) = &self.resource_type {
            sql.push("resource_type = ", resource_type.clone());
        }
        if let Some(resource_id) = &self.resource_id {
            sql.push("resource_id = ", resource_id.clone());
        }
        if let Some(trace_id) = &self.trace_id {
            sql.push("trace_id = ", trace_id.clone());
        }
        if let Some(name) = &self.name {
            sql.push("name = ", name.clone());
        }
        if let Some(ms) = self.min_duration_ms {
            sql.push("duration_ms >= ", ms);
        }
        if let Some(from) = self.from {
            sql.push("ts >= ", from);
        }
        if let Some(to) = self.to {
            sql.push("ts < ", to);
        }
        sql
    }
}

use crate::rows::{ActivityItem, ACTIVITY_COLUMNS as COLUMNS};

/// Escapes LIKE's metacharacters (`\`, `%`, `_`) with `\`.
pub(crate) fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// A page of the activity log.
#[derive(Debug, Serialize)]
pub struct ActivityPage {
    /// The page's rows.
    pub items: Vec<ActivityItem>,
    /// The cursor of the next page (`None`: last page).
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/activity`.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<ActivityPage>, ApiError> {
    caller.require_scope(SCOPE_ACTIVITY_READ)?;
    let pairs = crate::params::pairs(&uri)?;
    let mut query = ActivityQuery::parse(&pairs, state.default_page_size, state.max_page_size)?;
    query.tenant = caller.tenant_filter(query.tenant.take())?;
    query.user = caller.user_filter(query.user.take())?;

    let (sql, params) = query.to_sql();
    let rows = crate::params::query(&state, &caller.tenant, &sql, &params).await?;

    let (items, next_cursor) = crate::cursor::page(&rows, query.limit, ActivityItem::from_row)?;
    let has_more = next_cursor.is_some();
    tracing::debug!(
        subject = %caller.subject,
        items = items.len(),
        has_more,
        "activity query"
    );
    Ok(Json(ActivityPage { items, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::format_ts;

    fn parse(query: &str) -> Result<ActivityQuery, ApiError> {
        let pairs: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (n, v) = p.split_once('=').unwrap_or((p, ""));
                (n.to_owned(), v.to_owned())
            })
            .collect();
        ActivityQuery::parse(&pairs, 50, 1000)
    }

    fn param_of(error: ApiError) -> String {
        match error {
            ApiError::InvalidParameter { parameter, .. } => parameter,
            ApiError::InvalidCursor(_) => "cursor".to_owned(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn actions() {
        assert_eq!(parse("action=*").unwrap().action, ActionFilter::Any);
        assert_eq!(
            parse("action=auth.*").unwrap().action,
            ActionFilter::Prefix("auth.".into())
        );
        assert_eq!(
            parse("action=auth.login").unwrap().action,
            ActionFilter::Exact("auth.login".into())
        );
        for bad in ["action=.*", "action=a*", "action=*.*", "action=a.*.*"] {
            assert_eq!(param_of(parse(bad).unwrap_err()), "action", "{bad}");
        }
        assert_eq!(escape_like(r"a_b%c\d"), r"a\_b\%c\\d");
    }

    #[test]
    fn bounds_and_names() {
        assert_eq!(parse("").unwrap().limit, 50);
        assert_eq!(parse("limit=1000").unwrap().limit, 1000);
        for bad in ["limit=0", "limit=1001", "limit=-1", "limit=x"] {
            assert_eq!(param_of(parse(bad).unwrap_err()), "limit");
        }
        assert_eq!(param_of(parse("usr=a").unwrap_err()), "usr");
        assert_eq!(param_of(parse("user=a&user=b").unwrap_err()), "user");
        assert_eq!(param_of(parse("user=").unwrap_err()), "user");
        assert_eq!(
            param_of(parse("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z").unwrap_err()),
            "from"
        );
    }

    #[test]
    fn timestamps_round_up_to_microseconds() {
        let q = parse("from=2026-01-01T00:00:00.0000001Z&to=2026-01-01T02:00:00.0000001+01:00")
            .unwrap();
        assert_eq!(format_ts(q.from.unwrap()), "2026-01-01T00:00:00.000001Z");
        assert_eq!(format_ts(q.to.unwrap()), "2026-01-01T01:00:00.000001Z");
    }

    #[test]
    fn sql_binds_everything() {
        let q = parse("tenant=x'--&user=u&action=a_b.*&outcome=failure&resource_type=r&resource_id=i&trace_id=0123456789ABCDEF0123456789abcdef&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z").unwrap();
        assert_eq!(
            q.trace_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        let (sql, params) = q.to_sql();
        assert!(!sql.contains("x'"), "{sql}");
        assert_eq!(params.len(), 10);
        assert!(sql.contains("action LIKE $3 ESCAPE '\\'"), "{sql}");
        assert!(
            sql.ends_with("ORDER BY ts DESC, id DESC LIMIT $10"),
            "{sql}"
        );
    }
}
