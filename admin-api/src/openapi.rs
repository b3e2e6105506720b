//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document. Its list of operations
//! and of each operation's query parameters comes from the route table
//! ([`crate::route_table`], data the router reads too); the descriptions, schemas and responses are written here.
//!
//! Over 600 lines: the hand-written descriptions and schemas of the one OpenAPI document, a block per route; split by route they would scatter the document schemathesis checks.

use axum::Json;
use serde_json::{json, Value};

/// `GET /api/v1/openapi.json`: the document, with this instance's page size.
pub(crate) async fn document(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
) -> Json<Value> {
    Json(openapi_for(state.max_page_size))
}

/// The OpenAPI document for an instance whose `admin_api.max_page_size` is
/// `max_page_size` (the `limit` maximum of the list routes).
pub fn openapi_for(max_page_size: u32) -> Value {
    let mut doc = openapi();
    for path in ["/api/v1/activity", "/api/v1/tokens", "/api/v1/rejected"] {
        if let Some(parameters) = doc["paths"][path]["get"]["parameters"].as_array_mut() {
            for parameter in parameters.iter_mut().filter(|p| p["name"] == "limit") {
                parameter["schema"]["maximum"] = json!(max_page_size);
            }
        }
    }
    doc
}

fn string_param(name: &str, description: &str) -> Value {
    json!({
        "name": name, "in": "query", "required": false,
        "description": description,
        "schema": { "type": "string" }
    })
}

/// `min_duration_ms` of the activity routes.
fn min_duration_param() -> Value {
    json!({
        "name": "min_duration_ms", "in": "query", "required": false,
        "description": "Rows whose duration_ms is at least this many milliseconds (rows without a duration never match)",
        "schema": { "type": "number", "minimum": 0, "maximum": crate::activity::MAX_DURATION_MS }
    })
}

/// The `Retry-After` header of a 429, 503 or 504 answer.
fn retry_after_header() -> Value {
    json!({
        "Retry-After": { "description": "Seconds to wait", "schema": { "type": "integer", "minimum": 1 } }
    })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn access_token_param() -> Value {
    string_param(
        "access_token",
        "The bearer JWT, for clients that cannot set headers (EventSource); stream routes only",
    )
}

/// Parameters of a stream route: exact-match filters, after_seq, access_token.
fn stream_params(filters: &[&str]) -> Value {
    let mut params: Vec<Value> = filters
        .iter()
        .map(|name| match *name {
            "min_duration_ms" => min_duration_param(),
            name => string_param(name, "Filter, as on the list route"),
        })
        .collect();
    params.push(json!({
        "name": "after_seq", "in": "query", "required": false,
        "description": "Replay rows after this seq first (the Last-Event-ID header wins)",
        "schema": { "type": "integer", "minimum": 0, "maximum": i64::MAX }
    }));
    params.push(json!({
        "name": "Last-Event-ID", "in": "header", "required": false,
        "description": "Resume after this seq (sent by EventSource on reconnect)",
        "schema": { "type": "integer", "minimum": 0, "maximum": i64::MAX }
    }));
    params.push(access_token_param());
    Value::Array(params)
}

fn stream_responses() -> Value {
    json!({
        "200": { "description": "An event stream", "content": { "text/event-stream": { "schema": { "type": "string" } } } },
        "400": error_response("invalid_parameter"),
        "401": error_response("unauthorized"),
        "403": error_response("forbidden"),
        "503": error_response("unavailable: too many live-feed clients (admin_api.sse_max_clients) or no database")
    })
}

/// The OpenAPI document with the default `admin_api.max_page_size` (1000).
pub fn openapi() -> Value {
    let mut doc = document_text();
    bound(
        &mut doc,
        tally_config::AdminApiConfig::default().max_page_size,
    );
    doc
}

/// States the bounds every handler enforces, on every operation: text
/// parameters are 1 to 1024 characters without NUL; `limit` has its maximum;
/// dates lie in years 1-9999; every `/api/v1` data route may answer 429 (over
/// `admin_api.limits`), and those that are not live feeds 504 (over
/// `request_timeout_ms`), both with `Retry-After`, as is a 503.
fn bound(doc: &mut Value, max_page_size: u32) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(operations) = item.as_object_mut() else {
            continue;
        };
        for operation in operations.values_mut() {
            if let Some(parameters) = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
            {
                for parameter in parameters.iter_mut().filter(|p| p["in"] == "query") {
                    let name = parameter["name"].as_str().unwrap_or_default().to_owned();
                    let schema = &mut parameter["schema"];
                    if schema["type"] == "string" && schema.get("enum").is_none() {
                        schema["minLength"] = json!(1);
                        schema["maxLength"] = json!(crate::params::MAX_TEXT_CHARS);
                        if schema.get("pattern").is_none() && schema.get("format").is_none() {
                            schema["pattern"] = json!("^[^\\u0000]*$");
                        }
                    }
                    if name == "limit" && schema.get("maximum").is_none() {
                        schema["maximum"] = json!(max_page_size);
                    }
                }
            }
            if !path.starts_with("/api/v1/") || path == "/api/v1/openapi.json" {
                continue;
            }
            if let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            {
                let mut too_many = error_response(
                    "too_many_requests: the caller is over admin_api.limits (max_concurrent_per_caller, db_time_per_caller_percent, or max_streams_per_caller on live feeds)",
                );
                too_many["headers"] = retry_after_header();
                responses.insert("429".to_owned(), too_many);
                if !path.ends_with("/stream") {
                    let mut timeout =
                        error_response("timeout: longer than admin_api.limits.request_timeout_ms");
                    timeout["headers"] = retry_after_header();
                    responses.insert("504".to_owned(), timeout);
                }
                if let Some(unavailable) = responses.get_mut("503") {
                    unavailable["headers"] = retry_after_header();
                }
                responses
                    .entry("401")
                    .or_insert_with(|| error_response("unauthorized"));
                responses
                    .entry("400")
                    .or_insert_with(|| error_response("invalid_parameter"));
            }
        }
    }
}

