//! The pipeline behind the receiver: classify, then hand rows to the exporter
//! and answer once they are committed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::Utc;
use futures::future::BoxFuture;
use tally_exporters::postgres::PgExporter;
use tally_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tally_model::{ConsumeError, ConsumeReport, Consumer};
use tally_processors::Classified;

/// Counts of records seen by the pipeline (exported as metrics later).
#[derive(Debug, Default)]
pub struct PipelineCounters {
    /// Records without an action: counted, not stored.
    pub without_action: AtomicU64,
    /// Records with an action Tally could not store (reported in `partial_success`).
    pub rejected: AtomicU64,
    /// Activity events committed.
    pub stored: AtomicU64,
}

/// classify → postgres exporter.
pub struct Pipeline {
    exporter: PgExporter,
    counters: Arc<PipelineCounters>,
}

impl Pipeline {
    pub fn new(exporter: PgExporter) -> Self {
        Pipeline {
            exporter,
            counters: Arc::default(),
        }
    }

    fn store(
        &self,
        classified: Classified,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let exporter = self.exporter.clone();
        let counters = self.counters.clone();
        Box::pin(async move {
            let Classified {
                events,
                without_action,
                rejected,
                reject_reason,
            } = classified;
            counters
                .without_action
                .fetch_add(without_action, Ordering::Relaxed);
            let stored = events.len() as u64;
            exporter.submit(events).await?;
            counters.stored.fetch_add(stored, Ordering::Relaxed);
            if rejected > 0 {
                counters.rejected.fetch_add(rejected, Ordering::Relaxed);
            }
            Ok(ConsumeReport {
                rejected,
                message: reject_reason.unwrap_or_default(),
            })
        })
    }
}

impl Consumer for Pipeline {
    fn consume_traces(
        &self,
        request: ExportTraceServiceRequest,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        self.store(tally_processors::classify_traces(&request, Utc::now()))
    }

    fn consume_logs(
        &self,
        request: ExportLogsServiceRequest,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        self.store(tally_processors::classify_logs(&request, Utc::now()))
    }
}
