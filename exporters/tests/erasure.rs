//! Erasure against a real PostgreSQL: no trace of the user is left in any text
//! or jsonb column, counts and token sums are unchanged, the chain still
//! verifies (rows of canonical form v3 and rows stored before it), tampering
//! after the erasure is still caught, an interrupted erasure resumes, and a
//! second request is a no-op.

mod common;

use std::time::Duration;

use ed25519_dalek::SigningKey;
use tally_exporters::postgres::chain::{self, ChainJob, ProblemKind, VerifyReport, VerifyingKey};
use tally_exporters::postgres::erasure::{Eraser, ErasureError, ErasureRequest, ERASE_ACTION};
use tally_exporters::postgres::RollupJob;
use tally_exporters::testing::TestDatabase;
use tokio_postgres::Client;

const ACTIVITY_LOCK: i64 = i64::from_be_bytes(*b"tallyact");
const TOKEN_LOCK: i64 = i64::from_be_bytes(*b"tallytok");
const USER: &str = "alice-7f3e";
const EMAIL: &str = "alice.liddell@example.org";
const IP: &str = "203.0.113.77";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn trusted() -> Vec<VerifyingKey> {
    vec![key().verifying_key()]
}

fn eraser() -> Eraser {
    Eraser::new(vec![7; 32], Some(key()))
}

fn request() -> ErasureRequest {
    ErasureRequest {
        tenant: "acme".into(),
        user: USER.into(),
        reason: "data subject request 42".into(),
        requested_by: "admin-bob".into(),
    }
}

/// Inserts `n` activity rows of `user` the way the writers do; `legacy` rows
/// are stored as before schema version 19 (no chain_form, no salt).
async fn activity(client: &mut Client, tenant: &str, user: &str, n: i64, legacy: bool) {
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIVITY_LOCK])
        .await
        .expect("lock");
    let email = format!("{user}@mail");
    let email = if user == USER { EMAIL } else { email.as_str() };
    let ip = if user == USER { IP } else { "198.51.100.1" };
    tx.execute(
        "INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, session_id, action, \
             outcome, resource_type, attributes, taxonomy_valid, chain_form, chain_salt) \
         SELECT gen_random_uuid(), nextval('activity_events_seq'), now() - i * interval '1 ms', \
             $1, $2, 'sess-' || $2, CASE WHEN i % 3 = 0 THEN 'doc.read' ELSE 'login' END, \
             CASE WHEN i % 5 = 0 THEN 'failure' ELSE 'success' END, 'doc', \
             jsonb_build_object('user.email', $3::text, 'client.address', $4::text, \
                 'http.route', '/docs', 'enduser.role', 'reader', 'n', i), true, \
             CASE WHEN $6 THEN NULL ELSE 3 END, \
             CASE WHEN $6 THEN NULL ELSE uuid_send(gen_random_uuid()) END \
         FROM generate_series(1, $5::int8) AS i",
        &[&tenant, &user, &email, &ip, &n, &legacy],
    )
    .await
    .expect("insert activity");
    tx.commit().await.expect("commit");
}

async fn tokens(client: &mut Client, tenant: &str, user: &str, n: i64) {
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TOKEN_LOCK])
        .await
        .expect("lock");
    let email = format!("{user}@mail");
    let email = if user == USER { EMAIL } else { email.as_str() };
    tx.execute(
        "INSERT INTO token_usage (id, seq, ts, tenant_id, user_id, session_id, provider, model, \
             input_tokens, output_tokens, total_tokens, cost_usd, attributes) \
         SELECT gen_random_uuid(), nextval('token_usage_seq'), now() - i * interval '1 ms', $1, $2, \
             'sess-' || $2, 'openai', 'gpt-4o', 10 + i, 5, 15 + i, 0.001, \
             jsonb_build_object('user.email', $3::text, 'gen_ai.prompt.owner', $2::text, \
                 'nested', jsonb_build_array($2::text, 'x')) \
         FROM generate_series(1, $4::int8) AS i",
        &[&tenant, &user, &email, &n],
    )
    .await
    .expect("insert tokens");
    tx.commit().await.expect("commit");
}

async fn chain_and_fold(db: &TestDatabase) {
    let mut client = db.client().await;
    let job = ChainJob::new(Some(key()), Duration::ZERO).with_max_rows_per_run(50_000);
    while job.run_once(&mut client).await.expect("chainer run").rows > 0 {}
    let rollup = RollupJob::new(Duration::ZERO);
    loop {
        let report = rollup.run_once(&mut client).await.expect("rollup run");
        if report.activity_rows + report.token_rows == 0 {
            break;
        }
    }
}

