//! Helpers shared by the exporter's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tally_config::PostgresConfig;
use tally_model::{ActivityEvent, Outcome};
use tokio::time::Instant;
use uuid::Uuid;

/// Now, truncated to microseconds (what PostgreSQL stores).
pub fn now_micros() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("valid time")
}

/// A fresh event with a random id and every optional field set.
pub fn event(i: usize) -> ActivityEvent {
    event_at(i, now_micros())
}

pub fn event_at(i: usize, ts: DateTime<Utc>) -> ActivityEvent {
    let mut attributes = serde_json::Map::new();
    attributes.insert("i".into(), json!(i));
    attributes.insert("http.route".into(), json!("/api/items/{id}"));
    ActivityEvent {
        id: Uuid::new_v4(),
        ts,
        tenant_id: Some(format!("tenant-{}", i % 3)),
        user_id: Some(format!("user-{}", i % 7)),
        session_id: Some(format!("session-{i}")),
        action: "item.view".into(),
        outcome: Outcome::Success,
        resource_type: Some("item".into()),
        resource_id: Some(i.to_string()),
        service: Some("shop".into()),
        trace_id: Some(format!("{:032x}", i + 1)),
        span_id: Some(format!("{:016x}", i + 1)),
        attributes,
        taxonomy_valid: None,
        taxonomy_reason: None,
        duration_ms: Some(i as f64 + 0.125),
        name: Some("GET /api/items/{id}".into()),
        error_type: Some(format!("error-{}", i % 2)),
        error_message: Some(format!("item {i}: not in stock")),
    }
}

pub fn events(n: usize) -> Vec<ActivityEvent> {
    (0..n).map(event).collect()
}

/// A small, fast configuration for tests.
pub fn config() -> PostgresConfig {
    PostgresConfig {
        writers: 2,
        batch_max_rows: 500,
        batch_linger_ms: 2,
        queue_capacity_records: 100_000,
        partitions_ahead_days: 2,
        retry_after_secs: 1,
        ..PostgresConfig::default()
    }
}

/// Waits until `condition` holds, polling every 10 ms; panics after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until a backend of this test's database waits for a lock that
/// `lock` (a condition on `pg_locks l`) selects; panics after 20 s.
pub async fn wait_for_lock_wait(client: &tokio_postgres::Client, what: &str, lock: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_locks l WHERE {lock} AND NOT l.granted AND l.database = \
             (SELECT oid FROM pg_database WHERE datname = current_database())"
    );
    wait_until(what, Duration::from_secs(20), || {
        let sql = sql.as_str();
        async move {
            client
                .query_one(sql, &[])
                .await
                .is_ok_and(|row| row.get::<_, i64>(0) >= 1)
        }
    })
    .await;
}

/// Number of rows in `activity_events`.
pub async fn count(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM activity_events", &[])
        .await
        .expect("count")
        .get(0)
}
