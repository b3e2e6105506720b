//! Tamper evidence against a real PostgreSQL: the chainer, out-of-band UPDATE,
//! DELETE and INSERT each detected at their seq, retention drops, concurrent
//! chainers, and signed checkpoints.

mod common;

use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, Utc};
use ed25519_dalek::SigningKey;
use tally_config::RetentionConfig;
use tally_exporters::postgres::chain::{
    self, ChainJob, ProblemKind, VerifyReport, VerifyStatus, VerifyingKey,
};
use tally_exporters::postgres::{RetentionJob, RetentionReport, RollupJob};
use tally_exporters::testing::TestDatabase;
use tokio_postgres::Client;

const ACTIVITY_LOCK: i64 = i64::from_be_bytes(*b"tallyact");

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn trusted() -> Vec<VerifyingKey> {
    vec![key().verifying_key()]
}

fn job() -> ChainJob {
    ChainJob::new(Some(key()), Duration::ZERO)
}

/// Inserts one row the way the writers do (lock, nextval, commit) and answers its seq.
async fn insert(client: &mut Client, tenant: &str, ts: DateTime<Utc>, user: &str) -> i64 {
    let tx = client.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIVITY_LOCK])
        .await
        .expect("lock");
    let seq: i64 = tx
        .query_one(
            "INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, action, outcome, \
                 attributes, taxonomy_valid) \
             VALUES (gen_random_uuid(), nextval('activity_events_seq'), $1, $2, $3, 'doc.read', \
                 'success', '{\"b\": 1, \"a\": [1.5, \"x\"]}', true) RETURNING seq",
            &[&ts, &tenant, &user],
        )
        .await
        .expect("insert")
        .get(0);
    tx.commit().await.expect("commit");
    seq
}

/// Rows alternating between tenants `acme` and `beta`: answers their seqs.
async fn interleaved(client: &mut Client, n: usize) -> (Vec<i64>, Vec<i64>) {
    let (mut acme, mut beta) = (Vec::new(), Vec::new());
    for i in 0..n {
        acme.push(insert(client, "acme", Utc::now(), &format!("u{i}")).await);
        beta.push(insert(client, "beta", Utc::now(), &format!("u{i}")).await);
    }
    (acme, beta)
}

async fn chain_all(db: &TestDatabase) {
    let mut client = db.client().await;
    job().run_once(&mut client).await.expect("chainer run");
}

async fn verify(db: &TestDatabase, tenant: &str) -> VerifyReport {
    let mut client = db.client().await;
    chain::verify(&mut client, tenant, &trusted())
        .await
        .expect("verify")
}

fn assert_problem(report: &VerifyReport, seq: i64, kind: ProblemKind) {
    assert_eq!(report.status, VerifyStatus::Tampered, "{report:#?}");
    let problem = report.first_problem.as_ref().expect("a problem");
    assert_eq!((problem.seq, problem.kind), (seq, kind), "{report:#?}");
}

#[tokio::test]
async fn untouched_chains_verify_per_tenant_with_a_signed_checkpoint() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let (acme, beta) = interleaved(&mut client, 6).await;
    chain_all(&db).await;
    // A row after the chain's watermark is "not chained yet", not an error.
    let late = insert(&mut client, "acme", Utc::now(), "late").await;

    let report = verify(&db, "acme").await;
    assert_eq!(report.status, VerifyStatus::Intact, "{report:#?}");
    assert_eq!(report.verified_up_to_seq, acme.last().copied());
    assert_eq!(report.rows_checked, 6);
    assert_eq!(report.unchained_rows, 1);
    let checkpoint = report.checkpoint.as_ref().expect("checkpoint");
    assert_eq!(Some(checkpoint.seq), acme.last().copied());
    assert_eq!(checkpoint.key_trusted, Some(true));
    assert!(checkpoint.signature_valid);
    assert!(report.summary().contains("intact up to seq"));

    let report = verify(&db, "beta").await;
    assert!(report.is_intact(), "{report:#?}");
    assert_eq!(report.verified_up_to_seq, beta.last().copied());

    // The late row is chained by the next run.
    chain_all(&db).await;
    let report = verify(&db, "acme").await;
    assert!(report.is_intact(), "{report:#?}");
    assert_eq!(report.verified_up_to_seq, Some(late));
    assert_eq!(report.unchained_rows, 0);

    // A tenant with nothing stored verifies as intact with nothing chained.
    let report = verify(&db, "nobody").await;
    assert!(report.is_intact());
    assert_eq!(report.verified_up_to_seq, None);
}

