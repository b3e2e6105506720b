//! Classification: which OTLP spans and log records are user activity, and what
//! their identity fields are.
//!
//! A record is an activity event when it carries an action: the `activity.action`
//! attribute, the log record's `EventName` field, or the `event.name` attribute (in
//! that order). Attributes are flattened resource → scope → record, the record
//! winning; for the user and tenant, spelled several ways, the record's own value wins
//! over its scope's and resource's whatever the spelling. Records without an action are
//! counted in [`Classified::without_action`] and not stored; an action of any shape goes
//! on to the validator, which quarantines a malformed one. See `docs/schema.md` for the
//! full mapping.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::Event as SpanEvent;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use serde_json::Map;
use tally_model::walk::{Context, Record, Request, Signal};
use tally_model::{ids, ActivityEvent, Outcome};

use crate::otlp_value::{as_i64, as_text, hex_lower, into_json, to_json};

/// The result of classifying one export request.
#[derive(Debug, Default)]
pub struct Classified {
    /// Records that are activity events, ready to store.
    pub events: Vec<ActivityEvent>,
    /// Records that carried no action (counted, not stored).
    pub without_action: u64,
}

/// Identity fields found among a record's attributes. Each slot holds the value
/// of one attribute key; aliases resolve in [`Identity::finish`].
#[derive(Default)]
struct Identity<'a> {
    action: Option<&'a AnyValue>,
    event_name: Option<&'a AnyValue>,
    enduser_id: Option<&'a AnyValue>,
    user_id: Option<&'a AnyValue>,
    tenant_id: Option<&'a AnyValue>,
    company_id: Option<&'a AnyValue>,
    organization_id: Option<&'a AnyValue>,
    session_id: Option<&'a AnyValue>,
    resource_type: Option<&'a AnyValue>,
    resource_id: Option<&'a AnyValue>,
    outcome: Option<&'a AnyValue>,
    http_status: Option<&'a AnyValue>,
    service: Option<&'a AnyValue>,
    error_type: Option<&'a AnyValue>,
    exception_type: Option<&'a AnyValue>,
    exception_message: Option<&'a AnyValue>,
    /// The level (0 resource, 1 scope, 2 record) each alias slot was last set from,
    /// indexed by [`Alias`].
    alias_levels: [u8; 5],
}

/// The identity slots that have several spellings, for [`Identity::alias_levels`].
#[derive(Clone, Copy)]
enum Alias {
    Enduser,
    User,
    Tenant,
    Company,
    Organization,
}

/// The level of the record's own attributes, the innermost.
const RECORD_LEVEL: u8 = 2;

/// Where an attribute goes: an identity slot (`Some(slot)`, also kept in the
/// map when `keep`), or only the JSON map (`None`). Slots of spelled-several-ways
/// fields also name their [`Alias`].
fn slot<'s, 'a>(
    identity: &'s mut Identity<'a>,
    key: &str,
) -> (Option<&'s mut Option<&'a AnyValue>>, bool, Option<Alias>) {
    let (slot, alias) = match key {
        "activity.action" => (&mut identity.action, None),
        "event.name" => (&mut identity.event_name, None),
        "enduser.id" => (&mut identity.enduser_id, Some(Alias::Enduser)),
        "user.id" => (&mut identity.user_id, Some(Alias::User)),
        "tenant.id" => (&mut identity.tenant_id, Some(Alias::Tenant)),
        "company.id" => (&mut identity.company_id, Some(Alias::Company)),
        "organization.id" => (&mut identity.organization_id, Some(Alias::Organization)),
        "session.id" => (&mut identity.session_id, None),
        "activity.resource.type" => (&mut identity.resource_type, None),
        "activity.resource.id" => (&mut identity.resource_id, None),
        "activity.outcome" => (&mut identity.outcome, None),
        "service.name" => (&mut identity.service, None),
        "http.response.status_code" | "http.status_code" => {
            return (Some(&mut identity.http_status), true, None);
        }
        // Error details fill their columns and stay attributes (readers of
        // `attributes` keep working).
        "error.type" => return (Some(&mut identity.error_type), true, None),
        "exception.type" => return (Some(&mut identity.exception_type), true, None),
        "exception.message" => return (Some(&mut identity.exception_message), true, None),
        _ => return (None, true, None),
    };
    (Some(slot), false, alias)
}

