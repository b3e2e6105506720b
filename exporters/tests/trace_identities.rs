//! `trace_identities` through the writer: what one submission shares, what the
//! writer answers back (traces both identified and pending), scopes kept apart,
//! and the TTL prune.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, TimeDelta, Utc};
use common::config;
use tally_exporters::postgres::{
    prune_trace_identities, PgExporter, SharedTrace, SharedTraces, TraceIdentity,
};
use tally_exporters::testing::TestDatabase;
use tally_model::Readiness;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn identity(user: &str, tenant: Option<&str>) -> Option<TraceIdentity> {
    Some(TraceIdentity {
        tenant_id: tenant.map(str::to_owned),
        user_id: Some(user.to_owned()),
        session_id: None,
    })
}

fn shared(scope: &str, trace: SharedTrace) -> SharedTraces {
    SharedTraces {
        scope: scope.to_owned(),
        traces: vec![trace],
    }
}

#[tokio::test]
async fn identified_and_pending_traces_come_back_within_their_scope_only() {
    let db = TestDatabase::create().await;
    let exporter = PgExporter::start(&db.url, &config(), Arc::new(Readiness::new()))
        .await
        .expect("exporter starts");
    // Microseconds, as PostgreSQL keeps them.
    let since = (Utc::now() - TimeDelta::seconds(3)).trunc_subsecs(6);
    let submit = |traces: SharedTraces| {
        let exporter = exporter.clone();
        async move {
            exporter
                .submit_traced(Vec::new(), Vec::new(), Vec::new(), None, traces)
                .await
                .expect("committed")
        }
    };
    let pending = |ts| SharedTrace {
        trace_id: TRACE.into(),
        identity: None,
        pending_since: Some(ts),
    };
    let identified = |user: &str, tenant: Option<&str>| SharedTrace {
        trace_id: TRACE.into(),
        identity: identity(user, tenant),
        pending_since: None,
    };

    // Tenant B's rows wait; tenant A's identity for the same trace id: nothing.
    assert!(submit(shared("tenant-b", pending(since))).await.is_empty());
    assert!(submit(shared("tenant-a", identified("mallory", None)))
        .await
        .is_empty());
    // B's own identity: the trace comes back with B's tenant and the pending start.
    let ready = submit(shared("tenant-b", identified("bob", None))).await;
    assert_eq!(ready.len(), 1, "{ready:?}");
    assert_eq!(ready[0].trace_id, TRACE);
    assert_eq!(
        ready[0].identity,
        identity("bob", Some("tenant-b")).unwrap()
    );
    assert_eq!(ready[0].since, since);
    // A later pending mark keeps the earlier start; the first user stays.
    let ready = submit(shared("tenant-b", pending(since + TimeDelta::seconds(2)))).await;
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].since, since);
    let ready = submit(shared("tenant-b", identified("eve", None))).await;
    assert_eq!(ready[0].identity.user_id.as_deref(), Some("bob"));

    // The unbound scope: a tenant named by the records attributes by itself.
    assert!(submit(shared("", identified("u", None))).await.is_empty());
    let ready = submit(shared(
        "",
        SharedTrace {
            trace_id: TRACE.into(),
            identity: Some(TraceIdentity {
                tenant_id: Some("named".into()),
                user_id: None,
                session_id: Some("s".into()),
            }),
            pending_since: Some(since),
        },
    ))
    .await;
    assert_eq!(ready.len(), 1);
    assert_eq!(
        ready[0].identity,
        TraceIdentity {
            tenant_id: Some("named".into()),
            user_id: Some("u".into()),
            session_id: Some("s".into()),
        }
    );

    // Concurrent submissions of one trace (one batch, merged into one upsert,
    // or two): at least one of them is answered the trace.
    let (a, b) = tokio::join!(
        submit(shared("tenant-c", pending(since))),
        submit(shared("tenant-c", identified("carol", None)))
    );
    assert!(!a.is_empty() || !b.is_empty(), "{a:?} {b:?}");

    let client = db.client().await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM trace_identities", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 4, "one row per scope and trace");
    assert_eq!(
        prune_trace_identities(&client, Duration::from_secs(300))
            .await
            .expect("prune"),
        0,
        "written just now"
    );
    assert_eq!(
        prune_trace_identities(&client, Duration::ZERO)
            .await
            .expect("prune"),
        4
    );
    exporter.shutdown().await;
}

/// A batch's identities alone are written in a statement of their own: while
/// the batch waits for the activity lock (held here by the test), another
/// writer can write the same trace without waiting for that batch (it waited
/// for the whole batch while every trace was written in the batch transaction).
#[tokio::test]
async fn identities_alone_do_not_hold_their_rows_for_the_batch() {
    const ACTIVITY_LOCK: i64 = i64::from_be_bytes(*b"tallyact");
    let db = TestDatabase::create().await;
    let exporter = PgExporter::start(&db.url, &config(), Arc::new(Readiness::new()))
        .await
        .expect("exporter starts");
    let mut holder = db.client().await;
    let hold = holder.transaction().await.expect("begin");
    hold.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIVITY_LOCK])
        .await
        .expect("hold the activity lock");
    let identified = SharedTrace {
        trace_id: TRACE.into(),
        identity: identity("alice", None),
        pending_since: None,
    };
    let stalled = {
        let exporter = exporter.clone();
        tokio::spawn(async move {
            exporter
                .submit_traced(
                    common::events(3),
                    Vec::new(),
                    Vec::new(),
                    None,
                    shared("", identified),
                )
                .await
        })
    };
    let client = db.client().await;
    common::wait_for_lock_wait(
        &client,
        "the batch waits for the activity lock",
        "l.locktype = 'advisory'",
    )
    .await;
    // The identity is already written, and its row is not held.
    let other = db.client().await;
    other
        .batch_execute("SET lock_timeout = '5s'")
        .await
        .expect("lock_timeout");
    let since = (Utc::now() - TimeDelta::seconds(1)).trunc_subsecs(6);
    let row = other
        .query_one(
            "INSERT INTO trace_identities AS t (tenant_id, trace_id, pending_since) \
             VALUES ('', $1, $2) \
             ON CONFLICT (tenant_id, trace_id) DO UPDATE \
                 SET pending_since = excluded.pending_since, seen_at = now() \
             RETURNING t.user_id",
            &[&TRACE, &since],
        )
        .await
        .expect("another writer upserts the trace while the batch is stalled");
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("alice"));
    assert!(!stalled.is_finished(), "the batch still waits for the lock");
    hold.rollback().await.expect("release the activity lock");
    let ready = stalled
        .await
        .expect("submit task")
        .expect("the batch commits");
    // Its identity was written before the other writer's pending mark.
    assert!(ready.is_empty(), "{ready:?}");
    assert_eq!(common::count(&client).await, 3);
    exporter.shutdown().await;
}
