//! REST ingest, `POST /api/v1/events` on the OTLP/HTTP port, for producers
//! without an OpenTelemetry SDK (scripts, batch jobs, browsers).
//!
//! The body is one JSON object, a JSON array of objects (`application/json`,
//! or `text/plain` as `navigator.sendBeacon` sends it) or one object per line
//! (`application/x-ndjson`). Each item is checked on its own: a malformed one
//! is rejected by its index and the others go on. Accepted items become OTLP
//! log records carrying the attributes the classifier reads (`activity.action`,
//! `user.id`, `gen_ai.usage.*`, …) and their id in `tally.event.id`, and take
//! the OTLP path from there (redaction, taxonomy, token pricing, attribution,
//! tenant binding, commit). The answer, `202`, comes after the commit:
//! `{"accepted": N, "rejected": [{"index": i, "reason": "…"}]}`.
//!
//! Browsers: a key's allowed origins answer CORS preflights, a request with
//! an `Origin` header must present a key listing it, a key's action allow-list
//! rejects other actions by index, and `user_id` from a browser key is marked
//! `tally.user_id.asserted_by: client`. See `docs/rest-ingest.md`.
//!
//! Over 600 lines: one route read top to bottom: body formats, per-item checks, conversion to OTLP and the per-key rate limiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD,
    CONTENT_TYPE, ORIGIN, RETRY_AFTER, VARY,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use serde_json::{json, Map, Value};
use tally_model::ids::{rest_event_id, token_event_id, EVENT_ID_ATTRIBUTE};
use tally_model::pipeline::{ConsumeError, Sender};
use uuid::Uuid;

use crate::auth::{Denied, KeyPolicy};
use crate::error::{malformed, retry_after_secs, shorten, Malformed, RequestError};
use crate::http::{receive_body, request_headers, AppState};
use crate::limits::decode_body;
use crate::telemetry::{count_records, observe_duration, SignalKind, Transport};

/// The route.
pub(crate) const PATH: &str = "/api/v1/events";
/// The attribute marking a `user_id` a browser asserted.
pub(crate) const ASSERTED_BY: &str = "tally.user_id.asserted_by";
/// How long a browser may cache a preflight answer, seconds.
const PREFLIGHT_MAX_AGE: &str = "600";
/// The query parameter carrying a key where no header can (`sendBeacon`).
const KEY_PARAMETER: &str = "api_key";

/// The body formats accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    /// A JSON object or array (`application/json`, `text/plain`).
    Json,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, RequestError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Err(RequestError::UnsupportedMediaType(
            "missing Content-Type: expected application/json, text/plain \
                    or application/x-ndjson"
                .into(),
        ));
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let media = text.split(';').next().unwrap_or_default().trim();
    if media.eq_ignore_ascii_case("application/json") || media.eq_ignore_ascii_case("text/plain") {
        Ok(BodyFormat::Json)
    } else if media.eq_ignore_ascii_case("application/x-ndjson")
        || media.eq_ignore_ascii_case("application/ndjson")
        || media.eq_ignore_ascii_case("application/jsonl")
    {
        Ok(BodyFormat::Ndjson)
    } else {
        Err(RequestError::UnsupportedMediaType(format!(
            "unsupported Content-Type {text:?}: expected application/json, text/plain \
             or application/x-ndjson"
        )))
    }
}

/// `{"error": {"code", "message"}}` with `status` (and CORS headers for `origin`).
fn error(status: StatusCode, code: &str, message: &str, origin: Option<&HeaderValue>) -> Response {
    let body = json!({ "error": { "code": code, "message": message } }).to_string();
    let mut response = (status, [(CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(origin) = origin {
        allow_origin(response.headers_mut(), origin);
    }
    response
}

fn allow_origin(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(VARY, HeaderValue::from_static("Origin"));
    // A page may read how long to wait after a 429 / 503.
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after"),
    );
}

fn request_error(failure: &RequestError, origin: Option<&HeaderValue>) -> Response {
    let (status, code) = match failure {
        RequestError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        RequestError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        RequestError::UnsupportedMediaType(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        }
        RequestError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        RequestError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        RequestError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
        RequestError::Busy(_) | RequestError::Consume(ConsumeError::Overloaded { .. }) => {
            (StatusCode::TOO_MANY_REQUESTS, "overloaded")
        }
        RequestError::Consume(ConsumeError::Unavailable { .. }) => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        RequestError::Consume(ConsumeError::Invalid(_)) => {
            (StatusCode::BAD_REQUEST, "invalid_request")
        }
    };
    let mut response = error(status, code, &failure.message(), origin);
    if matches!(failure, RequestError::Unauthenticated(_)) {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    if let Some(delay) = failure.retry_after() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(delay)));
    }
    response
}