/// Fills the slot of `kv` (if it has one) from `level`; whether `kv` also goes to the map.
fn assign<'a>(identity: &mut Identity<'a>, kv: &'a KeyValue, level: u8) -> bool {
    let (slot, keep, alias) = slot(identity, &kv.key);
    if let Some(slot) = slot {
        *slot = kv.value.as_ref();
        if let Some(alias) = alias {
            identity.alias_levels[alias as usize] = level;
        }
    }
    keep
}

/// Splits flattened attributes into identity slots and the remaining JSON map.
/// Later lists win over earlier ones (resource, then scope, then record).
fn collect<'a>(lists: [&'a [KeyValue]; 3]) -> (Identity<'a>, Map<String, serde_json::Value>) {
    let mut identity = Identity::default();
    let mut rest = Map::new();
    for (level, list) in (0u8..).zip(lists) {
        for kv in list {
            if assign(&mut identity, kv, level) {
                rest.insert(kv.key.clone(), to_json(kv.value.as_ref()));
            }
        }
    }
    (identity, rest)
}

/// [`collect`] that moves the record's own attributes that go only to the
/// map out of `record` (their keys and values are left empty) instead of
/// copying them; resource and scope attributes, shared by many records, are
/// copied.
fn collect_taking<'a>(
    shared: [&'a [KeyValue]; 2],
    record: &'a mut [KeyValue],
) -> (Identity<'a>, Map<String, serde_json::Value>) {
    let (mut identity, mut rest) = collect([shared[0], shared[1], &[]]);
    for kv in record.iter_mut() {
        let (slot, _, _) = slot(&mut identity, &kv.key);
        if slot.is_some() {
            let kv: &'a KeyValue = kv;
            if assign(&mut identity, kv, RECORD_LEVEL) {
                rest.insert(kv.key.clone(), to_json(kv.value.as_ref()));
            }
        } else {
            let value = kv.value.take();
            rest.insert(std::mem::take(&mut kv.key), into_json(value));
        }
    }
    (identity, rest)
}

/// Picks the value of the innermost level (record over scope over resource) among
/// the aliases that have one, the first alias within a level; keeps the others in
/// `rest` when they differ.
fn pick(
    aliases: &[(&str, Option<&AnyValue>, u8)],
    rest: &mut Map<String, serde_json::Value>,
) -> Option<String> {
    let mut best: Option<(usize, u8, String)> = None;
    for (i, (_, value, level)) in aliases.iter().enumerate() {
        if best.as_ref().is_some_and(|(_, b, _)| b >= level) {
            continue;
        }
        if let Some(text) = as_text(*value) {
            best = Some((i, *level, text));
        }
    }
    let (chosen_at, _, chosen) = best?;
    for (i, (key, value, _)) in aliases.iter().enumerate() {
        if i == chosen_at {
            continue;
        }
        if let Some(text) = as_text(*value).filter(|t| *t != chosen) {
            rest.insert((*key).to_string(), serde_json::Value::String(text));
        }
    }
    Some(chosen)
}

/// The outcome, from the first that says: `activity.outcome`, an error status, the
/// HTTP status, the span status (`fallback`), and last the action's own name
/// (`auth.login.success`, `payment.capture.failure`).
fn outcome_from(
    explicit: Option<&AnyValue>,
    http_status: Option<&AnyValue>,
    fallback: Outcome,
    action: &str,
) -> Outcome {
    if let Some(outcome) = as_text(explicit).and_then(|t| Outcome::parse(&t.to_ascii_lowercase())) {
        return outcome;
    }
    if fallback == Outcome::Failure {
        return Outcome::Failure;
    }
    match as_i64(http_status) {
        Some(status) if status >= 400 => Outcome::Failure,
        Some(status) if status > 0 => Outcome::Success,
        _ if fallback != Outcome::Unknown => fallback,
        _ => outcome_named_by(action),
    }
}

