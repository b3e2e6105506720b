//! Shared test support: a fresh PostgreSQL database per test, generated activity
//! rows, tokens and HTTP helpers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use serde_json::{json, Value};
use tally_admin_api::AdminApi;
use tally_config::{AdminApiConfig, Endpoint, JwtConfig};
use tally_model::Readiness;
use tower::ServiceExt;
use uuid::Uuid;

/// A database of its own, migrated with the exporter's real migrations; dropped
/// (even when the test panics) with the inner `TestDatabase`. PostgreSQL is found
/// at `TALLY_TEST_DATABASE_URL` (default 127.0.0.1:5432), else a private server is
/// started, as for every test of the workspace.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: tokio_postgres::Client,
    _database: tally_exporters::testing::TestDatabase,
}

impl TestDb {
    pub async fn migrated() -> TestDb {
        let database = tally_exporters::testing::TestDatabase::migrated().await;
        let client = database.client().await;
        TestDb {
            name: database.name.clone(),
            url: database.url.clone(),
            client,
            _database: database,
        }
    }

    /// Creates daily partitions for `first..=last`.
    pub async fn partitions(&self, first: NaiveDate, last: NaiveDate) {
        let mut day = first;
        while day <= last {
            let next = day.succ_opt().expect("next day");
            self.client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS activity_events_p{} PARTITION OF activity_events \
                     FOR VALUES FROM ('{day}') TO ('{next}')",
                    day.format("%Y%m%d")
                ))
                .await
                .expect("create partition");
            day = next;
        }
    }

    /// Inserts events (seq from the sequence, in slice order).
    pub async fn insert(&self, events: &[Event]) {
        for chunk in events.chunks(500) {
            let ids: Vec<Uuid> = chunk.iter().map(|e| e.id).collect();
            let ts: Vec<DateTime<Utc>> = chunk.iter().map(|e| e.ts).collect();
            let received: Vec<DateTime<Utc>> = chunk.iter().map(|e| e.received_at).collect();
            let tenants: Vec<String> = chunk.iter().map(|e| e.tenant_id.clone()).collect();
            let users: Vec<Option<String>> = chunk.iter().map(|e| e.user_id.clone()).collect();
            let sessions: Vec<Option<String>> =
                chunk.iter().map(|e| e.session_id.clone()).collect();
            let actions: Vec<String> = chunk.iter().map(|e| e.action.clone()).collect();
            let outcomes: Vec<String> = chunk.iter().map(|e| e.outcome.clone()).collect();
            let rtypes: Vec<Option<String>> =
                chunk.iter().map(|e| e.resource_type.clone()).collect();
            let rids: Vec<Option<String>> = chunk.iter().map(|e| e.resource_id.clone()).collect();
            let services: Vec<Option<String>> = chunk.iter().map(|e| e.service.clone()).collect();
            let traces: Vec<Option<String>> = chunk.iter().map(|e| e.trace_id.clone()).collect();
            let spans: Vec<Option<String>> = chunk.iter().map(|e| e.span_id.clone()).collect();
            let attrs: Vec<Value> = chunk.iter().map(|e| e.attributes.clone()).collect();
            self.client
                .execute(
                    "INSERT INTO activity_events (id, seq, ts, received_at, tenant_id, user_id, \
                     session_id, action, outcome, resource_type, resource_id, service, trace_id, \
                     span_id, attributes) \
                     SELECT id, nextval('activity_events_seq'), ts, ra, t, u, s, a, o, rt, ri, sv, tr, sp, at \
                     FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::text[], \
                     $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
                     $11::text[], $12::text[], $13::text[], $14::jsonb[]) WITH ORDINALITY \
                     AS x(id, ts, ra, t, u, s, a, o, rt, ri, sv, tr, sp, at, n) ORDER BY n",
                    &[
                        &ids, &ts, &received, &tenants, &users, &sessions, &actions, &outcomes,
                        &rtypes, &rids, &services, &traces, &spans, &attrs,
                    ],
                )
                .await
                .expect("insert events");
        }
    }
}

/// One row as the tests insert it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Uuid,
    pub ts: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub tenant_id: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub action: String,
    pub outcome: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub service: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub attributes: Value,
}

/// Deterministic pseudo-random numbers (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    pub fn hex(&mut self, bytes: usize) -> String {
        (0..bytes)
            .map(|_| format!("{:02x}", self.below(256)))
            .collect()
    }
}

pub const TENANTS: &[&str] = &["acme", "globex", "initech", ""];
pub const ACTIONS: &[&str] = &[
    "auth.login",
    "auth.logout",
    "auth.mfa.verify",
    "authz.check",
    "auth",
    "doc.read",
    "doc.write",
    "a_b.read",
    "axb.read",
    "100%.done",
    "100x.done",
];
pub const OUTCOMES: &[&str] = &["success", "failure", "unknown"];

/// The first day of generated data; data spans `DAYS` days.
pub fn first_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 20).expect("date")
}
pub const DAYS: i64 = 5;

pub fn day_start(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight"))
}