/// `OPTIONS /api/v1/events`: a CORS preflight, answered for an origin some
/// ingest key lists.
pub(crate) async fn preflight(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(origin) = headers.get(ORIGIN).cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a CORS preflight needs an Origin header",
            None,
        );
    };
    let method_ok = headers
        .get(ACCESS_CONTROL_REQUEST_METHOD)
        .is_none_or(|m| m.as_bytes().eq_ignore_ascii_case(b"POST"));
    let allowed = match origin.to_str() {
        Ok(text) if method_ok => state.auth.origin_allowed(text).await,
        _ => Ok(false),
    };
    match allowed {
        Ok(true) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let h = response.headers_mut();
            allow_origin(h, &origin);
            h.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST, OPTIONS"),
            );
            h.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(
                    "authorization, content-type, content-encoding, x-api-key",
                ),
            );
            h.insert(
                ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(PREFLIGHT_MAX_AGE),
            );
            response
        }
        Ok(false) => error(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "no ingest key allows this origin (tally apikey create --scope ingest --origin …)",
            None,
        ),
        Err(reason) => {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &format!("cannot check the origin now: {reason}"),
                None,
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// The key from `?api_key=` as an `X-API-Key` header, when no header carries one.
fn key_from_query(headers: &mut HeaderMap, query: Option<&str>) {
    if headers.contains_key("x-api-key") || headers.contains_key("authorization") {
        return;
    }
    let Some(query) = query else { return };
    for pair in query.split('&') {
        if let Some(value) = pair
            .strip_prefix(KEY_PARAMETER)
            .and_then(|r| r.strip_prefix('='))
        {
            // Keys are `tally_` and hex: nothing to percent-decode.
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert("x-api-key", value);
            }
            return;
        }
    }
}

/// `POST /api/v1/events`.
pub(crate) async fn ingest(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let origin = request.headers().get(ORIGIN).cloned();
    let format = match body_format(request.headers()) {
        Ok(format) => format,
        Err(error) => return request_error(&error, None),
    };
    let mut auth_headers = request.headers().clone();
    key_from_query(&mut auth_headers, request.uri().query());
    let (sender, policy) = match state.auth.check_with_policy(&auth_headers).await {
        Ok(granted) => granted,
        Err(denied) => {
            crate::http::discard(request.into_body().into_data_stream(), state.limit).await;
            let error = match denied {
                Denied::Unauthenticated(message) => RequestError::Unauthenticated(message),
                Denied::Unavailable(message) => RequestError::Consume(ConsumeError::Unavailable {
                    reason: message,
                    retry_after: crate::budget::BUSY_RETRY_AFTER,
                }),
            };
            return request_error(&error, None);
        }
    };
    // A request from a page must present a key that lists the page's origin.
    let cors_origin = match &origin {
        None => None,
        Some(value) => {
            if value.to_str().is_ok_and(|o| policy.allows_origin(o)) {
                Some(value.clone())
            } else {
                crate::http::discard(request.into_body().into_data_stream(), state.limit).await;
                count_refusal("origin");
                return error(
                    StatusCode::FORBIDDEN,
                    "origin_not_allowed",
                    "the API key does not allow this origin \
                     (tally apikey create --scope ingest --origin …)",
                    None,
                );
            }
        }
    };
    if let Err(wait) = state.events_limiter.admit(sender.key_id) {
        crate::http::discard(request.into_body().into_data_stream(), state.limit).await;
        count_refusal("rate_limited");
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this API key sent more events than receivers.otlp.http.events_rate_limit allows",
            cors_origin.as_ref(),
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
        return response;
    }
    let browser = cors_origin.is_some() || !policy.allowed_origins.is_empty();
    let response = match handle(&state, format, request, &sender, &policy, browser).await {
        Ok(answer) => {
            let mut response = (
                StatusCode::ACCEPTED,
                [(CONTENT_TYPE, "application/json")],
                answer.to_string(),
            )
                .into_response();
            if let Some(origin) = &cors_origin {
                allow_origin(response.headers_mut(), origin);
            }
            response
        }
        Err(e) => request_error(&e, cors_origin.as_ref()),
    };
    observe_duration(Transport::Http, started);
    response
}

