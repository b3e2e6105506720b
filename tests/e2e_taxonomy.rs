//! The taxonomy in the pipeline: in strict mode unknown and invalid events go to
//! `rejected_events` and the OTLP response's `partial_success` counts exactly
//! them; in lenient mode (the default) they are stored flagged; malformed action
//! names are quarantined in every mode; retries are stored once.

mod common;

use std::collections::BTreeMap;

use common::{Tally, TallyOptions, TestDatabase};
use prost::Message;
use tally_model::otlp::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tally_model::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tally_model::otlp::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};

fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// (action, extra attributes) → one successful span each, numbered from `base`.
fn request(base: u64, spans: &[(&str, Vec<KeyValue>)]) -> ExportTraceServiceRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let spans = spans
        .iter()
        .enumerate()
        .map(|(i, (action, extra))| {
            let n = base + i as u64 + 1;
            let mut attributes = vec![
                attr("activity.action", action),
                attr("enduser.id", "taxonomy-user"),
                attr("tenant.id", "taxonomy"),
            ];
            attributes.extend(extra.iter().cloned());
            Span {
                trace_id: [[0x7e; 8], n.to_be_bytes()].concat(),
                span_id: n.to_be_bytes().to_vec(),
                name: "op".into(),
                start_time_unix_nano: now,
                end_time_unix_nano: now,
                attributes,
                status: Some(Status {
                    code: status::StatusCode::Ok as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn export(tally: &Tally, request: &ExportTraceServiceRequest) -> ExportTraceServiceResponse {
    let response = reqwest::Client::new()
        .post(tally.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .expect("export");
    assert_eq!(response.status().as_u16(), 200);
    let body = response.bytes().await.expect("body");
    ExportTraceServiceResponse::decode(body).expect("export response")
}

/// The mix: 2 valid, 3 unknown, 1 with an attribute outside its enum, 1 malformed name.
fn mix() -> Vec<(&'static str, Vec<KeyValue>)> {
    vec![
        ("auth.login.success", vec![attr("auth.method", "password")]),
        ("auth.logout.success", vec![]),
        ("warehouse.pallet.moved", vec![]),
        ("warehouse.pallet.lost", vec![]),
        ("garden.gnome.stolen", vec![]),
        (
            "auth.login.success",
            vec![attr("auth.method", "carrier-pigeon")],
        ),
        ("Not A Valid Action", vec![]),
    ]
}

async fn rejected_by_reason(db: &tokio_postgres::Client) -> BTreeMap<String, i64> {
    db.query(
        "SELECT reason, count(*) FROM rejected_events GROUP BY reason",
        &[],
    )
    .await
    .expect("rejected")
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_quarantines_and_partial_success_counts_exactly() {
    let database = TestDatabase::create().await;
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        validate_mode: Some("strict"),
        ..Default::default()
    })
    .await;
    let request = request(0, &mix());
    for attempt in 0..2 {
        let response = export(&tally, &request).await;
        let partial = response.partial_success.expect("partial_success is set");
        assert_eq!(partial.rejected_spans, 5, "attempt {attempt}");
        assert!(
            partial.error_message.contains("unknown_action"),
            "{}",
            partial.error_message
        );
    }
    let db = database.client().await;
    let stored: Vec<(String, Option<bool>)> = db
        .query(
            "SELECT action, taxonomy_valid FROM activity_events \
             WHERE action <> 'audit.log.view' ORDER BY action",
            &[],
        )
        .await
        .expect("stored")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        stored,
        vec![
            ("auth.login.success".to_string(), Some(true)),
            ("auth.logout.success".to_string(), Some(true)),
        ]
    );
    let rejected = rejected_by_reason(&db).await;
    let expected: BTreeMap<String, i64> = [
        ("unknown_action".to_string(), 3),
        ("not_in_enum".to_string(), 1),
        ("malformed_action".to_string(), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(rejected, expected, "the resend quarantined nothing twice");
    // The quarantined record is the (redacted) event with its reason.
    let record: serde_json::Value = db
        .query_one(
            "SELECT record FROM rejected_events WHERE reason = 'not_in_enum'",
            &[],
        )
        .await
        .expect("record")
        .get(0);
    assert_eq!(record["event"]["action"], "auth.login.success");
    assert_eq!(record["reason"]["code"], "not_in_enum");
    let tenant: String = db
        .query_one("SELECT DISTINCT tenant_id FROM rejected_events", &[])
        .await
        .expect("tenant")
        .get(0);
    assert_eq!(tenant, "taxonomy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_mode_stores_unknown_events_flagged() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let response = export(&tally, &request(100, &mix())).await;
    let partial = response
        .partial_success
        .expect("the malformed name is reported");
    assert_eq!(partial.rejected_spans, 1);
    let db = database.client().await;
    let flags: BTreeMap<String, (Option<bool>, Option<String>)> = db
        .query(
            "SELECT action || ':' || coalesce(attributes->>'auth.method', ''), taxonomy_valid, taxonomy_reason \
             FROM activity_events WHERE action <> 'audit.log.view'",
            &[],
        )
        .await
        .expect("flags")
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect();
    assert_eq!(flags.len(), 6, "{flags:?}");
    assert_eq!(flags["auth.login.success:password"], (Some(true), None));
    assert_eq!(
        flags["warehouse.pallet.moved:"],
        (Some(false), Some("unknown_action".to_string()))
    );
    assert_eq!(
        flags["auth.login.success:carrier-pigeon"],
        (Some(false), Some("not_in_enum".to_string()))
    );
    let rejected = rejected_by_reason(&db).await;
    assert_eq!(rejected.get("malformed_action"), Some(&1));
    assert_eq!(rejected.values().sum::<i64>(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_events_replay_exactly_once_after_the_registry_is_fixed() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("taxonomy.yaml");
    let default = include_str!("../config/defaults/taxonomy.yaml");
    std::fs::write(&registry, default).expect("write registry");
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        validate_mode: Some("strict"),
        taxonomy: Some(registry.clone()),
        ..Default::default()
    })
    .await;
    let spans = vec![
        ("warehouse.pallet.moved", vec![]),
        ("warehouse.pallet.moved", vec![]),
        ("garden.gnome.stolen", vec![]),
    ];
    let response = export(&tally, &request(500, &spans)).await;
    assert_eq!(response.partial_success.map(|p| p.rejected_spans), Some(3));

    // The quarantine lists them, newest first, with their reason.
    let (status, page) = common::get_json(&tally.api_url("/api/v1/rejected?limit=2"), None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["items"][0]["reason"], "unknown_action");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let (_, rest) = common::get_json(
        &tally.api_url(&format!("/api/v1/rejected?limit=2&cursor={cursor}")),
        None,
    )
    .await;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["next_cursor"], serde_json::Value::Null);

    // Fix the registry: declare warehouse.pallet.moved; wait for the reload.
    let generation = |body: &serde_json::Value| body["generation"].as_u64().unwrap_or(0);
    let (_, before) = common::get_json(&tally.api_url("/api/v1/taxonomy"), None).await;
    std::fs::write(
        &registry,
        format!("{default}  warehouse.pallet.moved:\n    description: A pallet was moved.\n"),
    )
    .expect("fix registry");
    common::eventually(
        std::time::Duration::from_secs(20),
        "the registry reload",
        || async {
            let (_, now) = common::get_json(&tally.api_url("/api/v1/taxonomy"), None).await;
            (generation(&now) > generation(&before)
                && now["actions"].get("warehouse.pallet.moved").is_some())
            .then_some(())
        },
    )
    .await;

    let replay = |body: &'static str| {
        let url = tally.api_url("/api/v1/rejected/replay");
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("replay");
            assert_eq!(response.status().as_u16(), 200);
            response.json::<serde_json::Value>().await.expect("report")
        }
    };
    let first = replay("{}").await;
    assert_eq!(first["replayed"], 2, "{first}");
    assert_eq!(first["still_rejected"], 1, "{first}");
    let again = replay("{}").await;
    assert_eq!(again["replayed"], 0, "exactly once: {again}");
    assert_eq!(again["still_rejected"], 1, "{again}");

    let db = database.client().await;
    let stored: Vec<(String, Option<bool>)> = db
        .query(
            "SELECT action, taxonomy_valid FROM activity_events \
             WHERE action <> 'audit.log.view' ORDER BY seq",
            &[],
        )
        .await
        .expect("stored")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        stored,
        vec![
            ("warehouse.pallet.moved".to_string(), Some(true)),
            ("warehouse.pallet.moved".to_string(), Some(true)),
        ]
    );
    let left = rejected_by_reason(&db).await;
    assert_eq!(
        left,
        [("unknown_action".to_string(), 1)].into_iter().collect()
    );

    // The replayed rows are counted like any other committed row.
    let metrics = reqwest::get(tally.metrics_url())
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    let replayed: f64 = metrics
        .lines()
        .filter(|line| {
            line.starts_with("tally_activity_events_total{")
                && line.contains("action=\"warehouse.pallet.moved\"")
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(replayed, 2.0, "{metrics}");
}

/// One rule for an action that cannot become an activity row, whatever its length: a
/// 200-byte one, a 300-byte one (over the old 256-byte cut) and one with a control
/// character all go to `rejected_events` as `malformed_action`, are counted in
/// `partial_success` and in `tally_rejected_events_total{reason="malformed_action"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_and_malformed_actions_are_kept_in_rejected_events_with_one_reason() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let mid = "a".repeat(200);
    let long = "b".repeat(300);
    let spans = vec![
        (mid.as_str(), vec![]),
        (long.as_str(), vec![]),
        ("bad\u{7}action", vec![]),
        ("auth.logout.success", vec![]),
    ];
    let response = export(&tally, &request(900, &spans)).await;
    let partial = response.partial_success.expect("partial_success is set");
    assert_eq!(partial.rejected_spans, 3, "{}", partial.error_message);
    assert!(
        partial.error_message.contains("malformed_action: 3"),
        "{}",
        partial.error_message
    );
    let db = database.client().await;
    let rejected = rejected_by_reason(&db).await;
    assert_eq!(
        rejected,
        [("malformed_action".to_string(), 3)].into_iter().collect()
    );
    let mut actions: Vec<String> = db
        .query(
            "SELECT record->'event'->>'action' FROM rejected_events",
            &[],
        )
        .await
        .expect("rejected actions")
        .iter()
        .map(|row| row.get(0))
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        vec![mid.clone(), "bad\u{7}action".into(), long.clone()]
    );
    let metrics = reqwest::get(tally.metrics_url())
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    let reasons: BTreeMap<&str, f64> = metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("tally_rejected_events_total{reason=\"")?;
            let (reason, value) = rest.split_once("\"} ")?;
            Some((reason, value.trim().parse().ok()?))
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    assert_eq!(
        reasons,
        [("malformed_action", 3.0)].into_iter().collect(),
        "{metrics}"
    );
}
