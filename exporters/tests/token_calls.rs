//! One `token_usage` row per model call, decided in PostgreSQL: a span and log
//! records reporting the same call (same trace and span id, or same response id)
//! in either order, in separate transactions (as from separate instances).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tally_exporters::postgres::{insert_token_batch, RollupJob};
use tally_exporters::testing::TestDatabase;
use tally_model::tokens::CallReport;
use tally_model::{AttributionSource, Outcome, TokenUsage};
use tokio_postgres::Client;
use uuid::Uuid;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN: &str = "b7ad6b7169203331";

fn call(from_span: bool, scope: &str, response: Option<&str>, ts: DateTime<Utc>) -> TokenUsage {
    TokenUsage {
        id: Uuid::new_v4(),
        ts,
        tenant_id: None,
        user_id: None,
        session_id: None,
        service: Some("svc".into()),
        trace_id: Some(TRACE.into()),
        span_id: Some(SPAN.into()),
        provider: Some("openai".into()),
        operation: Some("chat".into()),
        request_model: Some("gpt-4o".into()),
        response_model: None,
        model: Some("gpt-4o".into()),
        input_tokens: Some(100),
        output_tokens: Some(10),
        cache_read_tokens: None,
        cache_write_tokens: None,
        reasoning_tokens: None,
        total_tokens: Some(110),
        usage_known: true,
        cost_usd: Some(0.00035),
        outcome: Outcome::Success,
        duration_ms: from_span.then_some(800.0),
        attribution_source: AttributionSource::None,
        attributes: Default::default(),
        time_to_first_token_ms: None,
        report: CallReport {
            from_span,
            scope: scope.into(),
            span_key: Some(format!("s{TRACE}{SPAN}")),
            response_key: response.map(|r| format!("r{r}")),
        },
    }
}

async fn insert(client: &mut Client, rows: &[TokenUsage]) -> u64 {
    let tx = client.transaction().await.expect("begin");
    let n = insert_token_batch(&tx, rows).await.expect("insert");
    tx.commit().await.expect("commit");
    n
}

/// (id, from a span) of the stored rows, and the sum of their input tokens.
async fn stored(client: &Client) -> (Vec<(Uuid, bool)>, i64) {
    let rows = client
        .query(
            "SELECT id, duration_ms IS NOT NULL FROM token_usage ORDER BY seq",
            &[],
        )
        .await
        .expect("rows");
    let sum: i64 = client
        .query_one(
            "SELECT coalesce(sum(input_tokens), 0)::int8 FROM token_usage",
            &[],
        )
        .await
        .expect("sum")
        .get(0);
    (rows.iter().map(|r| (r.get(0), r.get(1))).collect(), sum)
}

#[tokio::test]
async fn a_log_record_after_its_span_is_not_stored_again() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let now = Utc::now();
    let span = call(true, "", Some("chatcmpl-1"), now);
    assert_eq!(insert(&mut client, std::slice::from_ref(&span)).await, 1);
    // The event of the same call, logged a second later, by (trace, span) id.
    let log = call(false, "", None, now + TimeDelta::seconds(1));
    assert_eq!(insert(&mut client, &[log]).await, 0);
    // And a log record matching by response id only (no span context).
    let mut by_response = call(false, "", Some("chatcmpl-1"), now);
    by_response.report.span_key = None;
    assert_eq!(insert(&mut client, &[by_response]).await, 0);
    assert_eq!(stored(&client).await, (vec![(span.id, true)], 100));
    // A retry of the span is still stored once.
    assert_eq!(insert(&mut client, std::slice::from_ref(&span)).await, 0);
    assert_eq!(stored(&client).await.0.len(), 1);
}

#[tokio::test]
async fn a_retry_after_attribution_moved_the_row_to_a_tenant_is_not_stored_again() {
    use tally_exporters::postgres::{attribute_traces, TraceAttribution, TraceIdentity};
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let now = Utc::now();
    // Neither call keys nor a tenant: only the row's (ts, id) can tell a retry,
    // since the primary key is (tenant_id, ts, id) and attribution changes the
    // tenant.
    for mut row in [
        call(true, "", None, now),
        call(true, "", None, now + TimeDelta::seconds(1)),
    ] {
        row.report = CallReport::default();
        assert_eq!(insert(&mut client, std::slice::from_ref(&row)).await, 1);
        let attributed = attribute_traces(
            &mut client,
            &[TraceAttribution {
                trace_id: TRACE.into(),
                identity: TraceIdentity {
                    tenant_id: Some("acme".into()),
                    user_id: Some("alice".into()),
                    session_id: None,
                },
                since: now,
            }],
        )
        .await
        .expect("attribute");
        assert_eq!(attributed, 1);
        assert_eq!(insert(&mut client, std::slice::from_ref(&row)).await, 0);
        // A retry naming the tenant is the same row too.
        let mut named = row.clone();
        named.tenant_id = Some("acme".into());
        assert_eq!(insert(&mut client, &[named]).await, 0);
    }
    let tenants: Vec<String> = client
        .query("SELECT tenant_id FROM token_usage ORDER BY ts", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tenants, ["acme", "acme"]);
}

