//! Token usage from OTLP metrics: the data points of `gen_ai.client.token.usage`
//! (tokens per call, by `gen_ai.token.type`) and `gen_ai.client.operation.duration`
//! (seconds per call), histograms in the OpenTelemetry GenAI conventions, become
//! [`TokenMetricPoint`]s with their series, tenant, provider, model and
//! operation (read with the same [`TokenMapping`] keys as spans). Every other
//! data point is counted as not stored, with its reason, for the answer's
//! `partial_success`. Instrumentations record these histograms for every call,
//! sampled or not: they are what a sampled deployment's true totals come from.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, Metric};
use prost::Message;
use sha2::{Digest, Sha256};
use tally_model::token_metrics::{MetricKind, Temporality, TokenMetricPoint};

use super::{Attrs, TokenProcessor};
use crate::otlp_value::as_text;

/// The token histogram of the GenAI conventions.
pub const TOKEN_USAGE_METRIC: &str = "gen_ai.client.token.usage";
/// The call duration histogram of the GenAI conventions (seconds).
pub const OPERATION_DURATION_METRIC: &str = "gen_ai.client.operation.duration";
/// The attribute naming the kind of tokens of a `gen_ai.client.token.usage` point.
const TOKEN_TYPE: &str = "gen_ai.token.type";

/// Why a data point was not stored (the `reason` label of
/// `tally_metric_points_not_stored_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotStored {
    /// Not one of the two GenAI client metrics.
    UnsupportedMetric,
    /// One of them, but not a histogram.
    UnsupportedType,
    /// No time, no sum, an unknown token type or temporality, a negative sum.
    InvalidPoint,
    /// Names another tenant than the sender's ingest key.
    TenantMismatch,
    /// Already counted (set by the writer, see [`tally_model::token_metrics::advance`]).
    Duplicate,
}

impl NotStored {
    /// Every reason, for zero-initialised metric series.
    pub const ALL: [NotStored; 5] = [
        NotStored::UnsupportedMetric,
        NotStored::UnsupportedType,
        NotStored::InvalidPoint,
        NotStored::TenantMismatch,
        NotStored::Duplicate,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::UnsupportedMetric => "unsupported_metric",
            NotStored::UnsupportedType => "unsupported_type",
            NotStored::InvalidPoint => "invalid_point",
            NotStored::TenantMismatch => "tenant_mismatch",
            NotStored::Duplicate => "duplicate",
        }
    }
}

/// The token points of one `MetricsService/Export` request, and what was left out.
#[derive(Debug, Default)]
pub struct MetricBatch {
    /// Points to store.
    pub points: Vec<TokenMetricPoint>,
    /// Points not stored, by reason, each with a first example (a metric name
    /// or what was wrong) for the answer's message.
    pub not_stored: Vec<(NotStored, u64, String)>,
}

impl MetricBatch {
    fn refuse(&mut self, reason: NotStored, n: u64, example: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        match self.not_stored.iter_mut().find(|(r, _, _)| *r == reason) {
            Some((_, count, _)) => *count += n,
            None => self.not_stored.push((reason, n, example())),
        }
    }

    /// Points left out, all reasons together.
    pub fn rejected(&self) -> u64 {
        self.not_stored.iter().map(|(_, n, _)| n).sum()
    }

    /// The `partial_success.error_message` (empty when every point is stored).
    pub fn message(&self) -> String {
        let parts: Vec<String> = self
            .not_stored
            .iter()
            .map(|(reason, n, example)| {
                let what = match reason {
                    NotStored::UnsupportedMetric => {
                        format!("of metrics Tally does not store (only {TOKEN_USAGE_METRIC} and {OPERATION_DURATION_METRIC}), e.g. {example}")
                    }
                    NotStored::UnsupportedType => {
                        format!("not histograms ({example})")
                    }
                    NotStored::InvalidPoint => format!("unusable: {example}"),
                    NotStored::TenantMismatch => format!(
                        "naming another tenant than the API key's (tenant_mismatch): {example}"
                    ),
                    NotStored::Duplicate => "already counted (resent)".to_owned(),
                };
                format!("{n} data point(s) {what}")
            })
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("not stored: {}", parts.join("; "))
        }
    }
}

/// The first bytes of a SHA-256 over a series' identity, in hex: 128 bits, so
/// that distinct series never meet in practice, the same on every instance.
const SERIES_KEY_BYTES: usize = 16;

