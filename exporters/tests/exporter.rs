//! PgExporter against the real PostgreSQL: storage, idempotency, overload,
//! database loss and shutdown.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Days, TimeZone, Utc};
use common::{config, count, event, event_at, events, now_micros, wait_until};
use serde_json::json;
use tally_exporters::postgres::PgExporter;
use tally_exporters::testing::TestDatabase;
use tally_model::{ActivityEvent, ConsumeError, Outcome, Readiness};
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(20);

async fn start(
    db: &TestDatabase,
    cfg: &tally_config::PostgresConfig,
) -> (PgExporter, Arc<Readiness>) {
    let readiness = Arc::new(Readiness::new());
    let exporter = PgExporter::start(&db.url, cfg, readiness.clone())
        .await
        .expect("exporter starts");
    assert!(readiness.database_up());
    (exporter, readiness)
}

#[derive(Debug, PartialEq)]
struct Row {
    id: Uuid,
    ts: DateTime<Utc>,
    tenant_id: String,
    user_id: Option<String>,
    session_id: Option<String>,
    action: String,
    outcome: String,
    resource_type: Option<String>,
    resource_id: Option<String>,
    service: Option<String>,
    trace_id: Option<String>,
    span_id: Option<String>,
    attributes: serde_json::Value,
    duration_ms: Option<f64>,
    name: Option<String>,
    error_type: Option<String>,
    error_message: Option<String>,
}

fn expected(e: &ActivityEvent) -> Row {
    Row {
        id: e.id,
        ts: e.ts,
        tenant_id: e.tenant_id.clone().unwrap_or_default(),
        user_id: e.user_id.clone(),
        session_id: e.session_id.clone(),
        action: e.action.clone(),
        outcome: e.outcome.as_str().to_string(),
        resource_type: e.resource_type.clone(),
        resource_id: e.resource_id.clone(),
        service: e.service.clone(),
        trace_id: e.trace_id.clone(),
        span_id: e.span_id.clone(),
        attributes: serde_json::Value::Object(e.attributes.clone()),
        duration_ms: e.duration_ms,
        name: e.name.clone(),
        error_type: e.error_type.clone(),
        error_message: e.error_message.clone(),
    }
}

async fn read_rows(client: &tokio_postgres::Client) -> Vec<Row> {
    client
        .query(
            "SELECT id, ts, tenant_id, user_id, session_id, action, outcome, resource_type, \
             resource_id, service, trace_id, span_id, attributes, duration_ms, name, error_type, \
             error_message FROM activity_events ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Row {
            id: r.get(0),
            ts: r.get(1),
            tenant_id: r.get(2),
            user_id: r.get(3),
            session_id: r.get(4),
            action: r.get(5),
            outcome: r.get(6),
            resource_type: r.get(7),
            resource_id: r.get(8),
            service: r.get(9),
            trace_id: r.get(10),
            span_id: r.get(11),
            attributes: r.get(12),
            duration_ms: r.get(13),
            name: r.get(14),
            error_type: r.get(15),
            error_message: r.get(16),
        })
        .collect()
}

