//! Running the collector: wiring the pipeline from config, signals and the
//! ordered shutdown (stop accepting → answer in-flight requests → commit the
//! queue → stop the API → stop the private PostgreSQL).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tally_admin_api::AdminApi;
use tally_config::Config;
use tally_config::TaxonomyHandle;
use tally_exporters::postgres::{
    self, PgExporter, RetentionJob, RollupJob, DEFAULT_RETENTION_INTERVAL, DEFAULT_ROLLUP_INTERVAL,
};
use tally_exporters::prometheus::PrometheusEndpoint;
use tally_model::Readiness;
use tally_processors::attribution::TraceCache;
use tally_processors::redact::Redactor;
use tally_processors::tokens::TokenProcessor;
use tally_processors::validate::{poll_interval, spawn_watcher, Validator};
use tally_receiver::OtlpReceiver;
use tokio::sync::watch;

use crate::database::Database;
use crate::pipeline::Pipeline;
use crate::replay::Replay;
use crate::secrets;

/// `admin_api` as it runs: with `auth.api_keys.enabled` unset, API keys with
/// an admin API scope in the database turn key authentication on (creating a
/// key closes an open API). Refuses an admin API that would run open where
/// that is not allowed (see [`tally_config::AdminApiConfig::open_api_problem`]).
async fn admin_config(
    config: &Config,
    database_url: &str,
) -> anyhow::Result<tally_config::AdminApiConfig> {
    let mut admin = config.admin_api.clone();
    if admin.auth.api_keys.enabled.is_none() && !admin.auth.configured() {
        let (client, connection) = tally_exporters::postgres::connect(database_url)
            .await
            .context("cannot connect to the database to look for API keys")?;
        let found = tally_exporters::apikeys::admin_keys_exist(&client)
            .await
            .context("cannot look for API keys")?;
        drop(client);
        let _ = connection.await;
        if found {
            tracing::info!(
                "admin API: API keys exist in the database, so every /api/v1 route needs one \
                 (set admin_api.auth.api_keys.enabled: false to run open)"
            );
            admin.auth.api_keys.enabled = Some(true);
        }
    }
    if !admin.auth.configured() {
        if let Some((path, message)) = admin.open_api_problem() {
            anyhow::bail!("refusing to start: {path}: {message}");
        }
    }
    Ok(admin)
}

/// `tally migrate`: applies the schema and exits.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    crate::database::with_migrated(config, async |_| {
        tracing::info!("schema is up to date");
        Ok(())
    })
    .await
}

/// `tally [--config FILE]`: runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let database = Database::open(&config).await?;
    let result = serve(&config, &database.url).await;
    database.close().await;
    if result.is_ok() {
        tracing::info!("stopped cleanly");
    }
    result
}

