//! The configuration schema. Every section has built-in defaults, so an empty
//! file (or no file) is a working configuration. Unknown keys are errors.
//!
//! Over 600 lines: the config structs and their defaults, one per section: declarations and their docs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Endpoint;
use crate::RedactConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `receivers`.
    pub receivers: Receivers,
    /// `processors`.
    pub processors: Processors,
    /// `exporters`.
    pub exporters: Exporters,
    /// `admin_api`.
    pub admin_api: AdminApiConfig,
    /// `retention`.
    pub retention: RetentionConfig,
    /// `service`.
    pub service: ServiceConfig,
    /// `pricing`.
    pub pricing: crate::PricingConfig,
    /// Spending and token budgets (`docs/configuration.md#budgets`); none by default.
    pub budgets: Vec<crate::BudgetConfig>,
}

/// `receivers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Receivers {
    /// `receivers.otlp`.
    pub otlp: OtlpReceiverConfig,
}

/// `receivers.otlp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpReceiverConfig {
    /// `receivers.otlp.grpc`.
    pub grpc: GrpcConfig,
    /// `receivers.otlp.http`.
    pub http: HttpConfig,
    /// Request bytes in flight at most, over gRPC and HTTP together (default 64 MiB):
    /// each request is charged its body size (after decompression) from the moment it
    /// arrives until it is answered; a request that finds the budget spent is refused
    /// with HTTP 429 / gRPC `RESOURCE_EXHAUSTED` and a retry delay. At least the larger
    /// of the two message size limits.
    pub max_in_flight_bytes: usize,
    /// Longest time a request body may take to arrive, in milliseconds (default
    /// 30000; 0 = no deadline): a slower one is answered HTTP 408 / gRPC
    /// `DEADLINE_EXCEEDED` and its bytes leave the in-flight budget.
    pub body_read_timeout_ms: u64,
    /// Ingest credentials (API keys with scope `ingest`).
    pub auth: IngestAuthConfig,
    /// Lets the receivers listen on a non-loopback address while
    /// `auth.required` is off (default `false`: such a start is refused).
    pub allow_unauthenticated: bool,
}

impl Default for OtlpReceiverConfig {
    fn default() -> Self {
        OtlpReceiverConfig {
            grpc: GrpcConfig::default(),
            http: HttpConfig::default(),
            max_in_flight_bytes: 64 * 1024 * 1024,
            body_read_timeout_ms: 30_000,
            auth: IngestAuthConfig::default(),
            allow_unauthenticated: false,
        }
    }
}

impl OtlpReceiverConfig {
    /// The first enabled receiver listening beyond loopback, as
    /// `(config path, endpoint)`.
    pub fn exposed_endpoint(&self) -> Option<(&'static str, Endpoint)> {
        [
            (
                "receivers.otlp.grpc.endpoint",
                self.grpc.enabled,
                self.grpc.endpoint,
            ),
            (
                "receivers.otlp.http.endpoint",
                self.http.enabled,
                self.http.endpoint,
            ),
        ]
        .into_iter()
        .find(|(_, enabled, endpoint)| *enabled && !endpoint.is_loopback())
        .map(|(path, _, endpoint)| (path, endpoint))
    }
}

/// `receivers.otlp.auth`: API keys with scope `ingest` (`tally apikey create
/// --scope ingest --tenant T`), sent as `Authorization: Bearer tally_…` or
/// `X-API-Key: tally_…`. A valid key is always honoured (its tenant is stamped
/// on every record it writes); an invalid one is always refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestAuthConfig {
    /// Refuse requests without a valid ingest key (HTTP 401 / gRPC
    /// `UNAUTHENTICATED`). Default `false`.
    pub required: bool,
    /// How long a looked-up key is trusted without asking the database again,
    /// seconds (default 10, at most 300; 0 = ask every time). A revoked key
    /// stops working within this time.
    pub cache_ttl_secs: u64,
    /// Most looked-up keys cached at once (default 10000).
    pub cache_max_entries: usize,
}