/// Counts a REST request refused for its key's restrictions (`origin`,
/// `rate_limited`) in `tally_ingest_auth_failures_total`.
fn count_refusal(reason: &'static str) {
    crate::telemetry::count_auth_failure(reason);
}

async fn handle(
    state: &AppState,
    format: BodyFormat,
    request: Request,
    sender: &Sender,
    policy: &KeyPolicy,
    browser: bool,
) -> Result<Value, RequestError> {
    let headers = request_headers(&request);
    let encoding = headers.encoding?;
    let limit = state.limit;
    let (body, mut charge) =
        receive_body(state, request.into_body(), headers.content_length).await?;
    let body = decode_body(encoding, body, limit, &mut charge)?;
    charge.ensure_decoded(body.len(), crate::estimate::json(&body))?;
    let now = Utc::now();
    let parsed = parse_body(format, &body).map_err(|e| RequestError::Invalid(shorten(e.0)))?;
    drop(body);
    let total = parsed.len();
    state.events_limiter.charge(sender.key_id, total as u64);
    let mut rejected: Vec<(usize, String)> = Vec::new();
    let mut records = Vec::with_capacity(total);
    let mut ids: HashMap<Uuid, usize> = HashMap::with_capacity(total * 2);
    let scope = sender.tenant.as_deref().unwrap_or("");
    for (index, item) in parsed.into_iter().enumerate() {
        let item = match item.and_then(|value| Item::parse(value, now, scope)) {
            Ok(item) => item,
            Err(reason) => {
                rejected.push((index, shorten(reason.0)));
                continue;
            }
        };
        if !policy.allows_action(&item.action) {
            rejected.push((
                index,
                format!(
                    "action_not_allowed: the API key may not write the action {:?}",
                    item.action
                ),
            ));
            continue;
        }
        ids.insert(item.id, index);
        if item.has_tokens {
            ids.insert(token_event_id(&item.id), index);
        }
        records.push(item.into_record(browser));
    }
    let sent = records.len();
    if sent > 0 {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: None,
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "tally.rest".into(),
                        ..Default::default()
                    }),
                    log_records: records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let result = state.consumer.consume_logs(request, sender.clone()).await;
        count_records(
            SignalKind::LogRecords,
            Transport::Http,
            sent as u64,
            result.is_ok(),
        );
        let report = result?;
        let mut seen = std::collections::HashSet::new();
        for (id, reason) in report.quarantined {
            if let Some(index) = ids.get(&id) {
                if seen.insert(*index) {
                    rejected.push((*index, reason));
                }
            }
        }
    }
    drop(charge);
    rejected.sort_by_key(|(index, _)| *index);
    let accepted = total - rejected.len();
    Ok(json!({
        "accepted": accepted,
        "rejected": rejected
            .into_iter()
            .map(|(index, reason)| json!({ "index": index, "reason": reason }))
            .collect::<Vec<_>>(),
    }))
}

