//! `GET /api/v1/tokens/usage` and `GET /api/v1/activity/aggregates`: sums over
//! the daily rollups (`token_usage_daily`, `activity_daily` and their coarser
//! copies) plus the raw rows above each rollup's watermark (the live tail,
//! issue 18), by day, ISO week (Monday) or month, grouped by any of the
//! route's keys.
//!
//! Items are ordered by `period`, then the group keys (in the route's canonical
//! key order), and paginated with a keyset cursor over that order: at most
//! `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) items per page.
//!
//! This module: the routes' keys, measures and rollups, and the parsed query.
//! `sql`: the statements; `keyed`: a by-user period's statement with the
//! tail's groups from memory; `page`: the handler.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::caller::{Caller, SCOPE_ACTIVITY_READ, SCOPE_TOKENS_READ};
use crate::error::ApiError;
use crate::params::Params;

mod keyed;
mod page;
mod sql;

pub use page::AggregatePage;
pub(crate) use page::{activity_aggregates, token_usage};

/// Default number of items per page of an aggregate route.
pub const DEFAULT_LIMIT: u32 = 1000;
/// Largest `limit` of an aggregate route.
pub const MAX_LIMIT: u32 = 10_000;

/// `day`, `week` (ISO week, starting Monday) or `month`; days are UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// By day.
    Day,
    /// By ISO week (from Monday).
    Week,
    /// By calendar month.
    Month,
}

impl Grain {
    fn parse(value: Option<&str>) -> Result<Grain, ApiError> {
        match value {
            None | Some("day") => Ok(Grain::Day),
            Some("week") => Ok(Grain::Week),
            Some("month") => Ok(Grain::Month),
            Some(_) => Err(ApiError::invalid(
                "grain",
                "must be one of day, week, month",
            )),
        }
    }

    /// The longest window (`to - from`, in days) a query at this grain may ask
    /// for: 400 days by day, about 5 years by week (261 weeks), 10 years by
    /// month (120 months). A longer one is 400 `window_too_large`: grouped by
    /// user, a page runs one statement per period of the window.
    pub const fn max_window_days(self) -> i64 {
        match self {
            Grain::Day => 400,
            Grain::Week => 261 * 7,
            Grain::Month => 3653,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Grain::Day => "day",
            Grain::Week => "week",
            Grain::Month => "month",
        }
    }

    /// 400 `window_too_large` when `from..to` is longer than this grain allows.
    fn check_window(self, from: NaiveDate, to: NaiveDate) -> Result<(), ApiError> {
        let days = (to - from).num_days();
        if days > self.max_window_days() {
            return Err(ApiError::WindowTooLarge(format!(
                "the window from {from} to {to} spans {days} days; at grain={} it may span at most {} days: narrow from/to or use a coarser grain",
                self.name(),
                self.max_window_days()
            )));
        }
        Ok(())
    }

    fn sql(self) -> &'static str {
        match self {
            Grain::Day => "day",
            Grain::Week => "date_trunc('week', day::timestamp)::date",
            Grain::Month => "date_trunc('month', day::timestamp)::date",
        }
    }
}

/// A group key: its `group_by` name and its column (also its JSON name).
struct Key {
    name: &'static str,
    column: &'static str,
    /// Its value in a raw row, as the rollup job folds it.
    raw: &'static str,
}

/// A summed column and whether it is a float (cost) rather than a count.
struct Measure {
    column: &'static str,
    float: bool,
    /// One raw row's contribution, as the rollup job folds it.
    raw: &'static str,
}

/// A rollup table and the group keys (by name) it keeps.
struct Table {
    name: &'static str,
    keys: &'static [&'static str],
    /// Without `tenant_id`: readable by platform callers (`tenant: "*"`) only.
    all_tenants: bool,
}

/// One aggregate route over its rollup tables.
pub(crate) struct Spec {
    /// Coarsest first; the last one keeps every key.
    tables: &'static [Table],
    /// The raw table the rollups are folded from (the live tail is read there).
    raw: &'static str,
    /// Its `rollup_watermarks.name`: the rollups hold exactly its rows with
    /// `seq <=` that watermark.
    watermark: &'static str,
    /// The per-user weekly rollup (migration 0029: tenant, ISO week, user and
    /// the measures), folded with the last table under the same watermark.
    user_weekly: &'static str,
    scope: &'static str,
    /// Canonical order; also the accepted `group_by` values and filters (by name).
    keys: &'static [Key],
    measures: &'static [Measure],
    parameters: &'static [&'static str],
}