impl Default for IngestAuthConfig {
    fn default() -> Self {
        IngestAuthConfig {
            required: false,
            cache_ttl_secs: 10,
            cache_max_entries: 10_000,
        }
    }
}

/// `receivers.otlp.grpc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Whether this listener runs.
    pub enabled: bool,
    /// Default `127.0.0.1:4317`.
    pub endpoint: Endpoint,
    /// Largest accepted message after decompression, in MiB (default 20).
    pub max_recv_msg_size_mib: usize,
    /// Serve gRPC over TLS (`None`, the default: plaintext).
    pub tls: Option<TlsConfig>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            enabled: true,
            endpoint: Endpoint::localhost(4317),
            max_recv_msg_size_mib: 20,
            tls: None,
        }
    }
}

/// `receivers.otlp.http`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Whether this listener runs.
    pub enabled: bool,
    /// Default `127.0.0.1:4318`.
    pub endpoint: Endpoint,
    /// Largest accepted body in bytes, compressed and after decompression (default 20 MiB).
    pub max_request_body_size: usize,
    /// Serve OTLP/HTTP over TLS (`None`, the default: plaintext).
    pub tls: Option<TlsConfig>,
    /// Per-key rate limit of REST ingest (`POST /api/v1/events`).
    pub events_rate_limit: EventsRateLimit,
}

/// `receivers.otlp.http.events_rate_limit`: how many REST ingest events each
/// ingest key may send (requests without a key share one allowance). A token
/// bucket of `burst` events refilled at `per_second`; a request arriving at an
/// empty bucket is refused with 429 and `Retry-After`. A request may take the
/// bucket below zero (a batch larger than `burst` still passes once); the key
/// then waits until it refills. `per_second: 0` (the default) means no limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsRateLimit {
    /// Events per second per key (default 0: no limit).
    pub per_second: f64,
    /// Events a key may send at once after a quiet period (default 0: `per_second`, at least 1).
    pub burst: u64,
}

impl Default for EventsRateLimit {
    fn default() -> Self {
        EventsRateLimit {
            per_second: 0.0,
            burst: 0,
        }
    }
}

/// `tls` of a listener (`receivers.otlp.grpc`, `receivers.otlp.http`, `admin_api`),
/// named as in the OpenTelemetry Collector. The files are PEM; they are read again
/// on SIGHUP and when they change, without dropping open connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (leaf first).
    pub cert_file: PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Certificate authorities of the clients: when set, every client must
    /// present a certificate they signed (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            endpoint: Endpoint::localhost(4318),
            max_request_body_size: 20 * 1024 * 1024,
            tls: None,
            events_rate_limit: EventsRateLimit::default(),
        }
    }
}

/// `processors`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Processors {
    /// `processors.redact`.
    pub redact: RedactConfig,
    /// `processors.validate`.
    pub validate: ValidateConfig,
    /// `processors.tokens`.
    pub tokens: crate::TokensConfig,
}

/// `processors.validate` (taxonomy registry, see `docs/taxonomy.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidateConfig {
    /// Path of the taxonomy YAML (relative to the working directory); the
    /// built-in default when unset.
    pub taxonomy: Option<PathBuf>,
    /// `lenient` (the default) or `strict`.
    pub mode: ValidateMode,
    /// How often the taxonomy file is checked for changes, in seconds (default
    /// 2; 0 turns file polling off, SIGHUP still reloads).
    pub reload_interval_secs: u64,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig {
            taxonomy: None,
            mode: ValidateMode::default(),
            reload_interval_secs: 2,
        }
    }
}

/// What happens to events the taxonomy does not accept. Malformed action names
/// go to `rejected_events` in every mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidateMode {
    /// Unknown actions and invalid metadata are stored, flagged `taxonomy_valid = false`.
    #[default]
    Lenient,
    /// Unknown actions and invalid metadata go to `rejected_events`.
    Strict,
    /// No taxonomy check (only the action-name shape check).
    Off,
}

