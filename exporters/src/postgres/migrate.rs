//! Schema migrations, recorded in `tally_schema_migrations`.

use chrono::{Days, Utc};
use tokio_postgres::Client;

use super::partitions::create_partitions;
use super::{PgError, DEFAULT_PARTITIONS_AHEAD_DAYS, MIGRATION_LOCK_KEY};

/// The schema migrations, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "activity_events",
        include_str!("migrations/0001_activity_events.sql"),
    ),
    (
        2,
        "token_usage_and_rollups",
        include_str!("migrations/0002_token_usage_and_rollups.sql"),
    ),
    (3, "notify", include_str!("migrations/0003_notify.sql")),
    (
        4,
        "taxonomy_flags_and_secrets",
        include_str!("migrations/0004_taxonomy_flags.sql"),
    ),
    (5, "chain", include_str!("migrations/0005_chain.sql")),
    (6, "api_keys", include_str!("migrations/0006_api_keys.sql")),
    (
        7,
        "query_indexes",
        include_str!("migrations/0007_query_indexes.sql"),
    ),
    (
        8,
        "coarse_rollups",
        include_str!("migrations/0008_coarse_rollups.sql"),
    ),
    (
        9,
        "day_user_indexes",
        include_str!("migrations/0009_day_user_indexes.sql"),
    ),
    (
        10,
        "unpriced_meaning",
        include_str!("migrations/0010_unpriced_meaning.sql"),
    ),
    (
        11,
        "ingest_key_id",
        include_str!("migrations/0011_ingest_key_id.sql"),
    ),
    (
        12,
        "activity_details_and_key_users",
        include_str!("migrations/0012_activity_details.sql"),
    ),
    (13, "budgets", include_str!("migrations/0013_budgets.sql")),
    (
        14,
        "token_calls",
        include_str!("migrations/0014_token_calls.sql"),
    ),
    (
        15,
        "signed_truncations",
        include_str!("migrations/0015_signed_truncations.sql"),
    ),
    (
        16,
        "api_key_browser",
        include_str!("migrations/0016_api_key_browser.sql"),
    ),
    (
        17,
        "token_latency",
        include_str!("migrations/0017_token_latency.sql"),
    ),
    (
        18,
        "token_metrics",
        include_str!("migrations/0018_token_metrics.sql"),
    ),
    (19, "erasure", include_str!("migrations/0019_erasure.sql")),
    (
        20,
        "tail_days",
        include_str!("migrations/0020_tail_days.sql"),
    ),
    (
        22,
        "scale_out",
        include_str!("migrations/0022_scale_out.sql"),
    ),
    (
        23,
        "verify_resume",
        include_str!("migrations/0023_verify_resume.sql"),
    ),
    (
        24,
        "personal_keys",
        include_str!("migrations/0024_personal_keys.sql"),
    ),
    (
        25,
        "token_ttft",
        include_str!("migrations/0025_token_ttft.sql"),
    ),
    (
        26,
        "token_speed",
        include_str!("migrations/0026_token_speed.sql"),
    ),
    (
        27,
        "tail_generations",
        include_str!("migrations/0027_tail_generations.sql"),
    ),
    (
        28,
        "query_speed",
        include_str!("migrations/0028_query_speed.sql"),
    ),
    (
        29,
        "user_weekly",
        include_str!("migrations/0029_user_weekly.sql"),
    ),
    (
        30,
        "edge_day_sums",
        include_str!("migrations/0030_edge_day_sums.sql"),
    ),
    (
        31,
        "histogram_generations",
        include_str!("migrations/0031_histogram_generations.sql"),
    ),
    (
        32,
        "write_tickets",
        include_str!("migrations/0032_write_tickets.sql"),
    ),
    (
        33,
        "chain_runs",
        include_str!("migrations/0033_chain_runs.sql"),
    ),
];

/// Role `tally_api`, its grants and the forced row-level security policies of the
/// tenant tables; re-applied on every migration run (idempotent), see the file.
pub const ROW_SECURITY: &str = include_str!("row_security.sql");

/// The role the admin API's connections take (`SET ROLE`), under which the
/// tenant tables show only the rows of the tenant in the `tally.tenant` setting.
pub const API_ROLE: &str = "tally_api";

/// Applies the migrations not yet recorded in `tally_schema_migrations`, then
/// creates the daily partitions for yesterday through today +
/// [`DEFAULT_PARTITIONS_AHEAD_DAYS`](super::DEFAULT_PARTITIONS_AHEAD_DAYS).
///
/// Idempotent and safe when several instances migrate at once: everything runs
/// in one transaction under an advisory lock. `client` must not be used by
/// anything else meanwhile (the transaction is driven with plain statements).
pub async fn migrate(client: &Client) -> Result<(), PgError> {
    let result = apply(client).await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result?;
    let today = Utc::now().date_naive();
    let from = today.checked_sub_days(Days::new(1)).unwrap_or(today);
    let through = today
        .checked_add_days(Days::new(DEFAULT_PARTITIONS_AHEAD_DAYS.into()))
        .unwrap_or(today);
    create_partitions(client, from, through).await
}

async fn apply(client: &Client) -> Result<(), PgError> {
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL client_min_messages = warning; \
             SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY}); \
             CREATE TABLE IF NOT EXISTS tally_schema_migrations ( \
                 version    integer     PRIMARY KEY, \
                 name       text        NOT NULL, \
                 applied_at timestamptz NOT NULL DEFAULT now());"
        ))
        .await?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM tally_schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        client.batch_execute(sql).await?;
        client
            .execute(
                "INSERT INTO tally_schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await?;
        tracing::info!(version, name, "applied schema migration");
    }
    client.batch_execute(ROW_SECURITY).await?;
    client.batch_execute("COMMIT").await?;
    Ok(())
}