/// The document as written, before [`bound`].
fn document_text() -> Value {
    let nullable_string = json!({ "type": ["string", "null"] });
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tally admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Query the activity log collected by Tally. Errors are {\"error\":{\"code\",\"message\"}}.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" }
        },
        "paths": {
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the process answers",
                    "security": [],
                    "responses": {
                        "200": { "description": "Alive", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } }
                    }
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: the pipeline is ready and the database answers",
                    "security": [],
                    "responses": {
                        "200": { "description": "Ready", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } },
                        "503": { "description": "Not ready", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Status" } } } }
                    }
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": { "200": { "description": "OpenAPI 3.1 document", "content": { "application/json": {} } } }
                }
            },
            "/api/v1/activity": {
                "get": {
                    "operationId": "listActivity",
                    "summary": "The activity log, newest first, cursor-paginated",
                    "description": "Needs scope activity:read or admin. A tenant-scoped token only sees its tenant (403 when asking for another one; 403 when the token has no tenant claim). Unknown parameters are rejected.",
                    "parameters": [
                        string_param("tenant", "Exact tenant id"),
                        string_param("user", "Exact user id"),
                        string_param("action", "Exact action, a prefix with a trailing .* (auth.*), or * for all"),
                        {
                            "name": "outcome", "in": "query", "required": false,
                            "schema": { "type": "string", "enum": ["success", "failure", "unknown"] }
                        },
                        string_param("resource_type", "Exact resource type"),
                        string_param("resource_id", "Exact resource id"),
                        {
                            "name": "trace_id", "in": "query", "required": false,
                            "description": "32 hex characters (case-insensitive)",
                            "schema": { "type": "string", "pattern": "^[0-9a-fA-F]{32}$" }
                        },
                        string_param("name", "Exact name (span name or log event name)"),
                        min_duration_param(),
                        {
                            "name": "from", "in": "query", "required": false,
                            "description": "Inclusive lower bound on ts (RFC 3339)",
                            "schema": { "type": "string", "format": "date-time" }
                        },
                        {
                            "name": "to", "in": "query", "required": false,
                            "description": "Exclusive upper bound on ts (RFC 3339)",
                            "schema": { "type": "string", "format": "date-time" }
                        },
                        {
                            "name": "limit", "in": "query", "required": false,
                            "description": "Page size (default admin_api.default_page_size, at most admin_api.max_page_size)",
                            "schema": { "type": "integer", "minimum": 1 }
                        },
                        string_param("cursor", "next_cursor of the previous page")
                    ],
                    "responses": {
                        "200": {
                            "description": "A page of events",
                            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ActivityPage" } } }
                        },
                        "400": error_response("invalid_parameter or invalid_cursor"),
                        "401": error_response("unauthorized"),
                        "403": error_response("forbidden"),
                        "500": error_response("internal"),
                        "503": error_response("unavailable")
                    }
                }
            },
            "/api/v1/whoami": {
                "get": {
                    "operationId": "whoami",
                    "summary": "The caller: subject, scopes and tenant of the credential",
                    "description": "Any valid credential (no scope needed); not recorded as audit.log.view. tenant is the tenant id, \"*\" for every tenant, or null for none; user is the one user whose rows a self:read token reads (null otherwise); auth is false when the API checks no credential (the caller is then anonymous with every scope). The console uses it to show only the views the caller may read.",
                    "responses": {
                        "200": { "description": "The caller", "content": { "application/json": { "schema": {
                            "type": "object",
                            "required": ["subject", "scopes", "tenant", "user", "auth"],
                            "properties": {
                                "subject": { "type": "string" },
                                "scopes": { "type": "array", "items": { "type": "string" } },
                                "tenant": { "type": ["string", "null"] },
                                "user": { "type": ["string", "null"] },
                                "auth": { "type": "boolean" }
                            }
                        } } } },
                        "401": error_response("unauthorized")
                    }
                }
            },
            "/api/v1/taxonomy": {
                "get": {
                    "operationId": "getTaxonomy",
                    "summary": "The taxonomy registry in use (actions, outcomes, required attributes, attribute schemas)",
                    "description": "Needs scope activity:read, tokens:read or admin (not tenant data). The registry as declared (version, description, actions keyed by name or family.*) plus mode (strict|lenient|off), source (file path or built-in), generation, loaded_at and last_reload_error. See docs/taxonomy.md.",
                    "responses": {
                        "200": { "description": "The current registry", "content": { "application/json": { "schema": { "type": "object", "required": ["version", "actions", "mode", "source", "generation", "loaded_at", "last_reload_error"] } } } },
                        "401": error_response("unauthorized"),
                        "403": error_response("forbidden"),
                        "404": error_response("not_found: no registry loaded in this process")
                    }
                }
            },
            "/api/v1/rejected": {
                "get": {
                    "operationId": "listRejected",
                    "summary": "Quarantined records (rejected_events), newest first",
                    "description": "Needs scope admin; tenant-scoped. Filters tenant and reason (a reason code, e.g. unknown_action); limit as /activity; cursor = the previous page's next_cursor. Items: id, seq, received_at, tenant_id, reason, record (the redacted event and the reason's message).",
                    "parameters": [
                        { "name": "tenant", "in": "query", "schema": { "type": "string" } },
                        { "name": "reason", "in": "query", "schema": { "type": "string" } },
                        { "name": "limit", "in": "query", "description": "Page size (default admin_api.default_page_size, at most admin_api.max_page_size)", "schema": { "type": "integer", "minimum": 1 } },
                        { "name": "cursor", "in": "query", "description": "next_cursor of the previous page (a seq)", "schema": { "type": "string", "pattern": "^-?[0-9]{1,18}$" } }
                    ],
                    "responses": {
                        "200": { "description": "A page of quarantined records", "content": { "application/json": { "schema": { "type": "object", "required": ["items", "next_cursor"] } } } },
                        "400": error_response("invalid_parameter"),
                        "401": error_response("unauthorized"),
                        "403": error_response("forbidden")
                    }
                }
            },
            "/api/v1/rejected/replay": {
                "post": {
                    "operationId": "replayRejected",
                    "summary": "Re-validate quarantined records against the current taxonomy and store those that pass, exactly once",
                    "description": "Needs scope admin; tenant-scoped. Optional JSON body {tenant, reason, limit (1-10000, default 1000)}. Oldest records first; rows being replayed concurrently are skipped. Answers {replayed, still_rejected}.",
                    "requestBody": { "required": false, "content": { "application/json": { "schema": { "type": "object", "additionalProperties": false, "properties": { "tenant": { "type": ["string", "null"], "minLength": 1, "maxLength": 1024, "pattern": "^[^\\u0000]*$" }, "reason": { "type": ["string", "null"], "minLength": 1, "maxLength": 1024, "pattern": "^[^\\u0000]*$" }, "limit": { "type": ["integer", "null"], "minimum": 1, "maximum": 10000, "description": "null or absent: 1000" } } } } } },
                    "responses": {
                        "200": { "description": "What the replay did", "content": { "application/json": { "schema": { "type": "object", "required": ["replayed", "still_rejected"] } } } },
                        "400": error_response("invalid_parameter"),
                        "401": error_response("unauthorized"),
                        "403": error_response("forbidden"),
                        "404": error_response("not_found: replay not available"),
                        "503": error_response("unavailable")
                    }
                }
            },
            "/api/v1/erasures": {
                "post": {
                    "operationId": "createErasure",
                    "summary": "Erase one user of one tenant: pseudonymise the user's id and remove the personal fields everywhere, keeping counts, token sums and the chain verifiable",
                    "description": "Needs scope admin (not self:read); tenant-scoped: a tenant-scoped admin erases in its own tenant only (another is 403). JSON body {tenant, user_id, reason} (a tenant-scoped caller may leave tenant out: its own; the reason is stored and must not name the person). Idempotent: the same tenant and user answer the existing record. 202 with the record (state pending) while the erasure runs in the background (batches, resumed after a crash by any instance); 200 with the record when it was already done. The record never holds the user's id: id, tenant_id, pseudonym (erased: + 32 hex digits of HMAC-SHA256 under the erasure key), reason, requested_by (the caller), state (pending|done), counts (rows changed per table), requested_at, completed_at, event_id (the admin.user.erase event), archives (the archive data files that still hold the user's rows). See docs/privacy.md.",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "additionalProperties": false, "required": ["tenant", "user_id", "reason"], "properties": { "tenant": { "type": "string", "maxLength": 1024, "pattern": NO_CONTROL, "description": "The tenant whose user is erased ('' for events without a tenant); the server also accepts it omitted from a tenant-scoped caller (its own tenant)" }, "user_id": { "type": "string", "minLength": 1, "maxLength": 1024, "pattern": NOT_BLANK, "description": "No control characters, not only white space" }, "reason": { "type": "string", "minLength": 1, "maxLength": 1024, "pattern": NOT_BLANK, "description": "No control characters, not only white space" } } } } } },
                    "responses": {
                        "200": { "description": "The erasure was already done", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Erasure" } } } },
                        "202": { "description": "The erasure is recorded and running", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Erasure" } } } },
                        "400": error_response("invalid_parameter"),
                        "401": error_response("unauthorized"),
                        "403": error_response("forbidden"),
                        "404": error_response("not_found: erasure not available"),
                        "503": error_response("unavailable")
                    }
                },
                "get": {
                    "operationId": "listErasures",
                    "summary": "The erasure records, newest first",
                    "description": "Needs scope admin (not self:read); tenant-scoped: a tenant-scoped caller sees its own tenant's records. Filter tenant; limit as /activity. Answers {items: [Erasure]}.",
                    "parameters": [
                        { "name": "tenant", "in": "query", "schema": { "type": "string" } },
                        { "name": "limit", "in": "query", "description": "Page size (default admin_api.default_page_size, at most admin_api.max_page_size)", "schema": { "type": "integer", "minimum": 1 } }
                    ],
                    "responses": {
                        "200": { "description": "Erasure records", "content": { "application/json": { "schema": { "type": "object", "required": ["items"], "properties": { "items": { "type": "array", "items": { "$ref": "#/components/schemas/Erasure" } } } } } } },
                        "400": error_response("invalid_parameter"),
                        "401": error_response("unauthorized"),
                        "403": error_response("forbidden")
                    }
                }
            },
            "/api/v1/verify": {
                "get": {
                    "operationId": "verifyChain",
                    "summary": "Tamper check: re-walk a tenant's activity hash chain",
                    "description": "Needs scope activity:read or admin. tenant: a tenant-scoped caller verifies its own (another tenant is 403); a caller with every tenant verifies the one named, or without tenant every tenant ({status, items: [report]}). Recomputes the chained rows' SHA-256 links in seq order and checks the signed checkpoints and truncation records (docs/tamper-evidence.md): from the latest checkpoint an earlier call verified (verified_from_seq; the link and row there are re-checked), or the whole chain on a tenant's first call and with full=true (scope admin; one at a time, else 429). 200 with status intact (verified_up_to_seq, checkpoint) or tampered (first_problem {seq, kind: altered|deleted|inserted|checkpoint|truncation, detail}); rows_checked, links_checked, dropped_rows (removed by retention, recorded), erased_rows (rows an erasure erased, each tied to its erasures record; docs/privacy.md), unchained_rows (after the chainer's watermark), chain_watermark, checkpoints_checked.",
                    "parameters": [
                        { "name": "tenant", "in": "query", "schema": { "type": "string" } },
                        { "name": "full", "in": "query", "description": "true: walk the whole chain, not from the last verified checkpoint (scope admin)", "schema": { "type": "string", "enum": ["true", "false"] } }
                    ],
                    "responses": {
                        "200": { "description": "The verdict: one tenant's report, or (a * caller naming no tenant) every tenant's", "content": { "application/json": { "schema": {
                            "oneOf": [
                                { "$ref": "#/components/schemas/VerifyReport" },
                                {
                                    "type": "object",
                                    "required": ["status", "items"],
                                    "additionalProperties": false,
                                    "properties": {
                                        "status": { "type": "string", "enum": ["intact", "tampered"] },
                                        "items": { "type": "array", "items": { "$ref": "#/components/schemas/VerifyReport" } }
                                    }
                                }
                            ]
                        } } } },
                        "400": error_response("invalid_parameter"),
                        "401": error_response("unauthorized"),
                        "403": error_response("forbidden"),
                        "503": error_response("unavailable")
                    }
                }
            },
            "/api/v1/activity/stream": {
                "get": {
                    "operationId": "streamActivity",
                    "summary": "Live feed of activity events (Server-Sent Events)",
                    "description": "Needs scope activity:read or admin; tenant-scoped like /activity. Filters as /activity (no limit/cursor). Each event: `id:` = seq, `event: activity`, `data:` = an ActivityEvent. Replays from the database after Last-Event-ID (header, wins) or after_seq, else starts after the newest committed row; then live, no gap, no duplicate. Heartbeat comments every admin_api.sse_heartbeat_secs. A client whose buffer (admin_api.sse_client_buffer events) stays full for 1 s gets `event: reset` and is disconnected; resume with Last-Event-ID. Accepts ?access_token= instead of the Authorization header.",
                    "security": [ { "bearerAuth": [] }, { "accessToken": [] } ],
                    "parameters": stream_params(&["tenant", "user", "action", "outcome", "resource_type", "resource_id", "trace_id", "name", "min_duration_ms", "from", "to"]),
                    "responses": stream_responses()
                }
            },
            "/api/v1/tokens/stream": {
                "get": {
                    "operationId": "streamTokens",
                    "summary": "Live feed of token-usage rows (Server-Sent Events)",
                    "description": "Needs scope tokens:read or admin; tenant-scoped. Exact-match filters tenant, user, model, provider, operation, outcome, trace_id. Events: `id:` = seq, `event: token`, `data:` = a TokenUsage item (as /tokens). Same replay, heartbeat, reset and access_token rules as /activity/stream.",
                    "security": [ { "bearerAuth": [] }, { "accessToken": [] } ],
                    "parameters": stream_params(&["tenant", "user", "model", "provider", "operation", "outcome", "trace_id"]),
                    "responses": stream_responses()
                }
            },
            "/api/v1/stats/stream": {
                "get": {
                    "operationId": "streamStats",
                    "summary": "Live counters: one `event: stats` per second (Server-Sent Events)",
                    "description": "Needs activity:read and/or tokens:read (or admin): the `activity` section (events, events_per_second, by_class, last_seq) and the `tokens` section (requests, tokens, input_tokens, output_tokens, tokens_per_second, by_model, last_seq) each need their scope. Counts the rows committed since the previous summary (by seq), at most 50 groups each. Accepts ?access_token=.",
                    "security": [ { "bearerAuth": [] }, { "accessToken": [] } ],
                    "parameters": [ string_param("tenant", "Exact tenant id"), access_token_param() ],
                    "responses": stream_responses()
                }
            },
            "/api/v1/export": {
                "get": {
                    "operationId": "export",
                    "summary": "SIEM tail: raw rows in seq order after after_seq",
                    "description": "Needs activity:read (table=activity_events) or tokens:read (table=token_usage), or admin; tenant-scoped. Gap-free under concurrent writers (seq is commit-ordered). Continue with after_seq = the X-Next-After-Seq header (the last row's seq, or after_seq when the page is empty); X-Has-More: true means ask again at once. format=ndjson (native columns), ocsf (OCSF 1.3: Authentication 3002 for auth.*, API Activity 6003 otherwise), ecs (Elastic Common Schema), cef (one CEF:0 line per row), csv (RFC 4180: a header row with the item column names, CRLF line ends, attributes as one JSON field, NULL as an empty field and an empty text as \"\"). from/to keep the rows whose event time ts is in [from, to), still in seq order and paged by after_seq. The body is streamed. See docs/siem.md.",
                    "parameters": [
                        { "name": "table", "in": "query", "required": false, "schema": { "type": "string", "enum": ["activity_events", "token_usage"], "default": "activity_events" } },
                        { "name": "after_seq", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 0, "maximum": i64::MAX, "default": 0 } },
                        { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "maximum": 10000, "default": 1000 } },
                        { "name": "format", "in": "query", "required": false, "schema": { "type": "string", "enum": ["ndjson", "ocsf", "ecs", "cef", "csv"], "default": "ndjson" } },
                        string_param("tenant", "Exact tenant id"),
                        day_param("from", "Inclusive lower bound on ts: RFC 3339, or a date (its midnight UTC)"),
                        day_param("to", "Exclusive upper bound on ts: RFC 3339, or a date (its midnight UTC: the day itself is left out)")
                    ],
                    "responses": {
                        "200": {
                            "description": "One row per line",
                            "headers": {
                                "X-Next-After-Seq": { "schema": { "type": "integer" }, "description": "after_seq for the next request" },
                                "X-Has-More": { "schema": { "type": "string", "enum": ["true", "false"] }, "description": "true: a full page came back and more rows are waiting" }
                            },
                            "content": {
                                "application/x-ndjson": { "schema": { "type": "string" } },
                                "text/plain": { "schema": { "type": "string" } },
                                "text/csv": { "schema": { "type": "string" } }
                            }
                        },
                        "400": error_response("invalid_parameter"),
                        "401": error_response("unauthorized"),
                        "403": error_response("forbidden"),
                        "500": error_response("internal"),
                        "503": error_response("unavailable")
                    }
                }
            }
        },
        "security": [ { "bearerAuth": [] } ],
        "components": {
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "accessToken": { "type": "apiKey", "in": "query", "name": "access_token", "description": "The bearer JWT as a query parameter; stream routes only (EventSource cannot set headers)" }
            },
            "schemas": {
                "Status": {
                    "type": "object",
                    "required": ["status"],
                    "properties": { "status": { "type": "string" }, "reason": { "type": "string" } }
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {
                                    "type": "string",
                                    "enum": ["invalid_parameter", "invalid_cursor", "window_too_large", "unauthorized", "forbidden", "not_found", "method_not_allowed", "too_many_requests", "timeout", "unavailable", "internal"]
                                },
                                "message": { "type": "string" }
                            }
                        }
                    }
                },
                "ActivityEvent": {
                    "type": "object",
                    "required": ["id", "seq", "ts", "received_at", "tenant_id", "user_id", "session_id", "action", "outcome", "resource_type", "resource_id", "service", "trace_id", "span_id", "attributes", "duration_ms", "name", "error_type", "error_message"],
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "seq": { "type": "integer" },
                        "ts": { "type": "string", "format": "date-time" },
                        "received_at": { "type": "string", "format": "date-time" },
                        "tenant_id": nullable_string,
                        "user_id": nullable_string,
                        "session_id": nullable_string,
                        "action": { "type": "string" },
                        "outcome": { "type": "string", "enum": ["success", "failure", "unknown"] },
                        "resource_type": nullable_string,
                        "resource_id": nullable_string,
                        "service": nullable_string,
                        "trace_id": nullable_string,
                        "span_id": nullable_string,
                        "attributes": { "type": "object" },
                        "duration_ms": { "type": ["number", "null"], "description": "Span end - start in milliseconds; null for log records" },
                        "name": { "type": ["string", "null"], "description": "Span name or log event name" },
                        "error_type": { "type": ["string", "null"], "description": "error.type, else exception.type" },
                        "error_message": { "type": ["string", "null"], "description": "Span status message, else exception.message; redacted like any attribute" }
                    }
                },
                "Erasure": {
                    "type": "object",
                    "required": ["id", "tenant_id", "pseudonym", "reason", "requested_by", "state", "counts", "requested_at", "completed_at", "event_id", "archives"],
                    "properties": {
                        "id": { "type": "string", "format": "uuid" },
                        "tenant_id": { "type": "string" },
                        "pseudonym": { "type": "string", "description": "What the user's id became: erased: and 32 hex digits" },
                        "reason": { "type": "string" },
                        "requested_by": { "type": "string", "description": "The caller who asked (token subject, or cli:<user>)" },
                        "state": { "type": "string", "enum": ["pending", "done"] },
                        "counts": { "type": "object", "additionalProperties": { "type": "integer" }, "description": "Rows changed per table (activity_events, token_usage, rejected_events, rollups, budget_thresholds, api_keys)" },
                        "requested_at": { "type": "string", "format": "date-time" },
                        "completed_at": { "type": ["string", "null"], "format": "date-time" },
                        "event_id": { "type": ["string", "null"], "format": "uuid", "description": "The admin.user.erase event" },
                        "archives": { "type": "array", "items": { "type": "string" }, "description": "The archive data files (retention.archive.dir) that held rows of the user when the erasure finished: archives are not rewritten and still hold the user in clear (docs/privacy.md); empty while pending" }
                    }
                },
                "VerifyReport": {
                    "type": "object",
                    "required": ["tenant", "status", "verified_up_to_seq", "rows_checked", "first_problem", "checkpoint"],
                    "properties": {
                        "tenant": { "type": "string" },
                        "status": { "type": "string", "enum": ["intact", "tampered"] },
                        "verified_up_to_seq": { "type": ["integer", "null"] },
                        "rows_checked": { "type": "integer", "minimum": 0 },
                        "first_problem": {
                            "type": ["object", "null"],
                            "required": ["seq", "kind", "detail"],
                            "properties": {
                                "seq": { "type": "integer" },
                                "kind": { "type": "string", "enum": ["altered", "deleted", "inserted", "checkpoint", "truncation"] },
                                "detail": { "type": "string" }
                            }
                        },
                        "checkpoint": { "type": ["object", "null"] },
                        "erased_rows": { "type": "integer", "minimum": 0, "description": "Rows checked that an erasure erased, each tied to its erasures record (docs/privacy.md)" },
                        "verified_from_seq": { "type": ["integer", "null"], "description": "null: the whole chain was walked; else the verified checkpoint this walk resumed from" }
                    }
                },
                "ActivityPage": {
                    "type": "object",
                    "required": ["items", "next_cursor"],
                    "properties": {
                        "items": { "type": "array", "items": { "$ref": "#/components/schemas/ActivityEvent" } },
                        "next_cursor": { "type": ["string", "null"] }
                    }
                }
            }
        }
    });
    add_usage_routes(&mut doc);
    add_budget_routes(&mut doc);
    add_coverage_route(&mut doc);
    complete(&mut doc);
    doc
}

