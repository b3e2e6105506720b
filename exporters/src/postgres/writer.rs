//! The batching writer: a bounded queue (in records), writer tasks that gather
//! submissions into batches, and the commit-ordered write path.
//!
//! Over 600 lines: the queue, the writer tasks and [`PgExporter`]'s submission
//! methods share one private state (`Shared`: the queue, its guards and the
//! reconnect back-off); the SQL of each table is in its own module.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{Datelike, Days, NaiveDate, Utc};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

use tally_config::PostgresConfig;
use tally_model::{ActivityEvent, ConsumeError, Readiness, RejectedRecord, TokenUsage};

use super::activity::{insert_rows, DirectCopy, Inserted};
use super::erasure::ErasedUsers;
use super::partitions::{create_days, PartitionCache};
use super::personal::PersonalKeys;
use super::tokens::{insert_staged_tokens, stage_tokens};
use super::trace_identities::{share, split_pending, SharedTraces};
use super::writer_thread::WriterThread;
use super::{connect, migrate, telemetry, PgError, TraceAttribution};

/// How often the background task checks the database when it is up.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a probe query may take before the database counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often partitions ahead are (re)created.
const PARTITION_INTERVAL: Duration = Duration::from_secs(3600);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One `submit` call waiting for its events to be committed.
pub(crate) struct Submission {
    pub(crate) events: Vec<ActivityEvent>,
    pub(crate) tokens: Vec<TokenUsage>,
    pub(crate) rejected: Vec<RejectedRecord>,
    /// The ingest key that sent these rows (`ingest_key_id`).
    pub(crate) ingest_key_id: Option<uuid::Uuid>,
    /// What the request learned about its traces, for the other instances.
    pub(crate) traces: SharedTraces,
    /// Answered with the traces this submission is to attribute once committed,
    /// and with its rows, which the submitter drops (see [`Answer`]).
    reply: oneshot::Sender<Answer>,
    /// Queue space, given back just before the submission is answered.
    _permit: OwnedSemaphorePermit,
    /// When it was queued (for the writer's stage timings).
    queued_at: Instant,
}

/// What a submitter gets back: the writer's answer, and the rows it submitted.
///
/// The rows go back so that they are freed on the submitter's thread, where
/// they were allocated (decoded, redacted, classified), instead of on the
/// writers' thread: mimalloc frees a block of another thread's page through an
/// atomic list that the owning thread then walks, block by block, before it can
/// reuse them (`Submission::answer` and `_mi_page_free_collect` under prost's
/// decoding took ~8% of the collector's samples at full speed).
struct Answer {
    result: Result<Vec<TraceAttribution>, ConsumeError>,
    rows: SubmittedRows,
}

/// A submission's rows, handed back with its [`Answer`] (dropped by the submitter).
struct SubmittedRows {
    _events: Vec<ActivityEvent>,
    _tokens: Vec<TokenUsage>,
    _rejected: Vec<RejectedRecord>,
    _traces: SharedTraces,
}

impl Submission {
    /// Gives the queue space back, then answers: a caller that has its answer
    /// finds its space free again (dropping the whole submission after the
    /// send let a caller see a full queue that was about to empty). The rows
    /// go back with the answer (see [`Answer`]).
    fn answer(self, result: Result<Vec<TraceAttribution>, ConsumeError>) {
        let Submission {
            events,
            tokens,
            rejected,
            traces,
            reply,
            _permit,
            ..
        } = self;
        drop(_permit);
        let rows = SubmittedRows {
            _events: events,
            _tokens: tokens,
            _rejected: rejected,
            _traces: traces,
        };
        // A submitter that stopped waiting: the rows are dropped here after all.
        let _ = reply.send(Answer { result, rows });
    }

    /// Rows of both tables.
    fn rows(&self) -> usize {
        self.events.len() + self.tokens.len() + self.rejected.len()
    }
}

struct Queue {
    rx: mpsc::UnboundedReceiver<Submission>,
    /// Taken from the channel but left for the next batch (it did not fit).
    pending: Option<Submission>,
}

/// What writer tasks and the maintenance task share.
struct Shared {
    /// The queue's record permits (shared with the handle) and their number.
    permits: Arc<Semaphore>,
    capacity: usize,
    url: String,
    readiness: Arc<Readiness>,
    retry_after: Duration,
    batch_max_rows: usize,
    linger: Duration,
    /// Writer tasks, and how many of them are writing a batch right now.
    writers: usize,
    writing: std::sync::atomic::AtomicUsize,
    partitions_ahead_days: u32,
    partitions: PartitionCache,
    queue: tokio::sync::Mutex<Queue>,
    stopping: AtomicBool,
    /// The personal keys rows are written with, and the erased users whose
    /// late token rows take their pseudonym (set once at start).
    guards: std::sync::RwLock<Arc<WriteGuards>>,
    /// Whether activity rows may be `COPY`d straight into their table.
    direct_copy: DirectCopy,
}

