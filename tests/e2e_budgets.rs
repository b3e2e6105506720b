//! Budgets end to end: two Tally processes on one database; LLM calls cross a
//! budget's thresholds; each threshold is one activity row (through the normal
//! writer) across both instances and a restart; `/budgets` and `/budgets/check`
//! answer per tenant and user and respect the caller's tenant.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    eventually, export_spans as export, get_json, token, Tally, TallyOptions, TestDatabase,
};
use serde_json::Value;
use tally_model::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tally_model::otlp::trace::v1::Span;

const SECRET: &str = "budget-test-secret-0123456789";

const BUDGETS: &str = "[\
    { name: acme-day, tenant: acme, period: day, limit_tokens: 1000 }, \
    { name: acme-bob, tenant: acme, user: bob, period: month, limit_tokens: 400, thresholds: [1.0] }, \
    { name: everyone, period: week, limit_tokens: 100000 }]";

fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn chat(n: u64, tenant: &str, user: &str, tokens: u64) -> Span {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut trace_id = vec![0xb0; 16];
    trace_id[8..].copy_from_slice(&n.to_be_bytes());
    Span {
        trace_id,
        span_id: (n + 1).to_be_bytes().to_vec(),
        name: "chat".into(),
        start_time_unix_nano: now,
        end_time_unix_nano: now,
        attributes: vec![
            attr("gen_ai.operation.name", "chat"),
            attr("gen_ai.provider.name", "openai"),
            attr("gen_ai.request.model", "gpt-4o-mini"),
            attr("gen_ai.usage.input_tokens", &tokens.to_string()),
            attr("gen_ai.usage.output_tokens", "0"),
            attr("tenant.id", tenant),
            attr("enduser.id", user),
        ],
        ..Default::default()
    }
}

fn options(database: &TestDatabase) -> TallyOptions {
    TallyOptions {
        database_url: Some(database.url.clone()),
        jwt_secret: Some(SECRET.into()),
        budgets: Some(BUDGETS.into()),
        ..Default::default()
    }
}

/// `(action, budget name, threshold) → rows` of the budget events in `activity_events`.
async fn budget_events(database: &TestDatabase) -> BTreeMap<(String, String, String), i64> {
    let client = database.client().await;
    let rows = client
        .query(
            "SELECT action, attributes->>'budget.name', attributes->>'budget.threshold', \
                    count(*), bool_and(tenant_id = 'acme' OR attributes->>'budget.name' = 'everyone'), \
                    bool_and(taxonomy_valid IS NOT FALSE) \
             FROM activity_events \
             WHERE action IN ('token.budget.threshold', 'token.quota.exceed') \
             GROUP BY 1, 2, 3",
            &[],
        )
        .await
        .expect("query");
    rows.iter()
        .map(|row| {
            assert!(row.get::<_, bool>(4), "the budget's tenant is the event's");
            assert!(
                row.get::<_, bool>(5),
                "the built-in taxonomy declares the action"
            );
            ((row.get(0), row.get(1), row.get(2)), row.get::<_, i64>(3))
        })
        .collect()
}

fn key(action: &str, budget: &str, threshold: &str) -> (String, String, String) {
    (action.into(), budget.into(), threshold.into())
}

