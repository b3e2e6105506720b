//! Ingest credentials at the receiver: where keys are read (HTTP headers, gRPC
//! metadata), what a refusal looks like on each transport, and the sender the
//! consumer gets. The key store is a stand-in here; the real one is tested
//! end to end in the workspace's `tests/e2e_security_ingest.rs`.

mod common;

use std::sync::Arc;

use common::*;
use futures::future::BoxFuture;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tally_model::pipeline::Sender;
use tally_receiver::{AuthFailure, IngestAuthenticator, KeyRefusal};

const GOOD: &str = "tally_good";
const REVOKED: &str = "tally_revoked";
const DOWN: &str = "tally_database_down";

/// Accepts `GOOD` (bound to `acme`), refuses the rest.
struct Keys;

impl IngestAuthenticator for Keys {
    fn authenticate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Sender, AuthFailure>> {
        Box::pin(async move {
            match key {
                GOOD => Ok(Sender {
                    key_id: Some(uuid_of(7)),
                    tenant: Some(Arc::from("acme")),
                }),
                REVOKED => Err(AuthFailure::Refused(KeyRefusal::Revoked)),
                DOWN => Err(AuthFailure::Unavailable("database down".into())),
                _ => Err(AuthFailure::Refused(KeyRefusal::Unknown)),
            }
        })
    }
}

fn uuid_of(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

async fn start(required: bool) -> Running {
    let mut config = config();
    config.auth.required = required;
    start_authenticated(config, Some(Arc::new(Keys))).await
}

async fn post(running: &Running, header: Option<(&str, &str)>) -> reqwest::Response {
    let mut call = reqwest::Client::new()
        .post(running.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(traces(vec![span("auth.login")]).encode_to_vec());
    if let Some((name, value)) = header {
        call = call.header(name, value);
    }
    call.send().await.expect("POST")
}

async fn message(response: reqwest::Response) -> String {
    let body = response.bytes().await.expect("body");
    tonic_types::Status::decode(&body[..])
        .expect("google.rpc.Status")
        .message
}

#[tokio::test]
async fn http_keys_bind_the_sender_and_refusals_say_why() {
    let running = start(true).await;
    let refused = post(&running, None).await;
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(
        refused
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    assert!(message(refused).await.contains("required"));
    let refused = post(&running, Some(("x-api-key", REVOKED))).await;
    assert_eq!(refused.status().as_u16(), 401);
    assert!(message(refused).await.contains("revoked"));
    let refused = post(&running, Some(("authorization", "Bearer tally_guess"))).await;
    assert_eq!(refused.status().as_u16(), 401);
    assert!(message(refused).await.contains("unknown API key"));
    let busy = post(&running, Some(("x-api-key", DOWN))).await;
    assert_eq!(busy.status().as_u16(), 503);
    assert!(busy.headers().get("retry-after").is_some());
    assert_eq!(
        running.recorder.calls(),
        0,
        "nothing refused reached the consumer"
    );

    let accepted = post(&running, Some(("authorization", &format!("Bearer {GOOD}")))).await;
    assert_eq!(accepted.status().as_u16(), 200);
    let accepted = post(&running, Some(("x-api-key", GOOD))).await;
    assert_eq!(accepted.status().as_u16(), 200);
    let expected = Sender {
        key_id: Some(uuid_of(7)),
        tenant: Some(Arc::from("acme")),
    };
    assert_eq!(running.recorder.senders(), vec![expected.clone(), expected]);
}

#[tokio::test]
async fn without_required_keys_anonymous_requests_pass_and_bad_keys_do_not() {
    let running = start(false).await;
    assert_eq!(post(&running, None).await.status().as_u16(), 200);
    // Another scheme is meant for something else (a proxy): ignored.
    let other = post(&running, Some(("authorization", "Basic dXNlcjpwdw=="))).await;
    assert_eq!(other.status().as_u16(), 200);
    assert_eq!(
        post(&running, Some(("x-api-key", "tally_guess")))
            .await
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        running.recorder.senders(),
        vec![Sender::anonymous(), Sender::anonymous()]
    );
}

#[tokio::test]
async fn grpc_metadata_carries_the_key() {
    let running = start(true).await;
    let mut client = TraceServiceClient::connect(running.grpc_url())
        .await
        .expect("connect");
    let status = client
        .export(traces(vec![span("auth.login")]))
        .await
        .expect_err("no key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("required"), "{status:?}");
    let mut call = tonic::Request::new(traces(vec![span("auth.login")]));
    call.metadata_mut()
        .insert("x-api-key", REVOKED.parse().expect("metadata"));
    let status = client.export(call).await.expect_err("revoked");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("revoked"), "{status:?}");
    let mut call = tonic::Request::new(traces(vec![span("auth.login")]));
    call.metadata_mut()
        .insert("x-api-key", DOWN.parse().expect("metadata"));
    let status = client.export(call).await.expect_err("unavailable");
    assert_eq!(status.code(), tonic::Code::Unavailable);

    let mut call = tonic::Request::new(traces(vec![span("auth.login")]));
    call.metadata_mut().insert(
        "authorization",
        format!("Bearer {GOOD}").parse().expect("metadata"),
    );
    client.export(call).await.expect("accepted");
    assert_eq!(
        running.recorder.senders(),
        vec![Sender {
            key_id: Some(uuid_of(7)),
            tenant: Some(Arc::from("acme")),
        }]
    );
}

/// Metrics go through the same credential check on both transports: refused
/// without a key when keys are required, bound to the key's tenant with one.
#[tokio::test]
async fn metrics_exports_need_the_same_keys() {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    };
    let request = || ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "g".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint::default()],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let running = start(true).await;
    let send = |key: Option<&'static str>| {
        let mut call = reqwest::Client::new()
            .post(running.url("/v1/metrics"))
            .header("content-type", "application/x-protobuf")
            .body(request().encode_to_vec());
        if let Some(key) = key {
            call = call.header("x-api-key", key);
        }
        call.send()
    };
    let refused = send(None).await.expect("POST");
    assert_eq!(refused.status().as_u16(), 401);
    assert!(message(refused).await.contains("required"));
    assert_eq!(
        send(Some(REVOKED)).await.expect("POST").status().as_u16(),
        401
    );
    assert_eq!(send(Some(DOWN)).await.expect("POST").status().as_u16(), 503);
    assert_eq!(running.recorder.calls(), 0);
    assert_eq!(send(Some(GOOD)).await.expect("POST").status().as_u16(), 200);

    let mut client = MetricsServiceClient::connect(running.grpc_url())
        .await
        .expect("connect");
    let status = client.export(request()).await.expect_err("no key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let mut call = tonic::Request::new(request());
    call.metadata_mut().insert(
        "authorization",
        format!("Bearer {GOOD}").parse().expect("metadata"),
    );
    client.export(call).await.expect("accepted");
    let bound = Sender {
        key_id: Some(uuid_of(7)),
        tenant: Some(Arc::from("acme")),
    };
    assert_eq!(running.recorder.senders(), vec![bound.clone(), bound]);
    assert_eq!(running.recorder.metrics().len(), 2);
}
