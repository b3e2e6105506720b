//! One walk over an OTLP request, for traces and logs alike: resource → scope →
//! record (span or log record), with the attributes at each level.
//!
//! * [`Record`] is the view common to a [`Span`] and a [`LogRecord`]: attributes,
//!   ids, name, time, status.
//! * [`Request`] walks an [`ExportTraceServiceRequest`] or an
//!   [`ExportLogsServiceRequest`]: [`Request::walk`] (read only),
//!   [`Request::walk_mut`] (records writable, resource and scope read only) and
//!   [`Request::walk_levels_mut`] (every level writable, through a [`LevelVisitor`]).
//!
//! The receiver's checks and the processors (redaction, token extraction,
//! classification) are written once against these traits.
//!
//! ```
//! use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
//! use tally_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
//! use tally_model::walk::{Record, Request};
//!
//! let request = ExportTraceServiceRequest {
//!     resource_spans: vec![ResourceSpans {
//!         scope_spans: vec![ScopeSpans {
//!             spans: vec![Span { name: "GET /".into(), ..Default::default() }],
//!             ..Default::default()
//!         }],
//!         ..Default::default()
//!     }],
//! };
//! let mut names = Vec::new();
//! request.walk(|_, _, span| names.push(span.name().to_owned()));
//! assert_eq!(names, ["GET /"]);
//! assert_eq!(request.record_count(), 1);
//! ```

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::Outcome;

/// Severity numbers at or above this (ERROR) mark a log record as a failure.
pub const SEVERITY_ERROR: i32 = 17;

/// Which OTLP signal a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Spans of a `TraceService/Export` request.
    Traces,
    /// Log records of a `LogsService/Export` request.
    Logs,
}

/// Where a record sits in its request: indexes of its resource, scope and record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Index among the request's resources.
    pub resource: usize,
    /// Index among the resource's scopes.
    pub scope: usize,
    /// Index among the scope's records.
    pub record: usize,
}

/// The resource and scope a record sits under.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The resource's attributes (empty without a resource).
    pub resource: &'a [KeyValue],
    /// The instrumentation scope's attributes (empty without a scope).
    pub scope: &'a [KeyValue],
    /// The instrumentation scope's name (empty without a scope).
    pub scope_name: &'a str,
}

impl<'a> Context<'a> {
    fn of(resource: Option<&'a Resource>, scope: Option<&'a InstrumentationScope>) -> Self {
        Context {
            resource: resource.map_or(&[][..], |r| &r.attributes[..]),
            scope: scope.map_or(&[][..], |s| &s.attributes[..]),
            scope_name: scope.map_or("", |s| s.name.as_str()),
        }
    }

    /// The attribute lists a record sees, outermost first: resource, scope, then
    /// the record's own (later lists win).
    pub fn levels<'r>(&self, record: &'r [KeyValue]) -> [&'r [KeyValue]; 3]
    where
        'a: 'r,
    {
        [self.resource, self.scope, record]
    }
}

/// The view common to a span and a log record.
pub trait Record: prost::Message + Sized {
    /// The signal of this kind of record.
    const SIGNAL: Signal;
    /// The record's own attributes.
    fn attributes(&self) -> &[KeyValue];
    /// The record's own attributes, writable.
    fn attributes_mut(&mut self) -> &mut Vec<KeyValue>;
    /// The trace id (empty when absent).
    fn trace_id(&self) -> &[u8];
    /// The span id (empty when absent).
    fn span_id(&self) -> &[u8];
    /// The parent span id (always empty for a log record).
    fn parent_span_id(&self) -> &[u8];
    /// The span's links (none for a log record).
    fn links(&self) -> &[Link];
    /// The span name or the log record's `EventName` (empty when absent).
    fn name(&self) -> &str;
    /// The record's time: a span's start, a log record's time, else its
    /// observed time (0 when absent).
    fn time_unix_nano(&self) -> u64;
    /// A span's end time (`None` for a log record).
    fn end_time_unix_nano(&self) -> Option<u64>;
    /// A span's status message (`None` for a log record, or a span without status).
    fn status_message(&self) -> Option<&str>;
    /// A span's events (none for a log record).
    fn events(&self) -> &[Event];
    /// A span's kind (`Unspecified` for a log record).
    fn kind(&self) -> SpanKind;
    /// What the record's status says: a span's status code (`Error` failure,
    /// `Ok` success), a log record's severity (ERROR and above failure).
    fn status_outcome(&self) -> Outcome;
}

