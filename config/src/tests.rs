use super::*;

#[test]
fn empty_document_gives_defaults() {
    let config = Config::from_yaml_str("").unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(
        config.receivers.otlp.grpc.endpoint.to_string(),
        "127.0.0.1:4317"
    );
    assert_eq!(
        config.receivers.otlp.http.endpoint.to_string(),
        "127.0.0.1:4318"
    );
    assert_eq!(config.admin_api.endpoint.to_string(), "127.0.0.1:8080");
    assert_eq!(
        config.exporters.prometheus.endpoint.to_string(),
        "127.0.0.1:9464"
    );
    assert_eq!(
        config.receivers.otlp.http.max_request_body_size,
        20 * 1024 * 1024
    );
}

#[test]
fn design_example_parses() {
    let text = r#"
receivers:
  otlp:
    grpc: { endpoint: 127.0.0.1:4317 }
    http: { endpoint: 127.0.0.1:4318 }
processors:
  redact:   { hmac_key: ${env:TALLY_TEST_UNSET_HMAC_KEY} }
  validate: { taxonomy: taxonomy.yaml, mode: strict }
exporters:
  postgres:   { url: ${env:TALLY_TEST_UNSET_DB_URL} }
  prometheus: { endpoint: 127.0.0.1:9464 }
admin_api:
  endpoint: 127.0.0.1:8080
  auth:
    jwt: { hs256_secret: ${env:TALLY_TEST_UNSET_SECRET:-0123456789abcdef0123} }
retention: { raw_days: 90, aggregate_days: 730 }
"#;
    let config = Config::from_yaml_str(text).unwrap();
    assert_eq!(config.processors.validate.mode, ValidateMode::Strict);
    assert_eq!(config.processors.redact.hmac_key, None);
    assert_eq!(config.exporters.postgres.url, None);
    assert_eq!(
        config.admin_api.auth.jwt.unwrap().hs256_secret.as_deref(),
        Some("0123456789abcdef0123")
    );
}

fn error_of(text: &str) -> String {
    Config::from_yaml_str(text).unwrap_err().to_string()
}

#[test]
fn unknown_key_names_its_path() {
    let err = error_of("receivers: { otlp: { grpc: { endpont: 127.0.0.1:1 } } }");
    assert!(
        err.starts_with("receivers.otlp.grpc.endpont: unknown field"),
        "{err}"
    );
    assert!(err.contains("endpont"), "{err}");
}

#[test]
fn bad_address_names_its_path() {
    let err = error_of("receivers: { otlp: { grpc: { endpoint: nowhere } } }");
    assert!(err.starts_with("receivers.otlp.grpc.endpoint: "), "{err}");
    let err = error_of("admin_api: { endpoint: 127.0.0.1:99999 }");
    assert!(err.starts_with("admin_api.endpoint: "), "{err}");
}

#[test]
fn wrong_type_names_its_path() {
    let err = error_of("exporters: { postgres: { batch_max_rows: lots } }");
    assert!(
        err.starts_with("exporters.postgres.batch_max_rows: "),
        "{err}"
    );
    let err = error_of("processors: { validate: { mode: sometimes } }");
    assert!(err.starts_with("processors.validate.mode: "), "{err}");
}

#[test]
fn cross_field_rules_name_their_path() {
    let err =
        error_of("exporters: { postgres: { batch_max_rows: 10, queue_capacity_records: 5 } }");
    assert!(
        err.starts_with("exporters.postgres.queue_capacity_records: "),
        "{err}"
    );
    let err = error_of("exporters: { postgres: { tamper_evidence: { checkpoint_dir: '' } } }");
    assert!(
        err.starts_with("exporters.postgres.tamper_evidence.checkpoint_dir: "),
        "{err}"
    );
    let config = Config::from_yaml_str(
        "exporters: { postgres: { tamper_evidence: { checkpoint_dir: /var/lib/tally/cp } } }",
    )
    .expect("valid");
    assert_eq!(
        config.exporters.postgres.tamper_evidence.checkpoint_dir,
        Some(std::path::PathBuf::from("/var/lib/tally/cp"))
    );
}

