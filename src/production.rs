//! Production mode (`tally --production`, `service.mode: production`): the
//! unsafe defaults that zero-set-up accepts with a warning are refused.

use tally_config::{Config, Endpoint, ServiceMode, TlsConfig};

/// Whether this start is a production one (flag or config).
pub fn enabled(config: &Config, flag: bool) -> bool {
    flag || config.service.mode == ServiceMode::Production
}

/// Every unsafe default in `config`, as (config key, why): empty when none.
///
/// `database_url` is the URL Tally would use (`None`: a private PostgreSQL).
pub fn problems(config: &Config, database_url: Option<&str>) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    if config.processors.redact.hmac_key.is_none() {
        found.push((
            "processors.redact.hmac_key",
            "not set: a generated key would be kept in the database it protects \
             (tally_secrets), where whoever reads the database can reverse the hashes"
                .to_string(),
        ));
    }
    if config
        .exporters
        .postgres
        .tamper_evidence
        .signing_key
        .is_none()
    {
        found.push((
            "exporters.postgres.tamper_evidence.signing_key",
            "not set: a generated checkpoint key would be kept in the database it signs, \
             so whoever can write the database could re-sign a rewritten chain"
                .to_string(),
        ));
    }
    if config.exporters.postgres.erasure_key.is_none() {
        found.push((
            "exporters.postgres.erasure_key",
            "not set: a generated erasure key would be kept in the database it pseudonymises \
             (tally_secrets), where whoever reads the database can recompute a guessed user's \
             pseudonym and link the erased rows back to the person"
                .to_string(),
        ));
    }
    match database_url {
        None => found.push((
            "exporters.postgres.url",
            "not set (nor TALLY_DATABASE_URL): the private PostgreSQL is for zero set-up; \
             name a managed database"
                .to_string(),
        )),
        Some(url) => {
            if let Some(why) = plaintext_database(url) {
                found.push(("exporters.postgres.url", why));
            }
        }
    }
    let auth = &config.admin_api.auth;
    if config.admin_api.enabled && auth.jwt.is_none() && auth.api_keys.enabled != Some(true) {
        found.push((
            "admin_api.auth",
            "no JWT key and API keys not enabled: anyone who reaches the API reads every tenant \
             (production mode wants authentication stated in the config, not inferred from \
             keys found in the database: set admin_api.auth.api_keys.enabled: true)"
                .to_string(),
        ));
    }
    let listeners: [(&'static str, bool, &Endpoint, &Option<TlsConfig>); 3] = [
        (
            "receivers.otlp.grpc.tls",
            config.receivers.otlp.grpc.enabled,
            &config.receivers.otlp.grpc.endpoint,
            &config.receivers.otlp.grpc.tls,
        ),
        (
            "receivers.otlp.http.tls",
            config.receivers.otlp.http.enabled,
            &config.receivers.otlp.http.endpoint,
            &config.receivers.otlp.http.tls,
        ),
        (
            "admin_api.tls",
            config.admin_api.enabled,
            &config.admin_api.endpoint,
            &config.admin_api.tls,
        ),
    ];
    for (key, enabled, endpoint, tls) in listeners {
        let addr = endpoint.socket_addr();
        if enabled && tls.is_none() && !addr.ip().is_loopback() {
            found.push((
                key,
                format!("not set while listening on {addr}: the network would see plaintext"),
            ));
        }
    }
    found
}

/// Why `url` would reach a remote database in plaintext, if it would.
fn plaintext_database(url: &str) -> Option<String> {
    use tally_exporters::postgres::tls;
    use tokio_postgres::config::{Host, SslMode};
    let (config, _) = match tls::parse(url) {
        Ok(parsed) => parsed,
        Err(error) => return Some(format!("unusable: {error}")),
    };
    if config.get_ssl_mode() == SslMode::Require {
        return None;
    }
    let remote = config.get_hosts().iter().find_map(|host| match host {
        Host::Tcp(name) if !matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1") => {
            Some(name.clone())
        }
        _ => None,
    })?;
    Some(format!(
        "reaches {remote} without TLS: add sslmode=verify-full&sslrootcert=<CA file> \
         (or at least sslmode=require)"
    ))
}

/// The error for a production start with `problems`, one line per key.
pub fn refusal(problems: &[(&'static str, String)]) -> String {
    let mut text = format!(
        "production mode refuses to start with {} unsafe setting{}:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for (key, why) in problems {
        text.push_str(&format!("\n  - {key}: {why}"));
    }
    text.push_str("\n(see docs/security.md, \"Secrets and production mode\")");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_database_needs_tls() {
        assert!(plaintext_database("postgres://u@db.internal/tally")
            .is_some_and(|why| why.contains("db.internal")));
        assert_eq!(
            plaintext_database("postgres://u@db.internal/tally?sslmode=require"),
            None
        );
        assert_eq!(plaintext_database("postgres://u@127.0.0.1/tally"), None);
        assert_eq!(
            plaintext_database("host=/run/postgresql dbname=tally"),
            None
        );
    }

    #[test]
    fn the_defaults_are_refused_key_by_key() {
        let keys: Vec<&str> = problems(&Config::default(), None)
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(
            keys,
            [
                "processors.redact.hmac_key",
                "exporters.postgres.tamper_evidence.signing_key",
                "exporters.postgres.erasure_key",
                "exporters.postgres.url",
                "admin_api.auth"
            ]
        );
    }

    #[test]
    fn a_configured_erasure_key_is_accepted() {
        let config =
            Config::from_yaml_str("exporters: { postgres: { erasure_key: 0123456789abcdef0123 } }")
                .unwrap();
        assert!(!problems(&config, None)
            .iter()
            .any(|(key, _)| *key == "exporters.postgres.erasure_key"));
        assert!(Config::from_yaml_str("exporters: { postgres: { erasure_key: short } }").is_err());
    }

    #[test]
    fn a_public_listener_needs_tls() {
        let config = Config::from_yaml_str(
            "receivers: { otlp: { auth: { required: true }, http: { endpoint: 0.0.0.0:4318 } } }",
        )
        .unwrap();
        let found = problems(&config, Some("postgres://db/tally?sslmode=require"));
        assert!(
            found.iter().any(|(key, why)| *key == "receivers.otlp.http.tls"
                && why.contains("0.0.0.0:4318")),
            "{found:?}"
        );
    }
}