const fn count(column: &'static str, raw: &'static str) -> Measure {
    Measure {
        column,
        float: false,
        raw,
    }
}

/// `GET /api/v1/tokens/usage` over `token_usage_daily`.
pub(crate) const TOKENS: Spec = Spec {
    tables: &[
        Table {
            name: "token_usage_daily_all",
            keys: &["provider", "model"],
            all_tenants: true,
        },
        Table {
            name: "token_usage_daily_tenant",
            keys: &["tenant", "provider", "model"],
            all_tenants: false,
        },
        Table {
            name: "token_usage_daily",
            keys: &["tenant", "user", "provider", "model"],
            all_tenants: false,
        },
    ],
    raw: "token_usage",
    watermark: "token_usage_daily",
    user_weekly: "token_usage_user_weekly",
    scope: SCOPE_TOKENS_READ,
    keys: &[
        Key {
            name: "tenant",
            column: "tenant_id",
            raw: "tenant_id",
        },
        Key {
            name: "user",
            column: "user_id",
            raw: "coalesce(user_id, '')",
        },
        Key {
            name: "provider",
            column: "provider",
            raw: "coalesce(provider, '')",
        },
        Key {
            name: "model",
            column: "model",
            raw: "coalesce(model, '')",
        },
    ],
    measures: &[
        count("requests", "1::int8"),
        count(
            "unknown_usage_requests",
            "CASE WHEN usage_known THEN 0 ELSE 1 END::int8",
        ),
        count(
            "unpriced_requests",
            "CASE WHEN usage_known AND cost_usd IS NULL THEN 1 ELSE 0 END::int8",
        ),
        count("input_tokens", "coalesce(input_tokens, 0)"),
        count("output_tokens", "coalesce(output_tokens, 0)"),
        count("cache_read_tokens", "coalesce(cache_read_tokens, 0)"),
        count("cache_write_tokens", "coalesce(cache_write_tokens, 0)"),
        count("reasoning_tokens", "coalesce(reasoning_tokens, 0)"),
        count("total_tokens", "coalesce(total_tokens, 0)"),
        Measure {
            column: "cost_usd",
            float: true,
            raw: "coalesce(cost_usd, 0)",
        },
    ],
    parameters: TOKEN_USAGE_PARAMETERS,
};

/// The query parameters `GET /api/v1/tokens/usage` accepts.
pub const TOKEN_USAGE_PARAMETERS: &[&str] = &[
    "grain", "group_by", "tenant", "user", "provider", "model", "from", "to", "limit", "cursor",
];

/// `GET /api/v1/activity/aggregates` over `activity_daily`.
pub(crate) const ACTIVITY: Spec = Spec {
    tables: &[
        Table {
            name: "activity_daily_all",
            keys: &["action", "outcome"],
            all_tenants: true,
        },
        Table {
            name: "activity_daily_tenant",
            keys: &["tenant", "action", "outcome"],
            all_tenants: false,
        },
        Table {
            name: "activity_daily",
            keys: &["tenant", "user", "action", "outcome"],
            all_tenants: false,
        },
    ],
    raw: "activity_events",
    watermark: "activity_daily",
    user_weekly: "activity_user_weekly",
    scope: SCOPE_ACTIVITY_READ,
    keys: &[
        Key {
            name: "tenant",
            column: "tenant_id",
            raw: "tenant_id",
        },
        Key {
            name: "user",
            column: "user_id",
            raw: "coalesce(user_id, '')",
        },
        Key {
            name: "action",
            column: "action",
            raw: "action",
        },
        Key {
            name: "outcome",
            column: "outcome",
            raw: "outcome",
        },
    ],
    measures: &[count("events", "1::int8")],
    parameters: ACTIVITY_AGGREGATE_PARAMETERS,
};

/// The query parameters `GET /api/v1/activity/aggregates` accepts.
pub const ACTIVITY_AGGREGATE_PARAMETERS: &[&str] = &[
    "grain", "group_by", "tenant", "user", "action", "outcome", "from", "to", "limit", "cursor",
];

