//! Overload: many clients offer far more than Tally can write while the test holds
//! `activity_events` locked (Tally writes nothing at all), then the lock is released
//! and the load drops. Tally answers retryable errors with a retry delay (HTTP 429/503
//! with `Retry-After`, gRPC `RESOURCE_EXHAUSTED`/`UNAVAILABLE` with `RetryInfo`), refuses
//! for its in-flight bytes budget as well as for its queue, keeps its peak resident
//! memory (`VmHWM`) under the configured budget times a documented factor above its
//! warmed-up baseline, stores every acknowledged record exactly once, and acknowledges
//! again once the load has dropped.
//!
//! `TALLY_TEST_LONG=1` runs the long variant: more clients and a longer locked phase.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, Tally, TallyOptions, TestDatabase};
use prost::Message;
use tally_model::otlp::collector::trace::v1::trace_service_client::TraceServiceClient;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tally_model::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tally_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tonic_types::StatusExt;

/// Spans per request and the padding that makes each about 1 KiB: ~1 MiB requests.
const SPANS: u64 = 1000;
const PAD: usize = 800;
/// `receivers.otlp.max_in_flight_bytes`: 16 MiB. Each request is charged its ~1 MiB body
/// plus the estimated size of its decoded form (~2.5 MiB), so about four fit: the two
/// the full queue holds, and two more that reach the queue and are refused there.
const BUDGET: usize = 16 * 1024 * 1024;
/// `exporters.postgres.queue_capacity_records`: two requests' worth.
const QUEUE: usize = 2000;
/// Peak memory allowed above the warmed-up baseline, in units of the budget: a request
/// charged N bytes holds its body, its decoded form and its redacted, classified rows
/// while they wait in the queue, and the allocator keeps freed pages of the decoding
/// threads for a while; measured 6-9x in the debug build (docs/performance.md,
/// reliability), so 12x.
const MEMORY_FACTOR: u64 = 12;

fn span_number(client: u64, request: u64, i: u64) -> u64 {
    (client << 40) | (request << 16) | (i + 1)
}

fn string(value: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    })
}

fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: string(value),
        ..Default::default()
    }
}

