//! Reloading the registry without a restart: on SIGHUP, and when the file's
//! text changes (polled; no inotify dependency). A broken file keeps the old
//! registry, and the reason is logged (once per change) and kept in
//! [`tally_config::taxonomy::ReloadStatus::last_error`].

use std::time::Duration;

use tally_config::taxonomy::{ReloadOutcome, TaxonomyHandle, TaxonomySource};
use tally_config::{TaxonomyError, ValidateConfig};
use tokio::task::JoinHandle;

/// The file polling interval `processors.validate.reload_interval_secs` asks
/// for; `None` when polling is off (0) or there is no file to poll.
pub fn poll_interval(config: &ValidateConfig) -> Option<Duration> {
    match (&config.taxonomy, config.reload_interval_secs) {
        (None, _) | (_, 0) => None,
        (Some(_), secs) => Some(Duration::from_secs(secs)),
    }
}

#[derive(Clone, Copy)]
enum Trigger {
    Poll,
    Signal,
}

/// Starts the reload task; abort the returned handle to stop it.
///
/// Must be called inside a Tokio runtime. The SIGHUP handler is installed
/// before this function returns (so a SIGHUP sent afterwards reloads, and no
/// longer terminates the process). With `poll` set, the file is also re-read
/// at that interval and reloaded when its text changed.
pub fn spawn_watcher(handle: TaxonomyHandle, poll: Option<Duration>) -> JoinHandle<()> {
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP: the taxonomy reloads on file change only");
            None
        }
    };
    let mut ticker = poll.map(|period| {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    tokio::spawn(async move {
        loop {
            let tick = async {
                match ticker.as_mut() {
                    Some(ticker) => {
                        ticker.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(unix)]
            let signal = async {
                match hangup.as_mut() {
                    Some(signal) => {
                        if signal.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let signal = std::future::pending::<()>();
            let trigger = tokio::select! {
                () = tick => Trigger::Poll,
                () = signal => Trigger::Signal,
            };
            let worker = handle.clone();
            let result = tokio::task::spawn_blocking(move || match trigger {
                Trigger::Poll => worker.reload_if_changed(),
                Trigger::Signal => worker.reload(),
            })
            .await;
            match result {
                Ok(result) => report(&handle, trigger, result),
                Err(error) => tracing::error!(%error, "taxonomy reload task failed"),
            }
        }
    })
}

fn report(handle: &TaxonomyHandle, trigger: Trigger, result: Result<ReloadOutcome, TaxonomyError>) {
    let source = handle.source();
    let cause = match trigger {
        Trigger::Poll => "file change",
        Trigger::Signal => "SIGHUP",
    };
    match result {
        Ok(ReloadOutcome::Reloaded {
            generation,
            actions,
        }) => tracing::info!(
            %source,
            generation,
            actions,
            "taxonomy reloaded ({cause}): {actions} actions"
        ),
        Ok(ReloadOutcome::Unchanged) => {
            if matches!(trigger, Trigger::Signal) && *source == TaxonomySource::Builtin {
                tracing::info!("SIGHUP: the built-in taxonomy is in use, nothing to reload");
            }
        }
        Err(error) => {
            let generation = handle.status().generation;
            tracing::error!(
                %source,
                generation,
                "taxonomy reload ({cause}) failed, keeping the current registry: {error}"
            );
        }
    }
}