/// The items of a body, each parsed or with why not; `Err` when the body as a
/// whole is not JSON of the expected shape.
fn parse_body(format: BodyFormat, body: &[u8]) -> Result<Vec<Result<Value, Malformed>>, Malformed> {
    match format {
        BodyFormat::Json => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(items)) => Ok(items.into_iter().map(Ok).collect()),
            Ok(object @ Value::Object(_)) => Ok(vec![Ok(object)]),
            Ok(_) => Err("the body must be a JSON object or an array of objects".into()),
            Err(e) => malformed(format!("the body is not JSON: {e}")),
        },
        BodyFormat::Ndjson => {
            let text = std::str::from_utf8(body)
                .map_err(|e| format!("the body is not UTF-8 text: {e}"))?;
            let items: Vec<Result<Value, Malformed>> = text
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(|line| {
                    serde_json::from_str::<Value>(line)
                        .map_err(|e| Malformed(format!("not JSON: {e}")))
                })
                .collect();
            if !items.is_empty() && items.iter().all(Result::is_err) {
                return Err(
                    "no line of the body is JSON (application/x-ndjson: one JSON \
                            object per line)"
                        .into(),
                );
            }
            Ok(items)
        }
    }
}

/// One checked item.
#[derive(Debug)]
struct Item {
    id: Uuid,
    ts: DateTime<Utc>,
    action: String,
    has_tokens: bool,
    user_given: bool,
    /// The record's attributes, the item's own `attributes` first.
    attributes: Vec<KeyValue>,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
}

/// Top-level fields of an item besides `tokens`, with their attribute keys.
const TEXT_FIELDS: &[(&str, &str)] = &[
    ("tenant_id", "tenant.id"),
    ("user_id", "user.id"),
    ("session_id", "session.id"),
    ("resource_type", "activity.resource.type"),
    ("resource_id", "activity.resource.id"),
    ("service", "service.name"),
];
/// Text fields of `tokens`, with their attribute keys.
const TOKEN_TEXT: &[(&str, &str)] = &[
    ("provider", "gen_ai.provider.name"),
    ("operation", "gen_ai.operation.name"),
    ("model", "gen_ai.request.model"),
    ("request_model", "gen_ai.request.model"),
    ("response_model", "gen_ai.response.model"),
];
/// Count fields of `tokens`, with their attribute keys.
const TOKEN_COUNTS: &[(&str, &str)] = &[
    ("input_tokens", "gen_ai.usage.input_tokens"),
    ("output_tokens", "gen_ai.usage.output_tokens"),
    ("cache_read_tokens", "gen_ai.usage.cache_read.input_tokens"),
    (
        "cache_write_tokens",
        "gen_ai.usage.cache_creation.input_tokens",
    ),
    ("reasoning_tokens", "gen_ai.usage.reasoning.output_tokens"),
    ("total_tokens", "gen_ai.usage.total_tokens"),
];
/// Longest text field, in bytes.
const MAX_TEXT: usize = 1024;

fn text_attr(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn text_field(object: &Map<String, Value>, field: &str) -> Result<Option<String>, Malformed> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => {
            malformed(format!("{field}: must not be empty"))
        }
        Some(Value::String(text)) if text.len() > MAX_TEXT => {
            malformed(format!("{field}: longer than {MAX_TEXT} bytes"))
        }
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => malformed(format!("{field}: must be a string")),
    }
}