impl Record for Span {
    const SIGNAL: Signal = Signal::Traces;
    fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }
    fn attributes_mut(&mut self) -> &mut Vec<KeyValue> {
        &mut self.attributes
    }
    fn trace_id(&self) -> &[u8] {
        &self.trace_id
    }
    fn span_id(&self) -> &[u8] {
        &self.span_id
    }
    fn parent_span_id(&self) -> &[u8] {
        &self.parent_span_id
    }
    fn links(&self) -> &[Link] {
        &self.links
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn time_unix_nano(&self) -> u64 {
        self.start_time_unix_nano
    }
    fn end_time_unix_nano(&self) -> Option<u64> {
        Some(self.end_time_unix_nano)
    }
    fn status_message(&self) -> Option<&str> {
        self.status.as_ref().map(|s| s.message.as_str())
    }
    fn events(&self) -> &[Event] {
        &self.events
    }
    fn kind(&self) -> SpanKind {
        Span::kind(self)
    }
    fn status_outcome(&self) -> Outcome {
        match self.status.as_ref().map(|s| s.code()) {
            Some(StatusCode::Error) => Outcome::Failure,
            Some(StatusCode::Ok) => Outcome::Success,
            _ => Outcome::Unknown,
        }
    }
}

impl Record for LogRecord {
    const SIGNAL: Signal = Signal::Logs;
    fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }
    fn attributes_mut(&mut self) -> &mut Vec<KeyValue> {
        &mut self.attributes
    }
    fn trace_id(&self) -> &[u8] {
        &self.trace_id
    }
    fn span_id(&self) -> &[u8] {
        &self.span_id
    }
    fn parent_span_id(&self) -> &[u8] {
        &[]
    }
    fn links(&self) -> &[Link] {
        &[]
    }
    fn name(&self) -> &str {
        &self.event_name
    }
    fn time_unix_nano(&self) -> u64 {
        if self.time_unix_nano != 0 {
            self.time_unix_nano
        } else {
            self.observed_time_unix_nano
        }
    }
    fn end_time_unix_nano(&self) -> Option<u64> {
        None
    }
    fn status_message(&self) -> Option<&str> {
        None
    }
    fn events(&self) -> &[Event] {
        &[]
    }
    fn kind(&self) -> SpanKind {
        SpanKind::Unspecified
    }
    fn status_outcome(&self) -> Outcome {
        if self.severity_number >= SEVERITY_ERROR {
            Outcome::Failure
        } else {
            Outcome::Unknown
        }
    }
}

/// Visits every level of a request with write access ([`Request::walk_levels_mut`]).
/// What a resource's visit returns is handed to the visits of its scopes, and
/// what a scope's returns to the visits of its records.
pub trait LevelVisitor<R> {
    /// What a resource's visit hands to its scopes.
    type Resource;
    /// What a scope's visit hands to its records.
    type Scope;
    /// Visits a resource (`None` when the request carries none).
    fn resource(&mut self, resource: Option<&mut Resource>) -> Self::Resource;
    /// Visits an instrumentation scope (`None` when the request carries none).
    fn scope(
        &mut self,
        resource: &Self::Resource,
        scope: Option<&mut InstrumentationScope>,
    ) -> Self::Scope;
    /// Visits a record; `context` holds its resource's and scope's attributes
    /// as their visits left them.
    fn record(&mut self, scope: &Self::Scope, context: Context<'_>, record: &mut R);
}

/// An OTLP export request of spans or log records, walked resource → scope → record.
pub trait Request {
    /// The kind of record the request carries.
    type Record: Record;
    /// The OTLP/JSON names of the three levels' lists (`resourceSpans`,
    /// `scopeSpans`, `spans`), for messages naming a record.
    const JSON_PATH: [&'static str; 3];
    /// How many records the request carries (counted without visiting them).
    fn record_count(&self) -> usize;
    /// Calls `f` with every record, in order, with its position and context.
    fn walk<'a>(&'a self, f: impl FnMut(Position, Context<'a>, &'a Self::Record));
    /// Calls `f` with every record, writable, in order, with its position and
    /// (read-only) context.
    fn walk_mut<'a>(&'a mut self, f: impl FnMut(Position, Context<'a>, &'a mut Self::Record));
    /// Calls `f` with every record in order until it fails, and returns its error.
    fn try_walk<'a, E>(
        &'a self,
        f: impl FnMut(Position, Context<'a>, &'a Self::Record) -> Result<(), E>,
    ) -> Result<(), E>;
    /// Visits every resource, scope and record, writable, in order.
    fn walk_levels_mut<V: LevelVisitor<Self::Record>>(&mut self, visitor: &mut V);
    /// `resourceSpans[0].scopeSpans[1].spans[2]`: where a record sits, in OTLP/JSON spelling.
    fn json_path(at: Position) -> String {
        let [resources, scopes, records] = Self::JSON_PATH;
        format!(
            "{resources}[{}].{scopes}[{}].{records}[{}]",
            at.resource, at.scope, at.record
        )
    }
}

