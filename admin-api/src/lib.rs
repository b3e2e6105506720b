//! Tally's admin API (axum): health checks, the filtered and cursor-paginated
//! activity log, bearer-token (JWT) authorization, an OpenAPI document and the
//! web console ([`console`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), tally_admin_api::ApiError> {
//! use std::sync::Arc;
//! let config = tally_config::AdminApiConfig::default();
//! let readiness = Arc::new(tally_model::Readiness::new());
//! let api = tally_admin_api::AdminApi::bind(&config, "postgres://postgres@127.0.0.1/tally", readiness).await?;
//! println!("listening on {}", api.local_addr());
//! api.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! Routes: see [`route_table`] (one table, as data, from which [`routes`]
//! builds the router and [`openapi`] the document's operations) and `docs/api.md`.

#![warn(missing_docs)]

pub mod activity;
pub mod aggregates;
pub mod apikeys;
pub mod audit;
pub mod auth;
pub mod budgets;
pub mod caller;
pub mod console;
pub mod coverage;
pub mod cursor;
mod db;
mod dbtime;
pub mod erasures;
pub mod error;
pub mod export;
mod fair;
pub(crate) mod health;
mod limits;
mod live;
pub mod metrics;
pub mod openapi;
mod params;
pub mod rejected;
pub mod route_table;
pub mod routes;
pub mod rows;
pub mod siem;
mod state;
pub mod stats;
pub mod stream;
mod tailcache;
pub(crate) mod taxonomy;
pub mod tokens;
pub(crate) mod verify;
pub(crate) mod whoami;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::net::TcpListener;

use tally_config::AdminApiConfig;
use tally_model::Readiness;

use crate::state::AppState;

/// Entry point for the fuzz targets (`fuzz/`): every query-string, filter and cursor
/// parser of the API, on one query string. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::params::{pairs, Params};

    /// Every parameter name the parsers know, so [`Params`] reaches its value checks.
    const NAMES: &[&str] = &[
        "tenant",
        "user",
        "action",
        "outcome",
        "resource_type",
        "resource_id",
        "trace_id",
        "from",
        "to",
        "limit",
        "cursor",
        "model",
        "provider",
        "grain",
        "group_by",
        "since",
    ];

    /// Runs the query-string decoder, the `/activity` and `/tokens` filter parsers, the
    /// shared parameter checks (lists, limits, trace ids, time and day ranges), the
    /// keyset cursor decoder and the `seq` parser on `query`. Errors are expected; a
    /// panic is a bug.
    pub fn parse_query(query: &str) {
        let _ = crate::cursor::Cursor::decode(query);
        let _ = crate::params::parse_seq("since", query);
        let Ok(uri) = format!("/api/v1/activity?{query}").parse::<axum::http::Uri>() else {
            return;
        };
        let Ok(pairs) = pairs(&uri) else {
            return;
        };
        let _ = crate::activity::ActivityQuery::parse(&pairs, 100, 1000);
        let _ = crate::tokens::TokensQuery::parse(&pairs, 100, 1000);
        if let Ok(params) = Params::new(&pairs, NAMES) {
            let _ = params.list("group_by");
            let _ = params.limit(100, 1000);
            let _ = params.trace_id();
            let _ = params.time_range();
            let _ = params.day_range();
        }
        for (_, value) in &pairs {
            if let Ok(cursor) = crate::cursor::Cursor::decode(value) {
                // What decodes encodes back to the same text.
                let again = crate::cursor::Cursor::decode(&cursor.encode());
                assert!(matches!(again, Ok(c) if c == cursor), "{value:?}");
            }
        }
    }
}

pub use caller::{Caller, TenantAccess};
pub use db::API_ROLE;
pub use error::ApiError;

/// Largest number of database connections the admin API holds.
const POOL_SIZE: usize = 8;
/// How long a request waits for a connection (or for one to be opened).
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// Server-side limit on one admin query, set when the URL sets no `options`.
const STATEMENT_TIMEOUT: &str = "-c statement_timeout=30s";

/// The admin API: a bound listener and its state.
pub struct AdminApi {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// `admin_api.tls`, loaded.
    tls: Option<Arc<tally_tls::Reloader>>,
    state: AppState,
    /// `admin_api.cors`, when origins are configured.
    cors: Option<tower_http::cors::CorsLayer>,
}

