//! Reads of the audit log are themselves audited: every authenticated request
//! to a data route of `/api/v1` becomes an activity event `audit.log.view`
//! (who, which route, which filters, which status).
//!
//! The event is an OTLP log record handed to the same pipeline as the apps'
//! records ([`Consumer`]), so it is redacted, validated and stored like any
//! other. Submission happens off the request path: a bounded queue feeds one
//! forwarder that sends what has gathered as one request and retries while the
//! database is unavailable.
//!
//! The live activity feed leaves these events out unless a client asks for the
//! action explicitly, so a dashboard that refreshes a list on each live event
//! cannot feed itself (see `GET /api/v1/activity/stream`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tally_model::pipeline::{ConsumeError, Consumer};
use tokio::sync::mpsc;

use crate::caller::{Caller, TenantAccess};
use crate::state::AppState;

/// The action of the events this module records.
pub const AUDIT_VIEW_ACTION: &str = "audit.log.view";

/// Views waiting to be submitted at most; beyond this they are logged and dropped.
const QUEUE_CAPACITY: usize = 4096;
/// Views sent in one request at most.
const BATCH_MAX: usize = 512;
/// Attempts per batch while the pipeline answers with a retryable error.
const MAX_ATTEMPTS: u32 = 10;
/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The `service.name` of the recorded events.
const SERVICE_NAME: &str = "tally-admin-api";

tokio::task_local! {
    /// Where the current request's authenticated caller is left for [`record`].
    static CALLER: CallerSlot;
}

#[derive(Clone, Default)]
struct CallerSlot(Arc<Mutex<Option<Caller>>>);

/// Notes `caller` as the authenticated caller of the request being served
/// (a no-op outside the audit middleware).
pub(crate) fn remember(caller: &Caller) {
    let _ = CALLER.try_with(|slot| {
        if let Ok(mut held) = slot.0.lock() {
            *held = Some(caller.clone());
        }
    });
}

/// One read of the audit log, as recorded.
#[derive(Debug, Clone)]
struct View {
    time: SystemTime,
    subject: String,
    tenant: String,
    route: String,
    method: String,
    query: String,
    status: u16,
}

/// Sends views to the pipeline; cheap to clone.
#[derive(Clone)]
pub(crate) struct AuditTrail {
    queue: mpsc::Sender<View>,
}

impl AuditTrail {
    /// Starts the forwarder that submits views to `consumer`.
    pub(crate) fn start(consumer: Arc<dyn Consumer>) -> AuditTrail {
        let (queue, views) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(forward(views, consumer));
        AuditTrail { queue }
    }

    fn submit(&self, view: View) {
        if let Err(error) = self.queue.try_send(view) {
            let view = match &error {
                mpsc::error::TrySendError::Full(view) | mpsc::error::TrySendError::Closed(view) => {
                    view
                }
            };
            tracing::error!(
                subject = %view.subject,
                route = %view.route,
                "audit trail queue full or closed: an {AUDIT_VIEW_ACTION} event was not recorded"
            );
        }
    }
}

/// Whether requests to `route` are recorded (data routes, not the API's own description).
fn audited(route: &str) -> bool {
    route.starts_with("/api/v1/")
        && !matches!(
            route,
            // `/budgets/check` answers ratios from memory for an app about to call
            // a model, possibly before every call: recording each would double
            // the rows that app causes.
            "/api/v1/openapi.json" | "/api/v1/whoami" | "/api/v1/budgets/check"
        )
}

/// Parameter names whose value is a credential, compared after decoding and
/// lowercasing, with `-` read as `_` (`access_token`, `access%5Ftoken`,
/// `Access-Token` … are one name).
const CREDENTIAL_NAMES: &[&str] = &[
    "access_token",
    "accesstoken",
    "token",
    "id_token",
    "refresh_token",
    "api_key",
    "apikey",
    "x_api_key",
    "key",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "authorization",
    "auth",
    "bearer",
    "jwt",
    "session",
    "sig",
    "signature",
];

