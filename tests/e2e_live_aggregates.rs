//! Live, exact aggregates end to end (issue 18): a running Tally answers
//! `/tokens/usage`, `/activity/aggregates` and `/stats` from its rollups plus
//! the raw rows they have not folded yet, so an acknowledged call is in every
//! answer at once; a call attributed to its user later moves to the user's
//! group, never counted twice; and every answer equals an independent SQL
//! computation over the raw tables up to the answer's `as_of_seq`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    eventually, export_service_spans, get_json, http_span_provider, kv, kv_int, now_nanos, Tally,
    TestDatabase,
};
use serde_json::Value as Json;
use tally_exporters::postgres::RollupJob;
use tally_model::otlp::trace::v1::{Span, Status};

/// The bound: an acknowledged row is in the aggregates within 2 s.
const LIVE: Duration = Duration::from_secs(2);

/// A request span carrying the identity (and an action, so it is an activity
/// event too).
fn request_span(trace: &[u8], start: u64, tenant: &str, user: &str) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: vec![1; 8],
        name: "POST /ask".into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 900_000_000,
        attributes: vec![
            kv("activity.action", "assistant.ask"),
            kv("enduser.id", user),
            kv("tenant.id", tenant),
        ],
        ..Default::default()
    }
}

/// An auto-instrumented chat span under the request span, without identity.
fn chat_span(trace: &[u8], id: u8, start: u64, model: &str, input: i64, output: i64) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: vec![id; 8],
        parent_span_id: vec![1; 8],
        name: format!("chat {model}"),
        kind: 3,
        start_time_unix_nano: start + 1_000_000,
        end_time_unix_nano: start + 800_000_000,
        attributes: vec![
            kv("gen_ai.operation.name", "chat"),
            kv("gen_ai.provider.name", "openai"),
            kv("gen_ai.request.model", model),
            kv_int("gen_ai.usage.input_tokens", input),
            kv_int("gen_ai.usage.output_tokens", output),
        ],
        ..Default::default()
    }
}

async fn api(tally: &Tally, path_and_query: &str) -> Json {
    let (status, body) = get_json(&tally.api_url(path_and_query), None).await;
    assert_eq!(status, 200, "GET {path_and_query}: {body}");
    body
}

/// `(tenant_id, user_id) -> (requests, input_tokens)` of a `/tokens/usage`
/// answer grouped by tenant and user, summed over its periods ('' for null).
fn usage_by_user(body: &Json) -> BTreeMap<(String, String), (i64, i64)> {
    let mut out = BTreeMap::new();
    for item in body["items"].as_array().into_iter().flatten() {
        let key = (
            item["tenant_id"].as_str().unwrap_or_default().to_owned(),
            item["user_id"].as_str().unwrap_or_default().to_owned(),
        );
        let entry: &mut (i64, i64) = out.entry(key).or_default();
        entry.0 += item["requests"].as_i64().unwrap_or(0);
        entry.1 += item["input_tokens"].as_i64().unwrap_or(0);
    }
    out
}

fn group(tenant: &str, user: &str, requests: i64, input: i64) -> ((String, String), (i64, i64)) {
    ((tenant.into(), user.into()), (requests, input))
}

