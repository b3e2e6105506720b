//! `GET /api/v1/activity` against a real PostgreSQL.

mod common;

use std::collections::{BTreeSet, HashSet};

use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use common::*;
use serde_json::json;
use uuid::Uuid;

type Keep = Box<dyn Fn(&Event) -> bool>;

fn rfc(ts: DateTime<Utc>) -> String {
    enc(&ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

#[tokio::test]
async fn filters_alone_and_combined_match_an_independent_computation() {
    let (db, events) = seeded(1_200, 1).await;
    let router = api(&config(), &db.url).await.router();

    let trace = events
        .iter()
        .find_map(|e| e.trace_id.clone())
        .expect("some trace id");
    let day2 = day_start(first_day()) + Duration::days(1);
    let day4 = day_start(first_day()) + Duration::days(3) + Duration::microseconds(123_457);
    // A timestamp that exists exactly: `from` includes it, `to` excludes it.
    let exact = events[600].ts;

    let cases: Vec<(String, Keep)> = vec![
        ("tenant=acme".into(), Box::new(|e| e.tenant_id == "acme")),
        ("user=u3".into(), Box::new(|e| e.user_id.as_deref() == Some("u3"))),
        ("action=auth.login".into(), Box::new(|e| e.action == "auth.login")),
        ("action=auth.*".into(), Box::new(|e| e.action.starts_with("auth."))),
        ("action=auth.mfa.*".into(), Box::new(|e| e.action.starts_with("auth.mfa."))),
        // LIKE metacharacters in the prefix are literal.
        ("action=a_b.*".into(), Box::new(|e| e.action == "a_b.read")),
        (format!("action={}", enc("100%.*")), Box::new(|e| e.action == "100%.done")),
        ("action=*".into(), Box::new(|_| true)),
        ("outcome=failure".into(), Box::new(|e| e.outcome == "failure")),
        ("outcome=unknown".into(), Box::new(|e| e.outcome == "unknown")),
        ("resource_type=doc".into(), Box::new(|e| e.resource_type.as_deref() == Some("doc"))),
        ("resource_id=r7".into(), Box::new(|e| e.resource_id.as_deref() == Some("r7"))),
        ({
            let t = trace.clone();
            (format!("trace_id={}", t.to_uppercase()), Box::new(move |e: &Event| e.trace_id.as_deref() == Some(t.as_str())) as Keep)
        }),
        (format!("from={}", rfc(day2)), Box::new(move |e| e.ts >= day2)),
        (format!("to={}", rfc(day4)), Box::new(move |e| e.ts < day4)),
        (format!("from={}", rfc(exact)), Box::new(move |e| e.ts >= exact)),
        (format!("to={}", rfc(exact)), Box::new(move |e| e.ts < exact)),
        (
            format!("from={}&to={}", rfc(day2), rfc(day4)),
            Box::new(move |e| e.ts >= day2 && e.ts < day4),
        ),
        (
            // Same instant written with an offset.
            format!("from={}", enc("2026-11-21T01:00:00+01:00")),
            Box::new(move |e| e.ts >= day2),
        ),
        (
            "tenant=globex&action=auth.*&outcome=success".into(),
            Box::new(|e| e.tenant_id == "globex" && e.action.starts_with("auth.") && e.outcome == "success"),
        ),
        (
            format!("user=u1&resource_type=user&from={}&to={}", rfc(day2), rfc(day4)),
            Box::new(move |e| {
                e.user_id.as_deref() == Some("u1")
                    && e.resource_type.as_deref() == Some("user")
                    && e.ts >= day2
                    && e.ts < day4
            }),
        ),
        (
            "tenant=initech&user=u2&action=doc.read&outcome=failure&resource_type=doc&resource_id=r3".into(),
            Box::new(|e| {
                e.tenant_id == "initech"
                    && e.user_id.as_deref() == Some("u2")
                    && e.action == "doc.read"
                    && e.outcome == "failure"
                    && e.resource_type.as_deref() == Some("doc")
                    && e.resource_id.as_deref() == Some("r3")
            }),
        ),
        ("tenant=nobody".into(), Box::new(|_| false)),
        // Values are bound, never spliced into SQL.
        (
            format!("tenant={}", enc("acme' OR '1'='1")),
            Box::new(|_| false),
        ),
    ];

    for (query, keep) in &cases {
        let want = expected(&events, keep);
        let got = all_pages(
            &router,
            &format!("/api/v1/activity?limit=1000&{query}"),
            None,
        )
        .await;
        assert_eq!(got.len(), want.len(), "{query}: count");
        assert_eq!(got, want, "{query}: order and content");
        // The same through small pages.
        if want.len() < 400 {
            let paged =
                all_pages(&router, &format!("/api/v1/activity?limit=37&{query}"), None).await;
            assert_eq!(paged, want, "{query}: paged by 37");
        }
    }
    // The independent computation is not trivially empty/full for the key cases.
    assert!(expected(&events, |e| e.action.starts_with("auth.")).len() > 100);
    assert!(expected(&events, |e| e.action == "axb.read").len() > 10);

    // The result also agrees with SQL written independently.
    let rows = db
        .client
        .query(
            "SELECT id FROM activity_events WHERE tenant_id = 'acme' AND action LIKE 'auth.%' \
             AND outcome = 'failure' ORDER BY ts DESC, id DESC",
            &[],
        )
        .await
        .expect("query");
    let sql_ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let got = all_pages(
        &router,
        "/api/v1/activity?limit=1000&tenant=acme&action=auth.*&outcome=failure",
        None,
    )
    .await;
    assert_eq!(got, sql_ids);
}

#[tokio::test]
async fn items_have_the_column_names_and_formats() {
    let db = TestDb::migrated().await;
    db.partitions(first_day(), first_day()).await;
    let ts: DateTime<Utc> = "2026-11-20T19:25:50.123456Z".parse().unwrap();
    let full = Event {
        id: Uuid::new_v4(),
        ts,
        received_at: "2026-11-20T19:25:51Z".parse().unwrap(),
        tenant_id: "acme".into(),
        user_id: Some("alice".into()),
        session_id: Some("sess-1".into()),
        action: "auth.login".into(),
        outcome: "success".into(),
        resource_type: Some("account".into()),
        resource_id: Some("42".into()),
        service: Some("web".into()),
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
        span_id: Some("b7ad6b7169203331".into()),
        attributes: json!({ "http.method": "POST", "nested": { "n": 1 } }),
    };
    let bare = Event {
        id: Uuid::new_v4(),
        ts: ts - Duration::seconds(1),
        received_at: ts,
        tenant_id: String::new(),
        user_id: None,
        session_id: None,
        action: "doc.read".into(),
        outcome: "unknown".into(),
        resource_type: None,
        resource_id: None,
        service: None,
        trace_id: None,
        span_id: None,
        attributes: json!({}),
    };
    db.insert(&[full.clone(), bare.clone()]).await;
    db.client
        .execute(
            "UPDATE activity_events SET duration_ms = 182.406, name = 'POST /login', \
             error_type = 'invalid_password', error_message = 'wrong password' WHERE id = $1",
            &[&full.id],
        )
        .await
        .unwrap();
    let router = api(&config(), &db.url).await.router();

    let reply = get(&router, "/api/v1/activity", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers["content-type"].to_str().unwrap(),
        "application/json"
    );
    let top: BTreeSet<&str> = reply
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(top, BTreeSet::from(["items", "next_cursor"]));
    assert_eq!(reply.body["next_cursor"], json!(null));
    let items = reply.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let seq: i64 = db
        .client
        .query_one("SELECT seq FROM activity_events WHERE id = $1", &[&full.id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        items[0],
        json!({
            "id": full.id.to_string(),
            "seq": seq,
            "ts": "2026-11-20T19:25:50.123456Z",
            "received_at": "2026-11-20T19:25:51.000000Z",
            "tenant_id": "acme",
            "user_id": "alice",
            "session_id": "sess-1",
            "action": "auth.login",
            "outcome": "success",
            "resource_type": "account",
            "resource_id": "42",
            "service": "web",
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "span_id": "b7ad6b7169203331",
            "attributes": { "http.method": "POST", "nested": { "n": 1 } },
            "duration_ms": 182.406,
            "name": "POST /login",
            "error_type": "invalid_password",
            "error_message": "wrong password"
        })
    );
    let bare_item = &items[1];
    assert_eq!(bare_item["id"], json!(bare.id.to_string()));
    assert_eq!(bare_item["ts"], json!("2026-11-20T19:25:49.123456Z"));
    for key in [
        "tenant_id",
        "user_id",
        "session_id",
        "resource_type",
        "resource_id",
        "service",
        "trace_id",
        "span_id",
        "duration_ms",
        "name",
        "error_type",
        "error_message",
    ] {
        assert_eq!(bare_item[key], json!(null), "{key}");
    }
    assert_eq!(bare_item["attributes"], json!({}));
}

#[tokio::test]
async fn paging_returns_each_row_once_while_newer_rows_arrive() {
    let (db, events) = seeded(1_000, 2).await;
    let router = api(&config(), &db.url).await.router();
    let want = expected(&events, |_| true);
    assert_eq!(want.len(), 1_000);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    let mut newer = Vec::new();
    loop {
        let uri = match &cursor {
            Some(c) => format!("/api/v1/activity?limit=50&cursor={c}"),
            None => "/api/v1/activity?limit=50".to_owned(),
        };
        let reply = get(&router, &uri, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let page = ids(&reply.body);
        assert!(page.len() <= 50);
        seen.extend(page);
        pages += 1;
        // Rows newer than everything (and one at the newest existing ts) land between pages.
        let mut batch = generate(3, 1_000 + pages);
        for (k, e) in batch.iter_mut().enumerate() {
            e.ts = day_start(first_day())
                + Duration::days(DAYS)
                + Duration::minutes(pages as i64)
                + Duration::microseconds(k as i64);
        }
        db.insert(&batch).await;
        newer.extend(batch.iter().map(|e| e.id));
        match reply.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 100, "runaway paging");
    }
    assert_eq!(pages, 20);
    assert_eq!(seen, want, "each row exactly once, newest first");
    let unique: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(unique.len(), 1_000);

    // A fresh first page now starts with the newest inserted row.
    let reply = get(&router, "/api/v1/activity?limit=1", None).await;
    assert_eq!(ids(&reply.body), vec![*newer.last().unwrap()]);
}

#[tokio::test]
async fn ties_on_ts_are_ordered_by_id_and_not_lost_between_pages() {
    let db = TestDb::migrated().await;
    db.partitions(first_day(), first_day()).await;
    let ts = day_start(first_day()) + Duration::hours(5);
    let mut events = generate(30, 9);
    for e in &mut events {
        e.ts = ts;
    }
    db.insert(&events).await;
    let router = api(&config(), &db.url).await.router();
    let got = all_pages(&router, "/api/v1/activity?limit=4", None).await;
    let mut want: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    want.sort_by(|a, b| b.cmp(a));
    assert_eq!(got, want);
}

#[tokio::test]
async fn limit_bounds() {
    let (db, _events) = seeded(1_200, 3).await;
    let router = api(&config(), &db.url).await.router();

    let reply = get(&router, "/api/v1/activity", None).await;
    assert_eq!(ids(&reply.body).len(), 50, "default page size");
    assert!(reply.body["next_cursor"].is_string());

    let reply = get(&router, "/api/v1/activity?limit=1", None).await;
    assert_eq!(ids(&reply.body).len(), 1);

    let reply = get(&router, "/api/v1/activity?limit=1000", None).await;
    assert_eq!(ids(&reply.body).len(), 1000);
    assert!(reply.body["next_cursor"].is_string());

    for bad in ["0", "1001", "-1", "ten", "1.5", "99999999999"] {
        let reply = get(&router, &format!("/api/v1/activity?limit={bad}"), None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "limit={bad}");
        let (code, message) = error_of(&reply);
        assert_eq!(code, "invalid_parameter");
        assert!(message.starts_with("limit:"), "{message}");
        assert!(message.contains("1000"), "{message}");
    }

    // Configured sizes are honoured.
    let mut small = config();
    small.default_page_size = 7;
    small.max_page_size = 10;
    let router = api(&small, &db.url).await.router();
    assert_eq!(
        ids(&get(&router, "/api/v1/activity", None).await.body).len(),
        7
    );
    assert_eq!(
        ids(&get(&router, "/api/v1/activity?limit=10", None).await.body).len(),
        10
    );
    assert_eq!(
        get(&router, "/api/v1/activity?limit=11", None).await.status,
        StatusCode::BAD_REQUEST
    );

    // Exactly `limit` rows left: the last page says so (no empty extra page).
    let all = all_pages(&router, "/api/v1/activity?limit=10", None).await;
    assert_eq!(all.len(), 1_200);
}

#[tokio::test]
async fn bad_values_are_400_naming_the_parameter() {
    let db = TestDb::migrated().await;
    let router = api(&config(), &db.url).await.router();
    let cases = [
        ("outcome=ok", "outcome"),
        ("outcome=SUCCESS", "outcome"),
        ("trace_id=abc", "trace_id"),
        ("trace_id=0af7651916cd43dd8448eb211c80319z", "trace_id"),
        ("trace_id=0af7651916cd43dd8448eb211c80319c0", "trace_id"),
        ("from=yesterday", "from"),
        ("from=2026-11-20", "from"),
        ("to=2026-11-20T25:00:00Z", "to"),
        ("to=1700000000", "to"),
        ("from=2026-11-21T00:00:00Z&to=2026-11-20T00:00:00Z", "from"),
        ("action=auth*", "action"),
        ("action=.*", "action"),
        ("tenant=", "tenant"),
        ("user=", "user"),
        ("resource_type=", "resource_type"),
        ("resource_id=", "resource_id"),
        ("user=a&user=b", "user"),
        ("limit=", "limit"),
        ("usr=alice", "usr"),
        ("tenant=acme&bogus=1", "bogus"),
    ];
    for (query, parameter) in cases {
        let reply = get(&router, &format!("/api/v1/activity?{query}"), None).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            reply.body
        );
        let (code, message) = error_of(&reply);
        assert_eq!(code, "invalid_parameter", "{query}");
        assert!(
            message.starts_with(&format!("{parameter}:")),
            "{query}: {message}"
        );
    }
    let reply = get(&router, "/api/v1/activity?from=yesterday", None).await;
    assert_eq!(
        error_of(&reply).1,
        "from: not an RFC 3339 timestamp (e.g. 2026-11-23T19:25:50Z)"
    );
    let reply = get(&router, "/api/v1/activity?usr=alice&tenat=x", None).await;
    let message = error_of(&reply).1;
    assert!(message.contains("unknown query parameter"), "{message}");
    assert!(message.contains("tenat"), "{message}");

    let good = tally_admin_api::cursor::Cursor {
        ts: Utc::now(),
        id: Uuid::new_v4(),
    }
    .encode();
    let mut flipped = good.clone().into_bytes();
    flipped[0] = if flipped[0] == b'B' { b'C' } else { b'B' };
    for cursor in [
        "garbage".to_owned(),
        "%%%".to_owned(),
        format!("{good}x"),
        good[..20].to_owned(),
        String::from_utf8(flipped).unwrap(),
    ] {
        let reply = get(&router, &format!("/api/v1/activity?cursor={cursor}"), None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{cursor}");
        let (code, message) = error_of(&reply);
        assert_eq!(code, "invalid_cursor", "{cursor}");
        assert!(message.starts_with("cursor:"), "{message}");
    }
    // A well-formed cursor works (nothing older than now in an empty table).
    let reply = get(&router, &format!("/api/v1/activity?cursor={good}"), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_error_shape() {
    let db = TestDb::migrated().await;
    let router = api(&config(), &db.url).await.router();

    let reply = get(&router, "/api/v1/nothing-here", None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&reply).0, "not_found");

    let reply = get(&router, "/api/v2/activity", None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&reply).0, "not_found");

    let reply = call(&router, "POST", "/api/v1/activity", None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_of(&reply).0, "method_not_allowed");
}

#[tokio::test]
async fn database_failures_are_503_or_500_without_sql() {
    // Nothing listens on port 1: the pool cannot connect.
    let router = api(&config(), "postgres://postgres@127.0.0.1:1/nowhere")
        .await
        .router();
    let reply = get(&router, "/api/v1/activity", None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&reply).0, "unavailable");

    // A database without the schema: an internal error that does not leak SQL.
    let db = TestDb::migrated().await;
    db.client
        .batch_execute("DROP TABLE activity_events")
        .await
        .unwrap();
    let router = api(&config(), &db.url).await.router();
    let reply = get(&router, "/api/v1/activity?tenant=acme", None).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    let (code, message) = error_of(&reply);
    assert_eq!(code, "internal");
    assert!(!message.contains("activity_events"), "{message}");
    assert!(!message.to_lowercase().contains("select"), "{message}");
}

#[tokio::test]
async fn name_and_min_duration_filters_match_an_independent_computation() {
    let (db, events) = seeded(300, 7).await;
    // Details on two thirds of the rows: a name from a few, a duration 0..=999 ms.
    let names = ["GET /", "POST /login", "GET /docs/{id}"];
    let mut details: std::collections::HashMap<Uuid, (Option<&str>, Option<f64>)> =
        Default::default();
    for (i, event) in events.iter().enumerate() {
        if i % 3 == 2 {
            continue;
        }
        let name = (i % 5 != 0).then_some(names[i % names.len()]);
        let duration = (i % 4 != 0).then_some((i * 37 % 1000) as f64 + 0.5);
        db.client
            .execute(
                "UPDATE activity_events SET name = $2, duration_ms = $3 WHERE id = $1",
                &[&event.id, &name, &duration],
            )
            .await
            .unwrap();
        details.insert(event.id, (name, duration));
    }
    let router = api(&config(), &db.url).await.router();
    let detail = |e: &Event| details.get(&e.id).copied().unwrap_or((None, None));

    for (query, keep) in [
        (
            format!("name={}", enc("POST /login")),
            Box::new(|e: &Event| detail(e).0 == Some("POST /login"))
                as Box<dyn Fn(&Event) -> bool + '_>,
        ),
        (
            "min_duration_ms=500".to_owned(),
            Box::new(|e: &Event| detail(e).1.is_some_and(|d| d >= 500.0)),
        ),
        (
            "min_duration_ms=0".to_owned(),
            Box::new(|e: &Event| detail(e).1.is_some()),
        ),
        (
            format!("name={}&min_duration_ms=250.5&tenant=acme", enc("GET /")),
            Box::new(|e: &Event| {
                e.tenant_id == "acme"
                    && detail(e).0 == Some("GET /")
                    && detail(e).1.is_some_and(|d| d >= 250.5)
            }),
        ),
    ] {
        let want = expected(&events, keep);
        assert!(!want.is_empty(), "{query}: the data has matches");
        let got = all_pages(&router, &format!("/api/v1/activity?{query}&limit=37"), None).await;
        assert_eq!(got, want, "{query}");
    }

    for bad in [
        "min_duration_ms=-1",
        "min_duration_ms=x",
        "min_duration_ms=NaN",
        "min_duration_ms=inf",
        "min_duration_ms=1e13",
        "name=",
        "name=a&name=b",
    ] {
        let reply = get(&router, &format!("/api/v1/activity?{bad}"), None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_of(&reply).0, "invalid_parameter", "{bad}");
        let parameter = bad.split('=').next().unwrap_or_default();
        assert!(
            error_of(&reply).1.contains(parameter),
            "{bad}: {}",
            reply.body
        );
    }
}
