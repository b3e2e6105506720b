//! `processors.tokens` (token-usage recognition and trace attribution) and
//! `pricing` (the LLM price table). See `docs/tokens.md`.
//!
//! ```yaml
//! processors:
//!   tokens:
//!     enabled: true                  # default true
//!     from_logs: true                # log records with usage count too (default true)
//!     attribution_window_secs: 300   # how long a trace's identity is remembered
//!     max_traces: 50000              # traces remembered at most (oldest evicted)
//!     attribution_across_instances: true  # share trace identities through PostgreSQL
//!     mapping:                       # keys prepended to the built-in lists
//!       input: [my_app.prompt_tokens]
//!       user: [my_app.customer]
//!       time_to_first_token_ms: [my_app.ttft_ms]   # seconds: time_to_first_token
//!       time_to_first_token_events: [my_app.first_chunk]  # span event names
//!       replace: false               # true: the lists given replace the built-in ones
//! pricing:
//!   replace_defaults: false          # true: only the models below are priced
//!   models:
//!     - { provider: openai, model: gpt-4o, effective_from: 2025-01-01, input: 2.5, output: 10, cache_read: 1.25 }
//! ```

use serde::{Deserialize, Serialize};

use crate::KeyError;

/// The built-in mapping (`config/defaults/token_mapping.yaml`).
pub const DEFAULT_TOKEN_MAPPING_YAML: &str = include_str!("../defaults/token_mapping.yaml");
/// The built-in price table (`config/defaults/prices.yaml`).
pub const DEFAULT_PRICES_YAML: &str = include_str!("../defaults/prices.yaml");

/// `processors.tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    /// `false`: no token rows are extracted.
    pub enabled: bool,
    /// Log records carrying token usage are ledger rows too (default true).
    pub from_logs: bool,
    /// Seconds a trace's user/tenant/session is remembered to attribute token rows
    /// of the same trace, and seconds after insert during which an unattributed
    /// row may still be attributed by a late record (default 300). The rollup
    /// job's attribution delay should not be shorter.
    pub attribution_window_secs: u64,
    /// Traces remembered at most; the oldest are forgotten first (default 50 000:
    /// ~14 MiB; 20 s of traces at 10,000 records/s of 4 records per trace, the whole
    /// attribution window below ~660 records/s).
    pub max_traces: usize,
    /// Share what each request learns about its traces (identities, pending
    /// token rows) with the other Tally instances on the database
    /// (`trace_identities`), so that attribution works when a trace's spans
    /// reach different instances (default true). `false` saves one upsert per
    /// batch where one instance runs, or where a trace-aware load balancer
    /// sends every span of a trace to one instance.
    pub attribution_across_instances: bool,
    /// Additions to (or replacements of) the built-in mapping.
    pub mapping: TokenMapping,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            enabled: true,
            from_logs: true,
            attribution_window_secs: 300,
            max_traces: 50_000,
            attribution_across_instances: true,
            mapping: TokenMapping::default(),
        }
    }
}

/// The attribute keys tried, in order, for each field of a token row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenMapping {
    /// Only in `processors.tokens.mapping`: `false` (default) tries the keys
    /// given before the built-in ones; `true` makes a field given replace the
    /// built-in list (fields not given keep it).
    pub replace: bool,
    /// Input token count keys.
    pub input: Vec<String>,
    /// Output token count keys.
    pub output: Vec<String>,
    /// Cache-read token count keys.
    pub cache_read: Vec<String>,
    /// Cache-write token count keys.
    pub cache_write: Vec<String>,
    /// Reasoning token count keys.
    pub reasoning: Vec<String>,
    /// Total token count keys.
    pub total: Vec<String>,
    /// Requested model keys.
    pub request_model: Vec<String>,
    /// Answering model keys.
    pub response_model: Vec<String>,
    /// Provider keys.
    pub provider: Vec<String>,
    /// Operation keys.
    pub operation: Vec<String>,
    /// User keys.
    pub user: Vec<String>,
    /// Tenant keys.
    pub tenant: Vec<String>,
    /// Session keys.
    pub session: Vec<String>,
    /// Prefixes of metadata maps (`traceloop.association.properties.`, …).
    pub metadata_prefixes: Vec<String>,
    /// Keys after a metadata prefix that name the user / tenant / session.
    pub metadata_user: Vec<String>,
    /// Keys after a metadata prefix that name the tenant.
    pub metadata_tenant: Vec<String>,
    /// Keys after a metadata prefix that name the session.
    pub metadata_session: Vec<String>,
    /// Time-to-first-token keys whose value is in seconds (the GenAI
    /// conventions' unit); tried before `time_to_first_token_ms`.
    pub time_to_first_token: Vec<String>,
    /// Time-to-first-token keys whose value is in milliseconds.
    pub time_to_first_token_ms: Vec<String>,
    /// Names of the span events that mark a streamed call's first chunk: a
    /// span with no time-to-first-token attribute gets the time from its start
    /// to the earliest such event.
    pub time_to_first_token_events: Vec<String>,
}