/// What the writers apply to every batch (see [`PgExporter::set_personal_keys`]
/// and [`PgExporter::set_erased_users`]).
#[derive(Debug, Default)]
struct WriteGuards {
    personal: PersonalKeys,
    erased: Option<ErasedUsers>,
    /// Whether the writers link their rows into the tamper chain themselves.
    link_chain: bool,
}

impl Shared {
    fn guards(&self) -> Arc<WriteGuards> {
        self.guards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update_guards(&self, change: impl FnOnce(&mut WriteGuards)) {
        let mut guards = self.guards.write().unwrap_or_else(|p| p.into_inner());
        let mut next = WriteGuards {
            personal: guards.personal.clone(),
            erased: guards.erased.clone(),
            link_chain: guards.link_chain,
        };
        change(&mut next);
        *guards = Arc::new(next);
    }
}

impl Shared {
    /// Records queued or being written right now.
    fn queued(&self) -> usize {
        self.capacity
            .saturating_sub(self.permits.available_permits())
    }

    fn unavailable(&self, reason: &str) -> ConsumeError {
        ConsumeError::Unavailable {
            reason: reason.to_string(),
            retry_after: self.retry_after,
        }
    }

    /// Answers everything queued right now with `Unavailable(reason)`.
    /// Skipped when another writer is serving the queue.
    fn fail_queued(&self, reason: &str) {
        let Ok(mut queue) = self.queue.try_lock() else {
            return;
        };
        let mut failed = 0usize;
        if let Some(s) = queue.pending.take() {
            s.answer(Err(self.unavailable(reason)));
            failed += 1;
        }
        while let Ok(s) = queue.rx.try_recv() {
            s.answer(Err(self.unavailable(reason)));
            failed += 1;
        }
        if failed > 0 {
            tracing::warn!(
                submissions = failed,
                "database unreachable: refused queued submissions"
            );
        }
    }

    /// Takes the next batch: waits for a first submission, then takes what is
    /// queued, until `batch_max_rows`. When the queue runs dry it waits up to
    /// `linger` for more, but only while every other writer is busy: a writer
    /// that is free takes the next submission at once, so lingering would only
    /// delay this batch's commit (and its acknowledgements).
    /// `None` once the queue is closed and empty.
    async fn gather(&self) -> Option<Vec<Submission>> {
        let mut queue = self.queue.lock().await;
        let first = match queue.pending.take() {
            Some(s) => s,
            None => queue.rx.recv().await?,
        };
        let mut rows = first.rows();
        let mut batch = vec![first];
        let deadline = Instant::now() + self.linger;
        while rows < self.batch_max_rows {
            let next = match queue.rx.try_recv() {
                Ok(s) => s,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if !self.others_busy() {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, queue.rx.recv()).await {
                        Ok(Some(s)) => s,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            if rows + next.rows() > self.batch_max_rows {
                queue.pending = Some(next);
                break;
            }
            rows += next.rows();
            batch.push(next);
        }
        Some(batch)
    }

    /// Whether every writer but the caller (which is gathering) is writing.
    fn others_busy(&self) -> bool {
        self.writing.load(Ordering::Acquire) + 1 >= self.writers
    }

    /// Creates partitions for yesterday through today + `partitions_ahead_days`.
    async fn ensure_ahead(&self, client: &Client) -> Result<(), PgError> {
        let today = Utc::now().date_naive();
        let from = today.checked_sub_days(Days::new(1)).unwrap_or(today);
        let days: Vec<NaiveDate> = from
            .iter_days()
            .take(self.partitions_ahead_days as usize + 2)
            .collect();
        // Bypass the cache: a partition may have been dropped meanwhile.
        create_days(client, &days).await?;
        self.partitions.remember(&days);
        Ok(())
    }
}

/// Counts a writer as writing while it lives (also if the write panics).
struct Writing<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Writing<'a> {
    fn start(count: &'a std::sync::atomic::AtomicUsize) -> Writing<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Writing(count)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Doubling delay between reconnection attempts, 100 ms to 2 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(BACKOFF_MIN)
    }
    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
    fn next_delay(&mut self) -> Duration {
        let delay = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        delay
    }
}

struct Inner {
    shared: Arc<Shared>,
    sender: Mutex<Option<mpsc::UnboundedSender<Submission>>>,
    permits: Arc<Semaphore>,
    capacity: u32,
    shutting_down: AtomicBool,
    writers: tokio::sync::Mutex<Vec<JoinHandle<()>>>,
    maintenance: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    /// The writers' thread (see `writer_thread.rs`), kept while a handle is.
    _thread: WriterThread,
    /// Connections of [`PgExporter::attribute_traces`] (as many as writers),
    /// each opened on first use, taken round-robin.
    attribution: Vec<tokio::sync::Mutex<Option<Client>>>,
    next_attribution: std::sync::atomic::AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Last handle gone without shutdown: writers still drain the (now
        // closed) queue, but stop retrying an unreachable database.
        self.shared.stopping.store(true, Ordering::Release);
    }
}

/// The PostgreSQL activity-event exporter: a cheap, cloneable handle.
///
/// Dropping every handle without [`shutdown`](PgExporter::shutdown) still lets
/// the writers finish what is queued, but nobody waits for them.
#[derive(Clone)]
pub struct PgExporter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgExporter")
            .field("capacity", &self.inner.capacity)
            .field("queued_records", &self.queued_records())
            .finish_non_exhaustive()
    }
}