/// Implements [`Request`] for one signal; the two requests differ only in names.
macro_rules! request {
    ($request:ty, $record:ty, $resources:ident, $resource_ty:ident, $scopes:ident, $scope_ty:ident, $records:ident, $json:expr) => {
        impl Request for $request {
            type Record = $record;
            const JSON_PATH: [&'static str; 3] = $json;

            fn record_count(&self) -> usize {
                self.$resources
                    .iter()
                    .flat_map(|r| &r.$scopes)
                    .map(|s| s.$records.len())
                    .sum()
            }

            fn walk<'a>(&'a self, mut f: impl FnMut(Position, Context<'a>, &'a $record)) {
                let _ = self.try_walk(|at, context, record| {
                    f(at, context, record);
                    Ok::<(), std::convert::Infallible>(())
                });
            }

            fn try_walk<'a, E>(
                &'a self,
                mut f: impl FnMut(Position, Context<'a>, &'a $record) -> Result<(), E>,
            ) -> Result<(), E> {
                for (resource, outer) in self.$resources.iter().enumerate() {
                    for (scope, inner) in outer.$scopes.iter().enumerate() {
                        let context = Context::of(outer.resource.as_ref(), inner.scope.as_ref());
                        for (record, item) in inner.$records.iter().enumerate() {
                            let at = Position {
                                resource,
                                scope,
                                record,
                            };
                            f(at, context, item)?;
                        }
                    }
                }
                Ok(())
            }

            fn walk_mut<'a>(
                &'a mut self,
                mut f: impl FnMut(Position, Context<'a>, &'a mut $record),
            ) {
                for (resource, outer) in self.$resources.iter_mut().enumerate() {
                    let $resource_ty {
                        resource: resource_of,
                        $scopes: scopes,
                        ..
                    } = outer;
                    let resource_of: &'a Option<Resource> = resource_of;
                    for (scope, inner) in scopes.iter_mut().enumerate() {
                        let $scope_ty {
                            scope: scope_of,
                            $records: records,
                            ..
                        } = inner;
                        let scope_of: &'a Option<InstrumentationScope> = scope_of;
                        let context = Context::of(resource_of.as_ref(), scope_of.as_ref());
                        for (record, item) in records.iter_mut().enumerate() {
                            let at = Position {
                                resource,
                                scope,
                                record,
                            };
                            f(at, context, item);
                        }
                    }
                }
            }

            fn walk_levels_mut<V: LevelVisitor<$record>>(&mut self, visitor: &mut V) {
                for outer in &mut self.$resources {
                    let resource = visitor.resource(outer.resource.as_mut());
                    for inner in &mut outer.$scopes {
                        let scope = visitor.scope(&resource, inner.scope.as_mut());
                        let context = Context::of(outer.resource.as_ref(), inner.scope.as_ref());
                        for item in &mut inner.$records {
                            visitor.record(&scope, context, item);
                        }
                    }
                }
            }
        }
    };
}

