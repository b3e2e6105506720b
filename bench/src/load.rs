//! The load generator: concurrent OTLP clients (gRPC and HTTP/protobuf) or REST
//! ingest clients (JSON arrays to `POST /api/v1/events`), closed
//! loop at full speed or paced to a target rate, recording each request's
//! acknowledgement latency.

use std::time::{Duration, Instant};

use anyhow::Context;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::workload;

/// Which OTLP transport the clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Grpc,
    Http,
    /// REST ingest, `POST /api/v1/events` on the OTLP/HTTP port (JSON arrays).
    Rest,
}

/// What one load run offers.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub transport: Transport,
    pub connections: usize,
    pub records_per_request: usize,
    pub duration: Duration,
    /// Total records per second to offer; `None` = as fast as acknowledged.
    pub target_rate: Option<f64>,
    /// An ingest API key every request carries (`Authorization: Bearer …`).
    pub api_key: Option<String>,
    /// Paced runs only: spread the clients' first requests evenly over one
    /// period, so the offered load arrives at an even rate. Without it every
    /// client starts at once and they stay in step: each period opens with a
    /// burst of one request per connection.
    pub stagger: bool,
}

/// What one load run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub accepted_records: u64,
    pub refused_requests: u64,
    pub latencies_us: Vec<u64>,
    pub elapsed: Duration,
}

impl LoadResult {
    pub fn records_per_second(&self) -> f64 {
        self.accepted_records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of acknowledgement latency, in milliseconds.
    pub fn latency_ms(&mut self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let index = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        self.latencies_us[index] as f64 / 1000.0
    }
}

enum Client {
    Grpc {
        traces: Box<TraceServiceClient<Channel>>,
        logs: Box<LogsServiceClient<Channel>>,
        authorization: Option<MetadataValue<Ascii>>,
    },
    Http {
        client: reqwest::Client,
        traces_url: String,
        logs_url: String,
        authorization: Option<String>,
    },
    Rest {
        client: reqwest::Client,
        url: String,
        authorization: Option<String>,
    },
}

impl Client {
    async fn connect(
        transport: Transport,
        grpc: &str,
        http: &str,
        api_key: Option<&str>,
    ) -> anyhow::Result<Client> {
        let authorization = api_key.map(|key| format!("Bearer {key}"));
        Ok(match transport {
            Transport::Grpc => {
                let channel = Channel::from_shared(grpc.to_string())?
                    .connect()
                    .await
                    .context("connecting to the OTLP gRPC receiver")?;
                Client::Grpc {
                    traces: Box::new(TraceServiceClient::new(channel.clone())),
                    logs: Box::new(LogsServiceClient::new(channel)),
                    authorization: authorization
                        .map(|value| value.parse())
                        .transpose()
                        .context("the API key is not a valid header value")?,
                }
            }
            Transport::Http => Client::Http {
                client: reqwest::Client::new(),
                traces_url: format!("{http}/v1/traces"),
                logs_url: format!("{http}/v1/logs"),
                authorization,
            },
            Transport::Rest => Client::Rest {
                client: reqwest::Client::new(),
                url: format!("{http}/api/v1/events"),
                authorization,
            },
        })
    }

    /// Sends one request (every fourth carries log records); true when acknowledged.
    async fn send(&mut self, request_number: u64, records: usize) -> bool {
        let logs = request_number % 4 == 3;
        match self {
            Client::Grpc {
                traces,
                logs: log_client,
                authorization,
            } => {
                if logs {
                    let request = authorized(workload::logs(records), authorization);
                    log_client.export(request).await.is_ok()
                } else {
                    let request = authorized(workload::traces(records), authorization);
                    traces.export(request).await.is_ok()
                }
            }
            Client::Http {
                client,
                traces_url,
                logs_url,
                authorization,
            } => {
                let (url, body) = if logs {
                    (&*logs_url, workload::logs(records).encode_to_vec())
                } else {
                    (&*traces_url, workload::traces(records).encode_to_vec())
                };
                let mut post = client
                    .post(url)
                    .header("content-type", "application/x-protobuf");
                if let Some(value) = authorization.as_deref() {
                    post = post.header("authorization", value);
                }
                post.body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
            Client::Rest {
                client,
                url,
                authorization,
            } => {
                let mut post = client
                    .post(url.as_str())
                    .header("content-type", "application/json");
                if let Some(value) = authorization.as_deref() {
                    post = post.header("authorization", value);
                }
                post.body(workload::rest_events(records))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        }
    }
}

/// A gRPC request for `body`, carrying `authorization` when there is one.
fn authorized<T>(body: T, authorization: &Option<MetadataValue<Ascii>>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    if let Some(value) = authorization.clone() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Runs `plan` against the receivers at `grpc` / `http` (base URLs).
pub async fn run(plan: &LoadPlan, grpc: &str, http: &str) -> anyhow::Result<LoadResult> {
    let mut tasks = Vec::with_capacity(plan.connections);
    let started = Instant::now();
    let deadline = started + plan.duration;
    let per_client_interval = plan.target_rate.map(|rate| {
        let requests_per_second = rate / plan.records_per_request as f64 / plan.connections as f64;
        Duration::from_secs_f64(1.0 / requests_per_second.max(1e-3))
    });
    let mut clients = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        clients.push(Client::connect(plan.transport, grpc, http, plan.api_key.as_deref()).await?);
    }
    // Every client connected before the first is paced, so their phases hold.
    let paced_from = tokio::time::Instant::now();
    for (id, mut client) in clients.into_iter().enumerate() {
        let records = plan.records_per_request;
        let phase = match per_client_interval {
            Some(period) if plan.stagger => period.mul_f64(id as f64 / plan.connections as f64),
            _ => Duration::ZERO,
        };
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            let mut ticker = per_client_interval.map(|period| {
                let mut ticker = tokio::time::interval_at(paced_from + phase, period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker
            });
            let mut n = id as u64;
            while Instant::now() < deadline {
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                }
                let sent = Instant::now();
                if client.send(n, records).await {
                    result.accepted_records += records as u64;
                    result.latencies_us.push(sent.elapsed().as_micros() as u64);
                } else {
                    result.refused_requests += 1;
                }
                n += 1;
            }
            result
        }));
    }
    let mut total = LoadResult::default();
    for task in tasks {
        let part = task.await.context("load client task")?;
        total.accepted_records += part.accepted_records;
        total.refused_requests += part.refused_requests;
        total.latencies_us.extend(part.latencies_us);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}