async fn verify(db: &TestDatabase, tenant: &str) -> VerifyReport {
    let mut client = db.client().await;
    chain::verify(&mut client, tenant, &trusted())
        .await
        .expect("verify")
}

/// Every (table, column) of a text, jsonb or text[] column whose value contains `needle`.
async fn traces_of(client: &Client, needle: &str) -> Vec<String> {
    tally_exporters::testing::columns_holding(client, needle).await
}

/// (events, tokens, cost) summed over the tenant's rollups, and raw rows.
async fn totals(client: &Client) -> (i64, i64, i64, String, i64) {
    let row = client
        .query_one(
            "SELECT (SELECT sum(events)::int8 FROM activity_daily WHERE tenant_id = 'acme'), \
                    (SELECT sum(total_tokens)::int8 FROM token_usage_daily WHERE tenant_id = 'acme'), \
                    (SELECT count(DISTINCT user_id) FROM activity_daily WHERE tenant_id = 'acme' \
                        AND user_id <> 'admin-bob'), \
                    (SELECT sum(cost_usd)::text FROM token_usage_daily WHERE tenant_id = 'acme'), \
                    (SELECT sum(total_tokens)::int8 FROM token_usage WHERE tenant_id = 'acme')",
            &[],
        )
        .await
        .expect("totals");
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

#[tokio::test]
async fn an_erasure_leaves_no_trace_keeps_the_sums_and_the_chain_verifies() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    // Rows stored before canonical form v3, chained under v1/v2 ...
    activity(&mut client, "acme", USER, 7, true).await;
    activity(&mut client, "acme", "bob", 3, true).await;
    chain_and_fold(&db).await;
    // ... then rows of form v3, some chained, some not yet.
    activity(&mut client, "acme", USER, 12, false).await;
    activity(&mut client, "beta", USER, 2, false).await;
    tokens(&mut client, "acme", USER, 9).await;
    tokens(&mut client, "acme", "bob", 2).await;
    client
        .execute(
            "INSERT INTO rejected_events (id, tenant_id, reason, record) VALUES \
             (gen_random_uuid(), 'acme', 'unknown_action', \
              jsonb_build_object('user_id', $1::text, 'session_id', 's1', \
                  'attributes', jsonb_build_object('client.address', $2::text, 'note', 'by ' || $1)))",
            &[&USER, &IP],
        )
        .await
        .expect("rejected");
    client
        .execute(
            "INSERT INTO api_keys (id, prefix, secret_hash, tenant, scopes, description, user_id) \
             VALUES (gen_random_uuid(), 'tly_x', decode(repeat('00', 32), 'hex'), 'acme', \
                 '{self:read}', 'key of ' || $1, $1)",
            &[&USER],
        )
        .await
        .expect("api key");
    chain_and_fold(&db).await;
    activity(&mut client, "acme", USER, 4, false).await; // not chained, not folded
    let before = totals(&client).await;
    assert!(!traces_of(&client, USER).await.is_empty());

    let record = eraser()
        .with_batch_rows(5)
        .erase(&mut client, &request())
        .await
        .expect("erase");
    assert!(record.is_done(), "{record:?}");
    assert_eq!(record.counts.get("activity_events"), Some(&23));
    assert_eq!(record.counts.get("token_usage"), Some(&9));
    assert_eq!(record.counts.get("rejected_events"), Some(&1));
    assert_eq!(record.counts.get("api_keys"), Some(&1));
    assert!(record.counts.get("rollups").is_some_and(|n| *n > 0));
    assert!(record.pseudonym.starts_with("erased:"));

    chain_and_fold(&db).await;
    // Beta's alice is another person: untouched.
    let beta: i64 = client
        .query_one(
            "SELECT count(*) FROM activity_events WHERE tenant_id = 'beta' AND user_id = $1",
            &[&USER],
        )
        .await
        .expect("beta")
        .get(0);
    assert_eq!(beta, 2);
    client
        .execute("DELETE FROM activity_events WHERE tenant_id = 'beta'", &[])
        .await
        .expect("drop beta for the scan");
    client
        .execute("DELETE FROM activity_daily WHERE tenant_id = 'beta'", &[])
        .await
        .expect("drop beta rollups");
    client
        .execute(
            "DELETE FROM activity_user_weekly WHERE tenant_id = 'beta'",
            &[],
        )
        .await
        .expect("drop beta weekly rollups");
    client
        .execute(
            "DELETE FROM activity_user_last_seen WHERE tenant_id = 'beta'",
            &[],
        )
        .await
        .expect("drop beta last seen");
    client
        .execute("DELETE FROM activity_user_last_seen_all", &[])
        .await
        .expect("drop the tenant-less last seen");
    for needle in [USER, EMAIL, IP, "sess-alice"] {
        assert_eq!(
            traces_of(&client, needle).await,
            Vec::<String>::new(),
            "{needle}"
        );
    }
    let after = totals(&client).await;
    assert_eq!(
        (before.1, &before.3, before.4),
        (after.1, &after.3, after.4),
        "token sums unchanged"
    );
    // The rollups count the 4 late rows and the erasure event now.
    assert_eq!(after.0, before.0 + 4 + 1);
    // The per-user weekly rollups (migration 0029) were re-keyed like the
    // daily ones: they still sum the (pseudonymised) raw rows by week.
    for (weekly, raw) in [
        (
            "SELECT tenant_id, week::text, user_id, events::text FROM activity_user_weekly \
             ORDER BY 1, 2, 3",
            "SELECT tenant_id, date_trunc('week', ts AT TIME ZONE 'UTC')::date::text, \
                 coalesce(user_id, ''), count(*)::text FROM activity_events \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        ),
        (
            "SELECT tenant_id, week::text, user_id, requests::text, total_tokens::text, \
                 cost_usd::text FROM token_usage_user_weekly ORDER BY 1, 2, 3",
            "SELECT tenant_id, date_trunc('week', ts AT TIME ZONE 'UTC')::date::text, \
                 coalesce(user_id, ''), count(*)::text, \
                 coalesce(sum(total_tokens), 0)::text, \
                 coalesce(sum(cost_usd), 0)::numeric(24, 10)::text FROM token_usage \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        ),
    ] {
        let text = |rows: Vec<tokio_postgres::Row>| -> Vec<Vec<String>> {
            rows.iter()
                .map(|r| (0..r.len()).map(|i| r.get::<_, String>(i)).collect())
                .collect()
        };
        let kept = text(client.query(weekly, &[]).await.expect("weekly"));
        assert!(kept.iter().any(|r| r[2] == record.pseudonym), "{kept:?}");
        assert_eq!(
            kept,
            text(client.query(raw, &[]).await.expect("raw")),
            "{weekly}"
        );
    }
    assert_eq!(after.2, before.2, "one user became one pseudonym");

    let report = verify(&db, "acme").await;
    assert!(report.is_intact(), "{report:#?}");
    assert_eq!(report.erased_rows, 23);
    assert!(
        report.summary().contains("23 erased"),
        "{}",
        report.summary()
    );

    // The event says who, why and the pseudonym.
    let event = client
        .query_one(
            "SELECT user_id, resource_id, attributes->>'erasure.reason', \
                 (attributes->>'erasure.rows.activity_events')::int8 \
             FROM activity_events WHERE action = $1",
            &[&ERASE_ACTION],
        )
        .await
        .expect("event");
    assert_eq!(event.get::<_, String>(0), "admin-bob");
    assert_eq!(event.get::<_, String>(1), record.pseudonym);
    assert_eq!(event.get::<_, String>(2), "data subject request 42");
    assert_eq!(event.get::<_, i64>(3), 23);

    // A second request is a no-op answering the same record.
    let again = eraser()
        .erase(&mut client, &request())
        .await
        .expect("again");
    assert_eq!(again, record);
    let events: i64 = client
        .query_one(
            "SELECT count(*) FROM activity_events WHERE action = $1",
            &[&ERASE_ACTION],
        )
        .await
        .expect("events")
        .get(0);
    assert_eq!(events, 1);
}

/// The seq of an erased row of the given form (v3 or not).
async fn erased_seq(client: &Client, v3: bool) -> i64 {
    client
        .query_one(
            "SELECT min(seq) FROM activity_events WHERE erasure_id IS NOT NULL \
               AND (chain_form IS NOT NULL) = $1",
            &[&v3],
        )
        .await
        .expect("erased seq")
        .get(0)
}

async fn erased_db() -> TestDatabase {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    activity(&mut client, "acme", USER, 4, true).await;
    activity(&mut client, "acme", "bob", 2, true).await;
    activity(&mut client, "acme", USER, 4, false).await;
    chain_and_fold(&db).await;
    eraser()
        .erase(&mut client, &request())
        .await
        .expect("erase");
    chain_and_fold(&db).await;
    assert!(verify(&db, "acme").await.is_intact());
    db
}

#[tokio::test]
async fn tampering_after_an_erasure_is_still_caught() {
    // A deleted erased row.
    let db = erased_db().await;
    let client = db.client().await;
    let seq = erased_seq(&client, true).await;
    client
        .execute("DELETE FROM activity_events WHERE seq = $1", &[&seq])
        .await
        .expect("delete");
    let report = verify(&db, "acme").await;
    let problem = report.first_problem.expect("tampered");
    assert_eq!((problem.seq, problem.kind), (seq, ProblemKind::Deleted));

    // An altered kept digest (v3) and an altered erased row stored before v3.
    for (v3, sql) in [
        (
            true,
            "UPDATE activity_events SET erased_digest = sha256(erased_digest) WHERE seq = $1",
        ),
        (
            false,
            "UPDATE activity_events SET attributes = attributes || '{\"n\": 99}' WHERE seq = $1",
        ),
        (
            false,
            "UPDATE activity_events SET user_id = 'erased:forged' WHERE seq = $1",
        ),
    ] {
        let db = erased_db().await;
        let client = db.client().await;
        let seq = erased_seq(&client, v3).await;
        client.execute(sql, &[&seq]).await.expect("alter");
        let report = verify(&db, "acme").await;
        let problem = report.first_problem.expect("tampered");
        assert_eq!(
            (problem.seq, problem.kind),
            (seq, ProblemKind::Altered),
            "{sql}"
        );
    }

    // Erased rows whose erasure record is gone.
    let db = erased_db().await;
    let client = db.client().await;
    client
        .execute("DELETE FROM erasures", &[])
        .await
        .expect("delete record");
    let report = verify(&db, "acme").await;
    let problem = report.first_problem.expect("tampered");
    assert_eq!(problem.kind, ProblemKind::Altered);
    assert!(problem.detail.contains("no record"), "{}", problem.detail);

    // A row "erased" by hand, with a made-up record: its digest cannot match.
    let db = erased_db().await;
    let client = db.client().await;
    let bob: i64 = client
        .query_one(
            "SELECT min(seq) FROM activity_events WHERE user_id = 'bob'",
            &[],
        )
        .await
        .expect("bob")
        .get(0);
    client
        .execute(
            "UPDATE activity_events SET user_id = e.pseudonym, erasure_id = e.id, \
                 erased_signature = decode(repeat('00', 64), 'hex') \
             FROM erasures e WHERE seq = $1",
            &[&bob],
        )
        .await
        .expect("forge");
    let report = verify(&db, "acme").await;
    let problem = report.first_problem.expect("tampered");
    assert_eq!((problem.seq, problem.kind), (bob, ProblemKind::Altered));
}

#[tokio::test]
async fn an_interrupted_erasure_resumes_and_finishes_once() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    activity(&mut client, "acme", USER, 30, false).await;
    tokens(&mut client, "acme", USER, 10).await;
    chain_and_fold(&db).await;
    let before = totals(&client).await;

    // "Crash" after two batches of 7 rows.
    let stopped = eraser()
        .with_batch_rows(7)
        .with_max_batches(Some(2))
        .erase(&mut client, &request())
        .await;
    assert!(
        matches!(stopped, Err(ErasureError::Blocked { .. })),
        "{stopped:?}"
    );
    let (state, left): (String, i64) = {
        let row = client
            .query_one(
                "SELECT state, (SELECT count(*) FROM activity_events WHERE user_id = $1) \
                 FROM erasures",
                &[&USER],
            )
            .await
            .expect("state");
        (row.get(0), row.get(1))
    };
    assert_eq!((state.as_str(), left), ("pending", 30 - 14));
    // Verification holds in the middle of an erasure too.
    chain_and_fold(&db).await;
    assert!(verify(&db, "acme").await.is_intact());

    // Two instances resume at once: the row lock makes them take turns.
    let (a, b) = (eraser().with_batch_rows(3), eraser().with_batch_rows(4));
    let (mut ca, mut cb) = (db.client().await, db.client().await);
    let (ra, rb) = tokio::join!(a.resume_pending(&mut ca), b.resume_pending(&mut cb));
    let record = ra
        .expect("resume a")
        .into_iter()
        .chain(rb.expect("resume b"))
        .next()
        .expect("resumed");
    assert!(record.is_done());
    assert_eq!(record.counts.get("activity_events"), Some(&30));
    assert_eq!(record.counts.get("token_usage"), Some(&10));
    let events: i64 = client
        .query_one(
            "SELECT count(*) FROM activity_events WHERE action = $1",
            &[&ERASE_ACTION],
        )
        .await
        .expect("events")
        .get(0);
    assert_eq!(events, 1, "exactly one erasure event");
    chain_and_fold(&db).await;
    let report = verify(&db, "acme").await;
    assert!(report.is_intact(), "{report:#?}");
    assert_eq!(report.erased_rows, 30);
    let after = totals(&client).await;
    assert_eq!((before.1, before.4), (after.1, after.4));
    assert_eq!(after.0, before.0 + 1);
    assert!(traces_of(&client, USER).await.is_empty());
}

#[tokio::test]
async fn erasing_100k_rows_debug_timing() {
    if std::env::var_os("TALLY_ERASURE_TIMING").is_none() {
        return;
    }
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    // The chainer on 100k rows of form v1/v2, then on 100k rows of form v3.
    let chainer = ChainJob::new(Some(key()), Duration::ZERO).with_max_rows_per_run(2_000);
    for (user, legacy) in [("bob", true), (USER, false)] {
        activity(&mut client, "acme", user, 100_000, legacy).await;
        let start = std::time::Instant::now();
        while chainer.run_once(&mut client).await.expect("chain").rows > 0 {}
        let took = start.elapsed();
        println!(
            "chained 100000 rows of form {} in {:.2} s ({:.0} rows/s)",
            if legacy { "v1/v2" } else { "v3" },
            took.as_secs_f64(),
            100_000.0 / took.as_secs_f64()
        );
    }
    chain_and_fold(&db).await;
    let start = std::time::Instant::now();
    let record = eraser()
        .erase(&mut client, &request())
        .await
        .expect("erase");
    let took = start.elapsed();
    println!(
        "erased {} activity rows in {:.2} s ({:.0} rows/s)",
        record.counts.get("activity_events").copied().unwrap_or(0),
        took.as_secs_f64(),
        100_000.0 / took.as_secs_f64()
    );
    let start = std::time::Instant::now();
    let report = verify(&db, "acme").await;
    println!(
        "verified {} rows ({} erased) in {:.2} s",
        report.rows_checked,
        report.erased_rows,
        start.elapsed().as_secs_f64()
    );
    assert!(report.is_intact());
}

#[tokio::test]
async fn rows_stored_before_migration_19_keep_their_form_verify_and_erase() {
    use tally_exporters::postgres::{create_partitions, migrate, MIGRATIONS};
    let db = TestDatabase::create().await;
    let mut client = db.client().await;
    // The schema as it was before migration 19.
    client
        .batch_execute(
            "CREATE TABLE tally_schema_migrations (version integer PRIMARY KEY, \
             name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .expect("migration log");
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v < 19) {
        client.batch_execute(sql).await.expect("old migration");
        client
            .execute(
                "INSERT INTO tally_schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .expect("record");
    }
    let today = chrono::Utc::now().date_naive();
    create_partitions(&client, today, today)
        .await
        .expect("partitions");
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIVITY_LOCK])
        .await
        .expect("lock");
    tx.execute(
        "INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, action, outcome, attributes) \
         SELECT gen_random_uuid(), nextval('activity_events_seq'), now(), 'acme', \
             CASE WHEN i % 2 = 0 THEN $1 ELSE 'bob' END, 'login', 'success', \
             jsonb_build_object('user.email', \
                 CASE WHEN i % 2 = 0 THEN $2::text ELSE 'bob@mail' END, 'n', i) \
         FROM generate_series(1, 6) AS i",
        &[&USER, &EMAIL],
    )
    .await
    .expect("old rows");
    tx.commit().await.expect("commit");
    // Upgrade, then new rows.
    migrate(&client).await.expect("migrate to 19");
    let forms: Vec<Option<i16>> = client
        .query("SELECT chain_form FROM activity_events ORDER BY seq", &[])
        .await
        .expect("forms")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(forms, vec![None; 6], "stored rows keep their form");
    activity(&mut client, "acme", USER, 3, false).await;
    let new_forms: i64 = client
        .query_one(
            "SELECT count(*) FROM activity_events WHERE chain_form = 3 AND chain_salt IS NOT NULL",
            &[],
        )
        .await
        .expect("new forms")
        .get(0);
    assert_eq!(new_forms, 3, "rows stored after the upgrade take v3");
    chain_and_fold(&db).await;
    assert!(verify(&db, "acme").await.is_intact());
    let record = eraser()
        .erase(&mut client, &request())
        .await
        .expect("erase");
    assert_eq!(record.counts.get("activity_events"), Some(&6));
    chain_and_fold(&db).await;
    let report = verify(&db, "acme").await;
    assert!(report.is_intact(), "{report:#?}");
    assert_eq!(
        report.erased_rows, 6,
        "3 stored before the upgrade, 3 after"
    );
    assert!(traces_of(&client, USER).await.is_empty());
    assert!(traces_of(&client, EMAIL).await.is_empty());
}