impl AdminApi {
    /// Builds a connection pool (deadpool-postgres, TLS as the URL's `sslmode` says) for `database_url` and
    /// binds the listener (port 0 → free port). No connection is opened yet.
    pub async fn bind(
        config: &AdminApiConfig,
        database_url: &str,
        readiness: Arc<Readiness>,
    ) -> Result<AdminApi, ApiError> {
        if config.max_page_size == 0 {
            return Err(ApiError::Config(
                "admin_api.max_page_size must be at least 1".to_owned(),
            ));
        }
        let auth = auth::Authenticator::from_config(&config.auth, database_url)?;
        let tls = match &config.tls {
            Some(tls) => Some(tally_tls::Reloader::new(
                tls,
                "admin_api.tls",
                tally_tls::ALPN_HTTP,
            )?),
            None => None,
        };
        let limits = Arc::new(limits::Limits::new(&config.limits));
        let pool = build_pool(database_url, &limits)?;
        let hub = Arc::new(stream::hub::Hub::new(
            database_url,
            stream::hub::FeedSettings {
                heartbeat: Duration::from_secs(config.sse_heartbeat_secs),
                max_clients: config.sse_max_clients,
                client_buffer: config.sse_client_buffer,
            },
        )?);
        let addr = config.endpoint.socket_addr();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ApiError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ApiError::Bind { addr, source })?;
        if auth.is_none() {
            tracing::warn!(
                address = %local_addr,
                "admin API has no authentication configured: anyone who can reach it can read all data"
            );
        }
        tracing::info!(address = %local_addr, tls = tls.is_some(), "admin API listening on {local_addr}");
        Ok(AdminApi {
            cors: cors_layer(&config.cors),
            listener,
            local_addr,
            tls,
            state: AppState {
                reads: pool.clone(),
                pool,
                readiness,
                auth,
                default_page_size: config.default_page_size,
                max_page_size: config.max_page_size,
                taxonomy: None,
                replayer: None,
                hub,
                audit: None,
                chain_keys: verify::TrustedKeys::default(),
                verify_cache: Arc::default(),
                limits,
                stats_polls: Arc::default(),
                budgets: None,
                eraser: None,
                tail_cache: Arc::default(),
            },
        })
    }

    /// Reads queries, aggregates and exports from the hot standby at
    /// `read_url` (`exporters.postgres.read_url`); the live feeds, health,
    /// verification and quarantine replay stay on the primary. No connection
    /// is opened yet.
    pub fn with_read_url(mut self, read_url: &str) -> Result<Self, ApiError> {
        self.state.reads = build_pool(read_url, &self.state.limits)?;
        tracing::info!("admin API reads queries, aggregates and exports from the read replica");
        Ok(self)
    }

    /// Serves `handle`'s current registry at `GET /api/v1/taxonomy` (404 without one).
    pub fn with_taxonomy(mut self, handle: tally_config::TaxonomyHandle) -> Self {
        self.state.taxonomy = Some(handle);
        self
    }

    /// Serves `POST /api/v1/rejected/replay` with `replayer` (404 without one).
    pub fn with_replayer(mut self, replayer: rejected::SharedReplayer) -> Self {
        self.state.replayer = Some(replayer);
        self
    }

    /// Serves `POST /api/v1/erasures` with `service` (404 without one).
    pub fn with_eraser(mut self, service: erasures::ErasureService) -> Self {
        self.state.eraser = Some(service);
        self
    }

    /// Checks tamper-evidence checkpoints against these public keys only (by
    /// default, against the keys recorded in the database's `chain_keys`).
    pub fn with_chain_keys(
        mut self,
        keys: Vec<tally_exporters::postgres::chain::VerifyingKey>,
    ) -> Self {
        self.state.chain_keys = std::sync::Arc::new(keys);
        self
    }

    /// Records every authenticated read of a data route as an `audit.log.view`
    /// activity event, submitted to `consumer` (the collector's pipeline).
    /// Must be called within a Tokio runtime (it starts the forwarder).
    pub fn with_audit(mut self, consumer: Arc<dyn tally_model::pipeline::Consumer>) -> Self {
        self.state.audit = Some(audit::AuditTrail::start(consumer));
        self
    }

    /// Serves `GET /api/v1/budgets` and `/budgets/check` from `book` (404 without one).
    pub fn with_budgets(
        mut self,
        book: Arc<tally_exporters::postgres::budgets::BudgetBook>,
    ) -> Self {
        self.state.budgets = Some(book);
        self
    }

    /// The bound address (the chosen port when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ApiError> {
        let router = self.router();
        // Live feeds never end by themselves: end them when shutdown starts so
        // the graceful shutdown does not wait for them.
        let hub = self.state.hub.clone();
        let shutdown = async move {
            shutdown.await;
            hub.close();
        };
        // The client's address identifies callers without a credential (limits).
        let router = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Some(tls) = self.tls {
            // The TLS listener sets TCP_NODELAY on every connection itself; the
            // no-op tap gives it axum's client-address connect info.
            tls.watch();
            let listener = axum::serve::ListenerExt::tap_io(
                tally_tls::TlsListener::new(self.listener, tls).map_err(ApiError::Serve)?,
                |conn| bound_unsent(conn.tcp()),
            );
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(ApiError::Serve)?;
        } else {
            // Without TCP_NODELAY, a live-feed write that follows one the client
            // has not acknowledged yet waits for that (delayed) ACK: tens of ms.
            let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%error, "admin API: cannot set TCP_NODELAY");
                }
                bound_unsent(tcp);
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(ApiError::Serve)?;
        }
        tracing::info!(address = %self.local_addr, "admin API stopped");
        Ok(())
    }

    /// The axum Router, for tests.
    pub fn router(&self) -> Router {
        let router = routes::router()
            .route_layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                audit::record,
            ))
            // Outside the audit: a request refused over its limits is not a read.
            .route_layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                limits::enforce,
            ))
            // The console's static files: no credential, no audit record, and outside
            // the per-caller limits (served from memory, no database work; a browser
            // fetches several at once). The data calls the page makes are limited.
            .merge(console::router())
            .fallback(error::not_found)
            .method_not_allowed_fallback(error::method_not_allowed)
            .with_state(self.state.clone())
            // A 5xx answer is logged at WARN: most are expected refusals (503 when
            // `sse_max_clients` are connected or the database is away, 504 on a
            // timeout); a real internal error logs its own ERROR (error.rs).
            .layer(tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::WARN),
            ));
        match &self.cors {
            Some(cors) => router.layer(cors.clone()),
            None => router,
        }
    }
}

