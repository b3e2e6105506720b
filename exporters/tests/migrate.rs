//! Migrations and partitions against the real PostgreSQL.

mod common;

use chrono::{Days, NaiveDate, Utc};
use tally_exporters::postgres::{
    create_partitions, migrate, partition_name, DEFAULT_PARTITIONS_AHEAD_DAYS, MIGRATIONS,
};
use tally_exporters::testing::TestDatabase;

async fn partitions(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'activity_events'::regclass ORDER BY 1",
            &[],
        )
        .await
        .expect("partitions")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_concurrently() {
    let db = TestDatabase::create().await;
    let (a, b) = (db.client().await, db.client().await);
    let (ra, rb) = tokio::join!(migrate(&a), migrate(&b));
    ra.expect("first concurrent migrate");
    rb.expect("second concurrent migrate");
    migrate(&a).await.expect("migrate again");

    let applied: Vec<(i32, String)> = a
        .query(
            "SELECT version, name FROM tally_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(i32, String)> = MIGRATIONS
        .iter()
        .map(|(v, n, _)| (*v, n.to_string()))
        .collect();
    assert_eq!(applied, expected);

    // The public column contract.
    let columns: Vec<String> = a
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_name = 'activity_events' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        columns,
        [
            "id",
            "seq",
            "ts",
            "received_at",
            "tenant_id",
            "user_id",
            "session_id",
            "action",
            "outcome",
            "resource_type",
            "resource_id",
            "service",
            "trace_id",
            "span_id",
            "attributes",
            "taxonomy_valid",
            "taxonomy_reason",
            "ingest_key_id",
            "duration_ms",
            "name",
            "error_type",
            "error_message",
            "chain_form",
            "chain_salt",
            "erasure_id",
            "erased_digest",
            "erased_signature",
            // Migration 24: the personal keys named at write time.
            "personal_keys",
        ]
    );

    let today = Utc::now().date_naive();
    let names = partitions(&a).await;
    let from = today.checked_sub_days(Days::new(1)).unwrap();
    for day in from
        .iter_days()
        .take(DEFAULT_PARTITIONS_AHEAD_DAYS as usize + 2)
    {
        assert!(
            names.contains(&partition_name(day)),
            "missing partition for {day}: {names:?}"
        );
    }
    assert_eq!(names.len(), DEFAULT_PARTITIONS_AHEAD_DAYS as usize + 2);
}