impl TokenMapping {
    /// The built-in mapping.
    pub fn builtin() -> TokenMapping {
        // The shipped file is checked by a unit test; an error here is a build defect.
        yaml_serde::from_str(DEFAULT_TOKEN_MAPPING_YAML).unwrap_or_default()
    }

    fn lists_mut(&mut self) -> [&mut Vec<String>; 20] {
        [
            &mut self.input,
            &mut self.output,
            &mut self.cache_read,
            &mut self.cache_write,
            &mut self.reasoning,
            &mut self.total,
            &mut self.request_model,
            &mut self.response_model,
            &mut self.provider,
            &mut self.operation,
            &mut self.user,
            &mut self.tenant,
            &mut self.session,
            &mut self.metadata_prefixes,
            &mut self.metadata_user,
            &mut self.metadata_tenant,
            &mut self.metadata_session,
            &mut self.time_to_first_token,
            &mut self.time_to_first_token_ms,
            &mut self.time_to_first_token_events,
        ]
    }
}

impl TokensConfig {
    /// The built-in mapping with this config's overrides applied.
    pub fn effective_mapping(&self) -> TokenMapping {
        let mut mapping = TokenMapping::builtin();
        mapping.replace = false;
        let mut overrides = self.mapping.clone();
        for (base, extra) in mapping.lists_mut().into_iter().zip(overrides.lists_mut()) {
            if extra.is_empty() {
                continue;
            }
            if self.mapping.replace {
                *base = std::mem::take(extra);
            } else {
                let mut merged = std::mem::take(extra);
                merged.extend(
                    base.iter()
                        .filter(|k| !merged.contains(k))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
                *base = merged;
            }
        }
        mapping
    }

    /// Every attribute key the effective mapping reads (metadata prefixes as
    /// `prefix*`): the redactor keeps them, so usage, models and identities
    /// survive its allowlist.
    pub fn mapping_keys(&self) -> Vec<String> {
        let mapping = self.effective_mapping();
        let lists = [
            &mapping.input,
            &mapping.output,
            &mapping.cache_read,
            &mapping.cache_write,
            &mapping.reasoning,
            &mapping.total,
            &mapping.request_model,
            &mapping.response_model,
            &mapping.provider,
            &mapping.operation,
            &mapping.user,
            &mapping.tenant,
            &mapping.session,
            &mapping.time_to_first_token,
            &mapping.time_to_first_token_ms,
        ];
        let mut keys: Vec<String> = lists.into_iter().flatten().cloned().collect();
        keys.extend(mapping.metadata_prefixes.iter().map(|p| format!("{p}*")));
        keys
    }

    /// Checks values; the error names the key under `processors.tokens`.
    pub fn check(&self) -> Result<(), KeyError> {
        if self.max_traces == 0 {
            return Err(KeyError::new(
                "max_traces".into(),
                "must be at least 1".into(),
            ));
        }
        let mut fields = self.mapping.clone();
        for list in fields.lists_mut() {
            if list.iter().any(|k| k.trim().is_empty()) {
                return Err(KeyError::new(
                    "mapping".into(),
                    "attribute keys must not be empty".into(),
                ));
            }
        }
        Ok(())
    }
}

/// `pricing`: the LLM price table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    /// `true`: the built-in table is not used, only `models`.
    pub replace_defaults: bool,
    /// Entries added to (and taking precedence over) the built-in table.
    pub models: Vec<ModelPrice>,
}