/// Makes the document list every route of the route table
/// ([`ROUTES`](crate::route_table::ROUTES)) with every query parameter its
/// handler accepts: a route without a description above gets a generic one, a
/// parameter without one gets a plain string entry. Both are marked
/// `x-undocumented` (a test insists there are none).
fn complete(doc: &mut Value) {
    for spec in crate::route_table::ROUTES {
        let operation = &mut doc["paths"][spec.path][spec.method.to_ascii_lowercase()];
        if operation.is_null() {
            *operation = json!({
                "summary": "Undocumented route",
                "x-undocumented": true,
                "responses": standard_errors(json!({ "description": "OK" }))
            });
        }
        let documented: Vec<String> = operation["parameters"]
            .as_array()
            .map(|parameters| {
                parameters
                    .iter()
                    .filter(|p| p["in"] == "query")
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for name in spec.query {
            if !documented.iter().any(|d| d == name) {
                let mut parameter = string_param(name, "Accepted by the handler");
                parameter["x-undocumented"] = json!(true);
                match operation["parameters"].as_array_mut() {
                    Some(parameters) => parameters.push(parameter),
                    None => operation["parameters"] = json!([parameter]),
                }
            }
        }
    }
}

fn int_param(name: &str, description: &str) -> Value {
    json!({
        "name": name, "in": "query", "required": false,
        "description": description,
        "schema": { "type": "integer", "minimum": 1 }
    })
}

/// A text without control characters (what Tally refuses in names it stores).
const NO_CONTROL: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";

/// [`NO_CONTROL`], and not empty or only white space.
const NOT_BLANK: &str =
    "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$";

fn day_param(name: &str, description: &str) -> Value {
    json!({
        "name": name, "in": "query", "required": false,
        "description": description,
        "schema": {
            "anyOf": [
                { "type": "string", "format": "date" },
                { "type": "string", "format": "date-time" }
            ],
            "examples": ["2026-11-23", "2026-11-23T19:25:50Z"]
        }
    })
}

fn standard_errors(ok: Value) -> Value {
    json!({
        "200": ok,
        "400": error_response("invalid_parameter or invalid_cursor"),
        "401": error_response("unauthorized"),
        "403": error_response("forbidden"),
        "500": error_response("internal"),
        "503": error_response("unavailable")
    })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

/// `GET /tokens`, `/tokens/usage`, `/activity/aggregates`, `/stats` and their schemas.
fn add_usage_routes(doc: &mut Value) {
    let grain = json!({
        "name": "grain", "in": "query", "required": false,
        "description": "Period of each item: day (default), week (ISO week, starting Monday) or month; days are UTC",
        "schema": { "type": "string", "enum": ["day", "week", "month"] }
    });
    // Each `/stats` tokens.by_model item: the sums, and the speed fields.
    let stats_by_model = json!({
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "model": { "type": ["string", "null"] },
                "failed_requests": { "type": "integer" },
                "success_rate": { "type": ["number", "null"] },
                "duration_p50_ms": { "type": ["number", "null"] },
                "duration_p95_ms": { "type": ["number", "null"] },
                "time_to_first_token_p50_ms": { "type": ["number", "null"] },
                "time_to_first_token_p95_ms": { "type": ["number", "null"] },
                "output_tokens_per_second": { "type": ["number", "null"] },
                "output_tokens_per_second_p50": { "type": ["number", "null"] },
                "output_tokens_per_second_p95": { "type": ["number", "null"] }
            }
        }
    });
    let group_by = |keys: &[&str]| {
        json!({
            "name": "group_by", "in": "query", "required": false,
            "description": "Group keys, comma-separated and/or repeated (group_by=user,model or group_by=user&group_by=model); none: one item per period",
            "style": "form", "explode": true,
            "schema": { "type": "array", "items": { "type": "string", "enum": keys } }
        })
    };
    let from = day_param(
        "from",
        "First UTC day included: a date, or an RFC 3339 timestamp (its whole day counts)",
    );
    let to = day_param(
        "to",
        "End, exclusive: a date or midnight excludes that day; a later time includes its day",
    );
    let mut limit = int_param("limit", "Items per page, default 1000, at most 10000");
    limit["schema"]["maximum"] = json!(crate::aggregates::MAX_LIMIT);
    let cursor = string_param(
        "cursor",
        "next_cursor of the previous page (same grain and group_by)",
    );
    let paths = json!({
        "/api/v1/tokens": { "get": {
            "operationId": "listTokenUsage",
            "summary": "The token-usage ledger (one row per model call), newest first, cursor-paginated",
            "description": "Needs scope tokens:read or admin; tenant scoping as for /activity. Unknown parameters are rejected.",
            "parameters": [
                string_param("tenant", "Exact tenant id"),
                string_param("user", "Exact user id"),
                string_param("model", "Exact model (response model, else request model)"),
                string_param("provider", "Exact provider"),
                {
                    "name": "trace_id", "in": "query", "required": false,
                    "description": "32 hex characters (case-insensitive)",
                    "schema": { "type": "string", "pattern": "^[0-9a-fA-F]{32}$" }
                },
                {
                    "name": "from", "in": "query", "required": false,
                    "description": "Inclusive lower bound on ts (RFC 3339)",
                    "schema": { "type": "string", "format": "date-time" }
                },
                {
                    "name": "to", "in": "query", "required": false,
                    "description": "Exclusive upper bound on ts (RFC 3339)",
                    "schema": { "type": "string", "format": "date-time" }
                },
                int_param("limit", "Page size (default admin_api.default_page_size, at most admin_api.max_page_size)"),
                string_param("cursor", "next_cursor of the previous page")
            ],
            "responses": standard_errors(ok("A page of token-usage rows", "TokenUsagePage"))
        }},
        "/api/v1/tokens/usage": { "get": {
            "operationId": "tokenUsageAggregates",
            "summary": "Token usage summed per period (day/week/month) and group keys: live and exact (the rollups plus the rows not folded yet)",
            "description": "Needs scope tokens:read or admin; a tenant-scoped token only sees its tenant. The window (to - from, or the data's own span) may span at most 400 days at grain=day, 1827 at grain=week, 3653 at grain=month: longer is 400 window_too_large. Ordered by period, then tenant_id, user_id, provider, model. Every row committed before the request is included (the rollups plus the raw rows above their watermark, read in one snapshot); as_of_seq is the newest token_usage seq included. A row attributed to its user later moves from the unattributed group to the user's, never counted twice.",
            "parameters": [
                grain.clone(),
                group_by(&["user", "tenant", "model", "provider"]),
                string_param("tenant", "Exact tenant id"),
                string_param("user", "Exact user id"),
                string_param("provider", "Exact provider"),
                string_param("model", "Exact model"),
                from.clone(), to.clone(), limit.clone(), cursor.clone()
            ],
            "responses": standard_errors(ok("A page of token-usage aggregates", "TokenUsageAggregatePage"))
        }},
        "/api/v1/activity/aggregates": { "get": {
            "operationId": "activityAggregates",
            "summary": "Activity event counts per period (day/week/month) and group keys: live and exact (the rollups plus the rows not folded yet)",
            "description": "Needs scope activity:read or admin; a tenant-scoped token only sees its tenant. Ordered by period, then tenant_id, user_id, action, outcome. The window may span at most 400 days at grain=day, 1827 at grain=week, 3653 at grain=month: longer is 400 window_too_large. Every row committed before the request is included; as_of_seq is the newest activity_events seq included.",
            "parameters": [
                grain,
                group_by(&["user", "tenant", "action", "outcome"]),
                string_param("tenant", "Exact tenant id"),
                string_param("user", "Exact user id"),
                string_param("action", "Exact action"),
                {
                    "name": "outcome", "in": "query", "required": false,
                    "schema": { "type": "string", "enum": ["success", "failure", "unknown"] }
                },
                from.clone(), to.clone(), limit, cursor
            ],
            "responses": standard_errors(ok("A page of activity aggregates", "ActivityAggregatePage"))
        }},
        "/api/v1/stats": { "get": {
            "operationId": "stats",
            "summary": "Totals for a window of UTC days (default: the last 7 days, today included): live and exact (the rollups plus the rows not folded yet)",
            "description": "Needs activity:read or tokens:read (or admin); the activity section is null without activity:read/admin, the tokens section null without tokens:read/admin. At most 366 days. Every row committed before the request is included; each section's as_of_seq is the newest seq of its table included.",
            "parameters": [ string_param("tenant", "Exact tenant id"), from, to ],
            "responses": standard_errors(ok("Totals", "Stats"))
        }}
    });
    let nullable_string = json!({ "type": ["string", "null"] });
    let nullable_int = json!({ "type": ["integer", "null"] });
    let measures = |with_keys: &[&str]| {
        let mut properties = serde_json::Map::new();
        for key in with_keys {
            properties.insert((*key).to_owned(), nullable_string.clone());
        }
        for m in tally_model::tokens::TOKEN_COUNT_MEASURES {
            properties.insert(m.to_owned(), json!({ "type": "integer" }));
        }
        properties.insert("cost_usd".to_owned(), json!({ "type": "number", "description": "Sum of the priced calls' estimated cost (calls with usage but no price count in unpriced_requests)" }));
        Value::Object(properties)
    };
    let schemas = json!({
        "TokenUsage": {
            "type": "object",
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "seq": { "type": "integer" },
                "ts": { "type": "string", "format": "date-time" },
                "received_at": { "type": "string", "format": "date-time" },
                "tenant_id": nullable_string, "user_id": nullable_string, "session_id": nullable_string,
                "service": nullable_string, "trace_id": nullable_string, "span_id": nullable_string,
                "provider": nullable_string, "operation": nullable_string,
                "request_model": nullable_string, "response_model": nullable_string, "model": nullable_string,
                "input_tokens": nullable_int, "output_tokens": nullable_int,
                "cache_read_tokens": nullable_int, "cache_write_tokens": nullable_int,
                "reasoning_tokens": nullable_int, "total_tokens": nullable_int,
                "usage_known": { "type": "boolean" },
                "cost_usd": { "type": ["number", "null"] },
                "outcome": { "type": "string", "enum": ["success", "failure", "unknown"] },
                "duration_ms": { "type": ["number", "null"] },
                "time_to_first_token_ms": { "type": ["number", "null"], "description": "Time to the first output token or chunk of a streamed call, when the instrumentation reports it" },
                "output_tokens_per_second": { "type": ["number", "null"], "description": "Derived, not stored: output_tokens over duration_ms in seconds (time to first token included); null without both" },
                "attribution_source": { "type": "string", "enum": ["record", "trace", "none"] },
                "attributes": { "type": "object" }
            }
        },
        "TokenUsagePage": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": { "type": "array", "items": { "$ref": "#/components/schemas/TokenUsage" } },
                "next_cursor": { "type": ["string", "null"] }
            }
        },
        "TokenUsageAggregate": {
            "type": "object",
            "description": "period (first day of the day/week/month) plus the requested group keys ('' stored keys are null) and the sums",
            "properties": {
                "period": { "type": "string", "format": "date" }
            }
        },
        "TokenUsageAggregatePage": {
            "type": "object",
            "required": ["items", "next_cursor", "as_of_seq"],
            "properties": {
                "items": { "type": "array", "items": { "$ref": "#/components/schemas/TokenUsageAggregate" } },
                "next_cursor": { "type": ["string", "null"] },
                "as_of_seq": { "type": "integer", "description": "The newest seq of the raw table included: the answer counts every row with seq <= as_of_seq the caller may see" }
            }
        },
        "ActivityAggregate": {
            "type": "object",
            "properties": {
                "period": { "type": "string", "format": "date" },
                "tenant_id": nullable_string, "user_id": nullable_string,
                "action": { "type": "string" }, "outcome": { "type": "string" },
                "events": { "type": "integer" }
            }
        },
        "ActivityAggregatePage": {
            "type": "object",
            "required": ["items", "next_cursor", "as_of_seq"],
            "properties": {
                "items": { "type": "array", "items": { "$ref": "#/components/schemas/ActivityAggregate" } },
                "next_cursor": { "type": ["string", "null"] },
                "as_of_seq": { "type": "integer", "description": "The newest seq of the raw table included: the answer counts every row with seq <= as_of_seq the caller may see" }
            }
        },
        "Stats": {
            "type": "object",
            "required": ["from", "to", "tenant_id", "activity", "tokens"],
            "properties": {
                "from": { "type": "string", "format": "date" },
                "to": { "type": "string", "format": "date", "description": "exclusive" },
                "tenant_id": nullable_string,
                "activity": {
                    "type": ["object", "null"],
                    "properties": {
                        "as_of_seq": { "type": "integer", "description": "The newest activity_events seq included" },
                        "events": { "type": "integer" },
                        "active_users": { "type": "integer" },
                        "top_actions": { "type": "array", "items": { "type": "object", "properties": { "action": { "type": "string" }, "events": { "type": "integer" } } } },
                        "daily": { "type": "array", "items": { "type": "object", "properties": { "day": { "type": "string", "format": "date" }, "events": { "type": "integer" }, "active_users": { "type": "integer" } } } }
                    }
                },
                "tokens": {
                    "type": ["object", "null"],
                    "description": "as_of_seq (the newest token_usage seq included), the totals (the TokenUsageAggregate sums) and the speed fields (failed_requests, success_rate, duration_p50_ms, duration_p95_ms, time_to_first_token_p50_ms, time_to_first_token_p95_ms, output_tokens_per_second, output_tokens_per_second_p50, output_tokens_per_second_p95; each by_model item has them too) plus by_model, by_provider and daily lists",
                    "properties": {
                        "as_of_seq": { "type": "integer" },
                        "failed_requests": { "type": "integer" },
                        "success_rate": { "type": ["number", "null"], "description": "(requests - failed_requests) / requests" },
                        "duration_p50_ms": { "type": ["number", "null"], "description": "Median call duration, within 4.5%" },
                        "duration_p95_ms": { "type": ["number", "null"], "description": "95th percentile call duration, within 4.5%" },
                        "time_to_first_token_p50_ms": { "type": ["number", "null"], "description": "Median time to first token of the calls that reported one, within 4.5%; null when none did" },
                        "time_to_first_token_p95_ms": { "type": ["number", "null"], "description": "95th percentile time to first token of the calls that reported one, within 4.5%" },
                        "output_tokens_per_second": { "type": ["number", "null"], "description": "Output tokens over the summed durations of the calls that reported both" },
                        "output_tokens_per_second_p50": { "type": ["number", "null"], "description": "Median of each call's own output tokens per second (calls with output tokens and a positive duration), within 4.5% (within 0.5 under 1 token/s); null without such calls" },
                        "output_tokens_per_second_p95": { "type": ["number", "null"], "description": "95th percentile of each call's own output tokens per second, as output_tokens_per_second_p50" },
                        "by_model": stats_by_model
                    }
                }
            }
        }
    });
    if let Some(props) = schemas
        .get("TokenUsageAggregate")
        .and_then(|s| s.get("properties"))
        .cloned()
    {
        let mut merged = measures(&["tenant_id", "user_id", "provider", "model"]);
        if let (Value::Object(merged), Value::Object(props)) = (&mut merged, props) {
            merged.extend(props);
        }
        let mut schemas = schemas;
        schemas["TokenUsageAggregate"]["properties"] = merged;
        merge(doc, "paths", paths);
        merge_components(doc, schemas);
    }
}

