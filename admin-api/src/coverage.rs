//! `GET /api/v1/tokens/coverage`: per UTC day and model, the token totals the
//! instrumentations' metrics report (`token_metric_minutes`, unsampled) next
//! to the span-derived ledger's (`token_usage`: the daily rollup plus the rows
//! it has not folded yet, one row per model call as the ledger stores it), and
//! their ratios. A deployment that samples its traces sees how much of its
//! usage its span ledger holds, and its true totals.

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use chrono::{Days, NaiveDate, Utc};
use serde::Serialize;

use crate::aggregates::{Grain, TOKENS};
use crate::caller::{Caller, SCOPE_TOKENS_READ};
use crate::error::ApiError;
use crate::params::{pairs, Params, SqlBuilder};
use crate::state::AppState;

/// The query parameters `GET /api/v1/tokens/coverage` accepts.
pub const PARAMETERS: &[&str] = &["from", "to", "tenant", "model", "provider"];

/// Days of the window when `from` is not given.
pub const DEFAULT_WINDOW_DAYS: u64 = 30;

/// Most items in one answer: a window of [`Grain::Day`]'s longest span with
/// many models could be more; the answer then says `truncated`.
pub const MAX_ITEMS: usize = 10_000;

/// One day and model.
#[derive(Debug, Serialize, PartialEq)]
pub struct CoverageItem {
    /// The UTC day.
    pub day: NaiveDate,
    /// Response model, else request model (`""`: none reported).
    pub model: String,
    /// Input tokens in `gen_ai.client.token.usage` (token type input).
    pub metric_input_tokens: i64,
    /// Output tokens in `gen_ai.client.token.usage` (token type output).
    pub metric_output_tokens: i64,
    /// Calls the metric counted (observations of input tokens).
    pub metric_calls: i64,
    /// Input tokens of the span-derived ledger.
    pub span_input_tokens: i64,
    /// Output tokens of the span-derived ledger.
    pub span_output_tokens: i64,
    /// Calls in the span-derived ledger.
    pub span_calls: i64,
    /// `span_input_tokens / metric_input_tokens` (`null` when the metric has none).
    pub input_coverage: Option<f64>,
    /// `span_output_tokens / metric_output_tokens`.
    pub output_coverage: Option<f64>,
    /// `span_calls / metric_calls`.
    pub calls_coverage: Option<f64>,
}

/// The answer.
#[derive(Debug, Serialize)]
pub struct Coverage {
    /// First day of the window.
    pub from: NaiveDate,
    /// Day after the window (exclusive).
    pub to: NaiveDate,
    /// Ordered by day, then model.
    pub items: Vec<CoverageItem>,
    /// The sums over the items, with their ratios (`day` and `model` left out).
    pub totals: CoverageTotals,
    /// More than [`MAX_ITEMS`] items: the first are answered; narrow the window.
    pub truncated: bool,
}

/// The sums over the items.
#[derive(Debug, Serialize, Default)]
pub struct CoverageTotals {
    /// Input tokens the metric points counted.
    pub metric_input_tokens: i64,
    /// Output tokens the metric points counted.
    pub metric_output_tokens: i64,
    /// Calls the metric points counted.
    pub metric_calls: i64,
    /// Input tokens of the stored token rows.
    pub span_input_tokens: i64,
    /// Output tokens of the stored token rows.
    pub span_output_tokens: i64,
    /// Calls of the stored token rows.
    pub span_calls: i64,
    /// Span input tokens over metric input tokens (`None`: no metric tokens).
    pub input_coverage: Option<f64>,
    /// Span output tokens over metric output tokens (`None`: no metric tokens).
    pub output_coverage: Option<f64>,
    /// Span calls over metric calls (`None`: no metric calls).
    pub calls_coverage: Option<f64>,
}

