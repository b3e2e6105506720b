//! Prometheus metrics: counters agree with the rows in PostgreSQL, every metric
//! the dashboards and alert rules use is exported, the dashboards are valid
//! Grafana JSON, and label cardinality stays bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::{eventually, export_spans as export, Tally, TallyOptions, TestDatabase};
use tally_model::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tally_model::otlp::trace::v1::{status, Span, Status};

fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn span(n: u64, attributes: Vec<KeyValue>, failed: bool) -> Span {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut trace_id = vec![0x5a; 16];
    trace_id[8..].copy_from_slice(&n.to_be_bytes());
    Span {
        trace_id,
        span_id: (n + 1).to_be_bytes().to_vec(),
        name: "op".into(),
        start_time_unix_nano: now,
        end_time_unix_nano: now,
        attributes,
        status: failed.then(|| Status {
            code: status::StatusCode::Error as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A parsed OpenMetrics scrape: family name → type, and sample name+labels → value.
struct Scrape {
    types: HashMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    async fn fetch(tally: &Tally) -> Scrape {
        let response = reqwest::get(tally.metrics_url()).await.expect("scrape");
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        let text = response.text().await.expect("body");
        assert!(
            text.trim_end().ends_with("# EOF"),
            "OpenMetrics ends with # EOF"
        );
        Scrape::parse(&text)
    }

    fn parse(text: &str) -> Scrape {
        let mut types = HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            let value: f64 = value.parse().expect("numeric sample value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_string(), labels, value));
        }
        Scrape { types, samples }
    }

    /// Every sample name a scraper can query (counters' `_total`, histograms' parts).
    fn queryable_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for (family, kind) in &self.types {
            match kind.as_str() {
                "counter" => {
                    names.insert(format!("{family}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{family}{suffix}"));
                    }
                }
                _ => {
                    names.insert(family.clone());
                }
            }
        }
        names
    }

    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && filter
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    fn series(&self, name: &str) -> Vec<&BTreeMap<String, String>> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, _)| l)
            .collect()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let end = after.find('"').unwrap_or(after.len());
        labels.insert(
            key.trim_start_matches(',').to_string(),
            after[..end].to_string(),
        );
        rest = after.get(end + 1..).unwrap_or("");
    }
    labels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_the_rows_in_postgres() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;

    // A known mix: 3 actions x outcomes, plus spans without an action; sent twice
    // (the resend must not be counted again).
    let mut spans = Vec::new();
    for n in 0..60u64 {
        let action = ["auth.login", "document.view", "file.upload"][(n % 3) as usize];
        spans.push(span(n, vec![attr("activity.action", action)], n % 4 == 0));
    }
    for n in 100..110u64 {
        spans.push(span(n, vec![attr("enduser.id", "no-action")], false));
    }
    export(&tally, spans.clone()).await;
    export(&tally, spans).await;

    let client = database.client().await;
    let rows = client
        .query(
            "SELECT CASE WHEN taxonomy_valid IS FALSE THEN 'other' ELSE action END, outcome, count(*) \
             FROM activity_events GROUP BY 1, 2",
            &[],
        )
        .await
        .expect("query");
    assert!(!rows.is_empty());
    let scrape = Scrape::fetch(&tally).await;
    let mut total = 0i64;
    for row in &rows {
        let action: String = row.get(0);
        let outcome: String = row.get(1);
        let count: i64 = row.get(2);
        total += count;
        let counted = scrape.sum(
            "tally_activity_events_total",
            &[("action", &action), ("outcome", &outcome)],
        );
        assert_eq!(counted, count as f64, "{action}/{outcome}");
    }
    assert_eq!(total, 60);
    assert_eq!(scrape.sum("tally_activity_events_total", &[]), 60.0);
    assert_eq!(
        scrape.sum(
            "tally_exporter_rows_written_total",
            &[("table", "activity_events")]
        ),
        60.0,
        "the resend inserted nothing"
    );
    assert_eq!(
        scrape.sum(
            "tally_receiver_accepted_spans_total",
            &[("transport", "http")]
        ),
        140.0
    );
    assert_eq!(scrape.sum("tally_records_without_action_total", &[]), 20.0);
    assert!(scrape.sum("tally_exporter_batch_duration_seconds_count", &[]) >= 1.0);
    assert!(scrape.sum("tally_ingest_lag_seconds_count", &[]) >= 60.0);
    assert_eq!(scrape.sum("tally_build_info", &[]), 1.0);
    assert!(scrape.sum("tally_process_resident_memory_bytes", &[]) > 0.0);
}