async fn serve(config: &Config, database_url: &str) -> anyhow::Result<()> {
    let readiness = Arc::new(Readiness::new());
    let exporter = PgExporter::start(database_url, &config.exporters.postgres, readiness.clone())
        .await
        .context("cannot start the PostgreSQL exporter")?;
    exporter.set_personal_keys(secrets::personal_keys(config));
    let tokens = &config.processors.tokens;
    let traces = Arc::new(TraceCache::new(
        Duration::from_secs(tokens.attribution_window_secs),
        tokens.max_traces,
    ));
    let key = secrets::hmac_key(config, database_url).await?;
    let redactor = Redactor::new(&config.processors.redact, &key)
        .context("invalid processors.redact")?
        .keep_keys(&tokens.mapping_keys());
    crate::metrics::register_all();
    let taxonomy = TaxonomyHandle::load(&config.processors.validate)
        .context("invalid taxonomy (processors.validate.taxonomy)")?;
    let taxonomy_watcher =
        spawn_watcher(taxonomy.clone(), poll_interval(&config.processors.validate));
    let pipeline = Arc::new(Pipeline::new(
        exporter.clone(),
        redactor,
        TokenProcessor::new(tokens, &config.pricing),
        traces,
        Validator::new(taxonomy.clone()),
    ));
    let (stop_jobs, jobs_stopped) = watch::channel(false);
    // Token rows are folded into the rollup only once no late parent span can
    // still re-attribute them.
    let rollup = RollupJob::new(Duration::from_secs(tokens.attribution_window_secs)).spawn(
        database_url.to_string(),
        DEFAULT_ROLLUP_INTERVAL,
        jobs_stopped.clone(),
    );
    let tamper_evidence = config.exporters.postgres.tamper_evidence.enabled;
    let signing_key = if tamper_evidence || config.retention.archive.is_some() {
        Some(secrets::chain_signing_key(config, database_url).await?)
    } else {
        None
    };
    // Retention signs its truncation records and archive manifests with the
    // checkpoint key.
    let retention = RetentionJob::new(config.retention.clone())
        .with_signer(signing_key.clone())
        .spawn(
            database_url.to_string(),
            DEFAULT_RETENTION_INTERVAL,
            jobs_stopped.clone(),
        );
    let (chainer, chain_key) = spawn_chainer(
        config,
        signing_key.filter(|_| tamper_evidence),
        database_url,
        jobs_stopped.clone(),
    );
    // With the chainer running, the writers link the rows they write themselves
    // whenever the chain is caught up (no read-back); the chainer links the rest.
    exporter.set_chain_linking(chainer.is_some());
    // Erasures: requested through the admin API or `tally erase`; pending ones
    // (an instance crashed, or a request is still running elsewhere) are resumed.
    let eraser = secrets::eraser(config, database_url).await?;
    exporter
        .set_erased_users(eraser.erased_users(Duration::from_secs(tokens.attribution_window_secs)));
    let erasure_job = eraser.clone().spawn(
        database_url.to_string(),
        postgres::erasure::DEFAULT_RESUME_INTERVAL,
        jobs_stopped.clone(),
    );
    let (budget_book, budget_job) =
        spawn_budgets(config, database_url, pipeline.clone(), jobs_stopped.clone()).await;
    let receiver = OtlpReceiver::bind(&config.receivers.otlp, pipeline.clone())
        .await
        .context("cannot start the OTLP receiver")?
        .with_authenticator(crate::ingest_auth::IngestKeys::new(
            &config.receivers.otlp.auth,
            database_url,
        )?);
    let admin = if config.admin_api.enabled {
        let admin_config = admin_config(config, database_url).await?;
        let mut api = AdminApi::bind(&admin_config, database_url, readiness.clone())
            .await
            .context("cannot start the admin API")?;
        if let Some(read_url) = &config.exporters.postgres.read_url {
            api = api
                .with_read_url(read_url)
                .context("exporters.postgres.read_url")?;
        }
        Some(
            api.with_taxonomy(taxonomy.clone())
                .with_budgets(budget_book)
                .with_audit(pipeline)
                .with_chain_keys(chain_key.into_iter().collect())
                .with_eraser(tally_admin_api::erasures::ErasureService::new(
                    database_url,
                    eraser,
                ))
                .with_replayer(Arc::new(Replay::new(
                    database_url,
                    Validator::new(taxonomy.clone()),
                ))),
        )
    } else {
        None
    };
    let prometheus = if config.exporters.prometheus.enabled {
        Some(
            PrometheusEndpoint::bind(&config.exporters.prometheus)
                .await
                .context("cannot start the Prometheus endpoint")?,
        )
    } else {
        None
    };
    // Installed before "ready" is logged, so a SIGTERM sent as soon as a
    // supervisor sees "ready" drains instead of killing the process.
    let shutdown = ShutdownSignals::install();
    tracing::info!(
        grpc = %display_addr(receiver.grpc_addr()),
        http = %display_addr(receiver.http_addr()),
        admin = %display_addr(admin.as_ref().map(AdminApi::local_addr)),
        metrics = %display_addr(prometheus.as_ref().map(PrometheusEndpoint::local_addr)),
        "tally is ready"
    );

    let (stop_receiver, receiver_stopped) = watch::channel(false);
    let (stop_admin, admin_stopped) = watch::channel(false);
    let mut receiver_task = tokio::spawn(receiver.serve(wait_for(receiver_stopped)));
    let admin_task = admin.map(|admin| tokio::spawn(admin.serve(wait_for(admin_stopped.clone()))));
    let prometheus_task =
        prometheus.map(|endpoint| tokio::spawn(endpoint.serve(wait_for(admin_stopped))));

    let early_exit = tokio::select! {
        signal = shutdown.recv() => {
            tracing::info!(signal, "shutting down: no new requests, committing what was accepted");
            None
        }
        result = &mut receiver_task => Some(result),
    };
    readiness.set_draining();

    let grace = Duration::from_secs(config.service.shutdown_grace_secs);
    let drain = async {
        let _ = stop_receiver.send(true);
        let receiver_result = match early_exit {
            Some(result) => result,
            None => receiver_task.await,
        };
        exporter.shutdown().await;
        let _ = stop_jobs.send(true);
        let _ = rollup.await;
        let _ = retention.await;
        // An erasure batch is one transaction: stopping mid-way loses nothing (the
        // erasure stays pending and is resumed).
        erasure_job.abort();
        if let Some(chainer) = chainer {
            let _ = chainer.await;
        }
        if let Some(budget_job) = budget_job {
            let _ = budget_job.await;
        }
        taxonomy_watcher.abort();
        let _ = stop_admin.send(true);
        if let Some(task) = admin_task {
            if let Ok(Err(err)) = task.await {
                tracing::warn!(error = %err, "admin API stopped with an error");
            }
        }
        if let Some(task) = prometheus_task {
            if let Ok(Err(err)) = task.await {
                tracing::warn!(error = %err, "Prometheus endpoint stopped with an error");
            }
        }
        receiver_result
    };
    match tokio::time::timeout(grace, drain).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(err))) => Err(err).context("OTLP receiver failed"),
        Ok(Err(join_err)) => Err(anyhow::anyhow!("OTLP receiver task failed: {join_err}")),
        Err(_) => Err(anyhow::anyhow!(
            "shutdown did not finish within service.shutdown_grace_secs ({}s)",
            grace.as_secs()
        )),
    }
}

