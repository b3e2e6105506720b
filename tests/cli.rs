//! The command line: `--help`, `validate` (errors name the config path and exit
//! non-zero), `migrate` (idempotent).

mod common;

use std::process::Command;

use common::TestDatabase;

fn tally() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command.env_remove("TALLY_DATABASE_URL");
    command
}

fn validate(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tally.yaml");
    std::fs::write(&path, yaml).expect("write");
    let output = tally()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("run tally validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn help_lists_the_commands_and_flags() {
    let output = tally().arg("--help").output().expect("run tally --help");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for needle in ["validate", "migrate", "--config"] {
        assert!(text.contains(needle), "--help mentions {needle}:\n{text}");
    }
}

#[test]
fn validate_accepts_a_good_config_with_env_references() {
    let (ok, text) = validate(
        "receivers:\n  otlp:\n    grpc: { endpoint: \"127.0.0.1:${env:TALLY_CLI_TEST_UNSET_PORT:-4317}\" }\n\
         processors:\n  redact: { hmac_key: ${env:TALLY_CLI_TEST_UNSET_KEY} }\n",
    );
    assert!(ok, "{text}");
    assert!(text.contains("config OK"), "{text}");
}

#[test]
fn validate_names_the_path_of_each_error_and_exits_non_zero() {
    let cases = [
        (
            "receivers:\n  otlp:\n    grpc: { endpoint: nowhere }\n",
            "receivers.otlp.grpc.endpoint",
        ),
        (
            "receivers:\n  otlp:\n    http: { endpoint: \"127.0.0.1:70000\" }\n",
            "receivers.otlp.http.endpoint",
        ),
        (
            "exporters:\n  postgres: { batch_max_rows: many }\n",
            "exporters.postgres.batch_max_rows",
        ),
        ("admin_api:\n  endpont: 127.0.0.1:1\n", "admin_api.endpont"),
        (
            "processors:\n  validate: { mode: sometimes }\n",
            "processors.validate.mode",
        ),
        ("receivers: [\n", "YAML"),
    ];
    for (yaml, path) in cases {
        let (ok, text) = validate(yaml);
        assert!(!ok, "{yaml} must be rejected");
        assert!(
            text.contains(path),
            "error for {yaml:?} names {path}: {text}"
        );
    }
}

#[test]
fn validate_reports_a_missing_file() {
    let output = tally()
        .args(["validate", "--config", "/nonexistent/tally.yaml"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/tally.yaml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_schema_and_is_idempotent() {
    let database = TestDatabase::create().await;
    for _ in 0..2 {
        let output = tally()
            .arg("migrate")
            .env("TALLY_DATABASE_URL", &database.url)
            .output()
            .expect("run tally migrate");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let client = database.client().await;
    let tables: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
             AND tablename IN ('activity_events', 'rejected_events', 'tally_schema_migrations')",
            &[],
        )
        .await
        .expect("query")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(tables.len(), 3, "{tables:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apikey_create_list_revoke() {
    let database = TestDatabase::create().await;
    let run = |args: &[&str]| {
        let output = tally()
            .arg("apikey")
            .args(args)
            .env("TALLY_DATABASE_URL", &database.url)
            .output()
            .expect("run tally apikey");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // The database is migrated by the command itself.
    let (ok, stdout, stderr) = run(&[
        "create",
        "--tenant",
        "acme",
        "--scope",
        "activity:read",
        "--scope",
        "tokens:read",
        "--description",
        "siem job",
    ]);
    assert!(ok, "{stderr}");
    let key = stdout.lines().next().expect("the key").to_owned();
    assert!(key.starts_with("tally_"), "{stdout}");
    let prefix = stdout
        .lines()
        .find_map(|line| line.strip_prefix("prefix: "))
        .expect("prefix line")
        .to_owned();
    assert!(key.starts_with(&format!("tally_{prefix}_")));

    let (ok, listed, stderr) = run(&["list"]);
    assert!(ok, "{stderr}");
    assert!(listed.contains(&prefix), "{listed}");
    assert!(listed.contains("activity:read tokens:read"), "{listed}");
    assert!(listed.contains("siem job"), "{listed}");
    let secret = key.rsplit('_').next().expect("secret");
    assert!(!listed.contains(secret), "list never prints secrets");

    let (ok, _, stderr) = run(&["create", "--tenant", "acme", "--scope", "activity:write"]);
    assert!(!ok);
    assert!(stderr.contains("unknown scope"), "{stderr}");

    let (ok, stdout, stderr) = run(&["revoke", &prefix]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("revoked"), "{stdout}");
    let (ok, _, stderr) = run(&["revoke", "0000000000000000"]);
    assert!(!ok);
    assert!(stderr.contains("no API key"), "{stderr}");

    let client = database.client().await;
    let revoked: bool = client
        .query_one(
            "SELECT revoked_at IS NOT NULL FROM api_keys WHERE prefix = $1",
            &[&prefix],
        )
        .await
        .expect("query")
        .get(0);
    assert!(revoked);
}

#[test]
fn production_mode_refuses_generated_keys_and_the_other_unsafe_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Run (not validate), from an empty folder: nothing may be started or created.
    let output = tally()
        .arg("--production")
        .current_dir(dir.path())
        .output()
        .expect("run tally --production");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{text}");
    for key in [
        "processors.redact.hmac_key",
        "exporters.postgres.tamper_evidence.signing_key",
        "exporters.postgres.erasure_key",
        "exporters.postgres.url",
        "admin_api.auth",
    ] {
        assert!(text.contains(key), "names {key}:\n{text}");
    }
    assert!(
        !dir.path().join("tally-data").exists(),
        "no private PostgreSQL was started"
    );

    // `service.mode: production` in the file does the same, and a public
    // listener without TLS is named too.
    let (ok, text) =
        validate("service: { mode: production }\nadmin_api: { endpoint: 0.0.0.0:8080 }\n");
    assert!(!ok, "{text}");
    assert!(text.contains("admin_api.tls"), "{text}");
    assert!(text.contains("0.0.0.0:8080"), "{text}");

    // Everything set: the production configuration validates.
    let (ok, text) = validate(
        "service: { mode: production }\n\
         processors: { redact: { hmac_key: 0123456789abcdef0123 } }\n\
         exporters: { postgres: { url: \"postgres://tally@127.0.0.1/tally\", \
         erasure_key: \"an-erasure-key-of-32-bytes-12345\", tamper_evidence: { signing_key: \"abababababababababababababababababababababababababababababababab\" } } }\n\
         admin_api: { auth: { jwt: { hs256_secret: \"a-secret-of-enough-length-123456\" } } }\n",
    );
    assert!(ok, "{text}");
}