/// Metric names in a PromQL expression (identifiers starting with `tally_`, and `up`).
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let is_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if is_start && expr[i..].starts_with("tally_") {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |e| i + e);
            into.insert(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards");
    let mut exprs = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dashboards dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read dashboard");
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
        let name = path.display().to_string();
        // Valid Grafana dashboard shape, with a datasource variable and no hard-coded UID.
        assert!(
            dashboard["schemaVersion"].as_i64().is_some_and(|v| v >= 30),
            "{name}"
        );
        assert!(
            dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{name}"
        );
        let variables = dashboard["templating"]["list"]
            .as_array()
            .expect("templating");
        assert!(
            variables.iter().any(|v| v["type"] == "datasource"
                && v["name"] == "datasource"
                && v["query"] == "prometheus"),
            "{name} has a prometheus datasource variable"
        );
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{name}");
        let mut ids = BTreeSet::new();
        for panel in panels {
            assert!(
                ids.insert(panel["id"].as_i64().expect("panel id")),
                "{name}: unique panel ids"
            );
            assert!(panel["gridPos"]["w"].as_i64().is_some(), "{name}: gridPos");
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}: panel datasource"
            );
            let targets = panel["targets"].as_array().expect("targets");
            assert!(
                !targets.is_empty(),
                "{name}: panel {} has queries",
                panel["title"]
            );
            for target in targets {
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{name}");
                let expr = target["expr"].as_str().expect("expr").to_string();
                exprs.push((name.clone(), expr));
            }
        }
    }
    assert!(exprs.len() >= 20, "three dashboards with their panels");
    exprs
}

fn alert_exprs() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/alerts.yaml");
    let text = std::fs::read_to_string(path).expect("alerts.yaml");
    // `expr:` values: single-line, or a `|` block indented below.
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let value = value.trim();
        if value == "|" {
            let mut block = String::new();
            while let Some(next) = lines.peek() {
                if next.trim().is_empty() || next.len() - next.trim_start().len() > indent {
                    block.push_str(next.trim());
                    block.push(' ');
                    lines.next();
                } else {
                    break;
                }
            }
            exprs.push((path.to_string(), block));
        } else {
            exprs.push((path.to_string(), value.to_string()));
        }
    }
    assert!(exprs.len() >= 6, "six alert rules");
    exprs
}