/// `GET /budgets`, `/budgets/check` and their schemas.
fn add_budget_routes(doc: &mut Value) {
    let paths = json!({
        "/api/v1/budgets": { "get": {
            "operationId": "listBudgets",
            "summary": "The configured budgets (config key budgets) with their use in the current period",
            "description": "Needs scope tokens:read or admin. Answered from memory, refreshed about every second (as_of). A tenant-scoped token sees only the budgets of its tenant; budgets without a tenant (every tenant's usage) only a token for every tenant. 503 while no refresh has succeeded since the start (the first runs before the API listens); 404 when no budget evaluator runs in this process.",
            "parameters": [ string_param("tenant", "Only the budgets of this tenant") ],
            "responses": standard_errors(ok("The budgets", "BudgetList"))
        }},
        "/api/v1/budgets/check": { "get": {
            "operationId": "checkBudgets",
            "summary": "The budgets that count a tenant's / user's usage, with used_ratio and exceeded: a fast check before a model call",
            "description": "Needs scope tokens:read or admin. Answered from memory (no database work), refreshed about every second (as_of). A budget applies when its tenant (user) is the one asked for or it has none; a tenant-scoped token is checked against its own tenant. Not recorded as audit.log.view.",
            "parameters": [
                string_param("tenant", "The tenant about to use a model (a tenant-scoped token: its own)"),
                string_param("user", "The user about to use a model")
            ],
            "responses": standard_errors(ok("The budgets that apply", "BudgetCheck"))
        }}
    });
    let schemas = json!({
        "Budget": {
            "type": "object",
            "required": ["name", "tenant", "user", "period", "period_start", "period_end", "unit", "limit", "used", "used_ratio", "exceeded", "thresholds", "thresholds_crossed"],
            "properties": {
                "name": { "type": "string" },
                "tenant": { "type": ["string", "null"], "description": "null: every tenant's usage" },
                "user": { "type": ["string", "null"], "description": "null: every user's usage" },
                "period": { "type": "string", "enum": ["day", "week", "month"] },
                "period_start": { "type": "string", "format": "date-time" },
                "period_end": { "type": "string", "format": "date-time", "description": "exclusive" },
                "unit": { "type": "string", "enum": ["usd", "tokens"] },
                "limit": { "type": "number" },
                "used": { "type": "number", "description": "use so far in the period, in unit (estimated cost, or total_tokens)" },
                "used_ratio": { "type": "number", "description": "used / limit" },
                "exceeded": { "type": "boolean", "description": "used >= limit" },
                "thresholds": { "type": "array", "items": { "type": "number" } },
                "thresholds_crossed": { "type": "array", "items": { "type": "number" }, "description": "thresholds recorded as crossed in this period" }
            }
        },
        "BudgetList": {
            "type": "object",
            "required": ["items", "as_of"],
            "properties": {
                "items": { "type": "array", "items": { "$ref": "#/components/schemas/Budget" } },
                "as_of": { "type": "string", "format": "date-time" }
            }
        },
        "BudgetCheck": {
            "type": "object",
            "required": ["exceeded", "budgets", "as_of"],
            "properties": {
                "exceeded": { "type": "boolean", "description": "whether any budget that applies is exceeded" },
                "budgets": { "type": "array", "items": {
                    "type": "object",
                    "required": ["name", "used_ratio", "exceeded"],
                    "properties": {
                        "name": { "type": "string" },
                        "used_ratio": { "type": "number" },
                        "exceeded": { "type": "boolean" }
                    }
                }},
                "as_of": { "type": "string", "format": "date-time" }
            }
        }
    });
    merge(doc, "paths", paths);
    merge_components(doc, schemas);
}

