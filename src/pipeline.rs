//! The pipeline behind the receiver: classify, then hand rows to the exporter
//! and answer once they are committed.

use chrono::Utc;
use futures::future::BoxFuture;
use tally_exporters::postgres::PgExporter;
use tally_model::metrics::{metrics, ReasonLabels};
use tally_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tally_model::{ConsumeError, ConsumeReport, Consumer};
use tally_processors::Classified;

/// classify → postgres exporter. Counters of what the exporter commits are
/// updated by the exporter; the pipeline counts what it does not pass on.
pub struct Pipeline {
    exporter: PgExporter,
}

impl Pipeline {
    pub fn new(exporter: PgExporter) -> Self {
        Pipeline { exporter }
    }

    fn store(
        &self,
        classified: Classified,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let exporter = self.exporter.clone();
        Box::pin(async move {
            let Classified {
                events,
                without_action,
                rejected,
                reject_reason,
            } = classified;
            let m = metrics();
            m.records_without_action.inc_by(without_action);
            exporter.submit(events).await?;
            if rejected > 0 {
                m.rejected_events
                    .get_or_create(&ReasonLabels {
                        reason: "invalid_action",
                    })
                    .inc_by(rejected);
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
