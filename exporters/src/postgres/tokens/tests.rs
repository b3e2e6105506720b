use super::*;
use tally_model::tokens::CallReport;
use tally_model::AttributionSource;

fn report(from_span: bool, span: Option<&str>, response: Option<&str>) -> TokenUsage {
    TokenUsage {
        id: uuid::Uuid::new_v4(),
        ts: Utc::now(),
        tenant_id: None,
        user_id: None,
        session_id: None,
        service: None,
        trace_id: None,
        span_id: None,
        provider: None,
        operation: None,
        request_model: None,
        response_model: None,
        model: None,
        input_tokens: Some(1),
        output_tokens: Some(1),
        cache_read_tokens: None,
        cache_write_tokens: None,
        reasoning_tokens: None,
        total_tokens: Some(2),
        usage_known: true,
        cost_usd: None,
        outcome: Outcome::Unknown,
        duration_ms: None,
        attribution_source: AttributionSource::None,
        attributes: Default::default(),
        time_to_first_token_ms: None,
        report: CallReport {
            from_span,
            scope: String::new(),
            span_key: span.map(str::to_owned),
            response_key: response.map(str::to_owned),
        },
    }
}

fn kept(rows: &[&TokenUsage]) -> Vec<uuid::Uuid> {
    let rows: Vec<_> = rows.iter().map(|r| (*r, None)).collect();
    one_per_call(&rows).iter().map(|(r, _)| r.id).collect()
}

#[test]
fn one_report_per_call_within_a_batch() {
    let log = report(false, Some("s1"), None);
    let span = report(true, Some("s1"), Some("r1"));
    let by_response = report(false, None, Some("r1"));
    assert_eq!(kept(&[&log, &span, &by_response]), vec![span.id]);
    // Two log records in one span's context: two calls.
    let a = report(false, Some("s2"), Some("ra"));
    let b = report(false, Some("s2"), Some("rb"));
    assert_eq!(kept(&[&a, &b]), vec![a.id, b.id]);
    // Two log records of one response: one call; an exact duplicate once.
    let c = report(false, None, Some("rc"));
    let mut d = report(false, None, Some("rc"));
    d.ts = c.ts + chrono::TimeDelta::seconds(1);
    assert_eq!(kept(&[&d, &c, &c]), vec![c.id]);
    // Another scope is another sender: both kept.
    let mut other = report(false, None, Some("rc"));
    other.report.scope = "tenant-b".into();
    assert_eq!(kept(&[&c, &other]), vec![c.id, other.id]);
}
