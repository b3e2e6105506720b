//! The loop every background job (rollup, retention, chain) runs in: its own
//! connection, one step per tick, reconnect after a failure, stop on shutdown.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::{connect, PgError};

/// Spawns [`run_periodically`] on the runtime: the one way a background job starts.
pub(crate) fn spawn_periodically<F>(
    name: &'static str,
    url: String,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
    step: F,
) -> JoinHandle<()>
where
    F: for<'c> FnMut(&'c mut Client) -> BoxFuture<'c, Result<bool, PgError>> + Send + 'static,
{
    tokio::spawn(run_periodically(name, url, interval, shutdown, step))
}

/// Shared loop of the background jobs: connect (again after a failure), run
/// `step`, wait `interval` (or not, when `step` answers `true`: more work is
/// waiting), stop when `shutdown` turns `true` or its sender is dropped.
async fn run_periodically<F>(
    name: &'static str,
    url: String,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut step: F,
) where
    F: for<'c> FnMut(&'c mut Client) -> BoxFuture<'c, Result<bool, PgError>>,
{
    let mut client: Option<Client> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let mut again = false;
        if client.as_ref().is_none_or(Client::is_closed) {
            match connect(&url).await {
                Ok((c, _connection)) => client = Some(c),
                Err(error) => {
                    tracing::warn!(job = name, error = %error, "background job cannot connect; retrying");
                    client = None;
                }
            }
        }
        if let Some(c) = client.as_mut() {
            // A run cut short by shutdown is dropped, i.e. rolled back.
            let result = tokio::select! {
                result = step(c) => Some(result),
                _ = shutdown.changed() => None,
            };
            match result {
                None => break,
                Some(Ok(more)) => again = more,
                Some(Err(error)) => {
                    tracing::warn!(job = name, error = %error, "background job run failed; retrying later");
                    client = None;
                }
            }
        }
        if !again {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
    }
    tracing::debug!(job = name, "background job stopped");
}
