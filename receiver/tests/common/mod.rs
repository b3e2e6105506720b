//! Test harness: a recording [`Consumer`] and a receiver on free ports.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tally_config::OtlpReceiverConfig;
use tally_model::pipeline::{ConsumeError, ConsumeReport, Consumer, Sender};
use tally_receiver::{OtlpReceiver, ReceiverError};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

/// What the consumer answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    Accept,
    Partial { rejected: u64, message: String },
    Overloaded(Duration),
    Unavailable(Duration),
    Invalid(String),
}

#[derive(Default)]
struct State {
    traces: Vec<ExportTraceServiceRequest>,
    logs: Vec<ExportLogsServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    senders: Vec<Sender>,
    behaviour: Option<Behaviour>,
}

/// Records every request it gets; answers per [`Behaviour`]. With a gate, each call
/// announces itself on `entered` and waits for `release` before answering.
#[derive(Clone, Default)]
pub struct Recorder {
    state: Arc<Mutex<State>>,
    gate: Arc<Mutex<Option<Gate>>>,
}

struct Gate {
    entered: Option<oneshot::Sender<()>>,
    release: Arc<Notify>,
}

impl Recorder {
    pub fn set(&self, behaviour: Behaviour) {
        self.state.lock().unwrap().behaviour = Some(behaviour);
    }

    pub fn traces(&self) -> Vec<ExportTraceServiceRequest> {
        self.state.lock().unwrap().traces.clone()
    }

    pub fn logs(&self) -> Vec<ExportLogsServiceRequest> {
        self.state.lock().unwrap().logs.clone()
    }

    pub fn metrics(&self) -> Vec<ExportMetricsServiceRequest> {
        self.state.lock().unwrap().metrics.clone()
    }

    /// The sender of every call, in order.
    pub fn senders(&self) -> Vec<Sender> {
        self.state.lock().unwrap().senders.clone()
    }

    pub fn calls(&self) -> usize {
        let state = self.state.lock().unwrap();
        state.traces.len() + state.logs.len() + state.metrics.len()
    }

    /// Makes the next call wait: returns (a receiver resolved when the call arrives, a
    /// notify that lets it finish).
    pub fn hold(&self) -> (oneshot::Receiver<()>, Arc<Notify>) {
        let (entered, rx) = oneshot::channel();
        let release = Arc::new(Notify::new());
        *self.gate.lock().unwrap() = Some(Gate {
            entered: Some(entered),
            release: release.clone(),
        });
        (rx, release)
    }

    /// Ends [`hold`](Self::hold): held calls and later ones answer at once (a call
    /// that entered but is not waiting yet gets the stored `notify_one` permit).
    pub fn open(&self) {
        if let Some(gate) = self.gate.lock().unwrap().take() {
            gate.release.notify_waiters();
            gate.release.notify_one();
        }
    }

    fn answer(&self) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let behaviour = self
            .state
            .lock()
            .unwrap()
            .behaviour
            .clone()
            .unwrap_or(Behaviour::Accept);
        let gate = self.gate.lock().unwrap().as_mut().map(|gate| {
            if let Some(entered) = gate.entered.take() {
                let _ = entered.send(());
            }
            gate.release.clone()
        });
        async move {
            if let Some(release) = gate {
                release.notified().await;
            }
            match behaviour {
                Behaviour::Accept => Ok(ConsumeReport::default()),
                Behaviour::Partial { rejected, message } => Ok(ConsumeReport {
                    rejected,
                    message,
                    quarantined: Vec::new(),
                }),
                Behaviour::Overloaded(retry_after) => Err(ConsumeError::Overloaded { retry_after }),
                Behaviour::Unavailable(retry_after) => Err(ConsumeError::Unavailable {
                    reason: "database down".into(),
                    retry_after,
                }),
                Behaviour::Invalid(message) => Err(ConsumeError::Invalid(message)),
            }
        }
        .boxed()
    }
}

impl Consumer for Recorder {
    fn consume_traces(
        &self,
        request: ExportTraceServiceRequest,
        sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let mut state = self.state.lock().unwrap();
        state.traces.push(request);
        state.senders.push(sender);
        drop(state);
        self.answer()
    }

    fn consume_logs(
        &self,
        request: ExportLogsServiceRequest,
        sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let mut state = self.state.lock().unwrap();
        state.logs.push(request);
        state.senders.push(sender);
        drop(state);
        self.answer()
    }

    fn consume_metrics(
        &self,
        request: ExportMetricsServiceRequest,
        sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let mut state = self.state.lock().unwrap();
        state.metrics.push(request);
        state.senders.push(sender);
        drop(state);
        self.answer()
    }
}

/// A running receiver on free loopback ports.
pub struct Running {
    pub recorder: Recorder,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), ReceiverError>>>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Signals shutdown (serving goes on until in-flight requests are answered).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> Result<(), ReceiverError> {
        self.shutdown();
        let task = self.task.take().expect("running");
        task.await.expect("serve panicked")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Config with both listeners on port 0 of 127.0.0.1.
pub fn config() -> OtlpReceiverConfig {
    let mut config = OtlpReceiverConfig::default();
    config.grpc.endpoint = "127.0.0.1:0".parse().unwrap();
    config.http.endpoint = "127.0.0.1:0".parse().unwrap();
    config
}

pub async fn start() -> Running {
    start_with(config()).await
}

pub async fn start_with(config: OtlpReceiverConfig) -> Running {
    start_authenticated(config, None).await
}

/// [`start_with`] checking presented keys with `authenticator`.
pub async fn start_authenticated(
    config: OtlpReceiverConfig,
    authenticator: Option<Arc<dyn tally_receiver::IngestAuthenticator>>,
) -> Running {
    let recorder = Recorder::default();
    let mut receiver = OtlpReceiver::bind(&config, Arc::new(recorder.clone()))
        .await
        .expect("bind");
    if let Some(authenticator) = authenticator {
        receiver = receiver.with_authenticator(authenticator);
    }
    let grpc = receiver.grpc_addr().expect("grpc enabled");
    let http = receiver.http_addr().expect("http enabled");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(receiver.serve(async move {
        let _ = rx.await;
    }));
    Running {
        recorder,
        grpc,
        http,
        shutdown: Some(tx),
        task: Some(task),
    }
}

pub fn attr(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub fn span(name: &str) -> Span {
    Span {
        trace_id: vec![0x5b; 16],
        span_id: vec![0xee; 8],
        name: name.into(),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_001_000_000_000,
        attributes: vec![attr("user.id", any_value::Value::StringValue("u-1".into()))],
        ..Default::default()
    }
}

pub fn traces(spans: Vec<Span>) -> ExportTraceServiceRequest {
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

pub fn logs(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn log_record(body: &str) -> LogRecord {
    LogRecord {
        time_unix_nano: 1_700_000_000_000_000_000,
        severity_number: 9,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body.into())),
        }),
        trace_id: vec![0x5b; 16],
        span_id: vec![0xee; 8],
        ..Default::default()
    }
}

/// Returns once `addr` refuses TCP connections (the listener is closed). Each attempt is a
/// round trip to the kernel; gives up after 10 s.
pub async fn wait_until_refused(addr: SocketAddr) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("listener still open 10 s after shutdown");
}