/// The real Rust SDK sends an LLM call carrying its user and an activity span;
/// once the export is acknowledged, the call is in `/tokens/usage` and `/stats`
/// and the event in `/activity/aggregates` within 2 s (no rollup run needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acknowledged_call_is_in_every_aggregate_within_2_s() {
    use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
    use opentelemetry::KeyValue as OtelKv;

    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let url = tally.http_url("/v1/traces");
    std::thread::spawn(move || {
        let provider = http_span_provider(url);
        let tracer = provider.tracer("llm-app");
        let mut chat = tracer
            .span_builder("chat gpt-4o")
            .with_kind(SpanKind::Client)
            .with_attributes([
                OtelKv::new("gen_ai.operation.name", "chat"),
                OtelKv::new("gen_ai.provider.name", "openai"),
                OtelKv::new("gen_ai.request.model", "gpt-4o"),
                OtelKv::new("gen_ai.usage.input_tokens", 1000i64),
                OtelKv::new("gen_ai.usage.output_tokens", 100i64),
                OtelKv::new("gen_ai.server.time_to_first_token", 0.25f64),
                OtelKv::new("enduser.id", "alice"),
                OtelKv::new("tenant.id", "acme"),
            ])
            .start(&tracer);
        chat.end();
        let mut event = tracer
            .span_builder("open document")
            .with_attributes([
                OtelKv::new("activity.action", "doc.read"),
                OtelKv::new("enduser.id", "alice"),
                OtelKv::new("tenant.id", "acme"),
            ])
            .start(&tracer);
        event.end();
        // The simple exporter exports each span as it ends, and flush returns
        // once every export is acknowledged.
        provider.force_flush().expect("flush");
        let _ = provider.shutdown();
    })
    .join()
    .expect("sdk thread");

    let tally = &tally;
    eventually(LIVE, "the call in /tokens/usage", || async move {
        let body = api(tally, "/api/v1/tokens/usage?group_by=tenant,user,model").await;
        let items = body["items"].as_array()?;
        (items.len() == 1
            && items[0]["tenant_id"] == "acme"
            && items[0]["user_id"] == "alice"
            && items[0]["model"] == "gpt-4o"
            && items[0]["requests"] == 1
            && items[0]["input_tokens"] == 1000
            && items[0]["output_tokens"] == 100
            && body["as_of_seq"].as_i64()? >= 1)
            .then_some(())
    })
    .await;
    eventually(LIVE, "the call and the event in /stats", || async move {
        let body = api(tally, "/api/v1/stats?tenant=acme").await;
        (body["tokens"]["requests"] == 1
            && body["tokens"]["input_tokens"] == 1000
            && body["tokens"]["by_model"][0]["model"] == "gpt-4o"
            // 250 ms, read as its bucket's middle (within 4.5%), from the tail.
            && (body["tokens"]["time_to_first_token_p50_ms"].as_f64()? - 250.0).abs() < 250.0 * 0.045
            && body["tokens"]["by_model"][0]["time_to_first_token_p95_ms"]
                == body["tokens"]["time_to_first_token_p95_ms"]
            // One call: its speed is every percentile of the per-call speeds.
            && body["tokens"]["output_tokens_per_second_p50"].as_f64().is_some()
            && body["tokens"]["by_model"][0]["output_tokens_per_second_p95"]
                == body["tokens"]["output_tokens_per_second_p50"]
            && body["activity"]["events"] == 1
            && body["activity"]["active_users"] == 1
            && body["activity"]["top_actions"][0]["action"] == "doc.read")
            .then_some(())
    })
    .await;
    // The call's row shows its speed.
    let body = api(tally, "/api/v1/tokens?tenant=acme").await;
    let row = &body["items"][0];
    assert_eq!(
        row["time_to_first_token_ms"].as_f64(),
        Some(250.0),
        "{body}"
    );
    let duration_ms = row["duration_ms"].as_f64().expect("duration_ms");
    // Output tokens per second of this call: 100 tokens over its duration.
    let speed = row["output_tokens_per_second"].as_f64().expect("speed");
    assert!(
        (speed - 100.0 / (duration_ms / 1000.0)).abs() < 0.001,
        "{body}"
    );
    // /stats reads the same speed within its bucket (4.5%).
    let stats = api(tally, "/api/v1/stats?tenant=acme").await;
    let p50 = stats["tokens"]["output_tokens_per_second_p50"]
        .as_f64()
        .expect("speed p50");
    assert!((p50 - speed).abs() / speed < 0.045, "{p50} vs {speed}");
    eventually(LIVE, "the event in /activity/aggregates", || async move {
        let body = api(
            tally,
            "/api/v1/activity/aggregates?group_by=user,action&tenant=acme",
        )
        .await;
        // The API's own reads are recorded too (audit.log.view): not this test's.
        let items: Vec<&serde_json::Value> = body["items"]
            .as_array()?
            .iter()
            .filter(|item| item["action"] != "audit.log.view")
            .collect();
        (items.len() == 1
            && items[0]["user_id"] == "alice"
            && items[0]["action"] == "doc.read"
            && items[0]["events"] == 1)
            .then_some(())
    })
    .await;
}