impl ValidateMode {
    /// `lenient`, `strict` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            ValidateMode::Lenient => "lenient",
            ValidateMode::Strict => "strict",
            ValidateMode::Off => "off",
        }
    }
}

/// `exporters`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Exporters {
    /// `exporters.postgres`.
    pub postgres: PostgresConfig,
    /// `exporters.prometheus`.
    pub prometheus: PrometheusConfig,
}

/// `exporters.postgres`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://…` URL; falls back to `TALLY_DATABASE_URL`; unset runs a private server.
    pub url: Option<String>,
    /// `postgres://…` URL of a hot standby of that database: the admin API's
    /// queries, aggregates and exports read from it (live feeds stay on the
    /// primary). Unset: everything reads the primary.
    pub read_url: Option<String>,
    /// Data folder of the private PostgreSQL (used only without a URL).
    pub data_dir: PathBuf,
    /// Connections used by batch writers (each writer holds one).
    pub writers: usize,
    /// Rows per COPY batch at most.
    pub batch_max_rows: usize,
    /// How long a writer waits to fill a batch once it has rows, in milliseconds
    /// (only while every other writer is busy writing).
    pub batch_linger_ms: u64,
    /// Records queued for writing at most; beyond this, exports are refused (retryable).
    pub queue_capacity_records: usize,
    /// Daily partitions created ahead of today.
    pub partitions_ahead_days: u32,
    /// `Retry-After` given to clients when the database is down or the queue is full.
    pub retry_after_secs: u64,
    /// Hash chain and signed checkpoints over `activity_events` (docs/tamper-evidence.md).
    pub tamper_evidence: TamperEvidenceConfig,
    /// Key erasure pseudonyms are derived with (HMAC-SHA256; its UTF-8 bytes,
    /// at least 16; use `${env:VAR}`). Unset: one is generated once and kept in
    /// the database (`tally_secrets`), which production mode refuses (see
    /// docs/privacy.md, "Erasure").
    pub erasure_key: Option<String>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            read_url: None,
            data_dir: PathBuf::from("./tally-data"),
            writers: 2,
            batch_max_rows: 5_000,
            batch_linger_ms: 5,
            queue_capacity_records: 100_000,
            partitions_ahead_days: 7,
            retry_after_secs: 1,
            tamper_evidence: TamperEvidenceConfig::default(),
            erasure_key: None,
        }
    }
}

/// `exporters.postgres.tamper_evidence`: the chainer job that links each
/// tenant's `activity_events` rows into a SHA-256 hash chain and signs
/// periodic checkpoints with Ed25519 (see `docs/tamper-evidence.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TamperEvidenceConfig {
    /// Run the chainer (default `true`).
    pub enabled: bool,
    /// Pause between two chainer runs, milliseconds (default 1000).
    pub interval_ms: u64,
    /// Seconds between signed checkpoints (default 300; 0 = after every run
    /// that chained rows).
    pub checkpoint_interval_secs: u64,
    /// Ed25519 signing key: the 32-byte seed, base64 (use `${env:VAR}`). Unset:
    /// a key is generated once and kept in the database (`tally_secrets`).
    pub signing_key: Option<String>,
    /// A directory outside the database where the chainer also appends every
    /// signed checkpoint (`checkpoints-YYYY-MM-DD.ndjson`, fsynced), for
    /// `tally verify --checkpoints DIR`. Unset: checkpoints live only in the database.
    pub checkpoint_dir: Option<PathBuf>,
}

impl Default for TamperEvidenceConfig {
    fn default() -> Self {
        TamperEvidenceConfig {
            enabled: true,
            interval_ms: 1000,
            checkpoint_interval_secs: 300,
            signing_key: None,
            checkpoint_dir: None,
        }
    }
}