/// Whether a (decoded) parameter is, or carries, a credential: a credential
/// name, or a value that is a Tally API key, a bearer header or a JWT.
fn is_credential(name: &str, value: &str) -> bool {
    let name = name.trim().to_ascii_lowercase().replace('-', "_");
    if CREDENTIAL_NAMES.contains(&name.as_str()) {
        return true;
    }
    let value = value.trim();
    let lower = value.to_ascii_lowercase();
    value.starts_with(crate::apikeys::KEY_PREFIX)
        || lower.starts_with("bearer ")
        || (value.starts_with("eyJ") && value.matches('.').count() == 2)
}

/// The query string as recorded: decoded (`name=value&…`, as the handlers
/// read it), without any credential (see [`is_credential`]). A query that does
/// not decode is recorded as `<undecodable>`.
fn recorded_query(uri: &Uri) -> String {
    let Ok(pairs) = crate::params::pairs(uri) else {
        return if uri.query().unwrap_or_default().is_empty() {
            String::new()
        } else {
            "<undecodable>".to_owned()
        };
    };
    let mut out = String::new();
    for (name, value) in pairs
        .iter()
        .filter(|(name, value)| !is_credential(name, value))
    {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    crate::error::truncate(&out, 2048)
}

/// The tenant a view is recorded under, or `None` for no record: only a tenant
/// the caller may read. A tenant-scoped caller: its own tenant (its refused
/// reads included). A platform (`*`) caller: the tenant it read, when the read
/// succeeded, else none (`""`). A caller without a tenant claim reads no
/// tenant's data: its requests are not recorded, so that it cannot write into
/// any tenant's chained log.
fn recorded_tenant(caller: &Caller, uri: &Uri, status: u16) -> Option<String> {
    match &caller.tenant {
        TenantAccess::One(tenant) | TenantAccess::OwnRows { tenant, .. } => Some(tenant.clone()),
        TenantAccess::Nothing => None,
        TenantAccess::All if !(200..300).contains(&status) => Some(String::new()),
        TenantAccess::All => Some(
            crate::params::pairs(uri)
                .ok()
                .and_then(|pairs| pairs.into_iter().find(|(name, _)| name == "tenant"))
                .map(|(_, value)| value)
                .unwrap_or_default(),
        ),
    }
}

/// Middleware on the API's routes: serves the request, then records who read what.
pub(crate) async fn record(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(trail) = state.audit.clone() else {
        return next.run(request).await;
    };
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) if audited(path.as_str()) => path.as_str().to_owned(),
        _ => return next.run(request).await,
    };
    let method = request.method().as_str().to_owned();
    let uri = request.uri().clone();
    let slot = CallerSlot::default();
    let response = CALLER.scope(slot.clone(), next.run(request)).await;
    let caller = slot.0.lock().ok().and_then(|mut held| held.take());
    if let Some(caller) = caller {
        let status = response.status().as_u16();
        match recorded_tenant(&caller, &uri, status) {
            Some(tenant) => trail.submit(View {
                time: SystemTime::now(),
                tenant,
                subject: caller.subject,
                route,
                method,
                query: recorded_query(&uri),
                status,
            }),
            None => tracing::debug!(
                subject = %caller.subject,
                route,
                status,
                "{AUDIT_VIEW_ACTION} not recorded: the caller may read no tenant"
            ),
        }
    }
    response
}

/// Submits queued views in batches until every [`AuditTrail`] is dropped.
async fn forward(mut views: mpsc::Receiver<View>, consumer: Arc<dyn Consumer>) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while views.recv_many(&mut batch, BATCH_MAX).await > 0 {
        let count = batch.len();
        let request = export_request(batch.drain(..));
        let mut attempt = 0;
        loop {
            attempt += 1;
            match consumer
                .consume_logs(request.clone(), tally_model::Sender::anonymous())
                .await
            {
                Ok(report) if report.rejected == 0 => break,
                Ok(report) => {
                    tracing::error!(rejected = report.rejected, message = %report.message, "{AUDIT_VIEW_ACTION} events were rejected");
                    break;
                }
                Err(ConsumeError::Invalid(reason)) => {
                    tracing::error!(%reason, count, "{AUDIT_VIEW_ACTION} events were refused");
                    break;
                }
                Err(error) if attempt < MAX_ATTEMPTS => {
                    let delay = error
                        .retry_after()
                        .unwrap_or(Duration::from_secs(1))
                        .min(MAX_BACKOFF);
                    tracing::warn!(%error, attempt, "recording {AUDIT_VIEW_ACTION} events; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    tracing::error!(%error, count, "{AUDIT_VIEW_ACTION} events could not be recorded");
                    break;
                }
            }
        }
    }
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        key_strindex: 0,
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        key_strindex: 0,
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
    }
}

