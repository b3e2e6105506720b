//! CSV (RFC 4180) encoding of the raw rows for `GET /api/v1/export?format=csv`:
//! a header row with the column names of `GET /api/v1/activity` (or `/tokens`)
//! items, then one record per row, every record ending in CRLF.
//!
//! A field holding `"`, `,`, CR or LF is enclosed in double quotes, its quotes
//! doubled. A NULL column is an empty field; an empty text is `""`, so the two
//! stay apart. `attributes` is one field holding the JSON object. Values are
//! never altered (no spreadsheet-formula escaping: this is an audit record).

use std::fmt::Write as _;

use crate::rows::{ActivityItem, RawRow, TokenItem};

/// The header record of `activity_events` exports.
pub const ACTIVITY_HEADER: &str = "id,seq,ts,received_at,tenant_id,user_id,session_id,action,\
     outcome,resource_type,resource_id,service,trace_id,span_id,attributes,duration_ms,name,\
     error_type,error_message\r\n";

/// The header record of `token_usage` exports.
pub const TOKEN_HEADER: &str = "id,seq,ts,received_at,tenant_id,user_id,session_id,service,\
     trace_id,span_id,provider,operation,request_model,response_model,model,input_tokens,\
     output_tokens,cache_read_tokens,cache_write_tokens,reasoning_tokens,total_tokens,\
     usage_known,cost_usd,outcome,duration_ms,time_to_first_token_ms,attribution_source,\
     attributes\r\n";

/// One record, CRLF-terminated.
pub fn encode(row: &RawRow) -> String {
    let mut out = String::with_capacity(512);
    match row {
        RawRow::Activity(item) => activity(&mut out, item),
        RawRow::Token(item) => token(&mut out, item),
    }
    out.push_str("\r\n");
    out
}

fn activity(out: &mut String, item: &ActivityItem) {
    let _ = write!(out, "{},{},", item.id, item.seq);
    text(out, &item.ts);
    out.push(',');
    text(out, &item.received_at);
    for value in [&item.tenant_id, &item.user_id, &item.session_id] {
        out.push(',');
        optional(out, value.as_deref());
    }
    out.push(',');
    text(out, &item.action);
    out.push(',');
    text(out, &item.outcome);
    for value in [
        &item.resource_type,
        &item.resource_id,
        &item.service,
        &item.trace_id,
        &item.span_id,
    ] {
        out.push(',');
        optional(out, value.as_deref());
    }
    out.push(',');
    json(out, &item.attributes);
    out.push(',');
    number(out, item.duration_ms);
    for value in [&item.name, &item.error_type, &item.error_message] {
        out.push(',');
        optional(out, value.as_deref());
    }
}

fn token(out: &mut String, item: &TokenItem) {
    let _ = write!(out, "{},{},", item.id, item.seq);
    text(out, &item.ts);
    out.push(',');
    text(out, &item.received_at);
    for value in [
        &item.tenant_id,
        &item.user_id,
        &item.session_id,
        &item.service,
        &item.trace_id,
        &item.span_id,
        &item.provider,
        &item.operation,
        &item.request_model,
        &item.response_model,
        &item.model,
    ] {
        out.push(',');
        optional(out, value.as_deref());
    }
    for value in [
        item.input_tokens,
        item.output_tokens,
        item.cache_read_tokens,
        item.cache_write_tokens,
        item.reasoning_tokens,
        item.total_tokens,
    ] {
        out.push(',');
        if let Some(value) = value {
            let _ = write!(out, "{value}");
        }
    }
    let _ = write!(out, ",{},", item.usage_known);
    number(out, item.cost_usd);
    out.push(',');
    text(out, &item.outcome);
    out.push(',');
    number(out, item.duration_ms);
    out.push(',');
    number(out, item.time_to_first_token_ms);
    out.push(',');
    text(out, &item.attribution_source);
    out.push(',');
    json(out, &item.attributes);
}

/// A text field: quoted when it must be (or when empty, to tell it from NULL).
fn text(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push_str("\"\"");
    } else if value.contains(['"', ',', '\r', '\n']) {
        out.push('"');
        for c in value.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(value);
    }
}

fn optional(out: &mut String, value: Option<&str>) {
    if let Some(value) = value {
        text(out, value);
    }
}

fn number(out: &mut String, value: Option<f64>) {
    if let Some(value) = value {
        let _ = write!(out, "{value}");
    }
}

fn json(out: &mut String, value: &serde_json::Value) {
    // A JSON value's text always contains a character that needs quoting
    // unless it is a bare number, boolean or null; quote it the same way.
    let encoded = value.to_string();
    text(out, &encoded);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(value: &str) -> String {
        let mut out = String::new();
        text(&mut out, value);
        out
    }

    #[test]
    fn fields_are_quoted_only_when_needed() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field(""), "\"\"");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\r\nlines"), "\"two\r\nlines\"");
        assert_eq!(field("漢字 🙂"), "漢字 🙂");
        let mut out = String::new();
        json(&mut out, &serde_json::json!({"k": "v,\"w\""}));
        assert_eq!(out, "\"{\"\"k\"\":\"\"v,\\\"\"w\\\"\"\"\"}\"");
    }

    #[test]
    fn headers_name_every_column_once() {
        for header in [ACTIVITY_HEADER, TOKEN_HEADER] {
            let names: Vec<&str> = header.trim_end_matches("\r\n").split(',').collect();
            let mut unique = names.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(names.len(), unique.len());
            assert!(names.iter().all(|n| !n.trim().is_empty() && n.trim() == *n));
        }
        assert_eq!(ACTIVITY_HEADER.matches(',').count(), 18);
        assert_eq!(TOKEN_HEADER.matches(',').count(), 27);
    }
}
