//! The one SQL builder of the admin API: `AND`-ed clauses whose values are
//! bound parameters (the SQL text depends only on which filters are present),
//! the `seq`-ordered pages of the live feeds and `/export`, and running a
//! built query on a connection that sees the caller's tenants.

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::ApiError;
use crate::state::AppState;

/// Bound parameters and `AND`-ed clauses of a query.
#[derive(Default)]
pub(crate) struct SqlBuilder {
    pub(crate) clauses: Vec<String>,
    pub(crate) params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl SqlBuilder {
    /// Binds `value`, answering its placeholder.
    pub(crate) fn param(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    /// Adds the clause `<prefix><placeholder>`.
    pub(crate) fn push(&mut self, prefix: &str, value: impl ToSql + Sync + Send + 'static) {
        self.push_with_suffix(prefix, value, "");
    }

    /// Adds the clause `<prefix><placeholder><suffix>`.
    pub(crate) fn push_with_suffix(
        &mut self,
        prefix: &str,
        value: impl ToSql + Sync + Send + 'static,
        suffix: &str,
    ) {
        let placeholder = self.param(value);
        self.clauses.push(format!("{prefix}{placeholder}{suffix}"));
    }

    /// ` WHERE …` or nothing.
    pub(crate) fn where_clause(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// `SELECT <columns> FROM <table> WHERE <clauses> AND seq > $k ORDER BY seq
    /// LIMIT $k+1`, whose last two parameters [`SqlBuilder::with_page`] adds.
    pub(crate) fn seq_page_sql(&self, table: &str, columns: &str) -> String {
        let seq = self.params.len() + 1;
        let limit = seq + 1;
        let mut clauses = self.clauses.clone();
        clauses.push(format!("seq > ${seq}"));
        format!(
            "SELECT {columns} FROM {table} WHERE {} ORDER BY seq LIMIT ${limit}",
            clauses.join(" AND ")
        )
    }

    /// `SELECT <columns> FROM <table> WHERE <clauses> AND seq > $k AND seq <= $k+1
    /// ORDER BY seq LIMIT $k+2`, whose last three parameters
    /// [`SqlBuilder::with_bounded_page`] adds.
    pub(crate) fn bounded_page_sql(&self, table: &str, columns: &str) -> String {
        let after = self.params.len() + 1;
        let high = after + 1;
        let limit = after + 2;
        let mut clauses = self.clauses.clone();
        clauses.push(format!("seq > ${after}"));
        clauses.push(format!("seq <= ${high}"));
        format!(
            "SELECT {columns} FROM {table} WHERE {} ORDER BY seq LIMIT ${limit}",
            clauses.join(" AND ")
        )
    }

    /// The parameters followed by `after`, `high` and `limit`.
    pub(crate) fn with_bounded_page<'a>(
        &'a self,
        after: &'a i64,
        high: &'a i64,
        limit: &'a i64,
    ) -> Vec<&'a (dyn ToSql + Sync)> {
        let mut params = self.with_page(after, high);
        params.push(limit);
        params
    }

    /// The parameters followed by `after` and `limit`.
    pub(crate) fn with_page<'a>(
        &'a self,
        after: &'a i64,
        limit: &'a i64,
    ) -> Vec<&'a (dyn ToSql + Sync)> {
        let mut params = self.bound();
        params.push(after);
        params.push(limit);
        params
    }

    /// The bound parameters, as `query` takes them.
    fn bound(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|param| param.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// Runs `sql` with `params` on a pooled connection that sees `tenant`'s rows.
pub(crate) async fn query(
    state: &AppState,
    tenant: &crate::TenantAccess,
    sql: &str,
    params: &[Box<dyn ToSql + Sync + Send>],
) -> Result<Vec<Row>, ApiError> {
    let client = state.reads.get_for(tenant).await?;
    query_on(&*client, sql, params).await
}

/// Opens a read-only `REPEATABLE READ` transaction on `client`: every statement
/// in it reads the same snapshot (a rollup, its watermark and the raw rows above
/// it agree). Dropped without `commit`, it is rolled back.
pub(crate) async fn snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, ApiError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(ApiError::from_db)
}

/// The newest committed `seq` of raw table `table` over every tenant, in the
/// snapshot of `client` (0 when empty).
pub(crate) async fn newest_seq(
    client: &impl deadpool_postgres::GenericClient,
    table: &str,
) -> Result<i64, ApiError> {
    let statement = client
        .prepare_cached("SELECT tally_newest_seq($1)")
        .await
        .map_err(ApiError::from_db)?;
    let row = client
        .query_one(&statement, &[&table])
        .await
        .map_err(ApiError::from_db)?;
    row.try_get(0).map_err(ApiError::from_db)
}

/// Runs `sql` with `params` on `client` (prepared once per connection).
pub(crate) async fn query_on(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &[Box<dyn ToSql + Sync + Send>],
) -> Result<Vec<Row>, ApiError> {
    let statement = client
        .prepare_cached(sql)
        .await
        .map_err(ApiError::from_db)?;
    let params: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|param| param.as_ref() as &(dyn ToSql + Sync))
        .collect();
    client
        .query(&statement, &params)
        .await
        .map_err(ApiError::from_db)
}
