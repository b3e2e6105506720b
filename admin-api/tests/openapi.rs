//! The OpenAPI document against the router: the same routes, the same query
//! parameters, a structurally valid OpenAPI 3.1 document, and `docs/api.md`
//! covering all of it.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use serde_json::Value;
use tally_admin_api::openapi::openapi;
use tally_admin_api::routes::served;
use tower::ServiceExt;

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// (METHOD, path) of every operation in the document.
fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, _) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                operations.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    operations
}

#[test]
fn the_document_lists_exactly_the_served_routes_and_their_query_parameters() {
    let doc = openapi();
    let served_set: BTreeSet<(String, String)> = served()
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(served_set.len(), served().len(), "a route is served twice");
    assert_eq!(documented_operations(&doc), served_set);
    for route in served() {
        let operation = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
        assert!(
            operation.get("x-undocumented").is_none(),
            "{} {} has no description in openapi.rs",
            route.method,
            route.path
        );
        let documented: BTreeSet<&str> = operation["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "query")
                    .map(|p| p["name"].as_str().expect("parameter name"))
                    .collect()
            })
            .unwrap_or_default();
        let accepted: BTreeSet<&str> = route.query.iter().copied().collect();
        assert_eq!(
            documented, accepted,
            "{} {}: documented query parameters vs the handler's",
            route.method, route.path
        );
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            assert!(
                parameter.get("x-undocumented").is_none(),
                "{} {}: parameter {} has no description",
                route.method,
                route.path,
                parameter["name"]
            );
        }
    }
}

/// Every `$ref` value under `value` with its location.
fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "$ref" {
                    if let Some(target) = child.as_str() {
                        out.push((at.clone(), target));
                    }
                } else {
                    refs(child, format!("{at}/{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                refs(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_is_structurally_valid_openapi_3_1() {
    let doc = openapi();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let top: BTreeSet<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let allowed = BTreeSet::from([
        "openapi",
        "info",
        "jsonSchemaDialect",
        "servers",
        "paths",
        "webhooks",
        "components",
        "security",
        "tags",
        "externalDocs",
    ]);
    assert!(top.is_subset(&allowed), "unknown top-level keys: {top:?}");

    let mut operation_ids = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        assert!(path.starts_with('/'), "{path}");
        for (method, operation) in item.as_object().expect("path item") {
            assert!(
                METHODS.contains(&method.as_str()) || method == "parameters",
                "{path}: {method}"
            );
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            if let Some(other) = operation_ids.insert(id.to_owned(), format!("{method} {path}")) {
                panic!("operationId {id} used by {other} and {method} {path}");
            }
            let responses = operation["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path}: no responses"));
            assert!(!responses.is_empty(), "{method} {path}");
            for (status, response) in responses {
                assert!(
                    status == "default"
                        || (status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit())),
                    "{method} {path}: status {status}"
                );
                assert!(
                    response["description"].is_string(),
                    "{method} {path} {status}: no description"
                );
            }
            let mut seen = BTreeSet::new();
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().expect("parameter name");
                let location = parameter["in"].as_str().expect("parameter in");
                assert!(
                    ["query", "header", "path", "cookie"].contains(&location),
                    "{method} {path}: {name} in {location}"
                );
                assert!(
                    parameter.get("schema").is_some() || parameter.get("content").is_some(),
                    "{method} {path}: {name} has neither schema nor content"
                );
                assert!(
                    seen.insert((name, location)),
                    "{method} {path}: {name} twice"
                );
                if location == "path" {
                    assert_eq!(parameter["required"], true, "{path}: {name}");
                    assert!(path.contains(&format!("{{{name}}}")), "{path}: {name}");
                }
            }
        }
    }
    let mut found = Vec::new();
    refs(&doc, String::new(), &mut found);
    assert!(!found.is_empty());
    for (at, target) in found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: external $ref {target}"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{at}: $ref {target} does not resolve"
        );
    }
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let db = TestDb::migrated().await;
    let router = api(&config(), &db.url).await.router();
    // A path the router does not serve, for comparison.
    let unknown = router
        .clone()
        .oneshot(
            Request::get("/api/v1/nothing-here")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let fallback = axum::body::to_bytes(unknown.into_body(), 1 << 16)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&fallback).contains("no route for"));

    for (method, path) in documented_operations(&openapi()) {
        let request = Request::builder()
            .method(method.as_str())
            .uri(&path)
            .header("content-type", "application/json")
            .body(Body::from(if method == "POST" { "{}" } else { "" }))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if status == StatusCode::NOT_FOUND {
            // A handler may answer 404 (no taxonomy loaded), never the fallback.
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            assert!(
                !String::from_utf8_lossy(&body).contains("no route for"),
                "{method} {path} is documented but not served"
            );
        }
        // Streams stay open: dropping the response ends them.
    }
}

#[test]
fn docs_api_md_covers_every_route_and_parameter() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md"))
        .expect("docs/api.md");
    for route in served() {
        let mention = format!("{} {}", route.method, route.path);
        let short = format!("`{}`", route.path);
        assert!(
            text.contains(&mention) || text.contains(&short),
            "docs/api.md does not mention {mention}"
        );
        for parameter in route.query {
            assert!(
                text.contains(&format!("`{parameter}`")) || text.contains(&format!("{parameter}=")),
                "docs/api.md does not mention the parameter {parameter} of {mention}"
            );
        }
    }
}

/// Writes the document where `.ci/run` hands it to an external OpenAPI validator.
#[test]
fn the_document_is_written_for_the_external_validator() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("openapi.json");
    let text = serde_json::to_string_pretty(&openapi()).expect("serialize");
    std::fs::write(&path, &text).expect("write openapi.json");
    let back: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read back")).expect("json");
    assert_eq!(back, openapi());
}
