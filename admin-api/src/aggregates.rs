//! `GET /api/v1/tokens/usage` and `GET /api/v1/activity/aggregates`: sums over
//! the daily rollups (`token_usage_daily`, `activity_daily`), by day, ISO week
//! (Monday) or month, grouped by any of the route's keys. They never read the
//! raw tables, so they stay fast at any table size.
//!
//! Items are ordered by `period`, then the group keys (in the route's canonical
//! key order), and paginated with a keyset cursor over that order: at most
//! `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) items per page.
//!
//! Over 600 lines: two routes sharing one rollup-plus-tail query builder.

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;

use crate::caller::{Caller, SCOPE_ACTIVITY_READ, SCOPE_TOKENS_READ};
use crate::error::ApiError;
use crate::params::{non_empty, pairs, Params, SqlBuilder};
use crate::state::AppState;

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

    /// The live rows of `table`: the rollup's rows plus the raw rows it has
    /// not folded yet (`seq` above its watermark, in the same snapshot),
    /// grouped like a rollup row (`day`, the table's keys, the measures summed
    /// as the rollup job computes them). Filters on the keys and `day` apply to
    /// both parts; `tail_from` / `tail_to` (SQL dates: placeholders or
    /// literals) bound the raw rows' `ts` as well, so that only the window's
    /// partitions are read.
    fn source(&self, table: &Table, tail_from: Option<&str>, tail_to: Option<&str>) -> String {
        self.source_with(
            table,
            &self.tail_groups(table.keys, &[], &[], (tail_from, tail_to), ""),
        )
    }

    /// [`Spec::source`] with the tail given as a relation of the same columns.
    fn source_with(&self, table: &Table, tail: &str) -> String {
        let keys: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| table.keys.contains(&k.name))
            .collect();
        let mut rollup = vec!["day".to_owned()];
        rollup.extend(keys.iter().map(|k| k.column.to_owned()));
        rollup.extend(self.measures.iter().map(|m| m.column.to_owned()));
        // The raw rows grouped by the table's keys first: a few groups instead
        // of every raw row reach the union and the answer's grouping.
        format!(
            "(SELECT {} FROM {} UNION ALL {tail}) AS live",
            rollup.join(", "),
            table.name,
        )
    }

    /// The tail of a tenant-less rollup `table` from the in-memory tail's
    /// arrays (`crate::tailcache`: the day, the table's keys in canonical
    /// order, then each measure; floats as `numeric` text), placed as
    /// parameters of `sql`.
    fn cached_tail(
        &self,
        table: &Table,
        sql: &mut SqlBuilder,
        arrays: Vec<Box<dyn ToSql + Sync + Send>>,
    ) -> String {
        let mut types = vec!["date"];
        let mut names = vec!["day".to_owned()];
        let mut columns = vec!["day".to_owned()];
        for key in self.keys.iter().filter(|k| table.keys.contains(&k.name)) {
            types.push("text");
            names.push(key.column.to_owned());
            columns.push(key.column.to_owned());
        }
        for m in self.measures {
            names.push(m.column.to_owned());
            if m.float {
                types.push("text");
                columns.push(format!("{0}::numeric AS {0}", m.column));
            } else {
                types.push("int8");
                columns.push(m.column.to_owned());
            }
        }
        let mut placeholders = Vec::new();
        for (array, kind) in arrays.into_iter().zip(&types) {
            sql.params.push(array);
            placeholders.push(format!("${}::{kind}[]", sql.params.len()));
        }
        format!(
            "SELECT {} FROM unnest({}) AS t ({})",
            columns.join(", "),
            placeholders.join(", "),
            names.join(", ")
        )
    }

    /// The live rows of the rollup named `table` (the last table when no such
    /// name), as a relation `live` (see [`Spec::source`]), with the raw rows'
    /// `ts` bounded by `tail_from..tail_to` (SQL dates): for `/tokens/coverage`.
    pub(crate) fn live(&self, table: &str, tail_from: &str, tail_to: &str) -> String {
        let table = self
            .tables
            .iter()
            .find(|t| t.name == table)
            .unwrap_or(&self.tables[self.tables.len() - 1]);
        self.source(table, Some(tail_from), Some(tail_to))
    }

    /// `SELECT columns FROM` the raw rows not folded into the rollups yet,
    /// with `ts` in `from..to` (SQL dates) when given.
    fn tail(&self, columns: &[String], from: Option<&str>, to: Option<&str>) -> String {
        let mut tail = crate::live::tail_condition(self.raw, self.watermark);
        if let Some(from) = from {
            tail.push_str(&format!(
                " AND ts >= ({from})::date::timestamp AT TIME ZONE 'UTC'"
            ));
        }
        if let Some(to) = to {
            tail.push_str(&format!(
                " AND ts < ({to})::date::timestamp AT TIME ZONE 'UTC'"
            ));
        }
        format!(
            "SELECT {} FROM {} WHERE {tail}",
            columns.join(", "),
            self.raw
        )
    }

    /// The raw rows not folded into the rollups yet with `ts` in
    /// `tail_from..tail_to` (SQL dates), as `SELECT <day and the keys named>,
    /// <each measure summed as the rollup job folds it> FROM … WHERE … GROUP BY`
    /// the day and keys, plus `extra` conditions (e.g. a tenant): the compact
    /// form of the tail that `/stats` reads once per request and then sums in
    /// every grouping it answers. `extra_columns` are more summed columns
    /// (`"sum(…) AS name"`) and `extra_keys` more grouping columns
    /// (`"expression AS name"`).
    pub(crate) fn tail_groups(
        &self,
        keys: &[&str],
        extra_keys: &[&str],
        extra_columns: &[&str],
        range: (Option<&str>, Option<&str>),
        extra: &str,
    ) -> String {
        self.tail_grouped(keys, extra_keys, extra_columns, range, extra, None)
    }

    /// [`Spec::tail_groups`] grouped by `GROUPING SETS` instead of by every
    /// key at once: `sets` lists each set's columns by position (1 = the day,
    /// then the keys named, then `extra_keys`), so that independent
    /// histograms of the tail (one key each) are not multiplied together.
    pub(crate) fn tail_grouping_sets(
        &self,
        keys: &[&str],
        extra_keys: &[&str],
        extra_columns: &[&str],
        range: (Option<&str>, Option<&str>),
        extra: &str,
        sets: &[&[usize]],
    ) -> String {
        self.tail_grouped(keys, extra_keys, extra_columns, range, extra, Some(sets))
    }

    fn tail_grouped(
        &self,
        keys: &[&str],
        extra_keys: &[&str],
        extra_columns: &[&str],
        (tail_from, tail_to): (Option<&str>, Option<&str>),
        extra: &str,
        sets: Option<&[&[usize]]>,
    ) -> String {
        let mut columns = vec!["(ts AT TIME ZONE 'UTC')::date AS day".to_owned()];
        columns.extend(
            self.keys
                .iter()
                .filter(|k| keys.contains(&k.name))
                .map(|k| alias(k.raw, k.column)),
        );
        columns.extend(extra_keys.iter().map(|k| (*k).to_owned()));
        let grouped = columns.len();
        columns.extend(
            self.measures
                .iter()
                .map(|m| format!("sum({}) AS {}", m.raw, m.column)),
        );
        columns.extend(extra_columns.iter().map(|c| (*c).to_owned()));
        let group = match sets {
            None => {
                let group: Vec<String> = (1..=grouped).map(|i| i.to_string()).collect();
                group.join(", ")
            }
            Some(sets) => {
                let sets: Vec<String> = sets
                    .iter()
                    .map(|set| {
                        let columns: Vec<String> = set.iter().map(usize::to_string).collect();
                        format!("({})", columns.join(", "))
                    })
                    .collect();
                format!("GROUPING SETS ({})", sets.join(", "))
            }
        };
        format!(
            "{}{extra} GROUP BY {group}",
            self.tail(&columns, tail_from, tail_to)
        )
    }

    /// The measures' column names, comma-separated.
    pub(crate) fn measure_columns(&self) -> String {
        let columns: Vec<&str> = self.measures.iter().map(|m| m.column).collect();
        columns.join(", ")
    }

    /// `sum(m)::int8 AS m` (`::float8` for cost) for every measure.
    pub(crate) fn measure_sums(&self) -> String {
        self.sums().collect::<Vec<_>>().join(", ")
    }

    /// The statement of a query not grouped by period; `cached`: the tail of a
    /// tenant-less rollup from the in-memory tail (see [`Spec::cached_tail`]).
    fn to_sql(
        &self,
        query: &AggregateQuery<'_>,
        all_tenants: bool,
        cached: Option<Vec<Box<dyn ToSql + Sync + Send>>>,
    ) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
        let table = self.table(query, all_tenants);
        let mut sql = SqlBuilder::default();
        for (key, value) in &query.filters {
            sql.push(&format!("{} = ", key.column), value.clone());
        }
        let mut tail_from = None;
        if let Some(from) = query.from {
            sql.push("day >= ", from);
            tail_from = Some(format!("${}", sql.params.len()));
        }
        let mut tail_to = None;
        if let Some(to) = query.to {
            sql.push("day < ", to);
            tail_to = Some(format!("${}", sql.params.len()));
        }
        let source = match cached {
            Some(arrays) if table.all_tenants => {
                let tail = self.cached_tail(table, &mut sql, arrays);
                self.source_with(table, &tail)
            }
            _ => self.source(table, tail_from.as_deref(), tail_to.as_deref()),
        };
        let inner_where = sql.where_clause();
        let columns: Vec<&str> = query.group_by.iter().map(|k| k.column).collect();
        let mut select = vec![format!("{} AS period", query.grain.sql())];
        select.extend(columns.iter().map(|c| c.to_string()));
        select.extend(self.sums());
        let mut order = vec!["period"];
        order.extend(columns.iter().copied());
        let group: Vec<String> = (1..=columns.len() + 1).map(|i| i.to_string()).collect();
        let outer_where = match &query.cursor {
            None => String::new(),
            Some(cursor) => {
                let mut values = vec![sql.param(cursor.p)];
                for k in &cursor.k {
                    values.push(sql.param(k.clone()));
                }
                format!(" WHERE ({}) > ({})", order.join(", "), values.join(", "))
            }
        };
        let limit = sql.param(i64::from(query.limit) + 1);
        let text = format!(
            "SELECT * FROM (SELECT {} FROM {source}{inner_where} GROUP BY {}) AS g{outer_where} \
             ORDER BY {} LIMIT {limit}",
            select.join(", "),
            group.join(", "),
            order.join(", "),
        );
        (text, sql.params)
    }

    fn sums(&self) -> impl Iterator<Item = String> + '_ {
        self.measures.iter().map(|m| {
            let cast = if m.float { "float8" } else { "int8" };
            format!("sum({0})::{cast} AS {0}", m.column)
        })
    }

    /// Grouped by user: the statement for one period (`(period, first day, end
    /// day)`), grouped in key order and cut at `limit` (`ORDER BY … LIMIT`), so
    /// that a page reads the rows of its own users only instead of grouping
    /// every user of the window. A one-day period is `day = d`: the rows of
    /// that day come in user order from the `(day, user_id)` index (or, for a
    /// tenant, the primary key); a longer one reads the `(user_id, day)` /
    /// `(tenant_id, user_id, day)` index. The days are literals (dates made
    /// here, never request text) so that the planner knows each period's size
    /// and picks the user-ordered index; the statements are not cached.
    fn period_sql(
        &self,
        query: &AggregateQuery<'_>,
        table: &Table,
        (period, first, end): (NaiveDate, NaiveDate, NaiveDate),
        limit: usize,
    ) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
        let mut sql = SqlBuilder::default();
        for (key, value) in &query.filters {
            sql.push(&format!("{} = ", key.column), value.clone());
        }
        let mut clauses = sql.clauses.clone();
        if first.succ_opt() == Some(end) {
            clauses.push(format!("day = '{first}'::date"));
        } else {
            clauses.push(format!("day >= '{first}'::date"));
            clauses.push(format!("day < '{end}'::date"));
        }
        let columns: Vec<&str> = query.group_by.iter().map(|k| k.column).collect();
        let cols = columns.join(", ");
        if let Some(cursor) = query.cursor.as_ref().filter(|c| c.p == period) {
            let values: Vec<String> = cursor.k.iter().map(|k| sql.param(k.clone())).collect();
            clauses.push(format!("({cols}) > ({})", values.join(", ")));
        }
        let limit = sql.param(i64::try_from(limit).unwrap_or(i64::MAX));
        let mut select: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        select.extend(self.sums());
        let source = self.source(
            table,
            Some(&format!("'{first}'")),
            Some(&format!("'{end}'")),
        );
        let text = format!(
            "SELECT '{period}'::date AS period, {} FROM {source} WHERE {} \
             GROUP BY {cols} ORDER BY {cols} LIMIT {limit}",
            select.join(", "),
            clauses.join(" AND ")
        );
        (text, sql.params)
    }

    /// The first and last day of `table` under the query's filters: the window
    /// of a by-period query without `from` or `to`.
    fn bounds_sql(
        &self,
        query: &AggregateQuery<'_>,
        table: &Table,
    ) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
        let mut sql = SqlBuilder::default();
        for (key, value) in &query.filters {
            sql.push(&format!("{} = ", key.column), value.clone());
        }
        // Each part's own min/max (an index read on the rollup), not one over
        // their union.
        let filter = sql.where_clause();
        let mut columns = vec!["(ts AT TIME ZONE 'UTC')::date AS day".to_owned()];
        columns.extend(
            self.keys
                .iter()
                .filter(|k| table.keys.contains(&k.name))
                .map(|k| alias(k.raw, k.column)),
        );
        let text = format!(
            "SELECT least(r.first, t.first) AS first, greatest(r.last, t.last) AS last \
             FROM (SELECT min(day) AS first, max(day) AS last FROM {}{filter}) AS r, \
             (SELECT min(day) AS first, max(day) AS last FROM ({}) AS tail{filter}) AS t",
            table.name,
            self.tail(&columns, None, None)
        );
        (text, sql.params)
    }
}