request!(
    ExportTraceServiceRequest,
    Span,
    resource_spans,
    ResourceSpans,
    scope_spans,
    ScopeSpans,
    spans,
    ["resourceSpans", "scopeSpans", "spans"]
);
request!(
    ExportLogsServiceRequest,
    LogRecord,
    resource_logs,
    ResourceLogs,
    scope_logs,
    ScopeLogs,
    log_records,
    ["resourceLogs", "scopeLogs", "logRecords"]
);

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue};

    fn kv(key: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(key.into())),
            }),
            ..Default::default()
        }
    }

    fn logs() -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![
                ResourceLogs {
                    resource: Some(Resource {
                        attributes: vec![kv("r0")],
                        ..Default::default()
                    }),
                    scope_logs: vec![
                        ScopeLogs {
                            scope: Some(InstrumentationScope {
                                name: "s0".into(),
                                attributes: vec![kv("s0")],
                                ..Default::default()
                            }),
                            log_records: vec![LogRecord::default(), LogRecord::default()],
                            ..Default::default()
                        },
                        ScopeLogs {
                            log_records: vec![LogRecord {
                                attributes: vec![kv("own")],
                                ..Default::default()
                            }],
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: vec![LogRecord::default()],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn walks_every_record_with_its_position_and_context() {
        let mut request = logs();
        assert_eq!(request.record_count(), 4);
        let mut seen = Vec::new();
        request.walk(|at, context, record| {
            seen.push((
                ExportLogsServiceRequest::json_path(at),
                context.resource.len(),
                context.scope.len(),
                context.scope_name.to_owned(),
                record.attributes().len(),
            ))
        });
        assert_eq!(
            seen,
            [
                (
                    "resourceLogs[0].scopeLogs[0].logRecords[0]".into(),
                    1,
                    1,
                    "s0".into(),
                    0
                ),
                (
                    "resourceLogs[0].scopeLogs[0].logRecords[1]".into(),
                    1,
                    1,
                    "s0".into(),
                    0
                ),
                (
                    "resourceLogs[0].scopeLogs[1].logRecords[0]".into(),
                    1,
                    0,
                    String::new(),
                    1
                ),
                (
                    "resourceLogs[1].scopeLogs[0].logRecords[0]".into(),
                    0,
                    0,
                    String::new(),
                    0
                ),
            ]
        );
        let mut n = 0;
        request.walk_mut(|_, context, record| {
            record
                .attributes_mut()
                .extend(context.resource.iter().cloned());
            n += 1;
        });
        assert_eq!(n, 4);
        assert_eq!(
            request.resource_logs[0].scope_logs[1].log_records[0]
                .attributes
                .len(),
            2
        );
        let stopped = request.try_walk(|at, _, _| if at.scope == 1 { Err(at) } else { Ok(()) });
        assert_eq!(
            stopped,
            Err(Position {
                resource: 0,
                scope: 1,
                record: 0
            })
        );
    }

    #[test]
    fn level_visitor_sees_every_level_in_order() {
        struct Trail(Vec<String>);
        impl LevelVisitor<LogRecord> for Trail {
            type Resource = usize;
            type Scope = usize;
            fn resource(&mut self, resource: Option<&mut Resource>) -> usize {
                self.0.push(format!("resource {}", resource.is_some()));
                self.0.len()
            }
            fn scope(
                &mut self,
                resource: &usize,
                scope: Option<&mut InstrumentationScope>,
            ) -> usize {
                self.0
                    .push(format!("scope {} under {resource}", scope.is_some()));
                self.0.len()
            }
            fn record(&mut self, scope: &usize, context: Context<'_>, record: &mut LogRecord) {
                record.severity_number = SEVERITY_ERROR;
                self.0
                    .push(format!("record under {scope} ({})", context.scope_name));
            }
        }
        let mut request = logs();
        let mut trail = Trail(Vec::new());
        request.walk_levels_mut(&mut trail);
        assert_eq!(
            trail.0,
            [
                "resource true",
                "scope true under 1",
                "record under 2 (s0)",
                "record under 2 (s0)",
                "scope false under 1",
                "record under 5 ()",
                "resource false",
                "scope false under 7",
                "record under 8 ()",
            ]
        );
        request.walk(|_, _, record| assert_eq!(record.status_outcome(), Outcome::Failure));
    }

    #[test]
    fn span_and_log_views() {
        let span = Span {
            name: "call".into(),
            start_time_unix_nano: 5,
            end_time_unix_nano: 9,
            parent_span_id: vec![1; 8],
            status: Some(opentelemetry_proto::tonic::trace::v1::Status {
                code: StatusCode::Ok as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            (
                span.name(),
                span.time_unix_nano(),
                span.end_time_unix_nano()
            ),
            ("call", 5, Some(9))
        );
        assert_eq!(span.parent_span_id().len(), 8);
        assert_eq!(span.status_outcome(), Outcome::Success);
        let log = LogRecord {
            event_name: "e".into(),
            observed_time_unix_nano: 7,
            severity_number: SEVERITY_ERROR - 1,
            ..Default::default()
        };
        assert_eq!(
            (log.name(), log.time_unix_nano(), log.end_time_unix_nano()),
            ("e", 7, None)
        );
        assert_eq!(log.status_outcome(), Outcome::Unknown);
        assert!(log.parent_span_id().is_empty() && log.links().is_empty());
    }
}
