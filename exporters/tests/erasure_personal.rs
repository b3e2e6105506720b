//! Erasure beyond the fixed personal set, against a real PostgreSQL: the keys the
//! redaction config declares personal and the user's id repeated under other
//! keys are erased while the chain still verifies; a key declared personal only
//! after a row was written stays in that row (and the chain verifies); a late
//! token row attributed through its trace from an identity learned before the
//! erasure takes the pseudonym on any instance; archives of erased rows verify in
//! both formats.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use ed25519_dalek::SigningKey;
use tally_config::ArchiveFormat;
use tally_exporters::postgres::chain::{self, ChainJob, VerifyReport};
use tally_exporters::postgres::erasure::{Eraser, ErasureRequest};
use tally_exporters::postgres::personal::PersonalKeys;
use tally_exporters::postgres::{
    create_partitions, insert_activity_batch_with, PgExporter, TraceAttribution, TraceIdentity,
};
use tally_exporters::testing::TestDatabase;
use tally_model::{ActivityEvent, AttributionSource, Outcome, Readiness, TokenUsage};
use uuid::Uuid;

const USER: &str = "alice-7f3e";
const OWNER: &str = "owner-secret-41";
const VIEWER: &str = "viewer-secret-42";
const LATE_OWNER: &str = "late-owner-43";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn declared() -> PersonalKeys {
    PersonalKeys::new(["doc.owner", "edge.*"])
}

fn eraser() -> Eraser {
    Eraser::new(vec![7; 32], Some(key())).with_personal_keys(declared())
}

fn request() -> ErasureRequest {
    ErasureRequest {
        tenant: "acme".into(),
        user: USER.into(),
        reason: "data subject request 43".into(),
        requested_by: "admin-bob".into(),
    }
}

fn event(user: &str, attributes: serde_json::Value) -> ActivityEvent {
    let mut event = common::event(1);
    event.tenant_id = Some("acme".into());
    event.user_id = Some(user.to_owned());
    event.session_id = Some(format!("sess-{user}"));
    event.attributes = match attributes {
        serde_json::Value::Object(map) => map,
        _ => panic!("attributes are an object"),
    };
    event
}

async fn verify(db: &TestDatabase) -> VerifyReport {
    let mut client = db.client().await;
    chain::verify(&mut client, "acme", &[key().verifying_key()])
        .await
        .expect("verify")
}

async fn count(client: &tokio_postgres::Client, needle: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM activity_events WHERE strpos(attributes::text, $1) > 0",
            &[&needle],
        )
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn declared_keys_and_the_id_under_other_keys_are_erased_and_the_chain_verifies() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let today = Utc::now().date_naive();
    create_partitions(&client, today, today)
        .await
        .expect("partitions");
    let tx = client.transaction().await.expect("begin");
    // Written under a config declaring `doc.owner` and `edge.*` personal.
    let declared_rows: Vec<ActivityEvent> = (0..4)
        .map(|i| {
            event(
                USER,
                serde_json::json!({
                    "doc.owner": OWNER,
                    "edge.viewer": VIEWER,
                    "actor": USER,
                    "nested": {"keep": "as is"},
                    "http.route": "/docs",
                    "n": i,
                }),
            )
        })
        .chain([event(
            "bob",
            serde_json::json!({"doc.owner": "bob-owner", "actor": USER}),
        )])
        .collect();
    insert_activity_batch_with(&tx, &declared_rows, &declared())
        .await
        .expect("insert declared");
    // Written before `doc.owner` was declared personal.
    insert_activity_batch_with(
        &tx,
        &[event(USER, serde_json::json!({"doc.owner": LATE_OWNER}))],
        &PersonalKeys::default(),
    )
    .await
    .expect("insert undeclared");
    tx.commit().await.expect("commit");
    let marked: Vec<Option<Vec<String>>> = client
        .query(
            "SELECT personal_keys FROM activity_events WHERE user_id = $1 ORDER BY seq",
            &[&USER],
        )
        .await
        .expect("personal keys")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let all = Some(vec![
        "actor".to_owned(),
        "doc.owner".to_owned(),
        "edge.viewer".to_owned(),
    ]);
    assert_eq!(marked, [all.clone(), all.clone(), all.clone(), all, None]);

    let job = ChainJob::new(Some(key()), Duration::ZERO);
    while job.run_once(&mut client).await.expect("chainer").rows > 0 {}
    assert!(verify(&db).await.is_intact());

    let record = eraser()
        .erase(&mut client, &request())
        .await
        .expect("erase");
    assert!(record.is_done());
    assert_eq!(record.counts.get("activity_events"), Some(&5));

    let report = verify(&db).await;
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.erased_rows, 5);
    // The declared keys and the id under `actor` are gone from the user's rows…
    assert_eq!(count(&client, OWNER).await, 0);
    assert_eq!(count(&client, VIEWER).await, 0);
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM activity_events \
             WHERE user_id = $1 AND attributes ?| ARRAY['actor', 'doc.owner', 'edge.viewer']",
            &[&record.pseudonym],
        )
        .await
        .expect("left")
        .get(0);
    // …except in the row written before `doc.owner` was declared: the chain
    // commits to it as a public attribute (docs/privacy.md, "Erasure").
    assert_eq!(left, 1);
    assert_eq!(count(&client, LATE_OWNER).await, 1);
    let kept: i64 = client
        .query_one(
            "SELECT count(*) FROM activity_events WHERE user_id = $1 \
             AND attributes ->> 'http.route' = '/docs' AND attributes -> 'nested' ? 'keep'",
            &[&record.pseudonym],
        )
        .await
        .expect("kept")
        .get(0);
    assert_eq!(kept, 4, "the other attributes stay");
    // Bob's row keeps his declared key; the id of another user under `actor`
    // is his row's business (only the erased user's rows change).
    assert_eq!(count(&client, "bob-owner").await, 1);

    // Moving a declared key back into the public part is caught.
    client
        .execute(
            "UPDATE activity_events SET personal_keys = NULL WHERE user_id = 'bob'",
            &[],
        )
        .await
        .expect("tamper");
    assert!(!verify(&db).await.is_intact());
}

