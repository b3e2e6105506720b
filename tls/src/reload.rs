//! The current server configuration of a listener, re-read on SIGHUP and when
//! its files change.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use tally_config::TlsConfig;

use crate::{load, TlsError};

/// How often the files' modification times are compared.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A listener's TLS configuration that can be replaced while it serves.
///
/// New handshakes take [`current`](Self::current); a connection keeps the
/// configuration it was accepted with, so a reload drops no connection.
#[derive(Debug)]
pub struct Reloader {
    config: TlsConfig,
    setting: String,
    alpn: Vec<&'static [u8]>,
    current: RwLock<Arc<ServerConfig>>,
}

impl Reloader {
    /// Loads the files now (an error here stops the start) and returns the holder.
    pub fn new(
        config: &TlsConfig,
        setting: &str,
        alpn: &[&'static [u8]],
    ) -> Result<Arc<Reloader>, TlsError> {
        let current = load(config, setting, alpn)?;
        tracing::info!(
            setting,
            cert_file = %config.cert_file.display(),
            mutual = config.client_ca_file.is_some(),
            "TLS enabled"
        );
        Ok(Arc::new(Reloader {
            config: config.clone(),
            setting: setting.to_string(),
            alpn: alpn.to_vec(),
            current: RwLock::new(current),
        }))
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again; on error keeps the previous configuration.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.config, &self.setting, &self.alpn)?;
        match self.current.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        tracing::info!(setting = %self.setting, "TLS certificates reloaded");
        Ok(())
    }

    /// Spawns the task that reloads on SIGHUP and when a file's modification
    /// time or size changes; it ends when the last `Arc` of `self` is dropped.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let files = self.files();
        tokio::spawn(watch(weak, files));
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.config.cert_file.clone(), self.config.key_file.clone()];
        files.extend(self.config.client_ca_file.clone());
        files
    }
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

async fn watch(reloader: Weak<Reloader>, files: Vec<PathBuf>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP: TLS files reload on change only");
            None
        }
    };
    let mut last = stamp(&files);
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let signalled = tokio::select! {
            _ = ticks.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let Some(reloader) = reloader.upgrade() else {
            return;
        };
        let now = stamp(&files);
        if !signalled && now == last {
            continue;
        }
        last = now;
        if let Err(error) = reloader.reload() {
            tracing::error!(%error, "TLS files not reloaded: keeping the previous certificates");
        }
    }
}
