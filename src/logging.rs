//! Tally's own structured logs (`tracing`), text or JSON on stderr.

use tally_config::{LogFormat, ServiceConfig};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides `service.log_level`.
pub fn init(service: &ServiceConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&service.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match service.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
