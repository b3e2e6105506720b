//! `GET /api/v1/tokens`: the token-usage ledger (raw `token_usage` rows),
//! filtered, newest first, with the same keyset cursors as `/activity`.

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::activity::format_ts;
use crate::auth::{Caller, SCOPE_TOKENS_READ};
use crate::cursor::Cursor;
use crate::error::ApiError;
use crate::params::{non_empty, pairs, Params, SqlBuilder};
use crate::AppState;

/// The query parameters `GET /api/v1/tokens` accepts.
pub const PARAMETERS: &[&str] = &[
    "tenant", "user", "model", "provider", "trace_id", "from", "to", "limit", "cursor",
];

/// A parsed and validated token-ledger query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokensQuery {
    pub tenant: Option<String>,
    pub user: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub trace_id: Option<String>,
    /// Inclusive lower bound on `ts`.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `ts`.
    pub to: Option<DateTime<Utc>>,
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

impl TokensQuery {
    /// Parses decoded `name=value` pairs; unknown, repeated or bad parameters are 400.
    pub fn parse(
        pairs: &[(String, String)],
        default_limit: u32,
        max_limit: u32,
    ) -> Result<TokensQuery, ApiError> {
        let params = Params::new(pairs, PARAMETERS)?;
        let (from, to) = params.time_range()?;
        Ok(TokensQuery {
            tenant: params.text("tenant")?,
            user: params.text("user")?,
            model: params.text("model")?,
            provider: params.text("provider")?,
            trace_id: params.trace_id()?,
            from,
            to,
            limit: params.limit(default_limit, max_limit)?,
            cursor: params.one("cursor")?.map(Cursor::decode).transpose()?,
        })
    }

    /// The SQL text and its parameters (`limit + 1` rows).
    pub fn to_sql(&self) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
        let mut sql = SqlBuilder::default();
        if let Some(tenant) = &self.tenant {
            sql.push("tenant_id = ", tenant.clone());
        }
        if let Some(user) = &self.user {
            sql.push("user_id = ", user.clone());
        }
        if let Some(model) = &self.model {
            sql.push("model = ", model.clone());
        }
        if let Some(provider) = &self.provider {
            sql.push("provider = ", provider.clone());
        }
        if let Some(trace_id) = &self.trace_id {
            sql.push("trace_id = ", trace_id.clone());
        }
        if let Some(from) = self.from {
            sql.push("ts >= ", from);
        }
        if let Some(to) = self.to {
            sql.push("ts < ", to);
        }
        if let Some(cursor) = self.cursor {
            let ts = sql.param(cursor.ts);
            let id = sql.param(cursor.id);
            sql.clauses.push(format!("(ts, id) < ({ts}, {id})"));
        }
        let where_clause = sql.where_clause();
        let limit = sql.param(i64::from(self.limit) + 1);
        let text = format!(
            "SELECT {COLUMNS} FROM token_usage{where_clause} ORDER BY ts DESC, id DESC LIMIT {limit}"
        );
        (text, sql.params)
    }
}

const COLUMNS: &str = "id, seq, ts, received_at, tenant_id, user_id, session_id, service, \
     trace_id, span_id, provider, operation, request_model, response_model, model, input_tokens, \
     output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, \
     usage_known, cost_usd::float8 AS cost_usd, outcome, duration_ms, attribution_source, attributes";

/// One item of the response, with the `token_usage` column names.
#[derive(Debug, Serialize)]
pub struct TokenItem {
    pub id: Uuid,
    pub seq: i64,
    pub ts: String,
    pub received_at: String,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub service: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub provider: Option<String>,
    pub operation: Option<String>,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    pub model: Option<String>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cache_read_tokens: Option<i64>,
    pub cache_write_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    pub usage_known: bool,
    /// Estimated cost in US dollars; `null` when the model has no price.
    pub cost_usd: Option<f64>,
    pub outcome: String,
    pub duration_ms: Option<f64>,
    /// `record`, `trace` or `none`.
    pub attribution_source: String,
    pub attributes: serde_json::Value,
}

impl TokenItem {
    fn from_row(row: &Row) -> Result<(TokenItem, Cursor), tokio_postgres::Error> {
        let ts: DateTime<Utc> = row.try_get("ts")?;
        let received_at: DateTime<Utc> = row.try_get("received_at")?;
        let id: Uuid = row.try_get("id")?;
        let item = TokenItem {
            id,
            seq: row.try_get("seq")?,
            ts: format_ts(ts),
            received_at: format_ts(received_at),
            tenant_id: non_empty(row.try_get("tenant_id")?),
            user_id: row.try_get("user_id")?,
            session_id: row.try_get("session_id")?,
            service: row.try_get("service")?,
            trace_id: row.try_get("trace_id")?,
            span_id: row.try_get("span_id")?,
            provider: row.try_get("provider")?,
            operation: row.try_get("operation")?,
            request_model: row.try_get("request_model")?,
            response_model: row.try_get("response_model")?,
            model: row.try_get("model")?,
            input_tokens: row.try_get("input_tokens")?,
            output_tokens: row.try_get("output_tokens")?,
            cache_read_tokens: row.try_get("cache_read_tokens")?,
            cache_write_tokens: row.try_get("cache_write_tokens")?,
            reasoning_tokens: row.try_get("reasoning_tokens")?,
            total_tokens: row.try_get("total_tokens")?,
            usage_known: row.try_get("usage_known")?,
            cost_usd: row.try_get("cost_usd")?,
            outcome: row.try_get("outcome")?,
            duration_ms: row.try_get("duration_ms")?,
            attribution_source: row.try_get("attribution_source")?,
            attributes: row.try_get("attributes")?,
        };
        Ok((item, Cursor { ts, id }))
    }
}

/// A page of the token ledger.
#[derive(Debug, Serialize)]
pub struct TokenPage {
    pub items: Vec<TokenItem>,
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/tokens`.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<TokenPage>, ApiError> {
    caller.require_scope(SCOPE_TOKENS_READ)?;
    let pairs = pairs(&uri)?;
    let mut query = TokensQuery::parse(&pairs, state.default_page_size, state.max_page_size)?;
    query.tenant = caller.tenant_filter(query.tenant.take())?;
    let (sql, params) = query.to_sql();
    let rows = crate::params::query(&state, &sql, &params).await?;

    let limit = query.limit as usize;
    let has_more = rows.len() > limit;
    let mut items = Vec::with_capacity(rows.len().min(limit));
    let mut last = None;
    for row in rows.iter().take(limit) {
        let (item, cursor) = TokenItem::from_row(row).map_err(ApiError::from_db)?;
        items.push(item);
        last = Some(cursor);
    }
    let next_cursor = if has_more {
        last.map(|cursor| cursor.encode())
    } else {
        None
    };
    tracing::debug!(subject = %caller.subject, items = items.len(), has_more, "tokens query");
    Ok(Json(TokenPage { items, next_cursor }))
}