/// Feeds `attributes` to `hasher` in key order (the order a client lists them
/// in is not part of the series' identity). `buf` and `sorted` are scratch.
fn hash_attributes<'a>(
    hasher: &mut Sha256,
    attributes: &'a [KeyValue],
    sorted: &mut Vec<&'a KeyValue>,
    buf: &mut Vec<u8>,
) {
    sorted.clear();
    sorted.extend(attributes.iter());
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    hasher.update((sorted.len() as u64).to_le_bytes());
    for kv in sorted.iter() {
        hasher.update((kv.key.len() as u64).to_le_bytes());
        hasher.update(kv.key.as_bytes());
        buf.clear();
        if let Some(value) = &kv.value {
            // prost's encoding of a value is deterministic.
            let _ = value.encode(buf);
        }
        hasher.update((buf.len() as u64).to_le_bytes());
        hasher.update(&buf[..]);
    }
}

/// A histogram data point's fields Tally reads: attributes, start, time, count, sum.
type PointFields<'a> = (&'a [KeyValue], u64, u64, u64, Option<f64>);

/// The temporality and points of one histogram metric.
fn histogram_points(metric: &Metric) -> Option<(i32, Vec<PointFields<'_>>)> {
    match &metric.data {
        Some(Data::Histogram(h)) => Some((
            h.aggregation_temporality,
            h.data_points
                .iter()
                .map(|p| {
                    (
                        &p.attributes[..],
                        p.start_time_unix_nano,
                        p.time_unix_nano,
                        p.count,
                        p.sum,
                    )
                })
                .collect(),
        )),
        Some(Data::ExponentialHistogram(h)) => Some((
            h.aggregation_temporality,
            h.data_points
                .iter()
                .map(|p| {
                    (
                        &p.attributes[..],
                        p.start_time_unix_nano,
                        p.time_unix_nano,
                        p.count,
                        p.sum,
                    )
                })
                .collect(),
        )),
        _ => None,
    }
}

/// The number of data points of a metric, whatever its type.
fn point_count(metric: &Metric) -> u64 {
    (match &metric.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }) as u64
}