#[tokio::test]
async fn a_span_after_its_log_record_replaces_the_log_records_row() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let now = Utc::now();
    let log = call(false, "", Some("msg_1"), now + TimeDelta::seconds(2));
    assert_eq!(insert(&mut client, &[log]).await, 1);
    let span = call(true, "", Some("msg_1"), now);
    insert(&mut client, std::slice::from_ref(&span)).await;
    assert_eq!(stored(&client).await, (vec![(span.id, true)], 100));
    // Another report of the call (a second log record) changes nothing.
    let again = call(false, "", Some("msg_1"), now + TimeDelta::seconds(3));
    assert_eq!(insert(&mut client, &[again]).await, 0);
    assert_eq!(stored(&client).await, (vec![(span.id, true)], 100));
}

#[tokio::test]
async fn one_batch_keeps_the_span_and_reports_match_only_within_a_scope() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let now = Utc::now();
    let log = call(false, "", Some("r-9"), now);
    let span = call(true, "", Some("r-9"), now);
    let other_tenant = call(false, "tenant-b", Some("r-9"), now);
    assert_eq!(
        insert(&mut client, &[log, span.clone(), other_tenant.clone()]).await,
        2
    );
    let ids: Vec<Uuid> = stored(&client).await.0.iter().map(|r| r.0).collect();
    assert!(
        ids.contains(&span.id) && ids.contains(&other_tenant.id),
        "{ids:?}"
    );
}

#[tokio::test]
async fn log_records_in_one_span_context_are_distinct_calls_unless_one_response() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let now = Utc::now();
    // Two calls logged in the context of one (non-LLM) request span.
    let a = call(false, "", Some("a"), now);
    let b = call(false, "", Some("b"), now);
    assert_eq!(insert(&mut client, &[a]).await, 1);
    assert_eq!(insert(&mut client, &[b]).await, 1);
    assert_eq!(stored(&client).await.1, 200);
}

#[tokio::test]
async fn a_replaced_row_already_folded_leaves_the_rollup_equal_to_the_rows() {
    let db = TestDatabase::migrated().await;
    let mut client = db.client().await;
    let now = Utc::now();
    let log = call(false, "", Some("msg_2"), now);
    insert(&mut client, &[log]).await;
    let report = RollupJob::new(Duration::ZERO)
        .run_once(&mut client)
        .await
        .expect("rollup");
    assert_eq!(report.token_rows, 1);
    let mut span = call(true, "", Some("msg_2"), now);
    span.input_tokens = Some(120);
    insert(&mut client, std::slice::from_ref(&span)).await;
    RollupJob::new(Duration::ZERO)
        .run_once(&mut client)
        .await
        .expect("rollup");
    let (requests, input): (i64, i64) = client
        .query_one(
            "SELECT sum(requests)::int8, sum(input_tokens)::int8 FROM token_usage_daily",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("rollup sums");
    assert_eq!((requests, input), (1, 120));
    assert_eq!(stored(&client).await, (vec![(span.id, true)], 120));
}

/// The cost of the one-row-per-call bookkeeping on the write path (ignored by
/// default): batches of 1,000 span rows with call keys (trace/span and response
/// id) vs the same rows without keys.
/// `cargo test -p tally-exporters --release --test token_calls -- --ignored --nocapture`
#[tokio::test]
#[ignore = "measurement, not a check"]
async fn call_keys_write_cost() {
    const BATCHES: usize = 40;
    const ROWS: usize = 1_000;
    for with_keys in [false, true, false, true] {
        let db = TestDatabase::migrated().await;
        let mut client = db.client().await;
        let now = Utc::now();
        let mut times = Vec::new();
        for b in 0..BATCHES {
            let rows: Vec<TokenUsage> = (0..ROWS)
                .map(|r| {
                    let mut row = call(true, "", None, now);
                    let n = b * ROWS + r;
                    row.span_id = Some(format!("{n:016x}"));
                    row.report = if with_keys {
                        CallReport {
                            from_span: true,
                            scope: String::new(),
                            span_key: Some(format!("s{TRACE}{n:016x}")),
                            response_key: Some(format!("rchatcmpl-{n}")),
                        }
                    } else {
                        CallReport::default()
                    };
                    row
                })
                .collect();
            let started = std::time::Instant::now();
            assert_eq!(insert(&mut client, &rows).await, ROWS as u64);
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "call keys {with_keys}: median {:.1} ms per {ROWS} rows (p90 {:.1} ms)",
            times[BATCHES / 2],
            times[BATCHES * 9 / 10]
        );
    }
}
