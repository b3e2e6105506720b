//! `tally verify [--tenant T]`: re-walks the tamper-evidence hash chain of one
//! tenant (or of every tenant) and prints the verdict; see
//! `docs/tamper-evidence.md`.

use anyhow::Context;
use tally_config::Config;
use tally_exporters::postgres::{self, chain};

use crate::database::Database;
use crate::secrets;

/// Verifies `tenant` (every tenant when `None`; `""` = events without a
/// tenant), printing one line per tenant. Answers whether every chain is intact.
pub async fn run(config: &Config, tenant: Option<&str>) -> anyhow::Result<bool> {
    let database = Database::open(config).await?;
    let result = verify(config, &database.url, tenant).await;
    database.close().await;
    result
}

async fn verify(config: &Config, url: &str, tenant: Option<&str>) -> anyhow::Result<bool> {
    let (mut client, _connection) = postgres::connect(url)
        .await
        .context("cannot connect to PostgreSQL")?;
    let trusted: Vec<chain::VerifyingKey> = secrets::chain_verifying_key(config, &client)
        .await?
        .into_iter()
        .collect();
    if trusted.is_empty() {
        tracing::warn!(
            "no checkpoint signing key is configured or stored: checkpoints are checked against \
             the public keys recorded in chain_keys"
        );
    }
    let tenants = match tenant {
        Some(tenant) => vec![tenant.to_owned()],
        None => chain::tenants(&client)
            .await
            .context("cannot list the tenants (run `tally migrate` first?)")?,
    };
    let mut intact = true;
    for tenant in &tenants {
        let report = chain::verify(&mut client, tenant, &trusted)
            .await
            .with_context(|| format!("cannot verify the chain of tenant {tenant:?}"))?;
        println!("{}", report.summary());
        intact &= report.is_intact();
    }
    if tenants.is_empty() {
        println!("nothing to verify: no activity stored");
    }
    Ok(intact)
}
