//! `GET /api/v1/taxonomy`: authentication, JSON shape, reload visibility.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::json;
use tally_config::{TaxonomyHandle, ValidateConfig, ValidateMode};

const URI: &str = "/api/v1/taxonomy";

fn file_handle(dir: &std::path::Path, text: &str) -> (std::path::PathBuf, TaxonomyHandle) {
    let path = dir.join("taxonomy.yaml");
    std::fs::write(&path, text).expect("write registry");
    let handle = TaxonomyHandle::load(&ValidateConfig {
        taxonomy: Some(path.clone()),
        mode: ValidateMode::Strict,
        reload_interval_secs: 0,
    })
    .expect("load registry");
    (path, handle)
}

#[tokio::test]
async fn serves_the_registry_to_any_read_scope() {
    let db = TestDb::migrated().await;
    let handle = TaxonomyHandle::load(&ValidateConfig::default()).expect("builtin");
    let router = api(&config_with_jwt(), &db.url)
        .await
        .with_taxonomy(handle.clone())
        .router();

    let reply = get(&router, URI, None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&reply).0, "unauthorized");

    let reply = get(&router, URI, Some(&token("other:scope", Some("*")))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(error_of(&reply).0, "forbidden");

    // Not tenant data: a tenant-scoped token or one without a tenant may read it.
    for (scope, tenant) in [
        ("activity:read", Some("acme")),
        ("tokens:read", None),
        ("admin", Some("*")),
        ("activity:read tokens:read", Some("")),
    ] {
        let reply = get(&router, URI, Some(&token(scope, tenant))).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{scope} {tenant:?}: {:?}",
            reply.body
        );
        let body = &reply.body;
        assert_eq!(body["mode"], "lenient");
        assert_eq!(body["source"], "built-in");
        assert_eq!(body["version"], 1);
        assert_eq!(body["generation"], 1);
        assert_eq!(body["last_reload_error"], json!(null));
        assert!(
            body["loaded_at"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{body}"
        );
        let actions = body["actions"].as_object().expect("actions object");
        assert_eq!(actions.len(), handle.current().len());
        let login = &actions["auth.login.success"];
        assert_eq!(login["outcomes"], json!(["success"]));
        assert_eq!(login["required_fields"], json!(["user_id"]));
        assert_eq!(login["attributes"]["auth.method"]["type"], "string");
        assert!(login["attributes"]["auth.method"]["enum"]
            .as_array()
            .is_some_and(|values| values.contains(&json!("sso"))));
        // Unset rules are left out, not null.
        assert!(login["attributes"]["auth.method"]
            .get("max_length")
            .is_none());
        assert!(actions["auth.login"].get("outcomes").is_none());
    }
}

#[tokio::test]
async fn shows_reloads_and_broken_files() {
    let db = TestDb::migrated().await;
    let dir = std::env::temp_dir().join(format!("tally-taxonomy-api-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (path, handle) = file_handle(
        &dir,
        "version: 1\nactions:\n  billing.*: { description: all billing }\n  a.b:\n    description: x\n    attributes:\n      n: { type: integer, minimum: 1, maximum: 3, enum: [1, 2] }\n",
    );
    // The open API (no JWT configured) lets every caller in.
    let router = api(&config(), &db.url)
        .await
        .with_taxonomy(handle.clone())
        .router();

    let reply = get(&router, URI, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["mode"], "strict");
    assert_eq!(reply.body["source"], path.display().to_string());
    assert_eq!(
        reply.body["actions"]["billing.*"]["description"],
        "all billing"
    );
    let n = &reply.body["actions"]["a.b"]["attributes"]["n"];
    assert_eq!(n["enum"], json!([1, 2]));
    assert_eq!(n["minimum"].as_f64(), Some(1.0));

    std::fs::write(&path, "version: 1\nactions:\n  c.d: { description: new }\n").expect("write");
    handle.reload().expect("reload");
    let reply = get(&router, URI, None).await;
    assert_eq!(reply.body["generation"], 2);
    // c.d, and Tally's own actions that every registry gets (audit.log.view,
    // token.budget.threshold, token.quota.exceed, admin.user.erase).
    assert_eq!(reply.body["actions"].as_object().map(|a| a.len()), Some(5));
    assert!(reply.body["actions"]["audit.log.view"].is_object());
    assert_eq!(reply.body["actions"]["c.d"]["description"], "new");

    std::fs::write(&path, "version: 1\nactions: {}\n").expect("write");
    assert!(handle.reload().is_err());
    let reply = get(&router, URI, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["generation"], 2);
    assert_eq!(
        reply.body["actions"]["c.d"]["description"], "new",
        "old registry kept"
    );
    assert!(
        reply.body["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("declares no action")),
        "{:?}",
        reply.body
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_a_registry_the_route_is_not_found() {
    let db = TestDb::migrated().await;
    let router = api(&config(), &db.url).await.router();
    let reply = get(&router, URI, None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&reply).0, "not_found");
    let reply = call(&router, "POST", URI, None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn openapi_documents_the_route() {
    let db = TestDb::migrated().await;
    let router = api(&config(), &db.url).await.router();
    let reply = get(&router, "/api/v1/openapi.json", None).await;
    let route = &reply.body["paths"][URI]["get"];
    assert_eq!(route["operationId"], "getTaxonomy");
    assert!(route["responses"]["200"].is_object());
    assert!(route["responses"]["403"].is_object());
}