/// Starts the budget job (none without `budgets`: an empty book is published)
/// and answers the book the admin API reads. The first refresh runs before the
/// API starts, so `/budgets/check` answers from the first request (unless the
/// database does not answer within 5 s; the job then keeps trying).
async fn spawn_budgets(
    config: &Config,
    database_url: &str,
    pipeline: Arc<Pipeline>,
    stopped: watch::Receiver<bool>,
) -> (
    Arc<postgres::budgets::BudgetBook>,
    Option<tokio::task::JoinHandle<()>>,
) {
    use postgres::budgets::{BudgetBook, BudgetJob, DEFAULT_BUDGET_INTERVAL};
    let book = BudgetBook::new();
    postgres::budgets::init_metric_series(&config.budgets);
    if config.budgets.is_empty() {
        book.publish(postgres::budgets::BudgetSnapshot {
            as_of: chrono::Utc::now(),
            budgets: Vec::new(),
        });
        return (book, None);
    }
    tracing::info!(
        budgets = config.budgets.len(),
        "budgets: checking use every second"
    );
    let mut job = BudgetJob::new(config.budgets.clone(), book.clone(), Some(pipeline));
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        let (mut client, _connection) = postgres::connect(database_url).await?;
        job.run_once(&mut client).await
    })
    .await;
    match first {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "budgets: first refresh failed; retrying in the background")
        }
        Err(_) => {
            tracing::warn!("budgets: first refresh took over 5 s; going on in the background")
        }
    }
    let handle = job.spawn(database_url.to_string(), DEFAULT_BUDGET_INTERVAL, stopped);
    (book, Some(handle))
}

/// Starts the tamper-evidence chainer signing with `key` (none when
/// `exporters.postgres.tamper_evidence.enabled` is false: no chainer); answers
/// its handle and the public key of its checkpoints.
fn spawn_chainer(
    config: &Config,
    key: Option<postgres::chain::SigningKey>,
    database_url: &str,
    stopped: watch::Receiver<bool>,
) -> (
    Option<tokio::task::JoinHandle<()>>,
    Option<postgres::chain::VerifyingKey>,
) {
    let settings = &config.exporters.postgres.tamper_evidence;
    let Some(key) = key else {
        tracing::info!("tamper evidence is off (exporters.postgres.tamper_evidence.enabled)");
        return (None, None);
    };
    let public = key.verifying_key();
    tracing::info!(
        key_id = %postgres::chain::key_id(&key.verifying_key()),
        "tamper evidence: chaining activity_events and signing checkpoints"
    );
    let job = postgres::chain::ChainJob::new(
        Some(key),
        Duration::from_secs(settings.checkpoint_interval_secs),
    )
    .with_checkpoint_dir(settings.checkpoint_dir.clone());
    let handle = job.spawn(
        database_url.to_string(),
        Duration::from_millis(settings.interval_ms.max(1)),
        stopped,
    );
    (Some(handle), Some(public))
}

fn display_addr(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "disabled".to_string(), |a| a.to_string())
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// SIGTERM and SIGINT handlers, installed up front so that no signal sent
/// after start-up is reported can take the default (kill) action.
struct ShutdownSignals {
    handlers: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl ShutdownSignals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            _ => {
                tracing::warn!("cannot install signal handlers; stop with SIGKILL");
                None
            }
        };
        Self { handlers }
    }

    /// Resolves with the signal's name on SIGTERM or SIGINT.
    async fn recv(self) -> &'static str {
        let Some((mut term, mut int)) = self.handlers else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}