/// The CORS layer for `admin_api.cors` (none when no origin is configured).
fn cors_layer(config: &tally_config::CorsConfig) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if config.allowed_origins.is_empty() {
        return None;
    }
    let origins = if config.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                HeaderName::from_static("x-next-after-seq"),
                HeaderName::from_static("x-has-more"),
            ]),
    )
}

/// Most bytes a connection may have written but not yet sent (TCP_NOTSENT_LOWAT):
/// the kernel's part of what a client that does not read holds. Without it, each
/// live feed a client opened and never read held up to the kernel's largest send
/// buffer (4 MiB by default on Linux) before its own buffer filled and the feed
/// was reset: 272 such feeds held over 1 GB of socket memory (docs/performance.md).
/// Throughput is not capped (the kernel sends as fast as the window allows and
/// wakes the writer again below this mark).
const UNSENT_LOWAT: u32 = 128 * 1024;

/// Sets [`UNSENT_LOWAT`] on an accepted connection (Linux; elsewhere a no-op).
fn bound_unsent(tcp: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(UNSENT_LOWAT) {
        tracing::debug!(%error, "admin API: cannot set TCP_NOTSENT_LOWAT");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = tcp;
}

/// A pool whose gate follows `limits` (the heavy lane's duty cycle, the callers'
/// database-time budgets, shared with the instance's other pool).
fn build_pool(database_url: &str, limits: &limits::Limits) -> Result<db::TenantPool, ApiError> {
    // The URL may hold a password: never echo it.
    let (mut pg_config, tls) = tally_exporters::postgres::tls::parse(database_url)
        .map_err(|error| ApiError::Config(format!("invalid database URL: {error}")))?;
    if pg_config.get_connect_timeout().is_none() {
        pg_config.connect_timeout(POOL_TIMEOUT);
    }
    if pg_config.get_options().is_none() {
        pg_config.options(STATEMENT_TIMEOUT);
    }
    if pg_config.get_application_name().is_none() {
        pg_config.application_name("tally-admin-api");
    }
    let manager = Manager::from_config(
        pg_config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    db::TenantPool::build(
        Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT)),
        limits.heavy_duty_percent,
        limits.db_time.clone(),
    )
    .map_err(|error| ApiError::Config(format!("cannot build the database pool: {error}")))
}
