//! Why a TLS configuration could not be loaded.

use std::path::PathBuf;

/// A `tls` block whose files cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{setting}: cannot read {}: {source}", path.display())]
    Read {
        /// The config path of the `tls` block (e.g. `receivers.otlp.grpc.tls`).
        setting: String,
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{setting}: {}: {reason}", path.display())]
    Pem {
        /// The config path of the `tls` block.
        setting: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with its contents.
        reason: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("{setting}: {reason}")]
    Rustls {
        /// The config path of the `tls` block.
        setting: String,
        /// rustls' reason.
        reason: String,
    },
}
