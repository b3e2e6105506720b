//! The budget job against a real PostgreSQL: use equals the ledger (rollup plus
//! the unfolded tail) for each scope, and each threshold's event is sent once
//! per period across two jobs on one database, a restart, and a claimer that
//! stopped before its event committed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;
use tally_config::{BudgetConfig, BudgetPeriod};
use tally_exporters::postgres::budgets::{
    period_bounds, BudgetBook, BudgetJob, BudgetSnapshot, BUDGET_THRESHOLD_ACTION,
    QUOTA_EXCEED_ACTION,
};
use tally_exporters::postgres::{insert_token_batch, RollupJob};
use tally_exporters::testing::TestDatabase;
use tally_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tally_model::otlp::common::v1::any_value;
use tally_model::{
    AttributionSource, ConsumeError, ConsumeReport, Consumer, Outcome, Sender, TokenUsage,
};
use tokio_postgres::Client;
use uuid::Uuid;

/// Records the events it is given; fails while `failing` is set.
#[derive(Default)]
struct Events {
    received: Mutex<Vec<ExportLogsServiceRequest>>,
    failing: Mutex<bool>,
}

impl Events {
    /// `(action, budget, threshold)` of every event received.
    fn summary(&self) -> Vec<(String, String, f64)> {
        let received = self.received.lock().expect("lock");
        let mut out = Vec::new();
        for request in received.iter() {
            for record in request
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records)
            {
                let get = |key: &str| {
                    record
                        .attributes
                        .iter()
                        .find(|a| a.key == key)
                        .and_then(|a| a.value.as_ref())
                        .and_then(|v| v.value.clone())
                };
                let text = |key: &str| match get(key) {
                    Some(any_value::Value::StringValue(s)) => s,
                    other => panic!("{key}: {other:?}"),
                };
                let threshold = match get("budget.threshold") {
                    Some(any_value::Value::DoubleValue(d)) => d,
                    other => panic!("threshold: {other:?}"),
                };
                out.push((text("activity.action"), text("budget.name"), threshold));
            }
        }
        out.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
        out
    }
}

impl Consumer for Events {
    fn consume_traces(
        &self,
        _request: ExportTraceServiceRequest,
        _sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        async { Err(ConsumeError::Invalid("no traces here".into())) }.boxed()
    }

    fn consume_logs(
        &self,
        request: ExportLogsServiceRequest,
        _sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let result = if *self.failing.lock().expect("lock") {
            Err(ConsumeError::Unavailable {
                reason: "test: database away".into(),
                retry_after: Duration::from_secs(1),
            })
        } else {
            self.received.lock().expect("lock").push(request);
            Ok(ConsumeReport::default())
        };
        async move { result }.boxed()
    }
}

fn call(tenant: &str, user: Option<&str>, tokens: i64, cost: f64) -> TokenUsage {
    TokenUsage {
        id: Uuid::new_v4(),
        ts: Utc::now() - TimeDelta::seconds(5),
        tenant_id: Some(tenant.to_owned()),
        user_id: user.map(str::to_owned),
        session_id: None,
        service: Some("svc".into()),
        trace_id: None,
        span_id: None,
        provider: Some("openai".into()),
        operation: Some("chat".into()),
        request_model: Some("gpt-4o-mini".into()),
        response_model: None,
        model: Some("gpt-4o-mini".into()),
        input_tokens: Some(tokens),
        output_tokens: Some(0),
        cache_read_tokens: None,
        cache_write_tokens: None,
        reasoning_tokens: None,
        total_tokens: Some(tokens),
        usage_known: true,
        cost_usd: Some(cost),
        outcome: Outcome::Success,
        duration_ms: None,
        attribution_source: AttributionSource::Record,
        attributes: serde_json::Map::new(),
        report: Default::default(),
        time_to_first_token_ms: None,
    }
}

async fn insert(client: &mut Client, rows: &[TokenUsage]) {
    let tx = client.transaction().await.expect("begin");
    insert_token_batch(&tx, rows).await.expect("insert");
    tx.commit().await.expect("commit");
}

