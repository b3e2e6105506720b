//! Redaction throughput: `cargo bench -p tally-processors --bench redact`.
//!
//! Builds realistic OTLP requests (100 records each: GenAI spans with prompts
//! and completions, login/activity spans with an email user id, client IP, URL
//! and user agent, log events with a text body), redacts fresh copies and
//! prints records/s on one thread, by thread CPU time (records per second per
//! core, robust on a shared machine) and by wall clock (median and best of 15
//! runs); copies are made outside the timed section.

use std::time::Instant;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tally_config::RedactConfig;
use tally_processors::redact::Redactor;

const RECORDS_PER_REQUEST: usize = 100;
const REQUESTS_PER_RUN: usize = 100;
const RUNS: usize = 15;

fn s(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn i(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn resource() -> Resource {
    Resource {
        attributes: vec![
            s("service.name", "chat-backend"),
            s("service.version", "2.14.1"),
            s("deployment.environment.name", "production"),
            s("host.name", "ip-10-0-3-17.eu-west-1.compute.internal"),
            s("telemetry.sdk.name", "opentelemetry"),
            s("telemetry.sdk.language", "python"),
            s("telemetry.sdk.version", "1.38.0"),
        ],
        ..Default::default()
    }
}

const PROMPT: &str = "You are a helpful assistant for ACME Corp. The user asks: can you summarise the attached quarterly report and list the three biggest risks for the sales team in EMEA? Please keep it under 200 words and mention the contact person if one is named in the report.";
const COMPLETION: &str = "Here is a short summary of the quarterly report. Revenue grew 12% year over year, driven mostly by the enterprise segment, while SMB churn increased slightly. The three biggest risks for the EMEA sales team are: (1) longer procurement cycles at large accounts, (2) currency exposure after the recent pricing change, and (3) a thin pipeline for Q3 in the DACH region. The report names Maria Lopez as the contact for follow-up questions; she can be reached through the regional sales channel.";

fn genai_span(n: usize) -> Span {
    Span {
        trace_id: vec![7; 16],
        span_id: (n as u64 + 1).to_be_bytes().to_vec(),
        name: "chat gpt-4o-mini".into(),
        start_time_unix_nano: 1_700_000_000_000_000_000 + n as u64,
        attributes: vec![
            s("activity.action", "chat.completion.create"),
            s("enduser.id", &format!("user{n}@example.com")),
            s("tenant.id", "acme"),
            s("session.id", "b3c1f0de-6a7e-4c1e-9d0b-0f1e2d3c4b5a"),
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.provider.name", "openai"),
            s("gen_ai.request.model", "gpt-4o-mini"),
            s("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
            i("gen_ai.usage.input_tokens", 812),
            i("gen_ai.usage.output_tokens", 164),
            s("gen_ai.prompt.0.role", "user"),
            s("gen_ai.prompt.0.content", PROMPT),
            s("gen_ai.completion.0.content", COMPLETION),
            s("server.address", "api.openai.com"),
            i("http.response.status_code", 200),
        ],
        ..Default::default()
    }
}

fn activity_span(n: usize) -> Span {
    Span {
        trace_id: vec![9; 16],
        span_id: (n as u64 + 1).to_be_bytes().to_vec(),
        name: "POST /api/v1/login".into(),
        start_time_unix_nano: 1_700_000_000_000_000_000 + n as u64,
        attributes: vec![
            s("activity.action", "auth.login.success"),
            s("enduser.id", &format!("u-{n:08}")),
            s("tenant.id", "acme"),
            s("session.id", "0f1e2d3c-4b5a-4c1e-9d0b-b3c1f0de6a7e"),
            s("client.address", &format!("203.0.113.{}", n % 250)),
            s("http.request.method", "POST"),
            s("http.route", "/api/v1/login"),
            s("url.full", "https://app.example.com/api/v1/login?next=%2Fdashboard&lang=en"),
            s("user_agent.original", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15"),
            i("http.response.status_code", 200),
            s("auth.method", "password"),
            s("auth.mfa", "totp"),
            s("user.email", &format!("person{n}@example.org")),
            s("network.protocol.version", "1.1"),
            s("code.function", "login_handler"),
        ],
        ..Default::default()
    }
}

fn traces_request(offset: usize) -> ExportTraceServiceRequest {
    let spans = (0..RECORDS_PER_REQUEST)
        .map(|n| {
            if n % 2 == 0 {
                genai_span(offset + n)
            } else {
                activity_span(offset + n)
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "opentelemetry.instrumentation.openai".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn logs_request(offset: usize) -> ExportLogsServiceRequest {
    let records = (0..RECORDS_PER_REQUEST)
        .map(|n| LogRecord {
            time_unix_nano: 1_700_000_000_000_000_000 + n as u64,
            event_name: "file.shared".into(),
            body: Some(AnyValue {
                value: Some(Value::StringValue(format!(
                    "user u-{:08} shared report-{n}.pdf with a colleague from the finance team; link expires in 7 days",
                    offset + n
                ))),
            }),
            attributes: vec![
                s("activity.action", "file.share.create"),
                s("enduser.id", &format!("u-{:08}", offset + n)),
                s("tenant.id", "acme"),
                s("file.name", &format!("report-{n}.pdf")),
                s("activity.resource.type", "file"),
                s("activity.resource.id", &format!("f-{n:06}")),
                s("share.recipient", "finance-team@example.com"),
                s("client.address", "198.51.100.23"),
                s("http.route", "/api/v1/files/{id}/share"),
                i("http.response.status_code", 201),
            ],
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource()),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// CPU time of this thread, in seconds: on a shared machine it leaves out the
/// time the thread waited for a core, so it measures "per core" more fairly
/// than the wall clock.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure<R: Clone>(label: &str, template: &[R], mut redact: impl FnMut(&mut R) -> u64) {
    let mut rates = Vec::new();
    let mut cpu_rates = Vec::new();
    let mut redactions = 0;
    let records = (template.len() * RECORDS_PER_REQUEST) as f64;
    for _ in 0..RUNS {
        let mut batch: Vec<R> = template.to_vec();
        let start = Instant::now();
        let cpu_start = thread_cpu_secs();
        redactions = 0;
        for req in &mut batch {
            redactions += redact(req);
        }
        let cpu = thread_cpu_secs() - cpu_start;
        let secs = start.elapsed().as_secs_f64();
        rates.push(records / secs);
        if cpu > 0.0 {
            cpu_rates.push(records / cpu);
        }
        std::hint::black_box(&batch);
    }
    let m = median(rates.clone());
    let hi = rates.iter().copied().fold(0.0, f64::max);
    let cpu = if cpu_rates.is_empty() {
        0.0
    } else {
        median(cpu_rates)
    };
    println!(
        "{label:<44} {:>9.0} records/s per core (thread CPU time, median of {RUNS}; {:.2} µs/record) | wall clock: median {m:.0}, best {hi:.0} | {redactions} redactions per run",
        cpu,
        if cpu > 0.0 { 1e6 / cpu } else { 0.0 },
    );
}

fn main() {
    let key = [42u8; 32];
    let redactor = match Redactor::new(&RedactConfig::default(), &key) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let traces: Vec<_> = (0..REQUESTS_PER_RUN)
        .map(|r| traces_request(r * RECORDS_PER_REQUEST))
        .collect();
    let logs: Vec<_> = (0..REQUESTS_PER_RUN)
        .map(|r| logs_request(r * RECORDS_PER_REQUEST))
        .collect();
    println!(
        "redact bench: {} requests x {} records per run, one thread, default config",
        REQUESTS_PER_RUN, RECORDS_PER_REQUEST
    );
    {
        let mut one = traces[0].clone();
        let counts = redactor.redact_traces(&mut one);
        println!(
            "per traces request: {:?}",
            counts.iter().collect::<Vec<_>>()
        );
        let mut one = logs[0].clone();
        let counts = redactor.redact_logs(&mut one);
        println!(
            "per logs request:   {:?}",
            counts.iter().collect::<Vec<_>>()
        );
    }
    measure("traces (50% GenAI with prompt, 50% login)", &traces, |r| {
        redactor.redact_traces(r).total()
    });
    measure("logs (file.shared events, text body)", &logs, |r| {
        redactor.redact_logs(r).total()
    });
    let allow = RedactConfig {
        allowlist: tally_config::AllowlistConfig {
            enabled: true,
            keys: vec!["http.route".into()],
        },
        ..RedactConfig::default()
    };
    let allow = match Redactor::new(&allow, &key) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    measure("traces, allowlist mode", &traces, |r| {
        allow.redact_traces(r).total()
    });
    // Reference: the copy the timed loop does not include.
    measure("reference: cloning the traces requests", &traces, |r| {
        std::hint::black_box(r.clone());
        0
    });
}
