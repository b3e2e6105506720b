//! The live-feed hub of one admin API instance: one `LISTEN tally_rows`
//! connection, fanned out to the clients as a "something was committed" signal
//! per table, and the client slots (`admin_api.sse_max_clients`).
//!
//! Notifications carry no rows: a woken reader (a shared tail, see
//! [`super::tail`], or a client reading alone) reads `WHERE seq > <last seq it
//! read> ORDER BY seq` itself, which is gap-free because `seq` is commit-ordered.
//! While the listen connection is down (not yet connected, killed, database
//! restarting), the hub wakes every client once a second instead (polling
//! fallback) and reconnects once a second; after a (re)connect it wakes every
//! client once, for the rows committed while it was not listening.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;

use crate::error::ApiError;

/// The channel the `0003_notify` migration's triggers notify.
pub const CHANNEL: &str = "tally_rows";
/// `application_name` of the listen connection (to find it in `pg_stat_activity`).
pub const LISTEN_APPLICATION_NAME: &str = "tally-admin-api-listen";
/// Polling period and reconnect delay while the listen connection is down.
pub const FALLBACK_PERIOD: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The tables a client can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `activity_events`.
    Activity,
    /// `token_usage`.
    Tokens,
}

impl Table {
    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Activity => "activity_events",
            Table::Tokens => "token_usage",
        }
    }
}

/// Live-feed settings from `admin_api`.
#[derive(Debug, Clone, Copy)]
pub struct FeedSettings {
    /// The SSE heartbeat interval.
    pub heartbeat: Duration,
    /// Most clients connected at once.
    pub max_clients: usize,
    /// Events buffered per client.
    pub client_buffer: usize,
}

/// Shared by every handler of one instance (in `AppState`).
pub struct Hub {
    database_url: String,
    pub(crate) settings: FeedSettings,
    activity: watch::Sender<u64>,
    tokens: watch::Sender<u64>,
    clients: Arc<AtomicUsize>,
    listening: Arc<AtomicBool>,
    closed: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// The shared tails of this instance's feeds (see [`super::tail`]).
    pub(crate) tails: super::tail::Tails,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("settings", &self.settings)
            .field("clients", &self.clients.load(Ordering::Relaxed))
            .field("listening", &self.listening.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub for `database_url`; the listen connection is opened with the first client.
    pub fn new(database_url: &str, settings: FeedSettings) -> Result<Hub, ApiError> {
        if settings.client_buffer == 0 {
            return Err(ApiError::Config(
                "admin_api.sse_client_buffer must be at least 1".to_owned(),
            ));
        }
        if settings.heartbeat.is_zero() {
            return Err(ApiError::Config(
                "admin_api.sse_heartbeat_secs must be at least 1".to_owned(),
            ));
        }
        Ok(Hub {
            database_url: database_url.to_owned(),
            settings,
            activity: watch::Sender::new(0),
            tokens: watch::Sender::new(0),
            clients: Arc::new(AtomicUsize::new(0)),
            listening: Arc::new(AtomicBool::new(false)),
            closed: watch::Sender::new(false),
            task: Mutex::new(None),
            tails: super::tail::Tails::default(),
        })
    }

    /// Takes a client slot (503 when `sse_max_clients` are connected) and makes
    /// sure the listen task runs.
    pub fn join(&self) -> Result<ClientSlot, ApiError> {
        if *self.closed.borrow() {
            return Err(ApiError::Unavailable("shutting down".to_owned()));
        }
        let max = self.settings.max_clients;
        let taken = self
            .clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(ApiError::Unavailable(format!(
                "too many live-feed clients (admin_api.sse_max_clients = {max}); retry later"
            )));
        }
        crate::metrics::metrics().sse_clients.inc();
        self.start();
        Ok(ClientSlot {
            clients: self.clients.clone(),
        })
    }

    /// A receiver that changes whenever rows of `table` may have been committed.
    pub fn subscribe(&self, table: Table) -> watch::Receiver<u64> {
        match table {
            Table::Activity => self.activity.subscribe(),
            Table::Tokens => self.tokens.subscribe(),
        }
    }

