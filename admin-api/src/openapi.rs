//! `GET /api/v1/openapi.json`: a hand-written OpenAPI 3.1 document of the routes
//! that exist.

use axum::Json;
use serde_json::{json, Value};

/// `GET /api/v1/openapi.json`.
pub(crate) async fn document() -> Json<Value> {
    Json(openapi())
}

fn string_param(name: &str, description: &str) -> Value {
    json!({
        "name": name, "in": "query", "required": false,
        "description": description,
        "schema": { "type": "string" }
    })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

/// The OpenAPI document.
pub fn openapi() -> Value {
    let nullable_string = json!({ "type": ["string", "null"] });
    json!({
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
            }
        },
        "security": [ { "bearerAuth": [] } ],
        "components": {
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" }
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
                                    "enum": ["invalid_parameter", "invalid_cursor", "unauthorized", "forbidden", "not_found", "method_not_allowed", "unavailable", "internal"]
                                },
                                "message": { "type": "string" }
                            }
                        }
                    }
                },
                "ActivityEvent": {
                    "type": "object",
                    "required": ["id", "seq", "ts", "received_at", "tenant_id", "user_id", "session_id", "action", "outcome", "resource_type", "resource_id", "service", "trace_id", "span_id", "attributes"],
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
                        "attributes": { "type": "object" }
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
    })
}
