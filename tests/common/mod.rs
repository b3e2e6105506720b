//! Shared harness for the end-to-end tests: runs the real `tally` binary against
//! a real PostgreSQL and talks to it over its public interfaces only.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use tally_exporters::testing::TestDatabase;

/// How long a Tally process may take to report ready (a private PostgreSQL may need initdb).
const READY_DEADLINE: Duration = Duration::from_secs(90);

/// Settings for one Tally process; anything unset takes the built-in default.
#[derive(Default, Clone)]
pub struct TallyOptions {
    /// `exporters.postgres.url`; `None` = zero-set-up mode (private PostgreSQL).
    pub database_url: Option<String>,
    /// `exporters.postgres.read_url` (a hot standby for the admin API's reads).
    pub read_url: Option<String>,
    /// `exporters.postgres.data_dir` (zero-set-up mode).
    pub data_dir: Option<PathBuf>,
    /// `admin_api.auth.jwt.hs256_secret`.
    pub jwt_secret: Option<String>,
    /// `receivers.otlp.http.max_request_body_size` and the gRPC limit in MiB.
    pub max_body_mib: Option<usize>,
    /// `exporters.postgres.queue_capacity_records`.
    pub queue_capacity: Option<usize>,
    /// `receivers.otlp.max_in_flight_bytes`.
    pub max_in_flight_bytes: Option<usize>,
    /// `receivers.otlp.grpc.endpoint` (default `127.0.0.1:0`); set it to restart on the
    /// address a killed Tally had, so that its clients' retries reach the new one.
    pub grpc_endpoint: Option<SocketAddr>,
    /// `receivers.otlp.http.endpoint` (default `127.0.0.1:0`).
    pub http_endpoint: Option<SocketAddr>,
    /// `admin_api.endpoint` (default `127.0.0.1:0`); set it to restart where a browser's page was.
    pub admin_endpoint: Option<SocketAddr>,
    /// `processors.validate.mode` (`strict`, `lenient`, `off`).
    pub validate_mode: Option<&'static str>,
    /// `processors.validate.taxonomy` (a registry file).
    pub taxonomy: Option<PathBuf>,
    /// `exporters.prometheus.action_label_cap`.
    pub action_label_cap: Option<usize>,
    /// `admin_api.limits.max_streams_per_caller` (every test client shares one IP).
    pub max_streams_per_caller: Option<usize>,
    /// Extra environment variables for the process.
    pub env: Vec<(String, String)>,
    /// `admin_api.sse_max_clients`.
    pub sse_max_clients: Option<usize>,
    /// A `tls` block (flow YAML, e.g. `{ cert_file: …, key_file: … }`) put on the
    /// gRPC and HTTP receivers and the admin API alike.
    pub tls: Option<String>,
    /// `processors.redact.hmac_key` (unset: generated and kept in the database).
    pub hmac_key: Option<String>,
    /// `receivers.otlp.auth.required`.
    pub ingest_auth_required: bool,
    /// `receivers.otlp.allow_unauthenticated`.
    pub allow_unauthenticated: bool,
    /// An `exporters.postgres.tamper_evidence` block (flow YAML, e.g.
    /// `{ checkpoint_interval_secs: 0, checkpoint_dir: "…" }`).
    pub tamper_evidence: Option<String>,
    /// `receivers.otlp.http.events_rate_limit` as a YAML flow block
    /// (`{ per_second: 1, burst: 2 }`).
    pub events_rate_limit: Option<String>,
    /// `exporters.prometheus.tenant_label`.
    pub tenant_label: bool,
    /// The `budgets` list, as flow YAML (`[{ name: …, … }]`).
    pub budgets: Option<String>,
}

/// A running `tally` process; killed on drop if still running.
pub struct Tally {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: Option<SocketAddr>,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    _dir: tempfile::TempDir,
}