impl TokenProcessor {
    /// The token points of a `MetricsService/Export` request. `tenant` is the
    /// sender's ingest key's tenant: a point naming none gets it, a point naming
    /// another is not stored (`tenant_mismatch`).
    pub fn metrics(
        &self,
        request: &ExportMetricsServiceRequest,
        tenant: Option<&str>,
    ) -> MetricBatch {
        let mut out = MetricBatch::default();
        let m = &self.mapping;
        let mut attrs = Attrs::new();
        let mut sorted = Vec::new();
        let mut buf = Vec::new();
        for resource_metrics in &request.resource_metrics {
            let resource_attrs = resource_metrics
                .resource
                .as_ref()
                .map_or(&[][..], |r| &r.attributes[..]);
            for scope_metrics in &resource_metrics.scope_metrics {
                let scope = scope_metrics.scope.as_ref();
                let scope_attrs = scope.map_or(&[][..], |s| &s.attributes[..]);
                // The part of every series' identity above the metric.
                let mut prefix = Sha256::new();
                hash_attributes(&mut prefix, resource_attrs, &mut sorted, &mut buf);
                for text in [
                    scope.map_or("", |s| s.name.as_str()),
                    scope.map_or("", |s| s.version.as_str()),
                ] {
                    prefix.update((text.len() as u64).to_le_bytes());
                    prefix.update(text.as_bytes());
                }
                hash_attributes(&mut prefix, scope_attrs, &mut sorted, &mut buf);
                for metric in &scope_metrics.metrics {
                    let duration = match metric.name.as_str() {
                        TOKEN_USAGE_METRIC => false,
                        OPERATION_DURATION_METRIC => true,
                        _ => {
                            out.refuse(NotStored::UnsupportedMetric, point_count(metric), || {
                                metric.name.clone()
                            });
                            continue;
                        }
                    };
                    let Some((temporality, points)) = histogram_points(metric) else {
                        out.refuse(NotStored::UnsupportedType, point_count(metric), || {
                            format!("{} is not a histogram", metric.name)
                        });
                        continue;
                    };
                    let temporality = match AggregationTemporality::try_from(temporality) {
                        Ok(AggregationTemporality::Delta) => Temporality::Delta,
                        Ok(AggregationTemporality::Cumulative) => Temporality::Cumulative,
                        _ => {
                            out.refuse(NotStored::InvalidPoint, points.len() as u64, || {
                                format!("{}: no aggregation temporality", metric.name)
                            });
                            continue;
                        }
                    };
                    for (point_attrs, start_ns, time_ns, count, sum) in points {
                        attrs.fill([resource_attrs, scope_attrs, point_attrs]);
                        let kind = if duration {
                            MetricKind::Duration
                        } else {
                            match as_text(attrs.get(TOKEN_TYPE))
                                .as_deref()
                                .and_then(MetricKind::from_token_type)
                            {
                                Some(kind) => kind,
                                None => {
                                    out.refuse(NotStored::InvalidPoint, 1, || {
                                        format!(
                                            "{}: {TOKEN_TYPE} missing or not one of input, output, cache_read, cache_write, reasoning",
                                            metric.name
                                        )
                                    });
                                    continue;
                                }
                            }
                        };
                        let bad = |what: &str| format!("{}: {what}", metric.name);
                        let Some(sum) = sum else {
                            out.refuse(NotStored::InvalidPoint, 1, || bad("no sum"));
                            continue;
                        };
                        if !sum.is_finite() || sum < 0.0 {
                            out.refuse(NotStored::InvalidPoint, 1, || {
                                bad("a negative or non-finite sum")
                            });
                            continue;
                        }
                        if time_ns == 0 || time_ns > i64::MAX as u64 || start_ns > i64::MAX as u64 {
                            out.refuse(NotStored::InvalidPoint, 1, || {
                                bad("timeUnixNano missing or out of range")
                            });
                            continue;
                        }
                        let named = attrs.identity_text(
                            &m.tenant,
                            &m.metadata_prefixes,
                            &m.metadata_tenant,
                        );
                        let tenant_id = match (tenant, named) {
                            (Some(bound), Some(named)) if named != bound => {
                                out.refuse(NotStored::TenantMismatch, 1, || {
                                    format!("the point names tenant {named:?}, the key is bound to {bound:?}")
                                });
                                continue;
                            }
                            (Some(bound), _) => bound.to_owned(),
                            (None, named) => named.unwrap_or_default(),
                        };
                        let mut hasher = prefix.clone();
                        hasher.update((metric.name.len() as u64).to_le_bytes());
                        hasher.update(metric.name.as_bytes());
                        hash_attributes(&mut hasher, point_attrs, &mut sorted, &mut buf);
                        let digest = hasher.finalize();
                        let series = hex::encode(&digest[..SERIES_KEY_BYTES]);
                        let model = attrs
                            .text(&m.response_model)
                            .or_else(|| attrs.text(&m.request_model))
                            .unwrap_or_default();
                        out.points.push(TokenMetricPoint {
                            tenant_id,
                            series,
                            temporality,
                            start_ns,
                            time_ns,
                            count,
                            sum,
                            kind,
                            provider: attrs.text(&m.provider).unwrap_or_default(),
                            model,
                            operation: attrs.text(&m.operation).unwrap_or_default(),
                        });
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope};
    use opentelemetry_proto::tonic::metrics::v1::{
        Histogram, HistogramDataPoint, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn histogram(
        name: &str,
        temporality: AggregationTemporality,
        points: Vec<HistogramDataPoint>,
    ) -> Metric {
        Metric {
            name: name.into(),
            data: Some(Data::Histogram(Histogram {
                data_points: points,
                aggregation_temporality: temporality as i32,
            })),
            ..Default::default()
        }
    }

    fn point(attrs: Vec<KeyValue>, count: u64, sum: f64) -> HistogramDataPoint {
        HistogramDataPoint {
            attributes: attrs,
            start_time_unix_nano: 1_000,
            time_unix_nano: 2_000,
            count,
            sum: Some(sum),
            ..Default::default()
        }
    }

    fn request(resource: Vec<KeyValue>, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "opentelemetry.instrumentation.openai_v2".into(),
                        ..Default::default()
                    }),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn call_attrs(token_type: &str) -> Vec<KeyValue> {
        vec![
            kv("gen_ai.token.type", token_type),
            kv("gen_ai.request.model", "gpt-4o"),
            kv("gen_ai.response.model", "gpt-4o-2024-08-06"),
            kv("gen_ai.system", "openai"),
            kv("gen_ai.operation.name", "chat"),
        ]
    }

    #[test]
    fn token_and_duration_histograms_become_points() {
        let processor = TokenProcessor::with_defaults();
        let req = request(
            vec![kv("service.name", "app"), kv("tenant.id", "acme")],
            vec![
                histogram(
                    TOKEN_USAGE_METRIC,
                    AggregationTemporality::Cumulative,
                    vec![
                        point(call_attrs("input"), 3, 300.0),
                        point(call_attrs("output"), 3, 90.0),
                        point(call_attrs("cached_input"), 1, 64.0),
                    ],
                ),
                histogram(
                    OPERATION_DURATION_METRIC,
                    AggregationTemporality::Delta,
                    vec![point(call_attrs("input")[1..].to_vec(), 3, 1.5)],
                ),
            ],
        );
        let batch = processor.metrics(&req, None);
        assert_eq!(batch.rejected(), 0, "{}", batch.message());
        assert_eq!(batch.points.len(), 4);
        let input = &batch.points[0];
        assert_eq!(input.kind, MetricKind::Input);
        assert_eq!(input.tenant_id, "acme");
        assert_eq!(input.model, "gpt-4o-2024-08-06");
        assert_eq!(input.provider, "openai");
        assert_eq!(input.operation, "chat");
        assert_eq!((input.count, input.sum), (3, 300.0));
        assert_eq!(input.temporality, Temporality::Cumulative);
        assert_eq!(batch.points[2].kind, MetricKind::CacheRead);
        assert_eq!(batch.points[3].kind, MetricKind::Duration);
        assert_eq!(batch.points[3].temporality, Temporality::Delta);
        // Each stream is its own series; the same stream keeps its key.
        let keys: std::collections::BTreeSet<_> =
            batch.points.iter().map(|p| p.series.clone()).collect();
        assert_eq!(keys.len(), 4);
        let again = processor.metrics(&req, None);
        assert_eq!(again.points[0].series, input.series);
        // Attribute order is not part of the identity.
        let mut reordered = call_attrs("input");
        reordered.reverse();
        let req2 = request(
            vec![kv("tenant.id", "acme"), kv("service.name", "app")],
            vec![histogram(
                TOKEN_USAGE_METRIC,
                AggregationTemporality::Cumulative,
                vec![point(reordered, 1, 1.0)],
            )],
        );
        assert_eq!(
            processor.metrics(&req2, None).points[0].series,
            input.series
        );
    }

    #[test]
    fn other_metrics_and_bad_points_are_refused_politely() {
        let processor = TokenProcessor::with_defaults();
        let mut no_sum = point(call_attrs("input"), 1, 0.0);
        no_sum.sum = None;
        let mut no_time = point(call_attrs("input"), 1, 1.0);
        no_time.time_unix_nano = 0;
        let req = request(
            vec![],
            vec![
                Metric {
                    name: "http.client.request.duration".into(),
                    data: Some(Data::Histogram(Histogram {
                        data_points: vec![HistogramDataPoint::default(); 2],
                        aggregation_temporality: 2,
                    })),
                    ..Default::default()
                },
                Metric {
                    name: TOKEN_USAGE_METRIC.into(),
                    data: Some(Data::Sum(Sum {
                        data_points: vec![NumberDataPoint::default()],
                        ..Default::default()
                    })),
                    ..Default::default()
                },
                histogram(
                    TOKEN_USAGE_METRIC,
                    AggregationTemporality::Delta,
                    vec![
                        no_sum,
                        no_time,
                        point(call_attrs("bananas"), 1, 1.0),
                        point(call_attrs("output"), 2, 20.0),
                    ],
                ),
                histogram(
                    TOKEN_USAGE_METRIC,
                    AggregationTemporality::Unspecified,
                    vec![point(call_attrs("input"), 1, 1.0)],
                ),
            ],
        );
        let batch = processor.metrics(&req, None);
        assert_eq!(batch.points.len(), 1);
        assert_eq!(batch.points[0].sum, 20.0);
        assert_eq!(batch.rejected(), 7);
        let reasons: Vec<(NotStored, u64)> =
            batch.not_stored.iter().map(|(r, n, _)| (*r, *n)).collect();
        assert_eq!(
            reasons,
            [
                (NotStored::UnsupportedMetric, 2),
                (NotStored::UnsupportedType, 1),
                (NotStored::InvalidPoint, 4),
            ]
        );
        let message = batch.message();
        assert!(
            message.contains("http.client.request.duration"),
            "{message}"
        );
        assert!(
            message.starts_with("not stored: 2 data point(s)"),
            "{message}"
        );
    }

    #[test]
    fn an_ingest_key_binds_the_tenant() {
        let processor = TokenProcessor::with_defaults();
        let req = request(
            vec![],
            vec![histogram(
                TOKEN_USAGE_METRIC,
                AggregationTemporality::Delta,
                vec![
                    point(call_attrs("input"), 1, 10.0),
                    point(
                        [call_attrs("output"), vec![kv("tenant.id", "other")]].concat(),
                        1,
                        5.0,
                    ),
                    point(
                        [call_attrs("output"), vec![kv("tenant.id", "acme")]].concat(),
                        1,
                        5.0,
                    ),
                ],
            )],
        );
        let batch = processor.metrics(&req, Some("acme"));
        assert_eq!(batch.points.len(), 2);
        assert!(batch.points.iter().all(|p| p.tenant_id == "acme"));
        assert_eq!(batch.not_stored[0].0, NotStored::TenantMismatch);
        assert_eq!(batch.rejected(), 1);
        let unbound = processor.metrics(&req, None);
        assert_eq!(unbound.points[0].tenant_id, "");
        assert_eq!(unbound.points[1].tenant_id, "other");
    }
}