#[tokio::test]
async fn an_update_is_detected_at_its_seq_and_other_tenants_stay_intact() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let (acme, beta) = interleaved(&mut client, 5).await;
    chain_all(&db).await;

    client
        .execute(
            "UPDATE activity_events SET user_id = 'mallory' WHERE seq = $1",
            &[&acme[2]],
        )
        .await
        .expect("update");
    let report = verify(&db, "acme").await;
    assert_problem(&report, acme[2], ProblemKind::Altered);
    assert_eq!(report.verified_up_to_seq, Some(acme[1]));
    assert!(report.summary().contains("TAMPERED"));
    assert!(verify(&db, "beta").await.is_intact());

    // A change inside the jsonb attributes is detected too.
    client
        .execute(
            "UPDATE activity_events SET attributes = jsonb_set(attributes, '{b}', '2') \
             WHERE seq = $1",
            &[&beta[4]],
        )
        .await
        .expect("update attributes");
    assert_problem(&verify(&db, "beta").await, beta[4], ProblemKind::Altered);
}

#[tokio::test]
async fn a_delete_is_detected_at_its_seq() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let (acme, _beta) = interleaved(&mut client, 5).await;
    chain_all(&db).await;

    client
        .execute("DELETE FROM activity_events WHERE seq = $1", &[&acme[3]])
        .await
        .expect("delete");
    let report = verify(&db, "acme").await;
    assert_problem(&report, acme[3], ProblemKind::Deleted);

    // Deleting the link as well is still seen: the next link names its predecessor.
    client
        .execute(
            "DELETE FROM activity_chain WHERE tenant_id = 'acme' AND seq = $1",
            &[&acme[3]],
        )
        .await
        .expect("delete link");
    assert_problem(&verify(&db, "acme").await, acme[3], ProblemKind::Deleted);
}

#[tokio::test]
async fn deleting_the_tail_with_its_links_is_detected() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let (acme, _beta) = interleaved(&mut client, 4).await;
    chain_all(&db).await;
    let last = acme[3];
    client
        .batch_execute(&format!(
            "DELETE FROM activity_events WHERE seq = {last}; \
             DELETE FROM activity_chain WHERE tenant_id = 'acme' AND seq = {last};"
        ))
        .await
        .expect("delete tail");
    // The head and the signed checkpoint still name the removed row.
    assert_problem(&verify(&db, "acme").await, last, ProblemKind::Deleted);
}

#[tokio::test]
async fn an_insert_is_detected_at_its_seq() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let (acme, beta) = interleaved(&mut client, 5).await;
    chain_all(&db).await;

    // A row for acme in a seq gap (a seq beta used), below the watermark.
    client
        .execute(
            "INSERT INTO activity_events (id, seq, ts, tenant_id, action, outcome) \
             VALUES (gen_random_uuid(), $1, now(), 'acme', 'doc.delete', 'success')",
            &[&beta[1]],
        )
        .await
        .expect("insert");
    let report = verify(&db, "acme").await;
    assert_problem(&report, beta[1], ProblemKind::Inserted);
    assert_eq!(report.verified_up_to_seq, Some(acme[1]));
    assert!(verify(&db, "beta").await.is_intact());
}

#[tokio::test]
async fn an_insert_reusing_a_chained_seq_is_detected() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let (acme, _beta) = interleaved(&mut client, 3).await;
    chain_all(&db).await;
    client
        .execute(
            "INSERT INTO activity_events (id, seq, ts, tenant_id, action, outcome) \
             VALUES (gen_random_uuid(), $1, now(), 'acme', 'doc.delete', 'success')",
            &[&acme[1]],
        )
        .await
        .expect("insert");
    assert_problem(&verify(&db, "acme").await, acme[1], ProblemKind::Inserted);
}