/// `success` or `failure` when the action's last segment says so, else `unknown`.
fn outcome_named_by(action: &str) -> Outcome {
    match action.rsplit('.').next() {
        Some(last) if last.eq_ignore_ascii_case("success") => Outcome::Success,
        Some(last) if last.eq_ignore_ascii_case("failure") => Outcome::Failure,
        _ => Outcome::Unknown,
    }
}

fn timestamp(nanos: u64, fallback: DateTime<Utc>) -> DateTime<Utc> {
    if nanos == 0 {
        return fallback;
    }
    let secs = (nanos / 1_000_000_000) as i64;
    let sub = (nanos % 1_000_000_000) as u32;
    DateTime::from_timestamp(secs, sub).unwrap_or(fallback)
}

fn hex_id(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty() && bytes.iter().any(|b| *b != 0)).then(|| hex_lower(bytes))
}

/// Builds the event once the action is known to be valid; shared by spans and logs.
struct Draft<'a> {
    identity: Identity<'a>,
    attributes: Map<String, serde_json::Value>,
    action: String,
    ts: DateTime<Utc>,
    status_outcome: Outcome,
    trace_id: &'a [u8],
    span_id: &'a [u8],
    /// The span name or the log record's event name (`None` when empty).
    name: Option<String>,
    duration_ms: Option<f64>,
    /// The span status message (wins over `exception.message`).
    status_message: Option<&'a str>,
    /// The last `exception` span event, when the span has one.
    exception: Option<&'a [KeyValue]>,
}

/// The value of `key` in an attribute list.
fn attribute<'a>(list: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    list.iter()
        .rev()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

impl Draft<'_> {
    fn finish(self, id: uuid::Uuid) -> ActivityEvent {
        let Draft {
            identity,
            mut attributes,
            action,
            ts,
            status_outcome,
            trace_id,
            span_id,
            name,
            duration_ms,
            status_message,
            exception,
        } = self;
        let from_exception = |key: &str| exception.and_then(|list| as_text(attribute(list, key)));
        let error_type = as_text(identity.error_type)
            .or_else(|| as_text(identity.exception_type))
            .or_else(|| from_exception("exception.type"));
        let error_message = status_message
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .or_else(|| as_text(identity.exception_message))
            .or_else(|| from_exception("exception.message"));
        // `event.name` that is not the action (another field won) stays an attribute.
        if let Some(name) = as_text(identity.event_name).filter(|name| name.trim() != action) {
            attributes.insert("event.name".into(), serde_json::Value::String(name));
        }
        let level = |alias: Alias| identity.alias_levels[alias as usize];
        let user_id = pick(
            &[
                ("enduser.id", identity.enduser_id, level(Alias::Enduser)),
                ("user.id", identity.user_id, level(Alias::User)),
            ],
            &mut attributes,
        );
        let tenant_id = pick(
            &[
                ("tenant.id", identity.tenant_id, level(Alias::Tenant)),
                ("company.id", identity.company_id, level(Alias::Company)),
                (
                    "organization.id",
                    identity.organization_id,
                    level(Alias::Organization),
                ),
            ],
            &mut attributes,
        );
        let outcome = outcome_from(
            identity.outcome,
            identity.http_status,
            status_outcome,
            &action,
        );
        ActivityEvent {
            id,
            ts,
            tenant_id,
            user_id,
            session_id: as_text(identity.session_id),
            action,
            outcome,
            resource_type: as_text(identity.resource_type),
            resource_id: as_text(identity.resource_id),
            service: as_text(identity.service),
            trace_id: hex_id(trace_id),
            span_id: hex_id(span_id),
            attributes,
            duration_ms,
            name,
            error_type,
            error_message,
            taxonomy_valid: None,
            taxonomy_reason: None,
        }
    }
}

/// Classifies the spans of a `TraceService/Export` request.
///
/// `received_at` stands in for a missing start time.
pub fn classify_traces(
    request: &ExportTraceServiceRequest,
    received_at: DateTime<Utc>,
) -> Classified {
    classify(request, received_at)
}

/// Classifies the log records of a `LogsService/Export` request.
///
/// The event time is the record's time, else its observed time, else `received_at`.
pub fn classify_logs(request: &ExportLogsServiceRequest, received_at: DateTime<Utc>) -> Classified {
    classify(request, received_at)
}