#[tokio::test]
async fn submitted_events_are_stored_field_by_field_and_once() {
    let db = TestDatabase::create().await; // start() migrates
    let (exporter, _readiness) = start(&db, &config()).await;

    let mut batch = events(40);
    // NULLs and the empty tenant.
    for e in batch.iter_mut().take(10) {
        e.tenant_id = None;
        e.user_id = None;
        e.session_id = None;
        e.resource_type = None;
        e.resource_id = None;
        e.service = None;
        e.trace_id = None;
        e.span_id = None;
        e.outcome = Outcome::Unknown;
        e.attributes.clear();
        e.duration_ms = None;
        e.name = None;
        e.error_type = None;
        e.error_message = None;
    }
    batch[10].outcome = Outcome::Failure;
    batch[11].attributes.insert(
        "nested".into(),
        json!({"list": [1, 2.5, "three", null, true], "big": u64::MAX, "unicode": "Grüße ✓"}),
    );
    // Old events get a partition made on demand.
    batch[12].ts = Utc.with_ymd_and_hms(2019, 3, 4, 5, 6, 7).unwrap();
    batch[13].ts = now_micros().checked_sub_days(Days::new(3 * 365)).unwrap();
    let mut expected_rows: Vec<Row> = batch.iter().map(expected).collect();

    // NUL characters (PostgreSQL rejects them) are stored as U+FFFD.
    batch[14].user_id = Some("a\0b".into());
    batch[14].attributes.insert("k\0".into(), json!("v\0"));
    expected_rows[14].user_id = Some("a\u{fffd}b".into());
    expected_rows[14]
        .attributes
        .as_object_mut()
        .unwrap()
        .insert("k\u{fffd}".into(), json!("v\u{fffd}"));

    exporter.submit(batch.clone()).await.expect("first submit");
    exporter.submit(Vec::new()).await.expect("empty submit");

    let client = db.client().await;
    expected_rows.sort_by_key(|r| r.id);
    assert_eq!(read_rows(&client).await, expected_rows);

    // The same events again (an SDK retry), alone and mixed with new ones.
    exporter.submit(batch.clone()).await.expect("resubmit");
    let mut mixed = batch[..5].to_vec();
    mixed.push(event(99));
    exporter.submit(mixed).await.expect("mixed resubmit");
    // One request carrying the same record twice.
    let repeated = event(100);
    exporter
        .submit(vec![repeated.clone(), repeated])
        .await
        .expect("repeat within a request");
    assert_eq!(count(&client).await, 42);
    let distinct_seq: i64 = client
        .query_one("SELECT count(DISTINCT seq) FROM activity_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct_seq, 42);
    let received_recent: bool = client
        .query_one(
            "SELECT bool_and(received_at > now() - interval '1 minute') FROM activity_events",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(received_recent);

    // Out-of-range times are refused up front, without queueing.
    let mut odd = event(1);
    odd.ts = Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap();
    assert!(matches!(
        exporter.submit(vec![odd]).await,
        Err(ConsumeError::Invalid(_))
    ));
    exporter.shutdown().await;
}

#[tokio::test]
async fn full_queue_answers_overloaded_and_releases_after_commit() {
    let db = TestDatabase::migrated().await;
    let cfg = tally_config::PostgresConfig {
        writers: 1,
        queue_capacity_records: 10,
        batch_linger_ms: 0,
        ..config()
    };
    let (exporter, _readiness) = start(&db, &cfg).await;

    // Hold every write: the writer's COPY into the table waits for this lock.
    let mut locker = db.client().await;
    let lock_tx = locker.transaction().await.unwrap();
    lock_tx
        .batch_execute("LOCK TABLE activity_events IN EXCLUSIVE MODE")
        .await
        .unwrap();

    let a = tokio::spawn({
        let exporter = exporter.clone();
        async move { exporter.submit(events(6)).await }
    });
    wait_until("A queued", LIMIT, || async {
        exporter.queued_records() == 6
    })
    .await;
    let observer = db.client().await;
    let name = db.name.clone();
    wait_until("writer blocked on the table lock", LIMIT, || {
        let (observer, name) = (&observer, &name);
        async move {
            let n: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND wait_event_type = 'Lock' AND query LIKE 'COPY activity_events %'",
                    &[name],
                )
                .await
                .unwrap()
                .get(0);
            n == 1
        }
    })
    .await;
    let b = tokio::spawn({
        let exporter = exporter.clone();
        async move { exporter.submit(events(4)).await }
    });
    wait_until("B queued", LIMIT, || async {
        exporter.queued_records() == 10
    })
    .await;

    let c = event(100);
    let refused = exporter.submit(vec![c.clone()]).await;
    assert!(
        matches!(refused, Err(ConsumeError::Overloaded { retry_after }) if retry_after == Duration::from_secs(1)),
        "{refused:?}"
    );
    // Bigger than the whole queue: needs the whole queue.
    assert!(matches!(
        exporter.submit(events(25)).await,
        Err(ConsumeError::Overloaded { .. })
    ));
    assert!(!a.is_finished() && !b.is_finished());
    // The pipeline's early check gives the same answer without queueing.
    assert!(matches!(
        exporter.precheck(1),
        Err(ConsumeError::Overloaded { .. })
    ));
    assert!(exporter.precheck(0).is_ok(), "nothing to queue");
    assert_eq!(exporter.queued_records(), 10);

    lock_tx.rollback().await.unwrap();
    a.await.unwrap().expect("A commits once the lock is gone");
    b.await.unwrap().expect("B commits once the lock is gone");
    wait_until("queue empty", LIMIT, || async {
        exporter.queued_records() == 0
    })
    .await;
    assert!(exporter.precheck(10).is_ok() && exporter.precheck(25).is_ok());
    exporter.submit(vec![c]).await.expect("room again");
    exporter
        .submit(events(25))
        .await
        .expect("a submission larger than the queue fits alone");
    assert_eq!(count(&db.client().await).await, 36);
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_loss_is_retryable_and_nothing_acknowledged_is_lost() {
    let db = TestDatabase::migrated().await;
    let (exporter, readiness) = start(&db, &config()).await;
    let admin = db.admin_client().await;

    let acked = Arc::new(Mutex::new(Vec::<Uuid>::new()));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut submitters = Vec::new();
    for t in 0..4 {
        let (exporter, acked, unavailable, stop) = (
            exporter.clone(),
            acked.clone(),
            unavailable.clone(),
            stop.clone(),
        );
        submitters.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<ActivityEvent> =
                    (0..10).map(|k| event(t * 1_000_000 + i * 10 + k)).collect();
                i += 1;
                let ids: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
                match exporter.submit(batch).await {
                    Ok(()) => acked.lock().unwrap().extend(ids),
                    Err(ConsumeError::Unavailable { .. }) => {
                        unavailable.fetch_add(1, Ordering::Relaxed);
                        // A client backs off before retrying; here: go on with new events.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(other) => panic!("unexpected answer: {other:?}"),
                }
            }
        }));
    }
    wait_until("traffic flows", LIMIT, || async {
        acked.lock().unwrap().len() >= 200
    })
    .await;

    // Take the database away: refuse new connections, kill the existing ones.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            db.name
        ))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name],
        )
        .await
        .unwrap();
    wait_until("readiness goes false", LIMIT, || async {
        !readiness.database_up()
    })
    .await;
    wait_until("submits are refused", LIMIT, || async {
        unavailable.load(Ordering::Relaxed) > 0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for s in submitters {
        s.await.unwrap();
    }
    assert!(!readiness.database_up());
    let refused = exporter.submit(events(1)).await;
    assert!(
        matches!(refused, Err(ConsumeError::Unavailable { .. })),
        "{refused:?}"
    );

    // Bring it back with no traffic: the probe must notice on its own.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            db.name
        ))
        .await
        .unwrap();
    wait_until("readiness comes back", LIMIT, || async {
        readiness.database_up()
    })
    .await;

    // Later submits commit (a client retries an Unavailable).
    let later = events(10);
    let later_ids: Vec<Uuid> = later.iter().map(|e| e.id).collect();
    wait_until("a later submit commits", LIMIT, || {
        let (exporter, later) = (&exporter, later.clone());
        async move { exporter.submit(later).await.is_ok() }
    })
    .await;

    let client = db.client().await;
    let stored: HashMap<Uuid, i64> = client
        .query("SELECT id, count(*) FROM activity_events GROUP BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200);
    for id in acked.iter().chain(later_ids.iter()) {
        assert_eq!(
            stored.get(id),
            Some(&1),
            "acknowledged event {id} stored once"
        );
    }
    assert!(stored.values().all(|n| *n == 1));
    eprintln!(
        "{} events acknowledged, {} submissions refused while the database was away",
        acked.len(),
        unavailable.load(Ordering::Relaxed)
    );
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_queue_and_then_refuses() {
    let db = TestDatabase::migrated().await;
    let cfg = tally_config::PostgresConfig {
        batch_linger_ms: 20,
        batch_max_rows: 200,
        ..config()
    };
    let (exporter, readiness) = start(&db, &cfg).await;

    // Queue up 1,000 events behind a table lock, so they are still queued at shutdown.
    let mut locker = db.client().await;
    let lock_tx = locker.transaction().await.unwrap();
    lock_tx
        .batch_execute("LOCK TABLE activity_events IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let submits: Vec<_> = (0..40)
        .map(|_| {
            let exporter = exporter.clone();
            tokio::spawn(async move { exporter.submit(events(25)).await })
        })
        .collect();
    wait_until("all queued", LIMIT, || async {
        exporter.queued_records() == 1000
    })
    .await;

    let shutdown = tokio::spawn({
        let exporter = exporter.clone();
        async move { exporter.shutdown().await }
    });
    wait_until("draining", LIMIT, || async { readiness.draining() }).await;
    let refused = exporter.submit(events(1)).await;
    assert!(
        matches!(&refused, Err(ConsumeError::Unavailable { reason, .. }) if reason == "shutting down"),
        "{refused:?}"
    );
    assert!(matches!(
        exporter.precheck(1),
        Err(ConsumeError::Unavailable { reason, .. }) if reason == "shutting down"
    ));
    assert!(!shutdown.is_finished(), "shutdown waits for the queue");

    lock_tx.rollback().await.unwrap();
    tokio::time::timeout(LIMIT, shutdown)
        .await
        .expect("shutdown completes")
        .unwrap();
    // Every queued record is committed by the time shutdown returns (read before
    // any waiter is awaited). Each waiter's answer was sent by then too; the
    // waiting task's own completion is a later scheduling event, so it is awaited
    // (with a deadline) rather than checked with `is_finished`.
    assert_eq!(count(&db.client().await).await, 1000);
    for s in submits {
        tokio::time::timeout(LIMIT, s)
            .await
            .expect("every waiter answered")
            .unwrap()
            .expect("queued before shutdown → committed");
    }
    assert!(matches!(
        exporter.submit(events(1)).await,
        Err(ConsumeError::Unavailable { .. })
    ));
    exporter.shutdown().await; // twice is fine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_racing_submits_loses_nothing_acknowledged() {
    let db = TestDatabase::migrated().await;
    let (exporter, _readiness) = start(&db, &config()).await;
    let acked = Arc::new(AtomicUsize::new(0));
    // 16 clients submitting 20 events at a time until they are refused.
    let submitters: Vec<_> = (0..16)
        .map(|_| {
            let (exporter, acked) = (exporter.clone(), acked.clone());
            tokio::spawn(async move {
                let mut ok_ids = Vec::new();
                loop {
                    let batch = events(20);
                    let ids: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
                    match exporter.submit(batch).await {
                        Ok(()) => {
                            ok_ids.extend(ids);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(ConsumeError::Unavailable { reason, .. }) => {
                            assert_eq!(reason, "shutting down");
                            return ok_ids;
                        }
                        Err(other) => panic!("unexpected: {other:?}"),
                    }
                }
            })
        })
        .collect();
    wait_until("traffic flows", LIMIT, || async {
        acked.load(Ordering::Relaxed) >= 50
    })
    .await;
    exporter.shutdown().await;
    let stored: HashSet<Uuid> = db
        .client()
        .await
        .query("SELECT id FROM activity_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut ok = 0;
    for s in submitters {
        let ids = tokio::time::timeout(LIMIT, s)
            .await
            .expect("refused after shutdown")
            .unwrap();
        ok += ids.len();
        assert!(
            ids.iter().all(|id| stored.contains(id)),
            "acknowledged but not stored"
        );
    }
    assert_eq!(
        ok,
        stored.len(),
        "nothing stored that was not acknowledged either"
    );
}

#[tokio::test]
async fn a_partition_dropped_behind_the_exporters_back_is_recreated() {
    let db = TestDatabase::migrated().await;
    let (exporter, readiness) = start(&db, &config()).await;
    let old = Utc.with_ymd_and_hms(2020, 2, 29, 12, 0, 0).unwrap();
    exporter
        .submit(vec![event_at(1, old)])
        .await
        .expect("partition made on demand");
    // Retention (or an operator) drops the partition the exporter knows about.
    let client = db.client().await;
    client
        .batch_execute("DROP TABLE activity_events_p20200229")
        .await
        .unwrap();
    exporter
        .submit(vec![event_at(2, old)])
        .await
        .expect("recreated and written");
    assert_eq!(count(&client).await, 1);
    assert!(readiness.database_up());
    exporter.shutdown().await;
}

/// `(seq, id)` of every stored row, in `seq` order, and whether
/// `tally_tail_days` (migration 0020) covers each row's day up to its `seq`.
async fn seqs_and_tail(client: &tokio_postgres::Client) -> (Vec<(i64, Uuid)>, bool) {
    let rows = client
        .query("SELECT seq, id FROM activity_events ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let covered: bool = client
        .query_one(
            "SELECT coalesce(bool_and(EXISTS (SELECT 1 FROM tally_tail_days d \
                 WHERE d.raw_table = 'activity_events' \
                   AND d.day = (a.ts AT TIME ZONE 'UTC')::date AND d.max_seq >= a.seq)), false) \
             FROM activity_events a",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (rows, covered)
}

/// The direct `COPY` gives a batch one `seq` range in `ts` order and fires the
/// insert triggers; a batch holding a stored row goes through staging in the
/// same transaction and stores only the new rows, after the earlier ones.
#[tokio::test]
async fn direct_copy_numbers_rows_in_ts_order_and_a_resend_falls_back_to_staging() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let now = now_micros();
    let yesterday = now.checked_sub_days(Days::new(1)).unwrap();
    tally_exporters::postgres::create_partitions(&client, yesterday.date_naive(), now.date_naive())
        .await
        .unwrap();
    // Times out of order, over two days.
    let batch: Vec<ActivityEvent> = (0..10)
        .map(|i| {
            let base = if i % 2 == 0 { now } else { yesterday };
            event_at(i, base - chrono::Duration::seconds(10 - i as i64))
        })
        .collect();
    let tx = client.transaction().await.unwrap();
    let stored = tally_exporters::postgres::insert_activity_batch(&tx, &batch)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stored, 10);
    let (rows, covered) = seqs_and_tail(&client).await;
    assert!(covered, "tally_tail_days covers the directly copied rows");
    let seqs: Vec<i64> = rows.iter().map(|(s, _)| *s).collect();
    let first = seqs[0];
    assert_eq!(seqs, (first..first + 10).collect::<Vec<_>>(), "one range");
    let mut by_ts = batch.clone();
    by_ts.sort_by_key(|e| e.ts);
    let ids: Vec<Uuid> = rows.iter().map(|(_, id)| *id).collect();
    assert_eq!(
        ids,
        by_ts.iter().map(|e| e.id).collect::<Vec<_>>(),
        "seq follows ts"
    );

    // A resend of five stored rows with three new ones: the staged path.
    let mut resend = batch[..5].to_vec();
    let new: Vec<ActivityEvent> = (20..23).map(|i| event_at(i, now)).collect();
    resend.extend(new.iter().cloned());
    let tx = client.transaction().await.unwrap();
    let stored = tally_exporters::postgres::insert_activity_batch(&tx, &resend)
        .await
        .unwrap();
    // The transaction goes on after the fallback.
    let in_tx: i64 = tx
        .query_one("SELECT count(*) FROM activity_events", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    assert_eq!(stored, 3);
    assert_eq!(in_tx, 13);
    let (rows, covered) = seqs_and_tail(&client).await;
    assert!(covered, "tally_tail_days covers the staged rows");
    assert_eq!(rows.len(), 13);
    let later: HashSet<Uuid> = rows[10..].iter().map(|(_, id)| *id).collect();
    assert_eq!(later, new.iter().map(|e| e.id).collect::<HashSet<_>>());
    assert!(rows[10].0 > first + 9, "after the first batch's range");
}

/// A role that row-level security applies to (not a superuser, no BYPASSRLS,
/// like the private PostgreSQL's `tally`) may not `COPY FROM` into
/// `activity_events`: its batch goes through staging and is stored all the same.
#[tokio::test]
async fn a_role_under_row_security_writes_through_staging() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let now = now_micros();
    tally_exporters::postgres::create_partitions(&client, now.date_naive(), now.date_naive())
        .await
        .unwrap();
    let role = format!("{}_rls_writer", db.name);
    client
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; \
             CREATE ROLE {role} NOLOGIN NOSUPERUSER NOBYPASSRLS; \
             GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}; \
             GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}"
        ))
        .await
        .unwrap();
    let batch: Vec<ActivityEvent> = (0..5).map(|i| event_at(i, now)).collect();
    // Everything up to the role's removal is kept as results, so that a failure
    // still drops the role (roles outlive the test's database).
    let outcome = async {
        let tx = client.transaction().await?;
        tx.batch_execute(&format!("SET LOCAL ROLE {role}")).await?;
        let active: bool = tx
            .query_one("SELECT row_security_active('activity_events')", &[])
            .await?
            .get(0);
        let stored = tally_exporters::postgres::insert_activity_batch(&tx, &batch).await;
        tx.commit().await?;
        Ok::<_, tokio_postgres::Error>((active, stored))
    }
    .await;
    let count: i64 = client
        .query_one("SELECT count(*) FROM activity_events", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
    let (active, stored) = outcome.expect("the transaction as the role");
    assert!(active, "row security applies to the role");
    assert_eq!(stored.expect("the batch is written"), 5);
    assert_eq!(count, 5);
}
