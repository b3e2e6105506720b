//! `/healthz`, `/readyz`, the OpenAPI document and a real bound server.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use tally_admin_api::AdminApi;
use tally_model::Readiness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn healthz_and_readyz_follow_readiness_and_the_database() {
    let db = TestDb::migrated().await;
    let readiness = Arc::new(Readiness::new());
    let router = AdminApi::bind(&config(), &db.url, readiness.clone())
        .await
        .unwrap()
        .router();

    let reply = get(&router, "/healthz", None).await;
    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::OK, json!({ "status": "ok" }))
    );

    // Not ready yet: the pipeline has not reported the database up.
    let reply = get(&router, "/readyz", None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["status"], json!("unavailable"));
    assert!(reply.body["reason"].is_string());

    readiness.set_database_up(true);
    let reply = get(&router, "/readyz", None).await;
    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::OK, json!({ "status": "ok" }))
    );

    readiness.set_draining();
    let reply = get(&router, "/readyz", None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["reason"], json!("shutting down"));
    // Liveness does not care.
    assert_eq!(get(&router, "/healthz", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn readyz_is_503_when_the_database_is_unreachable() {
    let router = api(&config(), "postgres://postgres@127.0.0.1:1/nowhere")
        .await
        .router();
    let started = std::time::Instant::now();
    let reply = get(&router, "/readyz", None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["status"], json!("unavailable"));
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(get(&router, "/healthz", None).await.status, StatusCode::OK);
}

fn resolve<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    let path = reference.strip_prefix("#/")?;
    path.split('/')
        .try_fold(document, |node, key| node.get(key))
}

fn check_refs(document: &Value, node: &Value) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                assert!(
                    resolve(document, reference).is_some(),
                    "dangling {reference}"
                );
            }
            map.values().for_each(|v| check_refs(document, v));
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs(document, v)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_document_describes_the_routes() {
    let db = TestDb::migrated().await;
    let router = api(&config(), &db.url).await.router();
    let reply = get(&router, "/api/v1/openapi.json", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.body;
    assert_eq!(doc["openapi"], json!("3.1.0"));
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    for path in [
        "/healthz",
        "/readyz",
        "/api/v1/activity",
        "/api/v1/openapi.json",
    ] {
        assert!(doc["paths"][path]["get"]["responses"].is_object(), "{path}");
    }
    // The documented parameters are exactly the accepted ones.
    let documented: Vec<&str> = doc["paths"]["/api/v1/activity"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(documented, tally_admin_api::activity::PARAMETERS);
    check_refs(&doc, &doc);
}

#[tokio::test]
async fn a_bound_server_answers_and_shuts_down_gracefully() {
    let db = TestDb::migrated().await;
    let api = api(&config(), &db.url).await;
    let addr = api.local_addr();
    assert_ne!(addr.port(), 0);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api.serve(async {
        let _ = stopped.await;
    }));

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /api/v1/activity?outcome=nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        response.contains(r#""code":"invalid_parameter""#),
        "{response}"
    );

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"status":"ok"}"#), "{response}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