#[tokio::test]
async fn declared_keys_are_removed_from_token_attributes_at_every_depth() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    client
        .execute(
            "INSERT INTO token_usage (id, seq, ts, tenant_id, user_id, provider, model, \
                 total_tokens, attributes) \
             VALUES (gen_random_uuid(), nextval('token_usage_seq'), now(), 'acme', $1, \
                 'openai', 'gpt-4o', 7, jsonb_build_object('doc.owner', $2::text, \
                 'wrap', jsonb_build_object('edge.viewer', $3::text, 'k', 'v')))",
            &[&USER, &OWNER, &VIEWER],
        )
        .await
        .expect("insert token");
    eraser()
        .erase(&mut client, &request())
        .await
        .expect("erase");
    let attributes: serde_json::Value = client
        .query_one("SELECT attributes FROM token_usage", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(attributes, serde_json::json!({"wrap": {"k": "v"}}));
}

fn token(user: Option<&str>, source: AttributionSource, trace: &str) -> TokenUsage {
    TokenUsage {
        id: Uuid::new_v4(),
        ts: Utc::now() - TimeDelta::seconds(2),
        tenant_id: Some("acme".into()),
        user_id: user.map(str::to_owned),
        session_id: user.map(|u| format!("sess-{u}")),
        service: Some("svc".into()),
        trace_id: Some(trace.to_owned()),
        span_id: None,
        provider: Some("openai".into()),
        operation: Some("chat".into()),
        request_model: Some("gpt-4o".into()),
        response_model: None,
        model: Some("gpt-4o".into()),
        input_tokens: Some(10),
        output_tokens: Some(5),
        cache_read_tokens: None,
        cache_write_tokens: None,
        reasoning_tokens: None,
        total_tokens: Some(15),
        usage_known: true,
        cost_usd: Some(0.001),
        outcome: Outcome::Success,
        duration_ms: None,
        attribution_source: source,
        attributes: serde_json::Map::new(),
        report: Default::default(),
        time_to_first_token_ms: None,
    }
}

