//! The examples in `examples/` run end to end: each app starts with its pinned
//! packages from the registries, sends its spans to a real Tally, calls a local
//! fake OpenAI server, and its login, upload and chat requests become activity
//! rows and one attributed, priced token row. The runnable snippets of
//! `docs/conventions.md` run as printed, and the browser example page runs in
//! headless Chromium.

mod browser;
mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{eventually, node_app, python_venv, FakeProvider, Tally, TestDatabase};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// An app process, stopped with SIGTERM (so it flushes its spans) on drop.
struct App(Child);

impl App {
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Drives the app's three routes as `user` of `tenant` once it answers.
async fn exercise(
    port: u16,
    user: &str,
    tenant: &str,
    upload_path: &str,
    upload: reqwest::RequestBuilder,
) {
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(60), "the app to listen", || {
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .post(format!("{base}/login"))
                .header("x-user", "probe")
                .header("x-tenant", "probe")
                .send()
                .await
                .ok()
                .filter(|response| response.status().is_success())
        }
    })
    .await;
    let login = client
        .post(format!("{base}/login"))
        .header("x-user", user)
        .header("x-tenant", tenant)
        .send()
        .await
        .expect("login");
    assert!(login.status().is_success(), "login: {}", login.status());
    let upload = upload
        .header("x-user", user)
        .header("x-tenant", tenant)
        .send()
        .await
        .expect("upload");
    assert!(
        upload.status().is_success(),
        "upload {upload_path}: {}",
        upload.status()
    );
    let chat = client
        .post(format!("{base}/chat"))
        .header("x-user", user)
        .header("x-tenant", tenant)
        .json(&serde_json::json!({"prompt": "Say hello."}))
        .send()
        .await
        .expect("chat");
    assert!(chat.status().is_success(), "chat: {}", chat.status());
}

/// Waits for the three activity rows and the token row of `tenant`, and checks them.
async fn assert_rows(database: &TestDatabase, tenant: &str, user: &str) {
    let actions: Vec<(String, String, Option<String>)> = eventually(
        Duration::from_secs(30),
        "the example's activity rows",
        || async {
            let rows = database
                .client()
                .await
                .query(
                    "SELECT action, user_id, resource_type FROM activity_events \
                     WHERE tenant_id = $1 ORDER BY ts",
                    &[&tenant],
                )
                .await
                .expect("activity");
            let rows: Vec<(String, String, Option<String>)> = rows
                .iter()
                .map(|row| {
                    (
                        row.get(0),
                        row.get::<_, Option<String>>(1).unwrap_or_default(),
                        row.get(2),
                    )
                })
                .collect();
            (rows.len() >= 3).then_some(rows)
        },
    )
    .await;
    let names: Vec<&str> = actions
        .iter()
        .map(|(action, _, _)| action.as_str())
        .collect();
    assert_eq!(
        names,
        ["auth.login.success", "file.upload", "ai.chat"],
        "{tenant}"
    );
    assert!(actions.iter().all(|(_, who, _)| who == user), "{actions:?}");
    assert_eq!(actions[1].2.as_deref(), Some("file"));
    let tokens = eventually(
        Duration::from_secs(30),
        "the attributed token row",
        || async {
            let rows = database
                .client()
                .await
                .query(
                    "SELECT user_id, input_tokens, output_tokens, cost_usd::float8 \
                 FROM token_usage WHERE tenant_id = $1",
                    &[&tenant],
                )
                .await
                .expect("tokens");
            (!rows.is_empty()).then_some(rows)
        },
    )
    .await;
    assert_eq!(tokens.len(), 1, "one model call, one row");
    let row = &tokens[0];
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some(user));
    // The fake's usage (tests/genai/fake_provider.py).
    assert_eq!(row.get::<_, Option<i64>>(1), Some(1200));
    assert_eq!(row.get::<_, Option<i64>>(2), Some(300));
    assert!(row.get::<_, Option<f64>>(3).is_some_and(|cost| cost > 0.0));
}

