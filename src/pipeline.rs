//! The pipeline behind the receiver: redact the request, extract token usage and
//! classify activity (three walks with the one OTLP walker, `tally_model::walk`;
//! a fused single walk measured slower, see `docs/performance.md`), validate the activity against the taxonomy,
//! attribute token rows through their trace, hand everything (quarantined
//! records included) to the exporter and answer once it is committed.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tally_exporters::postgres::{
    PgExporter, SharedTrace, SharedTraces, TraceAttribution, TraceIdentity,
};
use tally_model::metrics::ReasonLabels;
use tally_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tally_model::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tally_model::{
    ActivityEvent, ConsumeError, ConsumeReport, Consumer, RejectedRecord, Sender, TokenUsage,
};
use tally_processors::attribution::{Identity, TraceCache, TraceId, TraceScope};
use tally_processors::metrics::{metrics, TENANT_MISMATCH};
use tally_processors::redact::{RedactionCounts, Redactor};
use tally_processors::tokens::metrics::NotStored;
use tally_processors::tokens::{TokenBatch, TokenProcessor};
use tally_processors::validate::{Checked, Quarantined, ValidatedBatch, Validator};
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
///
/// Across instances, each request also writes what it learned about its
/// traces (identities not yet shared, pending marks) in its batch transaction
/// (`trace_identities`); the writer answers the traces that are now both
/// identified and pending, whichever instance stored their rows or saw their
/// identity, and the request attributes them the same way.
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
        mut tokens: TokenBatch,
        redactions: RedactionCounts,
        sender: &Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let exporter = self.exporter.clone();
        let traces = self.traces.clone();
        let Classified {
            mut events,
            without_action,
        } = classified;
        let mismatched = match sender.tenant.as_deref() {
            Some(tenant) => bind_tenant(tenant, &mut events, &mut tokens.rows),
            None => Vec::new(),
        };
        let scope = tokens.scope.unwrap_or(TraceScope::UNBOUND);
        let across_instances = self.tokens.across_instances();
        let key_id = sender.key_id;
        // Identities learned from a bound sender's records carry no tenant when
        // the records named none: theirs is the sender's.
        let bound_tenant: Option<String> = sender.tenant.as_deref().map(str::to_owned);
        let validated = self.validator.validate_batch(events);
        Box::pin(async move {
            let quarantine_message = validated.partial_success_message();
            let quarantined_by_reason = validated.quarantined_by_reason();
            let ValidatedBatch {
                stored,
                quarantined,
            } = validated;
            let events: Vec<ActivityEvent> = stored.into_iter().map(flagged_event).collect();
            let mismatch_count = mismatched.len() as u64;
            let mut quarantined: Vec<RejectedRecord> =
                quarantined.iter().map(rejected_record).collect();
            let quarantined_count = quarantined.len() as u64;
            quarantined.extend(mismatched);
            let quarantined_ids: Vec<(uuid::Uuid, String)> = quarantined
                .iter()
                .map(|record| (record.id, record.reason.clone()))
                .collect();
            let TokenBatch {
                rows,
                pending,
                attribute,
                agents,
                mut uncount,
                share,
                ..
            } = tokens;
            let shared = if across_instances {
                shared_traces(&scope, bound_tenant.as_deref(), &share, &pending)
            } else {
                SharedTraces::default()
            };
            let m = metrics();
            m.records_without_action.inc_by(without_action);
            for (trace, ts) in &pending {
                traces.mark_pending(*trace, *ts);
            }
            let ready = match exporter
                .submit_traced(events, rows, quarantined, key_id, shared)
                .await
            {
                Ok(ready) => ready,
                Err(error) => {
                    // The identities this request brought are still owed to the
                    // pending traces: the client's retry does it.
                    for (trace, _, since) in &attribute {
                        traces.mark_pending(*trace, *since);
                    }
                    // So are the agents this request uncounts: its retry meets them again.
                    for (trace, span, row) in &uncount {
                        traces.count_agent(*trace, *span, *row);
                    }
                    return Err(error);
                }
            };
            // The agent rule: agent rows stop counting when a model call below
            // them reported usage, in this request or (for our own agent rows)
            // in a request processed while they were being written.
            uncount.extend(
                agents
                    .iter()
                    .filter(|(trace, span, _)| traces.is_covered(trace, span))
                    .copied(),
            );
            let rows: Vec<_> = uncount.iter().map(|(_, _, row)| *row).collect();
            if let Err(error) = exporter.uncount_token_rows(&rows).await {
                tracing::warn!(%error, "uncounting agent rows failed; answered retryable");
                // The retry meets these agents again.
                for (trace, span, row) in agents.iter().chain(&uncount) {
                    traces.count_agent(*trace, *span, *row);
                }
                return Err(ConsumeError::Unavailable {
                    reason: "database write failed".into(),
                    retry_after: std::time::Duration::from_secs(1),
                });
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
            let mut batch: Vec<TraceAttribution> = updates
                .iter()
                .map(|(trace, identity, since)| TraceAttribution {
                    trace_id: trace_hex(&scope.trace(*trace)),
                    identity: TraceIdentity {
                        tenant_id: identity.tenant.clone().or_else(|| bound_tenant.clone()),
                        user_id: identity.user.clone(),
                        session_id: identity.session.clone(),
                    },
                    since: *since,
                })
                .collect();
            // What the database says: another instance stored the rows, or knew
            // the identity. This instance's own identity wins where both know.
            for other in ready {
                match batch.iter_mut().find(|a| a.trace_id == other.trace_id) {
                    Some(own) => own.since = own.since.min(other.since),
                    None => batch.push(other),
                }
            }
            match exporter.attribute_traces(&batch).await {
                Ok(rows) => {
                    // Written and acted on: not shared again. (Should anything
                    // above fail, the retry shares them again, so the writer
                    // answers their traces again.)
                    for (trace, identity) in &share {
                        traces.mark_shared(trace, identity);
                    }
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
            let mismatch_message = (mismatch_count > 0).then(|| {
                m.rejected_events
                    .get_or_create(&ReasonLabels {
                        reason: TENANT_MISMATCH,
                    })
                    .inc_by(mismatch_count);
                format!(
                    "{mismatch_count} record(s) name another tenant than the API key's \
                     ({TENANT_MISMATCH}); quarantined in rejected_events"
                )
            });
            let message = [quarantine_message, mismatch_message]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ");
            Ok(ConsumeReport {
                rejected: quarantined_count + mismatch_count,
                message,
                quarantined: quarantined_ids,
            })
        })
    }
}

/// Stamps `tenant` (the sender's key's) on the rows that name no tenant, and
/// takes the rows that name another one out, as `tenant_mismatch` quarantine
/// rows of `tenant` (so the key's tenant, not the one the record claims, sees
/// them).
fn bind_tenant(
    tenant: &str,
    events: &mut Vec<ActivityEvent>,
    rows: &mut Vec<TokenUsage>,
) -> Vec<RejectedRecord> {
    let mut mismatched = Vec::new();
    let quarantine = |kind: &str, id, claimed: &str, row: serde_json::Value| RejectedRecord {
        id,
        tenant_id: tenant.to_owned(),
        reason: TENANT_MISMATCH.to_owned(),
        record: serde_json::json!({
            "kind": kind,
            "row": row,
            "reason": {
                "code": TENANT_MISMATCH,
                "message": format!(
                    "the record names tenant {claimed:?} but its API key is bound to {tenant:?}"
                ),
            },
        }),
    };
    events.retain_mut(|event| match event.tenant_id.as_deref() {
        None => {
            event.tenant_id = Some(tenant.to_owned());
            true
        }
        Some(own) if own == tenant => true,
        Some(other) => {
            let row = serde_json::to_value(&*event).unwrap_or(serde_json::Value::Null);
            mismatched.push(quarantine("activity_tenant_mismatch", event.id, other, row));
            false
        }
    });
    rows.retain_mut(|usage| match usage.tenant_id.as_deref() {
        None => {
            usage.tenant_id = Some(tenant.to_owned());
            true
        }
        Some(own) if own == tenant => true,
        Some(other) => {
            let row = serde_json::to_value(&*usage).unwrap_or(serde_json::Value::Null);
            mismatched.push(quarantine(
                "token_usage_tenant_mismatch",
                usage.id,
                other,
                row,
            ));
            false
        }
    });
    mismatched
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

/// What a request tells the other instances about its traces: the identities
/// it learned and not yet shared, and the pending marks of the token rows it
/// stores without attribution (cache keys of `scope`).
fn shared_traces(
    scope: &TraceScope,
    bound_tenant: Option<&str>,
    share: &[(TraceId, Identity)],
    pending: &[(TraceId, DateTime<Utc>)],
) -> SharedTraces {
    let mut traces: Vec<SharedTrace> = share
        .iter()
        .map(|(trace, identity)| SharedTrace {
            trace_id: trace_hex(&scope.trace(*trace)),
            identity: Some(TraceIdentity {
                tenant_id: identity.tenant.clone(),
                user_id: identity.user.clone(),
                session_id: identity.session.clone(),
            }),
            pending_since: None,
        })
        .collect();
    let index: std::collections::HashMap<TraceId, usize> = if pending.is_empty() {
        Default::default()
    } else {
        share
            .iter()
            .enumerate()
            .map(|(i, (t, _))| (*t, i))
            .collect()
    };
    for (trace, since) in pending {
        let trace_id = trace_hex(&scope.trace(*trace));
        match index.get(trace).and_then(|i| traces.get_mut(*i)) {
            Some(known) => known.pending_since = Some(*since),
            None => traces.push(SharedTrace {
                trace_id,
                identity: None,
                pending_since: Some(*since),
            }),
        }
    }
    SharedTraces {
        scope: bound_tenant.unwrap_or_default().to_owned(),
        traces,
    }
}

/// Lowercase hex of a trace id, as stored in `trace_id` (one allocation, no
/// formatting machinery: it runs for every trace a request shares).
fn trace_hex(trace: &TraceId) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * trace.len());
    for b in trace {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

impl Consumer for Pipeline {
    fn consume_traces(
        &self,
        mut request: ExportTraceServiceRequest,
        sender: Sender,
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
        let tokens = self
            .tokens
            .traces(&request, now, &self.traces, sender.tenant.as_deref());
        let classified = tally_processors::classify::classify_traces_taking(&mut request, now);
        self.store(classified, tokens, redactions, &sender)
    }

    fn consume_logs(
        &self,
        mut request: ExportLogsServiceRequest,
        sender: Sender,
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
        let tokens = self
            .tokens
            .logs(&request, now, &self.traces, sender.tenant.as_deref());
        self.store(classified, tokens, redactions, &sender)
    }

    fn consume_metrics(
        &self,
        request: ExportMetricsServiceRequest,
        sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        // No redaction pass: only the model, provider, operation, token type
        // and tenant names are stored; every other attribute only enters the
        // series' hash.
        let mut batch = self.tokens.metrics(&request, sender.tenant.as_deref());
        drop(request);
        let exporter = self.exporter.clone();
        Box::pin(async move {
            let written = exporter.write_token_metrics(&batch.points).await?;
            if written.duplicates > 0 {
                batch
                    .not_stored
                    .push((NotStored::Duplicate, written.duplicates, String::new()));
            }
            let m = metrics();
            for (reason, n, _) in &batch.not_stored {
                m.metric_points_not_stored
                    .get_or_create(&ReasonLabels {
                        reason: reason.as_str(),
                    })
                    .inc_by(*n);
            }
            // A resent point is not an error for the client: it was stored before.
            let rejected = batch
                .not_stored
                .iter()
                .filter(|(reason, _, _)| *reason != NotStored::Duplicate)
                .map(|(_, n, _)| n)
                .sum();
            batch
                .not_stored
                .retain(|(reason, _, _)| *reason != NotStored::Duplicate);
            Ok(ConsumeReport {
                rejected,
                message: batch.message(),
                quarantined: Vec::new(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `format!` per byte that `trace_hex` replaced.
    fn trace_hex_before(trace: &TraceId) -> String {
        trace.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn trace_hex_equals_the_formatted_bytes() {
        let mut ids: Vec<TraceId> = vec![[0; 16], [0xff; 16], std::array::from_fn(|i| i as u8)];
        // Every byte value at every position, and a few pseudo-random ids.
        for b in 0..=255u8 {
            ids.push(std::array::from_fn(|i| b.wrapping_add(i as u8 * 17)));
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..64 {
            let mut id = [0u8; 16];
            for byte in &mut id {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            ids.push(id);
        }
        for id in &ids {
            let hex = trace_hex(id);
            assert_eq!(hex, trace_hex_before(id));
            assert_eq!(hex.len(), 32);
        }
    }
}
