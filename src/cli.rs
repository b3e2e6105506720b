//! Command-line interface.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tally_config::Config;

/// Tally: an OpenTelemetry-native collector for user activity and LLM token usage.
///
/// Without a subcommand, runs the collector. Without --config, runs on the
/// built-in defaults (OTLP gRPC 127.0.0.1:4317, OTLP/HTTP 127.0.0.1:4318, admin
/// API 127.0.0.1:8080); without a database URL (TALLY_DATABASE_URL or
/// exporters.postgres.url), runs a private PostgreSQL in ./tally-data.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about)]
pub struct Cli {
    /// YAML configuration file (`${env:VAR}` and `${env:VAR:-default}` are expanded).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Production mode (as `service.mode: production`): refuse to start with
    /// generated in-database keys, a private PostgreSQL, an admin API without
    /// authentication, or a non-loopback listener without TLS.
    #[arg(long, global = true)]
    pub production: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration (and taxonomy) and exit: 0 when valid, non-zero with the reason.
    Validate,
    /// Apply the database schema (idempotent) and exit.
    Migrate,
    /// Verify the tamper-evidence hash chain: exit 0 when intact, 1 when tampered, 2 when it
    /// cannot be checked (invalid configuration, database unreachable, …).
    Verify {
        /// Only this tenant (`''` for events without a tenant); default every tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Also compare the chain with the checkpoints kept outside the database in DIR
        /// (exporters.postgres.tamper_evidence.checkpoint_dir): a cut tail, a rewritten head
        /// or a forged checkpoint line is tampered (exit 1).
        #[arg(long, value_name = "DIR")]
        checkpoints: Option<std::path::PathBuf>,
        /// Check the retention archives in DIR (retention.archive.dir) instead of the chain:
        /// each data file against its manifest (size, SHA-256, rows, seq range, tenants), the
        /// manifest's signature, every archived activity row's hash recomputed against its
        /// chain link and the links digest, and each link against the chain in the database.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["tenant", "checkpoints"])]
        archive: Option<std::path::PathBuf>,
    },
    /// Erase one user of one tenant: the user's id becomes a keyed pseudonym and the
    /// personal fields go, in every table; counts, token sums and the hash chain stay
    /// verifiable. Idempotent; resumes an interrupted erasure. Prints the erasure record
    /// (JSON). See docs/privacy.md.
    Erase {
        /// The tenant (`''` for events without a tenant).
        #[arg(long)]
        tenant: String,
        /// The user id to erase.
        #[arg(long)]
        user: String,
        /// Why (stored in the record and the admin.user.erase event: do not name the person).
        #[arg(long)]
        reason: String,
    },
    /// Manage API keys for the admin API and for ingest (stored hashed in the configured database).
    #[command(subcommand)]
    Apikey(ApikeyCommand),
}

/// `tally apikey …`.
#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create a key and print it once (with its id and prefix).
    Create {
        /// The tenant the key may read, or write with scope ingest (`*` for every tenant).
        #[arg(long)]
        tenant: String,
        /// A scope: activity:read, tokens:read, admin, self:read (one user's rows,
        /// with --user), or ingest (write through the OTLP receivers) (repeat, or
        /// separate with spaces).
        #[arg(long, required = true)]
        scope: Vec<String>,
        /// With scope self:read (required there, refused otherwise): the user
        /// whose rows the key reads, within its tenant.
        #[arg(long)]
        user: Option<String>,
        /// Free text shown by `tally apikey list`.
        #[arg(long)]
        description: Option<String>,
        /// A browser origin (`https://app.example`) that may use this ingest key on
        /// REST ingest (`POST /api/v1/events`, CORS); repeat for several. Needs
        /// --scope ingest and one tenant.
        #[arg(long)]
        origin: Vec<String>,
        /// An action this ingest key may write on REST ingest (`ui.*`: a prefix);
        /// repeat for several. Without it, any action.
        #[arg(long)]
        action: Vec<String>,
    },
    /// Revoke a key by its id or prefix (it stops working within
    /// admin_api.auth.api_keys.cache_ttl_secs).
    Revoke {
        /// The key's id or prefix.
        key: String,
    },
    /// List the keys (never their secrets).
    List,
}

/// Loads the config file, or the built-in defaults when none is given.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Config::from_file(path)
            .with_context(|| format!("invalid configuration {}", path.display())),
        None => Ok(Config::default()),
    }
}
