//! Which PostgreSQL to use: the configured URL, or a private server.

use anyhow::Context;
use tally_config::Config;
use tally_exporters::postgres::embedded::PrivatePostgres;

/// The database Tally writes to; owns the private server when there is one.
pub struct Database {
    pub url: String,
    private: Option<PrivatePostgres>,
}

impl Database {
    /// Uses `exporters.postgres.url` / `TALLY_DATABASE_URL`, else starts (or reuses)
    /// a private PostgreSQL in `exporters.postgres.data_dir`.
    pub async fn open(config: &Config) -> anyhow::Result<Database> {
        if let Some(url) = config.database_url() {
            tracing::info!(database = %redact_url(&url), "using configured PostgreSQL");
            return Ok(Database { url, private: None });
        }
        let data_dir = &config.exporters.postgres.data_dir;
        tracing::info!(
            data_dir = %data_dir.display(),
            "no database URL set (TALLY_DATABASE_URL or exporters.postgres.url): running a private PostgreSQL"
        );
        let private = PrivatePostgres::start(data_dir)
            .await
            .context("cannot start the private PostgreSQL")?;
        Ok(Database {
            url: private.url(),
            private: Some(private),
        })
    }

    /// Stops the private server, if Tally started one.
    pub async fn close(self) {
        if let Some(private) = self.private {
            if let Err(err) = private.stop().await {
                tracing::warn!(error = %err, "private PostgreSQL did not stop cleanly");
            }
        }
    }
}

/// Opens the database (see [`Database::open`]), applies the schema, runs `work`
/// with a connection, then closes everything, the private server included: the
/// frame of the one-shot subcommands (`migrate`, `apikey`).
pub async fn with_migrated<T>(
    config: &Config,
    work: impl AsyncFnOnce(&tokio_postgres::Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    with_migrated_at(config, async |client, _| work(client).await).await
}

/// [`with_migrated`], also handing `work` the database URL (for subcommands
/// that open more connections, `erase`).
pub async fn with_migrated_at<T>(
    config: &Config,
    work: impl AsyncFnOnce(&tokio_postgres::Client, &str) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let database = Database::open(config).await?;
    let result = async {
        let (client, connection) = tally_exporters::postgres::connect(&database.url)
            .await
            .context("cannot connect to PostgreSQL")?;
        tally_exporters::postgres::migrate(&client)
            .await
            .context("migration failed")?;
        let result = work(&client, &database.url).await;
        drop(client);
        let _ = connection.await;
        result
    }
    .await;
    database.close().await;
    result
}

/// The URL without its password, for logs.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden_in_logged_urls() {
        assert_eq!(
            redact_url("postgres://tally:s3cret@db:5432/tally"),
            "postgres://tally:***@db:5432/tally"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
    }
}
