//! Checks every decoded request gets before it reaches the pipeline, whatever its transport:
//! trace ids are empty or 16 bytes, span ids empty or 8 bytes. Errors name the record and
//! field, in OTLP/JSON spelling: `resourceSpans[0].scopeSpans[0].spans[3].traceId: 15 bytes,
//! expected 16`.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::Exemplar;
use tally_model::walk::{Record, Request};

use crate::error::{malformed, Malformed};

const TRACE_ID_LEN: usize = 16;
const SPAN_ID_LEN: usize = 8;

/// Checks the ids of every span (and span link) and returns the number of spans.
pub(crate) fn check_traces(request: &ExportTraceServiceRequest) -> Result<usize, Malformed> {
    check_records(request)
}

/// Checks the ids of every log record and returns the number of log records.
pub(crate) fn check_logs(request: &ExportLogsServiceRequest) -> Result<usize, Malformed> {
    check_records(request)
}

/// Checks the ids of every record (trace, span and parent span ids, and those
/// of a span's links) and returns the number of records.
fn check_records<R: Request>(request: &R) -> Result<usize, Malformed> {
    request.try_walk(|position, _, record| {
        let at = || R::json_path(position);
        check_id(record.trace_id(), TRACE_ID_LEN, &at, "traceId")?;
        check_id(record.span_id(), SPAN_ID_LEN, &at, "spanId")?;
        check_id(record.parent_span_id(), SPAN_ID_LEN, &at, "parentSpanId")?;
        for (l, link) in record.links().iter().enumerate() {
            let at = || format!("{}.links[{l}]", at());
            check_id(&link.trace_id, TRACE_ID_LEN, &at, "traceId")?;
            check_id(&link.span_id, SPAN_ID_LEN, &at, "spanId")?;
        }
        Ok::<(), Malformed>(())
    })?;
    Ok(request.record_count())
}

/// Checks the trace and span ids of every exemplar and returns the number of
/// data points (of every metric type).
pub(crate) fn check_metrics(request: &ExportMetricsServiceRequest) -> Result<usize, Malformed> {
    let mut count = 0;
    for (r, resource_metrics) in request.resource_metrics.iter().enumerate() {
        for (s, scope_metrics) in resource_metrics.scope_metrics.iter().enumerate() {
            for (m, metric) in scope_metrics.metrics.iter().enumerate() {
                let at = |kind: &str, i: usize, e: usize| {
                    format!(
                        "resourceMetrics[{r}].scopeMetrics[{s}].metrics[{m}].{kind}.dataPoints[{i}].exemplars[{e}]"
                    )
                };
                let check = |kind: &str, i: usize, exemplars: &[Exemplar]| {
                    for (e, exemplar) in exemplars.iter().enumerate() {
                        let at = || at(kind, i, e);
                        check_id(&exemplar.trace_id, TRACE_ID_LEN, &at, "traceId")?;
                        check_id(&exemplar.span_id, SPAN_ID_LEN, &at, "spanId")?;
                    }
                    Ok::<(), Malformed>(())
                };
                match &metric.data {
                    Some(Data::Gauge(g)) => {
                        for (i, p) in g.data_points.iter().enumerate() {
                            check("gauge", i, &p.exemplars)?;
                        }
                        count += g.data_points.len();
                    }
                    Some(Data::Sum(sum)) => {
                        for (i, p) in sum.data_points.iter().enumerate() {
                            check("sum", i, &p.exemplars)?;
                        }
                        count += sum.data_points.len();
                    }
                    Some(Data::Histogram(h)) => {
                        for (i, p) in h.data_points.iter().enumerate() {
                            check("histogram", i, &p.exemplars)?;
                        }
                        count += h.data_points.len();
                    }
                    Some(Data::ExponentialHistogram(h)) => {
                        for (i, p) in h.data_points.iter().enumerate() {
                            check("exponentialHistogram", i, &p.exemplars)?;
                        }
                        count += h.data_points.len();
                    }
                    Some(Data::Summary(summary)) => count += summary.data_points.len(),
                    // The data is required; OTLP/JSON data with a malformed field also
                    // decodes to none, which must not pass for an empty metric.
                    None => {
                        return malformed(format!(
                            "resourceMetrics[{r}].scopeMetrics[{s}].metrics[{m}] ({:?}): no data, \
                             or malformed data (one of gauge, sum, histogram, \
                             exponentialHistogram, summary is required)",
                            metric.name
                        ))
                    }
                }
            }
        }
    }
    Ok(count)
}

