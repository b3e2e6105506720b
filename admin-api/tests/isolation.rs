//! The isolation matrix: every route × every kind of credential, with exact
//! statuses, and tenant A never sees a byte of tenant B's data (nor B of A's).
//!
//! The API is configured with an HS256 secret, a JWKS file (two RSA keys and a
//! P-256 key, test-only fixtures under `tests/data/`), a required audience and
//! API keys. The route list is checked against the OpenAPI document: a route
//! added to the API without a row here fails [`the_matrix_covers_every_documented_route`].

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use common::*;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::{json, Value};
use tally_admin_api::rejected::{ReplayReport, ReplayRequest, Replayer};
use tally_config::{AdminApiConfig, JwtConfig, TaxonomyHandle, ValidateConfig};
use tokio::time::Instant;
use tower::ServiceExt;

const A: &str = "tenant-alpha";
const B: &str = "tenant-bravo";
const AUDIENCE: &str = "tally-admin";
/// Strings only tenant B's rows hold (and A's, for the reverse check).
const B_MARKERS: &[&str] = &[
    B,
    "user-bravo",
    "sess-bravo",
    "res-bravo",
    "model-bravo",
    "bravoclass",
];
const A_MARKERS: &[&str] = &[
    A,
    "user-alpha",
    "sess-alpha",
    "res-alpha",
    "model-alpha",
    "alphaclass",
];

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).expect("test fixture")
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// No credential (health, OpenAPI).
    Nothing,
    /// Any valid credential, whatever its scopes (whoami).
    Credential,
    Activity,
    Tokens,
    /// Either read scope.
    AnyRead,
    Admin,
}

/// How a route's answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Whole body.
    Whole,
    /// An SSE replay from `after_seq=0`, read up to the last row of `table` the caller may see.
    Feed(Table),
    /// The stats feed: read its first `stats` event.
    StatsFeed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Activity,
    Tokens,
}

/// One row of the matrix.
struct Route {
    method: &'static str,
    /// The path as the OpenAPI document names it.
    path: &'static str,
    /// Path and query of the request.
    uri: &'static str,
    needs: Needs,
    body: Read,
    /// Whether a successful answer must show the caller's own tenant's data.
    shows_data: bool,
    /// Whether `tenant=<other>` may be asked (403 for a tenant-scoped caller).
    takes_tenant: bool,
}

const fn route(
    method: &'static str,
    path: &'static str,
    uri: &'static str,
    needs: Needs,
    body: Read,
    shows_data: bool,
    takes_tenant: bool,
) -> Route {
    Route {
        method,
        path,
        uri,
        needs,
        body,
        shows_data,
        takes_tenant,
    }
}

