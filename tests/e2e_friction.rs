//! Friction a new user meets, fixed: each error cause printed once, an expected 503
//! (`sse_max_clients`) logged at most at WARN, `tally verify --help` naming exit code 2.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Tally, TallyOptions, TestDatabase};

fn tally() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command.env_remove("TALLY_DATABASE_URL");
    command
}

/// The `error: …` line of a failed run.
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
}

#[test]
fn a_missing_config_file_names_its_cause_once() {
    let output = tally()
        .args(["--config", "/nonexistent/tally.yaml"])
        .output()
        .expect("run tally");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = error_line(&stderr);
    assert!(line.contains("/nonexistent/tally.yaml"), "{line}");
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_use_names_its_cause_once() {
    let database = TestDatabase::create().await;
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tally.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:{port} }}\n    \
             http: {{ endpoint: 127.0.0.1:0 }}\n\
             admin_api:\n  endpoint: 127.0.0.1:0\n\
             exporters:\n  prometheus: {{ endpoint: 127.0.0.1:0 }}\n  postgres:\n    url: \"{}\"\n",
            database.url
        ),
    )
    .expect("write config");
    let output = tokio::task::spawn_blocking(move || {
        tally()
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run tally")
    })
    .await
    .expect("join");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = error_line(&stderr);
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert_eq!(line.matches("Address already in use").count(), 1, "{line}");
    drop(taken);
}

#[test]
fn verify_help_documents_every_exit_code() {
    let output = tally()
        .args(["verify", "--help"])
        .output()
        .expect("run tally verify --help");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "0 when intact",
        "1 when tampered",
        "2 when it cannot be checked",
    ] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_live_feed_answers_503_and_logs_no_error() {
    let database = TestDatabase::create().await;
    let mut tally = Tally::launch(TallyOptions {
        database_url: Some(database.url.clone()),
        sse_max_clients: Some(1),
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::new();
    let url = tally.api_url("/api/v1/activity/stream");
    let first = client.get(&url).send().await.expect("first stream");
    assert_eq!(first.status().as_u16(), 200);
    // The slot is taken once the first answer's headers are in; a second client is
    // refused until it leaves.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let second = client.get(&url).send().await.expect("second stream");
        if second.status().as_u16() == 503 {
            break second;
        }
        drop(second);
        assert!(
            Instant::now() < deadline,
            "the second client was never refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let body: serde_json::Value = refused.json().await.expect("error body");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("sse_max_clients")),
        "{body}"
    );
    // The refusal is logged (at WARN) …
    let logged = tokio::task::block_in_place(|| {
        tally.wait_for_log("response failed", Duration::from_secs(10))
    })
    .unwrap_or_else(|| panic!("the 503 is logged:\n{}", tally.log_text()));
    assert!(logged.contains(" WARN "), "{logged}");
    // … and nothing at ERROR.
    let log = tally.log_text();
    assert!(
        !log.lines().any(|line| line.contains(" ERROR ")),
        "an expected 503 logs no ERROR:\n{log}"
    );
    drop(first);
}