/// An id is either absent (empty) or exactly `expected` bytes. The location is only
/// formatted on failure.
fn check_id(
    id: &[u8],
    expected: usize,
    at: &dyn Fn() -> String,
    field: &str,
) -> Result<(), Malformed> {
    if id.is_empty() || id.len() == expected {
        Ok(())
    } else {
        malformed(format!(
            "{}.{field}: {} bytes, expected {expected}",
            at(),
            id.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::span::Link;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn traces(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn span(trace_id: usize, span_id: usize, parent: usize) -> Span {
        Span {
            trace_id: vec![1; trace_id],
            span_id: vec![2; span_id],
            parent_span_id: vec![3; parent],
            ..Default::default()
        }
    }

    #[test]
    fn valid_and_empty_ids_pass_and_are_counted() {
        let request = traces(vec![span(16, 8, 8), span(0, 0, 0), span(16, 8, 0)]);
        assert_eq!(check_traces(&request), Ok(3));
        assert_eq!(check_traces(&ExportTraceServiceRequest::default()), Ok(0));
    }

    #[test]
    fn wrong_lengths_name_record_and_field() {
        let request = traces(vec![
            span(16, 8, 0),
            span(16, 8, 0),
            span(16, 8, 0),
            span(15, 8, 0),
        ]);
        assert_eq!(
            check_traces(&request).unwrap_err().0,
            "resourceSpans[0].scopeSpans[0].spans[3].traceId: 15 bytes, expected 16"
        );
        let request = traces(vec![span(16, 9, 0)]);
        assert_eq!(
            check_traces(&request).unwrap_err().0,
            "resourceSpans[0].scopeSpans[0].spans[0].spanId: 9 bytes, expected 8"
        );
        let request = traces(vec![span(16, 8, 4)]);
        assert_eq!(
            check_traces(&request).unwrap_err().0,
            "resourceSpans[0].scopeSpans[0].spans[0].parentSpanId: 4 bytes, expected 8"
        );
        let mut bad_link = span(16, 8, 0);
        bad_link.links.push(Link {
            trace_id: vec![0; 17],
            ..Default::default()
        });
        assert_eq!(
            check_traces(&traces(vec![bad_link])).unwrap_err().0,
            "resourceSpans[0].scopeSpans[0].spans[0].links[0].traceId: 17 bytes, expected 16"
        );
    }

    #[test]
    fn metric_points_are_counted_and_exemplar_ids_checked() {
        use opentelemetry_proto::tonic::metrics::v1::{
            Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
            Sum,
        };
        let request = |span_id: usize| ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        Metric {
                            name: "a".into(),
                            data: Some(Data::Sum(Sum {
                                data_points: vec![NumberDataPoint::default(); 2],
                                ..Default::default()
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "b".into(),
                            data: Some(Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint {
                                    exemplars: vec![Exemplar {
                                        trace_id: vec![1; 16],
                                        span_id: vec![2; span_id],
                                        ..Default::default()
                                    }],
                                    ..Default::default()
                                }],
                                ..Default::default()
                            })),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(check_metrics(&request(8)), Ok(3));
        let mut no_data = request(8);
        no_data.resource_metrics[0].scope_metrics[0]
            .metrics
            .push(Metric {
                name: "empty".into(),
                ..Default::default()
            });
        assert!(check_metrics(&no_data)
            .unwrap_err()
            .0
            .starts_with("resourceMetrics[0].scopeMetrics[0].metrics[2] (\"empty\"): no data"));
        assert_eq!(
            check_metrics(&request(3)).unwrap_err().0,
            "resourceMetrics[0].scopeMetrics[0].metrics[1].histogram.dataPoints[0].exemplars[0].spanId: 3 bytes, expected 8"
        );
    }

    #[test]
    fn log_record_ids() {
        let request = |trace_id: usize, span_id: usize| ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        LogRecord::default(),
                        LogRecord {
                            trace_id: vec![0; trace_id],
                            span_id: vec![0; span_id],
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(check_logs(&request(16, 8)), Ok(2));
        assert_eq!(
            check_logs(&request(16, 7)).unwrap_err().0,
            "resourceLogs[0].scopeLogs[0].logRecords[1].spanId: 7 bytes, expected 8"
        );
        assert_eq!(
            check_logs(&request(1, 8)).unwrap_err().0,
            "resourceLogs[0].scopeLogs[0].logRecords[1].traceId: 1 bytes, expected 16"
        );
    }
}
