//! Bearer-token authorization of the admin API.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::json;
use tally_config::JwtConfig;

#[tokio::test]
async fn tokens_are_checked() {
    let (db, events) = seeded(300, 4).await;
    let router = api(&config_with_jwt(), &db.url).await.router();
    let uri = "/api/v1/activity?limit=1000";

    // Missing token.
    let reply = get(&router, uri, None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&reply).0, "unauthorized");
    let challenge = reply.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");

    // Expired (beyond the 30 s leeway).
    let expired = token_with(
        SECRET,
        &json!({ "sub": "x", "exp": now_secs() - 3600, "scope": "admin", "tenant": "*" }),
    );
    let reply = get(&router, uri, Some(&expired)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        error_of(&reply),
        ("unauthorized".into(), "token expired".into())
    );
    assert!(reply.headers.contains_key("www-authenticate"));

    // Wrong signature.
    let forged = token_with(
        "another-secret-another-secret-another",
        &json!({ "sub": "x", "exp": now_secs() + 3600, "scope": "admin", "tenant": "*" }),
    );
    let reply = get(&router, uri, Some(&forged)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&reply).1, "bad token signature");

    // Malformed tokens, other schemes, `alg: none`, missing exp / sub.
    let none_alg = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(
                json!({ "sub": "x", "exp": now_secs() + 3600, "scope": "admin", "tenant": "*" })
                    .to_string()
            )
        )
    };
    let no_exp = token_with(
        SECRET,
        &json!({ "sub": "x", "scope": "admin", "tenant": "*" }),
    );
    let no_sub = token_with(
        SECRET,
        &json!({ "exp": now_secs() + 3600, "scope": "admin", "tenant": "*" }),
    );
    for bad in ["garbage", "a.b.c", "", &none_alg, &no_exp, &no_sub] {
        let reply = get(&router, uri, Some(bad)).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{bad}: {}",
            reply.body
        );
        assert_eq!(error_of(&reply).0, "unauthorized");
    }
    for header in ["Basic dXNlcjpwYXNz", "Bearer", "token abc"] {
        let request = axum::http::Request::builder()
            .uri(uri)
            .header("authorization", header)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = tower::ServiceExt::oneshot(router.clone(), request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{header}");
    }

    // Authentication comes before parameter checks.
    let reply = get(&router, "/api/v1/activity?bogus=1", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // Wrong scope.
    let reply = get(&router, uri, Some(&token("tokens:read", Some("*")))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(error_of(&reply).0, "forbidden");
    let reply = get(&router, uri, Some(&token("", Some("*")))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    // Right scope (activity:read or admin), every tenant.
    let everything = expected(&events, |_| true);
    for scope in ["activity:read", "admin", "tokens:read activity:read"] {
        let got = all_pages(&router, uri, Some(&token(scope, Some("*")))).await;
        assert_eq!(got, everything, "{scope}");
    }
    // Within the leeway an expired token still works.
    let skewed = token_with(
        SECRET,
        &json!({ "sub": "x", "exp": now_secs() - 5, "scope": "admin", "tenant": "*" }),
    );
    assert_eq!(
        get(&router, uri, Some(&skewed)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn tenant_scoped_tokens_see_only_their_tenant() {
    let (db, events) = seeded(600, 5).await;
    let router = api(&config_with_jwt(), &db.url).await.router();
    let acme = token("activity:read", Some("acme"));

    let own = expected(&events, |e| e.tenant_id == "acme");
    assert!(!own.is_empty());
    let got = all_pages(&router, "/api/v1/activity?limit=1000", Some(&acme)).await;
    assert_eq!(got, own, "no filter: forced to the token's tenant");
    let got = all_pages(
        &router,
        "/api/v1/activity?limit=100&tenant=acme",
        Some(&acme),
    )
    .await;
    assert_eq!(got, own, "explicit own tenant");
    let got = all_pages(
        &router,
        "/api/v1/activity?limit=1000&action=auth.*",
        Some(&acme),
    )
    .await;
    assert_eq!(
        got,
        expected(&events, |e| e.tenant_id == "acme"
            && e.action.starts_with("auth."))
    );

    let reply = get(&router, "/api/v1/activity?tenant=globex", Some(&acme)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(error_of(&reply).0, "forbidden");

    // No tenant claim (or an empty one): no access.
    for no_tenant in [token("admin", None), token("admin", Some(""))] {
        let reply = get(&router, "/api/v1/activity", Some(&no_tenant)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(error_of(&reply).0, "forbidden");
    }

    // A platform token filters freely.
    let all = token("activity:read", Some("*"));
    let got = all_pages(
        &router,
        "/api/v1/activity?limit=1000&tenant=globex",
        Some(&all),
    )
    .await;
    assert_eq!(got, expected(&events, |e| e.tenant_id == "globex"));
}

#[tokio::test]
async fn issuer_and_audience_are_required_when_configured() {
    let db = TestDb::migrated().await;
    let mut config = config();
    config.auth.jwt = Some(JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        issuer: Some("https://issuer.example".to_owned()),
        audience: Some("tally".to_owned()),
        leeway_secs: 0,
        ..JwtConfig::default()
    });
    let router = api(&config, &db.url).await.router();
    let base = json!({ "sub": "x", "exp": now_secs() + 600, "scope": "admin", "tenant": "*" });
    let with = |extra: serde_json::Value| {
        let mut claims = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        token_with(SECRET, &claims)
    };
    let good = with(json!({ "iss": "https://issuer.example", "aud": "tally" }));
    assert_eq!(
        get(&router, "/api/v1/activity", Some(&good)).await.status,
        StatusCode::OK
    );
    for bad in [
        with(json!({ "aud": "tally" })),
        with(json!({ "iss": "https://issuer.example" })),
        with(json!({ "iss": "https://evil.example", "aud": "tally" })),
        with(json!({ "iss": "https://issuer.example", "aud": "other" })),
        with(json!({ "iss": "https://issuer.example", "aud": "tally", "exp": now_secs() - 2 })),
    ] {
        let reply = get(&router, "/api/v1/activity", Some(&bad)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    }
}

#[tokio::test]
async fn health_and_openapi_need_no_token() {
    let db = TestDb::migrated().await;
    let router = api(&config_with_jwt(), &db.url).await.router();
    for path in ["/healthz", "/readyz", "/api/v1/openapi.json"] {
        let reply = get(&router, path, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
    }
}

#[tokio::test]
async fn an_empty_secret_is_refused_at_bind() {
    let mut config = config();
    config.auth.jwt = Some(JwtConfig {
        hs256_secret: Some(String::new()),
        ..JwtConfig::default()
    });
    let result =
        tally_admin_api::AdminApi::bind(&config, "postgres://postgres@127.0.0.1/x", ready()).await;
    assert!(matches!(result, Err(tally_admin_api::ApiError::Config(_))));
}