fn ratio(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// A parsed query.
#[derive(Debug, PartialEq, Eq)]
struct CoverageQuery {
    from: NaiveDate,
    to: NaiveDate,
    tenant: Option<String>,
    model: Option<String>,
    provider: Option<String>,
}

impl CoverageQuery {
    fn parse(
        pairs: &[(String, String)],
        caller: &Caller,
        today: NaiveDate,
    ) -> Result<CoverageQuery, ApiError> {
        let params = Params::new(pairs, PARAMETERS)?;
        let (from, to) = params.day_range()?;
        let to = match to {
            Some(to) => to,
            None => today
                .checked_add_days(Days::new(1))
                .ok_or_else(|| ApiError::invalid("to", "out of range"))?,
        };
        let from = match from {
            Some(from) => from,
            None => to
                .checked_sub_days(Days::new(DEFAULT_WINDOW_DAYS))
                .ok_or_else(|| ApiError::invalid("from", "out of range"))?,
        };
        if from > to {
            return Err(ApiError::invalid("from", "must not be after to"));
        }
        let days = (to - from).num_days();
        let max = Grain::Day.max_window_days();
        if days > max {
            return Err(ApiError::WindowTooLarge(format!(
                "the window from {from} to {to} spans {days} days; it may span at most {max} days: narrow from/to"
            )));
        }
        Ok(CoverageQuery {
            from,
            to,
            tenant: caller.tenant_filter(params.text("tenant")?)?,
            model: params.text("model")?,
            provider: params.text("provider")?,
        })
    }

    /// The statement and its parameters: metric sums and span sums per day and
    /// model, full-joined.
    fn to_sql(
        &self,
    ) -> (
        String,
        Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
    ) {
        let mut sql = SqlBuilder::default();
        let from = sql.param(self.from);
        let to = sql.param(self.to);
        let mut metric = vec![
            format!("minute >= ({from})::date::timestamp AT TIME ZONE 'UTC'"),
            format!("minute < ({to})::date::timestamp AT TIME ZONE 'UTC'"),
            "token_type IN ('input', 'output')".to_owned(),
        ];
        let mut span = vec![format!("day >= {from}"), format!("day < {to}")];
        for (column, value) in [
            ("tenant_id", &self.tenant),
            ("model", &self.model),
            ("provider", &self.provider),
        ] {
            if let Some(value) = value {
                let p = sql.param(value.clone());
                metric.push(format!("{column} = {p}"));
                span.push(format!("{column} = {p}"));
            }
        }
        let limit = sql.param(i64::try_from(MAX_ITEMS).unwrap_or(i64::MAX) + 1);
        let live = TOKENS.live("token_usage_daily_tenant", &from, &to);
        let text = format!(
            "WITH m AS (SELECT (minute AT TIME ZONE 'UTC')::date AS day, model, \
                 sum(tokens_sum) FILTER (WHERE token_type = 'input') AS input, \
                 sum(tokens_sum) FILTER (WHERE token_type = 'output') AS output, \
                 sum(calls_count) FILTER (WHERE token_type = 'input') AS calls \
               FROM token_metric_minutes WHERE {} GROUP BY 1, 2), \
             s AS (SELECT day, model, sum(input_tokens) AS input, sum(output_tokens) AS output, \
                 sum(requests) AS calls FROM {live} WHERE {} GROUP BY 1, 2) \
             SELECT coalesce(m.day, s.day) AS day, coalesce(m.model, s.model) AS model, \
                 coalesce(m.input, 0)::int8, coalesce(m.output, 0)::int8, \
                 coalesce(m.calls, 0)::int8, coalesce(s.input, 0)::int8, \
                 coalesce(s.output, 0)::int8, coalesce(s.calls, 0)::int8 \
             FROM m FULL JOIN s ON m.day = s.day AND m.model = s.model \
             ORDER BY 1, 2 LIMIT {limit}",
            metric.join(" AND "),
            span.join(" AND "),
        );
        (text, sql.params)
    }
}

/// `GET /api/v1/tokens/coverage`.
pub(crate) async fn coverage(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<Coverage>, ApiError> {
    caller.require_scope(SCOPE_TOKENS_READ)?;
    // The metrics carry no user: a self:read caller has no rows of its own here.
    caller.require_not_self()?;
    let pairs = pairs(&uri)?;
    let query = CoverageQuery::parse(&pairs, &caller, Utc::now().date_naive())?;
    let (sql, params) = query.to_sql();
    let rows = crate::params::query(&state, &caller.tenant, &sql, &params).await?;
    let truncated = rows.len() > MAX_ITEMS;
    let mut totals = CoverageTotals::default();
    let mut items = Vec::with_capacity(rows.len().min(MAX_ITEMS));
    for row in rows.iter().take(MAX_ITEMS) {
        let get = |i: usize| row.try_get::<_, i64>(i).map_err(ApiError::from_db);
        let item = CoverageItem {
            day: row.try_get(0).map_err(ApiError::from_db)?,
            model: row.try_get(1).map_err(ApiError::from_db)?,
            metric_input_tokens: get(2)?,
            metric_output_tokens: get(3)?,
            metric_calls: get(4)?,
            span_input_tokens: get(5)?,
            span_output_tokens: get(6)?,
            span_calls: get(7)?,
            input_coverage: ratio(get(5)?, get(2)?),
            output_coverage: ratio(get(6)?, get(3)?),
            calls_coverage: ratio(get(7)?, get(4)?),
        };
        totals.metric_input_tokens += item.metric_input_tokens;
        totals.metric_output_tokens += item.metric_output_tokens;
        totals.metric_calls += item.metric_calls;
        totals.span_input_tokens += item.span_input_tokens;
        totals.span_output_tokens += item.span_output_tokens;
        totals.span_calls += item.span_calls;
        items.push(item);
    }
    totals.input_coverage = ratio(totals.span_input_tokens, totals.metric_input_tokens);
    totals.output_coverage = ratio(totals.span_output_tokens, totals.metric_output_tokens);
    totals.calls_coverage = ratio(totals.span_calls, totals.metric_calls);
    tracing::debug!(subject = %caller.subject, items = items.len(), truncated, "token coverage");
    Ok(Json(Coverage {
        from: query.from,
        to: query.to,
        items,
        totals,
        truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::TenantAccess;

    fn pairs(query: &str) -> Vec<(String, String)> {
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (n, v) = p.split_once('=').unwrap_or((p, ""));
                (n.to_owned(), v.to_owned())
            })
            .collect()
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("date")
    }

    #[test]
    fn window_defaults_caps_and_bound_filters() {
        let caller = Caller::anonymous();
        let today = day("2026-12-06");
        let q = CoverageQuery::parse(&[], &caller, today).expect("defaults");
        assert_eq!((q.from, q.to), (day("2026-11-07"), day("2026-12-07")));
        let q = CoverageQuery::parse(
            &pairs("from=2026-01-01&to=2026-02-01&model=gpt'--&tenant=acme"),
            &caller,
            today,
        )
        .expect("explicit");
        let (sql, params) = q.to_sql();
        assert!(!sql.contains("gpt'"), "{sql}");
        assert_eq!(params.len(), 5);
        assert!(sql.contains("tenant_id = $3 AND model = $4"), "{sql}");
        assert!(
            sql.contains("FROM token_usage_daily_tenant UNION ALL"),
            "{sql}"
        );
        let too_long =
            CoverageQuery::parse(&pairs("from=2020-01-01&to=2026-01-01"), &caller, today);
        assert!(matches!(too_long, Err(ApiError::WindowTooLarge(_))));
        assert!(CoverageQuery::parse(&pairs("group_by=user"), &caller, today).is_err());
        assert!(
            CoverageQuery::parse(&pairs("from=2026-02-01&to=2026-01-01"), &caller, today).is_err()
        );
    }

    #[test]
    fn a_tenant_caller_is_held_to_its_tenant() {
        let mut caller = Caller::anonymous();
        caller.tenant = TenantAccess::One("acme".into());
        let today = day("2026-12-06");
        let q = CoverageQuery::parse(&[], &caller, today).expect("own");
        assert_eq!(q.tenant.as_deref(), Some("acme"));
        assert!(matches!(
            CoverageQuery::parse(&pairs("tenant=other"), &caller, today),
            Err(ApiError::Forbidden(_))
        ));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(10, 100), Some(0.1));
        assert_eq!(ratio(10, 0), None);
    }
}
