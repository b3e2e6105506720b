//! The retention job against a real PostgreSQL, with backdated partitions.

use std::time::Duration;

use chrono::{Days, NaiveDate, Utc};
use tally_config::RetentionConfig;
use tally_exporters::postgres::{RetentionJob, RollupJob};
use tally_exporters::testing::TestDatabase;
use tokio_postgres::Client;

const ACTIVITY_LOCK: i64 = i64::from_be_bytes(*b"tallyact");
const TOKEN_LOCK: i64 = i64::from_be_bytes(*b"tallytok");

async fn partition(client: &Client, table: &str, day: NaiveDate) -> String {
    let name = format!("{table}_p{}", day.format("%Y%m%d"));
    let next = day.succ_opt().expect("next");
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} \
             FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')"
        ))
        .await
        .expect("partition");
    name
}

/// Inserts `n` rows on `day` into both raw tables, under the writers' lock protocol.
async fn rows_on(client: &mut Client, day: NaiveDate, n: i32) {
    let ts = day.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIVITY_LOCK])
        .await
        .expect("lock");
    tx.execute(
        "INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, action, outcome) \
         SELECT gen_random_uuid(), nextval('activity_events_seq'), $1::timestamptz + i * interval '1 second', \
             'acme', 'u' || (i % 3), 'doc.read', 'success' FROM generate_series(1, $2) AS i",
        &[&ts, &n],
    )
    .await
    .expect("activity rows");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TOKEN_LOCK])
        .await
        .expect("lock");
    tx.execute(
        "INSERT INTO token_usage (id, seq, ts, tenant_id, user_id, model, input_tokens, output_tokens, total_tokens) \
         SELECT gen_random_uuid(), nextval('token_usage_seq'), $1::timestamptz + i * interval '1 second', \
             'acme', 'u1', 'gpt-4o', 10, 5, 15 FROM generate_series(1, $2) AS i",
        &[&ts, &n],
    )
    .await
    .expect("token rows");
    tx.commit().await.expect("commit");
}