/// `exporters.prometheus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Whether the endpoint runs.
    pub enabled: bool,
    /// Default `127.0.0.1:9464`, served at `/metrics`.
    pub endpoint: Endpoint,
    /// Add a `tenant` label to `tally_activity_events_total` and the `tally_llm_*`
    /// counters (default off).
    pub tenant_label: bool,
    /// Distinct tenants labelled before the rest become `other` (default 50).
    pub tenant_label_cap: usize,
    /// Distinct actions labelled before the rest become `other` (default 200).
    pub action_label_cap: usize,
    /// Distinct models labelled before the rest become `other` (default 100).
    pub model_label_cap: usize,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            enabled: true,
            endpoint: Endpoint::localhost(9464),
            tenant_label: false,
            tenant_label_cap: 50,
            action_label_cap: 200,
            model_label_cap: 100,
        }
    }
}

/// `admin_api`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminApiConfig {
    /// Whether the admin API runs.
    pub enabled: bool,
    /// Default `127.0.0.1:8080`.
    pub endpoint: Endpoint,
    /// Page size when `limit` is not given (default 50).
    pub default_page_size: u32,
    /// Largest accepted `limit` (default 1000).
    pub max_page_size: u32,
    /// `admin_api.auth`.
    pub auth: AuthConfig,
    /// Seconds between heartbeat comments on idle live feeds (default 15).
    pub sse_heartbeat_secs: u64,
    /// Most live-feed clients (SSE streams, stats streams) at once; beyond, 503 (default 1000).
    pub sse_max_clients: usize,
    /// Events buffered per live-feed client before it is reset (default 1024).
    pub sse_client_buffer: usize,
    /// Cross-origin access for browser dashboards; off by default.
    pub cors: CorsConfig,
    /// Work one caller may make the API do at once (`admin_api.limits`).
    pub limits: AdminLimitsConfig,
    /// Serve the API over TLS (`None`, the default: plaintext).
    pub tls: Option<TlsConfig>,
    /// Lets the admin API listen on a non-loopback address without
    /// authentication (default `false`: such a start is refused).
    pub allow_unauthenticated: bool,
}

impl AdminApiConfig {
    /// Why this admin API may not run without authentication, as `(config
    /// path, message)`: it listens beyond loopback without
    /// `allow_unauthenticated`, or it allows every origin (`*`) to call it
    /// from a browser. `None` when running open is allowed.
    pub fn open_api_problem(&self) -> Option<(&'static str, String)> {
        if !self.endpoint.is_loopback() && !self.allow_unauthenticated {
            return Some((
                "admin_api.endpoint",
                format!(
                    "{} is reachable beyond this machine but the admin API has no \
                     authentication: configure admin_api.auth.jwt, create an API key \
                     (`tally apikey create`), listen on 127.0.0.1, or set \
                     admin_api.allow_unauthenticated: true",
                    self.endpoint
                ),
            ));
        }
        if self.cors.allowed_origins.iter().any(|origin| origin == "*") {
            return Some((
                "admin_api.cors.allowed_origins",
                "`*` lets every web page read the data of an admin API without \
                 authentication: configure authentication or list the origins"
                    .to_owned(),
            ));
        }
        None
    }
}

/// `admin_api.limits`: bounds per caller, so that one caller cannot starve the
/// others. The caller is the authenticated identity (JWT `sub` + `tenant`, or
/// the API key), else the client's IP address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminLimitsConfig {
    /// Longest a request may take before it is answered 504 (default 20000 ms;
    /// live feeds are exempt).
    pub request_timeout_ms: u64,
    /// Requests of one caller served at once; beyond, 429 with `Retry-After`
    /// (default 4: half of the API's 8 database connections).
    pub max_concurrent_per_caller: usize,
    /// Live feeds (`/activity/stream`, `/tokens/stream`, `/stats/stream`) one
    /// caller may hold open at once; beyond, 429 with `Retry-After` (default 16).
    pub max_streams_per_caller: usize,
    /// Most of the wall time, in percent, that heavy requests (those that held
    /// their database connection long) may keep the heavy lane busy while other
    /// requests are served: after a hold of `t` the lane rests
    /// `t × (100 − p) / p` (default 50; 100 = no rest; 1–100).
    pub heavy_duty_percent: u8,
    /// Each caller's budget of database time: its requests (and its live feeds'
    /// reads) may hold the admin API's database connections for this share of one
    /// connection's time on average, in percent, with a burst of 10 s of it; a
    /// request that arrives while the caller is over it is answered 429 with
    /// `Retry-After` (default 100: a caller sending one request at a time is never
    /// refused; at least 1).
    pub db_time_per_caller_percent: u32,
}

