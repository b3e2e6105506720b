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
async fn a_token_is_not_valid_before_its_nbf() {
    let db = TestDb::migrated().await;
    let mut config = config_with_jwt();
    if let Some(jwt) = config.auth.jwt.as_mut() {
        jwt.leeway_secs = 5;
    }
    let router = api(&config, &db.url).await.router();
    let claims = |nbf: i64| json!({ "sub": "x", "exp": now_secs() + 600, "nbf": nbf, "scope": "admin", "tenant": "*" });
    let future = token_with(SECRET, &claims(now_secs() + 120));
    let reply = get(&router, "/api/v1/activity", Some(&future)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    assert_eq!(error_of(&reply).1, "token not yet valid");
    // Within the leeway, and in the past: valid.
    for nbf in [now_secs() + 2, now_secs() - 60] {
        let token = token_with(SECRET, &claims(nbf));
        let reply = get(&router, "/api/v1/activity", Some(&token)).await;
        assert_eq!(reply.status, StatusCode::OK, "nbf {nbf}: {}", reply.body);
    }
}

#[tokio::test]
async fn public_keys_and_jwks_need_an_audience_and_refuse_other_ones() {
    // Without `audience`, a JWKS or public key is refused at start.
    for jwt in [
        JwtConfig {
            jwks_file: Some(fixture("jwks.json")),
            ..JwtConfig::default()
        },
        JwtConfig {
            public_key_file: Some(fixture("rsa1_public.pem")),
            ..JwtConfig::default()
        },
    ] {
        let mut config = config();
        config.auth.jwt = Some(jwt.clone());
        match tally_admin_api::AdminApi::bind(&config, "postgres://postgres@127.0.0.1/x", ready())
            .await
        {
            Err(tally_admin_api::ApiError::Config(message)) => {
                assert!(message.contains("audience"), "{message}")
            }
            Err(other) => panic!("{jwt:?}: {other}"),
            Ok(_) => panic!("{jwt:?}: accepted without an audience"),
        }
        let mut whole = tally_config::Config::default();
        whole.admin_api.auth.jwt = Some(jwt);
        let error = whole.validate().expect_err("config validation");
        assert!(
            error.to_string().contains("admin_api.auth.jwt.audience"),
            "{error}"
        );
    }
    // With one, a JWKS token for another application (or for none) is refused.
    let db = TestDb::migrated().await;
    let mut config = config();
    config.auth.jwt = Some(JwtConfig {
        jwks_file: Some(fixture("jwks.json")),
        audience: Some(AUDIENCE.to_owned()),
        ..JwtConfig::default()
    });
    let router = api(&config, &db.url).await.router();
    let pem = std::fs::read(fixture("rsa1_private.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-1".to_owned());
    let sign = |aud: Option<&str>| {
        let mut claims =
            json!({ "sub": "x", "exp": now_secs() + 600, "scope": "admin", "tenant": "*" });
        if let Some(aud) = aud {
            claims["aud"] = json!(aud);
        }
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let reply = get(&router, "/api/v1/activity", Some(&sign(Some(AUDIENCE)))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    for (aud, message) in [
        (Some("another-app"), "wrong token audience"),
        (None, "token lacks the required claim aud"),
    ] {
        let reply = get(&router, "/api/v1/activity", Some(&sign(aud))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{aud:?}");
        assert_eq!(error_of(&reply).1, message, "{aud:?}");
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

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn sign_with(alg: jsonwebtoken::Algorithm, private_pem: &str, kid: Option<&str>) -> String {
    let pem = std::fs::read(fixture(private_pem)).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
    }
    .unwrap();
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let claims = json!({ "sub": "x", "exp": now_secs() + 600, "scope": "admin", "tenant": "*", "aud": AUDIENCE });
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// The audience the asymmetric-key tests configure (required with those keys).
const AUDIENCE: &str = "tally-admin";

#[tokio::test]
async fn rs256_and_es256_public_keys_verify_their_tokens_only() {
    let db = TestDb::migrated().await;
    let mut config = config();
    config.auth.jwt = Some(JwtConfig {
        public_key_file: Some(fixture("rsa1_public.pem")),
        audience: Some(AUDIENCE.to_owned()),
        ..JwtConfig::default()
    });
    let router = api(&config, &db.url).await.router();
    let uri = "/api/v1/activity";
    let good = sign_with(jsonwebtoken::Algorithm::RS256, "rsa1_private.pem", None);
    assert_eq!(get(&router, uri, Some(&good)).await.status, StatusCode::OK);
    // A kid the PEM key does not name still selects it (a PEM key has no kid).
    let with_kid = sign_with(
        jsonwebtoken::Algorithm::RS256,
        "rsa1_private.pem",
        Some("k"),
    );
    assert_eq!(
        get(&router, uri, Some(&with_kid)).await.status,
        StatusCode::OK
    );
    let other_key = sign_with(jsonwebtoken::Algorithm::RS256, "rsa2_private.pem", None);
    let reply = get(&router, uri, Some(&other_key)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&reply).1, "bad token signature");
    let es = sign_with(jsonwebtoken::Algorithm::ES256, "ec_private.pem", None);
    let reply = get(&router, uri, Some(&es)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        error_of(&reply).1,
        "token algorithm ES256 not accepted (accepted: RS256)"
    );

    // Algorithm confusion: an HS256 token whose HMAC key is the RSA public key.
    let public_pem = std::fs::read_to_string(fixture("rsa1_public.pem")).unwrap();
    let confused = token_with(
        &public_pem,
        &json!({ "sub": "x", "exp": now_secs() + 600, "scope": "admin", "tenant": "*" }),
    );
    let reply = get(&router, uri, Some(&confused)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        error_of(&reply).1,
        "token algorithm HS256 not accepted (accepted: RS256)"
    );

    // ES256 from inline PEM, next to an HS256 secret: each verifies its own.
    let mut config = self::config();
    config.auth.jwt = Some(JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        public_key_pem: Some(std::fs::read_to_string(fixture("ec_public.pem")).unwrap()),
        audience: Some(AUDIENCE.to_owned()),
        ..JwtConfig::default()
    });
    let router = api(&config, &db.url).await.router();
    assert_eq!(get(&router, uri, Some(&es)).await.status, StatusCode::OK);
    // The audience applies to every key, the HS256 secret's included.
    let hs = token_with(
        SECRET,
        &json!({ "sub": "x", "exp": now_secs() + 600, "scope": "admin", "tenant": "*", "aud": AUDIENCE }),
    );
    assert_eq!(
        get(&router, uri, Some(&token("admin", Some("*"))))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get(&router, uri, Some(&hs)).await.status, StatusCode::OK);
    let ec_public = std::fs::read_to_string(fixture("ec_public.pem")).unwrap();
    let confused = token_with(
        &ec_public,
        &json!({ "sub": "x", "exp": now_secs() + 600, "scope": "admin", "tenant": "*" }),
    );
    let reply = get(&router, uri, Some(&confused)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&reply).1, "bad token signature");
    let reply = get(&router, uri, Some(&good)).await;
    assert_eq!(
        error_of(&reply).1,
        "token algorithm RS256 not accepted (accepted: ES256, HS256)"
    );
}

#[tokio::test]
async fn jwks_keys_are_selected_by_kid() {
    let db = TestDb::migrated().await;
    let mut config = config();
    config.auth.jwt = Some(JwtConfig {
        jwks_file: Some(fixture("jwks.json")),
        audience: Some(AUDIENCE.to_owned()),
        ..JwtConfig::default()
    });
    let router = api(&config, &db.url).await.router();
    let uri = "/api/v1/activity";
    use jsonwebtoken::Algorithm::{ES256, RS256};
    for (alg, pem, kid) in [
        (RS256, "rsa1_private.pem", "rsa-1"),
        (RS256, "rsa2_private.pem", "rsa-2"),
        (ES256, "ec_private.pem", "ec-1"),
    ] {
        let token = sign_with(alg, pem, Some(kid));
        assert_eq!(
            get(&router, uri, Some(&token)).await.status,
            StatusCode::OK,
            "{kid}"
        );
    }
    for (alg, pem, kid, message) in [
        (
            RS256,
            "rsa2_private.pem",
            Some("rsa-1"),
            "bad token signature",
        ),
        (
            RS256,
            "rsa1_private.pem",
            Some("rsa-9"),
            "unknown token key id (kid)",
        ),
        (
            ES256,
            "ec_private.pem",
            Some("rsa-1"),
            "unknown token key id (kid)",
        ),
    ] {
        let token = sign_with(alg, pem, kid);
        let reply = get(&router, uri, Some(&token)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{kid:?}");
        assert_eq!(error_of(&reply).1, message, "{kid:?}");
    }
    let hs = token("admin", Some("*"));
    let reply = get(&router, uri, Some(&hs)).await;
    assert_eq!(
        error_of(&reply).1,
        "token algorithm HS256 not accepted (accepted: ES256, RS256)"
    );
}

#[tokio::test]
async fn unusable_keys_are_refused_at_bind() {
    let dir = std::env::temp_dir().join(format!("tally-jwks-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let symmetric = dir.join("oct.json");
    std::fs::write(
        &symmetric,
        r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#,
    )
    .unwrap();
    let cases = [
        JwtConfig {
            public_key_file: Some(fixture("rsa1_private.pem")),
            ..JwtConfig::default()
        },
        JwtConfig {
            public_key_pem: Some("not a key".to_owned()),
            ..JwtConfig::default()
        },
        JwtConfig {
            jwks_file: Some(symmetric),
            ..JwtConfig::default()
        },
        JwtConfig {
            jwks_file: Some(dir.join("missing.json")),
            ..JwtConfig::default()
        },
    ];
    for jwt in cases {
        let mut config = config();
        config.auth.jwt = Some(jwt.clone());
        let result =
            tally_admin_api::AdminApi::bind(&config, "postgres://postgres@127.0.0.1/x", ready())
                .await;
        assert!(
            matches!(result, Err(tally_admin_api::ApiError::Config(_))),
            "{jwt:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn api_keys_alone_close_the_api_and_revocation_ends_within_the_ttl() {
    let db = TestDb::migrated().await;
    let mut config = config();
    config.auth.api_keys.enabled = Some(true);
    config.auth.api_keys.cache_ttl_secs = 1;
    let router = api(&config, &db.url).await.router();
    let uri = "/api/v1/activity";
    let reply = get(&router, uri, None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "not an open API");
    let reply = get(&router, uri, Some(&token("admin", Some("*")))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&reply).1.contains("use an API key"));

    let key = tally_admin_api::apikeys::create(&db.client, "acme", &["activity:read".into()], None)
        .await
        .unwrap();
    assert!(key.key.starts_with("tally_"));
    assert_eq!(
        get(&router, uri, Some(&key.key)).await.status,
        StatusCode::OK
    );
    // Scopes of the key: no tokens:read.
    assert_eq!(
        get(&router, "/api/v1/tokens", Some(&key.key)).await.status,
        StatusCode::FORBIDDEN
    );
    // Its tenant: no other.
    assert_eq!(
        get(&router, "/api/v1/activity?tenant=globex", Some(&key.key))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // A forged secret on a known prefix.
    let forged = format!("{}{}", &key.key[..key.key.len() - 4], "0000");
    let forged = if forged == key.key {
        format!("{}{}", &key.key[..key.key.len() - 4], "1111")
    } else {
        forged
    };
    let reply = get(&router, uri, Some(&forged)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&reply).1, "invalid API key");
    // A wrong secret of another shape on a known prefix is a wrong secret too; only a
    // key without a Tally prefix is malformed.
    let prefix_part = format!("tally_{}_", key.prefix);
    for wrong in [
        format!("{prefix_part}zz"),
        format!("{prefix_part}{}", "0".repeat(100)),
        format!("{}X", key.key),
        prefix_part.clone(),
    ] {
        let reply = get(&router, uri, Some(&wrong)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{wrong}");
        assert_eq!(error_of(&reply).1, "invalid API key", "{wrong}");
    }
    for malformed in ["tally_", "tally_nothex_0123", "tally_0123456789abcdef"] {
        let reply = get(&router, uri, Some(malformed)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{malformed}");
        assert_eq!(error_of(&reply).1, "malformed API key", "{malformed}");
    }

    let listed = tally_admin_api::apikeys::list(&db.client).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].prefix, key.prefix);
    assert!(listed[0].revoked_at.is_none());
    assert!(tally_admin_api::apikeys::revoke(&db.client, &key.prefix)
        .await
        .unwrap());
    assert!(!tally_admin_api::apikeys::revoke(&db.client, &key.prefix)
        .await
        .unwrap());
    assert!(matches!(
        tally_admin_api::apikeys::revoke(&db.client, "feedfacefeedface").await,
        Err(tally_admin_api::apikeys::ApiKeyError::NotFound(_))
    ));
    // The cached grant may live up to the TTL (1 s); then the key is refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let reply = get(&router, uri, Some(&key.key)).await;
        if reply.status == StatusCode::UNAUTHORIZED {
            assert_eq!(error_of(&reply).1, "API key revoked");
            break;
        }
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked key still works after 5 s (TTL 1 s)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let stored: Vec<u8> = db
        .client
        .query_one("SELECT secret_hash FROM api_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 32);
    let text: String = db
        .client
        .query_one("SELECT row_to_json(k)::text FROM api_keys k", &[])
        .await
        .unwrap()
        .get(0);
    let secret = key.key.rsplit('_').next().unwrap();
    assert!(!text.contains(secret), "the secret is not stored");
}