impl PgExporter {
    /// Connects, migrates, creates the partitions for yesterday through today +
    /// `partitions_ahead_days`, and starts `writers` writer tasks (one connection
    /// each) plus a maintenance task (readiness probe every second, partitions
    /// ahead every hour). Sets `readiness.database_up` to true on success.
    pub async fn start(
        url: &str,
        config: &PostgresConfig,
        readiness: Arc<Readiness>,
    ) -> Result<PgExporter, PgError> {
        let (probe_client, _) = connect(url).await?;
        migrate(&probe_client).await?;

        let (tx, rx) = mpsc::unbounded_channel();
        let max_permits = Semaphore::MAX_PERMITS.min(u32::MAX as usize);
        let capacity = config.queue_capacity_records.clamp(1, max_permits);
        let permits = Arc::new(Semaphore::new(capacity));
        telemetry::queue_capacity(capacity);
        let shared = Arc::new(Shared {
            permits: permits.clone(),
            capacity,
            url: url.to_string(),
            readiness: readiness.clone(),
            retry_after: Duration::from_secs(config.retry_after_secs),
            batch_max_rows: config.batch_max_rows.max(1),
            linger: Duration::from_millis(config.batch_linger_ms),
            writers: config.writers.max(1),
            writing: std::sync::atomic::AtomicUsize::new(0),
            partitions_ahead_days: config.partitions_ahead_days,
            partitions: PartitionCache::default(),
            queue: tokio::sync::Mutex::new(Queue { rx, pending: None }),
            stopping: AtomicBool::new(false),
            guards: std::sync::RwLock::new(Arc::new(WriteGuards::default())),
            direct_copy: DirectCopy::default(),
        });
        shared.ensure_ahead(&probe_client).await?;

        let writer_count = config.writers.max(1);
        let mut clients = Vec::with_capacity(writer_count);
        // Connected on the writers' thread, so their connections run there too.
        let thread = WriterThread::start()?;
        for _ in 0..writer_count {
            let url = url.to_string();
            let connected = thread
                .spawn(async move { connect(&url).await.map(|(client, _)| client) })
                .await
                .map_err(|error| PgError::Io {
                    context: "connecting a writer".into(),
                    source: std::io::Error::other(error.to_string()),
                })??;
            clients.push(connected);
        }
        readiness.set_database_up(true);

        let writers = clients
            .into_iter()
            .enumerate()
            .map(|(id, client)| thread.spawn(supervise_writer(shared.clone(), id, client)))
            .collect();
        let (stop, stop_rx) = watch::channel(false);
        let maintenance = tokio::spawn(maintenance_task(shared.clone(), probe_client, stop_rx));

        tracing::info!(
            writers = writer_count,
            batch_max_rows = shared.batch_max_rows,
            batch_linger_ms = config.batch_linger_ms,
            queue_capacity_records = capacity,
            "postgres exporter started"
        );
        Ok(PgExporter {
            inner: Arc::new(Inner {
                shared,
                sender: Mutex::new(Some(tx)),
                permits,
                capacity: capacity as u32,
                shutting_down: AtomicBool::new(false),
                writers: tokio::sync::Mutex::new(writers),
                maintenance: tokio::sync::Mutex::new(Some(maintenance)),
                stop,
                _thread: thread,
                attribution: (0..writer_count)
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                next_attribution: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }

    /// The attribute keys the redaction config declares personal: activity rows
    /// written from now on name the keys of theirs that match in
    /// `personal_keys` (with every key holding the row's user id), so a v3 row
    /// hashes them into its personal digest and an erasure can remove them.
    pub fn set_personal_keys(&self, keys: PersonalKeys) {
        self.inner.shared.update_guards(|g| g.personal = keys);
    }

    /// Token rows attributed through their trace (`attribution_source =
    /// 'trace'`) to a user whose erasure is pending or ended within the
    /// attribution window are written with the pseudonym instead of the id an
    /// instance's trace cache still holds (see [`ErasedUsers`]).
    pub fn set_erased_users(&self, erased: ErasedUsers) {
        self.inner.shared.update_guards(|g| g.erased = Some(erased));
    }

    /// With `true`, each batch whose activity rows take the direct `COPY` also
    /// links them into the tamper chain in its own transaction when the chain is
    /// caught up, computed from the values it writes (no read-back; see
    /// `docs/tamper-evidence.md`, "Links written by the writer"); other rows are
    /// left to the chainer ([`ChainJob`](super::chain::ChainJob)), which must run
    /// too. Off by default.
    pub fn set_chain_linking(&self, link: bool) {
        self.inner.shared.update_guards(|g| g.link_chain = link);
    }

    /// `Unavailable` while shutting down or while the database is down.
    fn refuse_if_unavailable(&self) -> Result<(), ConsumeError> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::Acquire) {
            return Err(inner.shared.unavailable("shutting down"));
        }
        if !inner.shared.readiness.database_up() {
            return Err(inner.shared.unavailable("database unavailable"));
        }
        Ok(())
    }

    /// Whether a request of `records` rows would be queued now: the answer
    /// [`submit_rows`](PgExporter::submit_rows) would give for shutdown, a
    /// database known to be down or a full queue, without queueing anything
    /// (`Ok` for no records).
    /// Lets the pipeline refuse before it spends CPU on records it cannot
    /// queue; `submit_rows` still decides (space may be taken meanwhile).
    pub fn precheck(&self, records: usize) -> Result<(), ConsumeError> {
        if records == 0 {
            return Ok(());
        }
        self.refuse_if_unavailable()?;
        let inner = &self.inner;
        let shared = &inner.shared;
        if inner.permits.available_permits() < records.min(inner.capacity as usize) {
            return Err(ConsumeError::Overloaded {
                retry_after: shared.retry_after,
            });
        }
        Ok(())
    }

    /// Queues `events` and resolves once they are committed (`Ok`) or definitely
    /// not (`Err`). Never waits for queue space: a full queue answers
    /// `Overloaded`, a database known to be down or a shutdown `Unavailable`,
    /// an event time outside years 1–9999 `Invalid`. Empty → `Ok` at once.
    pub async fn submit(&self, events: Vec<ActivityEvent>) -> Result<(), ConsumeError> {
        self.submit_all(events, Vec::new()).await
    }

    /// [`submit`](PgExporter::submit) for activity events and token rows
    /// together: both are written in one transaction (activity first, then
    /// tokens) and answered once it is committed.
    pub async fn submit_all(
        &self,
        events: Vec<ActivityEvent>,
        tokens: Vec<TokenUsage>,
    ) -> Result<(), ConsumeError> {
        self.submit_rows(events, tokens, Vec::new(), None).await
    }

    /// [`submit_all`](PgExporter::submit_all) plus quarantined records for
    /// `rejected_events`, all in the same transaction.
    pub async fn submit_rows(
        &self,
        events: Vec<ActivityEvent>,
        tokens: Vec<TokenUsage>,
        rejected: Vec<RejectedRecord>,
        ingest_key_id: Option<uuid::Uuid>,
    ) -> Result<(), ConsumeError> {
        self.submit_traced(
            events,
            tokens,
            rejected,
            ingest_key_id,
            SharedTraces::default(),
        )
        .await
        .map(|_| ())
    }

    /// [`submit_rows`](PgExporter::submit_rows) plus what the request learned
    /// about its traces, written to `trace_identities` in the same transaction
    /// (see [`SharedTraces`]). Answers, once committed, the traces whose stored
    /// token rows are now to be attributed (another instance stored them, or
    /// knew their identity): pass them to
    /// [`attribute_traces`](PgExporter::attribute_traces).
    pub async fn submit_traced(
        &self,
        events: Vec<ActivityEvent>,
        tokens: Vec<TokenUsage>,
        rejected: Vec<RejectedRecord>,
        ingest_key_id: Option<uuid::Uuid>,
        traces: SharedTraces,
    ) -> Result<Vec<TraceAttribution>, ConsumeError> {
        if events.is_empty() && tokens.is_empty() && rejected.is_empty() && traces.is_empty() {
            return Ok(Vec::new());
        }
        self.refuse_if_unavailable()?;
        let inner = &self.inner;
        let shared = &inner.shared;
        if events.iter().any(|e| !(1..=9999).contains(&e.ts.year()))
            || tokens.iter().any(|t| !(1..=9999).contains(&t.ts.year()))
        {
            return Err(ConsumeError::Invalid(
                "event time outside the years 1 to 9999".into(),
            ));
        }
        let wanted = (events.len() + tokens.len() + rejected.len())
            .max(1)
            .min(inner.capacity as usize) as u32;
        let permit = inner
            .permits
            .clone()
            .try_acquire_many_owned(wanted)
            .map_err(|_| ConsumeError::Overloaded {
                retry_after: shared.retry_after,
            })?;
        let (reply, answer) = oneshot::channel();
        {
            let sender = inner.sender.lock().unwrap_or_else(|p| p.into_inner());
            let submission = Submission {
                events,
                tokens,
                rejected,
                ingest_key_id,
                traces,
                reply,
                _permit: permit,
                queued_at: Instant::now(),
            };
            match sender.as_ref() {
                Some(tx) if tx.send(submission).is_ok() => {}
                _ => return Err(shared.unavailable("shutting down")),
            }
        }
        telemetry::queue_depth(shared.queued());
        match answer.await {
            Ok(Answer { result, rows }) => {
                // Freed here, on the thread that allocated them (see `Answer`).
                drop(rows);
                result
            }
            Err(_) => Err(shared.unavailable("writer stopped")),
        }
    }

    /// Attributes the stored, still unattributed token rows of `traces`, unless
    /// the token rollup has already folded them, in which case their counts move
    /// with them; see [`attribute_traces`](super::attribute_traces). Uses
    /// connections of its own. Returns the number of rows updated.
    pub async fn attribute_traces(
        &self,
        traces: &[super::TraceAttribution],
    ) -> Result<u64, PgError> {
        if traces.is_empty() {
            return Ok(0);
        }
        let inner = &self.inner;
        let n = inner.attribution.len().max(1);
        let index = inner.next_attribution.fetch_add(1, Ordering::Relaxed) % n;
        let Some(slot) = inner.attribution.get(index) else {
            return Err(PgError::Timeout("no attribution connection".into()));
        };
        let mut slot = slot.lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = Some(connect(&inner.shared.url).await?.0);
        }
        let Some(client) = slot.as_mut() else {
            return Err(PgError::Timeout("no attribution connection".into()));
        };
        let erased = inner.shared.guards().erased.clone();
        let result = match erased {
            Some(erased) => match erased.pseudonymise_attributions(client, traces).await {
                Ok(traces) => super::attribute_traces(client, &traces).await,
                Err(error) => Err(error),
            },
            None => super::attribute_traces(client, traces).await,
        };
        if result.is_err() {
            // A failed transaction may leave the connection unusable: start afresh.
            *slot = None;
        }
        result
    }

    /// Deletes stored token rows that stop counting (see
    /// [`uncount_token_rows`](super::uncount_token_rows)), on the attribution
    /// connections. Returns the number of rows deleted.
    pub async fn uncount_token_rows(
        &self,
        rows: &[(chrono::DateTime<chrono::Utc>, uuid::Uuid)],
    ) -> Result<u64, PgError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let inner = &self.inner;
        let n = inner.attribution.len().max(1);
        let index = inner.next_attribution.fetch_add(1, Ordering::Relaxed) % n;
        let Some(slot) = inner.attribution.get(index) else {
            return Err(PgError::Timeout("no attribution connection".into()));
        };
        let mut slot = slot.lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = Some(connect(&inner.shared.url).await?.0);
        }
        let Some(client) = slot.as_mut() else {
            return Err(PgError::Timeout("no attribution connection".into()));
        };
        let result = super::uncount_token_rows(client, rows).await;
        if result.is_err() {
            // A failed transaction may leave the connection unusable: start afresh.
            *slot = None;
        }
        result
    }

    /// Stores token usage reported as metrics (see
    /// [`write_token_metrics`](super::write_token_metrics)) on the attribution
    /// connections, in a transaction of its own, and resolves once it is
    /// committed. `Unavailable` while shutting down, while the database is
    /// down or when the write fails (retryable: the series state makes a
    /// resent point add nothing twice).
    pub async fn write_token_metrics(
        &self,
        points: &[tally_model::token_metrics::TokenMetricPoint],
    ) -> Result<super::MetricWrite, ConsumeError> {
        if points.is_empty() {
            return Ok(super::MetricWrite::default());
        }
        self.refuse_if_unavailable()?;
        let inner = &self.inner;
        let n = inner.attribution.len().max(1);
        let index = inner.next_attribution.fetch_add(1, Ordering::Relaxed) % n;
        let Some(slot) = inner.attribution.get(index) else {
            return Err(inner.shared.unavailable("no database connection"));
        };
        let mut slot = slot.lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            match connect(&inner.shared.url).await {
                Ok((client, _)) => *slot = Some(client),
                Err(error) => {
                    tracing::warn!(%error, "cannot connect to store token metrics");
                    return Err(inner.shared.unavailable("database unavailable"));
                }
            }
        }
        let Some(client) = slot.as_mut() else {
            return Err(inner.shared.unavailable("no database connection"));
        };
        match super::write_token_metrics(client, points).await {
            Ok(report) => Ok(report),
            Err(error) => {
                // A failed transaction may leave the connection unusable: start afresh.
                *slot = None;
                tracing::warn!(%error, "storing token metrics failed; answered retryable");
                Err(inner.shared.unavailable("database write failed"))
            }
        }
    }

    /// Records queued or being written right now (at most the queue capacity).
    pub fn queued_records(&self) -> usize {
        let available = self.inner.permits.available_permits();
        (self.inner.capacity as usize).saturating_sub(available)
    }

    /// Stops taking submissions (they get `Unavailable("shutting down")`), marks
    /// readiness as draining, writes and answers everything queued, then stops
    /// the tasks. Concurrent calls all return once the drain is complete.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if !inner.shutting_down.swap(true, Ordering::AcqRel) {
            tracing::info!(
                queued_records = self.queued_records(),
                "postgres exporter draining"
            );
        }
        inner.shared.readiness.set_draining();
        inner.shared.stopping.store(true, Ordering::Release);
        // Closing the channel: writers drain what is buffered, then exit.
        drop(
            inner
                .sender
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        {
            let mut writers = inner.writers.lock().await;
            for handle in writers.drain(..) {
                if let Err(error) = handle.await {
                    tracing::error!(%error, "postgres writer task failed");
                }
            }
        }
        // Every writer is gone: nothing can be left, but never leave a waiter hanging.
        inner.shared.fail_queued("writer stopped");
        let _ = inner.stop.send(true);
        if let Some(handle) = inner.maintenance.lock().await.take() {
            let _ = handle.await;
            tracing::info!("postgres exporter stopped");
        }
    }
}