/// The views as one OTLP logs request (one log record per view).
fn export_request(views: impl Iterator<Item = View>) -> ExportLogsServiceRequest {
    let log_records = views
        .map(|view| {
            let nanos = view
                .time
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            let mut attributes = vec![
                text("activity.action", AUDIT_VIEW_ACTION),
                text("enduser.id", view.subject),
                text("audit.route", view.route),
                text("audit.method", view.method),
                text("audit.query", view.query),
                int("http.response.status_code", i64::from(view.status)),
                // Two identical reads in the same nanosecond are still two events.
                text("audit.request_id", uuid::Uuid::new_v4().to_string()),
            ];
            if !view.tenant.is_empty() {
                attributes.push(text("tenant.id", view.tenant));
            }
            LogRecord {
                time_unix_nano: nanos,
                observed_time_unix_nano: nanos,
                attributes,
                ..LogRecord::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![text("service.name", SERVICE_NAME)],
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(query: &str) -> Uri {
        format!("/api/v1/activity?{query}").parse().unwrap()
    }

    #[test]
    fn credentials_are_not_recorded_whatever_their_spelling() {
        assert_eq!(
            recorded_query(&uri("user=u1&access_token=secret&tenant=t")),
            "user=u1&tenant=t"
        );
        for spelled in [
            "access%5Ftoken=s",
            "ACCESS_TOKEN=s",
            "access-token=s",
            "api_key=s",
            "apikey=s",
            "token=s",
            "x-api-key=s",
            "password=s",
            "q=tally_0123_abcd",
            "q=Bearer%20abc",
            "q=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig",
        ] {
            assert_eq!(
                recorded_query(&uri(&format!("a=1&{spelled}"))),
                "a=1",
                "{spelled}"
            );
        }
        // Stored decoded.
        assert_eq!(
            recorded_query(&uri("user=a%20b&action=x%2Ey")),
            "user=a b&action=x.y"
        );
        assert_eq!(recorded_query(&uri("")), "");
    }

    #[test]
    fn views_are_recorded_only_under_tenants_the_caller_may_read() {
        let mut caller = Caller::anonymous();
        let q = uri("tenant=a%20b&user=u");
        assert_eq!(recorded_tenant(&caller, &q, 200).as_deref(), Some("a b"));
        assert_eq!(
            recorded_tenant(&caller, &uri("user=u"), 200).as_deref(),
            Some("")
        );
        assert_eq!(recorded_tenant(&caller, &q, 400).as_deref(), Some(""));
        caller.tenant = TenantAccess::One("own".to_owned());
        assert_eq!(
            recorded_tenant(&caller, &uri("tenant=acme"), 403).as_deref(),
            Some("own")
        );
        caller.tenant = TenantAccess::Nothing;
        assert_eq!(recorded_tenant(&caller, &uri("tenant=acme"), 403), None);
        assert_eq!(recorded_tenant(&caller, &uri("tenant=acme"), 200), None);
    }

    #[test]
    fn only_data_routes_are_audited() {
        assert!(audited("/api/v1/activity"));
        assert!(audited("/api/v1/activity/stream"));
        assert!(!audited("/api/v1/openapi.json"));
        assert!(!audited("/api/v1/whoami"));
        assert!(audited("/api/v1/budgets"));
        assert!(!audited("/api/v1/budgets/check"));
        assert!(!audited("/healthz"));
    }
}