#[tokio::test]
async fn a_late_token_row_attributed_through_its_trace_takes_the_pseudonym() {
    let db = TestDatabase::create().await;
    // The erasure ran elsewhere (another instance, or `tally erase`): this
    // instance's trace cache still maps the traces to the clear id.
    let exporter = PgExporter::start(&db.url, &common::config(), Arc::new(Readiness::new()))
        .await
        .expect("exporter starts");
    exporter.set_erased_users(eraser().erased_users(Duration::from_secs(300)));
    let mut client = db.client().await;
    let record = eraser()
        .erase(&mut client, &request())
        .await
        .expect("erase");

    let traced = "0af7651916cd43dd8448eb211c80319c";
    let pending = "1bf7651916cd43dd8448eb211c80319d";
    exporter
        .submit_rows(
            Vec::new(),
            vec![
                token(Some(USER), AttributionSource::Trace, traced),
                // The user's own record (they came back): kept as sent.
                token(Some(USER), AttributionSource::Record, traced),
                token(Some("bob"), AttributionSource::Trace, traced),
                token(None, AttributionSource::None, pending),
            ],
            Vec::new(),
            None,
        )
        .await
        .expect("committed");
    // The cache learns the identity of the pending trace afterwards.
    exporter
        .attribute_traces(&[TraceAttribution {
            trace_id: pending.to_owned(),
            identity: TraceIdentity {
                tenant_id: Some("acme".into()),
                user_id: Some(USER.into()),
                session_id: Some(format!("sess-{USER}")),
            },
            since: Utc::now() - TimeDelta::seconds(60),
        }])
        .await
        .expect("attributed");
    let rows: Vec<(String, String, Option<String>)> = client
        .query(
            "SELECT attribution_source, user_id, session_id FROM token_usage \
             ORDER BY attribution_source, user_id",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let p = record.pseudonym.clone();
    assert_eq!(
        rows,
        [
            ("record".into(), USER.into(), Some(format!("sess-{USER}"))),
            ("trace".into(), "bob".into(), Some("sess-bob".into())),
            ("trace".into(), p.clone(), None),
            ("trace".into(), p, None),
        ]
    );
    exporter.shutdown().await;
}

#[tokio::test]
async fn the_fixed_set_in_rust_is_the_one_in_sql() {
    use tally_exporters::postgres::personal::{
        is_fixed_personal_key, FIXED_PERSONAL_KEYS, FIXED_PERSONAL_PREFIX,
    };
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    let source: String = client
        .query_one(
            "SELECT prosrc FROM pg_proc WHERE proname = 'tally_is_personal_key'",
            &[],
        )
        .await
        .expect("function")
        .get(0);
    let mut quoted: Vec<&str> = source.split('\'').skip(1).step_by(2).collect();
    assert_eq!(quoted.pop(), Some("enduser.%"), "{source}");
    assert_eq!(format!("{FIXED_PERSONAL_PREFIX}%"), "enduser.%");
    assert_eq!(quoted, FIXED_PERSONAL_KEYS);
    for key in [
        "user.id",
        "enduser.role",
        "session.id",
        "user_id",
        "doc.owner",
        "enduser",
    ] {
        let sql: bool = client
            .query_one("SELECT tally_is_personal_key($1)", &[&key])
            .await
            .expect("sql")
            .get(0);
        assert_eq!(sql, is_fixed_personal_key(key), "{key}");
    }
}

#[tokio::test]
async fn the_record_lists_the_ndjson_archives_that_still_hold_the_user() {
    record_lists_the_archives_that_still_hold_the_user(ArchiveFormat::Ndjson).await;
}

#[tokio::test]
async fn the_record_lists_the_parquet_archives_that_still_hold_the_user() {
    record_lists_the_archives_that_still_hold_the_user(ArchiveFormat::Parquet).await;
}

async fn record_lists_the_archives_that_still_hold_the_user(format: ArchiveFormat) {
    use tally_exporters::postgres::archive::write_archive;
    use tally_exporters::postgres::partition_name;
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let dir = std::env::temp_dir().join(format!("tally-erasure-{}", Uuid::new_v4().simple()));
    let day = Utc::now().date_naive() - chrono::Days::new(3);
    let other_day = day - chrono::Days::new(1);
    create_partitions(&client, other_day, day)
        .await
        .expect("partitions");
    let at = |day: chrono::NaiveDate, user: &str| {
        let mut e = event(user, serde_json::json!({"k": "v"}));
        e.ts = day.and_hms_opt(12, 0, 0).expect("noon").and_utc();
        e
    };
    let tx = client.transaction().await.expect("begin");
    insert_activity_batch_with(
        &tx,
        &[at(day, USER), at(day, "bob"), at(other_day, "bob")],
        &PersonalKeys::default(),
    )
    .await
    .expect("insert");
    tx.commit().await.expect("commit");
    // Both days archived (as retention does before dropping them).
    let mut written = Vec::new();
    for d in [day, other_day] {
        let archived = write_archive(
            &client,
            dir.as_path(),
            format,
            "activity_events",
            &partition_name(d),
            d,
            None,
            Some(&key()),
        )
        .await
        .expect("archive")
        .expect("rows");
        written.push(
            archived
                .manifest_path
                .parent()
                .expect("dir")
                .join(&archived.manifest.data_file)
                .display()
                .to_string(),
        );
    }
    let record = eraser()
        .with_archive_dir(Some(dir.as_path().to_owned()))
        .erase(&mut client, &request())
        .await
        .expect("erase");
    assert_eq!(record.archives, [written[0].clone()], "{written:?}");
    // A missing directory holds nothing; the record of a user in no archive is empty.
    let none = eraser()
        .with_archive_dir(Some(dir.as_path().join("missing")))
        .erase(
            &mut client,
            &ErasureRequest {
                user: "bob".into(),
                ..request()
            },
        )
        .await
        .expect("erase bob");
    assert!(none.archives.is_empty());
    std::fs::remove_dir_all(&dir).expect("remove the archives");
}

/// Erased (pseudonymised) v3 rows, and rows of another user with their personal
/// attributes, archived as NDJSON and as Parquet: both archives verify, every
/// chained row re-hashed and matched with the chain in the database.
#[tokio::test]
async fn archives_of_erased_rows_verify_in_both_formats() {
    use tally_exporters::postgres::archive::{parquet_file, verify_archive_dir, write_archive};
    use tally_exporters::postgres::partition_name;
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let day = Utc::now().date_naive() - chrono::Days::new(2);
    create_partitions(&client, day, day)
        .await
        .expect("partitions");
    let rows: Vec<ActivityEvent> = (0..6)
        .map(|i| {
            let user = if i % 2 == 0 { USER } else { "bob" };
            let mut e = event(
                user,
                serde_json::json!({
                    "doc.owner": format!("{OWNER}-{i}"),
                    "actor": user,
                    "text": "say \"hi\", then\nleave — é 漢字",
                    "n": i,
                }),
            );
            e.ts = day.and_hms_opt(12, 0, i).expect("time").and_utc();
            e
        })
        .collect();
    let tx = client.transaction().await.expect("begin");
    insert_activity_batch_with(&tx, &rows, &declared())
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    let job = ChainJob::new(Some(key()), Duration::ZERO);
    while job.run_once(&mut client).await.expect("chainer").rows > 0 {}
    let record = eraser()
        .erase(&mut client, &request())
        .await
        .expect("erase");
    assert_eq!(record.counts.get("activity_events"), Some(&3));
    assert_eq!(verify(&db).await.erased_rows, 3);

    for format in [ArchiveFormat::Ndjson, ArchiveFormat::Parquet] {
        let dir = std::env::temp_dir().join(format!("tally-erased-{}", Uuid::new_v4().simple()));
        let archived = write_archive(
            &client,
            &dir,
            format,
            "activity_events",
            &partition_name(day),
            day,
            None,
            Some(&key()),
        )
        .await
        .expect("archive")
        .expect("rows");
        assert_eq!(archived.manifest.rows, 6);
        assert_eq!(archived.manifest.chained_rows, 6);
        let checks = verify_archive_dir(&dir, &[key().verifying_key()], Some(&client))
            .await
            .expect("verify");
        assert_eq!(checks.len(), 1);
        assert!(checks[0].is_intact(), "{format:?}: {:?}", checks[0]);
        assert_eq!(checks[0].rows_rehashed, 6, "{format:?}");
        assert_eq!(checks[0].links_matched_in_database, 6, "{format:?}");
        if format == ArchiveFormat::Parquet {
            let data = dir
                .join("activity_events")
                .join(&archived.manifest.data_file);
            assert!(archived.manifest.data_file.ends_with(".parquet"));
            assert!(!parquet_file::holds_user(&data, "acme", USER).expect("read"));
            assert!(parquet_file::holds_user(&data, "acme", &record.pseudonym).expect("read"));
            assert!(parquet_file::holds_user(&data, "acme", "bob").expect("read"));
        }
        std::fs::remove_dir_all(&dir).expect("remove the archive");
    }
}