impl Tally {
    /// Starts Tally on free ports with the given options and waits until it is ready.
    pub fn start(options: TallyOptions) -> Tally {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("tally.yaml");
        std::fs::write(&config_path, config_yaml(&options)).expect("write config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
        command
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env_remove("TALLY_DATABASE_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn tally");
        let stderr = child.stderr.take().expect("stderr piped");
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TALLY_TEST_ECHO").is_some() {
                    eprintln!("[tally] {line}");
                }
                let (lines, changed) = &*sink;
                lines.lock().expect("log lock").push(line);
                changed.notify_all();
            }
            let (_, changed) = &*sink;
            changed.notify_all();
        });
        let mut tally = Tally {
            child,
            grpc: "0.0.0.0:0".parse().expect("addr"),
            http: "0.0.0.0:0".parse().expect("addr"),
            admin: "0.0.0.0:0".parse().expect("addr"),
            metrics: None,
            log,
            _dir: dir,
        };
        let ready = tally
            .wait_for_log("tally is ready", READY_DEADLINE)
            .unwrap_or_else(|| panic!("tally did not become ready:\n{}", tally.log_text()));
        tally.grpc = field(&ready, "grpc");
        tally.http = field(&ready, "http");
        tally.admin = field(&ready, "admin");
        tally.metrics = optional_field(&ready, "metrics");
        tally
    }

    /// [`Tally::start`] from async code (starting blocks until Tally is ready).
    pub async fn launch(options: TallyOptions) -> Tally {
        tokio::task::spawn_blocking(move || Tally::start(options))
            .await
            .expect("start tally")
    }

    /// Launches Tally on `database` with otherwise default options.
    pub async fn on(database: &TestDatabase) -> Tally {
        Tally::launch(TallyOptions {
            database_url: Some(database.url.clone()),
            ..Default::default()
        })
        .await
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_for_log(&mut self, needle: &str, deadline: Duration) -> Option<String> {
        let end = Instant::now() + deadline;
        let (lines, changed) = &*self.log;
        let mut guard = lines.lock().expect("log lock");
        loop {
            if let Some(line) = guard.iter().find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return None;
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            let wait = (end - now).min(Duration::from_millis(200));
            guard = changed.wait_timeout(guard, wait).expect("log lock").0;
        }
    }

    /// Everything Tally logged so far.
    pub fn log_text(&self) -> String {
        self.log.0.lock().expect("log lock").join("\n")
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn metrics_url(&self) -> String {
        let addr = self.metrics.expect("the metrics endpoint is enabled");
        format!("http://{addr}/metrics")
    }

    pub fn api_url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.admin)
    }

    /// Sends SIGTERM and waits for the exit status (deadline 60 s).
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a pid we own; no memory is touched.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "tally did not exit after SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGKILL (no shutdown at all, as in a crash or an OOM kill) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("reap the killed tally")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/proc/<pid>/status` field in KiB, e.g. `VmHWM` (peak resident set) or `VmRSS`.
    pub fn memory_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn field(line: &str, name: &str) -> SocketAddr {
    optional_field(line, name).unwrap_or_else(|| panic!("no {name}= address in {line:?}"))
}

fn optional_field(line: &str, name: &str) -> Option<SocketAddr> {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&prefix))
        .and_then(|value| value.parse().ok())
}

