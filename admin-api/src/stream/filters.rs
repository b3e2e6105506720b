//! A live feed's filters, twice over: as SQL clauses (the one builder,
//! [`SqlBuilder`]) for the rows a client reads from the database, and as
//! conditions ([`tail::Cond`]) for the rows of the shared tail's pages it keeps
//! in memory. Both forms come from the same calls, so they agree.

use super::tail;
use crate::activity::{ActionFilter, ActivityQuery};
use crate::params::SqlBuilder;

/// Filter clauses with their bound values and the same conditions for the
/// shared tail's rows; `seq` and the page size are bound after them
/// ([`SqlBuilder::bounded_page_sql`]).
#[derive(Default)]
pub(crate) struct Filters {
    /// The clauses, as the database reads them.
    pub(crate) sql: SqlBuilder,
    /// The same clauses for rows of a shared tail page.
    pub(crate) conds: Vec<tail::Cond>,
    /// Some clause has no form in `conds`: the client reads the database itself.
    pub(crate) opaque: bool,
}

impl Filters {
    /// Adds `column = value`.
    pub(crate) fn eq(&mut self, column: &'static str, value: String) {
        self.conds.push(tail::Cond::Eq(column, value.clone()));
        self.sql.push(&format!("{column} = "), value);
    }

    /// Adds `column <> value`.
    pub(crate) fn not_eq(&mut self, column: &'static str, value: String) {
        self.conds.push(tail::Cond::NotEq(column, value.clone()));
        self.sql.push(&format!("{column} <> "), value);
    }
}

/// The activity filters of an [`ActivityQuery`] as [`Filters`]: the same
/// clauses `GET /activity` uses.
pub(crate) fn activity_filters(query: &ActivityQuery) -> Filters {
    use tail::Cond;
    let sql = query.filter_sql();
    // The Rust form of `ActivityQuery::filter_sql`'s clauses, one for one.
    let mut conds = Vec::new();
    let text = [
        ("tenant_id", &query.tenant),
        ("user_id", &query.user),
        ("resource_type", &query.resource_type),
        ("resource_id", &query.resource_id),
        ("trace_id", &query.trace_id),
        ("name", &query.name),
    ];
    for (column, value) in text {
        if let Some(value) = value {
            conds.push(Cond::Eq(column, value.clone()));
        }
    }
    match &query.action {
        ActionFilter::Any => {}
        ActionFilter::Exact(action) => conds.push(Cond::Eq("action", action.clone())),
        ActionFilter::Prefix(prefix) => conds.push(Cond::Prefix("action", prefix.clone())),
    }
    if let Some(outcome) = query.outcome {
        conds.push(Cond::Eq("outcome", outcome.as_str().to_owned()));
    }
    if let Some(ms) = query.min_duration_ms {
        conds.push(Cond::MinDuration(ms));
    }
    if let Some(from) = query.from {
        conds.push(Cond::TsFrom(from));
    }
    if let Some(to) = query.to {
        conds.push(Cond::TsTo(to));
    }
    // Every clause has its condition, or the shared path is not used.
    let opaque = conds.len() != sql.clauses.len();
    Filters { sql, conds, opaque }
}
