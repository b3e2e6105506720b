//! Tally killed with SIGKILL mid-run while clients keep exporting: real SDK exporters
//! (the Rust `opentelemetry-otlp` span exporter over gRPC and over HTTP/protobuf, with
//! its built-in retries) and plain OTLP clients that retry like the OpenTelemetry
//! Collector's exporters (every transport error and retryable status, same request,
//! until acknowledged). A new Tally starts on the same database and addresses; once the
//! retries are over, every batch a client saw acknowledged is stored, each record
//! exactly once: a batch committed by the killed Tally but never acknowledged is sent
//! again, and its deterministic ids make the retry a no-op instead of a duplicate.
//!
//! The Rust SDK's gRPC exporter classifies a call cut by the server's death
//! ("transport error … broken pipe", gRPC `UNKNOWN`) as not retryable and drops that
//! batch: it was never acknowledged, so Tally owes nothing for it; the test allows
//! such drops (one per SDK client and kill at most) and requires none of the others.
//!
//! `TALLY_TEST_LONG=1` runs the long variant: more batches and five kills.

mod common;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{eventually, Tally, TallyOptions, TestDatabase};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{
    Protocol, RetryPolicy, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use tally_model::otlp::collector::trace::v1::trace_service_client::TraceServiceClient;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;

const SPANS_PER_BATCH: u64 = 50;
/// Clients 1 and 2: the SDK over gRPC and HTTP; 3 and 4: plain retrying clients.
const SDK_GRPC: u64 = 1;
const SDK_HTTP: u64 = 2;
const RAW_HTTP: u64 = 3;
const RAW_GRPC: u64 = 4;
const CLIENTS: u64 = 4;

/// The span id of span `i` of batch `batch` of client `client` (never zero).
fn span_number(client: u64, batch: u64, i: u64) -> u64 {
    (client << 40) | (batch << 16) | (i + 1)
}

/// One batch of spans with deterministic ids, each a `doc.edit` activity.
fn batch(client: u64, batch: u64) -> Vec<SpanData> {
    let now = SystemTime::now();
    let mut trace = [0u8; 16];
    trace[..8].copy_from_slice(&client.to_be_bytes());
    trace[8..].copy_from_slice(&batch.to_be_bytes());
    trace[0] = 0xc7;
    (0..SPANS_PER_BATCH)
        .map(|i| SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(trace),
                SpanId::from_bytes(span_number(client, batch, i).to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("PUT /documents"),
            start_time: now,
            end_time: now,
            attributes: vec![
                KeyValue::new("activity.action", "doc.edit"),
                KeyValue::new("enduser.id", format!("user-{client}")),
                KeyValue::new("tenant.id", "crash-test"),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Ok,
            instrumentation_scope: InstrumentationScope::builder("e2e-crash").build(),
        })
        .collect()
}

/// Retries for long enough to ride out a kill and a restart (the SDK's default is 3).
fn retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(60)
        .with_initial_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_millis(500))
        .with_max_jitter(Duration::from_millis(100))
}

/// Total time an export may take, retries included.
const EXPORT_BUDGET: Duration = Duration::from_secs(90);

/// What the exporters saw.
#[derive(Default)]
struct Progress {
    /// Span numbers of acknowledged batches.
    acknowledged: HashSet<u64>,
    /// Batches acknowledged so far, over all clients.
    batches_acknowledged: u64,
    /// Batches whose export failed for good (retries exhausted), with the error.
    failed: Vec<(u64, u64, String)>,
    /// Batches of the plain clients acknowledged only after a transport error had cut
    /// an earlier attempt (one that may or may not have been committed).
    ambiguous_then_acknowledged: u64,
}

impl Progress {
    fn record(&mut self, client: u64, batch: u64, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.batches_acknowledged += 1;
                self.acknowledged
                    .extend((0..SPANS_PER_BATCH).map(|i| span_number(client, batch, i)));
            }
            Err(error) => self.failed.push((client, batch, error)),
        }
    }
}

