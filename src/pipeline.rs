//! The pipeline behind the receiver: redact the request, classify activity and
//! token usage in one pass over it, validate the activity against the taxonomy,
//! attribute token rows through their trace, hand everything (quarantined
//! records included) to the exporter and answer once it is committed.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tally_exporters::postgres::{PgExporter, TraceAttribution, TraceIdentity};
use tally_model::metrics::{metrics, ReasonLabels};
use tally_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tally_model::{ActivityEvent, ConsumeError, ConsumeReport, Consumer, RejectedRecord};
use tally_processors::attribution::{Identity, TraceCache, TraceId};
use tally_processors::redact::{RedactionCounts, Redactor};
use tally_processors::tokens::{TokenBatch, TokenProcessor};
use tally_processors::validate::{Checked, Quarantined, ReasonCode, ValidatedBatch, Validator};
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
    redactor: Arc<Redactor>,
    tokens: Arc<TokenProcessor>,
    traces: Arc<TraceCache>,
    validator: Validator,
}

impl Pipeline {
    pub fn new(
        exporter: PgExporter,
        redactor: Redactor,
        tokens: TokenProcessor,
        traces: Arc<TraceCache>,
        validator: Validator,
    ) -> Self {
        Pipeline {
            exporter,
            redactor: Arc::new(redactor),
            tokens: Arc::new(tokens),
            traces,
            validator,
        }
    }

    fn store(
        &self,
        classified: Classified,
        tokens: TokenBatch,
        redactions: RedactionCounts,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let exporter = self.exporter.clone();
        let traces = self.traces.clone();
        let Classified {
            events,
            without_action,
        } = classified;
        let validated = self.validator.validate_batch(events);
        Box::pin(async move {
            let quarantine_message = validated.partial_success_message();
            let quarantined_by_reason = validated.quarantined_by_reason();
            let ValidatedBatch {
                stored,
                quarantined,
            } = validated;
            let events: Vec<ActivityEvent> = stored.into_iter().map(flagged_event).collect();
            let quarantined: Vec<RejectedRecord> =
                quarantined.iter().map(rejected_record).collect();
            let quarantined_count = quarantined.len() as u64;
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
            if let Err(error) = exporter.submit_rows(events, rows, quarantined).await {
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
            // Everything is committed: count what was redacted and quarantined.
            redactions.record_metrics();
            for (code, n) in quarantined_by_reason {
                m.rejected_events
                    .get_or_create(&ReasonLabels {
                        reason: code.as_str(),
                    })
                    .inc_by(n);
            }
            Ok(ConsumeReport {
                rejected: quarantined_count,
                message: quarantine_message.unwrap_or_default(),
            })
        })
    }
}

/// Creates the zero-valued `tally_rejected_events_total{reason}` series of every
/// taxonomy reason code, so dashboards and alerts see them before the first one.
pub fn init_metric_series() {
    let family = &metrics().rejected_events;
    for code in ReasonCode::ALL {
        let _ = family.get_or_create(&ReasonLabels {
            reason: code.as_str(),
        });
    }
}

/// A validated event with its taxonomy verdict on it.
fn flagged_event(checked: Checked) -> ActivityEvent {
    let Checked {
        mut event,
        taxonomy_valid,
        reason,
    } = checked;
    event.taxonomy_valid = taxonomy_valid;
    event.taxonomy_reason = reason.map(|r| r.code.as_str().to_string());
    event
}

/// The `rejected_events` row of a quarantined event.
fn rejected_record(item: &Quarantined) -> RejectedRecord {
    RejectedRecord {
        id: item.event.id,
        tenant_id: item.event.tenant_id.clone().unwrap_or_default(),
        reason: item.reason.code.as_str().to_string(),
        record: item.record_json(),
    }
}

/// Lowercase hex of a trace id, as stored in `trace_id`.
fn trace_hex(trace: &TraceId) -> String {
    trace.iter().map(|b| format!("{b:02x}")).collect()
}

impl Consumer for Pipeline {
    fn consume_traces(
        &self,
        mut request: ExportTraceServiceRequest,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let records = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        if let Err(error) = self.exporter.precheck(records) {
            return Box::pin(std::future::ready(Err(error)));
        }
        let now = Utc::now();
        // Redaction first: nothing raw reaches rows, quarantine, labels or logs.
        let redactions = self.redactor.redact_traces(&mut request);
        // Tokens first: classification then moves the spans' attributes out
        // of the request instead of copying them.
        let tokens = self.tokens.traces(&request, now, &self.traces);
        let classified = tally_processors::classify::classify_traces_taking(&mut request, now);
        self.store(classified, tokens, redactions)
    }

    fn consume_logs(
        &self,
        mut request: ExportLogsServiceRequest,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let records = request
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        if let Err(error) = self.exporter.precheck(records) {
            return Box::pin(std::future::ready(Err(error)));
        }
        let now = Utc::now();
        let redactions = self.redactor.redact_logs(&mut request);
        let classified = tally_processors::classify_logs(&request, now);
        let tokens = self.tokens.logs(&request, now, &self.traces);
        self.store(classified, tokens, redactions)
    }
}