fn config_yaml(options: &TallyOptions) -> String {
    let mib = options.max_body_mib.unwrap_or(20);
    let any = "127.0.0.1:0".parse().expect("addr");
    let tls = options
        .tls
        .as_ref()
        .map(|block| format!(", tls: {block}"))
        .unwrap_or_default();
    let rate = options
        .events_rate_limit
        .as_ref()
        .map(|block| format!(", events_rate_limit: {block}"))
        .unwrap_or_default();
    let mut yaml = format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: {}, max_recv_msg_size_mib: {mib}{tls} }}\n    \
         http: {{ endpoint: {}, max_request_body_size: {}{tls}{rate} }}\n",
        options.grpc_endpoint.unwrap_or(any),
        options.http_endpoint.unwrap_or(any),
        mib * 1024 * 1024
    );
    if let Some(bytes) = options.max_in_flight_bytes {
        yaml.push_str(&format!("    max_in_flight_bytes: {bytes}\n"));
    }
    if options.ingest_auth_required {
        yaml.push_str("    auth: { required: true }\n");
    }
    if options.allow_unauthenticated {
        yaml.push_str("    allow_unauthenticated: true\n");
    }
    yaml.push_str(&format!(
        "admin_api:\n  endpoint: {}\n",
        options.admin_endpoint.unwrap_or(any)
    ));
    if let Some(max) = options.sse_max_clients {
        yaml.push_str(&format!("  sse_max_clients: {max}\n"));
    }
    if let Some(block) = &options.tls {
        yaml.push_str(&format!("  tls: {block}\n"));
    }
    if let Some(streams) = options.max_streams_per_caller {
        yaml.push_str(&format!(
            "  limits: {{ max_streams_per_caller: {streams} }}\n"
        ));
    }
    if let Some(secret) = &options.jwt_secret {
        yaml.push_str(&format!(
            "  auth:\n    jwt: {{ hs256_secret: \"{secret}\" }}\n"
        ));
    }
    if let Some(budgets) = &options.budgets {
        yaml.push_str(&format!("budgets: {budgets}\n"));
    }
    yaml.push_str(&format!(
        "exporters:\n  prometheus: {{ endpoint: 127.0.0.1:0, action_label_cap: {}, tenant_label: {} }}\n  postgres:\n",
        options.action_label_cap.unwrap_or(200),
        options.tenant_label
    ));
    if let Some(url) = &options.database_url {
        yaml.push_str(&format!("    url: \"{url}\"\n"));
    }
    if let Some(url) = &options.read_url {
        yaml.push_str(&format!("    read_url: \"{url}\"\n"));
    }
    if let Some(dir) = &options.data_dir {
        yaml.push_str(&format!("    data_dir: \"{}\"\n", dir.display()));
    }
    if let Some(block) = &options.tamper_evidence {
        yaml.push_str(&format!("    tamper_evidence: {block}\n"));
    }
    if let Some(capacity) = options.queue_capacity {
        yaml.push_str(&format!(
            "    queue_capacity_records: {capacity}\n    batch_max_rows: {}\n",
            capacity.min(5000)
        ));
    }
    if options.validate_mode.is_some() || options.taxonomy.is_some() || options.hmac_key.is_some() {
        yaml.push_str("processors:\n");
        if let Some(key) = &options.hmac_key {
            yaml.push_str(&format!("  redact:\n    hmac_key: \"{key}\"\n"));
        }
        yaml.push_str("  validate:\n    reload_interval_secs: 1\n");
        if let Some(mode) = options.validate_mode {
            yaml.push_str(&format!("    mode: {mode}\n"));
        }
        if let Some(path) = &options.taxonomy {
            yaml.push_str(&format!("    taxonomy: \"{}\"\n", path.display()));
        }
    }
    yaml.push_str("service:\n  log_format: text\n  shutdown_grace_secs: 30\n");
    yaml
}

/// Creates an API key with the real CLI (`tally apikey create`) on `database_url`;
/// returns `(key, id)`.
pub fn create_api_key(database_url: &str, tenant: &str, scope: &str) -> (String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["apikey", "create", "--tenant", tenant, "--scope", scope])
        .env("TALLY_DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tally apikey create");
    assert!(
        output.status.success(),
        "tally apikey create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut lines = stdout.lines();
    let key = lines.next().expect("the key").trim().to_owned();
    let id = lines
        .find_map(|line| line.strip_prefix("id: "))
        .expect("the id")
        .trim()
        .to_owned();
    (key, id)
}

/// Polls `check` until it returns `Some`, or panics after `deadline` with `what`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs an admin API URL and returns (status, JSON body).
pub async fn get_json(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("admin API request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// The items of an `/activity` page, less the `audit.log.view` events Tally
/// records for the test's own reads of the API.
pub fn without_audit(body: &serde_json::Value) -> Vec<serde_json::Value> {
    body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|item| item["action"] != "audit.log.view")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Reads the activity items for a query string, following every cursor
/// (without the `audit.log.view` events of the test's own reads).
pub async fn all_activity(
    tally: &Tally,
    query: &str,
    token: Option<&str>,
) -> Vec<serde_json::Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = tally.api_url(&format!("/api/v1/activity?limit=1000&{query}"));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = get_json(&url, token).await;
        assert_eq!(status, 200, "GET {url}: {body}");
        items.extend(without_audit(&body));
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return items,
        }
    }
}

/// An HS256 token with the given scope and tenant claims, valid for an hour.
pub fn token(secret: &str, scope: &str, tenant: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    let claims =
        serde_json::json!({ "sub": "tester", "exp": exp, "scope": scope, "tenant": tenant });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("non-empty HS256 secret"),
    )
    .expect("encode token")
}

/// A fresh temp dir path for data that must outlive a `Tally` (e.g. a private PostgreSQL).
pub fn scratch_dir(root: &Path, name: &str) -> PathBuf {
    let path = root.join(name);
    std::fs::create_dir_all(&path).expect("create scratch dir");
    path
}

