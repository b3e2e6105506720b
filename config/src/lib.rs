//! Tally's configuration: the YAML schema, `${env:VAR}` expansion, built-in
//! defaults and validation with errors that name the offending path.
//!
//! ```
//! let config = tally_config::Config::from_yaml_str(
//!     "receivers: { otlp: { grpc: { endpoint: 127.0.0.1:0 } } }",
//! ).unwrap();
//! assert_eq!(config.receivers.otlp.grpc.endpoint.port(), 0);
//! ```

#![warn(missing_docs)]

mod budgets;
mod endpoint;
mod expand;
mod redact;
mod schema;
pub mod taxonomy;
mod tokens;

pub use budgets::{
    BudgetConfig, BudgetLimit, BudgetPeriod, MAX_BUDGET_NAME_LEN, MAX_BUDGET_THRESHOLD,
    MAX_BUDGET_THRESHOLDS,
};
pub use endpoint::Endpoint;
pub use expand::{expand_env, ExpandError};
pub use redact::*;
pub use schema::*;
pub use taxonomy::{
    check_action_name, ActionNameError, Taxonomy, TaxonomyError, TaxonomyHandle, TaxonomyReport,
};
pub use tokens::*;

use std::path::Path;

/// A configuration that could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    /// The file cannot be read.
    Read {
        /// The file's path.
        path: String,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    #[error("{0}")]
    /// A `${env:…}` reference cannot be expanded.
    Expand(ExpandError),
    #[error("invalid YAML: {0}")]
    /// The text is not YAML.
    Yaml(String),
    /// `path` is the dotted path of the offending key, e.g. `receivers.otlp.grpc.endpoint`.
    #[error("{path}: {message}")]
    Invalid {
        /// The offending key's dotted path.
        path: String,
        /// What is wrong with its value.
        message: String,
    },
}

/// A value a component's `check()` refused: the key that holds it (relative
/// to the component's section) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyError<K = String> {
    /// The offending key, relative to the section that was checked.
    pub key: K,
    /// Why its value is refused.
    pub message: String,
}

impl<K> KeyError<K> {
    /// The error of `key`, refused because of `message`.
    pub fn new(key: K, message: String) -> KeyError<K> {
        KeyError { key, message }
    }
}