    /// Ends every live feed (at shutdown) and refuses new ones.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once [`Hub::close`] was called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closed = self.closed.subscribe();
        async move {
            let _ = closed.wait_for(|closed| *closed).await;
        }
    }

    /// Whether the listen connection is up (else clients are polled).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    fn start(&self) {
        let Ok(mut task) = self.task.lock() else {
            return;
        };
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let listener = Listener {
            database_url: self.database_url.clone(),
            activity: self.activity.clone(),
            tokens: self.tokens.clone(),
            listening: self.listening.clone(),
        };
        *task = Some(tokio::spawn(listener.run()));
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Ok(mut task) = self.task.lock() {
            if let Some(task) = task.take() {
                task.abort();
            }
        }
    }
}

/// A taken client slot; released (and `tally_sse_clients` decremented) on drop.
#[derive(Debug)]
pub struct ClientSlot {
    clients: Arc<AtomicUsize>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.clients.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::metrics().sse_clients.dec();
    }
}

struct Listener {
    database_url: String,
    activity: watch::Sender<u64>,
    tokens: watch::Sender<u64>,
    listening: Arc<AtomicBool>,
}

/// Why the live feed's LISTEN connection could not be set up.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error("invalid database URL: {0}")]
    Url(tally_exporters::postgres::PgError),
    #[error("connecting timed out")]
    Timeout,
    #[error("{0}")]
    Database(tokio_postgres::Error),
    #[error("connection closed")]
    Closed,
}

impl Listener {
    fn wake(sender: &watch::Sender<u64>) {
        sender.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn wake_all(&self) {
        Self::wake(&self.activity);
        Self::wake(&self.tokens);
    }

    async fn run(self) {
        let mut logged_down = false;
        loop {
            match self.listen().await {
                Ok(()) => {
                    tracing::warn!("live feed: the LISTEN connection closed; polling every second while reconnecting");
                    logged_down = true;
                }
                Err(error) => {
                    if !logged_down {
                        tracing::warn!(%error, "live feed: cannot LISTEN; polling every second while reconnecting");
                        logged_down = true;
                    }
                }
            }
            self.listening.store(false, Ordering::Release);
            // Polling fallback: wake the clients, wait, try again.
            self.wake_all();
            tokio::time::sleep(FALLBACK_PERIOD).await;
        }
    }

    /// Connects, listens and forwards notifications until the connection ends.
    async fn listen(&self) -> Result<(), ListenError> {
        let (mut config, tls) =
            tally_exporters::postgres::tls::parse(&self.database_url).map_err(ListenError::Url)?;
        config.application_name(LISTEN_APPLICATION_NAME);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A silently dead connection (no RST) is noticed within about a minute,
        // after which the hub polls and reconnects.
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
        let (client, mut connection) =
            tokio::time::timeout(CONNECT_TIMEOUT * 2, config.connect(tls))
                .await
                .map_err(|_| ListenError::Timeout)?
                .map_err(ListenError::Database)?;
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        let listen = client.batch_execute("LISTEN tally_rows");
        tokio::pin!(listen);
        // The connection must be driven while LISTEN runs.
        loop {
            tokio::select! {
                result = &mut listen => {
                    result.map_err(ListenError::Database)?;
                    break;
                }
                message = messages.next() => match message {
                    Some(Ok(message)) => self.forward(message),
                    Some(Err(error)) => return Err(ListenError::Database(error)),
                    None => return Err(ListenError::Closed),
                },
            }
        }
        self.listening.store(true, Ordering::Release);
        tracing::info!("live feed: listening on channel {CHANNEL}");
        // Rows committed before LISTEN took effect were not notified.
        self.wake_all();
        while let Some(message) = messages.next().await {
            match message {
                Ok(message) => self.forward(message),
                Err(error) => {
                    tracing::debug!(%error, "live feed: LISTEN connection failed");
                    break;
                }
            }
        }
        Ok(())
    }

    fn forward(&self, message: AsyncMessage) {
        if let AsyncMessage::Notification(notification) = message {
            match notification.payload() {
                "activity_events" => Self::wake(&self.activity),
                "token_usage" => Self::wake(&self.tokens),
                _ => self.wake_all(),
            }
        }
    }
}