/// Request `request` of client `client`: [`SPANS`] `doc.edit` spans with unique ids.
fn request(client: u64, request: u64) -> ExportTraceServiceRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut trace_id = vec![0x0d; 16];
    trace_id[8..].copy_from_slice(&((client << 32) | request).to_be_bytes());
    let pad = "p".repeat(PAD);
    let spans = (0..SPANS)
        .map(|i| Span {
            trace_id: trace_id.clone(),
            span_id: span_number(client, request, i).to_be_bytes().to_vec(),
            name: "PUT /documents".into(),
            start_time_unix_nano: now,
            end_time_unix_nano: now,
            attributes: vec![
                attr("activity.action", "doc.edit"),
                attr("tenant.id", "overload"),
                attr("enduser.id", &format!("user-{client}")),
                attr("app.padding", &pad),
            ],
            ..Default::default()
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

/// How one export attempt was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Answer {
    Acknowledged,
    /// Refused for the in-flight bytes budget.
    Busy,
    /// Refused because the write queue is full.
    QueueFull,
    /// Refused because the database cannot be written (or shutting down).
    Unavailable,
    /// Cut by a transport error (the server answered a refusal before reading the whole
    /// body and closed the connection): retryable for OTLP clients.
    Cut,
}

#[derive(Default)]
struct Tallies {
    answers: HashMap<Answer, u64>,
    acknowledged: HashSet<u64>,
    /// Consecutive acknowledgements of client 0 (the one that stays after the drop).
    streak: u64,
    /// Problems seen by clients (a retryable answer without a delay, an unexpected status).
    problems: Vec<String>,
}

impl Tallies {
    fn count(&self, answer: Answer) -> u64 {
        self.answers.get(&answer).copied().unwrap_or_default()
    }

    fn record(&mut self, client: u64, n: u64, answer: Result<Answer, String>) {
        match answer {
            Ok(answer) => {
                *self.answers.entry(answer).or_default() += 1;
                if answer == Answer::Acknowledged {
                    self.acknowledged
                        .extend((0..SPANS).map(|i| span_number(client, n, i)));
                }
                if client == 0 {
                    self.streak = if answer == Answer::Acknowledged {
                        self.streak + 1
                    } else {
                        0
                    };
                }
            }
            Err(problem) => self.problems.push(problem),
        }
    }
}

/// Phases the clients follow.
const FULL_LOAD: u8 = 0;
const ONE_CLIENT: u8 = 1;
const STOP: u8 = 2;

/// Stops the clients when the test ends, also when it fails: the panic's unwinding
/// drops it, so the clients leave their loops and the runtime can shut down
/// instead of spinning against a stopped collector.
struct StopClientsOnDrop(Arc<AtomicU8>);

impl Drop for StopClientsOnDrop {
    fn drop(&mut self) {
        self.0.store(STOP, Ordering::Release);
    }
}

fn keeps_going(phase: &AtomicU8, client: u64) -> bool {
    match phase.load(Ordering::Acquire) {
        FULL_LOAD => true,
        ONE_CLIENT => client == 0,
        _ => false,
    }
}

async fn http_answer(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<Answer, String> {
    let response = client
        .post(url)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await;
    let Ok(response) = response else {
        return Ok(Answer::Cut);
    };
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body = response.bytes().await.unwrap_or_default();
    let message = tonic_types::Status::decode(&body[..])
        .map(|s| s.message)
        .unwrap_or_default();
    match status {
        200 => Ok(Answer::Acknowledged),
        429 | 503 if !retry_after => Err(format!("HTTP {status} without Retry-After: {message}")),
        429 if message.contains("max_in_flight_bytes") => Ok(Answer::Busy),
        429 => Ok(Answer::QueueFull),
        503 => Ok(Answer::Unavailable),
        other => Err(format!("HTTP {other}: {message}")),
    }
}

fn grpc_answer(result: Result<(), tonic::Status>) -> Result<Answer, String> {
    let status = match result {
        Ok(()) => return Ok(Answer::Acknowledged),
        Err(status) => status,
    };
    let retry_info = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .is_some();
    match status.code() {
        tonic::Code::ResourceExhausted | tonic::Code::Unavailable if !retry_info => Err(format!(
            "gRPC {:?} without RetryInfo: {}",
            status.code(),
            status.message()
        )),
        tonic::Code::ResourceExhausted if status.message().contains("max_in_flight_bytes") => {
            Ok(Answer::Busy)
        }
        tonic::Code::Unavailable if status.message().contains("overloaded") => {
            Ok(Answer::QueueFull)
        }
        tonic::Code::Unavailable => Ok(Answer::Unavailable),
        // A stream reset by the server (refused before the whole message was read).
        tonic::Code::Unknown | tonic::Code::Cancelled
            if status.message().contains("transport") || status.message().contains("reset") =>
        {
            Ok(Answer::Cut)
        }
        other => Err(format!("gRPC {other:?}: {}", status.message())),
    }
}

/// Sends request after request, each again at once until acknowledged (an impatient
/// client: it ignores the retry delay, which keeps the pressure on).
async fn http_client(url: String, client: u64, phase: Arc<AtomicU8>, tallies: Arc<Mutex<Tallies>>) {
    let http = reqwest::Client::new();
    let mut n = 0;
    let mut body = request(client, n).encode_to_vec();
    while keeps_going(&phase, client) {
        let answer = http_answer(&http, &url, body.clone()).await;
        let acknowledged = answer == Ok(Answer::Acknowledged);
        tallies.lock().expect("tallies").record(client, n, answer);
        if acknowledged {
            n += 1;
            body = request(client, n).encode_to_vec();
        } else {
            // A refusal or a cut connection can come back without the task ever
            // waiting: give the other tasks (and a shutting-down runtime) a turn.
            tokio::task::yield_now().await;
        }
    }
}

async fn grpc_client(url: String, client: u64, phase: Arc<AtomicU8>, tallies: Arc<Mutex<Tallies>>) {
    let mut grpc = match TraceServiceClient::connect(url).await {
        Ok(grpc) => grpc.max_encoding_message_size(8 * 1024 * 1024),
        Err(e) => {
            let problem = format!("gRPC connect failed: {e}");
            tallies.lock().expect("tallies").problems.push(problem);
            return;
        }
    };
    let mut n = 0;
    let mut next = request(client, n);
    while keeps_going(&phase, client) {
        let answer = grpc_answer(grpc.export(next.clone()).await.map(|_| ()));
        let acknowledged = answer == Ok(Answer::Acknowledged);
        tallies.lock().expect("tallies").record(client, n, answer);
        if acknowledged {
            n += 1;
            next = request(client, n);
        } else {
            tokio::task::yield_now().await;
        }
    }
}

fn snapshot<T>(tallies: &Mutex<Tallies>, f: impl FnOnce(&Tallies) -> T) -> T {
    f(&tallies.lock().expect("tallies"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_refused_retryably_within_the_memory_bound_and_recovers() {
    let long = std::env::var_os("TALLY_TEST_LONG").is_some();
    let (http_clients, grpc_clients, locked_refusals) = if long {
        (32u64, 16u64, 1000u64)
    } else {
        (16, 8, 40)
    };
    let database = TestDatabase::create().await;
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        max_body_mib: Some(4),
        max_in_flight_bytes: Some(BUDGET),
        queue_capacity: Some(QUEUE),
        ..Default::default()
    })
    .await;
    let url = tally.http_url("/v1/traces");

    // Warm up (allocator arenas, connections, the first partitions), then take the
    // baseline: the peak resident set so far.
    let warm = reqwest::Client::new();
    for n in 0..4 {
        let answer = http_answer(&warm, &url, request(1 << 20, n).encode_to_vec()).await;
        assert_eq!(answer, Ok(Answer::Acknowledged), "warm-up request {n}");
    }
    let baseline_kib = tally.memory_kib("VmHWM").expect("VmHWM of tally");

    // Hold activity_events locked: the writer blocks on its first insert.
    let lock = database.client().await;
    lock.batch_execute("BEGIN; LOCK TABLE activity_events IN EXCLUSIVE MODE")
        .await
        .expect("lock activity_events");

    let phase = Arc::new(AtomicU8::new(FULL_LOAD));
    let _stop_clients = StopClientsOnDrop(phase.clone());
    let tallies: Arc<Mutex<Tallies>> = Arc::default();
    let mut clients = Vec::new();
    for client in 0..http_clients {
        clients.push(tokio::spawn(http_client(
            url.clone(),
            client,
            phase.clone(),
            tallies.clone(),
        )));
    }
    for client in http_clients..http_clients + grpc_clients {
        clients.push(tokio::spawn(grpc_client(
            tally.grpc_url(),
            client,
            phase.clone(),
            tallies.clone(),
        )));
    }

    // Locked: nothing can be written, so everything beyond the queue and the budget is
    // refused; both refusals show up.
    eventually(
        Duration::from_secs(120),
        "refusals for the budget and for the queue while the table is locked",
        || async {
            snapshot(&tallies, |t| {
                (t.count(Answer::Busy) >= locked_refusals
                    && t.count(Answer::QueueFull) + t.count(Answer::Unavailable) >= locked_refusals)
                    .then_some(())
            })
        },
    )
    .await;
    let acknowledged_while_locked = snapshot(&tallies, |t| t.count(Answer::Acknowledged));
    assert_eq!(
        acknowledged_while_locked, 0,
        "nothing is acknowledged before it is committed"
    );

    // Unlock: Tally writes again, still under full load.
    lock.batch_execute("COMMIT").await.expect("unlock");
    eventually(
        Duration::from_secs(120),
        "acknowledgements under full load once unlocked",
        || async {
            snapshot(&tallies, |t| {
                (t.count(Answer::Acknowledged) >= 3).then_some(())
            })
        },
    )
    .await;
    // The load drops to one client: it is acknowledged request after request.
    phase.store(ONE_CLIENT, Ordering::Release);
    eventually(
        Duration::from_secs(120),
        "five acknowledgements in a row once the load dropped",
        || async { snapshot(&tallies, |t| (t.streak >= 5).then_some(())) },
    )
    .await;
    phase.store(STOP, Ordering::Release);
    for client in clients {
        tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .expect("client stops")
            .expect("client task");
    }
    let peak_kib = tally.memory_kib("VmHWM").expect("VmHWM of tally");
    let bound_kib = baseline_kib + MEMORY_FACTOR * (BUDGET as u64 / 1024);
    let tallies = std::mem::take(&mut *tallies.lock().expect("tallies"));
    eprintln!(
        "overload: answers {:?}; VmHWM baseline {} MiB, peak {} MiB, bound {} MiB \
         (budget {} MiB x {MEMORY_FACTOR})",
        tallies.answers,
        baseline_kib / 1024,
        peak_kib / 1024,
        bound_kib / 1024,
        BUDGET / (1024 * 1024)
    );
    assert!(
        tallies.problems.is_empty(),
        "{} problems, e.g. {:?}",
        tallies.problems.len(),
        tallies.problems.first()
    );
    assert!(
        peak_kib <= bound_kib,
        "peak resident memory {peak_kib} KiB over the bound {bound_kib} KiB \
         (baseline {baseline_kib} KiB + {MEMORY_FACTOR} x budget)"
    );

    // Every acknowledged record is stored, exactly once.
    let db = database.client().await;
    let rows = db
        .query(
            "SELECT span_id, count(*) FROM activity_events \
             WHERE tenant_id = 'overload' GROUP BY span_id",
            &[],
        )
        .await
        .expect("count rows per span id");
    let mut stored = HashSet::new();
    for row in &rows {
        let span_id: String = row.get(0);
        let count: i64 = row.get(1);
        assert_eq!(count, 1, "span {span_id} stored {count} times");
        stored.insert(u64::from_str_radix(&span_id, 16).expect("hex span id"));
    }
    let missing = tallies.acknowledged.difference(&stored).count();
    assert_eq!(
        missing, 0,
        "acknowledged spans missing from activity_events"
    );
    assert!(tallies.acknowledged.len() as u64 >= 8 * SPANS);
}