/// `GET /tokens/coverage` and its schemas.
fn add_coverage_route(doc: &mut Value) {
    let paths = json!({
        "/api/v1/tokens/coverage": { "get": {
            "operationId": "tokenCoverage",
            "summary": "Per UTC day and model: token totals from the gen_ai.client.token.usage metric (unsampled) next to the span-derived ledger's, and the ledger's coverage",
            "description": "Needs scope tokens:read or admin; a tenant-scoped token only sees its tenant; a self:read token gets 403 (the metrics carry no user). Metric totals are the per-minute totals of the OTLP metrics received (token types input and output; metric_calls counts the input observations); span totals are the ledger's (token_usage: one row per model call, the daily rollup plus the rows not folded yet). Coverage ratios are span / metric, null when the metric has none for that day and model. The window is from (default: 30 days before to) to to (exclusive; default: tomorrow, UTC), dates or RFC 3339 timestamps as for /tokens/usage; it may span at most 400 days: longer is 400 window_too_large. At most 10000 items (truncated: true beyond).",
            "parameters": [
                day_param("from", "First UTC day (a date, or an RFC 3339 timestamp: its day); default 30 days before to"),
                day_param("to", "End UTC day, exclusive (a date or midnight excludes that day; a later time includes it); default tomorrow"),
                string_param("tenant", "Only this tenant (a tenant-scoped token: its own)"),
                string_param("model", "Only this model (response model, else request model)"),
                string_param("provider", "Only this provider (gen_ai.provider.name / gen_ai.system)")
            ],
            "responses": standard_errors(ok("Metric and span totals per day and model", "TokenCoverage"))
        }}
    });
    let counts = json!({
        "metric_input_tokens": { "type": "integer", "description": "input tokens in gen_ai.client.token.usage" },
        "metric_output_tokens": { "type": "integer", "description": "output tokens in gen_ai.client.token.usage" },
        "metric_calls": { "type": "integer", "description": "calls the metric counted (input observations)" },
        "span_input_tokens": { "type": "integer", "description": "input tokens of the span-derived ledger" },
        "span_output_tokens": { "type": "integer", "description": "output tokens of the span-derived ledger" },
        "span_calls": { "type": "integer", "description": "calls in the span-derived ledger" },
        "input_coverage": { "type": ["number", "null"], "description": "span_input_tokens / metric_input_tokens" },
        "output_coverage": { "type": ["number", "null"], "description": "span_output_tokens / metric_output_tokens" },
        "calls_coverage": { "type": ["number", "null"], "description": "span_calls / metric_calls" }
    });
    let required: Vec<&String> = counts
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    let mut item = counts.clone();
    if let Value::Object(item) = &mut item {
        item.insert("day".into(), json!({ "type": "string", "format": "date" }));
        item.insert("model".into(), json!({ "type": "string", "description": "response model, else request model; empty: none reported" }));
    }
    let mut item_required: Vec<Value> = required.iter().map(|k| json!(k)).collect();
    item_required.extend([json!("day"), json!("model")]);
    let schemas = json!({
        "TokenCoverageItem": { "type": "object", "required": item_required, "properties": item },
        "TokenCoverageTotals": { "type": "object", "required": required, "properties": counts },
        "TokenCoverage": {
            "type": "object",
            "required": ["from", "to", "items", "totals", "truncated"],
            "properties": {
                "from": { "type": "string", "format": "date" },
                "to": { "type": "string", "format": "date", "description": "exclusive" },
                "items": { "type": "array", "items": { "$ref": "#/components/schemas/TokenCoverageItem" } },
                "totals": { "$ref": "#/components/schemas/TokenCoverageTotals" },
                "truncated": { "type": "boolean", "description": "more than 10000 items: narrow the window" }
            }
        }
    });
    merge(doc, "paths", paths);
    merge_components(doc, schemas);
}

fn merge(doc: &mut Value, key: &str, extra: Value) {
    if let (Some(Value::Object(target)), Value::Object(extra)) = (doc.get_mut(key), extra) {
        target.extend(extra);
    }
}

fn merge_components(doc: &mut Value, schemas: Value) {
    if let Some(components) = doc.get_mut("components") {
        merge(components, "schemas", schemas);
    }
}
