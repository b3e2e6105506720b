//! `tally verify [--tenant T] [--checkpoints DIR]`: re-walks the tamper-evidence
//! hash chain of one tenant (or of every tenant), optionally against the
//! checkpoints kept outside the database, and prints the verdict; see
//! `docs/tamper-evidence.md`. `tally verify --archive DIR` checks the retention
//! archives instead (`docs/operations.md#archives`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use tally_config::Config;
use tally_exporters::postgres::{self, chain};

use crate::database::Database;
use crate::secrets;

/// Verifies `tenant` (every tenant when `None`; `""` = events without a
/// tenant), printing one line per tenant; with `checkpoints`, also against the
/// checkpoint files of that directory. Answers whether every chain is intact.
pub async fn run(
    config: &Config,
    tenant: Option<&str>,
    checkpoints: Option<&Path>,
) -> anyhow::Result<bool> {
    let database = Database::open(config).await?;
    let result = verify(config, &database.url, tenant, checkpoints).await;
    database.close().await;
    result
}

/// Checks every archive under `dir` against its manifest, the signing key and
/// the chain, printing one line per archive and a summary. Answers whether every
/// archive is intact (a directory without any archive is an error).
pub async fn run_archive(config: &Config, dir: &Path) -> anyhow::Result<bool> {
    let database = Database::open(config).await?;
    let result = verify_archives(config, &database.url, dir).await;
    database.close().await;
    result
}

async fn verify_archives(config: &Config, url: &str, dir: &Path) -> anyhow::Result<bool> {
    let (client, _connection) = postgres::connect(url)
        .await
        .context("cannot connect to PostgreSQL")?;
    let trusted: Vec<chain::VerifyingKey> = secrets::chain_verifying_key(config, &client)
        .await?
        .into_iter()
        .collect();
    if trusted.is_empty() {
        tracing::warn!(
            "no checkpoint signing key is configured or stored: the manifests' signatures \
             cannot be checked"
        );
    }
    let checks = postgres::archive::verify_archive_dir(dir, &trusted, Some(&client))
        .await
        .with_context(|| format!("cannot check the archives in {}", dir.display()))?;
    if checks.is_empty() {
        anyhow::bail!(
            "no archive (*.manifest.json) in {} or its subdirectories (is it retention.archive.dir?)",
            dir.display()
        );
    }
    let mut intact = 0usize;
    let mut rows = 0i64;
    for check in &checks {
        let name = check
            .manifest
            .strip_prefix(dir)
            .unwrap_or(&check.manifest)
            .display();
        if check.is_intact() {
            intact += 1;
            rows += check.rows;
            println!(
                "{name}: intact: {} rows, {} rows rehashed against their chain links, {} links \
                 match the chain in the database",
                check.rows, check.rows_rehashed, check.links_matched_in_database
            );
        } else {
            println!("{name}: TAMPERED: {}", check.problems.join("; "));
        }
    }
    println!(
        "{intact} of {} archives intact ({rows} rows){}",
        checks.len(),
        if intact == checks.len() {
            ""
        } else {
            "; see the TAMPERED lines"
        }
    );
    Ok(intact == checks.len())
}

async fn verify(
    config: &Config,
    url: &str,
    tenant: Option<&str>,
    checkpoint_dir: Option<&Path>,
) -> anyhow::Result<bool> {
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
    let mut intact = true;
    let external = match checkpoint_dir {
        None => None,
        Some(dir) => {
            let external = read_external(dir, &trusted)?;
            for problem in &external.problems {
                println!("checkpoint file: TAMPERED: {problem}");
            }
            intact &= external.problems.is_empty();
            Some(external)
        }
    };
    let mut tenants: BTreeSet<String> = match tenant {
        Some(tenant) => BTreeSet::from([tenant.to_owned()]),
        None => chain::tenants(&client)
            .await
            .context("cannot list the tenants (run `tally migrate` first?)")?
            .into_iter()
            .collect(),
    };
    if let (None, Some(external)) = (tenant, &external) {
        // A tenant whose whole chain was removed is still in the files.
        tenants.extend(external.heads.keys().cloned());
    }
    let none = BTreeMap::new();
    for tenant in &tenants {
        let heads = external
            .as_ref()
            .and_then(|e| e.heads.get(tenant))
            .unwrap_or(&none);
        let report = chain::verify_against(&mut client, tenant, &trusted, heads)
            .await
            .with_context(|| format!("cannot verify the chain of tenant {tenant:?}"))?;
        let mut line = report.summary();
        if external.is_some() && report.is_intact() {
            line.push_str(&format!(
                "; {} of {} checkpoints outside the database match",
                report.external_checkpoints_checked,
                heads.len()
            ));
        }
        println!("{line}");
        intact &= report.is_intact();
    }
    if tenants.is_empty() {
        println!("nothing to verify: no activity stored");
    }
    Ok(intact)
}

/// Reads the checkpoint files of `dir`; a directory without any is an error
/// (there would be nothing to compare the database with).
fn read_external(
    dir: &Path,
    trusted: &[chain::VerifyingKey],
) -> anyhow::Result<chain::ExternalCheckpoints> {
    let external = chain::read_checkpoint_dir(dir, trusted)
        .with_context(|| format!("cannot read the checkpoints in {}", dir.display()))?;
    if external.files == 0 {
        anyhow::bail!(
            "no checkpoint file (checkpoints-YYYY-MM-DD.ndjson) in {}: nothing to compare the \
             database with (is it exporters.postgres.tamper_evidence.checkpoint_dir?)",
            dir.display()
        );
    }
    if trusted.is_empty() {
        tracing::warn!(
            "no checkpoint signing key is configured or stored: the signatures of the checkpoint \
             files are not checked"
        );
    }
    for line in &external.torn {
        tracing::warn!(
            at = %line,
            "skipped a checkpoint line cut short (a write interrupted by a crash)"
        );
    }
    Ok(external)
}