/// `n` events spread over `DAYS` days from `first_day()`, several tenants, users,
/// actions and outcomes; about one in ten shares the previous event's `ts`.
pub fn generate(n: usize, seed: u64) -> Vec<Event> {
    let mut rng = Rng::new(seed);
    let start = day_start(first_day());
    let span_micros = (DAYS * 86_400 * 1_000_000) as u64;
    let mut events: Vec<Event> = Vec::with_capacity(n);
    for i in 0..n {
        let ts = match events.last() {
            Some(previous) if rng.below(10) == 0 => previous.ts,
            _ => start + Duration::microseconds(rng.below(span_micros) as i64),
        };
        let user_id = (rng.below(8) != 0).then(|| format!("u{}", rng.below(10)));
        let tenant_id = rng.pick(TENANTS).to_string();
        events.push(Event {
            id: Uuid::new_v4(),
            ts,
            received_at: ts + Duration::microseconds(rng.below(5_000_000) as i64 + 1),
            session_id: (rng.below(2) == 0).then(|| format!("s{}", rng.below(50))),
            action: rng.pick(ACTIONS).to_string(),
            outcome: rng.pick(OUTCOMES).to_string(),
            resource_type: match rng.below(3) {
                0 => None,
                1 => Some("doc".to_owned()),
                _ => Some("user".to_owned()),
            },
            resource_id: (rng.below(4) != 0).then(|| format!("r{}", rng.below(20))),
            service: Some(format!("svc-{}", rng.below(3))),
            trace_id: (rng.below(3) != 0).then(|| rng.hex(16)),
            span_id: (rng.below(3) != 0).then(|| rng.hex(8)),
            attributes: json!({ "i": i, "http.method": "GET" }),
            tenant_id,
            user_id,
        });
    }
    events
}

/// A migrated database with partitions for the generated days and `n` events.
pub async fn seeded(n: usize, seed: u64) -> (TestDb, Vec<Event>) {
    let db = TestDb::migrated().await;
    db.partitions(
        first_day(),
        first_day() + chrono::Days::new(DAYS as u64 + 1),
    )
    .await;
    let events = generate(n, seed);
    db.insert(&events).await;
    (db, events)
}

/// Ids of `events` matching `keep`, newest first (`ts DESC, id DESC`).
pub fn expected(events: &[Event], keep: impl Fn(&Event) -> bool) -> Vec<Uuid> {
    let mut matching: Vec<&Event> = events.iter().filter(|e| keep(e)).collect();
    matching.sort_by_key(|e| std::cmp::Reverse((e.ts, e.id)));
    matching.iter().map(|e| e.id).collect()
}

pub const SECRET: &str = "test-secret-test-secret-test-secret!";

pub fn config() -> AdminApiConfig {
    AdminApiConfig {
        endpoint: Endpoint::localhost(0),
        ..AdminApiConfig::default()
    }
}

pub fn config_with_jwt() -> AdminApiConfig {
    let mut config = config();
    config.auth.jwt = Some(JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        ..JwtConfig::default()
    });
    config
}

pub fn ready() -> Arc<Readiness> {
    let readiness = Arc::new(Readiness::new());
    readiness.set_database_up(true);
    readiness
}

pub async fn api(config: &AdminApiConfig, url: &str) -> AdminApi {
    AdminApi::bind(config, url, ready()).await.expect("bind")
}

pub fn now_secs() -> i64 {
    Utc::now().timestamp()
}

/// Signs `claims` with HS256 and `secret`.
pub fn token_with(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("non-empty HS256 secret"),
    )
    .expect("encode token")
}

/// A valid token for an hour with `scope` and `tenant`.
pub fn token(scope: &str, tenant: Option<&str>) -> String {
    let mut claims = json!({ "sub": "tester", "exp": now_secs() + 3600, "scope": scope });
    if let Some(tenant) = tenant {
        claims["tenant"] = json!(tenant);
    }
    token_with(SECRET, &claims)
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// Calls `router` once.
pub async fn call(router: &Router, method: &str, uri: &str, token: Option<&str>) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{uri}: body is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(router: &Router, uri: &str, token: Option<&str>) -> Reply {
    call(router, "GET", uri, token).await
}

/// Asserts the error shape and returns `(code, message)`.
pub fn error_of(reply: &Reply) -> (String, String) {
    let object = reply.body.as_object().expect("error body is an object");
    assert_eq!(object.len(), 1, "only `error` at top level: {}", reply.body);
    let error = object["error"].as_object().expect("error object");
    let keys: BTreeSet<&str> = error.keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["code", "message"]), "{}", reply.body);
    (
        error["code"].as_str().expect("code").to_owned(),
        error["message"].as_str().expect("message").to_owned(),
    )
}

/// Ids of an `items` array.
pub fn ids(body: &Value) -> Vec<Uuid> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["id"].as_str().expect("id").parse().expect("uuid"))
        .collect()
}

/// Follows `next_cursor` from `first_uri` (which must already have a `?`) to the end.
pub async fn all_pages(router: &Router, first_uri: &str, token: Option<&str>) -> Vec<Uuid> {
    let mut out = Vec::new();
    let mut uri = first_uri.to_owned();
    for _ in 0..10_000 {
        let reply = get(router, &uri, token).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.body);
        out.extend(ids(&reply.body));
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => uri = format!("{first_uri}&cursor={cursor}"),
            None => return out,
        }
    }
    panic!("too many pages");
}

/// Percent-encodes a query value (RFC 3986 unreserved kept).
pub fn enc(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