/// Classifies every record of a request (one [`Classifier`] over the shared walk).
fn classify<Q: Request>(request: &Q, received_at: DateTime<Utc>) -> Classified {
    let mut classifier = Classifier::new(received_at);
    request.walk(|_, context, record| classifier.record(context, record));
    classifier.finish()
}

/// [`classify_traces`] that moves the spans' own attribute keys and values
/// and names into the events instead of copying them: those attributes and
/// the span names are left empty in `request` (identity attributes and
/// resource and scope attributes stay).
/// For a caller done with the request's attributes (the pipeline runs token
/// extraction first). Gives the same events as [`classify_traces`].
pub fn classify_traces_taking(
    request: &mut ExportTraceServiceRequest,
    received_at: DateTime<Utc>,
) -> Classified {
    let mut classifier = Classifier::new(received_at);
    request.walk_mut(|_, context, span| classifier.span_taking(context, span));
    classifier.finish()
}

/// Classifies records one at a time, for a walk that does other work on each
/// record too (a fused pass; see `docs/performance.md` for why the pipeline has none yet).
#[derive(Debug)]
pub struct Classifier {
    out: Classified,
    received_at: DateTime<Utc>,
    /// A log record's encoding, for its id (the allocation is kept).
    encoded: Vec<u8>,
}

impl Classifier {
    /// A classifier for one request; `received_at` stands in for a missing time.
    pub fn new(received_at: DateTime<Utc>) -> Self {
        Classifier {
            out: Classified::default(),
            received_at,
            encoded: Vec::new(),
        }
    }

    /// Classifies one span or log record under its resource and scope.
    pub fn record<R: Record>(&mut self, context: Context<'_>, record: &R) {
        let (identity, attributes) = collect(context.levels(record.attributes()));
        let facts = Facts {
            signal: R::SIGNAL,
            trace_id: record.trace_id(),
            span_id: record.span_id(),
            status_outcome: record.status_outcome(),
            time: record.time_unix_nano(),
            end: record.end_time_unix_nano(),
            name: Cow::Borrowed(record.name()),
            status_message: record.status_message(),
            events: record.events(),
        };
        let encoded = &mut self.encoded;
        add_event(
            &mut self.out,
            identity,
            attributes,
            facts,
            self.received_at,
            |identity, attributes| match R::SIGNAL {
                Signal::Traces => ids::span_event_id(record.trace_id(), record.span_id()),
                Signal::Logs => log_event_id(record, identity, attributes, encoded),
            },
        );
    }

    /// [`Classifier::record`] for a span the caller is done with: its own
    /// attributes and name are moved into the event (see [`classify_traces_taking`]).
    pub fn span_taking(&mut self, context: Context<'_>, span: &mut Span) {
        let Span {
            attributes,
            trace_id,
            span_id,
            status,
            start_time_unix_nano,
            end_time_unix_nano,
            name,
            events,
            ..
        } = span;
        let (identity, attributes) = collect_taking([context.resource, context.scope], attributes);
        let facts = Facts {
            signal: Signal::Traces,
            trace_id,
            span_id,
            status_outcome: span_status_outcome(status.as_ref()),
            time: *start_time_unix_nano,
            end: Some(*end_time_unix_nano),
            name: Cow::Owned(std::mem::take(name)),
            status_message: status.as_ref().map(|s| s.message.as_str()),
            events,
        };
        add_event(
            &mut self.out,
            identity,
            attributes,
            facts,
            self.received_at,
            |_, _| ids::span_event_id(trace_id, span_id),
        );
    }

    /// The events and the count of records without action.
    pub fn finish(self) -> Classified {
        self.out
    }
}

/// What a span's status code says (as [`Record::status_outcome`]).
fn span_status_outcome(status: Option<&Status>) -> Outcome {
    match status.map(|s| s.code()) {
        Some(StatusCode::Error) => Outcome::Failure,
        Some(StatusCode::Ok) => Outcome::Success,
        _ => Outcome::Unknown,
    }
}

