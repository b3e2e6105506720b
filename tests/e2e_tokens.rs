//! The token-usage ledger end to end: span sets shaped exactly as each
//! instrumentation emits them (OpenTelemetry GenAI current and deprecated,
//! OpenLLMetry, OpenInference, Vercel AI SDK) go over OTLP/HTTP (protobuf) to a
//! running Tally; the `token_usage` rows read from PostgreSQL must equal what
//! the corpus says, computed here from the corpus definition. Then trace
//! attribution in both arrival orders, and the real Rust SDK.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{eventually, http_span_provider, Tally, TestDatabase};
use prost::Message;
use tally_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tally_model::otlp::common::v1::{any_value::Value, AnyValue, KeyValue};
use tally_model::otlp::resource::v1::Resource;
use tally_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

#[derive(Clone)]
enum V {
    S(&'static str),
    I(i64),
    D(f64),
}

fn kv(key: &str, value: &V) -> KeyValue {
    let value = match value {
        V::S(s) => Value::StringValue((*s).into()),
        V::I(i) => Value::IntValue(*i),
        V::D(d) => Value::DoubleValue(*d),
    };
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// What the test author knows a counted model call reported (independent of Tally).
#[derive(Clone, Debug, PartialEq)]
struct Call {
    model: &'static str,
    input: i64,
    output: i64,
    cache_read: i64,
    total: i64,
}

/// One span of the corpus: its attributes as the instrumentation writes them,
/// and whether it is a model call that must be counted (`Some`) — `None` for
/// agent/workflow/chain/tool spans and for request spans.
struct CorpusSpan {
    id: u8,
    parent: Option<u8>,
    name: &'static str,
    attrs: Vec<(&'static str, V)>,
    /// `Some(Some(call))`: counted with this usage; `Some(None)`: counted, usage unknown.
    counted: Option<Option<Call>>,
}

struct Case {
    name: &'static str,
    trace: u8,
    spans: Vec<CorpusSpan>,
}

fn sp(
    id: u8,
    parent: Option<u8>,
    name: &'static str,
    attrs: Vec<(&'static str, V)>,
    counted: Option<Option<Call>>,
) -> CorpusSpan {
    CorpusSpan {
        id,
        parent,
        name,
        attrs,
        counted,
    }
}

fn call(model: &'static str, input: i64, output: i64, cache_read: i64) -> Option<Option<Call>> {
    Some(Some(Call {
        model,
        input,
        output,
        cache_read,
        total: input + output,
    }))
}

use V::{D, I, S};

fn corpus() -> Vec<Case> {
    vec![
        Case {
            name: "genai-current single chat with cached input",
            trace: 1,
            spans: vec![sp(
                1,
                None,
                "chat gpt-4o",
                vec![
                    ("gen_ai.operation.name", S("chat")),
                    ("gen_ai.provider.name", S("openai")),
                    ("gen_ai.request.model", S("gpt-4o")),
                    ("gen_ai.response.model", S("gpt-4o-2024-08-06")),
                    ("gen_ai.response.id", S("chatcmpl-1")),
                    ("gen_ai.response.finish_reasons", S("stop")),
                    ("gen_ai.usage.input_tokens", I(1200)),
                    ("gen_ai.usage.cache_read.input_tokens", I(200)),
                    ("gen_ai.usage.output_tokens", I(300)),
                    ("server.address", S("api.openai.com")),
                ],
                call("gpt-4o-2024-08-06", 1200, 300, 200),
            )],
        },
        Case {
            name: "genai-current streaming with usage",
            trace: 2,
            spans: vec![sp(
                1,
                None,
                "chat gpt-4o-mini",
                vec![
                    ("gen_ai.operation.name", S("chat")),
                    ("gen_ai.provider.name", S("openai")),
                    ("gen_ai.request.model", S("gpt-4o-mini")),
                    ("gen_ai.response.model", S("gpt-4o-mini-2024-07-18")),
                    ("gen_ai.usage.input_tokens", I(500)),
                    ("gen_ai.usage.output_tokens", I(80)),
                ],
                call("gpt-4o-mini-2024-07-18", 500, 80, 0),
            )],
        },
        Case {
            name: "genai-current streaming without usage",
            trace: 3,
            spans: vec![sp(
                1,
                None,
                "chat gpt-4o",
                vec![
                    ("gen_ai.operation.name", S("chat")),
                    ("gen_ai.provider.name", S("openai")),
                    ("gen_ai.request.model", S("gpt-4o")),
                ],
                Some(None),
            )],
        },
        Case {
            name: "genai-current agent wrapping two calls and a tool",
            trace: 4,
            spans: vec![
                sp(
                    1,
                    None,
                    "invoke_agent planner",
                    vec![
                        ("gen_ai.operation.name", S("invoke_agent")),
                        ("gen_ai.agent.name", S("planner")),
                        ("gen_ai.provider.name", S("anthropic")),
                        ("gen_ai.request.model", S("claude-sonnet-4-5")),
                        ("gen_ai.usage.input_tokens", I(700)),
                        ("gen_ai.usage.output_tokens", I(70)),
                    ],
                    None,
                ),
                sp(
                    2,
                    Some(1),
                    "chat claude-sonnet-4-5",
                    vec![
                        ("gen_ai.operation.name", S("chat")),
                        ("gen_ai.provider.name", S("anthropic")),
                        ("gen_ai.request.model", S("claude-sonnet-4-5")),
                        ("gen_ai.response.model", S("claude-sonnet-4-5-20250929")),
                        ("gen_ai.usage.input_tokens", I(300)),
                        ("gen_ai.usage.output_tokens", I(30)),
                        ("gen_ai.response.finish_reasons", S("tool_use")),
                    ],
                    call("claude-sonnet-4-5-20250929", 300, 30, 0),
                ),
                sp(
                    3,
                    Some(1),
                    "execute_tool get_weather",
                    vec![
                        ("gen_ai.operation.name", S("execute_tool")),
                        ("gen_ai.tool.name", S("get_weather")),
                    ],
                    None,
                ),
                sp(
                    4,
                    Some(1),
                    "chat claude-sonnet-4-5",
                    vec![
                        ("gen_ai.operation.name", S("chat")),
                        ("gen_ai.provider.name", S("anthropic")),
                        ("gen_ai.request.model", S("claude-sonnet-4-5")),
                        ("gen_ai.response.model", S("claude-sonnet-4-5-20250929")),
                        ("gen_ai.usage.input_tokens", I(400)),
                        ("gen_ai.usage.output_tokens", I(40)),
                    ],
                    call("claude-sonnet-4-5-20250929", 400, 40, 0),
                ),
            ],
        },
        Case {
            name: "genai-deprecated prompt/completion tokens as string and double",
            trace: 5,
            spans: vec![sp(
                1,
                None,
                "chat gpt-4o-mini",
                vec![
                    ("gen_ai.system", S("openai")),
                    ("gen_ai.operation.name", S("chat")),
                    ("gen_ai.request.model", S("gpt-4o-mini")),
                    ("gen_ai.usage.prompt_tokens", S("150")),
                    ("gen_ai.usage.completion_tokens", D(25.0)),
                ],
                call("gpt-4o-mini", 150, 25, 0),
            )],
        },
        Case {
            name: "openllmetry workflow, task, llm call and tool",
            trace: 6,
            spans: vec![
                sp(
                    1,
                    None,
                    "answer.workflow",
                    vec![
                        ("traceloop.span.kind", S("workflow")),
                        ("traceloop.workflow.name", S("answer")),
                        ("traceloop.entity.name", S("answer")),
                        ("traceloop.association.properties.user_id", S("ol-user")),
                        ("traceloop.association.properties.tenant_id", S("ol-tenant")),
                    ],
                    None,
                ),
                sp(
                    2,
                    Some(1),
                    "search.tool",
                    vec![
                        ("traceloop.span.kind", S("tool")),
                        ("traceloop.entity.name", S("search")),
                        ("traceloop.association.properties.user_id", S("ol-user")),
                    ],
                    None,
                ),
                sp(
                    3,
                    Some(1),
                    "openai.chat",
                    vec![
                        ("llm.request.type", S("chat")),
                        ("gen_ai.system", S("openai")),
                        ("gen_ai.request.model", S("gpt-4.1")),
                        ("gen_ai.response.model", S("gpt-4.1-2025-04-14")),
                        ("gen_ai.usage.prompt_tokens", I(900)),
                        ("gen_ai.usage.completion_tokens", I(120)),
                        ("llm.usage.total_tokens", I(1020)),
                        ("gen_ai.usage.cache_read_input_tokens", I(512)),
                        ("gen_ai.prompt.0.role", S("user")),
                        ("gen_ai.prompt.0.content", S("what is the weather")),
                        ("traceloop.association.properties.user_id", S("ol-user")),
                        ("traceloop.association.properties.tenant_id", S("ol-tenant")),
                    ],
                    call("gpt-4.1-2025-04-14", 900, 120, 512),
                ),
                sp(
                    4,
                    Some(1),
                    "openai.chat",
                    vec![
                        ("llm.request.type", S("chat")),
                        ("llm.is_streaming", V::S("true")),
                        ("gen_ai.system", S("openai")),
                        ("gen_ai.request.model", S("gpt-4.1")),
                        ("gen_ai.usage.prompt_tokens", I(0)),
                        ("gen_ai.usage.completion_tokens", I(0)),
                    ],
                    Some(None),
                ),
            ],
        },
        Case {
            name: "openinference agent, chain, llm, embedding and tool",
            trace: 7,
            spans: vec![
                sp(
                    1,
                    None,
                    "Agent",
                    vec![
                        ("openinference.span.kind", S("AGENT")),
                        ("llm.token_count.prompt", I(250)),
                        ("llm.token_count.completion", I(60)),
                        ("llm.token_count.total", I(310)),
                        ("user.id", S("oi-user")),
                        ("session.id", S("oi-session")),
                    ],
                    None,
                ),
                sp(
                    2,
                    Some(1),
                    "RunnableSequence",
                    vec![
                        ("openinference.span.kind", S("CHAIN")),
                        ("llm.token_count.prompt", I(250)),
                        ("llm.token_count.completion", I(60)),
                        ("llm.token_count.total", I(310)),
                    ],
                    None,
                ),
                sp(
                    3,
                    Some(2),
                    "ChatOpenAI",
                    vec![
                        ("openinference.span.kind", S("LLM")),
                        ("llm.model_name", S("gpt-4o-2024-08-06")),
                        ("llm.provider", S("openai")),
                        ("llm.system", S("openai")),
                        ("llm.token_count.prompt", I(250)),
                        ("llm.token_count.completion", I(60)),
                        ("llm.token_count.total", I(310)),
                        ("llm.token_count.prompt_details.cache_read", I(100)),
                        ("user.id", S("oi-user")),
                        ("session.id", S("oi-session")),
                    ],
                    call("gpt-4o-2024-08-06", 250, 60, 100),
                ),
                sp(
                    4,
                    Some(1),
                    "OpenAIEmbeddings",
                    vec![
                        ("openinference.span.kind", S("EMBEDDING")),
                        ("embedding.model_name", S("text-embedding-3-small")),
                        ("llm.model_name", S("text-embedding-3-small")),
                        ("llm.token_count.prompt", I(64)),
                        ("llm.token_count.total", I(64)),
                    ],
                    Some(Some(Call {
                        model: "text-embedding-3-small",
                        input: 64,
                        output: 0,
                        cache_read: 0,
                        total: 64,
                    })),
                ),
                sp(
                    5,
                    Some(1),
                    "lookup",
                    vec![
                        ("openinference.span.kind", S("TOOL")),
                        ("tool.name", S("lookup")),
                    ],
                    None,
                ),
            ],
        },
        Case {
            name: "vercel ai sdk generateText with a tool call, and streamText",
            trace: 8,
            spans: vec![
                sp(
                    1,
                    None,
                    "ai.generateText",
                    vec![
                        ("operation.name", S("ai.generateText weather")),
                        ("ai.operationId", S("ai.generateText")),
                        ("ai.model.id", S("gpt-4o")),
                        ("ai.model.provider", S("openai.chat")),
                        ("ai.telemetry.functionId", S("weather")),
                        ("ai.telemetry.metadata.userId", S("v-user")),
                        ("ai.usage.promptTokens", I(210)),
                        ("ai.usage.completionTokens", I(21)),
                    ],
                    None,
                ),
                sp(
                    2,
                    Some(1),
                    "ai.generateText.doGenerate",
                    vec![
                        ("operation.name", S("ai.generateText.doGenerate weather")),
                        ("ai.operationId", S("ai.generateText.doGenerate")),
                        ("ai.model.id", S("gpt-4o")),
                        ("ai.model.provider", S("openai.chat")),
                        ("ai.telemetry.metadata.userId", S("v-user")),
                        ("ai.response.model", S("gpt-4o-2024-08-06")),
                        ("ai.usage.promptTokens", I(110)),
                        ("ai.usage.completionTokens", I(11)),
                        ("gen_ai.system", S("openai.chat")),
                        ("gen_ai.request.model", S("gpt-4o")),
                        ("gen_ai.response.model", S("gpt-4o-2024-08-06")),
                        ("gen_ai.usage.input_tokens", I(110)),
                        ("gen_ai.usage.output_tokens", I(11)),
                    ],
                    call("gpt-4o-2024-08-06", 110, 11, 0),
                ),
                sp(
                    3,
                    Some(1),
                    "ai.toolCall",
                    vec![
                        ("operation.name", S("ai.toolCall weather")),
                        ("ai.operationId", S("ai.toolCall")),
                        ("ai.toolCall.name", S("weather")),
                        ("ai.toolCall.id", S("call_1")),
                    ],
                    None,
                ),
                sp(
                    4,
                    Some(1),
                    "ai.generateText.doGenerate",
                    vec![
                        ("operation.name", S("ai.generateText.doGenerate weather")),
                        ("ai.operationId", S("ai.generateText.doGenerate")),
                        ("ai.model.id", S("gpt-4o")),
                        ("ai.model.provider", S("openai.chat")),
                        ("ai.response.model", S("gpt-4o-2024-08-06")),
                        ("ai.usage.promptTokens", I(100)),
                        ("ai.usage.completionTokens", I(10)),
                        ("gen_ai.system", S("openai.chat")),
                        ("gen_ai.request.model", S("gpt-4o")),
                        ("gen_ai.response.model", S("gpt-4o-2024-08-06")),
                        ("gen_ai.usage.input_tokens", I(100)),
                        ("gen_ai.usage.output_tokens", I(10)),
                    ],
                    call("gpt-4o-2024-08-06", 100, 10, 0),
                ),
                sp(
                    5,
                    None,
                    "ai.streamText",
                    vec![
                        ("ai.operationId", S("ai.streamText")),
                        ("ai.model.id", S("claude-3-5-haiku-latest")),
                        ("ai.model.provider", S("anthropic.messages")),
                        ("ai.usage.promptTokens", I(40)),
                        ("ai.usage.completionTokens", I(8)),
                    ],
                    None,
                ),
                sp(
                    6,
                    Some(5),
                    "ai.streamText.doStream",
                    vec![
                        ("ai.operationId", S("ai.streamText.doStream")),
                        ("ai.model.id", S("claude-3-5-haiku-latest")),
                        ("ai.model.provider", S("anthropic.messages")),
                        ("ai.usage.promptTokens", I(40)),
                        ("ai.usage.completionTokens", I(8)),
                        ("gen_ai.system", S("anthropic.messages")),
                        ("gen_ai.request.model", S("claude-3-5-haiku-latest")),
                        ("gen_ai.usage.input_tokens", I(40)),
                        ("gen_ai.usage.output_tokens", I(8)),
                        ("ai.stream.msToFirstChunk", D(120.5)),
                    ],
                    call("claude-3-5-haiku-latest", 40, 8, 0),
                ),
            ],
        },
        Case {
            name: "openllmetry langchain chat span over the openai chat span (both instrumented)",
            trace: 9,
            spans: vec![
                sp(
                    1,
                    None,
                    "ChatOpenAI.chat",
                    vec![
                        ("llm.request.type", S("chat")),
                        ("gen_ai.system", S("openai")),
                        ("gen_ai.request.model", S("gpt-4o-mini")),
                        ("gen_ai.response.model", S("gpt-4o-mini-2024-07-18")),
                        ("gen_ai.usage.prompt_tokens", I(77)),
                        ("gen_ai.usage.completion_tokens", I(7)),
                        ("llm.usage.total_tokens", I(84)),
                    ],
                    None,
                ),
                sp(
                    2,
                    Some(1),
                    "openai.chat",
                    vec![
                        ("llm.request.type", S("chat")),
                        ("gen_ai.system", S("openai")),
                        ("gen_ai.request.model", S("gpt-4o-mini")),
                        ("gen_ai.response.model", S("gpt-4o-mini-2024-07-18")),
                        ("gen_ai.usage.prompt_tokens", I(77)),
                        ("gen_ai.usage.completion_tokens", I(7)),
                        ("llm.usage.total_tokens", I(84)),
                    ],
                    call("gpt-4o-mini-2024-07-18", 77, 7, 0),
                ),
            ],
        },
        Case {
            name: "an app's own unmarked span summing two genai calls",
            trace: 10,
            spans: vec![
                sp(
                    1,
                    None,
                    "summarize",
                    vec![
                        ("app.step", S("summarize")),
                        ("gen_ai.request.model", S("gpt-4o")),
                        ("gen_ai.usage.input_tokens", I(30)),
                        ("gen_ai.usage.output_tokens", I(6)),
                    ],
                    None,
                ),
                sp(
                    2,
                    Some(1),
                    "chat gpt-4o",
                    vec![
                        ("gen_ai.operation.name", S("chat")),
                        ("gen_ai.provider.name", S("openai")),
                        ("gen_ai.request.model", S("gpt-4o")),
                        ("gen_ai.response.model", S("gpt-4o-2024-08-06")),
                        ("gen_ai.usage.input_tokens", I(10)),
                        ("gen_ai.usage.output_tokens", I(2)),
                    ],
                    call("gpt-4o-2024-08-06", 10, 2, 0),
                ),
                sp(
                    3,
                    Some(1),
                    "chat gpt-4o",
                    vec![
                        ("gen_ai.operation.name", S("chat")),
                        ("gen_ai.provider.name", S("openai")),
                        ("gen_ai.request.model", S("gpt-4o")),
                        ("gen_ai.response.model", S("gpt-4o-2024-08-06")),
                        ("gen_ai.usage.input_tokens", I(20)),
                        ("gen_ai.usage.output_tokens", I(4)),
                    ],
                    call("gpt-4o-2024-08-06", 20, 4, 0),
                ),
            ],
        },
    ]
}

/// The test's own price list (US dollars per million: input, cached input,
/// output), the providers' list prices as of 2026, for the models of the corpus.
fn price(model: &str) -> (f64, f64, f64) {
    match model {
        "gpt-4o-2024-08-06" => (2.50, 1.25, 10.00),
        "gpt-4o-mini-2024-07-18" | "gpt-4o-mini" => (0.15, 0.075, 0.60),
        "gpt-4.1-2025-04-14" => (2.00, 0.50, 8.00),
        "claude-sonnet-4-5-20250929" => (3.00, 0.30, 15.00),
        "claude-3-5-haiku-latest" => (0.80, 0.08, 4.00),
        "text-embedding-3-small" => (0.02, 0.02, 0.0),
        other => panic!("no test price for {other}"),
    }
}

fn cost(c: &Call) -> f64 {
    let (input, cached, output) = price(c.model);
    ((c.input - c.cache_read) as f64 * input
        + c.cache_read as f64 * cached
        + c.output as f64 * output)
        / 1e6
}

fn trace_id(case: u8, salt: u8) -> Vec<u8> {
    let mut id = vec![0xa0 ^ salt; 16];
    id[15] = case;
    id
}

fn span_id(case: u8, id: u8) -> Vec<u8> {
    vec![0, 0, 0, 0, 0, case, 0x10, id]
}

fn request_of(spans: Vec<Span>, service: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    &S(Box::leak(service.to_string().into_boxed_str())),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn to_span(case: &Case, s: &CorpusSpan, salt: u8, start: u64) -> Span {
    Span {
        trace_id: trace_id(case.trace, salt),
        span_id: span_id(case.trace, s.id),
        parent_span_id: s.parent.map(|p| span_id(case.trace, p)).unwrap_or_default(),
        name: s.name.into(),
        kind: 3,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 250_000_000,
        attributes: s.attrs.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Default::default()
    }
}

async fn post(tally: &Tally, request: &ExportTraceServiceRequest) {
    let response = reqwest::Client::new()
        .post(tally.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .expect("POST /v1/traces");
    assert_eq!(response.status().as_u16(), 200, "export refused");
}

#[derive(Debug, PartialEq)]
struct Row {
    input: Option<i64>,
    output: Option<i64>,
    cache_read: Option<i64>,
    total: Option<i64>,
    usage_known: bool,
    model: Option<String>,
    cost: Option<f64>,
}

async fn rows_by_span(db: &TestDatabase) -> BTreeMap<String, Row> {
    let client = db.client().await;
    client
        .query(
            "SELECT span_id, input_tokens, output_tokens, cache_read_tokens, total_tokens, \
                 usage_known, model, cost_usd::float8 FROM token_usage",
            &[],
        )
        .await
        .expect("query token_usage")
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                Row {
                    input: r.get(1),
                    output: r.get(2),
                    cache_read: r.get(3),
                    total: r.get(4),
                    usage_known: r.get(5),
                    model: r.get(6),
                    cost: r.get(7),
                },
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrumentation_corpus_is_counted_exactly_once_and_priced() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let cases = corpus();
    let start = now_nanos();

    // One export per case, children listed before parents as SDKs export them.
    let mut expected: BTreeMap<String, (Option<Call>, &str)> = BTreeMap::new();
    for case in &cases {
        let spans = case
            .spans
            .iter()
            .rev()
            .map(|s| to_span(case, s, 0, start))
            .collect();
        post(&tally, &request_of(spans, "corpus")).await;
        for s in &case.spans {
            if let Some(call) = &s.counted {
                expected.insert(hex(&span_id(case.trace, s.id)), (call.clone(), case.name));
            }
        }
    }
    // Acknowledged means committed: no waiting needed.
    let rows = rows_by_span(&database).await;
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "exactly the model calls are rows"
    );
    let (mut sum_in, mut sum_out, mut sum_cached, mut sum_total, mut sum_cost) = (0, 0, 0, 0, 0.0);
    for (span, (call, case)) in &expected {
        let row = &rows[span];
        match call {
            Some(c) => {
                assert!(row.usage_known, "{case}: {row:?}");
                assert_eq!(row.input, Some(c.input), "{case}");
                assert_eq!(row.output.unwrap_or(0), c.output, "{case}");
                assert_eq!(row.cache_read.unwrap_or(0), c.cache_read, "{case}");
                assert_eq!(row.total, Some(c.total), "{case}");
                assert_eq!(row.model.as_deref(), Some(c.model), "{case}");
                let want = cost(c);
                let got = row.cost.unwrap_or_else(|| panic!("{case}: not priced"));
                assert!((got - want).abs() < 1e-9, "{case}: cost {got} != {want}");
                sum_in += c.input;
                sum_out += c.output;
                sum_cached += c.cache_read;
                sum_total += c.total;
                sum_cost += want;
            }
            None => {
                assert!(!row.usage_known, "{case}: {row:?}");
                assert_eq!(
                    (row.input, row.output, row.total, row.cost),
                    (None, None, None, None),
                    "{case}: unknown usage is NULL, not 0"
                );
            }
        }
    }

    // The totals over the table, as a rollup or the API would sum them.
    let client = database.client().await;
    let totals = client
        .query_one(
            "SELECT count(*), sum(input_tokens)::int8, sum(output_tokens)::int8, \
                 sum(cache_read_tokens)::int8, sum(total_tokens)::int8, sum(cost_usd)::float8, \
                 count(*) FILTER (WHERE NOT usage_known) FROM token_usage",
            &[],
        )
        .await
        .expect("totals");
    let unknown = expected.values().filter(|(c, _)| c.is_none()).count() as i64;
    assert_eq!(totals.get::<_, i64>(0), expected.len() as i64);
    assert_eq!(totals.get::<_, Option<i64>>(1), Some(sum_in));
    assert_eq!(totals.get::<_, Option<i64>>(2), Some(sum_out));
    assert_eq!(totals.get::<_, Option<i64>>(3), Some(sum_cached));
    assert_eq!(totals.get::<_, Option<i64>>(4), Some(sum_total));
    assert!((totals.get::<_, f64>(5) - sum_cost).abs() < 1e-8);
    assert_eq!(totals.get::<_, i64>(6), unknown);

    // Record attribution from OpenLLMetry association properties, OpenInference
    // user.id/session.id and Vercel telemetry metadata.
    let who = client
        .query(
            "SELECT span_id, user_id, tenant_id, session_id, attribution_source FROM token_usage \
             WHERE usage_known AND attribution_source = 'record' ORDER BY span_id",
            &[],
        )
        .await
        .expect("attribution");
    let got: Vec<(String, Option<String>, String, Option<String>)> = who
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                hex(&span_id(6, 3)),
                Some("ol-user".into()),
                "ol-tenant".into(),
                None
            ),
            (
                hex(&span_id(7, 3)),
                Some("oi-user".into()),
                String::new(),
                Some("oi-session".into())
            ),
            (
                hex(&span_id(8, 2)),
                Some("v-user".into()),
                String::new(),
                None
            ),
        ]
    );

    // An SDK retry of every export stores nothing new.
    for case in &cases {
        let spans = case
            .spans
            .iter()
            .map(|s| to_span(case, s, 0, start))
            .collect();
        post(&tally, &request_of(spans, "corpus")).await;
    }
    assert_eq!(rows_by_span(&database).await.len(), expected.len());
    // No prompt text is stored.
    let content: i64 = client
        .query_one(
            "SELECT count(*) FROM token_usage WHERE attributes::text LIKE '%weather%is%' \
             OR attributes ? 'gen_ai.prompt.0.content'",
            &[],
        )
        .await
        .expect("content")
        .get(0);
    assert_eq!(content, 0);

    // The daily rollup and `/tokens/usage` give the same totals: fold everything
    // now (no attribution delay), then sum the API's day × model groups.
    let mut rollup_client = database.client().await;
    tally_exporters::postgres::RollupJob::new(std::time::Duration::ZERO)
        .run_once(&mut rollup_client)
        .await
        .expect("rollup");
    let (status, usage) = common::get_json(
        &tally.api_url("/api/v1/tokens/usage?grain=day&group_by=model&limit=10000"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    let items = usage["items"].as_array().expect("items");
    let sum = |field: &str| -> i64 { items.iter().filter_map(|i| i[field].as_i64()).sum() };
    assert_eq!(sum("requests"), expected.len() as i64);
    assert_eq!(sum("unknown_usage_requests"), unknown);
    assert_eq!(sum("input_tokens"), sum_in);
    assert_eq!(sum("output_tokens"), sum_out);
    assert_eq!(sum("cache_read_tokens"), sum_cached);
    assert_eq!(sum("total_tokens"), sum_total);
    let api_cost: f64 = items.iter().filter_map(|i| i["cost_usd"].as_f64()).sum();
    assert!(
        (api_cost - sum_cost).abs() < 1e-8,
        "{api_cost} != {sum_cost}"
    );
    // Per model as well: the API's groups equal the corpus grouped by model.
    let mut by_model: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for (call, _) in expected.values() {
        if let Some(c) = call {
            let entry = by_model.entry(c.model).or_default();
            entry.0 += c.input;
            entry.1 += c.output;
        }
    }
    for (model, (input, output)) in by_model {
        // Summed over days: a run across UTC midnight has two periods.
        let groups: Vec<&serde_json::Value> =
            items.iter().filter(|i| i["model"] == model).collect();
        assert!(!groups.is_empty(), "no usage group for {model}: {usage}");
        let total = |field: &str| groups.iter().filter_map(|i| i[field].as_i64()).sum::<i64>();
        assert_eq!(total("input_tokens"), input, "{model}");
        assert_eq!(total("output_tokens"), output, "{model}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A web request span carrying the user and tenant, and an auto-instrumented
/// chat span under it that carries neither.
fn request_span(trace: &[u8], start: u64) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: vec![1; 8],
        name: "POST /ask".into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 900_000_000,
        attributes: vec![
            kv("http.route", &S("/ask")),
            kv("enduser.id", &S("alice")),
            kv("tenant.id", &S("acme")),
            kv("session.id", &S("sess-7")),
        ],
        ..Default::default()
    }
}

fn chat_span(trace: &[u8], id: u8, start: u64) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: vec![id; 8],
        parent_span_id: vec![1; 8],
        name: "chat gpt-4o-mini".into(),
        kind: 3,
        start_time_unix_nano: start + 1_000_000,
        end_time_unix_nano: start + 800_000_000,
        attributes: vec![
            kv("gen_ai.operation.name", &S("chat")),
            kv("gen_ai.provider.name", &S("openai")),
            kv("gen_ai.request.model", &S("gpt-4o-mini")),
            kv("gen_ai.usage.input_tokens", &I(40)),
            kv("gen_ai.usage.output_tokens", &I(4)),
        ],
        ..Default::default()
    }
}

type Attribution = (String, Option<String>, Option<String>, String);

async fn attribution(db: &TestDatabase, trace: &[u8]) -> Vec<Attribution> {
    db.client()
        .await
        .query(
            "SELECT tenant_id, user_id, session_id, attribution_source FROM token_usage \
             WHERE trace_id = $1 ORDER BY span_id",
            &[&hex(trace)],
        )
        .await
        .expect("query")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn attributed(source: &str) -> Attribution {
    (
        "acme".into(),
        Some("alice".into()),
        Some("sess-7".into()),
        source.into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rows_are_attributed_through_the_trace_in_either_arrival_order() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let start = now_nanos();

    // Children first, in their own exports; the parent later in another.
    let late = trace_id(1, 0x5e);
    post(&tally, &request_of(vec![chat_span(&late, 2, start)], "web")).await;
    post(&tally, &request_of(vec![chat_span(&late, 3, start)], "web")).await;
    let before = attribution(&database, &late).await;
    assert_eq!(
        before,
        vec![(String::new(), None, None, "none".into()); 2],
        "nothing to attribute with yet"
    );
    post(&tally, &request_of(vec![request_span(&late, start)], "web")).await;
    // The parent's export is acknowledged only once the rows are attributed.
    assert_eq!(
        attribution(&database, &late).await,
        vec![attributed("trace"); 2]
    );

    // A retry of a child's export afterwards: still one row, still attributed.
    post(&tally, &request_of(vec![chat_span(&late, 2, start)], "web")).await;
    assert_eq!(
        attribution(&database, &late).await,
        vec![attributed("trace"); 2]
    );

    // Parent first, child in a later export: attributed at ingest.
    let early = trace_id(2, 0x5e);
    post(
        &tally,
        &request_of(vec![request_span(&early, start)], "web"),
    )
    .await;
    post(
        &tally,
        &request_of(vec![chat_span(&early, 2, start)], "web"),
    )
    .await;
    assert_eq!(
        attribution(&database, &early).await,
        vec![attributed("trace")]
    );

    // Both in one export, child listed first.
    let together = trace_id(3, 0x5e);
    post(
        &tally,
        &request_of(
            vec![
                chat_span(&together, 2, start),
                request_span(&together, start),
            ],
            "web",
        ),
    )
    .await;
    assert_eq!(
        attribution(&database, &together).await,
        vec![attributed("trace")]
    );

    // Another trace with the same span ids is not attributed by them.
    let other = trace_id(4, 0x5e);
    post(
        &tally,
        &request_of(vec![chat_span(&other, 2, start)], "web"),
    )
    .await;
    assert_eq!(
        attribution(&database, &other).await,
        vec![(String::new(), None, None, "none".into())]
    );
    let total: i64 = database
        .client()
        .await
        .query_one("SELECT count(*) FROM token_usage", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(total, 5, "no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_sdk_chat_span_under_a_request_span_is_attributed() {
    use opentelemetry::trace::{
        Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
    };
    use opentelemetry::{Context, KeyValue as OtelKv};

    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let url = tally.http_url("/v1/traces");
    // Simple exporter: each span is exported when it ends, so the chat span
    // (ending first) reaches Tally in an export before its parent's.
    let trace = std::thread::spawn(move || {
        let provider = http_span_provider(url);
        let tracer = provider.tracer("llm-app");
        let request = tracer
            .span_builder("POST /chat")
            .with_kind(SpanKind::Server)
            .with_attributes([
                OtelKv::new("enduser.id", "sdk-user"),
                OtelKv::new("tenant.id", "sdk-tenant"),
            ])
            .start(&tracer);
        let trace_id = request.span_context().trace_id().to_string();
        let cx = Context::current_with_span(request);
        let mut chat = tracer
            .span_builder("chat gpt-4o")
            .with_kind(SpanKind::Client)
            .with_attributes([
                OtelKv::new("gen_ai.operation.name", "chat"),
                OtelKv::new("gen_ai.provider.name", "openai"),
                OtelKv::new("gen_ai.request.model", "gpt-4o"),
                OtelKv::new("gen_ai.response.model", "gpt-4o-2024-08-06"),
                OtelKv::new("gen_ai.usage.input_tokens", 1000i64),
                OtelKv::new("gen_ai.usage.output_tokens", 100i64),
            ])
            .start_with_context(&tracer, &cx);
        chat.end();
        cx.span().end();
        provider.force_flush().expect("flush");
        let _ = provider.shutdown();
        trace_id
    })
    .join()
    .expect("sdk thread");

    let row = eventually(Duration::from_secs(30), "the attributed token row", || {
        let database = &database;
        let trace = trace.clone();
        async move {
            let rows = database
                .client()
                .await
                .query(
                    "SELECT user_id, tenant_id, attribution_source, input_tokens, output_tokens, \
                         cost_usd::float8 FROM token_usage WHERE trace_id = $1",
                    &[&trace],
                )
                .await
                .ok()?;
            let row = rows.first()?;
            let source: String = row.get(2);
            (source == "trace").then(|| {
                (
                    row.get::<_, Option<String>>(0),
                    row.get::<_, String>(1),
                    row.get::<_, Option<i64>>(3),
                    row.get::<_, Option<i64>>(4),
                    row.get::<_, Option<f64>>(5),
                    rows.len(),
                )
            })
        }
    })
    .await;
    assert_eq!(row.0.as_deref(), Some("sdk-user"));
    assert_eq!(row.1, "sdk-tenant");
    assert_eq!((row.2, row.3), (Some(1000), Some(100)));
    let want = (1000.0 * 2.5 + 100.0 * 10.0) / 1e6;
    assert!((row.4.unwrap_or(0.0) - want).abs() < 1e-9, "{:?}", row.4);
    assert_eq!(row.5, 1);
}

/// A streamed call whose instrumentation records first-chunk span events and
/// no time-to-first-token attribute, sent by the real Rust SDK: its row's
/// `time_to_first_token_ms` is the earliest such event's time minus the span's
/// start, and `/stats` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_sdk_streaming_events_give_the_time_to_first_token() {
    use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
    use opentelemetry::KeyValue as OtelKv;
    use std::time::SystemTime;

    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let url = tally.http_url("/v1/traces");
    let start = SystemTime::now() - Duration::from_secs(10);
    let at = move |ms: u64| start + Duration::from_millis(ms);
    std::thread::spawn(move || {
        let provider = http_span_provider(url);
        let tracer = provider.tracer("llm-app");
        // A started chat span of gpt-4o reporting `output` tokens.
        let chat_span = |name: &'static str, output: i64| {
            tracer
                .span_builder(name)
                .with_kind(SpanKind::Client)
                .with_start_time(start)
                .with_attributes([
                    OtelKv::new("gen_ai.operation.name", "chat"),
                    OtelKv::new("gen_ai.provider.name", "openai"),
                    OtelKv::new("gen_ai.request.model", "gpt-4o"),
                    OtelKv::new("gen_ai.usage.input_tokens", 1000i64),
                    OtelKv::new("gen_ai.usage.output_tokens", output),
                    OtelKv::new("tenant.id", "stream"),
                ])
                .start(&tracer)
        };
        // OpenLLMetry: one `llm.content.completion.chunk` event per chunk.
        let mut chat = chat_span("openai.chat", 300);
        chat.add_event_with_timestamp("retry", at(50), vec![]);
        for ms in [320, 400, 1200] {
            chat.add_event_with_timestamp("llm.content.completion.chunk", at(ms), vec![]);
        }
        chat.end_with_timestamp(at(2000));
        // OpenInference: one `First Token Stream Event`.
        let mut chat = chat_span("ChatCompletion", 100);
        chat.add_event_with_timestamp("First Token Stream Event", at(900), vec![]);
        chat.end_with_timestamp(at(1000));
        provider.force_flush().expect("flush");
        let _ = provider.shutdown();
    })
    .join()
    .expect("sdk thread");

    let rows = eventually(Duration::from_secs(30), "the two token rows", || {
        let database = &database;
        async move {
            let rows: Vec<(Option<i64>, Option<f64>, Option<f64>)> = database
                .client()
                .await
                .query(
                    "SELECT output_tokens, duration_ms, time_to_first_token_ms FROM token_usage \
                     WHERE tenant_id = 'stream' ORDER BY output_tokens",
                    &[],
                )
                .await
                .ok()?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            (rows.len() == 2).then_some(rows)
        }
    })
    .await;
    assert_eq!(
        rows,
        vec![
            (Some(100), Some(1000.0), Some(900.0)),
            (Some(300), Some(2000.0), Some(320.0)),
        ]
    );
    // /stats: the TTFT percentiles from the events; each call's speed (100
    // and 150 tokens/s) beside the ratio of sums (400 / 3 s): within 4.5%.
    let (status, body) =
        common::get_json(&tally.api_url("/api/v1/stats?tenant=stream"), None).await;
    assert_eq!(status, 200, "{body}");
    let tokens = &body["tokens"];
    let near = |field: &str, want: f64| {
        let got = tokens[field].as_f64().unwrap_or(f64::NAN);
        assert!(
            (got - want).abs() / want < 0.045,
            "{field}: {got} vs {want}: {body}"
        );
    };
    near("time_to_first_token_p50_ms", 320.0);
    near("time_to_first_token_p95_ms", 900.0);
    near("output_tokens_per_second_p50", 100.0);
    near("output_tokens_per_second_p95", 150.0);
    assert_eq!(
        tokens["output_tokens_per_second"].as_f64(),
        Some(133.333),
        "{body}"
    );
}

/// The rollup per (tenant, user): requests and input tokens, `''` for none.
async fn rollup_groups(db: &TestDatabase) -> Vec<(String, String, i64, i64)> {
    db.client()
        .await
        .query(
            "SELECT tenant_id, user_id, sum(requests)::int8, sum(input_tokens)::int8 \
             FROM token_usage_daily GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await
        .expect("rollup")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_arriving_after_the_rollup_moves_the_folded_counts() {
    use tally_exporters::postgres::RollupJob;

    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let start = now_nanos();
    let trace = trace_id(9, 0x77);
    post(
        &tally,
        &request_of(
            vec![chat_span(&trace, 2, start), chat_span(&trace, 3, start)],
            "web",
        ),
    )
    .await;
    // A rollup with no attribution delay folds the unattributed rows now.
    let mut client = database.client().await;
    let job = RollupJob::new(Duration::ZERO);
    let report = job.run_once(&mut client).await.expect("rollup");
    assert_eq!(report.token_rows, 2);
    assert_eq!(
        rollup_groups(&database).await,
        vec![(String::new(), String::new(), 2, 80)]
    );

    post(
        &tally,
        &request_of(vec![request_span(&trace, start)], "web"),
    )
    .await;
    assert_eq!(
        attribution(&database, &trace).await,
        vec![attributed("trace"); 2]
    );
    assert_eq!(
        rollup_groups(&database).await,
        vec![("acme".into(), "alice".into(), 2, 80)],
        "the folded counts moved to the user, once"
    );
    // Later runs fold nothing again.
    let again = job.run_once(&mut client).await.expect("rollup");
    assert_eq!(again.token_rows, 0);
    assert_eq!(
        rollup_groups(&database).await,
        vec![("acme".into(), "alice".into(), 2, 80)]
    );
}

/// The value of the first sample of `name` whose labels contain every `labels` pair.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (label_text, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_are_stored_unpriced_and_counted_in_metrics() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let start = now_nanos();
    let trace = trace_id(11, 0x42);
    let mut own = chat_span(&trace, 2, start);
    for attr in &mut own.attributes {
        if attr.key == "gen_ai.request.model" {
            *attr = kv("gen_ai.request.model", &S("house-llm-7b"));
        }
    }
    post(
        &tally,
        &request_of(vec![own, chat_span(&trace, 3, start)], "web"),
    )
    .await;
    let costs: Vec<(String, Option<f64>)> = database
        .client()
        .await
        .query(
            "SELECT model, cost_usd::float8 FROM token_usage ORDER BY model",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(costs.len(), 2);
    assert_eq!(
        costs[1],
        ("house-llm-7b".to_string(), None),
        "never priced as 0"
    );
    assert_eq!(costs[0].0, "gpt-4o-mini");
    let want = (40.0 * 0.15 + 4.0 * 0.60) / 1e6;
    assert!((costs[0].1.unwrap_or(0.0) - want).abs() < 1e-12);

    let text = reqwest::get(tally.metrics_url())
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    assert_eq!(
        sample(
            &text,
            "tally_llm_unpriced_requests_total",
            &[("model", "house-llm-7b")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "tally_llm_tokens_total",
            &[("model", "gpt-4o-mini"), ("kind", "input")]
        ),
        Some(40.0)
    );
    assert_eq!(
        sample(
            &text,
            "tally_llm_requests_total",
            &[("model", "house-llm-7b"), ("provider", "openai")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_records_count_as_calls_and_attribute_a_trace() {
    use tally_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
    use tally_model::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let start = now_nanos();
    let trace = trace_id(12, 0x33);
    post(
        &tally,
        &request_of(vec![chat_span(&trace, 2, start)], "web"),
    )
    .await;

    let record = |attrs: Vec<KeyValue>| LogRecord {
        time_unix_nano: start,
        severity_number: 9,
        trace_id: trace.clone(),
        span_id: vec![1; 8],
        attributes: attrs,
        ..Default::default()
    };
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", &S("web"))],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    // An ordinary app log line of the request, carrying the user.
                    record(vec![
                        kv("enduser.id", &S("alice")),
                        kv("tenant.id", &S("acme")),
                        kv("session.id", &S("sess-7")),
                    ]),
                    // A usage log event of another call (no span of its own).
                    record(vec![
                        kv("gen_ai.request.model", &S("gpt-4o-mini")),
                        kv("gen_ai.provider.name", &S("openai")),
                        kv("gen_ai.usage.input_tokens", &I(12)),
                        kv("gen_ai.usage.output_tokens", &I(3)),
                    ]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let response = reqwest::Client::new()
        .post(tally.http_url("/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(logs.encode_to_vec())
        .send()
        .await
        .expect("POST /v1/logs");
    assert_eq!(response.status().as_u16(), 200);

    type LogRow = (Option<i64>, Option<String>, String, Option<f64>);
    let rows: Vec<LogRow> = database
        .client()
        .await
        .query(
            "SELECT input_tokens, user_id, attribution_source, duration_ms FROM token_usage \
             WHERE trace_id = $1 ORDER BY input_tokens",
            &[&hex(&trace)],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (Some(12), Some("alice".into()), "trace".into(), None),
            (Some(40), Some("alice".into()), "trace".into(), Some(799.0)),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_export_attributes_several_pending_traces_each_to_its_own_user() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let start = now_nanos();
    let first = trace_id(13, 0x21);
    let second = trace_id(14, 0x21);
    post(
        &tally,
        &request_of(vec![chat_span(&first, 2, start)], "web"),
    )
    .await;
    post(
        &tally,
        &request_of(vec![chat_span(&second, 2, start)], "web"),
    )
    .await;
    let mut bob = request_span(&second, start);
    bob.attributes = vec![kv("enduser.id", &S("bob")), kv("tenant.id", &S("beta"))];
    post(
        &tally,
        &request_of(vec![request_span(&first, start), bob], "web"),
    )
    .await;
    assert_eq!(
        attribution(&database, &first).await,
        vec![attributed("trace")]
    );
    assert_eq!(
        attribution(&database, &second).await,
        vec![("beta".into(), Some("bob".into()), None, "trace".into())]
    );
}

async fn post_logs(
    tally: &Tally,
    logs: &tally_model::otlp::collector::logs::v1::ExportLogsServiceRequest,
) {
    let response = reqwest::Client::new()
        .post(tally.http_url("/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(logs.encode_to_vec())
        .send()
        .await
        .expect("POST /v1/logs");
    assert_eq!(response.status().as_u16(), 200, "logs refused");
}

/// (span id, input tokens, from a span) of a trace's rows.
async fn call_rows(db: &TestDatabase, trace: &[u8]) -> Vec<(String, Option<i64>, bool)> {
    db.client()
        .await
        .query(
            "SELECT span_id, input_tokens, duration_ms IS NOT NULL FROM token_usage \
             WHERE trace_id = $1 ORDER BY span_id",
            &[&hex(trace)],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reported_by_its_span_and_a_log_event_is_one_row_in_either_order() {
    use tally_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
    use tally_model::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let start = now_nanos();
    // OpenLIT's inference event: in the chat span's context, a second later.
    let event = |trace: &[u8]| ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", &S("web"))],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: start + 1_000_000_000,
                    event_name: "gen_ai.client.inference.operation.details".into(),
                    trace_id: trace.to_vec(),
                    span_id: vec![2; 8],
                    attributes: vec![
                        kv("gen_ai.operation.name", &S("chat")),
                        kv("gen_ai.request.model", &S("gpt-4o-mini")),
                        kv("gen_ai.usage.input_tokens", &I(40)),
                        kv("gen_ai.usage.output_tokens", &I(4)),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let chat = hex(&[2; 8]);

    let span_first = trace_id(20, 0x44);
    post(
        &tally,
        &request_of(vec![chat_span(&span_first, 2, start)], "web"),
    )
    .await;
    post_logs(&tally, &event(&span_first)).await;
    assert_eq!(
        call_rows(&database, &span_first).await,
        vec![(chat.clone(), Some(40), true)]
    );

    let log_first = trace_id(21, 0x44);
    post_logs(&tally, &event(&log_first)).await;
    assert_eq!(
        call_rows(&database, &log_first).await,
        vec![(chat.clone(), Some(40), false)]
    );
    post(
        &tally,
        &request_of(vec![chat_span(&log_first, 2, start)], "web"),
    )
    .await;
    assert_eq!(
        call_rows(&database, &log_first).await,
        vec![(chat, Some(40), true)],
        "the span's row replaces the log event's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_row_stops_counting_when_its_model_call_arrives_later() {
    let database = TestDatabase::create().await;
    let tally = Tally::on(&database).await;
    let start = now_nanos();
    let trace = trace_id(22, 0x44);
    let agent = Span {
        trace_id: trace.clone(),
        span_id: vec![5; 8],
        parent_span_id: vec![1; 8],
        name: "invoke_agent support".into(),
        kind: 1,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 900_000_000,
        attributes: vec![
            kv("gen_ai.operation.name", &S("invoke_agent")),
            kv("gen_ai.provider.name", &S("openai")),
            kv("gen_ai.request.model", &S("gpt-4o-mini")),
            kv("gen_ai.usage.input_tokens", &I(40)),
            kv("gen_ai.usage.output_tokens", &I(4)),
        ],
        ..Default::default()
    };
    post(&tally, &request_of(vec![agent], "web")).await;
    assert_eq!(
        call_rows(&database, &trace).await,
        vec![(hex(&[5; 8]), Some(40), true)],
        "no model call below (yet): the agent's usage counts"
    );
    let mut call = chat_span(&trace, 2, start);
    call.parent_span_id = vec![5; 8];
    post(&tally, &request_of(vec![call], "web")).await;
    assert_eq!(
        call_rows(&database, &trace).await,
        vec![(hex(&[2; 8]), Some(40), true)],
        "the late call counts, the agent no longer"
    );
}
