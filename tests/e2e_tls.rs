//! TLS and mutual TLS on the three listeners (OTLP gRPC, OTLP/HTTP, admin API),
//! with certificates generated for the test: a TLS client with the right
//! authority gets through (the real Rust OTLP SDK over gRPC among them), a
//! plaintext client does not, and under mutual TLS a client without a
//! certificate signed by `client_ca_file` is refused.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{eventually, Tally, TallyOptions, TestDatabase};
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry_otlp::{LogExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use serde_json::json;

/// A certificate authority and, signed by it, a server and a client certificate (PEM).
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        vec!["ingest-client".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    Pki {
        ca: ca.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

/// Writes the server's files into `dir`; returns the `tls` block for the config.
fn tls_block(pki: &Pki, dir: &Path, mutual: bool) -> String {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write PEM");
        path.display().to_string()
    };
    let cert = write("server.crt", &pki.server_cert);
    let key = write("server.key", &pki.server_key);
    let ca = write("ca.crt", &pki.ca);
    if mutual {
        format!("{{ cert_file: \"{cert}\", key_file: \"{key}\", client_ca_file: \"{ca}\" }}")
    } else {
        format!("{{ cert_file: \"{cert}\", key_file: \"{key}\" }}")
    }
}

/// A minimal HTTPS/1.0 client trusting the test CA (with the client certificate
/// if asked): the test's own, so that no HTTP client library brings a second
/// TLS stack into the workspace.
#[derive(Clone)]
struct Https {
    connector: tokio_rustls::TlsConnector,
}

impl Https {
    /// Sends one request; returns (status, body).
    async fn request(
        &self,
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = self.connector.connect(name, tcp).await?;
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(body).await?;
        tls.flush().await?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
            .await
            .map_err(|_| std::io::Error::other("no answer"))??;
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))?;
        let body = match answer.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(at) => answer[at + 4..].to_vec(),
            None => Vec::new(),
        };
        Ok((status, body))
    }
}

fn https_client(pki: &Pki, identity: bool) -> Https {
    #[allow(deprecated)] // the ring provider, as the server uses
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(pki.ca.as_bytes()).expect("CA");
    roots.add(ca).expect("add CA");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = if identity {
        let cert = rustls::pki_types::CertificateDer::from_pem_slice(pki.client_cert.as_bytes())
            .expect("client cert");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.client_key.as_bytes())
            .expect("client key");
        builder
            .with_client_auth_cert(vec![cert], key)
            .expect("client auth")
    } else {
        builder.with_no_client_auth()
    };
    Https {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
    }
}

fn log_body(tenant: &str) -> Vec<u8> {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    serde_json::to_vec(&json!({
      "resourceLogs": [{ "scopeLogs": [{ "logRecords": [{
        "timeUnixNano": t.to_string(),
        "eventName": "auth.login",
        "attributes": [
          { "key": "tenant.id", "value": { "stringValue": tenant } },
          { "key": "enduser.id", "value": { "stringValue": "tls-user" } }
        ]
      }]}]}]
    }))
    .expect("json")
}

async fn post_log(client: &Https, tally: &Tally, tenant: &str) -> std::io::Result<u16> {
    client
        .request(tally.http, "POST", "/v1/logs", &log_body(tenant))
        .await
        .map(|(status, _)| status)
}

/// The number of activity rows of `tenant`, read over the admin API with `client`.
async fn activity_count(client: &Https, tally: &Tally, tenant: &str) -> Option<usize> {
    let path = format!("/api/v1/activity?tenant={tenant}");
    let (status, body) = client.request(tally.admin, "GET", &path, b"").await.ok()?;
    if status != 200 {
        return None;
    }
    let body: serde_json::Value = serde_json::from_slice(&body).ok()?;
    body["items"].as_array().map(Vec::len)
}

/// Exports one log record with the real OTLP SDK over gRPC + TLS.
fn sdk_export(pki: &Pki, endpoint: String, tenant: &str, identity: bool) -> Result<(), String> {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            &pki.client_cert,
            &pki.client_key,
        ));
    }
    let exporter = LogExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .with_tls_config(tls)
        .build()
        .map_err(|e| e.to_string())?;
    let provider = SdkLoggerProvider::builder()
        .with_simple_exporter(exporter)
        .build();
    let logger = provider.logger("e2e-tls");
    let mut record = logger.create_log_record();
    record.set_event_name("doc.view");
    record.set_timestamp(SystemTime::now());
    record.set_severity_number(Severity::Info);
    record.add_attribute("tenant.id", tenant.to_string());
    record.add_attribute("enduser.id", "sdk-user");
    logger.emit(record);
    let flushed = provider.force_flush().map_err(|e| e.to_string());
    let _ = provider.shutdown();
    flushed
}