#[tokio::test]
async fn partitions_are_daily_utc_ranges_and_idempotent() {
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    let day = NaiveDate::from_ymd_opt(2019, 3, 4).unwrap();
    create_partitions(&client, day, day).await.unwrap();
    create_partitions(&client, day, day.succ_opt().unwrap())
        .await
        .unwrap();
    let bound: String = client
        .query_one(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c WHERE c.relname = $1",
            &[&partition_name(day)],
        )
        .await
        .unwrap()
        .get(0);
    client.batch_execute("SET TIME ZONE 'UTC'").await.unwrap();
    let bound_utc: String = client
        .query_one(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c WHERE c.relname = $1",
            &[&partition_name(day)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        bound_utc, "FOR VALUES FROM ('2019-03-04 00:00:00+00') TO ('2019-03-05 00:00:00+00')",
        "(as shown in the server's zone: {bound})"
    );
    assert!(partitions(&client)
        .await
        .contains(&partition_name(day.succ_opt().unwrap())));
}

/// Migration 10: rollups folded under the old meaning (a call without usage counted as
/// unpriced too) are corrected to the metric's meaning, in the daily rollup and the
/// rollups derived from it.
#[tokio::test]
async fn migration_10_gives_unpriced_requests_the_metrics_meaning() {
    let db = TestDatabase::create().await;
    let client = db.client().await;
    migrate(&client).await.expect("migrate");
    // As the old fold wrote them: 5 calls, 2 without usage, 1 with usage and no price.
    client
        .batch_execute(
            "INSERT INTO token_usage_daily (day, tenant_id, user_id, provider, model, requests, \
                 unknown_usage_requests, unpriced_requests) \
             VALUES ('2026-11-01', 't', 'u', 'openai', 'gpt-4o', 5, 2, 3); \
             INSERT INTO token_usage_daily_tenant (day, tenant_id, provider, model, requests, \
                 unknown_usage_requests, unpriced_requests) \
             VALUES ('2026-11-01', 't', 'openai', 'gpt-4o', 5, 2, 3); \
             INSERT INTO token_usage_daily_all (day, provider, model, requests, \
                 unknown_usage_requests, unpriced_requests) \
             VALUES ('2026-11-01', 'openai', 'gpt-4o', 5, 2, 3); \
             DELETE FROM tally_schema_migrations WHERE version = 10;",
        )
        .await
        .expect("old-meaning rollups");
    migrate(&client).await.expect("migrate again");
    for table in [
        "token_usage_daily",
        "token_usage_daily_tenant",
        "token_usage_daily_all",
    ] {
        let row = client
            .query_one(
                &format!("SELECT unknown_usage_requests, unpriced_requests FROM {table}"),
                &[],
            )
            .await
            .expect(table);
        let counts: (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(counts, (2, 1), "{table}");
    }
}

/// Rows of `token_usage_daily` and `activity_daily` for 40 users x `days`
/// days from `first` x 2 tenants (x 2 models for the tokens), with sums that
/// differ per user and day.
async fn fill_daily_rollups(client: &tokio_postgres::Client, first: &str, days: i32) {
    client
        .execute(
            "INSERT INTO token_usage_daily (day, tenant_id, user_id, provider, model, requests, \
                 input_tokens, output_tokens, total_tokens, cost_usd) \
             SELECT $1::text::date + d, 't' || t, 'u' || lpad(u::text, 3, '0'), 'p', \
                 'm' || m, 1 + u % 3, u * 10 + d, d, u * 10 + 2 * d, (u + d) / 1000.0 \
             FROM generate_series(0, $2 - 1) d, generate_series(1, 2) t, \
                 generate_series(1, 40) u, generate_series(1, 2) m",
            &[&first, &days],
        )
        .await
        .expect("token rollup rows");
    client
        .execute(
            "INSERT INTO activity_daily (day, tenant_id, user_id, action, outcome, events) \
             SELECT $1::text::date + d, 't' || t, 'u' || lpad(u::text, 3, '0'), 'a', \
                 'success', 1 + (u + d) % 4 \
             FROM generate_series(0, $2 - 1) d, generate_series(1, 2) t, \
                 generate_series(1, 40) u",
            &[&first, &days],
        )
        .await
        .expect("activity rollup rows");
}

/// Asserts that `sql` runs as an index-only scan of `index` that visits no
/// heap page (the table vacuumed).
async fn assert_index_only(client: &tokio_postgres::Client, sql: &str, index: &str) {
    let plan: Vec<String> = client
        .query(
            &format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}"),
            &[],
        )
        .await
        .expect("explain")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains(&format!("Index Only Scan using {index}"))
            && plan.contains("Heap Fetches: 0"),
        "{sql}:\n{plan}"
    );
}

/// Migration 28: the per-user rollups keep exactly these indexes (the user
/// ones carry the sums), and a period of a page grouped by user (the admin
/// API's by-user statement) reads them without visiting the heap once the
/// table is vacuumed, with the sums the raw rows give.
#[tokio::test]
async fn migration_28_user_indexes_cover_the_sums() {
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    let indexes = |table: &'static str| {
        let client = &client;
        async move {
            client
                .query(
                    "SELECT indexname::text FROM pg_indexes WHERE tablename = $1 ORDER BY 1",
                    &[&table],
                )
                .await
                .expect("indexes")
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<String>>()
        }
    };
    assert_eq!(
        indexes("activity_daily").await,
        [
            "activity_daily_day_user_sums_idx",
            "activity_daily_pkey",
            "activity_daily_tenant_user_sums_idx",
            "activity_daily_user_day_sums_idx",
        ]
    );
    assert_eq!(
        indexes("token_usage_daily").await,
        [
            "token_usage_daily_day_user_sums_idx",
            "token_usage_daily_pkey",
            "token_usage_daily_tenant_user_sums_idx",
            "token_usage_daily_user_day_sums_idx",
        ]
    );
    // 40 users x 20 days x 2 tenants x 2 models, then one more fold-like upsert.
    fill_daily_rollups(&client, "2026-11-01", 20).await;
    // One statement per call: VACUUM cannot run in a multi-statement string.
    for table in ["token_usage_daily", "activity_daily"] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .expect("vacuum");
    }
    client
        .batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        .await
        .expect("planner settings");
    let page = [
        (
            "SELECT user_id, sum(requests)::int8, sum(input_tokens)::int8, \
                 sum(total_tokens)::int8, sum(cost_usd)::text FROM token_usage_daily \
             WHERE day >= '2026-11-04' AND day < '2026-11-18' \
             GROUP BY user_id ORDER BY user_id LIMIT 11",
            "token_usage_daily_user_day_sums_idx",
        ),
        (
            "SELECT user_id, sum(events)::int8, sum(events)::int8, sum(events)::int8, \
                 sum(events)::text FROM activity_daily \
             WHERE tenant_id = 't2' AND day >= '2026-11-04' AND day < '2026-11-18' \
             GROUP BY user_id ORDER BY user_id LIMIT 11",
            "activity_daily_tenant_user_sums_idx",
        ),
    ];
    for (sql, index) in page {
        assert_index_only(&client, sql, index).await;
        // The same sums from the heap alone.
        client
            .batch_execute("SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_seqscan = on")
            .await
            .expect("heap only");
        let text = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
            rows.iter()
                .map(|r| {
                    format!(
                        "{} {} {} {} {}",
                        r.get::<_, String>(0),
                        r.get::<_, i64>(1),
                        r.get::<_, i64>(2),
                        r.get::<_, i64>(3),
                        r.get::<_, String>(4)
                    )
                })
                .collect()
        };
        let from_heap = text(client.query(sql, &[]).await.expect("heap sums"));
        client
            .batch_execute(
                "RESET enable_indexscan; RESET enable_indexonlyscan; SET enable_seqscan = off",
            )
            .await
            .expect("index again");
        let from_index = text(client.query(sql, &[]).await.expect("index sums"));
        assert_eq!(from_index.len(), 11, "{sql}");
        assert_eq!(from_index, from_heap, "{sql}");
    }
}