async fn budgets(tally: &Tally, bearer: &str) -> Value {
    let (status, body) = get_json(&tally.api_url("/api/v1/budgets"), Some(bearer)).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn check(tally: &Tally, query: &str, bearer: &str) -> (u16, Vec<(String, bool)>, Value) {
    let (status, body) = get_json(
        &tally.api_url(&format!("/api/v1/budgets/check?{query}")),
        Some(bearer),
    )
    .await;
    let names = body["budgets"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|b| {
                    (
                        b["name"].as_str().unwrap_or_default().to_owned(),
                        b["exceeded"].as_bool().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (status, names, body)
}

fn crossed(body: &Value, name: &str) -> Vec<f64> {
    body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|b| b["name"] == name))
        .and_then(|b| b["thresholds_crossed"].as_array())
        .map(|t| t.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_fire_once_across_two_instances_and_a_restart() {
    let database = TestDatabase::create().await;
    let mut first = Tally::launch(options(&database)).await;
    let second = Tally::launch(options(&database)).await;
    let admin = token(SECRET, "tokens:read activity:read", "*");

    // 600 of acme-day's 1000 tokens (alice), through the first instance.
    export(&first, vec![chat(1, "acme", "alice", 600)]).await;
    let half = key("token.budget.threshold", "acme-day", "0.5");
    eventually(Duration::from_secs(15), "the 0.5 event", || async {
        budget_events(&database)
            .await
            .contains_key(&half)
            .then_some(())
    })
    .await;
    // 500 more by bob, through the second: 0.8 and 1.0 of acme-day, and bob's quota.
    export(&second, vec![chat(2, "acme", "bob", 500)]).await;
    let expected = BTreeMap::from([
        (half.clone(), 1),
        (key("token.budget.threshold", "acme-day", "0.8"), 1),
        (key("token.quota.exceed", "acme-day", "1.0"), 1),
        (key("token.quota.exceed", "acme-bob", "1.0"), 1),
    ]);
    eventually(Duration::from_secs(15), "every event", || async {
        (budget_events(&database).await.len() == expected.len()).then_some(())
    })
    .await;
    // Both instances agree on what was crossed, from their own refresh.
    for tally in [&first, &second] {
        let expected_crossed = vec![0.5, 0.8, 1.0];
        eventually(Duration::from_secs(10), "both books updated", || async {
            let body = budgets(tally, &admin).await;
            (crossed(&body, "acme-day") == expected_crossed).then_some(())
        })
        .await;
    }
    let body = budgets(&second, &admin).await;
    let acme = body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|b| b["name"] == "acme-day"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(acme["used"], 1100.0, "{acme}");
    assert_eq!(acme["exceeded"], true);
    assert_eq!(acme["unit"], "tokens");
    assert_eq!(crossed(&body, "acme-bob"), vec![1.0]);
    assert!(crossed(&body, "everyone").is_empty());

    // A restart of the first instance: nothing is announced again.
    first.terminate();
    let launched = chrono::Utc::now();
    let restarted = Tally::launch(options(&database)).await;
    // The first refresh ran before the API started: no "not computed yet" answer.
    let (status, body) = get_json(&restarted.api_url("/api/v1/budgets"), Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(crossed(&body, "acme-day"), vec![0.5, 0.8, 1.0], "{body}");
    assert!(
        body["as_of"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|as_of| as_of > launched),
        "{body}"
    );
    let started = chrono::Utc::now();
    eventually(
        Duration::from_secs(10),
        "a refresh after the restart",
        || async {
            // 503 until the restarted instance's first refresh.
            let (status, body) =
                get_json(&restarted.api_url("/api/v1/budgets"), Some(&admin)).await;
            if status == 503 {
                return None;
            }
            assert_eq!(status, 200, "{body}");
            let as_of = body["as_of"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())?;
            (as_of > started && crossed(&body, "acme-day").len() == 3).then_some(())
        },
    )
    .await;
    // Two more refreshes of every instance have passed once `as_of` moves twice.
    for _ in 0..2 {
        let before = budgets(&restarted, &admin).await["as_of"].clone();
        eventually(Duration::from_secs(10), "another refresh", || async {
            (budgets(&restarted, &admin).await["as_of"] != before).then_some(())
        })
        .await;
    }
    assert_eq!(budget_events(&database).await, expected);

    // The events are ordinary activity rows: the admin API lists them with their attributes.
    let (status, page) = get_json(
        &restarted.api_url("/api/v1/activity?action=token.quota.exceed&tenant=acme"),
        Some(&admin),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 2, "{page}");
    let bob = items
        .iter()
        .find(|item| item["attributes"]["budget.name"] == "acme-bob")
        .unwrap_or_else(|| panic!("{page}"));
    assert_eq!(bob["user_id"], "bob");
    assert_eq!(bob["attributes"]["budget.unit"], "tokens");
    assert_eq!(bob["attributes"]["token.quota.period"], "month");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_answers_per_tenant_and_user_within_the_callers_tenant() {
    let database = TestDatabase::create().await;
    let tally = Tally::launch(options(&database)).await;
    let admin = token(SECRET, "tokens:read", "*");
    let acme = token(SECRET, "tokens:read", "acme");
    let no_scope = token(SECRET, "activity:read", "*");
    // bob: 500 of his 400 (exceeded); acme: 500 of 1000.
    export(&tally, vec![chat(10, "acme", "bob", 500)]).await;
    eventually(Duration::from_secs(10), "bob's budget exceeded", || async {
        let (_, names, _) = check(&tally, "tenant=acme&user=bob", &admin).await;
        names.contains(&("acme-bob".to_owned(), true)).then_some(())
    })
    .await;
    let sorted = |mut v: Vec<(String, bool)>| {
        v.sort();
        v
    };
    let (status, names, body) = check(&tally, "tenant=acme&user=bob", &admin).await;
    assert_eq!(status, 200);
    assert_eq!(
        sorted(names),
        vec![
            ("acme-bob".to_owned(), true),
            ("acme-day".to_owned(), false),
            ("everyone".to_owned(), false),
        ]
    );
    assert_eq!(body["exceeded"], true);
    let ratio = |body: &Value, name: &str| {
        body["budgets"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["name"] == name))
            .and_then(|b| b["used_ratio"].as_f64())
    };
    assert_eq!(ratio(&body, "acme-bob"), Some(1.25));
    assert_eq!(ratio(&body, "acme-day"), Some(0.5));
    assert_eq!(ratio(&body, "everyone"), Some(0.005));
    // Another user of acme: bob's budget does not apply.
    let (_, names, body) = check(&tally, "tenant=acme&user=alice", &admin).await;
    assert_eq!(
        sorted(names),
        vec![
            ("acme-day".to_owned(), false),
            ("everyone".to_owned(), false)
        ]
    );
    assert_eq!(body["exceeded"], false);
    // Another tenant, or none: only the budget of every tenant.
    let (_, names, _) = check(&tally, "tenant=globex&user=bob", &admin).await;
    assert_eq!(names, vec![("everyone".to_owned(), false)]);
    let (_, names, _) = check(&tally, "", &admin).await;
    assert_eq!(names, vec![("everyone".to_owned(), false)]);

    // A caller bound to acme: its tenant by default, never the all-tenant budget,
    // never another tenant.
    let (status, names, _) = check(&tally, "user=bob", &acme).await;
    assert_eq!(status, 200);
    assert_eq!(
        sorted(names),
        vec![
            ("acme-bob".to_owned(), true),
            ("acme-day".to_owned(), false)
        ]
    );
    let (status, _, body) = check(&tally, "tenant=globex", &acme).await;
    assert_eq!(status, 403, "{body}");
    let listed: Vec<String> = budgets(&tally, &acme).await["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|b| b["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(!listed.contains(&"everyone".to_owned()));
    // A caller for every tenant narrows the list with `tenant`.
    let (status, body) =
        get_json(&tally.api_url("/api/v1/budgets?tenant=acme"), Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    let mut names: Vec<&str> = body["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|b| b["name"].as_str()).collect())
        .unwrap_or_default();
    names.sort_unstable();
    assert_eq!(names, ["acme-bob", "acme-day"]);
    let (_, body) = get_json(&tally.api_url("/api/v1/budgets"), Some(&admin)).await;
    assert_eq!(body["items"].as_array().map(Vec::len), Some(3), "{body}");
    // Scope and parameters are checked.
    let (status, _, _) = check(&tally, "tenant=acme", &no_scope).await;
    assert_eq!(status, 403);
    let (status, _, body) = check(&tally, "tenant=acme&colour=red", &admin).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = get_json(&tally.api_url("/api/v1/budgets/check?tenant=acme"), None).await;
    assert_eq!(status, 401);
    // The gauge.
    let text = reqwest::get(tally.metrics_url())
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    assert!(
        text.contains("tally_budget_used_ratio{budget=\"acme-bob\"} 1.25"),
        "{text}"
    );
}