/// Families whose labels name what was committed (or configured): listed from the
/// first scrape, with samples only once there is something to count.
const DATA_LABELLED: [&str; 6] = [
    "tally_activity_events_total",
    "tally_llm_tokens_total",
    "tally_llm_requests_total",
    "tally_llm_cost_usd_total",
    "tally_llm_unpriced_requests_total",
    "tally_budget_used_ratio",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_dashboards_and_alerts_is_in_the_first_scrape() {
    let database = TestDatabase::create().await;
    // A fresh instance, scraped once before any record arrives.
    let tally = Tally::on(&database).await;
    let scrape = Scrape::fetch(&tally).await;
    let exported = scrape.queryable_names();
    let mut used = BTreeSet::new();
    for (_, expr) in dashboard_exprs().iter().chain(alert_exprs().iter()) {
        metric_names(expr, &mut used);
    }
    assert!(used.len() >= 15, "{used:?}");
    assert!(used.contains("tally_budget_used_ratio"), "{used:?}");
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nexported: {exported:?}"
    );
    // Series with a fixed label set are there, at 0, before the first event.
    let without_samples: Vec<&String> = used
        .iter()
        .filter(|name| !DATA_LABELLED.contains(&name.as_str()))
        .filter(|name| !scrape.samples.iter().any(|(n, _, _)| n == *name))
        .collect();
    assert!(
        without_samples.is_empty(),
        "used but without a series at the first scrape: {without_samples:?}"
    );
    assert_eq!(scrape.sum("tally_exporter_write_failures_total", &[]), 0.0);
    assert_eq!(scrape.sum("tally_receiver_refused_spans_total", &[]), 0.0);
    // A data-labelled family a panel shows as a number falls back to 0.
    let exprs = dashboard_exprs();
    for (file, expr) in &exprs {
        if expr.contains("tally_llm_unpriced_requests_total") {
            assert!(expr.contains("vector(0)"), "{file}: {expr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_budgets_are_series_from_the_first_scrape() {
    let database = TestDatabase::create().await;
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        budgets: Some(
            "[{ name: acme-day, tenant: acme, period: day, limit_tokens: 1000 }, \
              { name: all-month, period: month, limit_usd: 10 }]"
                .into(),
        ),
        ..Default::default()
    })
    .await;
    let scrape = Scrape::fetch(&tally).await;
    let budgets: BTreeSet<&str> = scrape
        .series("tally_budget_used_ratio")
        .into_iter()
        .filter_map(|labels| labels.get("budget").map(String::as_str))
        .collect();
    assert_eq!(budgets, BTreeSet::from(["acme-day", "all-month"]));
    assert_eq!(scrape.sum("tally_budget_used_ratio", &[]), 0.0);
    // 600 of acme's 1000 tokens: the gauge follows within the refresh.
    let chat = span(
        7,
        vec![
            attr("gen_ai.operation.name", "chat"),
            attr("gen_ai.provider.name", "openai"),
            attr("gen_ai.request.model", "gpt-4o-mini"),
            attr("gen_ai.usage.input_tokens", "500"),
            attr("gen_ai.usage.output_tokens", "100"),
            attr("tenant.id", "acme"),
        ],
        false,
    );
    export(&tally, vec![chat]).await;
    eventually(
        Duration::from_secs(10),
        "the budget gauge moves",
        || async {
            let scrape = Scrape::fetch(&tally).await;
            (scrape.sum("tally_budget_used_ratio", &[("budget", "acme-day")]) == 0.6).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_metrics_carry_the_tenant_when_enabled() {
    let database = TestDatabase::create().await;
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        tenant_label: true,
        ..Default::default()
    })
    .await;
    let chat = |n: u64, tenant: &str, model: &str| {
        span(
            n,
            vec![
                attr("gen_ai.operation.name", "chat"),
                attr("gen_ai.provider.name", "openai"),
                attr("gen_ai.request.model", model),
                attr("gen_ai.usage.input_tokens", "120"),
                attr("gen_ai.usage.output_tokens", "30"),
                attr("tenant.id", tenant),
            ],
            false,
        )
    };
    export(
        &tally,
        vec![
            chat(1, "acme", "gpt-4o-mini"),
            chat(2, "acme", "gpt-4o-mini"),
            chat(3, "globex", "gpt-4o-mini"),
            chat(4, "globex", "an-unpriced-model"),
        ],
    )
    .await;
    let scrape = Scrape::fetch(&tally).await;
    let requests = |tenant: &str| scrape.sum("tally_llm_requests_total", &[("tenant", tenant)]);
    assert_eq!(requests("acme"), 2.0);
    assert_eq!(requests("globex"), 2.0);
    assert_eq!(
        scrape.sum(
            "tally_llm_tokens_total",
            &[("tenant", "acme"), ("kind", "input")]
        ),
        240.0
    );
    assert!(scrape.sum("tally_llm_cost_usd_total", &[("tenant", "acme")]) > 0.0);
    assert_eq!(
        scrape.sum("tally_llm_unpriced_requests_total", &[("tenant", "globex")]),
        1.0
    );
    assert_eq!(
        scrape.sum("tally_llm_unpriced_requests_total", &[("tenant", "acme")]),
        0.0
    );
    for name in [
        "tally_llm_requests_total",
        "tally_llm_tokens_total",
        "tally_llm_cost_usd_total",
    ] {
        for labels in scrape.series(name) {
            assert!(labels.contains_key("tenant"), "{name} {labels:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_cardinality_stays_bounded() {
    let database = TestDatabase::create().await;
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        action_label_cap: Some(20),
        ..Default::default()
    })
    .await;
    // 10,000 events with distinct users and distinct unknown actions, plus one
    // declared action, and 10,000 model calls with distinct models.
    for chunk in 0..10u64 {
        let mut spans: Vec<Span> = (0..1000u64)
            .map(|i| {
                let n = chunk * 1000 + i;
                span(
                    n,
                    vec![
                        attr("activity.action", &format!("unknown.action.n{n}")),
                        attr("enduser.id", &format!("user-{n}")),
                    ],
                    n % 2 == 0,
                )
            })
            .collect();
        spans.extend((0..1000u64).map(|i| {
            let n = 100_000 + chunk * 1000 + i;
            span(
                n,
                vec![
                    attr("gen_ai.operation.name", "chat"),
                    attr("gen_ai.provider.name", "openai"),
                    attr("gen_ai.request.model", &format!("model-{n}")),
                    attr("gen_ai.usage.input_tokens", "10"),
                    attr("gen_ai.usage.output_tokens", "5"),
                    attr("enduser.id", &format!("user-{n}")),
                ],
                false,
            )
        }));
        export(&tally, spans).await;
    }
    export(
        &tally,
        vec![span(
            999_999,
            vec![attr("activity.action", "auth.logout.success")],
            false,
        )],
    )
    .await;
    let scrape = eventually(Duration::from_secs(10), "all events counted", || async {
        let scrape = Scrape::fetch(&tally).await;
        (scrape.sum("tally_activity_events_total", &[]) >= 10_001.0).then_some(scrape)
    })
    .await;
    let series = scrape.series("tally_activity_events_total");
    // Undeclared actions are `other` (2 outcomes); the declared one keeps its name.
    assert!(series.len() <= 3, "{} series: {series:?}", series.len());
    assert_eq!(
        scrape.sum("tally_activity_events_total", &[("action", "other")]),
        10_000.0
    );
    assert_eq!(
        scrape.sum(
            "tally_activity_events_total",
            &[("action", "auth.logout.success")]
        ),
        1.0
    );
    assert_eq!(
        scrape.sum("tally_activity_events_total", &[]),
        10_001.0,
        "nothing lost to the cap"
    );
    // Models: at most model_label_cap (100) named + `other`.
    let models: BTreeSet<&String> = scrape
        .series("tally_llm_requests_total")
        .into_iter()
        .filter_map(|labels| labels.get("model"))
        .collect();
    assert!(models.len() <= 101, "{} model labels", models.len());
    assert!(models.iter().any(|m| m.as_str() == "other"));
    assert_eq!(scrape.sum("tally_llm_requests_total", &[]), 10_000.0);
    for (name, labels, _) in &scrape.samples {
        for value in labels.values() {
            assert!(!value.starts_with("user-"), "{name} has a user id label");
        }
    }
}
