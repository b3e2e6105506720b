//! `audit.log.view` events are recorded only under tenants the caller may read,
//! with the query string decoded and without any credential spelling. The
//! events are captured at the pipeline boundary (the `Consumer` the collector
//! hands the admin API); the forwarder submits them in request order, so a
//! marker read that arrives proves every earlier one was handled.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use futures::future::BoxFuture;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use serde_json::json;
use tally_model::pipeline::{ConsumeError, ConsumeReport, Consumer, Sender};

/// Every recorded view, as its string attributes.
#[derive(Default)]
struct Captured(Mutex<Vec<BTreeMap<String, String>>>);

impl Consumer for Captured {
    fn consume_traces(
        &self,
        _request: ExportTraceServiceRequest,
        _sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        Box::pin(async { Ok(ConsumeReport::default()) })
    }

    fn consume_logs(
        &self,
        request: ExportLogsServiceRequest,
        _sender: Sender,
    ) -> BoxFuture<'static, Result<ConsumeReport, ConsumeError>> {
        let mut views = self.0.lock().unwrap();
        for record in request
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
        {
            let mut view = BTreeMap::new();
            for attribute in &record.attributes {
                let value = match attribute.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(AnyValue::StringValue(text)) => text.clone(),
                    Some(AnyValue::IntValue(n)) => n.to_string(),
                    _ => continue,
                };
                view.insert(attribute.key.clone(), value);
            }
            views.push(view);
        }
        Box::pin(async { Ok(ConsumeReport::default()) })
    }
}

fn jwt(sub: &str, tenant: Option<&str>) -> String {
    let mut claims = json!({ "sub": sub, "exp": now_secs() + 600, "scope": "admin" });
    if let Some(tenant) = tenant {
        claims["tenant"] = json!(tenant);
    }
    token_with(SECRET, &claims)
}

#[tokio::test]
async fn views_are_recorded_only_where_the_caller_may_read_and_without_credentials() {
    let db = TestDb::migrated().await;
    let captured = Arc::new(Captured::default());
    let router = api(&config_with_jwt(), &db.url)
        .await
        .with_audit(captured.clone())
        .router();

    // A token without a tenant claim asks for tenant B, with a query of its choosing.
    let tenantless = jwt("no-tenant", None);
    for uri in [
        "/api/v1/activity?tenant=tenant-b&user=forged-entry",
        "/api/v1/tokens/usage?tenant=tenant-b&group_by=user",
        "/api/v1/taxonomy",
    ] {
        let reply = get(&router, uri, Some(&tenantless)).await;
        assert_ne!(reply.status, StatusCode::OK, "{uri}: {}", reply.body);
    }
    // Tenant A asks for tenant B: refused, recorded under A.
    let tenant_a = jwt("reader-a", Some("tenant-a"));
    let reply = get(
        &router,
        "/api/v1/activity?tenant=tenant-b&user=refused-read",
        Some(&tenant_a),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    // A platform caller's read of tenant B, with credentials spelled every way.
    let platform = jwt("platform", Some("*"));
    let reply = get(
        &router,
        "/api/v1/activity?tenant=tenant-b&user=marker%20one&access%5Ftoken=secret-1&API_KEY=secret-2",
        Some(&platform),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "unknown parameters");
    let reply = get(
        &router,
        "/api/v1/activity?tenant=tenant-b&user=marker%20two",
        Some(&platform),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    let views = loop {
        {
            let views = captured.0.lock().unwrap();
            if views.iter().any(|v| {
                v.get("audit.query")
                    .is_some_and(|q| q.contains("marker two"))
            }) {
                break views.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the marker view never came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let subject = |v: &BTreeMap<String, String>| v.get("enduser.id").cloned().unwrap_or_default();
    assert!(
        !views.iter().any(|v| subject(v) == "no-tenant"),
        "a tenant-less token's requests are not recorded: {views:?}"
    );
    let refused: Vec<_> = views.iter().filter(|v| subject(v) == "reader-a").collect();
    assert_eq!(refused.len(), 1, "{views:?}");
    assert_eq!(
        refused[0].get("tenant.id").map(String::as_str),
        Some("tenant-a")
    );
    assert_eq!(refused[0]["http.response.status_code"], "403");
    let platform_views: Vec<_> = views.iter().filter(|v| subject(v) == "platform").collect();
    assert_eq!(platform_views.len(), 2, "{views:?}");
    // The refused (400) read is not recorded under the tenant it named.
    assert_eq!(platform_views[0].get("tenant.id"), None);
    assert_eq!(
        platform_views[0]["audit.query"],
        "tenant=tenant-b&user=marker one"
    );
    assert_eq!(
        platform_views[1].get("tenant.id").map(String::as_str),
        Some("tenant-b")
    );
    for view in &views {
        let query = &view["audit.query"];
        assert!(!query.contains("secret"), "{query}");
        assert!(!query.to_ascii_lowercase().contains("token"), "{query}");
    }
    // Only tenant-b reads that tenant-b's readers could make are under tenant-b.
    assert!(views
        .iter()
        .filter(|v| v.get("tenant.id").map(String::as_str) == Some("tenant-b"))
        .all(|v| subject(v) == "platform"));
}