impl Config {
    /// Reads, expands and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_yaml_str(&text)
    }

    /// Expands `${env:VAR}` references, parses YAML and validates.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        let expanded =
            expand_env(text, |name| std::env::var(name).ok()).map_err(ConfigError::Expand)?;
        let value: yaml_serde::Value =
            yaml_serde::from_str(&expanded).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        // An empty document means "all defaults".
        let value = match value {
            yaml_serde::Value::Null => yaml_serde::Value::Mapping(Default::default()),
            other => other,
        };
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Invalid {
                path: if path == "." { "(root)".into() } else { path },
                message: e.into_inner().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks rules that span several keys or need more than a type.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |path: &str, message: &str| ConfigError::Invalid {
            path: path.into(),
            message: message.into(),
        };
        let receiver = &self.receivers.otlp;
        if receiver.grpc.max_recv_msg_size_mib == 0 {
            return Err(invalid(
                "receivers.otlp.grpc.max_recv_msg_size_mib",
                "must be at least 1",
            ));
        }
        if receiver.http.max_request_body_size == 0 {
            return Err(invalid(
                "receivers.otlp.http.max_request_body_size",
                "must be at least 1",
            ));
        }
        let rate = receiver.http.events_rate_limit.per_second;
        if !rate.is_finite() || rate < 0.0 {
            return Err(invalid(
                "receivers.otlp.http.events_rate_limit.per_second",
                "must be a number of events per second, 0 or more (0: no limit)",
            ));
        }
        let largest_message = receiver.http.max_request_body_size.max(
            receiver
                .grpc
                .max_recv_msg_size_mib
                .saturating_mul(1024 * 1024),
        );
        if receiver.max_in_flight_bytes < largest_message {
            return Err(invalid(
                "receivers.otlp.max_in_flight_bytes",
                &format!(
                    "must be at least the largest accepted message ({largest_message} bytes: \
                     receivers.otlp.http.max_request_body_size and \
                     receivers.otlp.grpc.max_recv_msg_size_mib)"
                ),
            ));
        }
        if let Err(KeyError { key, message }) = self.processors.tokens.check() {
            return Err(invalid(&format!("processors.tokens.{key}"), &message));
        }
        if let Err(KeyError { key, message }) = self.pricing.check() {
            return Err(invalid(&format!("pricing.{key}"), &message));
        }
        if let Err(KeyError { key, message }) = budgets::check(&self.budgets) {
            return Err(invalid(&format!("budgets{key}"), &message));
        }
        if let Err(KeyError { key, message }) = self.processors.redact.check() {
            return Err(invalid(&format!("processors.redact.{key}"), &message));
        }
        let pg = &self.exporters.postgres;
        if pg.erasure_key.as_deref().is_some_and(|k| k.len() < 16) {
            return Err(invalid(
                "exporters.postgres.erasure_key",
                "must be at least 16 bytes",
            ));
        }
        if pg.batch_max_rows == 0 {
            return Err(invalid(
                "exporters.postgres.batch_max_rows",
                "must be at least 1",
            ));
        }
        if pg.queue_capacity_records < pg.batch_max_rows {
            return Err(invalid(
                "exporters.postgres.queue_capacity_records",
                "must be at least batch_max_rows",
            ));
        }
        if pg.writers == 0 {
            return Err(invalid("exporters.postgres.writers", "must be at least 1"));
        }
        if pg
            .tamper_evidence
            .checkpoint_dir
            .as_ref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            return Err(invalid(
                "exporters.postgres.tamper_evidence.checkpoint_dir",
                "must be a directory path (omit it to keep checkpoints only in the database)",
            ));
        }
        if let Some(archive) = &self.retention.archive {
            if archive.dir.as_os_str().is_empty() {
                return Err(invalid(
                    "retention.archive.dir",
                    "must be a directory path (omit retention.archive to archive nothing)",
                ));
            }
        }
        if let Some(tenant) = self
            .retention
            .tenants
            .keys()
            .find(|t| t.chars().count() > 1024 || t.contains('\0'))
        {
            return Err(invalid(
                &format!(
                    "retention.tenants.{}",
                    tenant.chars().take(64).collect::<String>()
                ),
                "a tenant id has at most 1024 characters and no NUL byte",
            ));
        }
        if self.admin_api.max_page_size == 0 {
            return Err(invalid("admin_api.max_page_size", "must be at least 1"));
        }
        for origin in &self.admin_api.cors.allowed_origins {
            let valid = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin
                        .trim_end_matches('/')
                        .contains(|c: char| c.is_whitespace())
                    && origin.is_ascii());
            if !valid {
                return Err(invalid(
                    "admin_api.cors.allowed_origins",
                    "each origin is `*` or `http(s)://host[:port]`",
                ));
            }
        }
        if let Some(jwt) = &self.admin_api.auth.jwt {
            if jwt.hs256_secret.as_deref().is_some_and(|s| s.len() < 16) {
                return Err(invalid(
                    "admin_api.auth.jwt.hs256_secret",
                    "must be at least 16 bytes",
                ));
            }
            if jwt.public_key_pem.is_some() && jwt.public_key_file.is_some() {
                return Err(invalid(
                    "admin_api.auth.jwt.public_key_pem",
                    "set public_key_pem or public_key_file, not both",
                ));
            }
            if jwt.needs_audience() && jwt.audience.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(
                    "admin_api.auth.jwt.audience",
                    "must be set with a public key or JWKS file (the issuer's keys sign tokens for other applications too)",
                ));
            }
        }
        let limits = &self.admin_api.limits;
        for (key, value) in [
            ("request_timeout_ms", limits.request_timeout_ms),
            (
                "max_concurrent_per_caller",
                limits.max_concurrent_per_caller as u64,
            ),
            (
                "max_streams_per_caller",
                limits.max_streams_per_caller as u64,
            ),
            ("heavy_duty_percent", u64::from(limits.heavy_duty_percent)),
            (
                "db_time_per_caller_percent",
                u64::from(limits.db_time_per_caller_percent),
            ),
        ] {
            if value == 0 {
                return Err(invalid(
                    &format!("admin_api.limits.{key}"),
                    "must be at least 1",
                ));
            }
        }
        if limits.heavy_duty_percent > 100 {
            return Err(invalid(
                "admin_api.limits.heavy_duty_percent",
                "must be at most 100 (a percentage of the time)",
            ));
        }
        if let Some((path, endpoint)) = receiver.exposed_endpoint() {
            if !receiver.auth.required && !receiver.allow_unauthenticated {
                return Err(invalid(
                    path,
                    &format!(
                        "{endpoint} is reachable beyond this machine but ingest needs no \
                         credential: set receivers.otlp.auth.required: true (and create keys \
                         with `tally apikey create --scope ingest --tenant T`), listen on \
                         127.0.0.1, or set receivers.otlp.allow_unauthenticated: true"
                    ),
                ));
            }
        }
        if receiver.auth.cache_ttl_secs > 300 {
            return Err(invalid(
                "receivers.otlp.auth.cache_ttl_secs",
                "must be at most 300 (a revoked key works until its cache entry expires)",
            ));
        }
        if receiver.auth.cache_max_entries == 0 {
            return Err(invalid(
                "receivers.otlp.auth.cache_max_entries",
                "must be at least 1",
            ));
        }
        // With api_keys.enabled unset, keys in the database may still turn
        // authentication on at start (checked there); here only a certainly
        // open admin API is refused.
        let admin = &self.admin_api;
        let certainly_open = !admin.auth.configured() && admin.auth.api_keys.enabled == Some(false);
        if admin.enabled && certainly_open {
            if let Some(message) = admin.open_api_problem() {
                return Err(invalid(message.0, &message.1));
            }
        }
        let api_keys = &self.admin_api.auth.api_keys;
        if api_keys.cache_ttl_secs > 300 {
            return Err(invalid(
                "admin_api.auth.api_keys.cache_ttl_secs",
                "must be at most 300 (a revoked key works until its cache entry expires)",
            ));
        }
        if api_keys.cache_max_entries == 0 {
            return Err(invalid(
                "admin_api.auth.api_keys.cache_max_entries",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The database URL: `exporters.postgres.url`, else `TALLY_DATABASE_URL`.
    /// `None` means "run a private PostgreSQL".
    pub fn database_url(&self) -> Option<String> {
        self.exporters
            .postgres
            .url
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| {
                std::env::var("TALLY_DATABASE_URL")
                    .ok()
                    .filter(|u| !u.is_empty())
            })
    }
}

#[cfg(test)]
mod tests;