/// The position after the last item of a page.
#[derive(Debug, Serialize, Deserialize)]
struct AggregateCursor {
    v: u8,
    p: NaiveDate,
    k: Vec<String>,
}

impl AggregateCursor {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(text: &str, keys: usize) -> Result<AggregateCursor, ApiError> {
        let invalid = || {
            ApiError::InvalidCursor(
                "not a cursor returned by this API for these group_by keys".to_owned(),
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        let cursor: AggregateCursor = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if cursor.v != 1 || cursor.k.len() != keys {
            return Err(invalid());
        }
        Ok(cursor)
    }
}

/// A parsed aggregate query.
struct AggregateQuery<'s> {
    grain: Grain,
    group_by: Vec<&'s Key>,
    filters: Vec<(&'s Key, String)>,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    limit: u32,
    cursor: Option<AggregateCursor>,
}

impl AggregateQuery<'_> {
    /// Filtered to one named tenant.
    fn one_tenant(&self) -> bool {
        self.filters.iter().any(|(k, _)| k.name == "tenant")
    }

    /// Grouped by user: computed period by period (see `Spec::period_sql`), so
    /// that a page reads the rows of its own users only. Except by day within
    /// one tenant: there the single statement's `GROUP BY day, user…` reads the
    /// tenant's rows in that order from the rollup's primary key `(tenant_id,
    /// day, user_id, …)` and stops at the page's end, with one plan however
    /// sparse the tenant's days are (one statement per day cost a mid-size
    /// tenant twice as much).
    fn by_period(&self) -> bool {
        let one_tenant = self.one_tenant();
        self.group_by.iter().any(|k| k.name == "user") && !(self.grain == Grain::Day && one_tenant)
    }
}

impl Spec {
    fn key(&self, name: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.name == name)
    }

    fn parse(
        &self,
        pairs: &[(String, String)],
        caller: &Caller,
    ) -> Result<AggregateQuery<'_>, ApiError> {
        let params = Params::new(pairs, self.parameters)?;
        let grain = Grain::parse(params.one("grain")?)?;
        let mut wanted = Vec::new();
        for name in params.list("group_by")? {
            let Some(key) = self.key(name) else {
                let names: Vec<&str> = self.keys.iter().map(|k| k.name).collect();
                return Err(ApiError::invalid(
                    "group_by",
                    format!("unknown key; accepted: {}", names.join(", ")),
                ));
            };
            wanted.push(key.name);
        }
        let group_by: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| wanted.contains(&k.name))
            .collect();
        let mut filters = Vec::new();
        for key in self.keys {
            let value = params.text(key.name)?;
            let value = match key.name {
                "tenant" => caller.tenant_filter(value)?,
                "user" => caller.user_filter(value)?,
                _ => value,
            };
            if key.name == "outcome" {
                if let Some(outcome) = &value {
                    if !["success", "failure", "unknown"].contains(&outcome.as_str()) {
                        return Err(ApiError::invalid(
                            "outcome",
                            "must be one of success, failure, unknown",
                        ));
                    }
                }
            }
            if let Some(value) = value {
                filters.push((key, value));
            }
        }
        let (from, to) = params.day_range()?;
        if let (Some(from), Some(to)) = (from, to) {
            grain.check_window(from, to)?;
        }
        let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
        let cursor = params
            .one("cursor")?
            .map(|c| AggregateCursor::decode(c, group_by.len()))
            .transpose()?;
        Ok(AggregateQuery {
            grain,
            group_by,
            filters,
            from,
            to,
            limit,
            cursor,
        })
    }

    /// The coarsest table keeping every key the query groups or filters by;
    /// the tenant-less ones only for a caller who sees every tenant.
    fn table(&self, query: &AggregateQuery<'_>, all_tenants: bool) -> &Table {
        let needed = query
            .group_by
            .iter()
            .map(|k| k.name)
            .chain(query.filters.iter().map(|(k, _)| k.name));
        let needed: Vec<&str> = needed.collect();
        self.tables
            .iter()
            .find(|t| {
                (all_tenants || !t.all_tenants) && needed.iter().all(|name| t.keys.contains(name))
            })
            .unwrap_or(&self.tables[self.tables.len() - 1])
    }
}

#[cfg(test)]
mod tests;