/// One gRPC export call (an empty request) with tonic's own client.
async fn grpc_call(
    url: String,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<(), String> {
    use opentelemetry_proto::tonic::collector::logs::v1::{
        logs_service_client::LogsServiceClient, ExportLogsServiceRequest,
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    LogsServiceClient::new(channel)
        .export(ExportLogsServiceRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

fn grpc_tls(pki: &Pki, identity: bool) -> tonic::transport::ClientTlsConfig {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if identity {
        tls.identity(tonic::transport::Identity::from_pem(
            &pki.client_cert,
            &pki.client_key,
        ))
    } else {
        tls
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_on_all_three_listeners_and_plaintext_refused() {
    let database = TestDatabase::create().await;
    let pki = Arc::new(pki());
    let dir = tempfile::tempdir().expect("dir");
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        tls: Some(tls_block(&pki, dir.path(), false)),
        ..Default::default()
    })
    .await;
    let client = https_client(&pki, false);

    // OTLP/HTTP over TLS.
    assert_eq!(
        post_log(&client, &tally, "t-tls-http").await.ok(),
        Some(200)
    );
    // OTLP gRPC over TLS, with the real SDK.
    let endpoint = format!("https://{}", tally.grpc);
    let sdk_pki = pki.clone();
    tokio::task::spawn_blocking(move || sdk_export(&sdk_pki, endpoint, "t-tls-grpc", false))
        .await
        .expect("sdk thread")
        .expect("the SDK exports over TLS");
    // The admin API over TLS shows both.
    for tenant in ["t-tls-http", "t-tls-grpc"] {
        eventually(Duration::from_secs(20), tenant, || async {
            activity_count(&client, &tally, tenant)
                .await
                .filter(|n| *n == 1)
        })
        .await;
    }

    // Plaintext is refused on every listener.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let plain_http = plain
        .post(tally.http_url("/v1/logs"))
        .header("content-type", "application/json")
        .body(log_body("t-plain"))
        .send()
        .await;
    assert!(plain_http.is_err(), "plaintext OTLP/HTTP: {plain_http:?}");
    let plain_admin = plain.get(tally.api_url("/api/v1/activity")).send().await;
    assert!(plain_admin.is_err(), "plaintext admin API: {plain_admin:?}");
    let plain_grpc = grpc_call(tally.grpc_url(), None).await;
    assert!(plain_grpc.is_err(), "plaintext gRPC call: {plain_grpc:?}");
    // The same call over TLS goes through (the refusal above is the plaintext's).
    let tls_grpc = grpc_call(
        format!("https://{}", tally.grpc),
        Some(grpc_tls(&pki, false)),
    )
    .await;
    assert_eq!(tls_grpc, Ok(()));
    assert_eq!(
        activity_count(&client, &tally, "t-plain").await,
        Some(0),
        "nothing came in over plaintext"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_requires_a_client_certificate_on_all_three_listeners() {
    let database = TestDatabase::create().await;
    let pki = Arc::new(pki());
    let dir = tempfile::tempdir().expect("dir");
    let tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        tls: Some(tls_block(&pki, dir.path(), true)),
        ..Default::default()
    })
    .await;
    let with_cert = https_client(&pki, true);
    let without_cert = https_client(&pki, false);
    assert_eq!(
        post_log(&with_cert, &tally, "t-mtls-http").await.ok(),
        Some(200)
    );
    let refused = post_log(&without_cert, &tally, "t-mtls-anon").await;
    assert!(
        refused.is_err(),
        "OTLP/HTTP without a client cert: {refused:?}"
    );

    let endpoint = format!("https://{}", tally.grpc);
    let sdk_pki = pki.clone();
    let grpc_url = endpoint.clone();
    tokio::task::spawn_blocking(move || sdk_export(&sdk_pki, endpoint, "t-mtls-grpc", true))
        .await
        .expect("sdk thread")
        .expect("the SDK with a client certificate exports");
    let refused = grpc_call(grpc_url.clone(), Some(grpc_tls(&pki, false))).await;
    assert!(refused.is_err(), "gRPC without a client cert: {refused:?}");
    assert_eq!(
        grpc_call(grpc_url, Some(grpc_tls(&pki, true))).await,
        Ok(())
    );

    for tenant in ["t-mtls-http", "t-mtls-grpc"] {
        eventually(Duration::from_secs(20), tenant, || async {
            activity_count(&with_cert, &tally, tenant)
                .await
                .filter(|n| *n == 1)
        })
        .await;
    }
    assert_eq!(
        activity_count(&with_cert, &tally, "t-mtls-anon").await,
        Some(0)
    );
    assert_eq!(
        activity_count(&without_cert, &tally, "t-mtls-http").await,
        None,
        "the admin API refuses a client without a certificate"
    );
}
