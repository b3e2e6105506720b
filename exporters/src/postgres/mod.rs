//! The PostgreSQL exporter: schema migrations, daily partitions, the batching
//! writer with commit-ordered `seq`, and the private (embedded) server.
//!
//! Write path, in one transaction per batch (`activity.rs`): a `seq` range
//! reserved from `activity_events_seq` with a ticket, and binary `COPY` of the
//! numbered rows straight into `activity_events` inside a savepoint, side by side
//! with the other writers' `COPY`s; a batch holding an already stored row (unique
//! violation) rolls back to the savepoint and goes through a temporary staging
//! table and `INSERT … SELECT … ON CONFLICT DO NOTHING` numbered from its range
//! instead; then the batch waits for the previous ticket's batch to end, links
//! its rows, writes its token rows and commits. The ticket's lock is released
//! after the commit is visible, so `seq` order equals commit order across writer
//! connections and Tally instances: a reader remembering the last `seq` it saw
//! never skips a row committed later.

use std::time::Duration;

use tokio::task::JoinHandle;

mod activity;
pub mod archive;
pub mod budgets;
pub mod chain;
pub mod copy;
pub mod embedded;
pub mod erasure;
mod error;
mod migrate;
mod partitions;
mod periodic;
pub mod personal;
pub mod rejected;
mod retention;
mod reuse;
mod rollup;
mod secrets;
mod telemetry;
#[cfg(test)]
mod test_rows;
pub mod tls;
mod token_metrics;
mod tokens;
mod trace_identities;
mod writer;
mod writer_thread;

pub use activity::{insert_activity_batch, insert_activity_batch_with};
pub use error::PgError;
pub use migrate::{migrate, API_ROLE, MIGRATIONS};
pub use partitions::{create_partitions, partition_name, token_partition_name};
pub use retention::{
    partition_day, RetentionJob, RetentionReport, DEFAULT_RETENTION_INTERVAL, RETENTION_LOCK_KEY,
};
pub use rollup::{
    unfold_token_rows, RollupJob, RollupReport, TokenRefold, ACTIVITY_WATERMARK,
    DEFAULT_ATTRIBUTION_DELAY, DEFAULT_MAX_ROWS_PER_RUN, DEFAULT_ROLLUP_INTERVAL,
    REATTRIBUTION_LOCK_KEY, ROLLUP_LOCK_KEY, TOKEN_WATERMARK,
};
pub use secrets::{get_or_create_secret, read_secret, StoredSecret};
pub use token_metrics::{write_token_metrics, MetricWrite};
pub use tokens::{
    attribute_traces, insert_token_batch, uncount_token_rows, TraceAttribution, TraceIdentity,
};
pub use trace_identities::{prune_trace_identities, SharedTrace, SharedTraces};
pub use writer::PgExporter;

/// Advisory lock key held from before a writer of `activity_events` takes its
/// `seq` values (`nextval`, or `setval` reserving a range) until `COMMIT` (the
/// bytes `tallyact`): exclusively by the staged path and every other writer,
/// shared by the direct path's writers, which order their commits by ticket
/// instead (migration 32, [`ACTIVITY_TICKET_LOCK_CLASS`]).
pub const ACTIVITY_EVENTS_LOCK_KEY: i64 = i64::from_be_bytes(*b"tallyact");
/// Session-level advisory lock key held only while a direct-path writer
/// reserves its `seq` range and ticket (`tally_reserve_activity_seq`, the bytes
/// `tallyres`).
pub const ACTIVITY_RESERVE_LOCK_KEY: i64 = i64::from_be_bytes(*b"tallyres");
/// First key of the two-key advisory lock a direct-path writer holds on its
/// ticket (second key: the ticket modulo 2^31) until its transaction ends; the
/// next ticket's writer waits for it before it links and commits (the bytes
/// `tlyt`).
pub const ACTIVITY_TICKET_LOCK_CLASS: i32 = i32::from_be_bytes(*b"tlyt");
/// Advisory lock key held from the `INSERT … SELECT nextval('token_usage_seq')`
/// until `COMMIT` by every writer of `token_usage` (the bytes `tallytok`). A
/// transaction writing both tables takes the activity key first.
pub const TOKEN_USAGE_LOCK_KEY: i64 = i64::from_be_bytes(*b"tallytok");
/// Advisory lock key serialising schema migrations (the bytes `tallymig`).
pub const MIGRATION_LOCK_KEY: i64 = i64::from_be_bytes(*b"tallymig");
/// Advisory lock key serialising partition creation (the bytes `tallyprt`).
pub const PARTITION_LOCK_KEY: i64 = i64::from_be_bytes(*b"tallyprt");

/// Partitions `migrate` creates ahead of today (the config's default).
pub const DEFAULT_PARTITIONS_AHEAD_DAYS: u32 = 7;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects (over TLS when the URL's `sslmode` asks, see [`tls`]) and spawns
/// the connection task.
///
/// Sets `application_name=tally`, a 5 s connect timeout and 30 s TCP keepalive
/// unless the URL says otherwise. The returned handle ends when the connection
/// closes.
pub async fn connect(url: &str) -> Result<(tokio_postgres::Client, JoinHandle<()>), PgError> {
    let (mut config, tls) = tls::parse(url)?;
    if config.get_application_name().is_none() {
        config.application_name("tally");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.keepalives_idle(Duration::from_secs(30));
    let connecting = config.connect(tls);
    // The connect timeout covers each TCP attempt; this bounds the whole handshake.
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting)
        .await
        .map_err(|_| PgError::Timeout("connecting to PostgreSQL".into()))??;
    let handle = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %PgError::from(error), "postgres connection closed");
        }
    });
    Ok((client, handle))
}
