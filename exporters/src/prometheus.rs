//! The Prometheus exporter: serves the process-wide metrics
//! (every component's, registered in [`tally_model::metrics`]) as OpenMetrics
//! text at `GET /metrics`.

use std::future::Future;
use std::net::SocketAddr;

use crate::metrics::metrics;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tally_config::PrometheusConfig;
use tokio::net::TcpListener;

/// OpenMetrics text exposition content type.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A bound `/metrics` endpoint.
#[derive(Debug)]
pub struct PrometheusEndpoint {
    listener: TcpListener,
    addr: SocketAddr,
}

/// The endpoint could not listen.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {endpoint} (exporters.prometheus.endpoint): {source}")]
pub struct BindError {
    endpoint: String,
    source: std::io::Error,
}

impl PrometheusEndpoint {
    /// Binds `exporters.prometheus.endpoint` (port 0 picks a free port) and applies
    /// the configured label caps.
    pub async fn bind(config: &PrometheusConfig) -> Result<PrometheusEndpoint, BindError> {
        let registry = metrics();
        registry.action_labels.set_cap(config.action_label_cap);
        registry.model_labels.set_cap(config.model_label_cap);
        registry.tenant_labels.set_cap(if config.tenant_label {
            config.tenant_label_cap
        } else {
            0
        });
        let listener = TcpListener::bind(config.endpoint.socket_addr())
            .await
            .map_err(|source| BindError {
                endpoint: config.endpoint.to_string(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| BindError {
            endpoint: config.endpoint.to_string(),
            source,
        })?;
        tracing::info!(%addr, "Prometheus metrics at /metrics");
        Ok(PrometheusEndpoint { listener, addr })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = Router::new().route("/metrics", get(scrape));
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn scrape() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        tally_model::metrics::encode(),
    )
}