/// The LLM span arrives before the request span that names the user, over the
/// real SDK (each span exported as it ends, the child first): once the
/// request span is acknowledged the call is the user's within 2 s, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_before_its_request_span_is_the_users_once_the_request_span_is_acknowledged() {
    use opentelemetry::trace::{
        Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
    };
    use opentelemetry::{Context, KeyValue as OtelKv};

    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let url = tally.http_url("/v1/traces");
    std::thread::spawn(move || {
        let provider = http_span_provider(url);
        let tracer = provider.tracer("llm-app");
        let request = tracer
            .span_builder("POST /chat")
            .with_kind(SpanKind::Server)
            .with_attributes([
                OtelKv::new("enduser.id", "bob"),
                OtelKv::new("tenant.id", "acme"),
            ])
            .start(&tracer);
        let cx = Context::current_with_span(request);
        let mut chat = tracer
            .span_builder("chat gpt-4o-mini")
            .with_kind(SpanKind::Client)
            .with_attributes([
                OtelKv::new("gen_ai.operation.name", "chat"),
                OtelKv::new("gen_ai.provider.name", "openai"),
                OtelKv::new("gen_ai.request.model", "gpt-4o-mini"),
                OtelKv::new("gen_ai.usage.input_tokens", 40i64),
                OtelKv::new("gen_ai.usage.output_tokens", 4i64),
            ])
            .start_with_context(&tracer, &cx);
        chat.end();
        cx.span().end();
        provider.force_flush().expect("flush");
        let _ = provider.shutdown();
    })
    .join()
    .expect("sdk thread");

    let tally = &tally;
    eventually(LIVE, "the call attributed to bob", || async move {
        let body = api(tally, "/api/v1/tokens/usage?group_by=tenant,user").await;
        (usage_by_user(&body) == BTreeMap::from([group("acme", "bob", 1, 40)])).then_some(())
    })
    .await;
    let stats = api(tally, "/api/v1/stats?tenant=acme").await;
    assert_eq!(stats["tokens"]["requests"], 1, "{stats}");
    let all = api(tally, "/api/v1/stats").await;
    assert_eq!(all["tokens"]["requests"], 1, "counted once: {all}");
}

/// The LLM span first, in its own export: the call is at once in the
/// unattributed group; the request span's export moves it to the user, both
/// when the rollup has folded the call meanwhile (the folded counts move) and
/// when it has not (the raw row is read as it is now). Never twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_attribution_moves_the_call_whether_folded_or_not() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let start = now_nanos();
    let usage = "/api/v1/tokens/usage?group_by=tenant,user";

    // Not folded: the call stays in the tail until it is attributed.
    let tail = [0x11u8; 16];
    export_service_spans(
        &tally,
        "web",
        vec![chat_span(&tail, 2, start, "gpt-4o", 40, 4)],
    )
    .await;
    assert_eq!(
        usage_by_user(&api(&tally, usage).await),
        BTreeMap::from([group("", "", 1, 40)])
    );
    export_service_spans(
        &tally,
        "web",
        vec![request_span(&tail, start, "acme", "alice")],
    )
    .await;
    assert_eq!(
        usage_by_user(&api(&tally, usage).await),
        BTreeMap::from([group("acme", "alice", 1, 40)]),
        "the request span's export is acknowledged once the call is attributed"
    );

    // Folded before its request span arrives.
    let folded = [0x22u8; 16];
    export_service_spans(
        &tally,
        "web",
        vec![
            chat_span(&folded, 2, start, "gpt-4o", 100, 10),
            chat_span(&folded, 3, start, "gpt-4o", 200, 20),
        ],
    )
    .await;
    let mut client = database.client().await;
    let report = RollupJob::new(Duration::ZERO)
        .run_once(&mut client)
        .await
        .expect("rollup");
    assert_eq!(report.token_rows, 3, "every token row folded");
    let before = api(&tally, usage).await;
    assert_eq!(
        usage_by_user(&before),
        BTreeMap::from([group("", "", 2, 300), group("acme", "alice", 1, 40)])
    );
    export_service_spans(
        &tally,
        "web",
        vec![request_span(&folded, start, "acme", "bob")],
    )
    .await;
    let after = api(&tally, usage).await;
    assert_eq!(
        usage_by_user(&after),
        BTreeMap::from([group("acme", "alice", 1, 40), group("acme", "bob", 2, 300)]),
        "the folded counts moved to bob, once"
    );
    assert_eq!(
        after["as_of_seq"], before["as_of_seq"],
        "attribution changes no seq"
    );
    let stats = api(&tally, "/api/v1/stats").await;
    assert_eq!(stats["tokens"]["requests"], 3, "{stats}");
    assert_eq!(stats["tokens"]["input_tokens"], 340, "{stats}");
}

