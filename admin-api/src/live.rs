//! The raw rows a live answer adds to the rollups (the "tail": `seq` above the
//! rollup's watermark), and how its statements are planned.
//!
//! The SQL of a live answer names its tail with [`tail_condition`]: scalar
//! subqueries over `rollup_watermarks` and `tally_tail_days` (migration 0020),
//! valid and exact on their own. Before running it, [`Snapshot::bind`]
//! replaces them with the values read at the start of the answer's snapshot
//! (so the answer is the same), and the statement is planned for those values
//! (a custom plan each time, never a cached generic one):
//!
//! * the watermark is a constant, so PostgreSQL estimates the tail from the
//!   `seq` index's actual end (a few rows in each partition, not a third of
//!   it) and scans it by that index;
//! * the tail's `ts` is bounded below by the oldest day that holds a row above
//!   the watermark (`'infinity'` when none does), so the partitions of every
//!   older day are pruned when the statement is planned, and the tail of a
//!   30-day window reads the one or two newest partitions instead of thirty.

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::ApiError;

/// A raw table and the rollup watermark its tail starts after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raw {
    /// The raw table (`activity_events`, `token_usage`).
    pub table: &'static str,
    /// Its `rollup_watermarks.name`.
    pub watermark: &'static str,
}

/// `activity_events`, folded into the `activity_daily` rollups.
pub(crate) const ACTIVITY: Raw = Raw {
    table: "activity_events",
    watermark: "activity_daily",
};
/// `token_usage`, folded into the `token_usage_daily` rollups.
pub(crate) const TOKENS: Raw = Raw {
    table: "token_usage",
    watermark: "token_usage_daily",
};

impl Raw {
    /// The watermark, as a scalar subquery (0 without one).
    fn watermark_sql(self) -> String {
        format!(
            "coalesce((SELECT last_seq FROM rollup_watermarks WHERE name = '{}'), 0)",
            self.watermark
        )
    }

    /// The first instant of the oldest day holding a row above the
    /// watermark, as a scalar subquery (`'infinity'` when none does).
    fn floor_sql(self) -> String {
        format!(
            "coalesce((SELECT min(day) FROM tally_tail_days WHERE raw_table = '{}' \
             AND max_seq > {})::timestamp AT TIME ZONE 'UTC', 'infinity'::timestamptz)",
            self.table,
            self.watermark_sql()
        )
    }

    fn of(table: &str) -> Option<Raw> {
        [ACTIVITY, TOKENS].into_iter().find(|r| r.table == table)
    }
}

/// The condition selecting the tail of raw table `table` (without `WHERE`).
pub(crate) fn tail_condition(table: &str, watermark: &str) -> String {
    match Raw::of(table) {
        Some(raw) if raw.watermark == watermark => {
            format!(
                "seq > {} AND ts >= {}",
                raw.watermark_sql(),
                raw.floor_sql()
            )
        }
        // Not a tail this module knows how to bound: the watermark only.
        _ => format!(
            "seq > coalesce((SELECT last_seq FROM rollup_watermarks WHERE name = '{watermark}'), 0)"
        ),
    }
}

/// One raw table's tail in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tail {
    raw: Raw,
    watermark: i64,
    /// The oldest day holding a row above the watermark.
    floor: Option<chrono::NaiveDate>,
}

/// The tails of both raw tables, read at the start of an answer's snapshot;
/// or none, for an answer about one tenant (see [`Snapshot::for_answer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    tails: Option<[Tail; 2]>,
}

const SNAPSHOT_SQL: &str = "SELECT r.table_name, r.watermark, \
        (SELECT min(d.day) FROM tally_tail_days AS d \
         WHERE d.raw_table = r.table_name AND d.max_seq > r.watermark) AS floor \
    FROM (SELECT t.table_name, coalesce((SELECT last_seq FROM rollup_watermarks AS w \
              WHERE w.name = t.watermark), 0) AS watermark \
          FROM (VALUES ('activity_events', 'activity_daily'), \
                       ('token_usage', 'token_usage_daily')) AS t (table_name, watermark)) AS r";

impl Snapshot {
    /// The snapshot an answer's statements are bound to: read for an answer
    /// over every tenant, where the tail of each partition is large and pruning
    /// partitions pays; none for an answer about one tenant, whose statements
    /// stay prepared once per connection (measured: binding made the
    /// tenant-scoped shapes of `tally-bench queries` 5–15 ms slower by planning
    /// each execution, while the tenant's `(tenant_id, …)` index reads of the
    /// tail are cheap in every partition).
    pub(crate) async fn for_answer(
        client: &impl deadpool_postgres::GenericClient,
        one_tenant: bool,
    ) -> Result<Snapshot, ApiError> {
        match one_tenant {
            true => Ok(Snapshot { tails: None }),
            false => Snapshot::read(client).await,
        }
    }