/// Whether an error means the connection (or the server) is gone.
fn connection_lost(error: &PgError, client: &Client) -> bool {
    if client.is_closed() {
        return true;
    }
    match error {
        PgError::Db(e) => match e.code() {
            None => true,
            Some(code) => {
                let class = &code.code()[..2];
                matches!(class, "08" | "53" | "57" | "58" | "XX")
                    && *code != SqlState::QUERY_CANCELED
            }
        },
        _ => true,
    }
}

fn is_missing_partition(error: &PgError) -> bool {
    match error {
        PgError::Db(e) => e.as_db_error().is_some_and(|db| {
            *db.code() == SqlState::CHECK_VIOLATION && db.message().starts_with("no partition")
        }),
        _ => false,
    }
}

/// Quarantines `records` in `rejected_events` (one statement; a retried record
/// is stored once). Returns the rows added.
async fn insert_rejected(
    tx: &Transaction<'_>,
    records: &[(&RejectedRecord, Option<uuid::Uuid>)],
) -> Result<u64, PgError> {
    if records.is_empty() {
        return Ok(0);
    }
    let ids: Vec<uuid::Uuid> = records.iter().map(|(r, _)| r.id).collect();
    let tenants: Vec<&str> = records.iter().map(|(r, _)| r.tenant_id.as_str()).collect();
    let reasons: Vec<&str> = records.iter().map(|(r, _)| r.reason.as_str()).collect();
    let bodies: Vec<tokio_postgres::types::Json<&serde_json::Value>> = records
        .iter()
        .map(|(r, _)| tokio_postgres::types::Json(&r.record))
        .collect();
    let keys: Vec<Option<uuid::Uuid>> = records.iter().map(|(_, key)| *key).collect();
    let added = tx
        .execute(
            "INSERT INTO rejected_events (id, tenant_id, reason, record, ingest_key_id) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::uuid[]) \
             ON CONFLICT DO NOTHING",
            &[&ids, &tenants, &reasons, &bodies, &keys],
        )
        .await?;
    Ok(added)
}