async fn partition(client: &Client, day: NaiveDate) {
    let next = day.succ_opt().expect("next day");
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS activity_events_p{} PARTITION OF activity_events \
             FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
            day.format("%Y%m%d")
        ))
        .await
        .expect("partition");
}

/// Rolls up, then runs retention (90 days, signed truncation records) as if today were `today`.
async fn retention(db: &TestDatabase, today: NaiveDate) -> RetentionReport {
    let mut runner = db.client().await;
    RollupJob::new(Duration::ZERO)
        .run_once(&mut runner)
        .await
        .expect("rollup");
    RetentionJob::new(RetentionConfig {
        raw_days: 90,
        aggregate_days: 0,
        ..RetentionConfig::default()
    })
    .with_signer(Some(key()))
    .run_once_at(&runner, today)
    .await
    .expect("retention")
}

/// Rows of `acme` on a day 100 days ago and today, interleaved (old, new, …), chained.
async fn old_and_new(db: &TestDatabase, n: usize) -> (NaiveDate, Vec<i64>, Vec<i64>) {
    let mut client = db.client().await;
    let old = Utc::now().date_naive() - Days::new(100);
    partition(&client, old).await;
    let old_ts = old.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    let (mut olds, mut news) = (Vec::new(), Vec::new());
    for i in 0..n {
        olds.push(insert(&mut client, "acme", old_ts, &format!("old{i}")).await);
        news.push(insert(&mut client, "acme", Utc::now(), &format!("new{i}")).await);
    }
    chain_all(db).await;
    (old, olds, news)
}

#[tokio::test]
async fn a_forged_truncation_record_does_not_excuse_deleted_rows() {
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    let (old, olds, _news) = old_and_new(&db, 3).await;
    // A database writer without the key deletes a day's rows and records a
    // "retention drop" that matches them in every column but the signature.
    client
        .execute(
            "DELETE FROM activity_events WHERE tenant_id = 'acme' AND seq = ANY($1)",
            &[&olds],
        )
        .await
        .expect("delete");
    client
        .execute(
            "INSERT INTO chain_truncations (table_name, partition_name, day, tenant_id, rows, \
                 min_seq, max_seq, chained_rows, last_chained_seq, last_chained_hash) \
             SELECT 'activity_events', 'activity_events_p' || to_char($1::date, 'YYYYMMDD'), \
                 $1, 'acme', 3, $2, $3, 3, $3, row_hash \
             FROM activity_chain WHERE tenant_id = 'acme' AND seq = $3",
            &[&old, &olds[0], &olds[2]],
        )
        .await
        .expect("forged truncation");
    let report = verify(&db, "acme").await;
    assert_problem(&report, olds[0], ProblemKind::Truncation);
    let detail = &report.first_problem.as_ref().expect("problem").detail;
    assert!(detail.contains("is not signed"), "{detail}");

    // A signature by another key is no better.
    let other = SigningKey::from_bytes(&[9; 32]);
    let record = chain::TruncationRecord {
        table: "activity_events".into(),
        tenant: "acme".into(),
        day: old,
        rows: 3,
        min_seq: Some(olds[0]),
        max_seq: Some(olds[2]),
        chained_rows: 3,
        last_chained_seq: Some(olds[2]),
        last_chained_hash: client
            .query_one(
                "SELECT row_hash FROM activity_chain WHERE tenant_id = 'acme' AND seq = $1",
                &[&olds[2]],
            )
            .await
            .expect("link")
            .get(0),
        dropped_at: Utc::now(),
    };
    let signature = ed25519_dalek::Signer::sign(&other, &record.message());
    client
        .execute(
            "UPDATE chain_truncations SET key_id = $1, signature = $2, dropped_at = $3",
            &[
                &chain::key_id(&other.verifying_key()),
                &signature.to_bytes().as_slice(),
                &record.dropped_at,
            ],
        )
        .await
        .expect("re-sign");
    assert_problem(&verify(&db, "acme").await, olds[0], ProblemKind::Truncation);

    // Signed with the real key but naming a narrower seq range: the first
    // missing row outside it is reported.
    let narrow = chain::TruncationRecord {
        min_seq: Some(olds[1]),
        ..record
    };
    let signature = ed25519_dalek::Signer::sign(&key(), &narrow.message());
    client
        .execute(
            "UPDATE chain_truncations SET key_id = $1, signature = $2, min_seq = $3",
            &[
                &chain::key_id(&key().verifying_key()),
                &signature.to_bytes().as_slice(),
                &olds[1],
            ],
        )
        .await
        .expect("re-sign");
    assert_problem(&verify(&db, "acme").await, olds[0], ProblemKind::Truncation);
}

