//! The examples in `examples/` run end to end: each app starts with its pinned
//! packages from the registries, sends its spans to a real Tally, calls a local
//! fake OpenAI server, and its login, upload and chat requests become activity
//! rows and one attributed, priced token row.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

#[tokio::test(flavor = "multi_thread")]
async fn the_python_and_node_examples_reach_tally() {
    let (venv, node) = std::thread::scope(|scope| {
        let venv = scope
            .spawn(|| python_venv("example-python", &repo("examples/python/requirements.txt")));
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
    });
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