#[test]
fn retention_archive_and_tenant_overrides() {
    let config = Config::from_yaml_str(
        "retention: { raw_days: 30, archive: { dir: /var/lib/tally/archive }, \
         tenants: { acme: { raw_days: 365 }, trial: { raw_days: 7 }, keep: { raw_days: 0 } } }",
    )
    .expect("valid");
    let retention = &config.retention;
    let archive = retention.archive.as_ref().expect("archive");
    assert_eq!(
        archive.dir,
        std::path::PathBuf::from("/var/lib/tally/archive")
    );
    assert_eq!(archive.format, crate::ArchiveFormat::Ndjson);
    assert_eq!(retention.raw_days_of("acme"), 365);
    assert_eq!(retention.raw_days_of("trial"), 7);
    assert_eq!(retention.raw_days_of("keep"), 0);
    assert_eq!(retention.raw_days_of("other"), 30);

    let parquet = Config::from_yaml_str("retention: { archive: { dir: /a, format: parquet } }")
        .expect("parquet is built in");
    assert_eq!(
        parquet.retention.archive.as_ref().map(|a| a.format),
        Some(crate::ArchiveFormat::Parquet)
    );
    let err = error_of("retention: { archive: { dir: '' } }");
    assert!(err.starts_with("retention.archive.dir: "), "{err}");
    let err = error_of("retention: { archive: { format: ndjson } }");
    assert!(err.contains("dir"), "{err}");
    let err = error_of("retention: { archive: { dir: /a, format: csv } }");
    assert!(err.starts_with("retention.archive.format"), "{err}");
    let err = error_of("retention: { tenants: { acme: { raw_days: -1 } } }");
    assert!(err.starts_with("retention.tenants.acme.raw_days"), "{err}");
    let err = error_of("retention: { tenants: { acme: { days: 3 } } }");
    assert!(err.starts_with("retention.tenants.acme"), "{err}");
    let err = error_of("retention: { tenants: { acme: {} } }");
    assert!(err.contains("raw_days"), "{err}");
}

#[test]
fn env_expansion_with_defaults_and_escapes() {
    let lookup = |name: &str| (name == "SET").then(|| "value".to_string());
    assert_eq!(expand_env("${env:SET}", lookup).unwrap(), "value");
    assert_eq!(
        expand_env("${env:UNSET:-fallback}", lookup).unwrap(),
        "fallback"
    );
    assert_eq!(expand_env("${env:UNSET}", lookup).unwrap(), "");
    assert_eq!(expand_env("$$5 and $x", lookup).unwrap(), "$5 and $x");
    assert!(expand_env("${env:OPEN", lookup).is_err());
    assert!(expand_env("${env:bad name}", lookup).is_err());
}

#[test]
fn port_zero_and_localhost_are_accepted() {
    let config = Config::from_yaml_str("admin_api: { endpoint: 'localhost:0' }").unwrap();
    assert_eq!(config.admin_api.endpoint.port(), 0);
    assert!(config.admin_api.endpoint.is_loopback());
}

#[test]
fn cors_origins_are_checked() {
    let ok = Config::from_yaml_str(
        "admin_api: { cors: { allowed_origins: ['https://grafana.example.com', 'http://localhost:3000'] } }",
    )
    .unwrap();
    assert_eq!(ok.admin_api.cors.allowed_origins.len(), 2);
    assert!(
        Config::default().admin_api.cors.allowed_origins.is_empty(),
        "off by default"
    );
    let err = error_of("admin_api: { cors: { allowed_origins: ['grafana.example.com'] } }");
    assert!(err.starts_with("admin_api.cors.allowed_origins: "), "{err}");
}

#[test]
fn in_flight_bytes_default_and_lower_bound() {
    let config = Config::from_yaml_str("").unwrap();
    assert_eq!(config.receivers.otlp.max_in_flight_bytes, 64 * 1024 * 1024);
    let config =
        Config::from_yaml_str("receivers: { otlp: { max_in_flight_bytes: 33554432 } }").unwrap();
    assert_eq!(config.receivers.otlp.max_in_flight_bytes, 32 * 1024 * 1024);
    // Smaller than the largest accepted message (20 MiB by default): a request of that
    // size could never be admitted.
    let message = error_of("receivers: { otlp: { max_in_flight_bytes: 1048576 } }");
    assert!(
        message.contains("receivers.otlp.max_in_flight_bytes"),
        "{message}"
    );
    let config = Config::from_yaml_str(
        "receivers: { otlp: { max_in_flight_bytes: 2097152, http: { max_request_body_size: 1048576 }, grpc: { max_recv_msg_size_mib: 2 } } }",
    )
    .unwrap();
    assert_eq!(config.receivers.otlp.max_in_flight_bytes, 2 * 1024 * 1024);
}

