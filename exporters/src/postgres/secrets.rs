//! `tally_secrets`: keys Tally generates once and shares between instances (the
//! redaction HMAC key, the checkpoint signing seed) when the config names none.

use tokio_postgres::Client;

use super::PgError;

/// A secret read from `tally_secrets`, and whether this call stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    /// The secret's bytes (whichever instance stored it first).
    pub value: Vec<u8>,
    /// `true` when this call's candidate was the one stored.
    pub generated_here: bool,
}

/// The secret `name`, storing `candidate` first if there is none. Several instances
/// may race: whichever commits first wins and every caller gets that value.
pub async fn get_or_create_secret(
    client: &Client,
    name: &str,
    candidate: &[u8],
) -> Result<StoredSecret, PgError> {
    let inserted = client
        .execute(
            "INSERT INTO tally_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &candidate],
        )
        .await?;
    let value = read_secret(client, name).await?.ok_or_else(|| {
        PgError::Integrity(format!(
            "tally_secrets.{name} vanished right after it was stored"
        ))
    })?;
    Ok(StoredSecret {
        value,
        generated_here: inserted == 1,
    })
}

/// The secret `name`, if one is stored (never generates one).
pub async fn read_secret(client: &Client, name: &str) -> Result<Option<Vec<u8>>, PgError> {
    let row = client
        .query_opt("SELECT value FROM tally_secrets WHERE name = $1", &[&name])
        .await?;
    row.map(|row| row.try_get::<_, Vec<u8>>(0).map_err(PgError::from))
        .transpose()
}