fn batch_days(batch: &[Submission]) -> Vec<NaiveDate> {
    let mut days = HashSet::new();
    for e in batch.iter().flat_map(|s| s.events.iter()) {
        days.insert(e.ts.date_naive());
    }
    for t in batch.iter().flat_map(|s| s.tokens.iter()) {
        days.insert(t.ts.date_naive());
    }
    days.into_iter().collect()
}

/// Where one batch's write spent its time (the writer's debug log).
#[derive(Debug, Default, Clone, Copy)]
struct Stages {
    begin: Duration,
    share: Duration,
    stage_tokens: Duration,
    activity: Duration,
    tokens: Duration,
    rejected: Duration,
    commit: Duration,
}

/// Milliseconds, for the log.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn commit_batch(
    client: &mut Client,
    guards: &WriteGuards,
    direct: &DirectCopy,
    batch: &[Submission],
    stages: &mut Stages,
) -> Result<Inserted, PgError> {
    let mut mark = Instant::now();
    let mut lap = |slot: &mut Duration| {
        let now = Instant::now();
        *slot = now - mark;
        mark = now;
    };
    // Trace identities first (row locks in key order): those alone in a
    // statement of their own, so that no other writer sharing one of these
    // traces waits for this whole batch; pending marks in the transaction,
    // before the advisory locks, to commit with their rows.
    let (identities, pending) = split_pending(
        batch
            .iter()
            .flat_map(|s| s.traces.traces.iter().map(|t| (s.traces.scope.as_str(), t))),
    );
    let mut ready = share(&*client, &identities).await?;
    lap(&mut stages.share);
    let tx = client.transaction().await?;
    lap(&mut stages.begin);
    ready.extend(share(&tx, &pending).await?);
    let mut pending_share = Duration::ZERO;
    lap(&mut pending_share);
    stages.share += pending_share;
    // Token rows are staged before the activity lock (staging locks nothing),
    // so the lock that orders every writer's commit is held for less.
    let mut tokens: Vec<(&TokenUsage, Option<uuid::Uuid>)> = batch
        .iter()
        .flat_map(|s| s.tokens.iter().map(move |t| (t, s.ingest_key_id)))
        .collect();
    let replaced = match &guards.erased {
        Some(erased) => erased.pseudonymise_tokens(&tx, &tokens).await?,
        None => Vec::new(),
    };
    for (index, row) in &replaced {
        if let Some(slot) = tokens.get_mut(*index) {
            slot.0 = row;
        }
    }
    let staged_tokens = stage_tokens(&tx, &tokens).await?;
    lap(&mut stages.stage_tokens);
    // Fixed lock order: activity_events, then token_usage.
    let mut inserted = if batch.iter().any(|s| !s.events.is_empty()) {
        let events: Vec<(&ActivityEvent, Option<uuid::Uuid>)> = batch
            .iter()
            .flat_map(|s| s.events.iter().map(move |e| (e, s.ingest_key_id)))
            .collect();
        insert_rows(&tx, events, &guards.personal, direct, guards.link_chain).await?
    } else {
        Inserted::default()
    };
    lap(&mut stages.activity);
    inserted.tokens = insert_staged_tokens(&tx, staged_tokens).await?;
    lap(&mut stages.tokens);
    let rejected: Vec<(&RejectedRecord, Option<uuid::Uuid>)> = batch
        .iter()
        .flat_map(|s| s.rejected.iter().map(move |r| (r, s.ingest_key_id)))
        .collect();
    inserted.rejected = insert_rejected(&tx, &rejected).await?;
    lap(&mut stages.rejected);
    tx.commit().await?;
    lap(&mut stages.commit);
    inserted.ready = ready;
    Ok(inserted)
}