async fn exists(client: &Client, name: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .expect("to_regclass")
        .get(0)
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test]
async fn drops_expired_partitions_once_rolled_up_and_old_rollup_rows() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let today = Utc::now().date_naive();
    let ago = |days: u64| today - Days::new(days);

    // Days 100..=95 and 91 ago expire with raw_days 90; 90 and 89 ago are kept.
    let mut expired = Vec::new();
    let mut kept = Vec::new();
    for days in [100, 99, 98, 97, 96, 95, 91, 90, 89] {
        for table in ["activity_events", "token_usage"] {
            let name = partition(&client, table, ago(days)).await;
            if days > 90 {
                expired.push(name);
            } else {
                kept.push(name);
            }
        }
        // Day 96 ago stays empty.
        if days != 96 {
            rows_on(&mut client, ago(days), 5).await;
        }
    }
    // A partition named outside the pattern is never touched.
    client
        .batch_execute(&format!(
            "CREATE TABLE token_usage_archive PARTITION OF token_usage \
             FOR VALUES FROM ('{}') TO ('{}')",
            ago(300),
            ago(200)
        ))
        .await
        .expect("odd partition");

    // Everything rolled up so far.
    let mut runner = db.client().await;
    RollupJob::new(Duration::ZERO)
        .run_once(&mut runner)
        .await
        .expect("rollup");
    let rolled_events = count(&client, "SELECT sum(events)::int8 FROM activity_daily").await;
    assert_eq!(rolled_events, 8 * 5);

    // Rows arriving after the rollup ran, on an expired day: not rolled up yet.
    rows_on(&mut client, ago(95), 2).await;

    // Rollup rows: 731 days ago expires with aggregate_days 730, 730 is kept.
    for days in [800, 731, 730] {
        client
            .execute(
                "INSERT INTO activity_daily (day, tenant_id, user_id, action, outcome, events) \
                 VALUES ($1, 'acme', 'old', 'x', 'success', 1)",
                &[&ago(days)],
            )
            .await
            .expect("old activity rollup");
        client
            .execute(
                "INSERT INTO token_usage_daily (day, tenant_id, model, requests) VALUES ($1, 'acme', 'old', 1)",
                &[&ago(days)],
            )
            .await
            .expect("old token rollup");
    }

    let job = RetentionJob::new(RetentionConfig {
        raw_days: 90,
        aggregate_days: 730,
        ..RetentionConfig::default()
    });
    let report = job.run_once(&client).await.expect("retention");

    let held_back: Vec<String> = ["activity_events", "token_usage"]
        .iter()
        .map(|t| format!("{t}_p{}", ago(95).format("%Y%m%d")))
        .collect();
    let mut expected_dropped: Vec<String> = expired
        .iter()
        .filter(|n| !held_back.contains(n))
        .cloned()
        .collect();
    expected_dropped.sort();
    let mut dropped = report.dropped_partitions.clone();
    dropped.sort();
    assert_eq!(dropped, expected_dropped);
    let mut kept_names: Vec<String> = report
        .kept_partitions
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    kept_names.sort();
    assert_eq!(kept_names, held_back);
    for (_, reason) in &report.kept_partitions {
        assert!(reason.contains("not rolled up"), "{reason}");
    }
    for name in &expected_dropped {
        assert!(!exists(&client, name).await, "{name} still exists");
    }
    for name in kept.iter().chain(&held_back) {
        assert!(exists(&client, name).await, "{name} was dropped");
    }
    assert!(exists(&client, "token_usage_archive").await);
    assert_eq!(report.activity_daily_deleted, 2);
    assert_eq!(report.token_usage_daily_deleted, 2);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM activity_daily WHERE user_id = 'old'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM token_usage_daily WHERE model = 'old'"
        )
        .await,
        1
    );
    // Raw rows left: days 95 (5 + 2), 90 and 89.
    assert_eq!(
        count(&client, "SELECT count(*) FROM activity_events").await,
        17
    );
    assert_eq!(count(&client, "SELECT count(*) FROM token_usage").await, 17);
    // The rollups still hold the dropped days.
    assert_eq!(
        count(
            &client,
            "SELECT sum(events)::int8 FROM activity_daily WHERE user_id <> 'old'"
        )
        .await,
        rolled_events
    );

    // Once the rollup caught up, the held-back partitions go too.
    RollupJob::new(Duration::ZERO)
        .run_once(&mut runner)
        .await
        .expect("rollup");
    let report = job.run_once(&client).await.expect("retention");
    let mut dropped = report.dropped_partitions.clone();
    dropped.sort();
    assert_eq!(dropped, held_back);
    assert!(report.kept_partitions.is_empty());
    assert_eq!(report.activity_daily_deleted, 0);
    // Idempotent.
    let report = job.run_once(&client).await.expect("retention");
    assert!(report.dropped_partitions.is_empty() && report.kept_partitions.is_empty());
}

