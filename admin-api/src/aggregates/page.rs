//! The aggregate routes' handler: one snapshot, the live rows of the
//! coarsest rollup that keeps the query's keys, grouped by period and keys,
//! one page at a time; grouped by user, one statement per period.

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use chrono::{Datelike, NaiveDate};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;

use super::{AggregateCursor, Grain, Spec, ACTIVITY, TOKENS};
use crate::caller::Caller;
use crate::error::ApiError;
use crate::params::{non_empty, pairs};
use crate::state::AppState;

/// The first day of the period holding `day`.
pub(super) fn period_of(grain: Grain, day: NaiveDate) -> NaiveDate {
    match grain {
        Grain::Day => day,
        Grain::Week => day - chrono::Days::new(u64::from(day.weekday().num_days_from_monday())),
        Grain::Month => day.with_day(1).unwrap_or(day),
    }
}

/// The periods of `from..to` (starting at `start`'s period when given), each
/// with the days of the window it holds: `(period, first day, end day)`.
pub(super) fn periods(
    grain: Grain,
    from: NaiveDate,
    to: NaiveDate,
    start: Option<NaiveDate>,
) -> Vec<(NaiveDate, NaiveDate, NaiveDate)> {
    let mut out = Vec::new();
    let mut period = period_of(grain, start.unwrap_or(from).max(from));
    while period < to {
        let next = match grain {
            Grain::Day => period.checked_add_days(chrono::Days::new(1)),
            Grain::Week => period.checked_add_days(chrono::Days::new(7)),
            Grain::Month => period.checked_add_months(chrono::Months::new(1)),
        };
        let Some(next) = next else { break };
        let (lo, hi) = (period.max(from), next.min(to));
        if lo < hi {
            out.push((period, lo, hi));
        }
        period = next;
    }
    out
}

/// Most by-user period statements sent at once (pipelined on one connection).
/// A page sends one statement first, which fills it when the data is dense, then
/// 2, 4, … at once while the periods are sparse.
const MAX_PERIODS_AT_ONCE: usize = 8;

/// A page of aggregate items.
#[derive(Debug, Serialize)]
pub struct AggregatePage {
    /// The page's groups, each with its keys and sums.
    pub items: Vec<Map<String, Value>>,
    /// The cursor of the next page (`None`: last page).
    pub next_cursor: Option<String>,
    /// The newest `seq` of the raw table the answer includes: it counts every
    /// row with `seq <= as_of_seq` the caller may see, and no other.
    pub as_of_seq: i64,
}