const ROUTES: &[Route] = &[
    route(
        "GET",
        "/healthz",
        "/healthz",
        Needs::Nothing,
        Read::Whole,
        false,
        false,
    ),
    route(
        "GET",
        "/readyz",
        "/readyz",
        Needs::Nothing,
        Read::Whole,
        false,
        false,
    ),
    route(
        "GET",
        "/api/v1/openapi.json",
        "/api/v1/openapi.json",
        Needs::Nothing,
        Read::Whole,
        false,
        false,
    ),
    route(
        "GET",
        "/api/v1/whoami",
        "/api/v1/whoami",
        Needs::Credential,
        Read::Whole,
        false,
        false,
    ),
    route(
        "GET",
        "/api/v1/activity",
        "/api/v1/activity?limit=1000",
        Needs::Activity,
        Read::Whole,
        true,
        true,
    ),
    route(
        "GET",
        "/api/v1/activity/aggregates",
        "/api/v1/activity/aggregates?group_by=tenant&group_by=user&group_by=action&limit=1000",
        Needs::Activity,
        Read::Whole,
        true,
        true,
    ),
    route(
        "GET",
        "/api/v1/activity/stream",
        "/api/v1/activity/stream?after_seq=0",
        Needs::Activity,
        Read::Feed(Table::Activity),
        true,
        true,
    ),
    route(
        "GET",
        "/api/v1/tokens",
        "/api/v1/tokens?limit=1000",
        Needs::Tokens,
        Read::Whole,
        true,
        true,
    ),
    route(
        "GET",
        "/api/v1/tokens/usage",
        "/api/v1/tokens/usage?group_by=tenant&group_by=user&group_by=model&limit=1000",
        Needs::Tokens,
        Read::Whole,
        true,
        true,
    ),
    // Names models, not tenants: checked for the other tenant's markers only.
    route(
        "GET",
        "/api/v1/tokens/coverage",
        "/api/v1/tokens/coverage",
        Needs::Tokens,
        Read::Whole,
        false,
        true,
    ),
    route(
        "GET",
        "/api/v1/tokens/stream",
        "/api/v1/tokens/stream?after_seq=0",
        Needs::Tokens,
        Read::Feed(Table::Tokens),
        true,
        true,
    ),
    route(
        "GET",
        "/api/v1/stats",
        "/api/v1/stats",
        Needs::AnyRead,
        Read::Whole,
        true,
        true,
    ),
    route(
        "GET",
        "/api/v1/stats/stream",
        "/api/v1/stats/stream",
        Needs::AnyRead,
        Read::StatsFeed,
        false,
        true,
    ),
    route(
        "GET",
        "/api/v1/export",
        "/api/v1/export?table=activity_events&limit=10000",
        Needs::Activity,
        Read::Whole,
        true,
        true,
    ),
    route(
        "GET",
        "/api/v1/export",
        "/api/v1/export?table=token_usage&limit=10000",
        Needs::Tokens,
        Read::Whole,
        true,
        true,
    ),
    route(
        "GET",
        "/api/v1/verify",
        "/api/v1/verify",
        Needs::Activity,
        Read::Whole,
        true,
        true,
    ),
    route(
        "GET",
        "/api/v1/taxonomy",
        "/api/v1/taxonomy",
        Needs::AnyRead,
        Read::Whole,
        false,
        false,
    ),
    route(
        "GET",
        "/api/v1/rejected",
        "/api/v1/rejected?limit=1000",
        Needs::Admin,
        Read::Whole,
        true,
        true,
    ),
    route(
        "GET",
        "/api/v1/budgets",
        "/api/v1/budgets",
        Needs::Tokens,
        Read::Whole,
        true,
        true,
    ),
    route(
        "GET",
        "/api/v1/budgets/check",
        "/api/v1/budgets/check",
        Needs::Tokens,
        Read::Whole,
        false,
        true,
    ),
    route(
        "POST",
        "/api/v1/rejected/replay",
        "/api/v1/rejected/replay",
        Needs::Admin,
        Read::Whole,
        false,
        true,
    ),
    // The matrix's API runs no eraser: a caller allowed through (scope, tenant,
    // body) gets 404 "not available" where it would get 202 (tests/e2e_erasure.rs
    // erases for real).
    route(
        "POST",
        "/api/v1/erasures",
        "/api/v1/erasures",
        Needs::Admin,
        Read::Whole,
        false,
        true,
    ),
    route(
        "GET",
        "/api/v1/erasures",
        "/api/v1/erasures",
        Needs::Admin,
        Read::Whole,
        false,
        true,
    ),
];

/// Who a credential is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    /// Must get 401 on every protected route.
    Refused,
    /// Valid: its scopes and tenant (`*` = every tenant).
    Valid {
        scopes: &'static [&'static str],
        tenant: &'static str,
    },
}

struct Credential {
    name: &'static str,
    /// `Authorization: Bearer <token>` (or `X-API-Key`).
    token: Option<String>,
    api_key_header: bool,
    who: Who,
}

const ALL_SCOPES: &[&str] = &["activity:read", "tokens:read", "admin"];
const READ_SCOPES: &[&str] = &["activity:read", "tokens:read"];

fn claims(tenant: &str, scope: &str, extra: Value) -> Value {
    let mut claims = json!({
        "sub": "matrix", "exp": now_secs() + 3600, "aud": AUDIENCE,
        "scope": scope, "tenant": tenant,
    });
    for (key, value) in extra.as_object().expect("object") {
        claims[key] = value.clone();
    }
    claims
}

fn hs256(secret: &str, claims: &Value) -> String {
    token_with(secret, claims)
}

/// Signs with a PEM private key from `tests/data` (RS256 or ES256) and `kid`.
fn signed(alg: jsonwebtoken::Algorithm, pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&read(pem)),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(&read(pem)),
    }
    .expect("test key");
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn alg_none(claims: &Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

fn matrix_config() -> AdminApiConfig {
    let mut config = config();
    config.auth.jwt = Some(JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        jwks_file: Some(data("jwks.json")),
        audience: Some(AUDIENCE.to_owned()),
        leeway_secs: 5,
        ..JwtConfig::default()
    });
    config
}

/// Records the tenant of every replay request.
#[derive(Default)]
struct RecordingReplayer {
    tenants: Mutex<Vec<Option<String>>>,
}