/// Migration 29: the per-user weekly rollups are filled from the daily rows
/// on an existing database, and a period's whole weeks of a page grouped by
/// user are an index-only read, one week over every tenant (`(week, user_id)`
/// index) and for one tenant (the primary key), with the daily rows' sums.
#[tokio::test]
async fn migration_29_user_weekly_rollups_are_backfilled_and_read_index_only() {
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    // 40 users x 21 days (3 ISO weeks from Monday 2026-11-02) x 2 tenants x 2 models.
    fill_daily_rollups(&client, "2026-11-02", 21).await;
    // The migration run again on these rows (as on an upgraded database).
    let (_, _, sql) = tally_exporters::postgres::MIGRATIONS
        .iter()
        .find(|(version, _, _)| *version == 29)
        .expect("migration 29");
    client.batch_execute(sql).await.expect("migration 29 again");
    for table in ["token_usage_user_weekly", "activity_user_weekly"] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .expect("vacuum");
    }
    client
        .batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        .await
        .expect("planner settings");
    let pages = [
        (
            "SELECT user_id, sum(requests)::int8, sum(total_tokens)::int8, sum(cost_usd)::text \
             FROM token_usage_user_weekly WHERE week = '2026-11-09' \
             GROUP BY user_id ORDER BY user_id LIMIT 11",
            "token_usage_user_weekly_week_user_idx",
            "SELECT user_id, sum(requests)::int8, sum(total_tokens)::int8, sum(cost_usd)::text \
             FROM token_usage_daily WHERE day >= '2026-11-09' AND day < '2026-11-16' \
             GROUP BY user_id ORDER BY user_id LIMIT 11",
        ),
        (
            "SELECT user_id, sum(events)::int8, sum(events)::int8, sum(events)::text \
             FROM activity_user_weekly \
             WHERE tenant_id = 't2' AND week >= '2026-11-09' AND week < '2026-11-23' \
             GROUP BY user_id ORDER BY user_id LIMIT 11",
            "activity_user_weekly_pkey",
            "SELECT user_id, sum(events)::int8, sum(events)::int8, sum(events)::text \
             FROM activity_daily \
             WHERE tenant_id = 't2' AND day >= '2026-11-09' AND day < '2026-11-23' \
             GROUP BY user_id ORDER BY user_id LIMIT 11",
        ),
        (
            "SELECT user_id, sum(requests)::int8, sum(total_tokens)::int8, sum(cost_usd)::text \
             FROM token_usage_user_weekly \
             WHERE tenant_id = 't1' AND week >= '2026-11-02' AND week < '2026-11-16' \
             GROUP BY user_id ORDER BY user_id LIMIT 11",
            "token_usage_user_weekly_pkey",
            "SELECT user_id, sum(requests)::int8, sum(total_tokens)::int8, sum(cost_usd)::text \
             FROM token_usage_daily \
             WHERE tenant_id = 't1' AND day >= '2026-11-02' AND day < '2026-11-16' \
             GROUP BY user_id ORDER BY user_id LIMIT 11",
        ),
    ];
    let text = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
        rows.iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, String>(3)
                )
            })
            .collect()
    };
    for (sql, index, daily) in pages {
        assert_index_only(&client, sql, index).await;
        let weekly = text(client.query(sql, &[]).await.expect("weekly"));
        assert_eq!(weekly.len(), 11, "{sql}");
        assert_eq!(
            weekly,
            text(client.query(daily, &[]).await.expect("daily")),
            "{sql}"
        );
    }
}