/// The token groups of the raw table up to `as_of_seq`, per grain period:
/// (period, tenant, user, provider, model) -> [requests, input, output, total].
async fn sql_token_groups(
    db: &TestDatabase,
    grain: &str,
    as_of_seq: i64,
) -> BTreeMap<Vec<String>, Vec<i64>> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT date_trunc($1, ts AT TIME ZONE 'UTC')::date::text, tenant_id, \
                 coalesce(user_id, ''), coalesce(provider, ''), coalesce(model, ''), \
                 count(*), coalesce(sum(input_tokens), 0)::int8, \
                 coalesce(sum(output_tokens), 0)::int8, coalesce(sum(total_tokens), 0)::int8 \
             FROM token_usage WHERE seq <= $2 GROUP BY 1, 2, 3, 4, 5",
            &[&grain, &as_of_seq],
        )
        .await
        .expect("independent token sums");
    rows.iter()
        .map(|r| {
            (
                (0..5).map(|i| r.get::<_, String>(i)).collect(),
                (5..9).map(|i| r.get::<_, i64>(i)).collect(),
            )
        })
        .collect()
}

/// (period, tenant, user, action, outcome) -> events, up to `as_of_seq`.
async fn sql_activity_groups(
    db: &TestDatabase,
    grain: &str,
    as_of_seq: i64,
) -> BTreeMap<Vec<String>, Vec<i64>> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT date_trunc($1, ts AT TIME ZONE 'UTC')::date::text, tenant_id, \
                 coalesce(user_id, ''), action, outcome, count(*) \
             FROM activity_events WHERE seq <= $2 GROUP BY 1, 2, 3, 4, 5",
            &[&grain, &as_of_seq],
        )
        .await
        .expect("independent activity counts");
    rows.iter()
        .map(|r| {
            (
                (0..5).map(|i| r.get::<_, String>(i)).collect(),
                vec![r.get::<_, i64>(5)],
            )
        })
        .collect()
}

/// Every page of an aggregate route: (its items keyed like the SQL above,
/// the `as_of_seq` of the first page).
async fn api_groups(
    tally: &Tally,
    path: &str,
    keys: &[&str],
    measures: &[&str],
) -> (BTreeMap<Vec<String>, Vec<i64>>, i64) {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    let mut as_of = None;
    loop {
        let mut uri = format!("{path}&limit=50");
        if let Some(c) = &cursor {
            uri.push_str(&format!("&cursor={c}"));
        }
        let body = api(tally, &uri).await;
        let seq = body["as_of_seq"].as_i64().expect("as_of_seq");
        as_of.get_or_insert(seq);
        for item in body["items"].as_array().expect("items") {
            let mut key = vec![item["period"].as_str().expect("period").to_owned()];
            key.extend(
                keys.iter()
                    .map(|k| item[*k].as_str().unwrap_or_default().to_owned()),
            );
            let values = measures
                .iter()
                .map(|m| item[*m].as_i64().expect("measure"))
                .collect();
            assert!(out.insert(key, values).is_none(), "one item per group");
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (out, as_of.unwrap_or(0)),
        }
    }
}

