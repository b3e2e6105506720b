//! Why a TLS configuration could not be loaded.

use std::path::PathBuf;

/// A `tls` block whose files cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{setting}: cannot read {}: {source}", path.display())]
    Read {
        setting: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{setting}: {}: {reason}", path.display())]
    Pem {
        setting: String,
        path: PathBuf,
        reason: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the certificate).
    #[error("{setting}: {reason}")]
    Rustls { setting: String, reason: String },
}