async fn write_batch(
    client: &mut Client,
    shared: &Shared,
    batch: &[Submission],
    stages: &mut Stages,
) -> Result<Inserted, PgError> {
    let days = batch_days(batch);
    shared.partitions.ensure(client, &days).await?;
    let guards = shared.guards();
    match commit_batch(client, &guards, &shared.direct_copy, batch, stages).await {
        Err(error) if is_missing_partition(&error) => {
            // Cached as existing but gone (e.g. dropped by retention): recreate.
            shared.partitions.forget_all();
            shared.partitions.ensure(client, &days).await?;
            commit_batch(client, &guards, &shared.direct_copy, batch, stages).await
        }
        other => other,
    }
}

fn answer(batch: Vec<Submission>, error: ConsumeError) {
    for submission in batch {
        submission.answer(Err(error.clone()));
    }
}

/// Answers a committed batch: each submission gets the ready traces it shared.
fn answer_committed(batch: Vec<Submission>, ready: &[((String, String), TraceAttribution)]) {
    let by_key: std::collections::HashMap<(&str, &str), &TraceAttribution> = ready
        .iter()
        .map(|((scope, trace), a)| ((scope.as_str(), trace.as_str()), a))
        .collect();
    for submission in batch {
        let scope = submission.traces.scope.as_str();
        let mine: Vec<TraceAttribution> = if by_key.is_empty() {
            Vec::new()
        } else {
            submission
                .traces
                .traces
                .iter()
                .filter_map(|t| by_key.get(&(scope, t.trace_id.as_str())))
                .map(|a| (*a).clone())
                .collect()
        };
        submission.answer(Ok(mine));
    }
}

