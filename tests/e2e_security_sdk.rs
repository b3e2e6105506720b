//! Real SDKs authenticate with their standard setting, no code change:
//! `OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20tally_…`. The Rust
//! `opentelemetry-otlp` exporter (gRPC and HTTP/protobuf) and the Python SDK's
//! OTLP/HTTP exporter each write spans that name no tenant to a Tally that
//! requires ingest keys; the rows carry the tenant of the key they sent.
//!
//! One test in this file: it sets an environment variable of the test process,
//! which the Rust exporters read when they are built.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{create_api_key, eventually, Tally, TallyOptions, TestDatabase};
use opentelemetry::trace::{Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The header setting as an operator writes it (the value percent-encoded).
fn headers_setting(key: &str) -> String {
    format!("authorization=Bearer%20{key}")
}

/// Emits one span with `action` (and no tenant) through `exporter`.
fn emit(exporter: SpanExporter, action: &str) {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .build();
    let tracer = provider.tracer("sdk-auth");
    let span = tracer
        .span_builder(action.to_owned())
        .with_attributes([KeyValue::new("activity.action", action.to_owned())])
        .start(&tracer);
    drop(span);
    // A simple exporter exports as the span ends; shutdown waits for it.
    provider.shutdown().expect("shut the tracer provider down");
}

async fn tenants_of(database: &TestDatabase, action: &str) -> Vec<String> {
    database
        .client()
        .await
        .query(
            "SELECT tenant_id FROM activity_events WHERE action = $1",
            &[&action],
        )
        .await
        .expect("query")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// A virtual environment with the Python SDK and its OTLP/HTTP exporter (made
/// once under the target folder).
fn python_sdk() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-otel");
    let python = venv.join("bin").join("python");
    let ready = Command::new(&python)
        .args([
            "-c",
            "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http",
        ])
        .status()
        .is_ok_and(|status| status.success());
    if !ready {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv (is python3 installed?)");
        assert!(status.success(), "cannot create {}", venv.display());
        let status = Command::new(venv.join("bin").join("pip"))
            .args([
                "install",
                "--quiet",
                "opentelemetry-sdk",
                "opentelemetry-exporter-otlp-proto-http",
            ])
            .status()
            .expect("pip install");
        assert!(status.success(), "cannot install the Python SDK");
    }
    python
}

const PYTHON_APP: &str = r#"
import sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

# The exporter's settings come from the standard OTEL_EXPORTER_OTLP_* variables only.
exporter = OTLPSpanExporter()
results = []
class Recording(SimpleSpanProcessor):
    def on_end(self, span):
        results.append(exporter.export([span]))
provider = TracerProvider()
provider.add_span_processor(Recording(exporter))
tracer = provider.get_tracer("sdk-auth")
with tracer.start_as_current_span("python") as span:
    span.set_attribute("activity.action", sys.argv[1])
provider.shutdown()
print(results)
sys.exit(0 if results and all(r.name == "SUCCESS" for r in results) else 1)
"#;

fn run_python(python: &Path, traces_url: &str, headers: Option<&str>, action: &str) -> bool {
    let mut command = Command::new(python);
    command
        .args(["-c", PYTHON_APP, action])
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_url)
        .env("OTEL_BSP_SCHEDULE_DELAY", "10");
    match headers {
        Some(headers) => command.env("OTEL_EXPORTER_OTLP_HEADERS", headers),
        None => command.env_remove("OTEL_EXPORTER_OTLP_HEADERS"),
    };
    command.status().expect("run python").success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sdks_authenticate_with_otel_exporter_otlp_headers() {
    let database = TestDatabase::create().await;
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        ingest_auth_required: true,
        ..Default::default()
    })
    .await;
    let (rust_key, _) = create_api_key(&database.url, "sdk-rust", "ingest");
    let (python_key, _) = create_api_key(&database.url, "sdk-python", "ingest");

    // Rust, gRPC and HTTP/protobuf: the exporters read the variable when built.
    std::env::set_var("OTEL_EXPORTER_OTLP_HEADERS", headers_setting(&rust_key));
    let grpc = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(tally.grpc_url())
        .with_timeout(Duration::from_secs(10))
        .build()
        .expect("gRPC span exporter");
    let http = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(tally.http_url("/v1/traces"))
        .build()
        .expect("HTTP span exporter");
    std::env::remove_var("OTEL_EXPORTER_OTLP_HEADERS");
    tokio::task::spawn_blocking(move || {
        emit(grpc, "sdk.rust.grpc");
        emit(http, "sdk.rust.http");
    })
    .await
    .expect("emit");
    for action in ["sdk.rust.grpc", "sdk.rust.http"] {
        let tenants = eventually(Duration::from_secs(30), action, || async {
            let tenants = tenants_of(&database, action).await;
            (!tenants.is_empty()).then_some(tenants)
        })
        .await;
        assert_eq!(tenants, vec!["sdk-rust".to_owned()], "{action}");
    }

    // Python, OTLP/HTTP: refused without the variable, accepted with it.
    let python = tokio::task::spawn_blocking(python_sdk)
        .await
        .expect("python SDK");
    let traces_url = tally.http_url("/v1/traces");
    let headers = headers_setting(&python_key);
    let (python_ok, python_refused) = tokio::task::spawn_blocking(move || {
        let refused = run_python(&python, &traces_url, None, "sdk.python.anonymous");
        let ok = run_python(&python, &traces_url, Some(&headers), "sdk.python");
        (ok, refused)
    })
    .await
    .expect("python runs");
    assert!(!python_refused, "an export without a key was accepted");
    assert!(python_ok, "the Python SDK's export with the key failed");
    assert_eq!(
        tenants_of(&database, "sdk.python").await,
        vec!["sdk-python".to_owned()]
    );
    assert!(tenants_of(&database, "sdk.python.anonymous")
        .await
        .is_empty());
}