/// Calls and events spread over the last 70 days, some folded into the
/// rollups and some not, some attributed late after being folded: at every
/// grain, grouped by every key, the live answers equal SQL over the raw
/// tables up to their `as_of_seq`; `/stats` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_equal_sql_over_the_raw_tables_at_every_grain() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let now = now_nanos();
    let day = 86_400_000_000_000u64;
    let tenants = ["acme", "globex"];
    let users = ["alice", "bob", "carol"];
    let models = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5"];
    let batch = |round: u64| -> Vec<Span> {
        let mut spans = Vec::new();
        for i in 0..40u64 {
            let n = round * 40 + i;
            let start = now - (n * 7 % 70) * day - n * 1_000_000;
            let mut trace = [0u8; 16];
            trace[..8].copy_from_slice(&n.to_be_bytes());
            trace[15] = 0xee;
            let tenant = tenants[(n % 2) as usize];
            let user = users[(n % 3) as usize];
            let model = models[(n % 3) as usize];
            let mut chat = chat_span(&trace, 2, start, model, 10 + n as i64, 1 + n as i64 % 5);
            // Durations from 5 ms to about 3 s; every seventh call failed.
            chat.end_time_unix_nano = chat.start_time_unix_nano + (5 + n * 373 % 3000) * 1_000_000;
            // Three calls in four report a time to first token (2 ms to ~1 s).
            if n % 4 != 0 {
                let seconds = (2 + n * 131 % 1000) as f64 / 1000.0;
                chat.attributes.push(kv(
                    "gen_ai.server.time_to_first_token",
                    &seconds.to_string(),
                ));
            }
            if n % 7 == 0 {
                chat.status = Some(Status {
                    code: 2,
                    ..Default::default()
                });
            }
            spans.push(chat);
            // Every third call's request span comes later (attributed late).
            if n % 3 != 0 {
                spans.push(request_span(&trace, start, tenant, user));
            }
        }
        spans
    };
    export_service_spans(&tally, "web", batch(0)).await;
    export_service_spans(&tally, "web", batch(1)).await;
    // Fold some of what is there now, with no attribution delay.
    let mut client = database.client().await;
    RollupJob::new(Duration::ZERO)
        .with_max_rows_per_run(50)
        .run_once(&mut client)
        .await
        .expect("rollup");
    // The late request spans of the folded and unfolded calls, then more rows.
    let mut late = Vec::new();
    for n in (0..80u64).filter(|n| n % 3 == 0) {
        let start = now - (n * 7 % 70) * day - n * 1_000_000;
        let mut trace = [0u8; 16];
        trace[..8].copy_from_slice(&n.to_be_bytes());
        trace[15] = 0xee;
        late.push(request_span(&trace, start, "acme", "dave"));
    }
    export_service_spans(&tally, "web", late).await;
    export_service_spans(&tally, "web", batch(2)).await;
    let unfolded: i64 = database
        .client()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM token_usage WHERE seq > (SELECT last_seq \
                 FROM rollup_watermarks WHERE name = 'token_usage_daily')) \
              + (SELECT count(*) FROM activity_events WHERE seq > (SELECT last_seq \
                 FROM rollup_watermarks WHERE name = 'activity_daily'))",
            &[],
        )
        .await
        .expect("unfolded")
        .get(0);
    assert!(unfolded > 0, "the answers must add a tail to the rollups");

    let token_keys = ["tenant_id", "user_id", "provider", "model"];
    let token_measures = ["requests", "input_tokens", "output_tokens", "total_tokens"];
    let activity_keys = ["tenant_id", "user_id", "action", "outcome"];
    for grain in ["day", "week", "month"] {
        let (got, as_of) = api_groups(
            &tally,
            &format!("/api/v1/tokens/usage?grain={grain}&group_by=tenant,user,provider,model"),
            &token_keys,
            &token_measures,
        )
        .await;
        assert!(as_of > 0);
        assert_eq!(
            got,
            sql_token_groups(&database, grain, as_of).await,
            "{grain}"
        );
        // Grouped by user only, over the tenant-less path too.
        let (by_user, as_of) = api_groups(
            &tally,
            &format!("/api/v1/tokens/usage?grain={grain}&group_by=user"),
            &["user_id"],
            &["requests"],
        )
        .await;
        let mut want: BTreeMap<Vec<String>, Vec<i64>> = BTreeMap::new();
        for (key, values) in sql_token_groups(&database, grain, as_of).await {
            want.entry(vec![key[0].clone(), key[2].clone()])
                .or_insert_with(|| vec![0])[0] += values[0];
        }
        assert_eq!(by_user, want, "{grain} by user");

        let (got, as_of) = api_groups(
            &tally,
            &format!(
                "/api/v1/activity/aggregates?grain={grain}&group_by=tenant,user,action,outcome"
            ),
            &activity_keys,
            &["events"],
        )
        .await;
        assert_eq!(
            got,
            sql_activity_groups(&database, grain, as_of).await,
            "{grain}"
        );
    }

    // /stats over the last 30 days, per tenant and over every tenant.
    for tenant in [Some("acme"), None] {
        let query = tenant.map(|t| format!("&tenant={t}")).unwrap_or_default();
        let today = chrono::Utc::now().date_naive();
        let from = today - chrono::Days::new(29);
        let to = today + chrono::Days::new(1);
        let body = api(&tally, &format!("/api/v1/stats?from={from}&to={to}{query}")).await;
        let tokens_as_of = body["tokens"]["as_of_seq"].as_i64().expect("as_of_seq");
        let activity_as_of = body["activity"]["as_of_seq"].as_i64().expect("as_of_seq");
        let client = database.client().await;
        let row = client
            .query_one(
                "SELECT count(*), coalesce(sum(input_tokens), 0)::int8 FROM token_usage \
                 WHERE seq <= $1 AND (ts AT TIME ZONE 'UTC')::date >= $2 \
                   AND (ts AT TIME ZONE 'UTC')::date < $3 AND ($4::text IS NULL OR tenant_id = $4)",
                &[&tokens_as_of, &from, &to, &tenant],
            )
            .await
            .expect("token totals");
        assert_eq!(
            body["tokens"]["requests"].as_i64(),
            Some(row.get(0)),
            "{body}"
        );
        assert_eq!(
            body["tokens"]["input_tokens"].as_i64(),
            Some(row.get(1)),
            "{body}"
        );
        let row = client
            .query_one(
                "SELECT count(*), count(DISTINCT user_id) FROM activity_events \
                 WHERE seq <= $1 AND (ts AT TIME ZONE 'UTC')::date >= $2 \
                   AND (ts AT TIME ZONE 'UTC')::date < $3 AND ($4::text IS NULL OR tenant_id = $4)",
                &[&activity_as_of, &from, &to, &tenant],
            )
            .await
            .expect("activity totals");
        assert_eq!(
            body["activity"]["events"].as_i64(),
            Some(row.get(0)),
            "{body}"
        );
        assert_eq!(
            body["activity"]["active_users"].as_i64(),
            Some(row.get(1)),
            "{body}"
        );
        // Speed per model: success rate and output tokens per second exact,
        // the duration and time-to-first-token percentiles within their
        // bucket (4.5%).
        let rows = client
            .query(
                "SELECT coalesce(model, ''), count(*), count(*) FILTER (WHERE outcome = 'failure'), \
                     percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms), \
                     percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms), \
                     sum(output_tokens)::float8 / (sum(duration_ms) / 1000), \
                     percentile_disc(0.5) WITHIN GROUP (ORDER BY time_to_first_token_ms), \
                     percentile_disc(0.95) WITHIN GROUP (ORDER BY time_to_first_token_ms), \
                     percentile_disc(0.5) WITHIN GROUP (ORDER BY output_tokens * 1000.0::float8 \
                         / duration_ms) FILTER (WHERE duration_ms > 0 AND output_tokens IS NOT NULL), \
                     percentile_disc(0.95) WITHIN GROUP (ORDER BY output_tokens * 1000.0::float8 \
                         / duration_ms) FILTER (WHERE duration_ms > 0 AND output_tokens IS NOT NULL), \
                     GROUPING(model) = 1 \
                 FROM token_usage \
                 WHERE seq <= $1 AND (ts AT TIME ZONE 'UTC')::date >= $2 \
                   AND (ts AT TIME ZONE 'UTC')::date < $3 AND ($4::text IS NULL OR tenant_id = $4) \
                 GROUP BY GROUPING SETS ((model), ())",
                &[&tokens_as_of, &from, &to, &tenant],
            )
            .await
            .expect("speed");
        assert!(!rows.is_empty());
        assert!(
            rows.iter().any(|r| r.get::<_, i64>(2) > 0),
            "some calls failed"
        );
        let by_model = body["tokens"]["by_model"].as_array().expect("by_model");
        for row in rows {
            let model: String = row.get(0);
            // The window's totals (every model), then each model.
            let item = if row.get::<_, bool>(10) {
                &body["tokens"]
            } else {
                by_model
                    .iter()
                    .find(|i| i["model"] == model.as_str())
                    .unwrap_or_else(|| panic!("{model} in {body}"))
            };
            let (requests, failed): (i64, i64) = (row.get(1), row.get(2));
            assert_eq!(item["failed_requests"].as_i64(), Some(failed), "{item}");
            let rate = item["success_rate"].as_f64().expect("success_rate");
            assert!((rate - (requests - failed) as f64 / requests as f64).abs() < 1e-9);
            for (field, exact) in [
                ("duration_p50_ms", 3),
                ("duration_p95_ms", 4),
                ("time_to_first_token_p50_ms", 6),
                ("time_to_first_token_p95_ms", 7),
                ("output_tokens_per_second_p50", 8),
                ("output_tokens_per_second_p95", 9),
            ] {
                let exact: f64 = row.get(exact);
                let got = item[field].as_f64().expect(field);
                // Bucket 0 ([0, 1)) reads as 0.5: within 0.5 below 1.
                assert!(
                    (got - exact).abs() / exact < 0.045 || (exact < 1.0 && got == 0.5),
                    "{model} {field}: {got} vs {exact}"
                );
            }
            let speed: f64 = row.get(5);
            let got = item["output_tokens_per_second"].as_f64().expect("speed");
            assert!((got - speed).abs() < 0.001, "{model}: {got} vs {speed}");
        }
    }
}