/// The Python examples' virtualenv and the Node example's folder with its packages,
/// installed once for all the tests of this file (they run in parallel).
fn installed() -> (PathBuf, PathBuf) {
    static INSTALLED: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            std::thread::scope(|scope| {
                let venv = scope.spawn(|| {
                    python_venv("example-python", &repo("examples/python/requirements.txt"))
                });
                let node = scope.spawn(|| {
                    let files = [
                        "package.json",
                        "package-lock.json",
                        "app.mjs",
                        "tracing.mjs",
                    ];
                    node_app(&repo("examples/node"), &files, "example-node")
                });
                (venv.join().expect("venv"), node.join().expect("node"))
            })
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_and_node_examples_reach_tally() {
    let (venv, node) = installed();
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let otlp = tally.http_url("");
    let fake = FakeProvider::start();

    let port = free_port();
    let mut python = App(Command::new(venv.join("bin/uvicorn"))
        .args([
            "app:app",
            "--port",
            &port.to_string(),
            "--log-level",
            "warning",
        ])
        .current_dir(repo("examples/python"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.trim_end_matches('/'))
        .env("OPENAI_BASE_URL", format!("{}/v1", fake.url))
        .env("OPENAI_API_KEY", "sk-fake")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .spawn()
        .expect("start the Python example"));
    // A multipart form with one file, as a browser sends it.
    let boundary = "tally-example-boundary";
    let form = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"report.csv\"\r\n\
         content-type: text/csv\r\n\r\nquarterly numbers\r\n--{boundary}--\r\n"
    );
    let upload = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/upload"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form);
    exercise(port, "alice", "example-python", "/upload", upload).await;
    python.stop();
    assert_rows(&database, "example-python", "alice").await;

    let port = free_port();
    let mut express = App(Command::new("node")
        .args(["--import", "./tracing.mjs", "app.mjs"])
        .current_dir(&node)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.trim_end_matches('/'))
        .env("OPENAI_BASE_URL", format!("{}/v1", fake.url))
        .env("OPENAI_API_KEY", "sk-fake")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the Node example"));
    let upload = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/upload/report.csv"))
        .header("content-type", "application/octet-stream")
        .body(b"quarterly numbers".to_vec());
    exercise(port, "bob", "example-node", "/upload/report.csv", upload).await;
    express.stop();
    assert_rows(&database, "example-node", "bob").await;
}

/// The fenced block that follows the marker `<!-- run: {language} -->` in `doc`.
fn runnable_block(doc: &str, language: &str) -> String {
    let marker = format!("<!-- run: {language} -->");
    let after = doc
        .split_once(&marker)
        .unwrap_or_else(|| panic!("no {marker} in the page"))
        .1;
    let fence = after.find("```").expect("a fenced block after the marker");
    let body = &after[fence + 3..];
    let body = &body[body.find('\n').expect("the fence line") + 1..];
    let end = body.find("\n```").expect("the closing fence");
    body[..end + 1].to_owned()
}

/// One activity row of `tenant`, waited for.
async fn conventions_row(
    database: &TestDatabase,
    tenant: &str,
) -> (String, String, String, String, String) {
    eventually(Duration::from_secs(30), "the snippet's row", || async {
        let rows = database
            .client()
            .await
            .query(
                "SELECT action, user_id, session_id, resource_type, resource_id \
                 FROM activity_events WHERE tenant_id = $1",
                &[&tenant],
            )
            .await
            .expect("activity");
        rows.first().map(|row| {
            let text = |i: usize| row.get::<_, Option<String>>(i).unwrap_or_default();
            assert_eq!(rows.len(), 1, "{tenant}: one span, one row");
            (text(0), text(1), text(2), text(3), text(4))
        })
    })
    .await
}

/// The Python and Node snippets of `docs/conventions.md` run as printed, with a stock
/// SDK set-up around them, and their spans become the rows the page promises.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_and_node_snippets_of_the_conventions_page_make_the_rows_it_promises() {
    let doc = std::fs::read_to_string(repo("docs/conventions.md")).expect("docs/conventions.md");
    let (venv, node) = installed();
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let otlp = tally.http_url("");
    let otlp = otlp.trim_end_matches('/');
    let scratch = tempfile::tempdir().expect("tempdir");

    let snippet = scratch.path().join("snippet.py");
    std::fs::write(&snippet, runnable_block(&doc, "python")).expect("write the snippet");
    let harness = "import sys\n\
        from opentelemetry import trace\n\
        from opentelemetry.sdk.trace import TracerProvider\n\
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n\
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter\n\
        provider = TracerProvider()\n\
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))\n\
        trace.set_tracer_provider(provider)\n\
        exec(open(sys.argv[1]).read())\n\
        export_report('u-python', 'conventions-python', 's-python', 'r-python')\n\
        provider.shutdown()\n";
    let output = Command::new(venv.join("bin/python"))
        .args(["-c", harness])
        .arg(&snippet)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the Python snippet");
    assert!(
        output.status.success(),
        "the Python snippet failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        conventions_row(&database, "conventions-python").await,
        (
            "report.export".to_owned(),
            "u-python".to_owned(),
            "s-python".to_owned(),
            "report".to_owned(),
            "r-python".to_owned()
        )
    );

    // The Node snippet is an ES module next to the example's node_modules.
    std::fs::write(
        node.join("conventions-snippet.mjs"),
        runnable_block(&doc, "node"),
    )
    .expect("write the snippet");
    let harness = "import { NodeSDK } from '@opentelemetry/sdk-node';\n\
        import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';\n\
        const sdk = new NodeSDK({ serviceName: 'conventions', traceExporter: new OTLPTraceExporter() });\n\
        sdk.start();\n\
        const { exportReport } = await import('./conventions-snippet.mjs');\n\
        exportReport('u-node', 'conventions-node', 's-node', 'r-node');\n\
        await sdk.shutdown();\n";
    std::fs::write(node.join("conventions-harness.mjs"), harness).expect("write the harness");
    let output = Command::new("node")
        .arg("conventions-harness.mjs")
        .current_dir(&node)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .output()
        .expect("run the Node snippet");
    assert!(
        output.status.success(),
        "the Node snippet failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        conventions_row(&database, "conventions-node").await,
        (
            "report.export".to_owned(),
            "u-node".to_owned(),
            "s-node".to_owned(),
            "report".to_owned(),
            "r-node".to_owned()
        )
    );
}