impl Replayer for RecordingReplayer {
    fn replay(
        &self,
        request: ReplayRequest,
    ) -> BoxFuture<'static, Result<ReplayReport, tally_exporters::postgres::PgError>> {
        if let Ok(mut tenants) = self.tenants.lock() {
            tenants.push(request.tenant);
        }
        Box::pin(async { Ok(ReplayReport::default()) })
    }
}

/// The seqs of each tenant's rows, per table.
#[derive(Debug, Default)]
struct Seeded {
    activity: BTreeMap<String, BTreeSet<i64>>,
    tokens: BTreeMap<String, BTreeSet<i64>>,
}

impl Seeded {
    fn seqs(&self, table: Table, tenant: &str) -> BTreeSet<i64> {
        let map = match table {
            Table::Activity => &self.activity,
            Table::Tokens => &self.tokens,
        };
        map.get(tenant).cloned().unwrap_or_default()
    }
}

/// Rows of both tenants, interleaved, in every table the API reads; the last
/// row of each raw table is tenant A's.
async fn seed(db: &TestDb) -> Seeded {
    let client = &db.client;
    // token_usage partitions for yesterday..tomorrow (activity ones come with migrate).
    let today = chrono::Utc::now().date_naive();
    for offset in -1i64..=1 {
        let day = today + chrono::Duration::days(offset);
        let next = day + chrono::Duration::days(1);
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS token_usage_p{} PARTITION OF token_usage \
                 FOR VALUES FROM ('{day}') TO ('{next}')",
                day.format("%Y%m%d")
            ))
            .await
            .expect("token_usage partition");
    }
    let mut seeded = Seeded::default();
    let order: Vec<(&str, &str)> = (0..9)
        .map(|i| {
            if i % 2 == 0 {
                (A, "alpha")
            } else {
                (B, "bravo")
            }
        })
        .chain([(A, "alpha")])
        .collect();
    for (i, (tenant, word)) in order.iter().enumerate() {
        let seq: i64 = client
            .query_one(
                "INSERT INTO activity_events (id, seq, ts, tenant_id, user_id, session_id, action, \
                 outcome, resource_type, resource_id, service, attributes) \
                 VALUES (gen_random_uuid(), nextval('activity_events_seq'), now() - interval '1 minute', \
                 $1, $2, $3, $4, 'success', 'doc', $5, 'svc', jsonb_build_object('n', $6::int)) \
                 RETURNING seq",
                &[
                    tenant,
                    &format!("user-{word}-{}", i % 3),
                    &format!("sess-{word}-{i}"),
                    &format!("{word}class.read"),
                    &format!("res-{word}-{i}"),
                    &(i as i32),
                ],
            )
            .await
            .expect("insert activity")
            .get(0);
        seeded
            .activity
            .entry(tenant.to_string())
            .or_default()
            .insert(seq);
        let seq: i64 = client
            .query_one(
                "INSERT INTO token_usage (id, seq, ts, tenant_id, user_id, session_id, service, \
                 provider, operation, request_model, response_model, model, input_tokens, \
                 output_tokens, total_tokens, cost_usd, outcome) \
                 VALUES (gen_random_uuid(), nextval('token_usage_seq'), now() - interval '1 minute', \
                 $1, $2, $3, 'svc', 'openai', 'chat', $4, $4, $4, 10, 5, 15, 0.001, 'success') \
                 RETURNING seq",
                &[
                    tenant,
                    &format!("user-{word}-{}", i % 3),
                    &format!("sess-{word}-{i}"),
                    &format!("model-{word}"),
                ],
            )
            .await
            .expect("insert token usage")
            .get(0);
        seeded
            .tokens
            .entry(tenant.to_string())
            .or_default()
            .insert(seq);
        client
            .execute(
                "INSERT INTO rejected_events (id, tenant_id, reason, record) \
                 VALUES (gen_random_uuid(), $1, 'unknown_action', $2)",
                &[
                    tenant,
                    &json!({ "user_id": format!("user-{word}-{i}"), "action": format!("{word}class.bad") }),
                ],
            )
            .await
            .expect("insert rejected");
    }
    let mut rollup_client = db_client(db).await;
    tally_exporters::postgres::RollupJob::new(Duration::ZERO)
        .run_once(&mut rollup_client)
        .await
        .expect("rollup");
    let folded: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM activity_daily WHERE tenant_id = $1) \
             + (SELECT count(*) FROM token_usage_daily WHERE tenant_id = $1)",
            &[&B],
        )
        .await
        .expect("rollups")
        .get(0);
    assert!(folded > 0, "the rollups hold tenant B's rows");
    seeded
}