fn hex_field(object: &Map<String, Value>, field: &str, bytes: usize) -> Result<Vec<u8>, Malformed> {
    let Some(text) = text_field(object, field)? else {
        return Ok(Vec::new());
    };
    match decode_hex(&text) {
        Some(decoded) if decoded.len() == bytes && decoded.iter().any(|b| *b != 0) => Ok(decoded),
        _ => malformed(format!(
            "{field}: must be {} hex digits, not all zero",
            bytes * 2
        )),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The event time: RFC 3339 text or milliseconds since the Unix epoch.
fn time_field(value: &Value) -> Result<DateTime<Utc>, Malformed> {
    let parsed = match value {
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .ok(),
        Value::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
        _ => None,
    };
    parsed.ok_or_else(|| {
        "ts: must be RFC 3339 text (2026-01-02T03:04:05Z) or milliseconds since the Unix epoch"
            .into()
    })
}

/// JSON as an OTLP value (objects become key-value lists).
fn any_value(value: Value) -> Option<AnyValue> {
    use any_value::Value as V;
    let value = match value {
        Value::Null => return None,
        Value::Bool(b) => V::BoolValue(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => V::IntValue(i),
            None => V::DoubleValue(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => V::StringValue(s),
        Value::Array(items) => V::ArrayValue(ArrayValue {
            values: items.into_iter().filter_map(any_value).collect(),
        }),
        Value::Object(map) => V::KvlistValue(KeyValueList {
            values: map
                .into_iter()
                .map(|(key, value)| KeyValue {
                    key,
                    value: any_value(value),
                    ..Default::default()
                })
                .collect(),
        }),
    };
    Some(AnyValue { value: Some(value) })
}

/// Sorts object keys at every depth, so equal content serializes equally.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let mut out = Map::new();
            for (key, value) in entries {
                out.insert(key.clone(), canonical(value));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

const KNOWN_FIELDS: &[&str] = &[
    "id",
    "ts",
    "action",
    "outcome",
    "attributes",
    "tokens",
    "trace_id",
    "span_id",
    "tenant_id",
    "user_id",
    "session_id",
    "resource_type",
    "resource_id",
    "service",
];

impl Item {
    /// Checks one item; `scope` (the sender's tenant) goes into a derived id.
    fn parse(value: Value, now: DateTime<Utc>, scope: &str) -> Result<Item, Malformed> {
        let Value::Object(object) = value else {
            return Err("not a JSON object".into());
        };
        if let Some(unknown) = object.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
            return malformed(format!(
                "unknown field {unknown:?} (put your own fields in attributes)"
            ));
        }
        let action = text_field(&object, "action")?.ok_or("action: required")?;
        let action = action.trim().to_owned();
        let given_id = match object.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(Uuid::try_parse(text).map_err(|_| {
                "id: must be a UUID (e.g. 0190a5c8-7f3e-7a1b-9c2d-1234567890ab)".to_owned()
            })?),
            Some(_) => return Err("id: must be a UUID string".into()),
        };
        let ts = match object.get("ts") {
            None | Some(Value::Null) => given_id
                .and_then(|id| id.get_timestamp())
                .and_then(|t| {
                    let (secs, nanos) = t.to_unix();
                    DateTime::from_timestamp(secs as i64, nanos)
                })
                .unwrap_or(now),
            Some(value) => time_field(value)?,
        };
        if ts.timestamp_nanos_opt().is_none_or(|nanos| nanos <= 0) {
            return Err("ts: must be after 1970 and before 2262".into());
        }
        let outcome = match object.get("outcome") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) if tally_model::Outcome::parse(text).is_some() => {
                Some(text.clone())
            }
            Some(_) => return Err("outcome: must be success, failure or unknown".into()),
        };
        let trace_id = hex_field(&object, "trace_id", 16)?;
        let span_id = hex_field(&object, "span_id", 8)?;
        let mut attributes = Vec::new();
        match object.get("attributes") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (key, value) in map {
                    if key.starts_with("tally.") {
                        return malformed(format!(
                            "attributes.{key}: keys starting with tally. are reserved"
                        ));
                    }
                    attributes.push(KeyValue {
                        key: key.clone(),
                        value: any_value(value.clone()),
                        ..Default::default()
                    });
                }
            }
            Some(_) => return Err("attributes: must be a JSON object".into()),
        }
        // The item's columns win over same-named attributes (the last value wins).
        let mut user_given = false;
        for (field, key) in TEXT_FIELDS {
            if let Some(text) = text_field(&object, field)? {
                user_given |= *field == "user_id";
                attributes.push(text_attr(key, text));
            }
        }
        if let Some(outcome) = outcome {
            attributes.push(text_attr("activity.outcome", outcome));
        }
        attributes.push(text_attr("activity.action", action.clone()));
        let has_tokens = match object.get("tokens") {
            None | Some(Value::Null) => false,
            Some(Value::Object(tokens)) => {
                token_attributes(tokens, &mut attributes)?;
                true
            }
            Some(_) => return Err("tokens: must be a JSON object".into()),
        };
        let id = match given_id {
            Some(id) => id,
            None => {
                let mut content = canonical(&Value::Object(object));
                if let Value::Object(map) = &mut content {
                    map.insert(
                        "ts".into(),
                        Value::String(ts.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
                    );
                }
                rest_event_id(scope, content.to_string().as_bytes())
            }
        };
        Ok(Item {
            id,
            ts,
            action,
            has_tokens,
            user_given,
            attributes,
            trace_id,
            span_id,
        })
    }

    fn into_record(self, browser: bool) -> LogRecord {
        let mut attributes = Vec::with_capacity(self.attributes.len() + 2);
        // First: the classifier takes the record's first `tally.event.id`.
        attributes.push(text_attr(EVENT_ID_ATTRIBUTE, self.id.to_string()));
        if browser && self.user_given {
            attributes.push(text_attr(ASSERTED_BY, "client".into()));
        }
        attributes.extend(self.attributes);
        let nanos = self
            .ts
            .timestamp_nanos_opt()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(1);
        LogRecord {
            time_unix_nano: nanos,
            observed_time_unix_nano: nanos,
            attributes,
            trace_id: self.trace_id,
            span_id: self.span_id,
            ..Default::default()
        }
    }
}