#[test]
fn exposed_receivers_need_ingest_auth_or_an_explicit_opt_out() {
    let config = Config::from_yaml_str("").unwrap();
    assert!(!config.receivers.otlp.auth.required, "off by default");
    assert!(config.receivers.otlp.exposed_endpoint().is_none());
    let err = error_of("receivers: { otlp: { http: { endpoint: 0.0.0.0:4318 } } }");
    assert!(err.starts_with("receivers.otlp.http.endpoint: "), "{err}");
    assert!(err.contains("receivers.otlp.auth.required"), "{err}");
    assert!(err.contains("allow_unauthenticated"), "{err}");
    let err = error_of("receivers: { otlp: { grpc: { endpoint: '[::]:4317' } } }");
    assert!(err.starts_with("receivers.otlp.grpc.endpoint: "), "{err}");
    // A disabled receiver listens nowhere.
    Config::from_yaml_str(
        "receivers: { otlp: { grpc: { enabled: false, endpoint: 0.0.0.0:4317 } } }",
    )
    .unwrap();
    Config::from_yaml_str(
        "receivers: { otlp: { http: { endpoint: 0.0.0.0:4318 }, auth: { required: true } } }",
    )
    .unwrap();
    Config::from_yaml_str(
        "receivers: { otlp: { http: { endpoint: 0.0.0.0:4318 }, allow_unauthenticated: true } }",
    )
    .unwrap();
    let err = error_of("receivers: { otlp: { auth: { cache_ttl_secs: 301 } } }");
    assert!(
        err.starts_with("receivers.otlp.auth.cache_ttl_secs: "),
        "{err}"
    );
}

#[test]
fn a_certainly_open_admin_api_is_refused_where_it_is_exposed() {
    // Keys in the database may still turn auth on: only the start can tell.
    Config::from_yaml_str("admin_api: { endpoint: 0.0.0.0:8080 }").unwrap();
    let err =
        error_of("admin_api: { endpoint: 0.0.0.0:8080, auth: { api_keys: { enabled: false } } }");
    assert!(err.starts_with("admin_api.endpoint: "), "{err}");
    let err = error_of(
        "admin_api: { cors: { allowed_origins: ['*'] }, auth: { api_keys: { enabled: false } } }",
    );
    assert!(err.starts_with("admin_api.cors.allowed_origins: "), "{err}");
    Config::from_yaml_str(
        "admin_api: { endpoint: 0.0.0.0:8080, allow_unauthenticated: true, auth: { api_keys: { enabled: false } } }",
    )
    .unwrap();
    Config::from_yaml_str(
        "admin_api: { endpoint: 0.0.0.0:8080, cors: { allowed_origins: ['*'] }, auth: { jwt: { hs256_secret: 0123456789abcdef0 } } }",
    )
    .unwrap();
}

#[test]
fn budgets_parse_with_default_thresholds_and_match_their_scope() {
    let config = Config::from_yaml_str(
        "budgets:\n\
         - { name: acme-month, tenant: acme, period: month, limit_usd: 100 }\n\
         - { name: bob.day, tenant: acme, user: bob, period: day, limit_tokens: 5000, thresholds: [0.9, 1.0, 1.5] }\n\
         - { name: everyone, period: week, limit_tokens: 1 }\n",
    )
    .unwrap();
    let [month, day, all] = &config.budgets[..] else {
        panic!("three budgets: {:?}", config.budgets);
    };
    assert_eq!(month.period, BudgetPeriod::Month);
    assert_eq!(month.thresholds, vec![0.5, 0.8, 1.0]);
    assert_eq!(month.limit(), BudgetLimit::Usd(100.0));
    assert_eq!(day.limit(), BudgetLimit::Tokens(5000));
    assert_eq!(day.thresholds, vec![0.9, 1.0, 1.5]);
    assert!(month.applies_to(Some("acme"), None));
    assert!(month.applies_to(Some("acme"), Some("anyone")));
    assert!(!month.applies_to(Some("globex"), None));
    assert!(!month.applies_to(None, None));
    assert!(day.applies_to(Some("acme"), Some("bob")));
    assert!(!day.applies_to(Some("acme"), Some("alice")));
    assert!(!day.applies_to(Some("acme"), None));
    assert!(all.applies_to(None, None));
    assert!(all.applies_to(Some("x"), Some("y")));
    assert!(Config::from_yaml_str("").unwrap().budgets.is_empty());
}