/// Migration 30: an edge day of a by-user page (`day = d`, over every tenant
/// or for one) is an index-only range of the daily rollups, in user order,
/// with the sums the heap gives; on a database migrated before it, the
/// primary key is rebuilt with `events` and upserts on the key still merge.
#[tokio::test]
async fn migration_30_edge_days_are_read_index_only() {
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    // The primary key as it was before migration 30, then the migration run
    // on it (as on an upgraded database) and once more (idempotent).
    client
        .batch_execute(
            "ALTER TABLE activity_daily DROP CONSTRAINT activity_daily_pkey, \
                 ADD CONSTRAINT activity_daily_pkey \
                     PRIMARY KEY (tenant_id, day, user_id, action, outcome)",
        )
        .await
        .expect("old primary key");
    let (_, _, sql) = tally_exporters::postgres::MIGRATIONS
        .iter()
        .find(|(version, _, _)| *version == 30)
        .expect("migration 30");
    for _ in 0..2 {
        client.batch_execute(sql).await.expect("migration 30 again");
    }
    let included: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indexrelid = 'activity_daily_pkey'::regclass \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[],
        )
        .await
        .expect("primary key columns")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        included,
        ["tenant_id", "day", "user_id", "action", "outcome", "events"]
    );
    // 40 users x 3 days x 2 tenants x 2 actions (x 2 models), and each
    // activity row upserted twice on the key, as the fold does.
    let upsert = "INSERT INTO activity_daily (day, tenant_id, user_id, action, outcome, events) \
         SELECT '2026-11-04'::date + d, 't' || t, 'u' || lpad(u::text, 3, '0'), 'a' || a, \
             'success', 1 + (u + d + a) % 4 \
         FROM generate_series(0, 2) d, generate_series(1, 2) t, generate_series(1, 40) u, \
             generate_series(1, 2) a \
         ON CONFLICT (tenant_id, day, user_id, action, outcome) \
         DO UPDATE SET events = activity_daily.events + EXCLUDED.events";
    for _ in 0..2 {
        client.batch_execute(upsert).await.expect("activity upsert");
    }
    client
        .batch_execute(
            "INSERT INTO token_usage_daily (day, tenant_id, user_id, provider, model, requests, \
                 input_tokens, output_tokens, total_tokens, cost_usd) \
             SELECT '2026-11-04'::date + d, 't' || t, 'u' || lpad(u::text, 3, '0'), 'p', \
                 'm' || m, 1 + u % 3, u * 10 + d, d, u * 10 + 2 * d, (u + d) / 1000.0 \
             FROM generate_series(0, 2) d, generate_series(1, 2) t, generate_series(1, 40) u, \
                 generate_series(1, 2) m",
        )
        .await
        .expect("token rows");
    let rows: i64 = client
        .query_one("SELECT count(*) FROM activity_daily", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 3 * 2 * 40 * 2, "each key once after two upserts");
    for table in ["token_usage_daily", "activity_daily"] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .expect("vacuum");
    }
    let pages = [
        (
            "SELECT user_id, sum(events)::int8, sum(events)::text FROM activity_daily \
             WHERE tenant_id = 't2' AND day = '2026-11-05' \
             GROUP BY user_id ORDER BY user_id LIMIT 11",
            "activity_daily_pkey",
        ),
        (
            "SELECT user_id, sum(events)::int8, sum(events)::text FROM activity_daily \
             WHERE day = '2026-11-05' AND tenant_id <> '' \
             GROUP BY user_id ORDER BY user_id LIMIT 11",
            "activity_daily_day_user_sums_idx",
        ),
        (
            "SELECT user_id, sum(total_tokens)::int8, sum(cost_usd)::text FROM token_usage_daily \
             WHERE day = '2026-11-05' AND tenant_id <> '' \
             GROUP BY user_id ORDER BY user_id LIMIT 11",
            "token_usage_daily_day_user_sums_idx",
        ),
    ];
    let text = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
        rows.iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, String>(2)
                )
            })
            .collect()
    };
    for (sql, index) in pages {
        client
            .batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
            .await
            .expect("planner settings");
        assert_index_only(&client, sql, index).await;
        let from_index = text(client.query(sql, &[]).await.expect("index sums"));
        client
            .batch_execute(
                "SET enable_indexscan = off; SET enable_indexonlyscan = off; \
                 SET enable_seqscan = on",
            )
            .await
            .expect("heap only");
        let from_heap = text(client.query(sql, &[]).await.expect("heap sums"));
        client
            .batch_execute("RESET ALL")
            .await
            .expect("planner reset");
        assert_eq!(from_index.len(), 11, "{sql}");
        assert_eq!(from_index, from_heap, "{sql}");
    }
}
