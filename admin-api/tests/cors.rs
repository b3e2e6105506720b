//! CORS: off by default (no headers); with `admin_api.cors.allowed_origins`, a
//! configured origin gets the headers (preflight included) and others do not.

mod common;

use axum::body::Body;
use axum::http::{Method, Request};
use tower::ServiceExt;

async fn send(
    router: axum::Router,
    method: Method,
    origin: &str,
) -> axum::http::Response<axum::body::Body> {
    let mut request = Request::builder()
        .method(method.clone())
        .uri("/api/v1/activity")
        .header("origin", origin);
    if method == Method::OPTIONS {
        request = request
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization");
    }
    router
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("response")
}

#[tokio::test]
async fn cors_is_off_by_default_and_follows_the_configured_origins() {
    let db = common::TestDb::migrated().await;

    let plain = common::api(&common::config(), &db.url).await;
    let response = send(plain.router(), Method::GET, "https://dash.example").await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let mut config = common::config();
    config.cors.allowed_origins = vec!["https://dash.example".into()];
    let api = common::api(&config, &db.url).await;
    let response = send(api.router(), Method::GET, "https://dash.example").await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"https://dash.example"[..])
    );
    let preflight = send(api.router(), Method::OPTIONS, "https://dash.example").await;
    let allowed = preflight
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    let other = send(api.router(), Method::GET, "https://evil.example").await;
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