#[tokio::test]
async fn a_row_deleted_before_its_day_is_dropped_is_caught_by_the_signed_counts() {
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    let (_old, olds, news) = old_and_new(&db, 4).await;
    client
        .execute("DELETE FROM activity_events WHERE seq = $1", &[&olds[1]])
        .await
        .expect("delete");
    let report = retention(&db, Utc::now().date_naive()).await;
    assert_eq!(report.dropped_partitions.len(), 1, "{report:?}");
    // 3 chained rows were dropped, 4 links of that day have no row.
    let report = verify(&db, "acme").await;
    assert_problem(&report, olds[3], ProblemKind::Truncation);
    assert_eq!(report.verified_up_to_seq, Some(news[2]), "{report:#?}");
}

#[tokio::test]
async fn a_truncation_record_for_a_day_whose_rows_remain_is_reported() {
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    let (old, olds, _news) = old_and_new(&db, 2).await;
    let record = chain::TruncationRecord {
        table: "activity_events".into(),
        tenant: "acme".into(),
        day: old,
        rows: 2,
        min_seq: Some(olds[0]),
        max_seq: Some(olds[1]),
        chained_rows: 2,
        last_chained_seq: Some(olds[1]),
        last_chained_hash: None,
        dropped_at: Utc::now(),
    };
    let signature = ed25519_dalek::Signer::sign(&key(), &record.message());
    client
        .execute(
            "INSERT INTO chain_truncations (table_name, partition_name, day, tenant_id, rows, \
                 min_seq, max_seq, chained_rows, last_chained_seq, dropped_at, key_id, signature) \
             VALUES ('activity_events', 'x', $1, 'acme', 2, $2, $3, 2, $3, $4, $5, $6)",
            &[
                &old,
                &olds[0],
                &olds[1],
                &record.dropped_at,
                &chain::key_id(&key().verifying_key()),
                &signature.to_bytes().as_slice(),
            ],
        )
        .await
        .expect("truncation");
    assert_problem(&verify(&db, "acme").await, olds[0], ProblemKind::Truncation);
}

#[tokio::test]
async fn an_untouched_chain_verifies_across_a_retention_drop() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let today = Utc::now().date_naive();
    let old = today - Days::new(100);
    partition(&client, old).await;
    let old_ts = old.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    // Old and recent rows interleaved in seq order, for two tenants.
    let mut acme = Vec::new();
    for i in 0..4 {
        acme.push(insert(&mut client, "acme", old_ts, &format!("old{i}")).await);
        acme.push(insert(&mut client, "acme", Utc::now(), &format!("new{i}")).await);
        insert(&mut client, "beta", old_ts, "b").await;
    }
    chain_all(&db).await;
    let report = retention(&db, today).await;
    assert_eq!(
        report.dropped_partitions,
        vec![format!("activity_events_p{}", old.format("%Y%m%d"))]
    );

    let report = verify(&db, "acme").await;
    assert!(report.is_intact(), "{report:#?}");
    assert_eq!(report.dropped_rows, 4);
    assert_eq!(report.rows_checked, 4);
    assert_eq!(report.verified_up_to_seq, acme.last().copied());
    let report = verify(&db, "beta").await;
    assert!(report.is_intact(), "{report:#?}");
    assert_eq!(report.dropped_rows, 4);
    assert_eq!(
        report.verified_up_to_seq,
        report.checkpoint.as_ref().map(|c| c.seq)
    );

    let recorded: i64 = client
        .query_one(
            "SELECT sum(rows)::int8 FROM chain_truncations WHERE day = $1",
            &[&old],
        )
        .await
        .expect("truncations")
        .get(0);
    assert_eq!(recorded, 8);

    // The recorded drop excuses only that day: a recent row deleted is still caught.
    client
        .execute("DELETE FROM activity_events WHERE seq = $1", &[&acme[5]])
        .await
        .expect("delete");
    assert_problem(&verify(&db, "acme").await, acme[5], ProblemKind::Deleted);
}