fn resource(client: u64) -> Resource {
    Resource::builder()
        .with_service_name(format!("crash-client-{client}"))
        .build()
}

/// A gRPC exporter client: exports `batches` batches one after the other.
async fn grpc_client(endpoint: String, client: u64, batches: u64, progress: Arc<Mutex<Progress>>) {
    let mut exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_BUDGET)
        .with_retry_policy(retry_policy())
        .build()
        .expect("grpc span exporter");
    exporter.set_resource(&resource(client));
    for n in 0..batches {
        let result = exporter
            .export(batch(client, n))
            .await
            .map_err(|e| e.to_string());
        progress.lock().expect("progress").record(client, n, result);
    }
}

/// An HTTP/protobuf exporter client on its own thread (the SDK's blocking client).
fn http_client(endpoint: String, client: u64, batches: u64, progress: Arc<Mutex<Progress>>) {
    let mut exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_BUDGET)
        .with_retry_policy(retry_policy())
        .build()
        .expect("http span exporter");
    exporter.set_resource(&resource(client));
    for n in 0..batches {
        let result = futures::executor::block_on(exporter.export(batch(client, n)))
            .map_err(|e| e.to_string());
        progress.lock().expect("progress").record(client, n, result);
    }
}

/// The plain-client form of [`batch`]: the same spans as an OTLP request.
fn raw_batch(client: u64, n: u64) -> ExportTraceServiceRequest {
    use tally_model::otlp::common::v1::{any_value, AnyValue, KeyValue as Kv};
    use tally_model::otlp::resource::v1::Resource as OtlpResource;
    use tally_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let kv = |key: &str, value: String| Kv {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let spans = batch(client, n)
        .iter()
        .map(|span| Span {
            trace_id: span.span_context.trace_id().to_bytes().to_vec(),
            span_id: span.span_context.span_id().to_bytes().to_vec(),
            name: span.name.to_string(),
            kind: 2,
            start_time_unix_nano: now,
            end_time_unix_nano: now,
            attributes: vec![
                kv("activity.action", "doc.edit".into()),
                kv("enduser.id", format!("user-{client}")),
                kv("tenant.id", "crash-test".into()),
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(OtlpResource {
                attributes: vec![kv("service.name", format!("crash-client-{client}"))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// How one attempt of a plain client ended.
enum Attempt {
    Acknowledged,
    /// Refused with a retryable answer: nothing was committed for it.
    Refused,
    /// Cut by a transport error: it may have been committed.
    Cut,
    /// Refused for good (a bug: the batches are valid).
    Failed(String),
}

/// Pause between two attempts of a plain client (its backoff, not a synchronisation).
const RAW_BACKOFF: Duration = Duration::from_millis(200);

/// Sends `attempt` until acknowledged or [`EXPORT_BUDGET`] is over; records the outcome.
async fn retry_until_acknowledged<F, Fut>(
    client: u64,
    n: u64,
    progress: &Mutex<Progress>,
    mut attempt: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Attempt>,
{
    let started = std::time::Instant::now();
    let mut cut = false;
    loop {
        let result = match attempt().await {
            Attempt::Acknowledged => Ok(()),
            Attempt::Failed(error) => Err(error),
            Attempt::Refused | Attempt::Cut if started.elapsed() > EXPORT_BUDGET => {
                Err("retries exhausted".to_string())
            }
            Attempt::Refused => {
                tokio::time::sleep(RAW_BACKOFF).await;
                continue;
            }
            Attempt::Cut => {
                cut = true;
                tokio::time::sleep(RAW_BACKOFF).await;
                continue;
            }
        };
        let mut progress = progress.lock().expect("progress");
        if result.is_ok() && cut {
            progress.ambiguous_then_acknowledged += 1;
        }
        progress.record(client, n, result);
        return;
    }
}

/// A plain OTLP/HTTP client that retries every transport error and 429/502/503/504.
async fn raw_http_client(url: String, client: u64, batches: u64, progress: Arc<Mutex<Progress>>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client");
    for n in 0..batches {
        let body = prost::Message::encode_to_vec(&raw_batch(client, n));
        retry_until_acknowledged(client, n, &progress, || {
            let request = http
                .post(&url)
                .header("content-type", "application/x-protobuf")
                .body(body.clone());
            async move {
                match request.send().await {
                    Ok(response) => match response.status().as_u16() {
                        200 => Attempt::Acknowledged,
                        429 | 502 | 503 | 504 => Attempt::Refused,
                        other => Attempt::Failed(format!("HTTP {other}")),
                    },
                    Err(_) => Attempt::Cut,
                }
            }
        })
        .await;
    }
}

/// A plain OTLP gRPC client that retries every transport error and retryable code.
async fn raw_grpc_client(url: String, client: u64, batches: u64, progress: Arc<Mutex<Progress>>) {
    // Connects lazily and reconnects after the server died.
    let channel = match tonic::transport::Endpoint::from_shared(url) {
        Ok(endpoint) => endpoint.timeout(Duration::from_secs(30)).connect_lazy(),
        Err(e) => {
            let problem = format!("bad endpoint: {e}");
            progress
                .lock()
                .expect("progress")
                .failed
                .push((client, 0, problem));
            return;
        }
    };
    let grpc = TraceServiceClient::new(channel);
    for n in 0..batches {
        let request = raw_batch(client, n);
        retry_until_acknowledged(client, n, &progress, || {
            let mut grpc = grpc.clone();
            let request = request.clone();
            async move {
                match grpc.export(request).await {
                    Ok(_) => Attempt::Acknowledged,
                    Err(status) => match status.code() {
                        tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
                            // Tally's own refusals carry a message; a dead server's
                            // transport errors come as UNAVAILABLE too.
                            if status.message().contains("transport error") {
                                Attempt::Cut
                            } else {
                                Attempt::Refused
                            }
                        }
                        tonic::Code::Unknown
                        | tonic::Code::Cancelled
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Aborted => Attempt::Cut,
                        other => Attempt::Failed(format!("gRPC {other:?}: {}", status.message())),
                    },
                }
            }
        })
        .await;
    }
}

fn acknowledged_batches(progress: &Mutex<Progress>) -> u64 {
    progress.lock().expect("progress").batches_acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_run_loses_no_acknowledged_record_and_duplicates_none() {
    let long = std::env::var_os("TALLY_TEST_LONG").is_some();
    let (batches, kills) = if long { (400u64, 5u64) } else { (60, 1) };
    let total_batches = CLIENTS * batches;

    let database = TestDatabase::create().await;
    let mut tally = Tally::on(&database).await;
    let (grpc, http) = (tally.grpc, tally.http);
    let progress: Arc<Mutex<Progress>> = Arc::default();

    let grpc_url = format!("http://{grpc}");
    let http_url = format!("http://{http}/v1/traces");
    let tasks = vec![
        tokio::spawn(grpc_client(
            grpc_url.clone(),
            SDK_GRPC,
            batches,
            progress.clone(),
        )),
        tokio::spawn(raw_http_client(
            http_url.clone(),
            RAW_HTTP,
            batches,
            progress.clone(),
        )),
        tokio::spawn(raw_grpc_client(
            grpc_url,
            RAW_GRPC,
            batches,
            progress.clone(),
        )),
    ];
    let sdk_http = {
        let progress = progress.clone();
        std::thread::spawn(move || http_client(http_url, SDK_HTTP, batches, progress))
    };

    let mut at_kill = Vec::new();
    for round in 1..=kills {
        // Let the exporters get a share of the run done, then kill Tally outright.
        let target = round * total_batches / (kills + 2);
        eventually(
            Duration::from_secs(120),
            "exporters making progress",
            || async { (acknowledged_batches(&progress) >= target).then_some(()) },
        )
        .await;
        let status = tally.kill();
        assert!(!status.success(), "SIGKILL ends the process: {status:?}");
        at_kill.push(acknowledged_batches(&progress));
        // A new Tally on the same database and the same addresses.
        tally = Tally::launch(TallyOptions {
            database_url: Some(database.url.clone()),
            grpc_endpoint: Some(grpc),
            http_endpoint: Some(http),
            ..Default::default()
        })
        .await;
    }

    // The clients finish through the new Tally (their retries included).
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(300), task)
            .await
            .expect("client finished")
            .expect("client task");
    }
    tokio::task::spawn_blocking(move || sdk_http.join().expect("SDK HTTP exporter thread"))
        .await
        .expect("join SDK HTTP exporter");

    let progress = std::mem::take(&mut *progress.lock().expect("progress"));
    // Only the SDK drops batches, only calls that met the killed or not yet
    // restarted collector (the SDK does not retry a transport error): a call cut
    // by the kill, and any started while no Tally listened — how many depends
    // on how long the restart takes, so the bound is the batches in flight or
    // attempted during the restarts, not one per kill. Dropped batches were never
    // acknowledged; the retrying clients drop none.
    for client in [SDK_GRPC, SDK_HTTP, RAW_HTTP, RAW_GRPC] {
        let failed: Vec<&(u64, u64, String)> =
            progress.failed.iter().filter(|f| f.0 == client).collect();
        let allowed = if client == SDK_GRPC || client == SDK_HTTP {
            total_batches as usize
        } else {
            0
        };
        assert!(
            failed.len() <= allowed
                && failed
                    .iter()
                    .all(|(_, _, error)| error.contains("transport error")),
            "client {client}: {} batches failed for good (allowed: {allowed}, transport errors only): {failed:?}",
            failed.len()
        );
    }
    assert_eq!(
        progress.batches_acknowledged + progress.failed.len() as u64,
        total_batches
    );
    let last_kill = at_kill.last().copied().unwrap_or_default();
    assert!(
        last_kill < total_batches,
        "the last kill happened mid-run ({last_kill} of {total_batches} batches acknowledged)"
    );

    // Exactly once, in SQL: one row per span id, every acknowledged id among them, and
    // nothing that was not sent.
    let db = database.client().await;
    let rows = db
        .query(
            "SELECT span_id, count(*) FROM activity_events \
             WHERE tenant_id = 'crash-test' GROUP BY span_id",
            &[],
        )
        .await
        .expect("count rows per span id");
    let stored: HashMap<u64, i64> = rows
        .iter()
        .map(|row| {
            let span_id: String = row.get(0);
            let number = u64::from_str_radix(&span_id, 16).expect("hex span id");
            (number, row.get::<_, i64>(1))
        })
        .collect();
    let duplicated: Vec<(&u64, &i64)> = stored.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        duplicated.is_empty(),
        "{} span ids stored more than once, e.g. {:?}",
        duplicated.len(),
        duplicated.first()
    );
    let stored_ids: HashSet<u64> = stored.keys().copied().collect();
    let missing: Vec<&u64> = progress.acknowledged.difference(&stored_ids).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged spans missing, e.g. {:x?}",
        missing.len(),
        missing.first()
    );
    // Nothing but what was sent; a dropped batch may or may not have been committed.
    let sent: HashSet<u64> = (1..=CLIENTS)
        .flat_map(|c| (0..batches).flat_map(move |b| (0..SPANS_PER_BATCH).map(move |i| (c, b, i))))
        .map(|(c, b, i)| span_number(c, b, i))
        .collect();
    let unknown = stored_ids.difference(&sent).count();
    assert_eq!(unknown, 0, "only what the clients sent is stored");
    eprintln!(
        "crash test: {kills} SIGKILL(s) at {at_kill:?} of {total_batches} batches acknowledged; \
         {} spans acknowledged, {} stored, each once; {} batches dropped by the SDK \
         (transport errors while Tally was killed or restarting); {} plain-client batches \
         acknowledged after a cut attempt",
        progress.acknowledged.len(),
        stored_ids.len(),
        progress.failed.len(),
        progress.ambiguous_then_acknowledged
    );
    let status = tally.terminate();
    assert!(status.success(), "{}", tally.log_text());
}
