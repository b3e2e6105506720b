//! The SQL of the aggregate routes: the live rows of a rollup (the rollup
//! plus its unfolded tail, or the tail's groups from memory), the statement
//! of a page, of one period of a page grouped by user, and of a window's
//! bounds.

use chrono::{Datelike, Days, NaiveDate};
use tokio_postgres::types::ToSql;

use super::{AggregateQuery, Key, Spec, Table};
use crate::params::SqlBuilder;

impl Spec {
    /// The live rows of `table`: the rollup's rows plus the raw rows it has
    /// not folded yet (`seq` above its watermark, in the same snapshot),
    /// grouped like a rollup row (`day`, the table's keys, the measures summed
    /// as the rollup job computes them). Filters on the keys and `day` apply to
    /// both parts; `tail_from` / `tail_to` (SQL dates: placeholders or
    /// literals) bound the raw rows' `ts` as well, so that only the window's
    /// partitions are read.
    pub(super) fn source(
        &self,
        table: &Table,
        tail_from: Option<&str>,
        tail_to: Option<&str>,
    ) -> String {
        self.source_with(
            table,
            &self.tail_groups(table.keys, &[], &[], (tail_from, tail_to), ""),
        )
    }

    /// [`Spec::source`] with the tail given as a relation of the same columns.
    pub(super) fn source_with(&self, table: &Table, tail: &str) -> String {
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
    pub(super) fn cached_tail(
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
    pub(super) fn tail(&self, columns: &[String], from: Option<&str>, to: Option<&str>) -> String {
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

    pub(super) fn tail_grouped(
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
    pub(super) fn to_sql(
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

    pub(super) fn sums(&self) -> impl Iterator<Item = String> + '_ {
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
    /// When [`Spec::user_weeks`] allows it, the period's whole ISO weeks come
    /// from the per-user weekly rollup and only its edge days from `table`
    /// ([`Spec::weekly_rollup`]): the same sums from far fewer rows.
    pub(super) fn period_sql(
        &self,
        query: &AggregateQuery<'_>,
        table: &Table,
        (period, first, end): (NaiveDate, NaiveDate, NaiveDate),
        limit: usize,
    ) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
        let PeriodPage {
            sql,
            clauses,
            columns,
            cols,
            limit,
        } = PeriodPage::new(query, (period, first, end), limit);
        let mut select: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        select.extend(self.sums());
        let (tail_from, tail_to) = (format!("'{first}'"), format!("'{end}'"));
        let filter = clauses.join(" AND ");
        if let Some(weeks) = self.user_weeks(query, table, (first, end)) {
            // The whole weeks from the weekly rollup, the edge days from the
            // daily one and the tail (grouped by tenant and user like them),
            // each part's first groups after the cursor, then those summed.
            let tail = self.tail_groups(
                &["tenant", "user"],
                &[],
                &[],
                (Some(&tail_from), Some(&tail_to)),
                "",
            );
            let text = format!(
                "SELECT '{period}'::date AS period, {} FROM ({} UNION ALL \
                 (SELECT {cols}, {} FROM ({tail}) AS t WHERE {filter} \
                 GROUP BY {cols} ORDER BY {cols} LIMIT {limit})) AS live \
                 GROUP BY {cols} ORDER BY {cols} LIMIT {limit}",
                select.join(", "),
                self.weekly_rollup(table, (first, end), weeks, &filter, &limit),
                self.exact_sums().join(", "),
            );
            return (text, sql.params);
        }
        let source = self.source(table, Some(&tail_from), Some(&tail_to));
        let text = format!(
            "SELECT '{period}'::date AS period, {} FROM {source} WHERE {filter} \
             GROUP BY {cols} ORDER BY {cols} LIMIT {limit}",
            select.join(", "),
        );
        (text, sql.params)
    }

    /// Each measure summed exactly, to be summed again: `sum(m)::int8 AS m`
    /// for the counts, `sum(m) AS m` (numeric) for the cost.
    pub(super) fn exact_sums(&self) -> Vec<String> {
        self.measures
            .iter()
            .map(|m| match m.float {
                true => format!("sum({0}) AS {0}", m.column),
                false => format!("sum({0})::int8 AS {0}", m.column),
            })
            .collect()
    }

    /// The whole ISO weeks `[first Monday, last Monday)` of a by-user
    /// period's days `first..end` when the period may read them from the
    /// per-user weekly rollup (migration 0029): `table` is the per-user daily
    /// one, the page is grouped by user alone and filtered by nothing but the
    /// tenant and the user (the weekly rows keep no other key), and the period
    /// holds at least one whole week. `None`: the daily statement.
    pub(super) fn user_weeks(
        &self,
        query: &AggregateQuery<'_>,
        table: &Table,
        (first, end): (NaiveDate, NaiveDate),
    ) -> Option<(NaiveDate, NaiveDate)> {
        let by_user_alone = matches!(query.group_by.as_slice(), [key] if key.name == "user");
        let filters_kept = query
            .filters
            .iter()
            .all(|(k, _)| matches!(k.name, "tenant" | "user"));
        if !by_user_alone || !filters_kept || !table.keys.contains(&"user") {
            return None;
        }
        let after_first = (7 - first.weekday().num_days_from_monday()) % 7;
        let weeks_from = first.checked_add_days(Days::new(u64::from(after_first)))?;
        let weeks_to =
            end.checked_sub_days(Days::new(u64::from(end.weekday().num_days_from_monday())))?;
        (weeks_from < weeks_to).then_some((weeks_from, weeks_to))
    }

    /// The rollup's first groups by user of a by-user period's days
    /// `first..end`, as parts joined by `UNION ALL` (the same user may be in
    /// several: sum them again): the whole weeks `weeks` from the per-user
    /// weekly rollup, and each edge day (before the first whole week, after
    /// the last) from `table` with `day =` that day, each whole week with
    /// `week =` that week. Each part is `SELECT
    /// user_id, <exact sums> … WHERE <filter> GROUP BY user_id ORDER BY
    /// user_id LIMIT <limit>` over one table, so that it is a range of an
    /// index in user order (the weekly `(week, user_id)` index or primary key;
    /// the daily `(day, user_id)` index or primary key) cut at the page's size:
    /// a user among the page's first `limit` has fewer than `limit` users
    /// before it in every part, so the cut parts hold all of the page's rows.
    /// The days are literals made here, never request text.
    pub(super) fn weekly_rollup(
        &self,
        table: &Table,
        (first, end): (NaiveDate, NaiveDate),
        (weeks_from, weeks_to): (NaiveDate, NaiveDate),
        filter: &str,
        limit: &str,
    ) -> String {
        let measures = self.measure_columns();
        let sums = self.exact_sums().join(", ");
        let part = |rows: String| {
            format!(
                "(SELECT user_id, {sums} FROM ({rows}) AS r WHERE {filter} \
                 GROUP BY user_id ORDER BY user_id LIMIT {limit})"
            )
        };
        // One part per week: `week = w` is a range of the `(week, user_id)`
        // index in user order. A range of weeks is in user order in no index
        // but `(user_id, week)`, which a page would walk from its first user to
        // its last over every week; with row security's filter underestimated,
        // the planner sorted every row of the weeks instead (400 ms at 10M).
        let mut parts: Vec<String> = weeks_from
            .iter_weeks()
            .take_while(|w| *w < weeks_to)
            .map(|week| {
                part(format!(
                    "SELECT week AS day, tenant_id, user_id, {measures} FROM {} \
                     WHERE week = '{week}'::date",
                    self.user_weekly
                ))
            })
            .collect();
        let edges = first
            .iter_days()
            .take_while(|d| *d < weeks_from)
            .chain(weeks_to.iter_days().take_while(|d| *d < end));
        for day in edges {
            parts.push(part(format!(
                "SELECT day, tenant_id, user_id, {measures} FROM {} WHERE day = '{day}'::date",
                table.name
            )));
        }
        parts.join(" UNION ALL ")
    }

    /// The first and last day of `table` under the query's filters: the window
    /// of a by-period query without `from` or `to`.
    pub(super) fn bounds_sql(
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
pub(super) fn alias(expression: &str, column: &str) -> String {
    if expression == column {
        column.to_owned()
    } else {
        format!("{expression} AS {column}")
    }
}

/// What one period's page shares between the rollup-only statement
/// ([`Spec::period_sql`]) and the one with the cached tail
/// (`Spec::keyed_period_sql`): the bound filters, the day range, the cursor's
/// keyset condition and the bound limit.
pub(super) struct PeriodPage<'q> {
    /// The bound values (the filters', the cursor's, the limit).
    pub(super) sql: SqlBuilder,
    /// The conditions on the rollup's rows.
    pub(super) clauses: Vec<String>,
    /// The group-by columns, in order.
    pub(super) columns: Vec<&'q str>,
    /// `columns` joined by `, `.
    pub(super) cols: String,
    /// The limit's placeholder.
    pub(super) limit: String,
}

impl<'q> PeriodPage<'q> {
    /// The page of `period` (its days `first..end`) of at most `limit` groups.
    pub(super) fn new(
        query: &'q AggregateQuery<'_>,
        (period, first, end): (NaiveDate, NaiveDate, NaiveDate),
        limit: usize,
    ) -> PeriodPage<'q> {
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
        PeriodPage {
            sql,
            clauses,
            columns,
            cols,
            limit,
        }
    }
}