impl Default for AdminLimitsConfig {
    fn default() -> Self {
        AdminLimitsConfig {
            request_timeout_ms: 20_000,
            max_concurrent_per_caller: 4,
            max_streams_per_caller: 16,
            heavy_duty_percent: 50,
            db_time_per_caller_percent: 100,
        }
    }
}

/// `admin_api.cors`: origins allowed to call the API from a browser
/// (`https://grafana.example.com`, or `*`). Empty (the default) sends no CORS headers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Browser origins allowed to call the API (CORS).
    pub allowed_origins: Vec<String>,
}

impl Default for AdminApiConfig {
    fn default() -> Self {
        AdminApiConfig {
            enabled: true,
            endpoint: Endpoint::localhost(8080),
            default_page_size: 50,
            max_page_size: 1000,
            auth: AuthConfig::default(),
            sse_heartbeat_secs: 15,
            sse_max_clients: 1000,
            sse_client_buffer: 1024,
            cors: CorsConfig::default(),
            limits: AdminLimitsConfig::default(),
            tls: None,
            allow_unauthenticated: false,
        }
    }
}

/// `admin_api.auth`. With no JWT key configured and API keys not enabled, the
/// API is open (and Tally warns); otherwise every `/api/v1` route except
/// `openapi.json` needs a valid bearer token or API key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// JWT verification (`None`: no JWT accepted).
    pub jwt: Option<JwtConfig>,
    /// `admin_api.auth.api_keys`: keys made with `tally apikey create`.
    pub api_keys: ApiKeysConfig,
}

/// `admin_api.auth.jwt`. Each configured key adds the algorithms it verifies:
/// `hs256_secret` → HS256, an RSA public key → RS256, a P-256 public key →
/// ES256; a JWKS file adds each of its keys (selected by the token's `kid`).
/// Several may be configured at once; `alg: none` is never accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Shared secret for HS256 tokens.
    pub hs256_secret: Option<String>,
    /// An RSA (RS256) or P-256 (ES256) public key, PEM text inline.
    pub public_key_pem: Option<String>,
    /// An RSA (RS256) or P-256 (ES256) public key, path of a PEM file.
    pub public_key_file: Option<PathBuf>,
    /// Path of a JWKS file (`{"keys": [...]}`, RSA and P-256 keys with a `kid`).
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set; must be set when a public key or JWKS file is
    /// configured (those keys are often shared with other applications).
    pub audience: Option<String>,
    /// Clock-skew leeway for `exp`/`nbf`, seconds (default 30).
    pub leeway_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret: None,
            public_key_pem: None,
            public_key_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
        }
    }
}

impl JwtConfig {
    /// Whether an asymmetric key (PEM or JWKS) is configured: then `audience`
    /// is required.
    pub fn needs_audience(&self) -> bool {
        self.public_key_pem.is_some() || self.public_key_file.is_some() || self.jwks_file.is_some()
    }

    /// Whether at least one verification key is configured.
    pub fn has_keys(&self) -> bool {
        self.hs256_secret.is_some()
            || self.public_key_pem.is_some()
            || self.public_key_file.is_some()
            || self.jwks_file.is_some()
    }
}

