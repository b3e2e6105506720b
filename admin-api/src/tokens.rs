//! `GET /api/v1/tokens`: the token-usage ledger (raw `token_usage` rows),
//! filtered, newest first, with the same keyset cursors as `/activity`.

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::ToSql;

use crate::caller::{Caller, SCOPE_TOKENS_READ};
use crate::cursor::Cursor;
use crate::error::ApiError;
use crate::params::{pairs, Params, SqlBuilder};
use crate::state::AppState;

/// The query parameters `GET /api/v1/tokens` accepts.
pub const PARAMETERS: &[&str] = &[
    "tenant", "user", "model", "provider", "trace_id", "from", "to", "limit", "cursor",
];

/// A parsed and validated token-ledger query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokensQuery {
    /// Only this tenant's rows (`tenant`).
    pub tenant: Option<String>,
    /// Only this user's rows (`user`).
    pub user: Option<String>,
    /// Only this model's rows (`model`).
    pub model: Option<String>,
    /// Only this provider's rows (`provider`).
    pub provider: Option<String>,
    /// Only this trace (`trace_id`).
    pub trace_id: Option<String>,
    /// Inclusive lower bound on `ts`.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `ts`.
    pub to: Option<DateTime<Utc>>,
    /// Page size (`limit`).
    pub limit: u32,
    /// Where the page starts (`cursor`).
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

use crate::rows::{TokenItem, TOKEN_COLUMNS as COLUMNS};

/// A page of the token ledger.
#[derive(Debug, Serialize)]
pub struct TokenPage {
    /// The page's rows.
    pub items: Vec<TokenItem>,
    /// The cursor of the next page (`None`: last page).
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
    query.user = caller.user_filter(query.user.take())?;
    let (sql, params) = query.to_sql();
    let rows = crate::params::query(&state, &caller.tenant, &sql, &params).await?;

    let (items, next_cursor) = crate::cursor::page(&rows, query.limit, TokenItem::from_row)?;
    let has_more = next_cursor.is_some();
    tracing::debug!(subject = %caller.subject, items = items.len(), has_more, "tokens query");
    Ok(Json(TokenPage { items, next_cursor }))
}