/// A static file server (Python's `http.server`) for `dir` on a free port, stopped on drop.
fn serve(dir: &Path) -> (App, u16) {
    let port = free_port();
    let server = App(Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3 -m http.server"));
    (server, port)
}

/// `(action, user_id, asserted_by)` of `tenant`'s rows, once there are `count`.
async fn browser_rows(
    database: &TestDatabase,
    tenant: &str,
    count: usize,
) -> Vec<(String, String, String)> {
    eventually(Duration::from_secs(20), "the page's rows", || async {
        let rows = database
            .client()
            .await
            .query(
                "SELECT action, user_id, attributes->>'tally.user_id.asserted_by' \
                 FROM activity_events WHERE tenant_id = $1 ORDER BY ts, action",
                &[&tenant],
            )
            .await
            .expect("activity");
        let rows: Vec<(String, String, String)> = rows
            .iter()
            .map(|row| {
                (
                    row.get(0),
                    row.get::<_, Option<String>>(1).unwrap_or_default(),
                    row.get::<_, Option<String>>(2).unwrap_or_default(),
                )
            })
            .collect();
        (rows.len() >= count).then_some(rows)
    })
    .await
}

/// `examples/browser/index.html` in headless Chromium: its beacons and its fetch reach
/// Tally with a browser key, stamped with the key's tenant and marked client-asserted;
/// an action the key does not list is rejected by index, and the same page on another
/// origin is refused by CORS and stores nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_browser_example_page_sends_its_events_with_a_browser_key() {
    let Some((chromium, chromedriver)) = browser::available() else {
        return;
    };
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let (_server, port) = serve(&repo("examples/browser"));
    let origin = format!("http://127.0.0.1:{port}");
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["apikey", "create", "--scope", "ingest", "--tenant", "web"])
        .args([
            "--origin",
            &origin,
            "--action",
            "page.view",
            "--action",
            "ui.*",
        ])
        .env("TALLY_DATABASE_URL", &database.url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("tally apikey create");
    assert!(output.status.success(), "{output:?}");
    let key = String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .expect("the key")
        .trim()
        .to_owned();
    let tally_url = tally.http_url("");
    let tally_url = tally_url.trim_end_matches('/');

    let browser = browser::Browser::start(&chromium, &chromedriver).await;
    browser
        .goto(&format!(
            "{origin}/index.html?tally={tally_url}&key={key}&user=alice"
        ))
        .await;
    let rows = browser_rows(&database, "web", 1).await;
    assert_eq!(
        rows,
        [(
            "page.view".to_owned(),
            "alice".to_owned(),
            "client".to_owned()
        )]
    );
    browser.click("#export").await;
    browser_rows(&database, "web", 2).await;
    browser.click("#feedback").await;
    browser
        .wait_text("#log", "ui.feedback.sent: 202", Duration::from_secs(20))
        .await;
    assert!(
        browser.text("#log").await.contains("\"accepted\":1"),
        "{}",
        browser.text("#log").await
    );
    let rows = browser_rows(&database, "web", 3).await;
    let mut actions: Vec<&str> = rows.iter().map(|(action, _, _)| action.as_str()).collect();
    actions.sort_unstable();
    assert_eq!(
        actions,
        ["page.view", "ui.feedback.sent", "ui.report.export"]
    );
    assert!(
        rows.iter()
            .all(|(_, user, asserted)| user == "alice" && asserted == "client"),
        "{rows:?}"
    );

    // An action the key does not list: answered by index, not stored.
    browser
        .js("send('admin.user.delete', {});", serde_json::json!([]))
        .await;
    browser
        .wait_text("#log", "action_not_allowed", Duration::from_secs(20))
        .await;

    // The same page from another origin (localhost is not 127.0.0.1 to a browser):
    // the preflight is refused, so the fetch fails and nothing of mallory's is stored.
    browser
        .goto(&format!(
            "http://localhost:{port}/index.html?tally={tally_url}&key={key}&user=mallory"
        ))
        .await;
    browser
        .js("send('ui.feedback.sent', {});", serde_json::json!([]))
        .await;
    browser
        .wait_text(
            "#log",
            "ui.feedback.sent: TypeError",
            Duration::from_secs(20),
        )
        .await;
    let stored: i64 = database
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM activity_events WHERE user_id = 'mallory' \
             OR action = 'admin.user.delete'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 0);
    browser.quit().await;
}