/// The id of a log record's event: its own `tally.event.id` (then taken out
/// of the attributes), else a hash of its service and encoding.
fn log_event_id<R: Record>(
    record: &R,
    identity: &Identity<'_>,
    attributes: &mut Map<String, serde_json::Value>,
    encoded: &mut Vec<u8>,
) -> uuid::Uuid {
    match explicit_event_id(record.attributes()) {
        Some(id) => {
            attributes.remove(ids::EVENT_ID_ATTRIBUTE);
            id
        }
        None => {
            let service = as_text(identity.service).unwrap_or_default();
            encoded.clear();
            // Encoding into a Vec cannot fail: it grows as needed.
            let _ = record.encode(encoded);
            ids::log_event_id(&service, encoded)
        }
    }
}

/// What the event of a record needs besides its attributes.
struct Facts<'a> {
    signal: Signal,
    trace_id: &'a [u8],
    span_id: &'a [u8],
    status_outcome: Outcome,
    /// A span's start, a log record's time (else its observed time).
    time: u64,
    /// A span's end.
    end: Option<u64>,
    /// The span name, or the log record's `EventName` field.
    name: Cow<'a, str>,
    status_message: Option<&'a str>,
    events: &'a [SpanEvent],
}

/// The OpenTelemetry name of the span event that records an exception.
const EXCEPTION_EVENT: &str = "exception";

/// End − start in milliseconds, when the span has both and ends after it starts.
fn span_duration_ms(start: u64, end: u64) -> Option<f64> {
    if start == 0 || end == 0 || end < start {
        return None;
    }
    // Nanoseconds to milliseconds; a span of any real length is exact in f64
    // to well below a microsecond.
    Some((end - start) as f64 / 1_000_000.0)
}

/// Adds the event of one record (or counts it as without action); `id` gives
/// its id once it is known to be an event.
fn add_event<'a>(
    out: &mut Classified,
    identity: Identity<'a>,
    mut attributes: Map<String, serde_json::Value>,
    record: Facts<'a>,
    received_at: DateTime<Utc>,
    id: impl FnOnce(&Identity<'a>, &mut Map<String, serde_json::Value>) -> uuid::Uuid,
) {
    let field_name = (!record.name.is_empty()).then_some(record.name);
    // A log record's `EventName` field names its action before `event.name`;
    // a span's name never does.
    let (action, name) = match record.signal {
        Signal::Traces => (
            as_text(identity.action).or_else(|| as_text(identity.event_name)),
            field_name.map(Cow::into_owned),
        ),
        Signal::Logs => {
            let field_name = field_name.map(Cow::into_owned);
            (
                as_text(identity.action)
                    .or_else(|| field_name.clone())
                    .or_else(|| as_text(identity.event_name)),
                field_name.or_else(|| as_text(identity.event_name)),
            )
        }
    };
    let Some(action) = action else {
        out.without_action += 1;
        return;
    };
    // Whatever its shape (too long, control characters …), the action goes on: the
    // validator quarantines a malformed one to `rejected_events` (`malformed_action`).
    let action = action.trim().to_string();
    let exception = record
        .events
        .iter()
        .rev()
        .find(|event| event.name == EXCEPTION_EVENT)
        .map(|event| &event.attributes[..]);
    let id = id(&identity, &mut attributes);
    let draft = Draft {
        identity,
        attributes,
        action,
        ts: timestamp(record.time, received_at),
        status_outcome: record.status_outcome,
        trace_id: record.trace_id,
        span_id: record.span_id,
        name,
        duration_ms: record
            .end
            .and_then(|end| span_duration_ms(record.time, end)),
        status_message: record.status_message,
        exception,
    };
    out.events.push(draft.finish(id));
}

/// The id a log record's own `tally.event.id` attribute sets, if valid
/// ([`ids::EVENT_ID_ATTRIBUTE`]).
pub(crate) fn explicit_event_id(record_attributes: &[KeyValue]) -> Option<uuid::Uuid> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    ids::explicit_event_id(record_attributes.iter().filter_map(|kv| {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(text)) => Some((kv.key.as_str(), text.as_str())),
            _ => None,
        }
    }))
}

#[cfg(test)]
mod tests;
