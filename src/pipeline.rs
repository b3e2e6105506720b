//! The pipeline behind the receiver: classify activity and token usage in one
//! pass over the request, attribute token rows through their trace, hand both
//! to the exporter and answer once they are committed.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tally_exporters::postgres::{PgExporter, TraceAttribution, TraceIdentity};
use tally_model::metrics::{metrics, ReasonLabels};
use tally_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tally_model::{ConsumeError, ConsumeReport, Consumer};
use tally_processors::attribution::{Identity, TraceCache, TraceId};
use tally_processors::tokens::{TokenBatch, TokenProcessor};
use tally_processors::Classified;

/// classify + tokens → postgres exporter. Counters of what the exporter commits
/// are updated by the exporter; the pipeline counts what it does not pass on.
///
/// Trace attribution (see `docs/tokens.md`): token rows stored without a user
/// or tenant mark their trace *pending* in the [`TraceCache`] before they are
/// submitted. Once they are committed, if the trace's identity is known by
/// then, the request updates them itself; otherwise the request that later
/// brings the identity does (after its own rows are committed). Either way the
/// update is committed before that request is acknowledged.
pub struct Pipeline {
    exporter: PgExporter,
    tokens: Arc<TokenProcessor>,
    traces: Arc<TraceCache>,
}

impl Pipeline {
    pub fn new(exporter: PgExporter, tokens: TokenProcessor, traces: Arc<TraceCache>) -> Self {
        Pipeline {
            exporter,
            tokens: Arc::new(tokens),
            traces,
        }
    }

    fn store(
        &self,
        classified: Classified,
        tokens: TokenBatch,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let exporter = self.exporter.clone();
        let traces = self.traces.clone();
        Box::pin(async move {
            let Classified {
                events,
                without_action,
                rejected,
                reject_reason,
            } = classified;
            let TokenBatch {
                rows,
                pending,
                attribute,
                ..
            } = tokens;
            let m = metrics();
            m.records_without_action.inc_by(without_action);
            for (trace, ts) in &pending {
                traces.mark_pending(*trace, *ts);
            }
            if let Err(error) = exporter.submit_all(events, rows).await {
                // The identities this request brought are still owed to the
                // pending traces: the client's retry does it.
                for (trace, _, since) in &attribute {
                    traces.mark_pending(*trace, *since);
                }
                return Err(error);
            }
            // Our own unattributed rows are committed: attribute them if the
            // trace's identity arrived meanwhile.
            let mut updates: Vec<(TraceId, Identity, DateTime<Utc>)> = attribute;
            for (trace, since) in pending {
                if updates.iter().any(|(t, _, _)| *t == trace) {
                    continue;
                }
                if let Some(identity) = traces.lookup(&trace) {
                    updates.push((trace, identity, since));
                }
            }
            let batch: Vec<TraceAttribution> = updates
                .iter()
                .map(|(trace, identity, since)| TraceAttribution {
                    trace_id: trace_hex(trace),
                    identity: TraceIdentity {
                        tenant_id: identity.tenant.clone(),
                        user_id: identity.user.clone(),
                        session_id: identity.session.clone(),
                    },
                    since: *since,
                })
                .collect();
            match exporter.attribute_traces(&batch).await {
                Ok(rows) => {
                    for (trace, _, _) in &updates {
                        // Nothing left pending for these traces up to now.
                        let _ = traces.take_if_identified(trace);
                    }
                    if rows > 0 {
                        tracing::debug!(
                            traces = updates.len(),
                            rows,
                            "token rows attributed through their trace"
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "trace attribution failed; answered retryable");
                    for (trace, _, since) in &updates {
                        traces.mark_pending(*trace, *since);
                    }
                    return Err(ConsumeError::Unavailable {
                        reason: "database write failed".into(),
                        retry_after: std::time::Duration::from_secs(1),
                    });
                }
            }
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

/// Lowercase hex of a trace id, as stored in `trace_id`.
fn trace_hex(trace: &TraceId) -> String {
    trace.iter().map(|b| format!("{b:02x}")).collect()
}

impl Consumer for Pipeline {
    fn consume_traces(
        &self,
        request: ExportTraceServiceRequest,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let now = Utc::now();
        let classified = tally_processors::classify_traces(&request, now);
        let tokens = self.tokens.traces(&request, now, &self.traces);
        self.store(classified, tokens)
    }

    fn consume_logs(
        &self,
        request: ExportLogsServiceRequest,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let now = Utc::now();
        let classified = tally_processors::classify_logs(&request, now);
        let tokens = self.tokens.logs(&request, now, &self.traces);
        self.store(classified, tokens)
    }
}
