//! The exporter's error type.

use std::fmt;

use tokio_postgres::error::SqlState;

/// Errors of the PostgreSQL exporter, migrations and the private server.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server answered with an error, or the connection failed.
    #[error("database error: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// A file or process operation failed; the string says what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        #[source]
        /// The I/O error.
        source: std::io::Error,
    },
    /// No PostgreSQL server binaries on this machine.
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found on PATH or in {searched}; \
         install them (Debian/Ubuntu: `apt-get install postgresql`, Fedora/RHEL: `dnf install postgresql-server`, \
         macOS: `brew install postgresql`) or point Tally at an existing database with \
         TALLY_DATABASE_URL or exporters.postgres.url"
    )]
    BinariesNotFound {
        /// The directories searched besides `PATH`.
        searched: String,
    },
    /// The private PostgreSQL server could not be set up or started.
    #[error("private PostgreSQL: {0}")]
    Embedded(String),
    /// The URL's TLS settings (`sslmode`, `sslrootcert`) cannot be used.
    #[error("database TLS: {0}")]
    Tls(String),
    /// Something did not happen before its deadline.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Data read from the database (or a key) is not in the shape Tally writes.
    #[error("integrity: {0}")]
    Integrity(String),
    /// The exporter is shutting down or stopped.
    #[error("exporter stopped")]
    Stopped,
}

impl PgError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> PgError {
        PgError::Io {
            context: context.into(),
            source,
        }
    }

    /// The SQLSTATE of a server-side error, if this is one.
    pub fn sql_state(&self) -> Option<&SqlState> {
        match self {
            PgError::Db(e) => e.code(),
            _ => None,
        }
    }
}

/// `tokio_postgres::Error`'s `Display` says only "db error"; the server's
/// message is in the source. Show severity, SQLSTATE and message (never the
/// DETAIL, which may quote row values).
fn describe(error: &tokio_postgres::Error) -> String {
    struct Describe<'a>(&'a tokio_postgres::Error);
    impl fmt::Display for Describe<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if let Some(db) = self.0.as_db_error() {
                write!(
                    f,
                    "{} {}: {}",
                    db.severity(),
                    db.code().code(),
                    db.message()
                )
            } else {
                write!(f, "{}", self.0)?;
                let mut source = std::error::Error::source(self.0);
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
        }
    }
    Describe(error).to_string()
}
