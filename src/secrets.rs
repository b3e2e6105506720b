//! The keys Tally generates when the config names none: the redaction HMAC key and
//! the checkpoint signing key, each generated once, kept in the database
//! (`tally_secrets`, see `tally_exporters::postgres::get_or_create_secret`) and
//! shared by every instance.

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
    let stored = postgres::get_or_create_secret(&client, HMAC_KEY_NAME, &candidate)
        .await
        .context("cannot store or read the generated redaction key")?;
    if stored.generated_here {
        tracing::warn!(
            "processors.redact.hmac_key is not set: generated a redaction key and stored it in \
             the database (tally_secrets); set your own key to keep hashes stable across databases"
        );
    }
    Ok(stored.value)
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
    let stored = postgres::get_or_create_secret(&client, CHAIN_KEY_NAME, &candidate)
        .await
        .context("cannot store or read the generated checkpoint signing key")?;
    if stored.generated_here {
        tracing::warn!(
            "exporters.postgres.tamper_evidence.signing_key is not set: generated a checkpoint \
             signing key and stored it in the database (tally_secrets); anyone who can write to \
             the database can then forge checkpoints: configure your own key (docs/tamper-evidence.md)"
        );
    }
    postgres::chain::signing_key_from_seed(&stored.value)
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
    let Some(seed) = postgres::read_secret(client, CHAIN_KEY_NAME)
        .await
        .context("cannot read the checkpoint signing key")?
    else {
        return Ok(None);
    };
    let key = postgres::chain::signing_key_from_seed(&seed)
        .context("the checkpoint signing key stored in tally_secrets is invalid")?;
    Ok(Some(key.verifying_key()))
}

/// The key erasure pseudonyms are derived with: `exporters.postgres.erasure_key`,
/// else generated once into `tally_secrets` (`erasure.key`, with a warning) and
/// shared by every instance, so the same user always gets the same pseudonym.
/// Production mode refuses to start without the configured key.
pub async fn erasure_key(
    config: &Config,
    client: &tokio_postgres::Client,
) -> anyhow::Result<Vec<u8>> {
    if let Some(key) = config
        .exporters
        .postgres
        .erasure_key
        .as_deref()
        .filter(|k| !k.is_empty())
    {
        return Ok(key.as_bytes().to_vec());
    }
    let candidate = generate_key().context("cannot generate an erasure key")?;
    let stored =
        postgres::get_or_create_secret(client, postgres::erasure::ERASURE_KEY_SECRET, &candidate)
            .await
            .context("cannot store or read the erasure key")?;
    if stored.generated_here {
        tracing::warn!(
            "exporters.postgres.erasure_key is not set: generated an erasure key and stored it in \
             the database (tally_secrets); whoever reads the database can then link a guessed \
             user to its pseudonym: configure your own key (docs/privacy.md)"
        );
    }
    Ok(stored.value)
}

/// The eraser of this configuration: pseudonyms under [`erasure_key`], erased
/// rows stored before canonical form v3 signed with the checkpoint key.
pub async fn eraser(
    config: &Config,
    database_url: &str,
) -> anyhow::Result<postgres::erasure::Eraser> {
    let (client, _) = postgres::connect(database_url)
        .await
        .context("cannot connect to PostgreSQL for the erasure key")?;
    let key = erasure_key(config, &client).await?;
    let signer = if config.exporters.postgres.tamper_evidence.enabled {
        Some(chain_signing_key(config, database_url).await?)
    } else {
        None
    };
    Ok(postgres::erasure::Eraser::new(key, signer)
        .with_personal_keys(personal_keys(config))
        .with_archive_dir(config.retention.archive.as_ref().map(|a| a.dir.clone())))
}

/// The attribute keys `processors.redact.keys` declares personal.
pub fn personal_keys(config: &Config) -> postgres::personal::PersonalKeys {
    postgres::personal::PersonalKeys::new(config.processors.redact.keys.personal_patterns())
}
