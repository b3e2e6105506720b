//! The redaction HMAC key: from `processors.redact.hmac_key`, else generated
//! once, kept in the database (`tally_secrets`) and shared by every instance.

use anyhow::Context;
use tally_config::Config;
use tally_exporters::postgres;
use tally_processors::redact::generate_key;

const HMAC_KEY_NAME: &str = "redact.hmac_key";

/// The key the redactor hashes with.
pub async fn hmac_key(config: &Config, database_url: &str) -> anyhow::Result<Vec<u8>> {
    if let Some(key) = config.processors.redact.hmac_key_bytes() {
        return Ok(key.to_vec());
    }
    let (client, _) = postgres::connect(database_url)
        .await
        .context("cannot connect to PostgreSQL for the redaction key")?;
    let candidate = generate_key().context("cannot generate a redaction key")?;
    // Another instance may store its key first: whichever commits first wins.
    let inserted = client
        .execute(
            "INSERT INTO tally_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&HMAC_KEY_NAME, &candidate.as_slice()],
        )
        .await
        .context("cannot store the generated redaction key")?;
    let row = client
        .query_one(
            "SELECT value FROM tally_secrets WHERE name = $1",
            &[&HMAC_KEY_NAME],
        )
        .await
        .context("cannot read the redaction key")?;
    if inserted == 1 {
        tracing::warn!(
            "processors.redact.hmac_key is not set: generated a redaction key and stored it in \
             the database (tally_secrets); set your own key to keep hashes stable across databases"
        );
    }
    Ok(row.get::<_, Vec<u8>>(0))
}

/// `tally_secrets.name` of the generated checkpoint signing key (its 32-byte seed).
const CHAIN_KEY_NAME: &str = postgres::chain::SIGNING_KEY_SECRET;

/// The Ed25519 key that signs tamper-evidence checkpoints: from
/// `exporters.postgres.tamper_evidence.signing_key`, else generated once, kept
/// in `tally_secrets` and shared by every instance (with a warning).
pub async fn chain_signing_key(
    config: &Config,
    database_url: &str,
) -> anyhow::Result<postgres::chain::SigningKey> {
    if let Some(text) = &config.exporters.postgres.tamper_evidence.signing_key {
        return postgres::chain::signing_key_from_config(text)
            .context("invalid exporters.postgres.tamper_evidence.signing_key");
    }
    let (client, _) = postgres::connect(database_url)
        .await
        .context("cannot connect to PostgreSQL for the checkpoint signing key")?;
    let candidate = generate_key().context("cannot generate a checkpoint signing key")?;
    let inserted = client
        .execute(
            "INSERT INTO tally_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&CHAIN_KEY_NAME, &candidate.as_slice()],
        )
        .await
        .context("cannot store the generated checkpoint signing key")?;
    let row = client
        .query_one(
            "SELECT value FROM tally_secrets WHERE name = $1",
            &[&CHAIN_KEY_NAME],
        )
        .await
        .context("cannot read the checkpoint signing key")?;
    if inserted == 1 {
        tracing::warn!(
            "exporters.postgres.tamper_evidence.signing_key is not set: generated a checkpoint \
             signing key and stored it in the database (tally_secrets); anyone who can write to \
             the database can then forge checkpoints: configure your own key (docs/tamper-evidence.md)"
        );
    }
    let seed: Vec<u8> = row
        .try_get(0)
        .context("cannot read the checkpoint signing key")?;
    postgres::chain::signing_key_from_seed(&seed)
        .context("the checkpoint signing key stored in tally_secrets is invalid")
}

/// The public key checkpoints are verified against: the configured key, else
/// the one stored in `tally_secrets` (never generated here); `None` when there
/// is neither (verification then uses the keys recorded in `chain_keys`).
pub async fn chain_verifying_key(
    config: &Config,
    client: &tokio_postgres::Client,
) -> anyhow::Result<Option<postgres::chain::VerifyingKey>> {
    if let Some(text) = &config.exporters.postgres.tamper_evidence.signing_key {
        let key = postgres::chain::signing_key_from_config(text)
            .context("invalid exporters.postgres.tamper_evidence.signing_key")?;
        return Ok(Some(key.verifying_key()));
    }
    let row = client
        .query_opt(
            "SELECT value FROM tally_secrets WHERE name = $1",
            &[&CHAIN_KEY_NAME],
        )
        .await
        .context("cannot read the checkpoint signing key")?;
    let Some(row) = row else { return Ok(None) };
    let seed: Vec<u8> = row
        .try_get(0)
        .context("cannot read the checkpoint signing key")?;
    let key = postgres::chain::signing_key_from_seed(&seed)
        .context("the checkpoint signing key stored in tally_secrets is invalid")?;
    Ok(Some(key.verifying_key()))
}
