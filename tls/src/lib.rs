//! TLS for Tally's listeners (the OTLP gRPC and HTTP receivers, the admin API).
//!
//! * [`load`] reads a listener's `tls` block (`cert_file`, `key_file`,
//!   `client_ca_file`) into a rustls server configuration (ring provider;
//!   `client_ca_file` requires and verifies a client certificate: mutual TLS);
//! * [`Reloader`] holds the current configuration and re-reads the files on
//!   SIGHUP and when they change: each new connection uses the newest
//!   configuration, established connections keep the one they started with;
//! * [`TlsListener`] accepts TCP connections and completes their handshakes
//!   concurrently (bounded, with a deadline), for `axum::serve` and, through
//!   [`TlsListener::into_incoming`], for tonic.

#![warn(missing_docs)]

mod error;
mod listener;
mod reload;
mod server_config;

pub use error::TlsError;
pub use listener::{TlsConn, TlsListener};
pub use reload::Reloader;
pub use server_config::{load, ALPN_GRPC, ALPN_HTTP};