/// One price of one model from a date on, in US dollars per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Informational, and preferred when two entries match a model equally.
    #[serde(default)]
    pub provider: Option<String>,
    /// Model name, or the prefix of dated variants (`gpt-4o` prices `gpt-4o-2024-08-06`).
    pub model: String,
    /// `YYYY-MM-DD` (UTC): the first day the price applies.
    pub effective_from: String,
    /// US dollars per million input tokens.
    pub input: f64,
    /// US dollars per million output tokens.
    pub output: f64,
    /// Price of input tokens read from the prompt cache (default: `input`).
    #[serde(default)]
    pub cache_read: Option<f64>,
    /// Price of input tokens written to the prompt cache (default: `input`).
    #[serde(default)]
    pub cache_write: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    models: Vec<ModelPrice>,
}

impl PricingConfig {
    /// The built-in price table.
    pub fn builtin() -> Vec<ModelPrice> {
        // The shipped file is checked by a unit test; an error here is a build defect.
        yaml_serde::from_str::<PriceFile>(DEFAULT_PRICES_YAML)
            .map(|f| f.models)
            .unwrap_or_default()
    }

    /// The entries in effect: the configured ones, then (unless replaced) the built-in ones.
    pub fn effective_models(&self) -> Vec<ModelPrice> {
        let mut models = self.models.clone();
        if !self.replace_defaults {
            models.extend(PricingConfig::builtin());
        }
        models
    }

    /// Checks values; the error names the key under `pricing`.
    pub fn check(&self) -> Result<(), KeyError> {
        for (i, m) in self.models.iter().enumerate() {
            let key = |field: &str| format!("models[{i}].{field}");
            if m.model.trim().is_empty() {
                return Err(KeyError::new(key("model"), "must not be empty".into()));
            }
            if !is_iso_date(&m.effective_from) {
                return Err(KeyError::new(
                    key("effective_from"),
                    "must be a date YYYY-MM-DD".into(),
                ));
            }
            let prices = [
                ("input", Some(m.input)),
                ("output", Some(m.output)),
                ("cache_read", m.cache_read),
                ("cache_write", m.cache_write),
            ];
            for (field, price) in prices {
                if price.is_some_and(|p| !p.is_finite() || p < 0.0) {
                    return Err(KeyError::new(
                        key(field),
                        "must be a non-negative number".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `YYYY-MM-DD` with a plausible month and day.
pub fn is_iso_date(text: &str) -> bool {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        text.get(r)
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))?
            .parse()
            .ok()
    };
    matches!(
        (digits(0..4), digits(5..7), digits(8..10)),
        (Some(_), Some(1..=12), Some(1..=31))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_files_parse_and_are_complete() {
        let mapping: TokenMapping = yaml_serde::from_str(DEFAULT_TOKEN_MAPPING_YAML).unwrap();
        assert!(mapping
            .input
            .contains(&"gen_ai.usage.input_tokens".to_string()));
        assert!(mapping
            .metadata_prefixes
            .contains(&"ai.telemetry.metadata.".to_string()));
        let prices: PriceFile = yaml_serde::from_str(DEFAULT_PRICES_YAML).unwrap();
        assert!(prices.models.len() > 20);
        let config = PricingConfig {
            replace_defaults: true,
            models: prices.models,
        };
        config.check().unwrap();
    }

    #[test]
    fn overrides_prepend_or_replace() {
        let mut config = TokensConfig::default();
        config.mapping.input = vec!["my.in".into(), "gen_ai.usage.input_tokens".into()];
        let merged = config.effective_mapping();
        assert_eq!(merged.input[0], "my.in");
        assert_eq!(merged.input[1], "gen_ai.usage.input_tokens");
        assert_eq!(
            merged
                .input
                .iter()
                .filter(|k| *k == "gen_ai.usage.input_tokens")
                .count(),
            1
        );
        assert_eq!(merged.output, TokenMapping::builtin().output);
        config.mapping.replace = true;
        let replaced = config.effective_mapping();
        assert_eq!(replaced.input, ["my.in", "gen_ai.usage.input_tokens"]);
        assert_eq!(replaced.output, TokenMapping::builtin().output);
    }

    #[test]
    fn dates_are_checked() {
        assert!(is_iso_date("2025-06-10"));
        assert!(!is_iso_date("2025-13-10"));
        assert!(!is_iso_date("2025/06/10"));
        let bad = PricingConfig {
            replace_defaults: false,
            models: vec![ModelPrice {
                provider: None,
                model: "m".into(),
                effective_from: "soon".into(),
                input: 1.0,
                output: 1.0,
                cache_read: None,
                cache_write: Some(-1.0),
            }],
        };
        assert_eq!(bad.check().unwrap_err().key, "models[0].effective_from");
    }
}
