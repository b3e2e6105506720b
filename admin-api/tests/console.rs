//! The web console's serving: `/console`, its hashed assets, `/` → `/console`,
//! the security and cache headers, gzip negotiation; and `GET /api/v1/whoami`,
//! which the console reads the caller's scopes from.

mod common;

use std::io::Read;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::*;
use serde_json::json;
use tower::ServiceExt;

/// No database behind it: the console must not need one.
const NO_DATABASE: &str = "postgres://postgres@127.0.0.1:1/nowhere";

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

struct Raw {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .expect("ascii header")
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("utf-8 body")
    }
}

async fn fetch(router: &Router, uri: &str, headers: &[(&str, &str)]) -> Raw {
    let mut request = Request::builder().uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .expect("body")
        .to_vec();
    Raw {
        status,
        headers,
        body,
    }
}

/// The values of `attribute="…"` in `text` that start with `prefix`.
fn references(text: &str, before: &str, prefix: &str) -> Vec<String> {
    let needle = format!("{before}\"{prefix}");
    text.match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = &text[at + before.len() + 1..];
            rest.find('"').map(|end| rest[prefix.len()..end].to_owned())
        })
        .collect()
}

fn assert_security_headers(reply: &Raw, what: &str) {
    assert_eq!(reply.header(header::CONTENT_SECURITY_POLICY), CSP, "{what}");
    assert_eq!(
        reply.header(header::X_CONTENT_TYPE_OPTIONS),
        "nosniff",
        "{what}"
    );
    assert_eq!(
        reply.header(header::REFERRER_POLICY),
        "no-referrer",
        "{what}"
    );
}

#[tokio::test]
async fn the_page_and_every_file_it_loads_are_served_without_a_credential_and_with_strict_headers()
{
    // Authentication on, no database: the static files need neither.
    let router = api(&config_with_jwt(), NO_DATABASE).await.router();

    let page = fetch(&router, "/console", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.header(header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    assert_eq!(page.header(header::CACHE_CONTROL), "no-cache");
    assert_security_headers(&page, "/console");
    let html = page.text();
    // No inline script or style: every script has a src, no style element or attribute.
    assert!(
        !html.contains("<style") && !html.contains(" style="),
        "{html}"
    );
    for script in html.match_indices("<script").map(|(at, _)| &html[at..]) {
        let tag = &script[..script.find('>').expect("tag end")];
        assert!(
            tag.contains(" src=\"/console/assets/"),
            "inline script: {tag}"
        );
    }

    // Follow every reference from the page and from each module, transitively.
    let mut queue: Vec<String> = references(&html, "src=", "/console/assets/");
    queue.extend(references(&html, "href=", "/console/assets/"));
    assert!(queue.len() >= 2, "the page loads a script and a stylesheet");
    let mut seen = std::collections::BTreeSet::new();
    while let Some(name) = queue.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        // Content-hashed: stem.<12 hex>.ext
        let parts: Vec<&str> = name.split('.').collect();
        assert!(
            parts.len() == 3
                && parts[1].len() == 12
                && parts[1].chars().all(|c| c.is_ascii_hexdigit()),
            "{name} is not a hashed name"
        );
        let asset = fetch(&router, &format!("/console/assets/{name}"), &[]).await;
        assert_eq!(asset.status, StatusCode::OK, "{name}");
        assert_eq!(
            asset.header(header::CACHE_CONTROL),
            "public, max-age=31536000, immutable",
            "{name}"
        );
        assert_security_headers(&asset, &name);
        let expected_type = if name.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else {
            "text/css; charset=utf-8"
        };
        assert_eq!(asset.header(header::CONTENT_TYPE), expected_type, "{name}");
        let text = asset.text();
        assert!(
            !text.contains("innerHTML") && !text.contains("insertAdjacentHTML"),
            "{name} parses markup"
        );
        queue.extend(references(&text, "from ", "./"));
    }
    assert!(
        seen.len() >= 8,
        "the modules import each other by hashed name: {seen:?}"
    );

    // Only hashed names are served; an unknown file is a JSON 404.
    let plain = fetch(&router, "/console/assets/app.js", &[]).await;
    assert_eq!(plain.status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&plain.body).contains("not_found"));
}

