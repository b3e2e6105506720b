//! OTLP metrics on both transports: `POST /v1/metrics` (protobuf, JSON, gzip,
//! limits, the error table) and gRPC `MetricsService/Export`, answered like
//! traces and logs.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{
    Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics,
};
use prost::Message;
use reqwest::StatusCode;
use serde_json::json;
use tonic::codec::CompressionEncoding;
use tonic::Code;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

fn metrics(points: usize, pad: usize) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "gen_ai.client.token.usage".into(),
                    data: Some(Data::Histogram(Histogram {
                        data_points: (0..points)
                            .map(|i| HistogramDataPoint {
                                attributes: vec![
                                    attr("gen_ai.token.type", Value::StringValue("input".into())),
                                    attr("pad", Value::StringValue("x".repeat(pad))),
                                ],
                                time_unix_nano: 1_000 + i as u64,
                                count: 1,
                                sum: Some(10.0),
                                ..Default::default()
                            })
                            .collect(),
                        aggregation_temporality: 2,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn post(
    running: &Running,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut request = reqwest::Client::new()
        .post(running.url("/v1/metrics"))
        .header("content-type", content_type)
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    (
        status,
        retry_after,
        response.bytes().await.expect("body").to_vec(),
    )
}

#[tokio::test]
async fn protobuf_gzip_and_json_bodies_reach_the_consumer() {
    let running = start().await;
    let body = metrics(3, 4).encode_to_vec();
    let (status, _, answer) = post(&running, PROTOBUF, None, body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ExportMetricsServiceResponse::decode(&answer[..]).expect("answer"),
        ExportMetricsServiceResponse::default()
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).expect("gzip");
    let (status, _, _) = post(&running, PROTOBUF, Some("gzip"), gz.finish().expect("gzip")).await;
    assert_eq!(status, StatusCode::OK);
    let json = json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{
        "name": "gen_ai.client.token.usage",
        "histogram": {"aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA", "dataPoints": [
            {"timeUnixNano": "1000", "count": "2", "sum": 20, "bucketCounts": ["1", "1"], "explicitBounds": [10]}
        ]}
    }]}]}]});
    let (status, _, answer) = post(&running, JSON, None, json.to_string().into_bytes()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let recorded = running.recorder.metrics();
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[0], metrics(3, 4));
    assert_eq!(recorded[1], metrics(3, 4));
    let Some(Data::Histogram(h)) =
        &recorded[2].resource_metrics[0].scope_metrics[0].metrics[0].data
    else {
        panic!("not a histogram: {:?}", recorded[2]);
    };
    assert_eq!(h.aggregation_temporality, 1);
    assert_eq!(h.data_points[0].count, 2);
    assert_eq!(h.data_points[0].bucket_counts, [1, 1]);
    // Data with a malformed field decodes to none: refused, never taken for an
    // empty metric.
    let bad = json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{
        "name": "gen_ai.client.token.usage",
        "histogram": {"aggregationTemporality": 2, "dataPoints": [
            {"timeUnixNano": "1000", "count": "two", "sum": 20}
        ]}
    }]}]}]});
    let (status, _, answer) = post(&running, JSON, None, bad.to_string().into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("json");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("malformed data"),
        "{answer}"
    );
    assert_eq!(running.recorder.metrics().len(), 3);
}

#[tokio::test]
async fn partial_success_names_rejected_data_points() {
    let running = start().await;
    running.recorder.set(Behaviour::Partial {
        rejected: 2,
        message: "2 data point(s) of metrics Tally does not store".into(),
    });
    let (status, _, answer) = post(&running, JSON, None, b"{\"resourceMetrics\": [{\"scopeMetrics\": [{\"metrics\": [{\"name\": \"x\", \"gauge\": {\"dataPoints\": [{\"asInt\": \"1\"}, {\"asDouble\": 2}]}}]}]}]}".to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("json");
    assert_eq!(answer["partialSuccess"]["rejectedDataPoints"], json!(2));
    let (status, _, answer) = post(&running, PROTOBUF, None, metrics(1, 1).encode_to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    let answer = ExportMetricsServiceResponse::decode(&answer[..]).expect("answer");
    assert_eq!(
        answer
            .partial_success
            .expect("partial")
            .rejected_data_points,
        2
    );
}

#[tokio::test]
async fn limits_and_backpressure_answer_as_for_traces() {
    let mut config = config();
    config.http.max_request_body_size = 1 << 20;
    let running = start_with(config).await;
    let (status, _, _) = post(
        &running,
        PROTOBUF,
        None,
        metrics(1, 2 << 20).encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _, _) = post(&running, "text/plain", None, b"x".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _, _) = post(&running, PROTOBUF, None, b"\x0a\x05ab".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(running.recorder.calls(), 0);

    let body = metrics(1, 1).encode_to_vec();
    running
        .recorder
        .set(Behaviour::Unavailable(Duration::from_secs(2)));
    let (status, retry_after, _) = post(&running, PROTOBUF, None, body.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after.as_deref(), Some("2"));
    running
        .recorder
        .set(Behaviour::Overloaded(Duration::from_secs(5)));
    let (status, retry_after, _) = post(&running, PROTOBUF, None, body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after.as_deref(), Some("5"));
}

#[tokio::test]
async fn grpc_metrics_service_export() {
    let running = start().await;
    let mut client = MetricsServiceClient::connect(running.grpc_url())
        .await
        .expect("connect")
        .send_compressed(CompressionEncoding::Gzip);
    let response = client.export(metrics(2, 8)).await.expect("export");
    assert_eq!(
        response.into_inner(),
        ExportMetricsServiceResponse::default()
    );
    assert_eq!(running.recorder.metrics(), [metrics(2, 8)]);

    running.recorder.set(Behaviour::Partial {
        rejected: 1,
        message: "1 data point(s) not stored".into(),
    });
    let response = client.export(metrics(1, 1)).await.expect("export");
    let partial = response.into_inner().partial_success.expect("partial");
    assert_eq!(partial.rejected_data_points, 1);

    running
        .recorder
        .set(Behaviour::Unavailable(Duration::from_secs(1)));
    let status = client.export(metrics(1, 1)).await.expect_err("unavailable");
    assert_eq!(status.code(), Code::Unavailable);

    // An exemplar with a 3-byte span id: INVALID_ARGUMENT naming the field.
    let mut bad = metrics(1, 1);
    if let Some(Data::Histogram(h)) = &mut bad.resource_metrics[0].scope_metrics[0].metrics[0].data
    {
        h.data_points[0]
            .exemplars
            .push(opentelemetry_proto::tonic::metrics::v1::Exemplar {
                span_id: vec![1; 3],
                ..Default::default()
            });
    }
    let status = client.export(bad).await.expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("exemplars[0].spanId"),
        "{}",
        status.message()
    );
}
