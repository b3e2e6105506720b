//! `tally apikey create|list|revoke`: API keys for machines, stored hashed in
//! the `api_keys` table of the configured database (migrated first).

use anyhow::Context;
use tally_admin_api::apikeys;
use tally_config::Config;

use crate::cli::ApikeyCommand;
use crate::database::with_migrated;

/// Runs one `tally apikey` subcommand; prints its result on stdout.
pub async fn run(config: &Config, command: ApikeyCommand) -> anyhow::Result<()> {
    with_migrated(config, async |client| execute(client, command).await).await
}

async fn execute(client: &tokio_postgres::Client, command: ApikeyCommand) -> anyhow::Result<()> {
    match command {
        ApikeyCommand::Create {
            tenant,
            scope,
            user,
            description,
            origin,
            action,
        } => {
            let restrictions = apikeys::IngestRestrictions {
                origins: origin,
                actions: action,
            };
            let created = apikeys::create_with(
                client,
                &tenant,
                &scope,
                user.as_deref(),
                description.as_deref(),
                &restrictions,
            )
            .await
            .context("cannot create the API key")?;
            println!("{}", created.key);
            println!("id: {}", created.id);
            println!("prefix: {}", created.prefix);
            eprintln!(
                "The key is shown only now: store it safely. Revoke it with `tally apikey revoke {}`.",
                created.prefix
            );
        }
        ApikeyCommand::Revoke { key } => {
            let revoked_now = apikeys::revoke(client, &key)
                .await
                .context("cannot revoke the API key")?;
            if revoked_now {
                println!("revoked {key}");
            } else {
                println!("{key} was already revoked");
            }
        }
        ApikeyCommand::List => {
            let keys = apikeys::list(client)
                .await
                .context("cannot list the API keys")?;
            println!(
                "id\tprefix\ttenant\tscopes\tuser\tcreated_at\trevoked_at\torigins\tactions\tdescription"
            );
            let listed = |items: &[String]| {
                if items.is_empty() {
                    "-".to_owned()
                } else {
                    items.join(" ")
                }
            };
            for key in keys {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    key.id,
                    key.prefix,
                    key.tenant,
                    key.scopes.join(" "),
                    key.user.as_deref().unwrap_or("-"),
                    key.created_at.to_rfc3339(),
                    key.revoked_at
                        .map_or_else(|| "-".to_owned(), |at| at.to_rfc3339()),
                    listed(&key.restrictions.origins),
                    listed(&key.restrictions.actions),
                    key.description.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}