/// Connects, retrying with backoff; while the database is unreachable, queued
/// submissions are answered `Unavailable`. `None` when stopping and unreachable.
async fn reconnect(shared: &Shared, id: usize) -> Option<Client> {
    let mut backoff = Backoff::new();
    loop {
        match connect(&shared.url).await {
            Ok((client, _)) => {
                if !shared.readiness.database_up() {
                    tracing::info!(writer = id, "database reachable again");
                }
                shared.readiness.set_database_up(true);
                return Some(client);
            }
            Err(error) => {
                if shared.readiness.database_up() {
                    tracing::warn!(writer = id, %error, "database unreachable");
                }
                shared.readiness.set_database_up(false);
                shared.fail_queued("database unavailable");
                if shared.stopping.load(Ordering::Acquire) {
                    return None;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Runs a writer and restarts it (with a new connection) if it panics: the
/// batch it held is answered `Unavailable` (its reply channels are dropped), so
/// the clients retry, and the other submissions keep flowing.
async fn supervise_writer(shared: Arc<Shared>, id: usize, client: Client) {
    let mut client = Some(client);
    loop {
        match tokio::spawn(writer_task(shared.clone(), id, client.take())).await {
            Err(error) if error.is_panic() => {
                tracing::error!(writer = id, "postgres writer panicked; restarting it");
                telemetry::batch_failed("panic");
            }
            _ => return,
        }
    }
}

async fn writer_task(shared: Arc<Shared>, id: usize, client: Option<Client>) {
    let mut client = client;
    loop {
        let mut conn = match client.take() {
            Some(c) if !c.is_closed() => c,
            _ => match reconnect(&shared, id).await {
                Some(c) => c,
                None => break,
            },
        };
        let Some(batch) = shared.gather().await else {
            break;
        };
        if conn.is_closed() {
            // Went away while idle: one immediate attempt, else refuse the batch.
            match connect(&shared.url).await {
                Ok((c, _)) => conn = c,
                Err(error) => {
                    tracing::warn!(writer = id, %error, "database unreachable");
                    shared.readiness.set_database_up(false);
                    answer(batch, shared.unavailable("database unavailable"));
                    continue;
                }
            }
        }
        let rows: usize = batch.iter().map(Submission::rows).sum();
        let started = Instant::now();
        let mut stages = Stages::default();
        let written = {
            let _writing = Writing::start(&shared.writing);
            write_batch(&mut conn, &shared, &batch, &mut stages).await
        };
        match written {
            Ok(inserted) => {
                let oldest = batch.iter().map(|s| s.queued_at).min().unwrap_or(started);
                tracing::debug!(
                    writer = id,
                    submissions = batch.len(),
                    rows,
                    inserted = inserted.total,
                    linked = inserted.linked,
                    elapsed_ms = ms(started.elapsed()),
                    queued_ms = ms(started - oldest),
                    begin_ms = ms(stages.begin),
                    share_ms = ms(stages.share),
                    stage_tokens_ms = ms(stages.stage_tokens),
                    activity_ms = ms(stages.activity),
                    turn_ms = ms(inserted.turn),
                    tokens_ms = ms(stages.tokens),
                    rejected_ms = ms(stages.rejected),
                    commit_ms = ms(stages.commit),
                    "batch committed"
                );
                telemetry::batch_committed(
                    batch.iter().flat_map(|s| s.events.iter()),
                    rows,
                    &inserted,
                    started,
                );
                super::tokens::committed(&inserted.tokens);
                answer_committed(batch, &inserted.ready);
                telemetry::queue_depth(shared.queued());
                client = Some(conn);
            }
            Err(error) => {
                let lost = connection_lost(&error, &conn);
                tracing::warn!(
                    writer = id,
                    submissions = batch.len(),
                    rows,
                    connection_lost = lost,
                    %error,
                    "batch not committed; answered retryable"
                );
                telemetry::batch_failed(if lost { "connection" } else { "database" });
                answer(batch, shared.unavailable("database write failed"));
                telemetry::queue_depth(shared.queued());
                if lost {
                    shared.readiness.set_database_up(false);
                    // `client` stays None: the loop reconnects with backoff.
                } else {
                    client = Some(conn);
                }
            }
        }
    }
    tracing::debug!(writer = id, "postgres writer stopped");
}

/// Probes the database (bringing readiness back without traffic) and creates
/// partitions ahead once an hour, until `stop` fires or the exporter is dropped.
async fn maintenance_task(shared: Arc<Shared>, client: Client, mut stop: watch::Receiver<bool>) {
    let mut client = Some(client);
    let mut backoff = Backoff::new();
    let mut partitions_due = Instant::now() + PARTITION_INTERVAL;
    let mut partitions_day = Utc::now().date_naive();
    loop {
        let delay = if shared.readiness.database_up() {
            PROBE_INTERVAL
        } else {
            backoff.next_delay()
        };
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        let Some(conn) = probe(&mut client, &shared.url).await else {
            if shared.readiness.database_up() {
                tracing::warn!("database unreachable (probe)");
            }
            shared.readiness.set_database_up(false);
            continue;
        };
        backoff.reset();
        if !shared.readiness.database_up() {
            tracing::info!("database reachable again (probe)");
            shared.readiness.set_database_up(true);
        }
        let today = Utc::now().date_naive();
        if Instant::now() >= partitions_due || today != partitions_day {
            match shared.ensure_ahead(conn).await {
                Ok(()) => {
                    partitions_due = Instant::now() + PARTITION_INTERVAL;
                    partitions_day = today;
                }
                Err(error) => tracing::warn!(%error, "creating partitions ahead failed"),
            }
        }
    }
}

/// A connection that just answered `SELECT 1`, reconnecting if needed.
async fn probe<'a>(client: &'a mut Option<Client>, url: &str) -> Option<&'a Client> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = connect(url).await.ok().map(|(c, _)| c);
    }
    let conn = client.as_ref()?;
    match tokio::time::timeout(PROBE_TIMEOUT, conn.simple_query("SELECT 1")).await {
        Ok(Ok(_)) => client.as_ref(),
        _ => {
            *client = None;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u128) -> ActivityEvent {
        ActivityEvent {
            tenant_id: Some("acme".into()),
            user_id: Some(format!("user-{i}")),
            ..super::super::test_rows::event(i)
        }
    }

    #[test]
    fn an_answer_frees_the_queue_space_and_hands_the_rows_back() {
        let permits = Arc::new(Semaphore::new(10));
        let permit = permits
            .clone()
            .try_acquire_many_owned(3)
            .expect("free permits");
        let (reply, mut answer) = oneshot::channel();
        let events = vec![event(1), event(2), event(3)];
        let submission = Submission {
            events: events.clone(),
            tokens: Vec::new(),
            rejected: Vec::new(),
            ingest_key_id: None,
            traces: SharedTraces::default(),
            reply,
            _permit: permit,
            queued_at: Instant::now(),
        };
        assert_eq!(permits.available_permits(), 7);
        submission.answer(Err(ConsumeError::Invalid("no".into())));
        assert_eq!(permits.available_permits(), 10);
        let Answer { result, rows } = answer.try_recv().expect("answered");
        assert!(matches!(result, Err(ConsumeError::Invalid(ref m)) if m == "no"));
        // The very rows submitted, to be dropped by the submitter.
        assert_eq!(rows._events, events);
        assert!(rows._tokens.is_empty() && rows._rejected.is_empty());
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
    }
}