/// A temp dir the private PostgreSQL's server user can enter (tempdirs are 0700,
/// and as root the server runs as the `postgres` user).
pub fn reachable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// A virtual environment under the target folder named `name`, with the pinned
/// `requirements` file installed (made once: a stamp of the file's text says
/// what is installed). Answers the environment's folder.
pub fn python_venv(name: &str, requirements: &Path) -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let wanted = std::fs::read_to_string(requirements).expect("requirements file");
    let stamp = venv.join("requirements.installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return venv;
    }
    let _ = std::fs::remove_dir_all(&venv);
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent).expect("virtualenv folder");
    }
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv (is python3 installed?)");
    assert!(status.success(), "cannot create {}", venv.display());
    let output = Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(requirements)
        .output()
        .expect("pip install");
    assert!(
        output.status.success(),
        "cannot install {}: {}",
        requirements.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(&stamp, wanted).expect("stamp");
    venv
}

/// The Node app in `source` (its `files`, `package-lock.json` among them)
/// copied under the target folder as `name`, with `npm ci` run there (made once
/// per lock file). Answers the app's folder.
pub fn node_app(source: &Path, files: &[&str], name: &str) -> PathBuf {
    let app = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&app).expect("node app folder");
    for file in files {
        std::fs::copy(source.join(file), app.join(file)).expect("copy the node app");
    }
    let lock = std::fs::read_to_string(app.join("package-lock.json")).expect("lock file");
    let stamp = app.join("node_modules").join("lock.installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(lock.as_str()) {
        let output = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&app)
            .output()
            .expect("npm ci (are Node and npm installed?)");
        assert!(
            output.status.success(),
            "cannot install the Node packages: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::write(&stamp, lock).expect("stamp");
    }
    app
}

/// The fake OpenAI / Anthropic / Gemini server (`tests/genai/fake_provider.py`)
/// as its own process: its base URL is the first line it prints; it stops when
/// its stdin closes (on drop).
pub struct FakeProvider {
    child: Child,
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
}

impl FakeProvider {
    pub fn start() -> FakeProvider {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/genai/fake_provider.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fake provider");
        let stdout = child.stdout.take().expect("stdout");
        let mut url = String::new();
        BufReader::new(stdout)
            .read_line(&mut url)
            .expect("the fake provider's URL");
        FakeProvider {
            child,
            url: url.trim().to_owned(),
        }
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Sends `spans` (one resource, one scope) to `tally` over OTLP/HTTP protobuf
/// and asserts the 200.
pub async fn export_spans(tally: &Tally, spans: Vec<tally_model::otlp::trace::v1::Span>) {
    post_spans(tally, None, spans).await;
}

/// As [`export_spans`], from a resource whose `service.name` is `service`.
pub async fn export_service_spans(
    tally: &Tally,
    service: &str,
    spans: Vec<tally_model::otlp::trace::v1::Span>,
) {
    let resource = tally_model::otlp::resource::v1::Resource {
        attributes: vec![kv("service.name", service)],
        ..Default::default()
    };
    post_spans(tally, Some(resource), spans).await;
}

async fn post_spans(
    tally: &Tally,
    resource: Option<tally_model::otlp::resource::v1::Resource>,
    spans: Vec<tally_model::otlp::trace::v1::Span>,
) {
    use prost::Message as _;
    use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use tally_model::otlp::trace::v1::{ResourceSpans, ScopeSpans};
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource,
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let response = reqwest::Client::new()
        .post(tally.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .expect("export");
    assert_eq!(response.status().as_u16(), 200, "export refused");
}

/// Now, in Unix nanoseconds (OTLP's timestamps).
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// A string attribute.
pub fn kv(key: &str, value: &str) -> tally_model::otlp::common::v1::KeyValue {
    use tally_model::otlp::common::v1::{any_value::Value, AnyValue, KeyValue};
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// An integer attribute.
pub fn kv_int(key: &str, value: i64) -> tally_model::otlp::common::v1::KeyValue {
    use tally_model::otlp::common::v1::{any_value::Value, AnyValue, KeyValue};
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// A real OpenTelemetry SDK tracer provider exporting each span, as it ends, to
/// `url` over OTLP/HTTP protobuf (e.g. [`Tally::http_url`]`("/v1/traces")`).
/// Its exporter blocks: build and use it on a thread of its own.
pub fn http_span_provider(url: String) -> opentelemetry_sdk::trace::SdkTracerProvider {
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(10))
        .build()
        .expect("span exporter");
    opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .build()
}