/// `expression AS column`, or `column` when the expression is the column.
fn alias(expression: &str, column: &str) -> String {
    if expression == column {
        column.to_owned()
    } else {
        format!("{expression} AS {column}")
    }
}

/// The first day of the period holding `day`.
fn period_of(grain: Grain, day: NaiveDate) -> NaiveDate {
    match grain {
        Grain::Day => day,
        Grain::Week => day - chrono::Days::new(u64::from(day.weekday().num_days_from_monday())),
        Grain::Month => day.with_day(1).unwrap_or(day),
    }
}

/// The periods of `from..to` (starting at `start`'s period when given), each
/// with the days of the window it holds: `(period, first day, end day)`.
fn periods(
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
    let (as_of_seq, live) = match &cached {
        Some((high, _)) => (
            *high,
            crate::live::Snapshot::for_answer(&tx, !all_tenants || query.one_tenant()).await?,
        ),
        None => futures::try_join!(
            crate::params::newest_seq(&tx, spec.raw),
            crate::live::Snapshot::for_answer(&tx, !all_tenants || query.one_tenant()),
        )?,
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
                return Ok(AggregatePage {
                    items: Vec::new(),
                    next_cursor: None,
                    as_of_seq,
                })
            }
        }
    }
    let limit = query.limit as usize;
    let rows = match (query.by_period(), query.from, query.to) {
        (true, Some(from), Some(to)) => {
            let start = query.cursor.as_ref().map(|c| c.p);
            let periods = periods(query.grain, from, to, start);
            let mut rows = Vec::new();
            let mut pending = periods.as_slice();
            let mut at_once = 1;
            while !pending.is_empty() && rows.len() <= limit {
                let (now, later) = pending.split_at(at_once.min(pending.len()));
                pending = later;
                at_once = (at_once * 2).min(MAX_PERIODS_AT_ONCE);
                let wanted = limit + 1 - rows.len();
                let statements: Vec<_> = now
                    .iter()
                    .map(|period| {
                        let (sql, params) = spec.period_sql(&query, table, *period, wanted);
                        (live.bind(&sql), params)
                    })
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn sql_binds_filters_and_orders_by_canonical_keys() {
        let caller = Caller::anonymous();
        let p = pairs(
            "grain=week&group_by=model,tenant&tenant=x'--&from=2026-11-01&to=2026-11-30T12:00:00Z",
        );
        let q = TOKENS.parse(&p, &caller).unwrap();
        assert_eq!(q.to, NaiveDate::from_ymd_opt(2026, 12, 1));
        let (sql, params) = TOKENS.to_sql(&q, true, None);
        assert!(!sql.contains("x'"), "{sql}");
        assert_eq!(params.len(), 4);
        // The rollup plus the raw rows above its watermark, in the window.
        assert!(
            sql.contains("FROM token_usage_daily_tenant UNION ALL SELECT "),
            "{sql}"
        );
        assert!(
            sql.contains(
                " FROM token_usage WHERE seq > coalesce((SELECT last_seq FROM rollup_watermarks \
                 WHERE name = 'token_usage_daily'), 0) \
                 AND ts >= coalesce((SELECT min(day) FROM tally_tail_days \
                 WHERE raw_table = 'token_usage' AND max_seq > coalesce((SELECT last_seq \
                 FROM rollup_watermarks WHERE name = 'token_usage_daily'), 0))::timestamp \
                 AT TIME ZONE 'UTC', 'infinity'::timestamptz) \
                 AND ts >= ($2)::date::timestamp AT TIME ZONE 'UTC' \
                 AND ts < ($3)::date::timestamp AT TIME ZONE 'UTC' GROUP BY 1, 2, 3, 4) \
                 AS live WHERE tenant_id = $1"
            ),
            "{sql}"
        );
        assert!(sql.contains("GROUP BY 1, 2, 3)"), "{sql}");
        // Bound to a snapshot: constants the planner prunes partitions with.
        let day = NaiveDate::from_ymd_opt(2026, 11, 28);
        let bound = crate::live::Snapshot::of((5, None), (1000, day)).bind(&sql);
        assert!(!bound.contains("rollup_watermarks"), "{bound}");
        assert!(
            bound.contains(
                " FROM token_usage WHERE seq > 1000 \
                 AND ts >= '2026-11-28 00:00:00+00'::timestamptz AND ts >= ($2)"
            ),
            "{bound}"
        );
        assert!(
            sql.ends_with("ORDER BY period, tenant_id, model LIMIT $4"),
            "{sql}"
        );
        assert!(sql.contains("date_trunc('week', day::timestamp)::date AS period"));
    }

    #[test]
    fn the_coarsest_table_that_keeps_the_keys_is_chosen() {
        let caller = Caller::anonymous();
        for (query, all, table) in [
            ("group_by=model", true, "token_usage_daily_all"),
            ("group_by=model", false, "token_usage_daily_tenant"),
            (
                "group_by=provider&tenant=a",
                true,
                "token_usage_daily_tenant",
            ),
            ("group_by=tenant", true, "token_usage_daily_tenant"),
            ("model=m", true, "token_usage_daily_all"),
            ("user=u", true, "token_usage_daily"),
            ("group_by=user", true, "token_usage_daily"),
        ] {
            let q = TOKENS.parse(&pairs(query), &caller).unwrap();
            assert_eq!(TOKENS.table(&q, all).name, table, "{query} {all}");
        }
        for (query, all, table) in [
            ("group_by=action", true, "activity_daily_all"),
            (
                "group_by=action,outcome&tenant=a",
                true,
                "activity_daily_tenant",
            ),
            ("group_by=user&tenant=a", false, "activity_daily"),
        ] {
            let q = ACTIVITY.parse(&pairs(query), &caller).unwrap();
            assert_eq!(ACTIVITY.table(&q, all).name, table, "{query} {all}");
        }
    }

    #[test]
    fn grouping_by_user_goes_period_by_period() {
        let caller = Caller::anonymous();
        for (query, by_period) in [
            ("grain=day&group_by=user", true),
            ("grain=day&group_by=user&tenant=t", false),
            ("grain=week&group_by=user&tenant=t", true),
            ("grain=month&group_by=model", false),
        ] {
            let q = TOKENS.parse(&pairs(query), &caller).unwrap();
            assert_eq!(q.by_period(), by_period, "{query}");
        }
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(
            periods(Grain::Month, d("2026-10-30"), d("2026-11-30"), None),
            vec![
                (d("2026-10-01"), d("2026-10-30"), d("2026-11-01")),
                (d("2026-11-01"), d("2026-11-01"), d("2026-11-30"))
            ]
        );
        assert_eq!(
            periods(
                Grain::Week,
                d("2026-10-31"),
                d("2026-11-03"),
                Some(d("2026-11-02"))
            ),
            vec![(d("2026-11-02"), d("2026-11-02"), d("2026-11-03"))]
        );
        let cursor = AggregateCursor {
            v: 1,
            p: d("2026-11-01"),
            k: vec!["u".into(), "m".into()],
        };
        let p = pairs(&format!(
            "grain=month&group_by=user,model&tenant=t&from=2026-10-30&to=2026-11-30&cursor={}",
            cursor.encode()
        ));
        let q = TOKENS.parse(&p, &caller).unwrap();
        let periods = periods(q.grain, d("2026-10-30"), d("2026-11-30"), Some(cursor.p));
        assert_eq!(periods.len(), 1);
        let (sql, params) = TOKENS.period_sql(&q, &TOKENS.tables[2], periods[0], 11);
        assert_eq!(params.len(), 4, "{sql}");
        assert!(
            sql.starts_with(
                "SELECT '2026-11-01'::date AS period, user_id, model, sum(requests)::int8 AS requests, "
            ),
            "{sql}"
        );
        assert!(
            sql.ends_with(
                " AND ts >= ('2026-11-01')::date::timestamp AT TIME ZONE 'UTC' \
                 AND ts < ('2026-11-30')::date::timestamp AT TIME ZONE 'UTC' \
                 GROUP BY 1, 2, 3, 4, 5) AS live \
                 WHERE tenant_id = $1 AND day >= '2026-11-01'::date \
                 AND day < '2026-11-30'::date AND (user_id, model) > ($2, $3) \
                 GROUP BY user_id, model ORDER BY user_id, model LIMIT $4"
            ),
            "{sql}"
        );
        // A one-day period is an equality, so the day's rows come in user order.
        let day = (d("2026-11-05"), d("2026-11-05"), d("2026-11-06"));
        let (sql, _) = TOKENS.period_sql(&q, &TOKENS.tables[2], day, 11);
        assert!(
            sql.contains("AS live WHERE tenant_id = $1 AND day = '2026-11-05'::date GROUP BY"),
            "{sql}"
        );
    }

    #[test]
    fn cursors_round_trip_and_check_the_keys() {
        let c = AggregateCursor {
            v: 1,
            p: NaiveDate::from_ymd_opt(2026, 1, 5).unwrap(),
            k: vec!["a".into(), "".into()],
        };
        let text = c.encode();
        let back = AggregateCursor::decode(&text, 2).unwrap();
        assert_eq!((back.p, back.k), (c.p, c.k));
        assert!(AggregateCursor::decode(&text, 1).is_err());
        assert!(AggregateCursor::decode("!!", 0).is_err());
    }

    #[test]
    fn bad_parameters_are_named() {
        let caller = Caller::anonymous();
        for (query, name) in [
            ("grain=year", "grain"),
            ("group_by=action", "group_by"),
            ("group_by=user,", "group_by"),
            ("limit=10001", "limit"),
            ("from=yesterday", "from"),
            ("from=2026-11-02&to=2026-11-01", "from"),
            ("models=x", "models"),
        ] {
            match TOKENS.parse(&pairs(query), &caller) {
                Err(ApiError::InvalidParameter { parameter, .. }) => {
                    assert_eq!(parameter, name, "{query}")
                }
                Err(other) => panic!("{query}: {other:?}"),
                Ok(_) => panic!("{query} accepted"),
            }
        }
        assert!(ACTIVITY.parse(&pairs("outcome=meh"), &caller).is_err());
        assert!(ACTIVITY
            .parse(&pairs("group_by=action,outcome"), &caller)
            .is_ok());
    }
}