    /// Reads the watermarks and the oldest tail days. Must be the snapshot's
    /// first statement or come after others of the same `REPEATABLE READ`
    /// transaction, so that every statement bound with it sees the same rows.
    pub(crate) async fn read(
        client: &impl deadpool_postgres::GenericClient,
    ) -> Result<Snapshot, ApiError> {
        let statement = client
            .prepare_cached(SNAPSHOT_SQL)
            .await
            .map_err(ApiError::from_db)?;
        let rows = client
            .query(&statement, &[])
            .await
            .map_err(ApiError::from_db)?;
        let mut tails = [
            Tail {
                raw: ACTIVITY,
                watermark: 0,
                floor: None,
            },
            Tail {
                raw: TOKENS,
                watermark: 0,
                floor: None,
            },
        ];
        for row in &rows {
            let table: String = row.try_get(0).map_err(ApiError::from_db)?;
            if let Some(tail) = tails.iter_mut().find(|t| t.raw.table == table) {
                tail.watermark = row.try_get(1).map_err(ApiError::from_db)?;
                tail.floor = row.try_get(2).map_err(ApiError::from_db)?;
            }
        }
        Ok(Snapshot { tails: Some(tails) })
    }

    /// A snapshot with these watermarks and oldest tail days (activity, tokens).
    #[cfg(test)]
    pub(crate) fn of(
        activity: (i64, Option<chrono::NaiveDate>),
        tokens: (i64, Option<chrono::NaiveDate>),
    ) -> Snapshot {
        Snapshot {
            tails: Some([
                Tail {
                    raw: ACTIVITY,
                    watermark: activity.0,
                    floor: activity.1,
                },
                Tail {
                    raw: TOKENS,
                    watermark: tokens.0,
                    floor: tokens.1,
                },
            ]),
        }
    }

    /// `sql` with every tail's subqueries replaced by this snapshot's values
    /// (unchanged without a snapshot: the subqueries are exact on their own).
    pub(crate) fn bind(&self, sql: &str) -> String {
        let mut sql = sql.to_owned();
        for tail in self.tails.iter().flatten() {
            // The floor's subquery contains the watermark's: replace it first.
            let floor = match tail.floor {
                Some(day) => format!("'{day} 00:00:00+00'::timestamptz"),
                None => "'infinity'::timestamptz".to_owned(),
            };
            sql = sql.replace(&tail.raw.floor_sql(), &floor);
            sql = sql.replace(&tail.raw.watermark_sql(), &tail.watermark.to_string());
        }
        sql
    }
}

/// Runs `sql` bound to `snapshot` on `client`, planned for this execution
/// (prepared unnamed, not cached: the bound text changes with every fold);
/// without a snapshot, prepared once per connection as written.
pub(crate) async fn query(
    client: &impl deadpool_postgres::GenericClient,
    snapshot: &Snapshot,
    sql: &str,
    params: &[Box<dyn ToSql + Sync + Send>],
) -> Result<Vec<Row>, ApiError> {
    if snapshot.tails.is_none() {
        return crate::params::query_on(client, sql, params).await;
    }
    let sql = snapshot.bind(sql);
    let params: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|param| param.as_ref() as &(dyn ToSql + Sync))
        .collect();
    client
        .query(sql.as_str(), &params)
        .await
        .map_err(ApiError::from_db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_replaces_every_subquery_with_the_snapshot_values() {
        let sql = format!(
            "SELECT 1 FROM activity_events WHERE {} UNION ALL SELECT 1 FROM token_usage WHERE {}",
            tail_condition("activity_events", "activity_daily"),
            tail_condition("token_usage", "token_usage_daily")
        );
        assert_eq!(sql.matches("rollup_watermarks").count(), 4, "{sql}");
        let snapshot = Snapshot {
            tails: Some([
                Tail {
                    raw: ACTIVITY,
                    watermark: 41,
                    floor: chrono::NaiveDate::from_ymd_opt(2026, 12, 5),
                },
                Tail {
                    raw: TOKENS,
                    watermark: 7,
                    floor: None,
                },
            ]),
        };
        let bound = snapshot.bind(&sql);
        assert_eq!(
            bound,
            "SELECT 1 FROM activity_events WHERE seq > 41 \
             AND ts >= '2026-12-05 00:00:00+00'::timestamptz \
             UNION ALL SELECT 1 FROM token_usage WHERE seq > 7 AND ts >= 'infinity'::timestamptz"
        );
    }

    #[test]
    fn without_a_snapshot_the_statement_is_unchanged() {
        let sql = format!(
            "SELECT 1 FROM activity_events WHERE {}",
            tail_condition("activity_events", "activity_daily")
        );
        assert_eq!(Snapshot { tails: None }.bind(&sql), sql);
    }

    #[test]
    fn an_unknown_tail_keeps_its_watermark_subquery() {
        let condition = tail_condition("other", "other_daily");
        assert_eq!(
            condition,
            "seq > coalesce((SELECT last_seq FROM rollup_watermarks WHERE name = 'other_daily'), 0)"
        );
    }
}