#[tokio::test]
async fn concurrent_chainers_chain_every_row_exactly_once() {
    let db = TestDatabase::migrated().await;
    let mut writer = db.client().await;
    let mut chainers = Vec::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for _ in 0..4 {
        let mut client = db.client().await;
        let stopped = stopped.clone();
        chainers.push(tokio::spawn(async move {
            let job = ChainJob::new(Some(key()), Duration::ZERO).with_max_rows_per_run(7);
            let mut chained = 0u64;
            loop {
                let done = *stopped.borrow();
                let report = job.run_once(&mut client).await.expect("chainer run");
                chained += report.rows;
                if done && report.rows == 0 {
                    return chained;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut total = 0u64;
    for i in 0..60 {
        let tenant = ["acme", "beta", "gamma"][i % 3];
        insert(&mut writer, tenant, Utc::now(), "u").await;
        total += 1;
    }
    let _ = stop.send(true);
    let mut chained = 0;
    for chainer in chainers {
        chained += chainer.await.expect("chainer task");
    }
    assert_eq!(chained, total);
    let links: i64 = writer
        .query_one("SELECT count(*) FROM activity_chain", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(links, 60);
    for tenant in ["acme", "beta", "gamma"] {
        let report = verify(&db, tenant).await;
        assert!(report.is_intact(), "{report:#?}");
        assert_eq!(report.rows_checked, 20);
    }
}

#[tokio::test]
async fn forged_checkpoints_are_rejected() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let (acme, _beta) = interleaved(&mut client, 3).await;
    // Chain the first two rows without a checkpoint, then the rest with one.
    ChainJob::new(None, Duration::ZERO)
        .with_max_rows_per_run(2)
        .run_once(&mut client)
        .await
        .expect("chainer");
    chain_all(&db).await;
    assert!(verify(&db, "acme").await.is_intact());

    // A checkpoint with a signature that does not verify.
    client
        .execute(
            "INSERT INTO chain_checkpoints (tenant_id, seq, head_hash, signed_at, key_id, signature) \
             SELECT tenant_id, seq, row_hash, now(), (SELECT key_id FROM chain_keys LIMIT 1), \
                 decode(repeat('ab', 64), 'hex') \
             FROM activity_chain WHERE tenant_id = 'acme' AND seq = $1",
            &[&acme[0]],
        )
        .await
        .expect("forged checkpoint");
    assert_problem(&verify(&db, "acme").await, acme[0], ProblemKind::Checkpoint);

    // A well-signed checkpoint by a key that is not the configured one.
    let other = SigningKey::from_bytes(&[7; 32]);
    let other_id = chain::key_id(&other.verifying_key());
    let row = client
        .query_one(
            "SELECT row_hash, now() FROM activity_chain WHERE tenant_id = 'acme' AND seq = $1",
            &[&acme[0]],
        )
        .await
        .expect("link");
    let hash: Vec<u8> = row.get(0);
    let at: DateTime<Utc> = row.get(1);
    let signature = ed25519_dalek::Signer::sign(
        &other,
        &chain::checkpoint_message("acme", acme[0], &hash, at),
    );
    client
        .batch_execute("DELETE FROM chain_checkpoints WHERE key_id <> 'keep'")
        .await
        .expect("clear");
    client
        .execute(
            "INSERT INTO chain_keys (key_id, public_key) VALUES ($1, $2)",
            &[&other_id, &other.verifying_key().as_bytes().as_slice()],
        )
        .await
        .expect("key");
    client
        .execute(
            "INSERT INTO chain_checkpoints (tenant_id, seq, head_hash, signed_at, key_id, signature) \
             VALUES ('acme', $1, $2, $3, $4, $5)",
            &[&acme[0], &hash, &at, &other_id, &signature.to_bytes().as_slice()],
        )
        .await
        .expect("checkpoint by another key");
    assert_problem(&verify(&db, "acme").await, acme[0], ProblemKind::Checkpoint);
    // Without a trusted key the recorded keys are used: that one verifies.
    let report = chain::verify(&mut client, "acme", &[])
        .await
        .expect("verify");
    assert!(report.is_intact(), "{report:#?}");
    assert_eq!(
        report.checkpoint.as_ref().map(|c| c.key_trusted),
        Some(None)
    );
}

#[tokio::test]
async fn a_rewritten_chain_is_caught_by_the_signed_checkpoint() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(insert(&mut client, "acme", Utc::now(), &format!("u{i}")).await);
    }
    chain_all(&db).await;
    // Someone with SQL access but without the signing key alters a row and
    // recomputes every link after it (here: re-chains from scratch).
    client
        .batch_execute(&format!(
            "UPDATE activity_events SET user_id = 'mallory' WHERE seq = {}; \
             DELETE FROM activity_chain; DELETE FROM chain_heads; \
             UPDATE chain_watermark SET last_seq = 0;",
            seqs[1]
        ))
        .await
        .expect("rewrite");
    ChainJob::new(None, Duration::ZERO)
        .run_once(&mut client)
        .await
        .expect("re-chain");
    assert_problem(&verify(&db, "acme").await, seqs[4], ProblemKind::Checkpoint);
}

/// Five rows of `acme`, chained by a job that also writes its checkpoints to a
/// fresh directory: answers (seqs, directory).
async fn chained_with_checkpoint_dir(db: &TestDatabase) -> (Vec<i64>, std::path::PathBuf) {
    let mut client = db.client().await;
    let dir = std::env::temp_dir().join(format!("tally-cp-{}", db.name));
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(insert(&mut client, "acme", Utc::now(), &format!("u{i}")).await);
    }
    job()
        .with_checkpoint_dir(Some(dir.clone()))
        .run_once(&mut client)
        .await
        .expect("chainer");
    (seqs, dir)
}

async fn verify_external(db: &TestDatabase, dir: &std::path::Path) -> VerifyReport {
    let external = chain::read_checkpoint_dir(dir, &trusted()).expect("checkpoint dir");
    assert!(external.problems.is_empty(), "{:?}", external.problems);
    let mut client = db.client().await;
    chain::verify_against(
        &mut client,
        "acme",
        &trusted(),
        external.heads.get("acme").unwrap_or(&Default::default()),
    )
    .await
    .expect("verify")
}

#[tokio::test]
async fn checkpoints_kept_outside_the_database_catch_a_cut_tail() {
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    let (seqs, dir) = chained_with_checkpoint_dir(&db).await;
    let report = verify_external(&db, &dir).await;
    assert!(report.is_intact(), "{report:#?}");
    assert_eq!(report.external_checkpoints_checked, 1);

    // The last two rows go, with their links and checkpoints, and the head moves back.
    client
        .execute("DELETE FROM activity_events WHERE seq >= $1", &[&seqs[3]])
        .await
        .expect("delete rows");
    client
        .batch_execute(&format!(
            "DELETE FROM activity_chain WHERE seq >= {s}; DELETE FROM chain_checkpoints; \
             UPDATE chain_heads h SET seq = c.seq, row_hash = c.row_hash FROM activity_chain c \
                 WHERE c.tenant_id = h.tenant_id AND c.seq = {p};",
            s = seqs[3],
            p = seqs[2]
        ))
        .await
        .expect("cut the tail");
    // The database alone cannot tell.
    assert!(verify(&db, "acme").await.is_intact());
    let report = verify_external(&db, &dir).await;
    assert_problem(&report, seqs[4], ProblemKind::Deleted);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn checkpoints_kept_outside_the_database_catch_a_rewritten_head() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let (seqs, dir) = chained_with_checkpoint_dir(&db).await;
    // The newest row is altered and the whole chain recomputed without the key.
    client
        .batch_execute(&format!(
            "UPDATE activity_events SET user_id = 'mallory' WHERE seq = {}; \
             DELETE FROM activity_chain; DELETE FROM chain_heads; DELETE FROM chain_checkpoints; \
             UPDATE chain_watermark SET last_seq = 0, last_checkpoint_at = NULL;",
            seqs[4]
        ))
        .await
        .expect("rewrite");
    ChainJob::new(None, Duration::ZERO)
        .run_once(&mut client)
        .await
        .expect("re-chain");
    assert!(verify(&db, "acme").await.is_intact());
    let report = verify_external(&db, &dir).await;
    assert_problem(&report, seqs[4], ProblemKind::Checkpoint);
    assert_eq!(report.verified_up_to_seq, Some(seqs[3]));
    let _ = std::fs::remove_dir_all(&dir);
}

async fn verify_from(db: &TestDatabase, start: Option<&chain::VerifyStart>) -> VerifyReport {
    let mut client = db.client().await;
    chain::verify_from(&mut client, "acme", &trusted(), &Default::default(), start)
        .await
        .expect("verify")
}

#[tokio::test]
async fn a_resumed_walk_starts_at_the_verified_checkpoint_across_a_retention_drop() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let old = Utc::now().date_naive() - Days::new(100);
    partition(&client, old).await;
    let old_ts = old.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    let (mut olds, mut news) = (Vec::new(), Vec::new());
    for i in 0..4 {
        if i == 2 {
            chain_all(&db).await;
        }
        olds.push(insert(&mut client, "acme", old_ts, &format!("old{i}")).await);
        news.push(insert(&mut client, "acme", Utc::now(), &format!("new{i}")).await);
    }
    // Verified up to the checkpoint of the first run (news[1]) ...
    let full = verify_from(&db, None).await;
    assert!(full.is_intact(), "{full:#?}");
    assert_eq!(full.verified_from_seq, None);
    let start = full.resume_point().expect("a resume point");
    assert_eq!(start.seq, news[1]);
    // ... then the rest is chained and the old day, which spans that checkpoint, dropped.
    chain_all(&db).await;
    let report = retention(&db, Utc::now().date_naive()).await;
    assert_eq!(report.dropped_partitions.len(), 1, "{report:?}");

    let resumed = verify_from(&db, Some(&start)).await;
    assert!(resumed.is_intact(), "{resumed:#?}");
    assert_eq!(resumed.verified_from_seq, Some(news[1]));
    assert_eq!(resumed.verified_up_to_seq, Some(news[3]));
    assert_eq!((resumed.rows_checked, resumed.dropped_rows), (2, 2));
    assert_eq!(resumed.checkpoint.map(|c| c.seq), Some(news[3]));

    // A change at the anchor itself: the resumed walk falls back to a whole walk.
    client
        .execute(
            "UPDATE activity_events SET user_id = 'mallory' WHERE seq = $1",
            &[&news[1]],
        )
        .await
        .expect("tamper");
    let report = verify_from(&db, Some(&start)).await;
    assert_eq!(report.verified_from_seq, None, "{report:#?}");
    assert_problem(&report, news[1], ProblemKind::Altered);
}

#[tokio::test]
async fn a_run_whose_checkpoint_file_cannot_be_written_rolls_back_and_is_retried() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let seq = insert(&mut client, "acme", Utc::now(), "u").await;
    // The directory's place is taken by a file.
    let blocked = std::env::temp_dir().join(format!("tally-cp-blocked-{}", db.name));
    std::fs::write(&blocked, b"not a directory").expect("file");
    let result = job()
        .with_checkpoint_dir(Some(blocked.clone()))
        .run_once(&mut client)
        .await;
    assert!(result.is_err(), "{result:?}");
    let chained: i64 = client
        .query_one("SELECT count(*) FROM activity_chain", &[])
        .await
        .expect("links")
        .get(0);
    assert_eq!(chained, 0, "the failed run left links behind");
    // Once the directory can be made, the same rows are chained and checkpointed.
    std::fs::remove_file(&blocked).expect("unblock");
    let report = job()
        .with_checkpoint_dir(Some(blocked.clone()))
        .run_once(&mut client)
        .await
        .expect("chainer");
    assert_eq!((report.rows, report.checkpoints), (1, 1));
    let external = chain::read_checkpoint_dir(&blocked, &trusted()).expect("read");
    assert!(external.heads["acme"].contains_key(&seq), "{external:?}");
    let _ = std::fs::remove_dir_all(&blocked);
}

/// A chained database holding, for tenant `acme`, one row without details (as
/// written before schema version 12), then three from the writer with details
/// (the last with a name only). Answers the seqs of the three.
async fn with_details() -> (TestDatabase, Vec<i64>) {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let plain = insert(&mut client, "acme", Utc::now(), "u-plain").await;
    let mut events: Vec<_> = (0..3).map(common::event).collect();
    for e in &mut events {
        e.tenant_id = Some("acme".into());
    }
    events[2].duration_ms = None;
    events[2].error_type = None;
    events[2].error_message = None;
    let tx = client.transaction().await.expect("begin");
    let inserted = tally_exporters::postgres::insert_activity_batch(&tx, &events)
        .await
        .expect("insert");
    assert_eq!(inserted, 3);
    tx.commit().await.expect("commit");
    chain_all(&db).await;
    let seqs = client
        .query(
            "SELECT seq FROM activity_events WHERE seq > $1 ORDER BY seq",
            &[&plain],
        )
        .await
        .expect("seqs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    (db, seqs)
}

#[tokio::test]
async fn rows_with_details_verify_and_a_change_to_a_detail_is_detected() {
    let (db, seqs) = with_details().await;
    let report = verify(&db, "acme").await;
    assert!(report.is_intact(), "{report:#?}");
    assert_eq!(report.rows_checked, 4);
    drop(db);

    for (index, change) in [
        (1, "duration_ms = duration_ms + 1"),
        (0, "error_message = 'nothing happened'"),
        (
            0,
            "duration_ms = NULL, name = NULL, error_type = NULL, error_message = NULL",
        ),
        (2, "name = 'GET /admin'"),
    ] {
        let (db, seqs) = with_details().await;
        let client = db.client().await;
        client
            .execute(
                &format!("UPDATE activity_events SET {change} WHERE seq = $1"),
                &[&seqs[index]],
            )
            .await
            .expect("update");
        assert_problem(
            &verify(&db, "acme").await,
            seqs[index],
            ProblemKind::Altered,
        );
    }
    assert_eq!(seqs.len(), 3);
}

#[tokio::test]
async fn rows_written_before_the_details_migration_read_and_verify_after_it() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    // Back to schema version 11: without the details columns.
    client
        .batch_execute(
            "ALTER TABLE activity_events DROP COLUMN duration_ms, DROP COLUMN name, \
                 DROP COLUMN error_type, DROP COLUMN error_message; \
             ALTER TABLE api_keys DROP COLUMN user_id; \
             DELETE FROM tally_schema_migrations WHERE version = 12;",
        )
        .await
        .expect("back to version 11");
    let old = [
        insert(&mut client, "acme", Utc::now(), "u1").await,
        insert(&mut client, "acme", Utc::now(), "u2").await,
    ];
    tally_exporters::postgres::migrate(&client)
        .await
        .expect("migrate to 12");
    let details: Vec<Option<String>> = client
        .query(
            "SELECT name FROM activity_events WHERE seq = ANY($1)",
            &[&old.to_vec()],
        )
        .await
        .expect("read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(details, [None, None], "nothing filled retroactively");
    // New rows with details after the old ones; one chain over both.
    let mut events: Vec<_> = (0..2).map(common::event).collect();
    for e in &mut events {
        e.tenant_id = Some("acme".into());
    }
    let tx = client.transaction().await.expect("begin");
    tally_exporters::postgres::insert_activity_batch(&tx, &events)
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    chain_all(&db).await;
    let report = verify(&db, "acme").await;
    assert!(report.is_intact(), "{report:#?}");
    assert_eq!(report.rows_checked, 4);
}
