//! The statement of one period of an aggregate grouped by user over every
//! tenant when the tail's first groups come from memory
//! (`crate::tailcache::Pages`): the rollup's first groups after the cursor,
//! read in key order from its index and cut at the page's size, added to the
//! tail's, then cut again (see `crate::tailcache` for why that is exact).

use chrono::NaiveDate;
use tokio_postgres::types::ToSql;

use super::sql::PeriodPage;
use super::{AggregateQuery, Spec, Table};
use crate::tailcache::Page;

impl Spec {
    /// The position of the key named `name` in the canonical order (the
    /// order of the cached tail's keys: tenant, user, then the rollup's two
    /// others).
    pub(super) fn position(&self, name: &str) -> usize {
        self.keys.iter().position(|k| k.name == name).unwrap_or(0)
    }

    /// Like [`Spec::period_sql`], with the tail's first `limit` groups of the
    /// period given as `page` instead of read from the raw table.
    pub(super) fn keyed_period_sql(
        &self,
        query: &AggregateQuery<'_>,
        table: &Table,
        (period, first, end): (NaiveDate, NaiveDate, NaiveDate),
        limit: usize,
        page: &Page,
    ) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
        let PeriodPage {
            mut sql,
            clauses,
            columns,
            cols,
            limit,
        } = PeriodPage::new(query, (period, first, end), limit);
        // The rollup's groups: counts as int8, the cost as numeric (exact).
        let rollup_sums = self.exact_sums();
        // The tail's: the keys, the counts, then the cost (Page::parameters).
        let mut names: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        let mut types: Vec<&str> = columns.iter().map(|_| "text").collect();
        let mut tail_columns = names.clone();
        for m in self.measures.iter().filter(|m| !m.float) {
            names.push(m.column.to_owned());
            types.push("int8");
            tail_columns.push(m.column.to_owned());
        }
        let cost = self.measures.iter().find(|m| m.float);
        if let Some(m) = cost {
            names.push(m.column.to_owned());
            types.push("text");
            tail_columns.push(format!("{0}::numeric AS {0}", m.column));
        }
        let counts = self.measures.iter().filter(|m| !m.float).count();
        let mut placeholders = Vec::new();
        for (array, kind) in page
            .parameters(counts, cost.is_some())
            .into_iter()
            .zip(&types)
        {
            sql.params.push(array);
            placeholders.push(format!("${}::{kind}[]", sql.params.len()));
        }
        let mut select: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        select.extend(self.sums());
        // The rollup's first groups: the whole weeks from the per-user weekly
        // rollup and the edge days from the daily one when the page allows
        // it, else the daily rollup's.
        let filter = clauses.join(" AND ");
        let rollup = match self.user_weeks(query, table, (first, end)) {
            Some(weeks) => self.weekly_rollup(table, (first, end), weeks, &filter, &limit),
            None => format!(
                "(SELECT {cols}, {} FROM {} WHERE {filter} GROUP BY {cols} ORDER BY {cols} \
                 LIMIT {limit})",
                rollup_sums.join(", "),
                table.name,
            ),
        };
        let text = format!(
            "SELECT '{period}'::date AS period, {} FROM (\
                 {rollup} UNION ALL SELECT {} FROM unnest({}) AS t ({})) AS live \
             GROUP BY {cols} ORDER BY {cols} LIMIT {limit}",
            select.join(", "),
            tail_columns.join(", "),
            placeholders.join(", "),
            names.join(", "),
        );
        (text, sql.params)
    }
}