/// Token metric minutes older than `raw_days` go, and so do series not seen
/// for as long; newer ones stay.
#[tokio::test]
async fn token_metric_rows_follow_raw_days() {
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    let today = NaiveDate::from_ymd_opt(2026, 12, 6).expect("day");
    client
        .batch_execute(
            "INSERT INTO token_metric_minutes (tenant_id, minute, model, token_type, tokens_sum) \
             VALUES ('a', '2026-09-06 23:59:00+00', 'm', 'input', 1), \
                    ('a', '2026-09-07 00:00:00+00', 'm', 'input', 2), \
                    ('a', '2026-12-06 10:00:00+00', 'm', 'input', 3); \
             INSERT INTO token_metric_series (tenant_id, series_key, start_ns, time_ns, count, sum, seen_at) \
             VALUES ('a', 'old', 0, 1, 1, 1, '2026-09-01 00:00:00+00'), \
                    ('a', 'new', 0, 1, 1, 1, '2026-12-01 00:00:00+00');",
        )
        .await
        .expect("seed");
    let job = RetentionJob::new(RetentionConfig {
        raw_days: 90,
        aggregate_days: 730,
        ..RetentionConfig::default()
    });
    let report = job.run_once_at(&client, today).await.expect("retention");
    assert_eq!(report.token_metric_rows_deleted, 2);
    let kept: Vec<i64> = client
        .query(
            "SELECT tokens_sum FROM token_metric_minutes ORDER BY minute",
            &[],
        )
        .await
        .expect("minutes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kept, [2, 3]);
    let series: Vec<String> = client
        .query("SELECT series_key FROM token_metric_series", &[])
        .await
        .expect("series")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(series, ["new"]);
}

/// Retention keeps the per-user weekly rollups (migration 0029) equal to the
/// daily rows they sum: the weeks before the cutoff go, the week holding the
/// cutoff (mid-week here) keeps only the sums of its days from the cutoff on.
#[tokio::test]
async fn user_weekly_rollups_follow_the_daily_rows_past_the_cutoff() {
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    // A "today" whose cutoff (730 days before) is a Thursday.
    let mut today = NaiveDate::from_ymd_opt(2026, 12, 1).expect("day");
    while (today - Days::new(730)).format("%u").to_string() != "4" {
        today = today.succ_opt().expect("next");
    }
    let cutoff = today - Days::new(730);
    // Daily rows of 3 tenants x 4 users over the 20 days around the cutoff.
    client
        .execute(
            "INSERT INTO activity_daily (day, tenant_id, user_id, action, outcome, events) \
             SELECT $1::date + d, 't' || t, CASE WHEN u = 0 THEN '' ELSE 'u' || u END, 'a', \
                 'success', 1 + (d + u + t) % 5 \
             FROM generate_series(-10, 9) d, generate_series(1, 3) t, generate_series(0, 3) u",
            &[&cutoff],
        )
        .await
        .expect("activity rows");
    client
        .execute(
            "INSERT INTO token_usage_daily (day, tenant_id, user_id, provider, model, requests, \
                 input_tokens, total_tokens, cost_usd) \
             SELECT $1::date + d, 't' || t, CASE WHEN u = 0 THEN '' ELSE 'u' || u END, 'p', \
                 'm' || m, 1 + d % 3 + 3, 10 * u + d + 20, 11 * u + d + 20, (u + d + 20) / 100.0 \
             FROM generate_series(-10, 9) d, generate_series(1, 3) t, generate_series(0, 3) u, \
                 generate_series(1, 2) m",
            &[&cutoff],
        )
        .await
        .expect("token rows");
    client
        .execute("SELECT tally_rebuild_user_weekly()", &[])
        .await
        .expect("rebuild");
    let weekly_before = count(&client, "SELECT count(*) FROM token_usage_user_weekly").await;

    let job = RetentionJob::new(RetentionConfig {
        raw_days: 90,
        aggregate_days: 730,
        ..RetentionConfig::default()
    });
    let report = job.run_once_at(&client, today).await.expect("retention");
    assert!(report.token_usage_daily_deleted > 0);
    assert!(report.derived_rollups_deleted > 0);

    let rows = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query(sql, &[])
                .await
                .expect(sql)
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<_, String>(i))
                        .collect::<Vec<String>>()
                })
                .collect::<Vec<_>>()
        }
    };
    let pairs = [
        (
            "SELECT tenant_id, week::text, user_id, events::text FROM activity_user_weekly \
             ORDER BY 1, 2, 3",
            "SELECT tenant_id, date_trunc('week', day::timestamp)::date::text, user_id, \
                 sum(events)::text FROM activity_daily GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        ),
        (
            "SELECT tenant_id, week::text, user_id, requests::text, input_tokens::text, \
                 total_tokens::text, cost_usd::text FROM token_usage_user_weekly \
             ORDER BY 1, 2, 3",
            "SELECT tenant_id, date_trunc('week', day::timestamp)::date::text, user_id, \
                 sum(requests)::text, sum(input_tokens)::text, sum(total_tokens)::text, \
                 sum(cost_usd)::text FROM token_usage_daily GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        ),
    ];
    for (weekly, daily) in pairs {
        let kept = rows(weekly).await;
        assert_eq!(kept, rows(daily).await, "{weekly}");
        // 3 tenants x 4 users x 2 weeks (the cutoff's, rebuilt, and the next).
        assert_eq!(kept.len(), 24, "{kept:?}");
    }
    assert!(weekly_before > 24, "{weekly_before}");
    // The cutoff's week starts before the cutoff and keeps its days from it on.
    let first_week = cutoff - Days::new(3);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM token_usage_user_weekly WHERE week < (SELECT min(day) FROM token_usage_daily)"
        )
        .await,
        12
    );
    assert_eq!(
        count(
            &client,
            "SELECT (min(day) - min(week))::int8 FROM token_usage_user_weekly, token_usage_daily"
        )
        .await,
        (cutoff - first_week).num_days()
    );
}