#[tokio::test]
async fn gzip_is_sent_to_clients_that_accept_it_and_etags_revalidate() {
    let router = api(&config(), NO_DATABASE).await.router();
    let page = fetch(&router, "/console", &[]).await;
    let html = page.text();
    let script = references(&html, "src=", "/console/assets/")
        .pop()
        .expect("a script");
    let uri = format!("/console/assets/{script}");

    let plain = fetch(&router, &uri, &[("accept-encoding", "identity")]).await;
    assert!(plain.headers.get(header::CONTENT_ENCODING).is_none());
    assert_eq!(plain.header(header::VARY), "Accept-Encoding");

    let gzipped = fetch(&router, &uri, &[("accept-encoding", "gzip, deflate, br")]).await;
    assert_eq!(gzipped.header(header::CONTENT_ENCODING), "gzip");
    assert!(gzipped.body.len() < plain.body.len());
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(gzipped.body.as_slice())
        .read_to_end(&mut decoded)
        .expect("valid gzip");
    assert_eq!(decoded, plain.body);

    let refused = fetch(&router, &uri, &[("accept-encoding", "gzip;q=0")]).await;
    assert!(refused.headers.get(header::CONTENT_ENCODING).is_none());

    // The page revalidates with its ETag.
    let etag = page.header(header::ETAG).to_owned();
    let again = fetch(&router, "/console", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_security_headers(&again, "304");
    let changed = fetch(&router, "/console", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(changed.status, StatusCode::OK);
}

#[tokio::test]
async fn the_root_redirects_to_the_console() {
    let router = api(&config_with_jwt(), NO_DATABASE).await.router();
    let root = fetch(&router, "/", &[]).await;
    assert!(root.status.is_redirection(), "{}", root.status);
    assert_eq!(root.header(header::LOCATION), "/console");
    let slash = fetch(&router, "/console/", &[]).await;
    assert!(slash.status.is_redirection());
    assert_eq!(slash.header(header::LOCATION), "/console");
}

#[tokio::test]
async fn whoami_tells_the_caller_its_subject_scopes_and_tenant() {
    let router = api(&config_with_jwt(), NO_DATABASE).await.router();

    let anonymous = get(&router, "/api/v1/whoami", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&anonymous).0, "unauthorized");

    let tokens_only = get(
        &router,
        "/api/v1/whoami",
        Some(&token("tokens:read", Some("acme"))),
    )
    .await;
    assert_eq!(tokens_only.status, StatusCode::OK);
    assert_eq!(
        tokens_only.body,
        json!({"subject": "tester", "scopes": ["tokens:read"], "tenant": "acme", "user": null, "auth": true})
    );

    // A self:read token: one user (its sub) within its tenant.
    let own = get(
        &router,
        "/api/v1/whoami",
        Some(&token("self:read", Some("acme"))),
    )
    .await;
    assert_eq!(
        own.body,
        json!({"subject": "tester", "scopes": ["self:read"], "tenant": "acme", "user": "tester", "auth": true})
    );

    let platform = get(
        &router,
        "/api/v1/whoami",
        Some(&token("activity:read admin", Some("*"))),
    )
    .await;
    assert_eq!(platform.body["tenant"], json!("*"));
    assert_eq!(platform.body["scopes"], json!(["activity:read", "admin"]));

    let no_tenant = get(
        &router,
        "/api/v1/whoami",
        Some(&token("activity:read", None)),
    )
    .await;
    assert_eq!(no_tenant.status, StatusCode::OK);
    assert_eq!(no_tenant.body["tenant"], json!(null));

    let unknown = get(
        &router,
        "/api/v1/whoami?x=1",
        Some(&token("admin", Some("*"))),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::OK, "no parameters are read");

    // An open API: everyone is the anonymous caller with every scope.
    let open = api(&config(), NO_DATABASE).await.router();
    let reply = get(&open, "/api/v1/whoami", None).await;
    assert_eq!(
        reply.body,
        json!({"subject": "anonymous", "scopes": ["activity:read", "admin", "tokens:read"], "tenant": "*", "user": null, "auth": false})
    );
}

#[tokio::test]
async fn the_first_load_is_under_300_kb_compressed() {
    let router = api(&config(), NO_DATABASE).await.router();
    let gzip = [("accept-encoding", "gzip")];
    let page = fetch(&router, "/console", &gzip).await;
    let mut compressed = page.body.len();
    let mut plain = fetch(&router, "/console", &[]).await.body.len();
    let html = fetch(&router, "/console", &[]).await.text();
    let mut queue: Vec<String> = references(&html, "src=", "/console/assets/");
    queue.extend(references(&html, "href=", "/console/assets/"));
    let mut seen = std::collections::BTreeSet::new();
    while let Some(name) = queue.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let uri = format!("/console/assets/{name}");
        compressed += fetch(&router, &uri, &gzip).await.body.len();
        let asset = fetch(&router, &uri, &[]).await;
        plain += asset.body.len();
        queue.extend(references(&asset.text(), "from ", "./"));
    }
    println!(
        "console first load: {} files, {compressed} bytes gzip ({plain} bytes uncompressed)",
        seen.len() + 1
    );
    assert!(compressed < 300 * 1024, "{compressed} bytes");
}
