//! `tally erase --tenant T --user U --reason R`: erases one user of one tenant
//! in the configured database (migrated first) and prints the erasure record.

use anyhow::Context;
use tally_config::Config;
use tally_exporters::postgres::erasure::ErasureRequest;

use crate::database::with_migrated_at;
use crate::secrets;

/// Runs the erasure to its end (or finds it done) and prints its record as JSON.
pub async fn run(
    config: &Config,
    tenant: String,
    user: String,
    reason: String,
) -> anyhow::Result<()> {
    let requested_by = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned())
    );
    let request = ErasureRequest {
        tenant,
        user,
        reason,
        requested_by,
    };
    request.check().context("cannot erase")?;
    with_migrated_at(config, async |client, url| {
        let eraser = secrets::eraser(config, url).await?;
        let (mut work, _) = tally_exporters::postgres::connect(url)
            .await
            .context("cannot connect to PostgreSQL")?;
        let (record, created) = eraser
            .request(client, &request)
            .await
            .context("cannot record the erasure")?;
        let record = if record.is_done() {
            eprintln!("already erased (erasure {}): nothing to do", record.id);
            record
        } else {
            if !created {
                eprintln!("resuming the pending erasure {}", record.id);
            }
            eraser.run(&mut work, record.id).await.with_context(|| {
                format!(
                    "erasure {} did not finish (it stays pending; run the command again)",
                    record.id
                )
            })?
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&record).context("cannot print the record")?
        );
        Ok(())
    })
    .await
}