async fn db_client(db: &TestDb) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// The answer to one request: status and what was read of the body.
struct Answer {
    status: StatusCode,
    text: String,
    /// Feed events: `(seq, data)`.
    events: Vec<(Option<i64>, String)>,
}

/// SSE events in `text` (complete blocks only).
fn sse_events(text: &str) -> Vec<(Option<i64>, String)> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut id = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("id:") {
                id = value.trim().parse().ok();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.trim_start().to_owned());
            }
        }
        if !data.is_empty() {
            events.push((id, data.join("\n")));
        }
    }
    events
}

async fn send(
    router: &Router,
    route: &Route,
    uri: &str,
    credential: &Credential,
    body: Option<Value>,
    read_until: Option<i64>,
) -> Answer {
    let mut request = Request::builder().method(route.method).uri(uri);
    if let Some(token) = &credential.token {
        request = if credential.api_key_header {
            request.header("x-api-key", token)
        } else {
            request.header("authorization", format!("Bearer {token}"))
        };
    }
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let response = router
        .clone()
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let is_feed = status == StatusCode::OK && route.body != Read::Whole;
    if !is_feed {
        let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
            .await
            .expect("body");
        return Answer {
            status,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            events: Vec::new(),
        };
    }
    // A live feed never ends: read until the condition, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = response.into_body().into_data_stream();
    let mut text = String::new();
    loop {
        let events = sse_events(&text);
        let done = match route.body {
            Read::StatsFeed => text.contains("event: stats"),
            _ => match read_until {
                Some(last) => events.iter().any(|(id, _)| *id == Some(last)),
                None => text.contains("\n\n"),
            },
        };
        if done {
            return Answer {
                status,
                text,
                events,
            };
        }
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{uri} ({}): feed too slow: {text}", credential.name))
            .unwrap_or_else(|| panic!("{uri} ({}): feed ended: {text}", credential.name))
            .expect("feed chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Budgets of each tenant and one of every tenant, as the budget job publishes them.
fn budget_book() -> Arc<tally_exporters::postgres::budgets::BudgetBook> {
    use tally_exporters::postgres::budgets::{BudgetBook, BudgetSnapshot, BudgetStatus};
    let now = chrono::Utc::now();
    let status = |name: &str, tenant: Option<&str>| BudgetStatus {
        name: name.to_owned(),
        tenant: tenant.map(str::to_owned),
        // One user's budget (what a `self:read` caller may see).
        user: name
            .strip_prefix("budget-of-user-")
            .map(|user| format!("user-{user}")),
        period: "day",
        period_start: now,
        period_end: now,
        unit: "tokens",
        limit: 100.0,
        used: 50.0,
        used_ratio: 0.5,
        exceeded: false,
        thresholds: vec![0.5, 1.0],
        thresholds_crossed: vec![0.5],
    };
    let book = BudgetBook::new();
    book.publish(BudgetSnapshot {
        as_of: now,
        budgets: vec![
            status("budget-of-alpha", Some(A)),
            status("budget-of-user-alpha-0", Some(A)),
            status("budget-of-bravo", Some(B)),
            status("budget-of-every-tenant", None),
        ],
    });
    book
}

fn allowed(scopes: &[&str], needs: Needs) -> bool {
    let has = |scope: &str| scopes.contains(&scope) || scopes.contains(&"admin");
    match needs {
        Needs::Nothing | Needs::Credential => true,
        Needs::Activity => has("activity:read"),
        Needs::Tokens => has("tokens:read"),
        Needs::AnyRead => has("activity:read") || has("tokens:read"),
        Needs::Admin => has("admin"),
    }
}

fn expected(route: &Route, who: &Who) -> StatusCode {
    match (route.needs, who) {
        (Needs::Nothing, _) => StatusCode::OK,
        (_, Who::Refused) => StatusCode::UNAUTHORIZED,
        (needs, Who::Valid { scopes, .. }) if allowed(scopes, needs) => StatusCode::OK,
        _ => StatusCode::FORBIDDEN,
    }
}

fn other(tenant: &str) -> &'static str {
    if tenant == A {
        B
    } else {
        A
    }
}

fn markers(tenant: &str) -> &'static [&'static str] {
    if tenant == A {
        A_MARKERS
    } else {
        B_MARKERS
    }
}

/// Every `seq` of the JSON items in a list body, an NDJSON body or feed events.
fn seqs_in(answer: &Answer) -> BTreeSet<i64> {
    let mut seqs: BTreeSet<i64> = answer.events.iter().filter_map(|(id, _)| *id).collect();
    let mut take = |value: &Value| {
        if let Some(seq) = value.get("seq").and_then(Value::as_i64) {
            seqs.insert(seq);
        }
    };
    match serde_json::from_str::<Value>(&answer.text) {
        Ok(body) => {
            for item in body["items"].as_array().into_iter().flatten() {
                take(item);
            }
        }
        Err(_) => {
            for line in answer.text.lines() {
                if let Ok(value) = serde_json::from_str::<Value>(line) {
                    take(&value);
                }
            }
        }
    }
    seqs
}

/// The credentials of the matrix; `api_key` is tenant A's key (read scopes),
/// `revoked` a revoked one.
fn credentials(api_key: &str, revoked: &str) -> Vec<Credential> {
    let refused = |name, token: Option<String>| Credential {
        name,
        token,
        api_key_header: false,
        who: Who::Refused,
    };
    let valid = |name, token: String, scopes, tenant| Credential {
        name,
        token: Some(token),
        api_key_header: false,
        who: Who::Valid { scopes, tenant },
    };
    let all = ALL_SCOPES.join(" ");
    vec![
        refused("no token", None),
        refused(
            "expired",
            Some(hs256(
                SECRET,
                &claims(A, &all, json!({ "exp": now_secs() - 3600 })),
            )),
        ),
        refused(
            "wrong signature",
            Some(hs256(
                "another-secret-another-secret-another",
                &claims(A, &all, json!({})),
            )),
        ),
        refused(
            "wrong signature (RS256, kid rsa-1, signed by rsa-2)",
            Some(signed(
                jsonwebtoken::Algorithm::RS256,
                "rsa2_private.pem",
                Some("rsa-1"),
                &claims("*", &all, json!({})),
            )),
        ),
        refused("alg none", Some(alg_none(&claims("*", &all, json!({}))))),
        refused(
            "wrong audience",
            Some(hs256(
                SECRET,
                &claims(A, &all, json!({ "aud": "someone-else" })),
            )),
        ),
        refused(
            "unknown kid",
            Some(signed(
                jsonwebtoken::Algorithm::ES256,
                "ec_private.pem",
                Some("ec-9"),
                &claims(A, &all, json!({})),
            )),
        ),
        valid(
            "tenant A (HS256)",
            hs256(SECRET, &claims(A, &all, json!({}))),
            ALL_SCOPES,
            A,
        ),
        valid(
            "tenant A (RS256, kid rsa-2)",
            signed(
                jsonwebtoken::Algorithm::RS256,
                "rsa2_private.pem",
                Some("rsa-2"),
                &claims(A, &all, json!({})),
            ),
            ALL_SCOPES,
            A,
        ),
        valid(
            "tenant A (ES256, kid ec-1)",
            signed(
                jsonwebtoken::Algorithm::ES256,
                "ec_private.pem",
                Some("ec-1"),
                &claims(A, &all, json!({})),
            ),
            ALL_SCOPES,
            A,
        ),
        valid(
            "tenant A, activity:read only",
            hs256(SECRET, &claims(A, "activity:read", json!({}))),
            &["activity:read"],
            A,
        ),
        valid(
            "tenant B (HS256)",
            hs256(SECRET, &claims(B, &all, json!({}))),
            ALL_SCOPES,
            B,
        ),
        valid(
            "every tenant (RS256, kid rsa-1)",
            signed(
                jsonwebtoken::Algorithm::RS256,
                "rsa1_private.pem",
                Some("rsa-1"),
                &claims("*", &all, json!({})),
            ),
            ALL_SCOPES,
            "*",
        ),
        valid("API key, tenant A", api_key.to_owned(), READ_SCOPES, A),
        Credential {
            name: "API key, tenant A, X-API-Key header",
            token: Some(api_key.to_owned()),
            api_key_header: true,
            who: Who::Valid {
                scopes: READ_SCOPES,
                tenant: A,
            },
        },
        refused("revoked API key", Some(revoked.to_owned())),
        Credential {
            name: "revoked API key, X-API-Key header",
            token: Some(revoked.to_owned()),
            api_key_header: true,
            who: Who::Refused,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_times_every_credential() {
    let db = TestDb::migrated().await;
    let seeded = seed(&db).await;
    let key = tally_admin_api::apikeys::create(
        &db.client,
        A,
        &["activity:read tokens:read".to_owned()],
        Some("matrix"),
    )
    .await
    .expect("create key");
    let revoked = tally_admin_api::apikeys::create(&db.client, A, &["admin".to_owned()], None)
        .await
        .expect("create key");
    assert!(
        tally_admin_api::apikeys::revoke(&db.client, &revoked.id.to_string())
            .await
            .expect("revoke")
    );
    let replayer = Arc::new(RecordingReplayer::default());
    let taxonomy = TaxonomyHandle::load(&ValidateConfig::default()).expect("built-in taxonomy");
    let router = api(&matrix_config(), &db.url)
        .await
        .with_taxonomy(taxonomy)
        .with_replayer(replayer.clone())
        .with_budgets(budget_book())
        .router();

    let mut checked = 0;
    for credential in credentials(&key.key, &revoked.key) {
        for route in ROUTES {
            let want = expected(route, &credential.who);
            let tenant = match &credential.who {
                Who::Valid { tenant, .. } => Some(*tenant),
                Who::Refused => None,
            };
            let read_until = match (route.body, tenant) {
                (Read::Feed(table), Some("*")) => {
                    let a = seeded.seqs(table, A);
                    let b = seeded.seqs(table, B);
                    a.last().max(b.last()).copied()
                }
                (Read::Feed(table), Some(tenant)) => seeded.seqs(table, tenant).last().copied(),
                _ => None,
            };
            let erasure = route.method == "POST" && route.path == "/api/v1/erasures";
            let body = (route.method == "POST").then(|| match tenant {
                Some(t) if erasure => json!({
                    "tenant": if t == "*" { A } else { t },
                    "user_id": "matrix-nobody",
                    "reason": "isolation matrix"
                }),
                _ => json!({}),
            });
            let answer = send(&router, route, route.uri, &credential, body, read_until).await;
            let label = format!("{} {} as {}", route.method, route.uri, credential.name);
            let status = if erasure && answer.status == StatusCode::NOT_FOUND {
                StatusCode::OK
            } else {
                answer.status
            };
            assert_eq!(status, want, "{label}: {}", answer.text);
            checked += 1;
            if want == StatusCode::UNAUTHORIZED {
                let error: Value = serde_json::from_str(&answer.text).expect("error JSON");
                assert_eq!(error["error"]["code"], "unauthorized", "{label}");
                continue;
            }
            if want != StatusCode::OK || route.needs == Needs::Nothing {
                continue;
            }
            let Some(tenant) = tenant else { continue };
            if tenant == "*" {
                // /stats sums over tenants without naming them.
                if route.shows_data && route.path != "/api/v1/stats" {
                    for marker in [A, B] {
                        assert!(answer.text.contains(marker), "{label}: shows {marker}");
                    }
                }
                continue;
            }
            // A tenant-scoped caller: not a byte of the other tenant's data.
            let foreign = other(tenant);
            for marker in markers(foreign) {
                assert!(
                    !answer.text.contains(marker),
                    "{label}: {marker} leaked: {}",
                    answer.text
                );
            }
            let seqs = seqs_in(&answer);
            let foreign_seqs: BTreeSet<i64> = match route.path {
                "/api/v1/tokens" | "/api/v1/tokens/stream" => seeded.seqs(Table::Tokens, foreign),
                "/api/v1/export" if route.needs == Needs::Tokens => {
                    seeded.seqs(Table::Tokens, foreign)
                }
                "/api/v1/activity" | "/api/v1/activity/stream" | "/api/v1/export" => {
                    seeded.seqs(Table::Activity, foreign)
                }
                _ => BTreeSet::new(),
            };
            assert!(
                seqs.is_disjoint(&foreign_seqs),
                "{label}: seqs of {foreign}: {:?}",
                seqs.intersection(&foreign_seqs).collect::<Vec<_>>()
            );
            if let Read::Feed(table) = route.body {
                let own = seeded.seqs(table, tenant);
                assert_eq!(
                    seqs, own,
                    "{label}: the replay is exactly the tenant's rows"
                );
            }
            if route.shows_data {
                assert!(
                    answer.text.contains(tenant),
                    "{label}: shows its own tenant: {}",
                    answer.text
                );
            }
            if route.path == "/api/v1/rejected/replay" {
                let last = replayer.tenants.lock().ok().and_then(|t| t.last().cloned());
                assert_eq!(
                    last,
                    Some(Some(tenant.to_owned())),
                    "{label}: replay forced to the tenant"
                );
            }
            // Asking for the other tenant is refused.
            if route.takes_tenant {
                let (uri, body) = if route.method == "POST" {
                    let body = if erasure {
                        json!({ "tenant": foreign, "user_id": "matrix-nobody", "reason": "x" })
                    } else {
                        json!({ "tenant": foreign })
                    };
                    (route.uri.to_owned(), Some(body))
                } else {
                    let sep = if route.uri.contains('?') { '&' } else { '?' };
                    (format!("{}{sep}tenant={foreign}", route.uri), None)
                };
                let answer = send(&router, route, &uri, &credential, body, None).await;
                assert_eq!(
                    answer.status,
                    StatusCode::FORBIDDEN,
                    "{uri} as {}: {}",
                    credential.name,
                    answer.text
                );
            }
        }
    }
    assert_eq!(checked, ROUTES.len() * credentials("", "").len());
}

#[tokio::test]
async fn the_matrix_covers_every_documented_route() {
    let document = tally_admin_api::openapi::openapi();
    let mut documented = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().expect("paths") {
        for method in operations.as_object().expect("operations").keys() {
            documented.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let covered: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(
        covered, documented,
        "the isolation matrix (left) must cover every documented route (right)"
    );
    // And every documented route is served (the document matches the router).
    let db = TestDb::migrated().await;
    let taxonomy = TaxonomyHandle::load(&ValidateConfig::default()).expect("built-in taxonomy");
    let router = api(&config(), &db.url)
        .await
        .with_taxonomy(taxonomy)
        .with_replayer(Arc::new(RecordingReplayer::default()))
        .with_budgets(budget_book())
        .router();
    for (method, path) in &documented {
        let request = Request::builder()
            .method(method.as_str())
            .uri(path.as_str())
            .body(Body::empty())
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        // Only the status: a live feed never ends. An erasure needs a body: served,
        // an empty one is refused.
        let want = if method == "POST" && path == "/api/v1/erasures" {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        assert_eq!(response.status(), want, "{method} {path}");
    }
}

/// The status a `self:read` caller of tenant A gets on `route`.
fn self_read_expected(route: &Route) -> StatusCode {
    match (route.needs, route.path) {
        // Not about one user's rows.
        (_, "/api/v1/verify") | (Needs::Admin, _) => StatusCode::FORBIDDEN,
        // The token metrics carry no user.
        (_, "/api/v1/tokens/coverage") => StatusCode::FORBIDDEN,
        _ => StatusCode::OK,
    }
}

/// Scope `self:read` on every route of the matrix: the data routes, feeds and
/// exports answer only the rows whose `user_id` is the token's `sub` within
/// its tenant (checked row by row against the database); the routes that are
/// not about one user's rows are 403; asking for another user or tenant is 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_read_sees_only_its_own_rows_on_every_route() {
    let db = TestDb::migrated().await;
    seed(&db).await;
    let taxonomy = TaxonomyHandle::load(&ValidateConfig::default()).expect("built-in taxonomy");
    let router = api(&matrix_config(), &db.url)
        .await
        .with_taxonomy(taxonomy)
        .with_replayer(Arc::new(RecordingReplayer::default()))
        .with_budgets(budget_book())
        .router();
    const ME: &str = "user-alpha-0";
    let others = ["user-alpha-1", "user-alpha-2"];
    let own_seqs = |table: &'static str| {
        let client = &db.client;
        async move {
            client
                .query(
                    &format!("SELECT seq FROM {table} WHERE tenant_id = $1 AND user_id = $2"),
                    &[&A, &ME],
                )
                .await
                .expect("own seqs")
                .iter()
                .map(|r| r.get(0))
                .collect::<BTreeSet<i64>>()
        }
    };
    let own_activity = own_seqs("activity_events").await;
    let own_tokens = own_seqs("token_usage").await;
    assert_eq!(own_activity.len(), 3, "the seed gives {ME} three rows");
    let key = tally_admin_api::apikeys::create_for_user(
        &db.client,
        A,
        &["self:read".to_owned()],
        Some(ME),
        Some("my usage page"),
    )
    .await
    .expect("create a self:read key");
    let credentials = [
        Credential {
            name: "self:read JWT, tenant A",
            token: Some(hs256(SECRET, &claims(A, "self:read", json!({ "sub": ME })))),
            api_key_header: false,
            who: Who::Valid {
                scopes: &["self:read"],
                tenant: A,
            },
        },
        Credential {
            name: "self:read API key, tenant A",
            token: Some(key.key.clone()),
            api_key_header: false,
            who: Who::Valid {
                scopes: &["self:read"],
                tenant: A,
            },
        },
    ];
    for credential in &credentials {
        for route in ROUTES {
            let label = format!("{} {} as {}", route.method, route.uri, credential.name);
            let (own, table) = match route.body {
                Read::Feed(Table::Activity) => (own_activity.clone(), "activity_events"),
                Read::Feed(Table::Tokens) => (own_tokens.clone(), "token_usage"),
                _ if route.uri.contains("table=token_usage") || route.path == "/api/v1/tokens" => {
                    (own_tokens.clone(), "token_usage")
                }
                _ => (own_activity.clone(), "activity_events"),
            };
            let read_until = match route.body {
                Read::Feed(_) => own.last().copied(),
                _ => None,
            };
            let body = (route.method == "POST").then(|| json!({}));
            let answer = send(&router, route, route.uri, credential, body, read_until).await;
            let want = self_read_expected(route);
            assert_eq!(answer.status, want, "{label}: {}", answer.text);
            if want != StatusCode::OK || route.needs == Needs::Nothing {
                continue;
            }
            for marker in B_MARKERS.iter().chain(&others) {
                assert!(
                    !answer.text.contains(marker),
                    "{label}: {marker} leaked: {}",
                    answer.text
                );
            }
            // Every row shown is the caller's (whatever the route names it).
            let seqs = seqs_in(&answer);
            if !seqs.is_empty() {
                let users: Vec<Option<String>> = db
                    .client
                    .query(
                        &format!("SELECT user_id FROM {table} WHERE seq = ANY($1)"),
                        &[&seqs.iter().copied().collect::<Vec<i64>>()],
                    )
                    .await
                    .expect("users of the answer")
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                assert!(
                    users.iter().all(|u| u.as_deref() == Some(ME)),
                    "{label}: rows of {users:?}"
                );
            }
            let lists_rows = matches!(route.body, Read::Feed(_))
                || matches!(
                    route.path,
                    "/api/v1/activity" | "/api/v1/tokens" | "/api/v1/export"
                );
            if lists_rows {
                assert!(own.is_subset(&seqs), "{label}: {own:?} ⊄ {seqs:?}");
            }
            if route.shows_data && route.path != "/api/v1/stats" {
                assert!(
                    answer.text.contains(ME),
                    "{label}: shows {ME}: {}",
                    answer.text
                );
            }
            // Another user, or another tenant, is refused.
            if route.takes_tenant {
                let sep = if route.uri.contains('?') { '&' } else { '?' };
                let uri = format!("{}{sep}tenant={B}", route.uri);
                let answer = send(&router, route, &uri, credential, None, None).await;
                assert_eq!(
                    answer.status,
                    StatusCode::FORBIDDEN,
                    "{uri}: {}",
                    answer.text
                );
            }
            let takes_user = matches!(
                route.path,
                "/api/v1/activity"
                    | "/api/v1/activity/stream"
                    | "/api/v1/activity/aggregates"
                    | "/api/v1/tokens"
                    | "/api/v1/tokens/stream"
                    | "/api/v1/tokens/usage"
            );
            if takes_user {
                let sep = if route.uri.contains('?') { '&' } else { '?' };
                let uri = format!("{}{sep}user={}", route.uri, others[0]);
                let answer = send(&router, route, &uri, credential, None, None).await;
                assert_eq!(
                    answer.status,
                    StatusCode::FORBIDDEN,
                    "{uri}: {}",
                    answer.text
                );
            }
        }

        // /stats counts exactly the caller's rows.
        let answer = send(
            &router,
            &ROUTES[ROUTES
                .iter()
                .position(|r| r.uri == "/api/v1/stats")
                .expect("stats")],
            "/api/v1/stats",
            credential,
            None,
            None,
        )
        .await;
        let stats: Value = serde_json::from_str(&answer.text).expect("stats JSON");
        assert_eq!(stats["activity"]["events"], own_activity.len(), "{stats}");
        assert_eq!(stats["activity"]["active_users"], 1, "{stats}");
        assert_eq!(stats["tokens"]["requests"], own_tokens.len(), "{stats}");
        // whoami names the user.
        let whoami = send(
            &router,
            &ROUTES[3],
            "/api/v1/whoami",
            credential,
            None,
            None,
        )
        .await;
        let whoami: Value = serde_json::from_str(&whoami.text).expect("whoami JSON");
        assert_eq!(whoami["user"], ME);
        assert_eq!(whoami["tenant"], A);
    }
}