/// `admin_api.auth.api_keys`: machine credentials stored hashed in the
/// `api_keys` table (`tally apikey create|list|revoke`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// `true`/`false` turns API keys on/off; unset (the default) turns them on
    /// exactly when a JWT key is configured.
    pub enabled: Option<bool>,
    /// How long a verified key is trusted without asking the database again,
    /// seconds (default 10, at most 300; 0 = ask every time). A revoked key
    /// stops working within this time.
    pub cache_ttl_secs: u64,
    /// Most verified keys cached at once (default 10000).
    pub cache_max_entries: usize,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        ApiKeysConfig {
            enabled: None,
            cache_ttl_secs: 10,
            cache_max_entries: 10_000,
        }
    }
}

impl AuthConfig {
    /// Whether the configuration alone turns authentication on (a JWT key, or
    /// `api_keys.enabled: true`). With `api_keys.enabled` unset, keys found in
    /// the database turn it on at start too.
    pub fn configured(&self) -> bool {
        self.jwt.as_ref().is_some_and(JwtConfig::has_keys) || self.api_keys.enabled == Some(true)
    }

    /// Whether API keys are accepted: `api_keys.enabled`, else whether a JWT key
    /// is configured.
    pub fn api_keys_enabled(&self) -> bool {
        self.api_keys
            .enabled
            .unwrap_or_else(|| self.jwt.as_ref().is_some_and(JwtConfig::has_keys))
    }
}

/// `retention` (days of raw rows and of rollups kept, per-tenant overrides,
/// archives of what is dropped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Whole UTC days of raw rows kept (default 90; 0 = keep forever).
    pub raw_days: u32,
    /// Days of rollup rows kept (default 730; 0 = keep forever).
    pub aggregate_days: u32,
    /// Where each raw partition (or a tenant's rows of one) is written, with a
    /// signed manifest, before retention removes it. Unset: nothing is archived.
    pub archive: Option<ArchiveConfig>,
    /// Per-tenant overrides of `raw_days` (`''`: events without a tenant).
    pub tenants: BTreeMap<String, TenantRetentionConfig>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            raw_days: 90,
            aggregate_days: 730,
            archive: None,
            tenants: BTreeMap::new(),
        }
    }
}

impl RetentionConfig {
    /// The raw retention of `tenant` in days: its override, else `raw_days`
    /// (0 = keep forever).
    pub fn raw_days_of(&self, tenant: &str) -> u32 {
        self.tenants
            .get(tenant)
            .map_or(self.raw_days, |t| t.raw_days)
    }
}

/// `retention.archive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// The archive directory (`<dir>/<table>/<partition>.ndjson` or `.parquet`,
    /// and its `.manifest.json`).
    pub dir: PathBuf,
    /// `ndjson` (the default) or `parquet`.
    #[serde(default)]
    pub format: ArchiveFormat,
}

/// `retention.archive.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFormat {
    /// One JSON object per row and line.
    #[default]
    Ndjson,
    /// Apache Parquet: typed columns, zstd-compressed, in bounded row groups.
    Parquet,
}

/// `retention.tenants.<tenant>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRetentionConfig {
    /// Whole UTC days of this tenant's raw rows kept (0 = keep forever).
    pub raw_days: u32,
}

/// `service`: process-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Longest time SIGTERM waits for in-flight batches, seconds (default 30).
    pub shutdown_grace_secs: u64,
    /// Log filter (`RUST_LOG` syntax), default `info`.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// `development` (the default) or `production`: a production start refuses
    /// the unsafe defaults (see `docs/security.md`); also `tally --production`.
    pub mode: ServiceMode,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            shutdown_grace_secs: 30,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            mode: ServiceMode::Development,
        }
    }
}

/// `service.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// Zero set-up: generated keys and a private database are accepted (with warnings).
    #[default]
    Development,
    /// Refuses to start with generated in-database keys and the other unsafe defaults.
    Production,
}

/// Format of Tally's own log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}
