//! The writers' own thread: a current-thread runtime that runs the batch
//! writers and their connections.
//!
//! A writer makes about ten round trips to PostgreSQL per batch, most of them
//! while it holds the lock that orders every writer's commits. On the main
//! runtime each answer waited for a free worker, and with the cores busy
//! decoding, redacting and classifying requests that queue added milliseconds
//! to every round trip (a bare `BEGIN` took 19 ms at the median on a loaded
//! machine). On a thread of its own a writer that is woken by an answer waits
//! only for the kernel's scheduler, which favours a thread that mostly sleeps.
//!
//! `TALLY_WRITERS_ON_MAIN_RUNTIME` (any value) keeps the writers on the
//! caller's runtime, as before: an A/B switch for `tally-bench`, not a setting.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::PgError;

/// The environment variable that keeps the writers on the caller's runtime.
const ON_MAIN_RUNTIME_ENV: &str = "TALLY_WRITERS_ON_MAIN_RUNTIME";

/// Spawns tasks on the writers' thread. The thread ends once this and every
/// task spawned through it have ended (each holds a token of `alive`).
#[derive(Debug)]
pub(crate) struct WriterThread {
    handle: Handle,
    alive: mpsc::Sender<()>,
}

impl WriterThread {
    /// Starts the thread (or, with [`ON_MAIN_RUNTIME_ENV`] set, uses the
    /// current runtime). Must be called within a Tokio runtime.
    pub(crate) fn start() -> Result<WriterThread, PgError> {
        let (alive, mut ended) = mpsc::channel::<()>(1);
        if std::env::var_os(ON_MAIN_RUNTIME_ENV).is_some() {
            tracing::info!("postgres writers run on the main runtime ({ON_MAIN_RUNTIME_ENV})");
            return Ok(WriterThread {
                handle: Handle::current(),
                alive,
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| PgError::Io {
                context: "starting the writers' runtime".into(),
                source,
            })?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("tally-writers".into())
            .spawn(move || {
                // Nothing is ever sent: `recv` answers `None` once every token is gone.
                runtime.block_on(async move { while ended.recv().await.is_some() {} });
            })
            .map_err(|source| PgError::Io {
                context: "starting the writers' thread".into(),
                source,
            })?;
        Ok(WriterThread { handle, alive })
    }

    /// Runs `task` on the writers' thread.
    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let alive = self.alive.clone();
        self.handle.spawn(async move {
            let _alive = alive;
            task.await
        })
    }
}
