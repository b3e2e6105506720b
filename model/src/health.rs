//! Readiness shared between the pipeline and the admin API's `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether this instance can accept and commit data right now.
///
/// The postgres exporter flips `database_up`; shutdown flips `draining`.
#[derive(Debug, Default)]
pub struct Readiness {
    database_up: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// A new, not-yet-ready state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records whether the last database interaction succeeded.
    pub fn set_database_up(&self, up: bool) {
        self.database_up.store(up, Ordering::Relaxed);
    }

    /// Marks the instance as shutting down: it is no longer ready.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the database answered the last time it was used.
    pub fn database_up(&self) -> bool {
        self.database_up.load(Ordering::Relaxed)
    }

    /// Whether shutdown has begun.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Ready = database up and not draining.
    pub fn is_ready(&self) -> bool {
        self.database_up() && !self.draining()
    }
}