#[test]
fn bad_budgets_are_refused_with_their_path() {
    for (yaml, path, words) in [
        (
            "budgets: [{ name: a, period: day }]",
            "budgets[0].limit_usd: ",
            "limit_tokens",
        ),
        (
            "budgets: [{ name: a, period: day, limit_usd: 1, limit_tokens: 2 }]",
            "budgets[0].limit_usd: ",
            "not both",
        ),
        (
            "budgets: [{ name: a, period: day, limit_usd: -1 }]",
            "budgets[0].limit_usd: ",
            "above 0",
        ),
        (
            "budgets: [{ name: a, period: day, limit_tokens: 0 }]",
            "budgets[0].limit_tokens: ",
            "at least 1",
        ),
        (
            "budgets: [{ name: a, period: day, limit_tokens: 1 }, { name: a, period: week, limit_tokens: 1 }]",
            "budgets[1].name: ",
            "two budgets",
        ),
        (
            "budgets: [{ name: 'a b', period: day, limit_tokens: 1 }]",
            "budgets[0].name: ",
            "letters",
        ),
        (
            "budgets: [{ name: '', period: day, limit_tokens: 1 }]",
            "budgets[0].name: ",
            "bytes",
        ),
        (
            "budgets: [{ name: a, tenant: '', period: day, limit_tokens: 1 }]",
            "budgets[0].tenant: ",
            "empty",
        ),
        (
            "budgets: [{ name: a, period: day, limit_tokens: 1, thresholds: [] }]",
            "budgets[0].thresholds: ",
            "fractions",
        ),
        (
            "budgets: [{ name: a, period: day, limit_tokens: 1, thresholds: [0.8, 0.5] }]",
            "budgets[0].thresholds[1]: ",
            "increasing",
        ),
        (
            "budgets: [{ name: a, period: day, limit_tokens: 1, thresholds: [0] }]",
            "budgets[0].thresholds[0]: ",
            "above 0",
        ),
    ] {
        let err = error_of(yaml);
        assert!(err.starts_with(path), "{yaml}: {err}");
        assert!(err.contains(words), "{yaml}: {err}");
    }
    let err = error_of("budgets: [{ name: a, period: year, limit_tokens: 1 }]");
    assert!(err.starts_with("budgets[0].period"), "{err}");
    let err = error_of("budgets: [{ name: a, period: day, limit_tokens: 1, tennant: x }]");
    assert!(err.contains("tennant"), "{err}");
}

#[test]
fn the_heavy_duty_is_a_percentage_of_the_time() {
    let config = Config::from_yaml_str("").unwrap();
    assert_eq!(config.admin_api.limits.heavy_duty_percent, 50);
    let config =
        Config::from_yaml_str("admin_api: { limits: { heavy_duty_percent: 100 } }").unwrap();
    assert_eq!(config.admin_api.limits.heavy_duty_percent, 100);
    for bad in ["0", "101"] {
        let err = error_of(&format!(
            "admin_api: {{ limits: {{ heavy_duty_percent: {bad} }} }}"
        ));
        assert!(
            err.starts_with("admin_api.limits.heavy_duty_percent: "),
            "{bad}: {err}"
        );
    }
}

#[test]
fn the_database_time_budget_is_a_percentage_of_a_connection() {
    let config = Config::from_yaml_str("").unwrap();
    assert_eq!(config.admin_api.limits.db_time_per_caller_percent, 100);
    let config =
        Config::from_yaml_str("admin_api: { limits: { db_time_per_caller_percent: 250 } }")
            .unwrap();
    assert_eq!(config.admin_api.limits.db_time_per_caller_percent, 250);
    let err = error_of("admin_api: { limits: { db_time_per_caller_percent: 0 } }");
    assert!(
        err.starts_with("admin_api.limits.db_time_per_caller_percent: "),
        "{err}"
    );
}