fn budget(name: &str, tenant: Option<&str>, user: Option<&str>, tokens: u64) -> BudgetConfig {
    BudgetConfig {
        name: name.into(),
        tenant: tenant.map(str::to_owned),
        user: user.map(str::to_owned),
        period: BudgetPeriod::Day,
        limit_usd: None,
        limit_tokens: Some(tokens),
        thresholds: vec![0.5, 0.8, 1.0],
    }
}

fn status<'a>(
    snapshot: &'a BudgetSnapshot,
    name: &str,
) -> &'a tally_exporters::postgres::budgets::BudgetStatus {
    snapshot
        .budgets
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no budget {name}"))
}

#[tokio::test]
async fn use_is_the_rollup_plus_the_tail_for_every_scope() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let budgets = vec![
        budget("acme-bob", Some("acme"), Some("bob"), 1000),
        budget("acme", Some("acme"), None, 1000),
        budget("bob-anywhere", None, Some("bob"), 1000),
        budget("everyone", None, None, 1000),
        BudgetConfig {
            limit_usd: Some(2.0),
            limit_tokens: None,
            period: BudgetPeriod::Month,
            ..budget("acme-usd", Some("acme"), None, 1)
        },
    ];
    let book = BudgetBook::new();
    let mut job = BudgetJob::new(budgets, book.clone(), None);
    // Folded rows, then rows above the watermark.
    insert(
        &mut client,
        &[
            call("acme", Some("bob"), 100, 0.25),
            call("acme", Some("alice"), 10, 0.5),
            call("globex", Some("bob"), 1, 0.125),
        ],
    )
    .await;
    RollupJob::new(Duration::ZERO)
        .run_once(&mut client)
        .await
        .expect("rollup");
    insert(
        &mut client,
        &[
            call("acme", Some("bob"), 200, 0.5),
            call("acme", None, 20, 0.25),
            call("globex", None, 2, 1.0),
        ],
    )
    .await;
    assert!(book.snapshot().is_none(), "nothing before the first run");
    job.run_once(&mut client).await.expect("run");
    let snapshot = book.snapshot().expect("published");
    assert_eq!(status(&snapshot, "acme-bob").used, 300.0);
    assert_eq!(status(&snapshot, "acme").used, 330.0);
    assert_eq!(status(&snapshot, "bob-anywhere").used, 301.0);
    assert_eq!(status(&snapshot, "everyone").used, 333.0);
    let usd = status(&snapshot, "acme-usd");
    assert_eq!(usd.used, 1.5);
    assert_eq!(usd.unit, "usd");
    assert_eq!(usd.used_ratio, 0.75);
    assert!(!usd.exceeded);
    assert_eq!(usd.period, "month");
    assert_eq!(
        (usd.period_start, usd.period_end),
        period_bounds(BudgetPeriod::Month, snapshot.as_of)
    );
    // After folding everything the answer is the same.
    RollupJob::new(Duration::ZERO)
        .run_once(&mut client)
        .await
        .expect("rollup");
    job.run_once(&mut client).await.expect("run");
    let again = book.snapshot().expect("published");
    for (a, b) in snapshot.budgets.iter().zip(&again.budgets) {
        assert_eq!(a.used, b.used, "{}", a.name);
    }
    // The gauge follows.
    let text = tally_model::metrics::encode();
    assert!(
        text.contains("tally_budget_used_ratio{budget=\"acme-usd\"} 0.75"),
        "{text}"
    );
}