fn token_attributes(tokens: &Map<String, Value>, out: &mut Vec<KeyValue>) -> Result<(), Malformed> {
    let known = |k: &str| {
        TOKEN_TEXT.iter().any(|(f, _)| *f == k) || TOKEN_COUNTS.iter().any(|(f, _)| *f == k)
    };
    if let Some(unknown) = tokens.keys().find(|k| !known(k)) {
        return malformed(format!("tokens: unknown field {unknown:?}"));
    }
    let mut model = false;
    for (field, key) in TOKEN_TEXT {
        if let Some(text) = text_field(tokens, field).map_err(|e| format!("tokens.{e}"))? {
            model |= field.contains("model");
            out.push(text_attr(key, text));
        }
    }
    if !model {
        return Err("tokens.model: required".into());
    }
    let mut usage = false;
    for (field, key) in TOKEN_COUNTS {
        match tokens.get(*field) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_i64().is_some_and(|v| v >= 0) => {
                usage |= matches!(*field, "input_tokens" | "output_tokens" | "total_tokens");
                out.push(KeyValue {
                    key: (*key).into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(n.as_i64().unwrap_or_default())),
                    }),
                    ..Default::default()
                });
            }
            Some(_) => {
                return malformed(format!("tokens.{field}: must be a whole number, 0 or more"))
            }
        }
    }
    if !usage {
        return Err("tokens: give input_tokens, output_tokens or total_tokens".into());
    }
    Ok(())
}

/// Per-key token buckets of `receivers.otlp.http.events_rate_limit`.
#[derive(Clone, Default)]
pub(crate) struct EventsLimiter {
    inner: Option<Arc<LimiterInner>>,
}

struct LimiterInner {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<Option<Uuid>, (f64, Instant)>>,
}

/// Keys tracked at most; past it, full buckets are forgotten.
const MAX_BUCKETS: usize = 100_000;

impl EventsLimiter {
    pub(crate) fn new(config: &tally_config::EventsRateLimit) -> EventsLimiter {
        if config.per_second <= 0.0 || !config.per_second.is_finite() {
            return EventsLimiter::default();
        }
        let burst = if config.burst == 0 {
            config.per_second.max(1.0)
        } else {
            config.burst as f64
        };
        EventsLimiter {
            inner: Some(Arc::new(LimiterInner {
                per_second: config.per_second,
                burst,
                buckets: Mutex::new(HashMap::new()),
            })),
        }
    }

    /// Refills `key`'s bucket; `Err(wait)` when it is empty.
    pub(crate) fn admit(&self, key: Option<Uuid>) -> Result<(), Duration> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = inner.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            let (rate, burst) = (inner.per_second, inner.burst);
            buckets.retain(|_, (level, at)| {
                *level + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (level, at) = buckets.entry(key).or_insert((inner.burst, now));
        *level =
            (*level + now.duration_since(*at).as_secs_f64() * inner.per_second).min(inner.burst);
        *at = now;
        if *level >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *level) / inner.per_second))
        }
    }

    /// Takes `events` from `key`'s bucket (it may go below zero).
    pub(crate) fn charge(&self, key: Option<Uuid>, events: u64) {
        let Some(inner) = &self.inner else { return };
        let mut buckets = inner.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((level, _)) = buckets.get_mut(&key) {
            *level -= events as f64;
        }
    }
}

#[cfg(test)]
mod tests;
