//! `GET /api/v1/verify`: scopes, tenant scoping, and the verdict on an intact
//! and a tampered chain.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use tally_exporters::postgres::chain::{ChainJob, SigningKey};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

/// A seeded database whose rows are all chained (with checkpoints).
async fn chained() -> TestDb {
    let (db, _events) = seeded(200, 11).await;
    let (mut client, _connection) = tally_exporters::postgres::connect(&db.url)
        .await
        .expect("connect");
    let report = ChainJob::new(Some(key()), Duration::ZERO)
        .run_once(&mut client)
        .await
        .expect("chainer run");
    assert_eq!(report.rows, 200);
    db
}

async fn last_seq(db: &TestDb, tenant: &str) -> i64 {
    db.client
        .query_one(
            "SELECT max(seq) FROM activity_events WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .expect("max seq")
        .get(0)
}

#[tokio::test]
async fn scopes_and_tenant_scoping() {
    let db = chained().await;
    let router = api(&config_with_jwt(), &db.url).await.router();
    let uri = "/api/v1/verify?tenant=acme";

    let reply = get(&router, uri, None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = get(&router, uri, Some(&token("tokens:read", Some("*")))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(error_of(&reply).0, "forbidden");

    // Every-tenant callers without a tenant verify every tenant.
    let reply = get(&router, "/api/v1/verify", Some(&token("admin", Some("*")))).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["status"], "intact");
    let tenants: Vec<&str> = reply.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["tenant"].as_str())
        .collect();
    assert_eq!(
        tenants,
        TENANTS
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    let reply = get(
        &router,
        "/api/v1/verify?tenant=acme&x=1",
        Some(&token("admin", Some("*"))),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    let reply = get(&router, uri, Some(&token("admin", Some("*")))).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["tenant"], "acme");
    assert_eq!(reply.body["status"], "intact");
    assert_eq!(
        reply.body["verified_up_to_seq"],
        last_seq(&db, "acme").await
    );
    assert_eq!(reply.body["first_problem"], serde_json::Value::Null);
    assert_eq!(
        reply.body["checkpoint"]["seq"],
        last_seq(&db, "acme").await,
        "{:?}",
        reply.body
    );

    // A tenant-scoped caller verifies its own tenant, with or without naming it.
    let acme = token("activity:read", Some("acme"));
    let reply = get(&router, "/api/v1/verify", Some(&acme)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["tenant"], "acme");
    assert_eq!(reply.body["status"], "intact");
    let reply = get(&router, "/api/v1/verify?tenant=globex", Some(&acme)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = get(&router, uri, Some(&token("activity:read", None))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_tampered_tenant_is_reported_with_the_seq() {
    let db = chained().await;
    let router = api(&config_with_jwt(), &db.url).await.router();
    let target: i64 = db
        .client
        .query_one(
            "SELECT seq FROM activity_events WHERE tenant_id = 'globex' ORDER BY seq \
             OFFSET 5 LIMIT 1",
            &[],
        )
        .await
        .expect("a globex row")
        .get(0);
    db.client
        .execute(
            "UPDATE activity_events SET outcome = 'success', user_id = 'mallory' WHERE seq = $1",
            &[&target],
        )
        .await
        .expect("tamper");
    let admin = token("admin", Some("*"));
    let reply = get(&router, "/api/v1/verify?tenant=globex", Some(&admin)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["status"], "tampered");
    assert_eq!(reply.body["first_problem"]["kind"], "altered");
    assert_eq!(reply.body["first_problem"]["seq"], target);
    let reply = get(&router, "/api/v1/verify?tenant=acme", Some(&admin)).await;
    assert_eq!(reply.body["status"], "intact", "{:?}", reply.body);

    // With a trusted key that did not sign the checkpoints, they are rejected.
    let other = SigningKey::from_bytes(&[1; 32]).verifying_key();
    let router = api(&config_with_jwt(), &db.url)
        .await
        .with_chain_keys(vec![other])
        .router();
    let reply = get(&router, "/api/v1/verify?tenant=acme", Some(&admin)).await;
    assert_eq!(reply.body["status"], "tampered", "{:?}", reply.body);
    assert_eq!(reply.body["first_problem"]["kind"], "checkpoint");
    let router = api(&config_with_jwt(), &db.url)
        .await
        .with_chain_keys(vec![key().verifying_key()])
        .router();
    let reply = get(&router, "/api/v1/verify?tenant=acme", Some(&admin)).await;
    assert_eq!(reply.body["status"], "intact", "{:?}", reply.body);
    assert_eq!(reply.body["checkpoint"]["key_trusted"], true);
}

/// The tenant's stored resume point (`chain_verify_resume`), if any.
async fn stored_resume(db: &TestDb, tenant: &str) -> Option<i64> {
    db.client
        .query_opt(
            "SELECT seq FROM chain_verify_resume WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .expect("chain_verify_resume")
        .map(|row| row.get(0))
}

#[tokio::test]
async fn a_new_instance_resumes_from_the_stored_checkpoint() {
    let db = chained().await;
    let admin = token("admin", Some("*"));
    let uri = "/api/v1/verify?tenant=acme";
    let first = get(
        &api(&config_with_jwt(), &db.url).await.router(),
        uri,
        Some(&admin),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.body["status"], "intact", "{:?}", first.body);
    assert_eq!(first.body["verified_from_seq"], serde_json::Value::Null);
    let checkpoint = first.body["checkpoint"]["seq"]
        .as_i64()
        .expect("a checkpoint");
    assert_eq!(stored_resume(&db, "acme").await, Some(checkpoint));

    // Another instance (as after a restart) resumes there on its first call.
    let second = get(
        &api(&config_with_jwt(), &db.url).await.router(),
        uri,
        Some(&admin),
    )
    .await;
    assert_eq!(second.body["status"], "intact", "{:?}", second.body);
    assert_eq!(
        second.body["verified_from_seq"], checkpoint,
        "{:?}",
        second.body
    );
    assert!(
        second.body["links_checked"].as_u64() < first.body["links_checked"].as_u64(),
        "{:?} vs {:?}",
        second.body,
        first.body
    );

    // A stored point that no checkpoint backs is not used: the whole chain is walked.
    db.client
        .execute(
            "UPDATE chain_verify_resume SET head_hash = '\\x00' WHERE tenant_id = 'acme'",
            &[],
        )
        .await
        .expect("forge the point");
    let third = get(
        &api(&config_with_jwt(), &db.url).await.router(),
        uri,
        Some(&admin),
    )
    .await;
    assert_eq!(third.body["status"], "intact", "{:?}", third.body);
    assert_eq!(third.body["verified_from_seq"], serde_json::Value::Null);
    assert_eq!(
        stored_resume(&db, "acme").await,
        Some(checkpoint),
        "rewritten"
    );

    // A walk that finds the chain tampered forgets the point.
    db.client
        .execute(
            "UPDATE activity_events SET user_id = 'mallory' WHERE seq = \
             (SELECT min(seq) FROM activity_events WHERE tenant_id = 'acme')",
            &[],
        )
        .await
        .expect("tamper");
    let router = api(&config_with_jwt(), &db.url).await.router();
    let full = get(&router, &format!("{uri}&full=true"), Some(&admin)).await;
    assert_eq!(full.body["status"], "tampered", "{:?}", full.body);
    assert_eq!(stored_resume(&db, "acme").await, None);
    // A tenant reader resumes (and stores) its own tenant only.
    let reader = token("activity:read", Some("globex"));
    let reply = get(&router, "/api/v1/verify", Some(&reader)).await;
    assert_eq!(reply.body["status"], "intact", "{:?}", reply.body);
    assert!(stored_resume(&db, "globex").await.is_some());
    assert_eq!(stored_resume(&db, "acme").await, None);
}