#[tokio::test]
async fn each_threshold_is_announced_once_across_two_jobs_and_a_restart() {
    let db = TestDatabase::migrated().await;
    let mut a_client = db.client().await;
    let mut b_client = db.client().await;
    let budgets = vec![budget("acme-day", Some("acme"), None, 100)];
    let events = Arc::new(Events::default());
    let consumer: Arc<dyn Consumer> = events.clone();
    let mut a = BudgetJob::new(budgets.clone(), BudgetBook::new(), Some(consumer.clone()));
    let b_book = BudgetBook::new();
    let mut b = BudgetJob::new(budgets.clone(), b_book.clone(), Some(consumer.clone()));

    insert(&mut a_client, &[call("acme", Some("u"), 60, 0.0)]).await;
    let (ra, rb) = tokio::join!(a.run_once(&mut a_client), b.run_once(&mut b_client));
    let (ra, rb) = (ra.expect("a"), rb.expect("b"));
    assert_eq!(ra.claimed + rb.claimed, 1, "{ra:?} {rb:?}");
    assert_eq!(
        events.summary(),
        vec![(BUDGET_THRESHOLD_ACTION.into(), "acme-day".into(), 0.5)]
    );
    // Over the limit: 0.8 and 1.0 at once, each once.
    insert(&mut a_client, &[call("acme", None, 45, 0.0)]).await;
    for _ in 0..3 {
        let (ra, rb) = tokio::join!(a.run_once(&mut a_client), b.run_once(&mut b_client));
        ra.expect("a");
        rb.expect("b");
    }
    assert_eq!(
        events.summary(),
        vec![
            (BUDGET_THRESHOLD_ACTION.into(), "acme-day".into(), 0.5),
            (BUDGET_THRESHOLD_ACTION.into(), "acme-day".into(), 0.8),
            (QUOTA_EXCEED_ACTION.into(), "acme-day".into(), 1.0),
        ]
    );
    b.run_once(&mut b_client).await.expect("b");
    let snapshot = b_book.snapshot().expect("published");
    let status = status(&snapshot, "acme-day");
    assert_eq!(status.thresholds_crossed, vec![0.5, 0.8, 1.0]);
    assert!(status.exceeded);
    assert_eq!(status.used_ratio, 1.05);

    // A restart: a new job knows nothing, the table does.
    drop(a);
    let mut restarted = BudgetJob::new(budgets.clone(), BudgetBook::new(), Some(consumer));
    let report = restarted.run_once(&mut a_client).await.expect("restarted");
    assert_eq!(report.claimed, 0);
    assert_eq!(report.emitted, 0);
    assert_eq!(events.summary().len(), 3);
    let pending: i64 = a_client
        .query_one(
            "SELECT count(*) FROM budget_thresholds WHERE emitted_at IS NULL",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(pending, 0);
}

#[tokio::test]
async fn a_claim_whose_event_did_not_commit_is_sent_again() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let budgets = vec![budget("bob", Some("acme"), Some("bob"), 10)];
    let events = Arc::new(Events::default());
    *events.failing.lock().expect("lock") = true;
    let consumer: Arc<dyn Consumer> = events.clone();
    let mut claimer = BudgetJob::new(budgets.clone(), BudgetBook::new(), Some(consumer.clone()));
    insert(&mut client, &[call("acme", Some("bob"), 6, 0.0)]).await;
    let report = claimer.run_once(&mut client).await.expect("claim");
    assert_eq!(report.claimed, 1);
    assert_eq!(report.emitted, 0, "the pipeline refused it");
    assert!(events.summary().is_empty());
    let (crossed_at, used): (chrono::DateTime<Utc>, f64) = {
        let row = client
            .query_one(
                "SELECT crossed_at, used FROM budget_thresholds WHERE emitted_at IS NULL",
                &[],
            )
            .await
            .expect("pending claim");
        (row.get(0), row.get(1))
    };
    assert_eq!(used, 6.0);

    // The pipeline is back; another instance (resending at once) finds the claim.
    *events.failing.lock().expect("lock") = false;
    let mut other = BudgetJob::new(budgets.clone(), BudgetBook::new(), Some(consumer.clone()))
        .with_resend_after(Duration::ZERO);
    let report = other.run_once(&mut client).await.expect("resend");
    assert_eq!(report.claimed, 0);
    assert_eq!(report.emitted, 1);
    let first = events.received.lock().expect("lock").clone();
    assert_eq!(first.len(), 1);
    let record = &first[0].resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(
        record.time_unix_nano,
        crossed_at.timestamp_nanos_opt().expect("nanos") as u64,
        "the event's time is the claim's"
    );
    let keys: Vec<&str> = record.attributes.iter().map(|a| a.key.as_str()).collect();
    assert!(
        keys.contains(&"tenant.id") && keys.contains(&"enduser.id"),
        "{keys:?}"
    );
    // Once emitted, nobody sends it again.
    other.run_once(&mut client).await.expect("again");
    claimer.run_once(&mut client).await.expect("again");
    assert_eq!(events.received.lock().expect("lock").len(), 1);
}
