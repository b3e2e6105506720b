//! Shared pieces of Tally's fuzz targets: an arbitrary attribute tree that converts to
//! OTLP values, and the processing chain `tally` runs on every decoded request (redact →
//! classify → token usage → taxonomy validation → binary `COPY` rows), without a database.
//!
//! Run the targets with `.ci/fuzz` (see `docs/operations.md`).

pub mod reference_json;

use std::sync::LazyLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::BytesMut;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue, KeyValueList};
use tally_config::{RedactConfig, Taxonomy, ValidateMode};
use tally_exporters::postgres::copy;
use tally_processors::attribution::TraceCache;
use tally_processors::redact::Redactor;
use tally_processors::tokens::TokenProcessor;
use tally_processors::validate::Validator;

/// Deepest nesting built from fuzz input: about what the decoders let through
/// (prost stops at 100 messages, serde_json at 128 containers).
pub const MAX_DEPTH: usize = 40;

/// Attribute keys Tally gives a meaning to, so the fuzzer reaches those paths.
pub const KEYS: &[&str] = &[
    "activity.action",
    "event.name",
    "enduser.id",
    "user.id",
    "tenant.id",
    "company.id",
    "organization.id",
    "session.id",
    "activity.resource.type",
    "activity.resource.id",
    "activity.outcome",
    "http.response.status_code",
    "service.name",
    "service.version",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.system",
    "gen_ai.provider.name",
    "gen_ai.operation.name",
    "gen_ai.prompt",
    "gen_ai.completion",
    "client.address",
    "file.path",
    "http.request.header.authorization",
    "password",
    "user.email",
    "message",
    "content",
];

/// An attribute key: one Tally knows, or any text.
#[derive(Debug, Arbitrary)]
pub enum Key {
    Known(u8),
    Other(String),
}

impl Key {
    fn text(&self) -> String {
        match self {
            Key::Known(i) => KEYS[usize::from(*i) % KEYS.len()].to_string(),
            Key::Other(s) => s.clone(),
        }
    }
}

/// An OTLP `AnyValue` (or its absence), arbitrarily nested.
#[derive(Debug, Arbitrary)]
pub enum Value {
    Absent,
    Str(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    Kvlist(Vec<Attr>),
}

/// One attribute.
#[derive(Debug, Arbitrary)]
pub struct Attr {
    pub key: Key,
    pub value: Value,
}

impl Value {
    /// The OTLP value; below [`MAX_DEPTH`] lists and maps become empty.
    pub fn to_otlp(&self, depth: usize) -> Option<AnyValue> {
        use any_value::Value as V;
        let value = match self {
            Value::Absent => return None,
            Value::Str(s) => V::StringValue(s.clone()),
            Value::Bool(b) => V::BoolValue(*b),
            Value::Int(i) => V::IntValue(*i),
            Value::Double(d) => V::DoubleValue(*d),
            Value::Bytes(b) => V::BytesValue(b.clone()),
            Value::Array(items) => V::ArrayValue(any_value_array(items, depth)),
            Value::Kvlist(attrs) => V::KvlistValue(KeyValueList {
                values: if depth < MAX_DEPTH {
                    attributes(attrs, depth + 1)
                } else {
                    Vec::new()
                },
            }),
        };
        Some(AnyValue { value: Some(value) })
    }
}

fn any_value_array(
    items: &[Value],
    depth: usize,
) -> opentelemetry_proto::tonic::common::v1::ArrayValue {
    opentelemetry_proto::tonic::common::v1::ArrayValue {
        values: if depth < MAX_DEPTH {
            items
                .iter()
                .map(|v| v.to_otlp(depth + 1).unwrap_or_default())
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// OTLP attributes of `attrs` at nesting `depth`.
pub fn attributes(attrs: &[Attr], depth: usize) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|a| KeyValue {
            key: a.key.text(),
            value: a.value.to_otlp(depth),
            ..Default::default()
        })
        .collect()
}

/// A fixed time for records without one (the chain needs a "received at").
fn received_at() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap_or_default()
}

/// The processors as `tally` wires them, with the built-in defaults.
pub struct Chain {
    redactor: Redactor,
    tokens: TokenProcessor,
    traces: TraceCache,
    validator: Validator,
}

/// One chain for all runs of a target.
pub static CHAIN: LazyLock<Chain> = LazyLock::new(Chain::new);

/// An HMAC key for the redactor (any 32 bytes will do here).
pub const HMAC_KEY: &[u8] = b"fuzzing-key-0123456789abcdef0123";

impl Chain {
    fn new() -> Chain {
        let redactor = match Redactor::new(&RedactConfig::default(), HMAC_KEY) {
            Ok(redactor) => redactor,
            Err(e) => panic!("the default redaction config is valid: {e}"),
        };
        Chain {
            redactor,
            tokens: TokenProcessor::with_defaults(),
            traces: TraceCache::new(Duration::from_secs(60), 10_000),
            validator: Validator::new(tally_config::TaxonomyHandle::fixed(
                Taxonomy::builtin(),
                ValidateMode::Strict,
            )),
        }
    }

    /// What the pipeline does with a checked `TraceService/Export` request.
    pub fn traces(&self, mut request: ExportTraceServiceRequest) {
        self.redactor.redact_traces(&mut request);
        let classified = tally_processors::classify_traces(&request, received_at());
        let tokens = self.tokens.traces(&request, received_at(), &self.traces);
        self.store(classified, tokens);
    }

    /// What the pipeline does with a checked `LogsService/Export` request.
    pub fn logs(&self, mut request: ExportLogsServiceRequest) {
        self.redactor.redact_logs(&mut request);
        let classified = tally_processors::classify_logs(&request, received_at());
        let tokens = self.tokens.logs(&request, received_at(), &self.traces);
        self.store(classified, tokens);
    }

    /// Validation and the rows the exporter would `COPY`.
    fn store(
        &self,
        classified: tally_processors::Classified,
        tokens: tally_processors::tokens::TokenBatch,
    ) {
        let batch = self.validator.validate_batch(classified.events);
        let mut out = BytesMut::new();
        copy::begin(&mut out);
        for checked in &batch.stored {
            if let Err(e) = copy::activity_row(&mut out, &checked.event) {
                panic!("activity row not encodable: {e}");
            }
        }
        for row in &tokens.rows {
            if let Err(e) = copy::token_row(&mut out, row, None) {
                panic!("token row not encodable: {e}");
            }
        }
        copy::finish(&mut out);
        for quarantined in &batch.quarantined {
            // The rejected_events row's jsonb.
            let record = quarantined.record_json();
            assert!(serde_json::to_vec(&record).is_ok());
        }
    }
}
