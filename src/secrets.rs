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