async fn aggregate(
    spec: &Spec,
    state: &AppState,
    caller: &Caller,
    uri: &Uri,
) -> Result<AggregatePage, ApiError> {
    caller.require_scope(spec.scope)?;
    let pairs = pairs(uri)?;
    let mut query = spec.parse(&pairs, caller)?;
    let all_tenants = matches!(caller.tenant, crate::caller::TenantAccess::All);
    let table = spec.table(&query, all_tenants);
    // Every statement of the answer reads one snapshot: the rollups, their
    // watermarks and the raw rows above them agree, and `as_of_seq` is the
    // newest row the answer includes.
    let mut client = state.reads.get_for(&caller.tenant).await?;
    let tx = crate::params::snapshot(&mut client).await?;
    // Over every tenant from a tenant-less rollup: the tail grouped in memory
    // when it can answer (see `crate::tailcache`), with the newest `seq` it
    // includes.
    let cached = match (
        all_tenants && !query.one_tenant() && table.all_tenants && !query.by_period(),
        spec.raw,
    ) {
        (true, "activity_events") => {
            state
                .tail_cache
                .activity_all(&tx, query.from, query.to)
                .await?
        }
        (true, "token_usage") => {
            state
                .tail_cache
                .tokens_all(&tx, query.from, query.to)
                .await?
        }
        _ => None,
    };
    // Grouped by user over every tenant: the tail's first groups of each
    // period from memory when the database orders text like Rust does (see
    // `crate::tailcache::keyed`).
    let grouped = match spec.raw {
        "activity_events" => crate::tailcache::Grouped::Activity,
        _ => crate::tailcache::Grouped::Tokens,
    };
    let keyed = all_tenants
        && query.by_period()
        && table.keys.contains(&"user")
        && state.tail_cache.byte_order(&tx).await?;
    let (mut as_of_seq, live) = match (&cached, keyed) {
        (Some((high, _)), _) => (
            Some(*high),
            crate::live::Snapshot::for_answer(&tx, !all_tenants || query.one_tenant()).await?,
        ),
        // Set from the cache below, or read then when it cannot answer.
        (None, true) => (
            None,
            crate::live::Snapshot::for_answer(&tx, !all_tenants || query.one_tenant()).await?,
        ),
        (None, false) => {
            let (seq, live) = futures::try_join!(
                crate::params::newest_seq(&tx, spec.raw),
                crate::live::Snapshot::for_answer(&tx, !all_tenants || query.one_tenant()),
            )?;
            (Some(seq), live)
        }
    };
    if query.by_period() && (query.from.is_none() || query.to.is_none()) {
        // The by-period form needs the window: the data's first and last day.
        let (sql, params) = spec.bounds_sql(&query, table);
        let rows = crate::live::query(&tx, &live, &sql, &params).await?;
        let bound = |column: &str| -> Result<Option<NaiveDate>, ApiError> {
            match rows.first() {
                Some(row) => row.try_get(column).map_err(ApiError::from_db),
                None => Ok(None),
            }
        };
        match (bound("first")?, bound("last")?) {
            (Some(first), Some(last)) => {
                let from = *query.from.get_or_insert(first);
                let to = *query.to.get_or_insert(last.succ_opt().unwrap_or(last));
                // The data's own span, when from/to are not both given, is capped too.
                query.grain.check_window(from, to)?;
            }
            _ => {
                let as_of_seq = match as_of_seq {
                    Some(seq) => seq,
                    None => crate::params::newest_seq(&tx, spec.raw).await?,
                };
                return Ok(AggregatePage {
                    items: Vec::new(),
                    next_cursor: None,
                    as_of_seq,
                });
            }
        }
    }
    let limit = query.limit as usize;
    let rows = match (query.by_period(), query.from, query.to) {
        (true, Some(from), Some(to)) => {
            let start = query.cursor.as_ref().map(|c| c.p);
            let periods = periods(query.grain, from, to, start);
            let pages = match keyed {
                true => {
                    let filters: Vec<(usize, &str)> = query
                        .filters
                        .iter()
                        .map(|(k, v)| (spec.position(k.name), v.as_str()))
                        .collect();
                    let group_by: Vec<usize> = query
                        .group_by
                        .iter()
                        .map(|k| spec.position(k.name))
                        .collect();
                    let pages = crate::tailcache::PagesQuery {
                        periods: &periods,
                        filters: &filters,
                        group_by: &group_by,
                        after: query.cursor.as_ref().map(|c| (c.p, c.k.as_slice())),
                        limit: limit + 1,
                    };
                    state.tail_cache.pages(&tx, grouped, &pages).await?
                }
                false => None,
            };
            let pages = match pages {
                Some((high, pages)) => {
                    as_of_seq = Some(high);
                    Some(pages.pages)
                }
                None => None,
            };
            let mut rows = Vec::new();
            let mut pending = periods.as_slice();
            let mut at_once = 1;
            while !pending.is_empty() && rows.len() <= limit {
                let done = periods.len() - pending.len();
                let (now, later) = pending.split_at(at_once.min(pending.len()));
                pending = later;
                at_once = (at_once * 2).min(MAX_PERIODS_AT_ONCE);
                let wanted = limit + 1 - rows.len();
                let statements: Vec<_> = now
                    .iter()
                    .enumerate()
                    .map(
                        |(i, period)| match pages.as_ref().and_then(|pages| pages.get(done + i)) {
                            Some(page) => {
                                spec.keyed_period_sql(&query, table, *period, wanted, page)
                            }
                            None => {
                                let (sql, params) = spec.period_sql(&query, table, *period, wanted);
                                (live.bind(&sql), params)
                            }
                        },
                    )
                    .collect();
                // Each period's rows come back in its own statement's order, and
                // the statements in period order.
                let answers =
                    futures::future::try_join_all(statements.iter().map(|(sql, params)| {
                        let params: Vec<&(dyn ToSql + Sync)> = params
                            .iter()
                            .map(|param| param.as_ref() as &(dyn ToSql + Sync))
                            .collect();
                        let tx = &tx;
                        async move { tx.query(sql.as_str(), &params).await }
                    }))
                    .await
                    .map_err(ApiError::from_db)?;
                rows.extend(answers.into_iter().flatten());
            }
            rows
        }
        _ => {
            let from_cache = cached.is_some();
            let (sql, params) = spec.to_sql(&query, all_tenants, cached.map(|(_, arrays)| arrays));
            match from_cache {
                true => crate::params::query_on(&tx, &sql, &params).await?,
                false => crate::live::query(&tx, &live, &sql, &params).await?,
            }
        }
    };
    let as_of_seq = match as_of_seq {
        Some(seq) => seq,
        None => crate::params::newest_seq(&tx, spec.raw).await?,
    };
    tx.commit().await.map_err(ApiError::from_db)?;
    let has_more = rows.len() > limit;
    let mut items = Vec::with_capacity(rows.len().min(limit));
    let mut last = None;
    for row in rows.iter().take(limit) {
        let mut item = Map::new();
        let period: NaiveDate = row.try_get("period").map_err(ApiError::from_db)?;
        item.insert("period".into(), Value::String(period.to_string()));
        let mut keys = Vec::with_capacity(query.group_by.len());
        for key in &query.group_by {
            let value: String = row.try_get(key.column).map_err(ApiError::from_db)?;
            keys.push(value.clone());
            item.insert(
                key.column.into(),
                non_empty(value).map_or(Value::Null, Value::String),
            );
        }
        for m in spec.measures {
            let value = if m.float {
                let v: Option<f64> = row.try_get(m.column).map_err(ApiError::from_db)?;
                serde_json::Number::from_f64(v.unwrap_or(0.0)).map_or(Value::Null, Value::Number)
            } else {
                let v: Option<i64> = row.try_get(m.column).map_err(ApiError::from_db)?;
                Value::from(v.unwrap_or(0))
            };
            item.insert(m.column.into(), value);
        }
        items.push(item);
        last = Some(AggregateCursor {
            v: 1,
            p: period,
            k: keys,
        });
    }
    let next_cursor = if has_more {
        last.map(|c| c.encode())
    } else {
        None
    };
    tracing::debug!(subject = %caller.subject, scope = spec.scope, items = items.len(), has_more, "aggregate query");
    Ok(AggregatePage {
        items,
        next_cursor,
        as_of_seq,
    })
}

/// `GET /api/v1/tokens/usage`.
pub(crate) async fn token_usage(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<AggregatePage>, ApiError> {
    Ok(Json(aggregate(&TOKENS, &state, &caller, &uri).await?))
}

/// `GET /api/v1/activity/aggregates`.
pub(crate) async fn activity_aggregates(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<AggregatePage>, ApiError> {
    Ok(Json(aggregate(&ACTIVITY, &state, &caller, &uri).await?))
}
