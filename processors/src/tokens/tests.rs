use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::*;

const T: [u8; 16] = [7; 16];
const START: u64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z

fn s(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}
fn i(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}
fn d(key: &str, value: f64) -> KeyValue {
    kv(key, Value::DoubleValue(value))
}
fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn span(id: u8, parent: Option<u8>, attrs: Vec<KeyValue>) -> Span {
    Span {
        trace_id: T.to_vec(),
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: format!("span-{id}"),
        start_time_unix_nano: START,
        end_time_unix_nano: START + 1_500_000_000,
        attributes: attrs,
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![s("service.name", "svc")],
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

fn cache() -> TraceCache {
    TraceCache::new(Duration::from_secs(300), 1000)
}

fn run(spans: Vec<Span>) -> TokenBatch {
    TokenProcessor::with_defaults().traces(&request(spans), Utc::now(), &cache(), None)
}

fn genai_chat(id: u8, parent: Option<u8>, input: i64, output: i64) -> Span {
    span(
        id,
        parent,
        vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.provider.name", "openai"),
            s("gen_ai.request.model", "gpt-4o"),
            s("gen_ai.response.model", "gpt-4o-2024-08-06"),
            i("gen_ai.usage.input_tokens", input),
            i("gen_ai.usage.output_tokens", output),
        ],
    )
}

#[test]
fn time_to_first_token_is_read_in_seconds_from_either_spelling() {
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue};
    let double = |key: &str, v: f64| KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::DoubleValue(v)),
        }),
        ..Default::default()
    };
    for (attribute, want) in [
        (
            double("gen_ai.server.time_to_first_token", 0.25),
            Some(250.0),
        ),
        (
            double("gen_ai.response.time_to_first_chunk", 1.5),
            Some(1500.0),
        ),
        (s("gen_ai.server.time_to_first_token", "0.125"), Some(125.0)),
        (double("gen_ai.server.time_to_first_token", -1.0), None),
        (s("gen_ai.server.time_to_first_token", "soon"), None),
    ] {
        let mut chat = genai_chat(1, None, 10, 2);
        chat.attributes.push(attribute.clone());
        let out = run(vec![chat]);
        assert_eq!(out.rows[0].time_to_first_token_ms, want, "{attribute:?}");
    }
    assert_eq!(
        run(vec![genai_chat(1, None, 10, 2)]).rows[0].time_to_first_token_ms,
        None
    );
}

#[test]
fn time_to_first_token_in_milliseconds_and_from_the_configured_keys() {
    // Vercel AI SDK: milliseconds.
    let mut chat = genai_chat(1, None, 10, 2);
    chat.attributes.push(i("ai.response.msToFirstChunk", 340));
    assert_eq!(run(vec![chat]).rows[0].time_to_first_token_ms, Some(340.0));
    // Seconds win over milliseconds on the same record.
    let mut chat = genai_chat(1, None, 10, 2);
    chat.attributes.push(i("ai.response.msToFirstChunk", 340));
    chat.attributes
        .push(d("gen_ai.response.time_to_first_chunk", 0.5));
    assert_eq!(run(vec![chat]).rows[0].time_to_first_token_ms, Some(500.0));
    // An app's own key, configured in milliseconds, before the built-in ones.
    let mut config = TokensConfig::default();
    config.mapping.time_to_first_token_ms = vec!["my_app.ttft_ms".to_owned()];
    let processor = TokenProcessor::new(&config, &PricingConfig::default());
    let mut chat = genai_chat(1, None, 10, 2);
    chat.attributes.push(d("my_app.ttft_ms", 87.5));
    let out = processor.traces(&request(vec![chat]), Utc::now(), &cache(), None);
    assert_eq!(out.rows[0].time_to_first_token_ms, Some(87.5));
    assert!(config.mapping_keys().contains(&"my_app.ttft_ms".to_owned()));
}

fn event(name: &str, after_start_ms: u64) -> opentelemetry_proto::tonic::trace::v1::span::Event {
    opentelemetry_proto::tonic::trace::v1::span::Event {
        time_unix_nano: START + after_start_ms * 1_000_000,
        name: name.into(),
        ..Default::default()
    }
}

#[test]
fn time_to_first_token_from_the_first_streaming_event() {
    // OpenLLMetry: one event per chunk; the earliest counts, whatever the order.
    let mut chat = genai_chat(1, None, 10, 2);
    chat.events = vec![
        event("llm.content.completion.chunk", 420),
        event("llm.content.completion.chunk", 180),
        event("llm.content.completion.chunk", 650),
    ];
    assert_eq!(run(vec![chat]).rows[0].time_to_first_token_ms, Some(180.0));
    // OpenInference and the Vercel AI SDK: one event; other events are not chunks.
    for name in ["First Token Stream Event", "ai.stream.firstChunk"] {
        let mut chat = genai_chat(1, None, 10, 2);
        chat.events = vec![event("exception", 5), event(name, 240)];
        assert_eq!(
            run(vec![chat]).rows[0].time_to_first_token_ms,
            Some(240.0),
            "{name}"
        );
    }
    // An attribute wins over the events.
    let mut chat = genai_chat(1, None, 10, 2);
    chat.attributes
        .push(d("gen_ai.server.time_to_first_token", 0.1));
    chat.events = vec![event("ai.stream.firstChunk", 240)];
    assert_eq!(run(vec![chat]).rows[0].time_to_first_token_ms, Some(100.0));
    // No matching event, an event before the start, or no start: no TTFT.
    let mut chat = genai_chat(1, None, 10, 2);
    chat.events = vec![event("gen_ai.content.completion", 240)];
    assert_eq!(run(vec![chat]).rows[0].time_to_first_token_ms, None);
    let mut chat = genai_chat(1, None, 10, 2);
    let mut early = event("ai.stream.firstChunk", 0);
    early.time_unix_nano = START - 1;
    chat.events = vec![early];
    assert_eq!(run(vec![chat]).rows[0].time_to_first_token_ms, None);
    let mut chat = genai_chat(1, None, 10, 2);
    chat.events = vec![event("ai.stream.firstChunk", 240)];
    chat.start_time_unix_nano = 0;
    assert_eq!(run(vec![chat]).rows[0].time_to_first_token_ms, None);
}

#[test]
fn time_to_first_token_events_are_configurable() {
    let mut config = TokensConfig::default();
    config.mapping.time_to_first_token_events = vec!["my_app.first_chunk".to_owned()];
    let processor = TokenProcessor::new(&config, &PricingConfig::default());
    let mut chat = genai_chat(1, None, 10, 2);
    chat.events = vec![
        event("ai.stream.firstChunk", 300),
        event("my_app.first_chunk", 90),
    ];
    let out = processor.traces(&request(vec![chat.clone()]), Utc::now(), &cache(), None);
    assert_eq!(out.rows[0].time_to_first_token_ms, Some(90.0));
    // The built-in names stay after the configured one, unless replaced.
    chat.events.pop();
    let out = processor.traces(&request(vec![chat.clone()]), Utc::now(), &cache(), None);
    assert_eq!(out.rows[0].time_to_first_token_ms, Some(300.0));
    config.mapping.replace = true;
    let processor = TokenProcessor::new(&config, &PricingConfig::default());
    let out = processor.traces(&request(vec![chat]), Utc::now(), &cache(), None);
    assert_eq!(out.rows[0].time_to_first_token_ms, None);
    // Event names are not attribute keys: the redactor's allowlist is unchanged.
    assert!(!config
        .mapping_keys()
        .contains(&"my_app.first_chunk".to_owned()));
}

#[test]
fn genai_current_chat_with_cache_and_reasoning() {
    let mut chat = genai_chat(1, None, 1000, 200);
    chat.attributes.extend([
        i("gen_ai.usage.cache_read.input_tokens", 400),
        i("gen_ai.usage.cache_write.input_tokens", 100),
        i("gen_ai.usage.reasoning.output_tokens", 50),
        s("gen_ai.prompt", "secret prompt text"),
    ]);
    let out = run(vec![chat]);
    assert_eq!(out.rows.len(), 1);
    let row = &out.rows[0];
    assert_eq!(row.provider.as_deref(), Some("openai"));
    assert_eq!(row.operation.as_deref(), Some("chat"));
    assert_eq!(row.request_model.as_deref(), Some("gpt-4o"));
    assert_eq!(row.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(
        (row.input_tokens, row.output_tokens, row.total_tokens),
        (Some(1000), Some(200), Some(1200))
    );
    assert_eq!(row.cache_read_tokens, Some(400));
    assert_eq!(row.cache_write_tokens, Some(100));
    assert_eq!(row.reasoning_tokens, Some(50));
    assert!(row.usage_known);
    assert_eq!(row.duration_ms, Some(1500.0));
    assert_eq!(row.service.as_deref(), Some("svc"));
    assert_eq!(row.trace_id.as_deref(), Some(hex::encode(T).as_str()));
    // gpt-4o from 2024-10-01: 2.50 in, 1.25 cache read, 10 out; cache write at the input price.
    let expected = (500.0 * 2.5 + 400.0 * 1.25 + 100.0 * 2.5 + 200.0 * 10.0) / 1e6;
    assert!(
        (row.cost_usd.unwrap() - expected).abs() < 1e-12,
        "{:?}",
        row.cost_usd
    );
    assert!(
        row.attributes.get("gen_ai.prompt").is_none(),
        "content is not kept"
    );
    assert_eq!(row.attributes["span.name"], "span-1");
    assert_eq!(row.attribution_source, AttributionSource::None);
    assert_eq!(out.pending, vec![(T, row.ts)]);
}

#[test]
fn deprecated_names_and_integers_as_strings_or_doubles() {
    let chat = span(
        1,
        None,
        vec![
            s("gen_ai.system", "anthropic"),
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.request.model", "claude-3-5-haiku-20241022"),
            s("gen_ai.usage.prompt_tokens", "120"),
            d("gen_ai.usage.completion_tokens", 30.0),
        ],
    );
    let row = &run(vec![chat]).rows[0];
    assert_eq!(row.provider.as_deref(), Some("anthropic"));
    assert_eq!((row.input_tokens, row.output_tokens), (Some(120), Some(30)));
    assert_eq!(row.model.as_deref(), Some("claude-3-5-haiku-20241022"));
    assert!((row.cost_usd.unwrap() - (120.0 * 0.8 + 30.0 * 4.0) / 1e6).abs() < 1e-12);
}

#[test]
fn openllmetry_workflow_and_task_are_not_counted_and_properties_attribute() {
    let props = |span: &mut Span| {
        span.attributes.extend([
            s("traceloop.association.properties.user_id", "u-9"),
            s("traceloop.association.properties.tenant_id", "acme"),
        ])
    };
    let mut workflow = span(
        1,
        None,
        vec![
            s("traceloop.span.kind", "workflow"),
            i("gen_ai.usage.prompt_tokens", 10),
            s("gen_ai.request.model", "gpt-4o"),
        ],
    );
    props(&mut workflow);
    let mut llm = span(
        2,
        Some(1),
        vec![
            s("llm.request.type", "chat"),
            s("gen_ai.system", "openai"),
            s("gen_ai.request.model", "gpt-4o-mini"),
            i("gen_ai.usage.prompt_tokens", 10),
            i("gen_ai.usage.completion_tokens", 5),
            i("llm.usage.total_tokens", 15),
            i("gen_ai.usage.cache_read_input_tokens", 4),
        ],
    );
    props(&mut llm);
    let out = run(vec![llm, workflow]);
    assert_eq!(out.rows.len(), 1);
    let row = &out.rows[0];
    assert_eq!(row.span_id.as_deref(), Some("0202020202020202"));
    assert_eq!(row.operation.as_deref(), Some("chat"));
    assert_eq!(row.cache_read_tokens, Some(4));
    assert_eq!(row.user_id.as_deref(), Some("u-9"));
    assert_eq!(row.tenant_id.as_deref(), Some("acme"));
    assert_eq!(row.attribution_source, AttributionSource::Record);
    assert!(out.pending.is_empty());
}

#[test]
fn openinference_chain_repeating_its_child_counts_once() {
    let chain = span(
        1,
        None,
        vec![
            s("openinference.span.kind", "CHAIN"),
            s("llm.model_name", "gpt-4o"),
            i("llm.token_count.prompt", 50),
            i("llm.token_count.completion", 7),
        ],
    );
    let llm = span(
        2,
        Some(1),
        vec![
            s("openinference.span.kind", "LLM"),
            s("llm.model_name", "gpt-4o"),
            s("llm.provider", "openai"),
            i("llm.token_count.prompt", 50),
            i("llm.token_count.completion", 7),
            i("llm.token_count.total", 57),
            s("user.id", "ann"),
            s("session.id", "s-1"),
        ],
    );
    let out = run(vec![chain, llm]);
    assert_eq!(out.rows.len(), 1);
    let row = &out.rows[0];
    assert_eq!(
        (row.total_tokens, row.user_id.as_deref()),
        (Some(57), Some("ann"))
    );
    assert_eq!(row.session_id.as_deref(), Some("s-1"));
    assert_eq!(row.response_model.as_deref(), Some("gpt-4o"));
}

#[test]
fn vercel_outer_spans_wrap_the_do_generate_call() {
    let outer = span(
        1,
        None,
        vec![
            s("ai.operationId", "ai.generateText"),
            s("ai.model.id", "gpt-4o"),
            i("ai.usage.promptTokens", 30),
            i("ai.usage.completionTokens", 3),
            s("ai.telemetry.metadata.userId", "v-user"),
        ],
    );
    let inner = span(
        2,
        Some(1),
        vec![
            s("ai.operationId", "ai.generateText.doGenerate"),
            s("ai.model.id", "gpt-4o"),
            s("ai.model.provider", "openai.chat"),
            s("ai.response.model", "gpt-4o-2024-08-06"),
            i("ai.usage.promptTokens", 30),
            i("ai.usage.completionTokens", 3),
            s("ai.telemetry.metadata.userId", "v-user"),
        ],
    );
    let tool = span(3, Some(1), vec![s("ai.operationId", "ai.toolCall")]);
    let out = run(vec![outer, inner, tool]);
    assert_eq!(out.rows.len(), 1);
    let row = &out.rows[0];
    assert_eq!(row.span_id.as_deref(), Some("0202020202020202"));
    assert_eq!(row.provider.as_deref(), Some("openai.chat"));
    assert_eq!(row.operation.as_deref(), Some("ai.generateText.doGenerate"));
    assert_eq!(row.user_id.as_deref(), Some("v-user"));
    assert_eq!((row.input_tokens, row.output_tokens), (Some(30), Some(3)));
}

#[test]
fn agent_wrapping_two_calls_and_a_tool_counts_the_calls() {
    let agent = span(
        1,
        None,
        vec![
            s("gen_ai.operation.name", "invoke_agent"),
            s("gen_ai.request.model", "gpt-4o"),
            i("gen_ai.usage.input_tokens", 300),
            i("gen_ai.usage.output_tokens", 30),
        ],
    );
    let tool = span(4, Some(1), vec![s("gen_ai.operation.name", "execute_tool")]);
    let out = run(vec![
        genai_chat(2, Some(1), 100, 10),
        tool,
        genai_chat(3, Some(1), 200, 20),
        agent,
    ]);
    let mut inputs: Vec<i64> = out.rows.iter().filter_map(|r| r.input_tokens).collect();
    inputs.sort_unstable();
    assert_eq!(inputs, [100, 200]);
}

#[test]
fn an_unmarked_span_repeating_its_child_is_not_counted_but_alone_it_is() {
    let wrapper = span(
        1,
        None,
        vec![
            s("gen_ai.request.model", "gpt-4o"),
            i("gen_ai.usage.input_tokens", 100),
            i("gen_ai.usage.output_tokens", 10),
        ],
    );
    let out = run(vec![wrapper.clone(), genai_chat(2, Some(1), 100, 10)]);
    assert_eq!(out.rows.len(), 1);
    assert_eq!(out.not_counted, 1);
    assert_eq!(out.rows[0].span_id.as_deref(), Some("0202020202020202"));
    // Alone, the unmarked span with a model and usage is a call.
    let out = run(vec![wrapper]);
    assert_eq!(out.rows.len(), 1);
    // Without a model, it is not.
    let no_model = span(5, None, vec![i("gen_ai.usage.input_tokens", 100)]);
    assert!(run(vec![no_model]).rows.is_empty());
}

#[test]
fn streaming_without_usage_is_unknown_not_zero() {
    let zero = genai_chat(1, None, 0, 0);
    let mut none = genai_chat(2, None, 0, 0);
    none.attributes
        .retain(|kv| !kv.key.starts_with("gen_ai.usage."));
    let out = run(vec![zero, none]);
    assert_eq!(out.rows.len(), 2);
    for row in &out.rows {
        assert!(!row.usage_known);
        assert_eq!(row.input_tokens, None);
        assert_eq!(row.output_tokens, None);
        assert_eq!(row.total_tokens, None);
        assert_eq!(row.cost_usd, None, "unknown usage is not priced");
    }
    assert_eq!(out.unpriced, 0);
}

#[test]
fn a_streamed_child_without_usage_gives_way_to_its_parent_with_usage() {
    let parent = span(
        1,
        None,
        vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.request.model", "gpt-4o"),
            i("gen_ai.usage.input_tokens", 9),
            i("gen_ai.usage.output_tokens", 1),
        ],
    );
    let out = run(vec![genai_chat(2, Some(1), 0, 0), parent]);
    assert_eq!(out.rows.len(), 1);
    assert_eq!(out.rows[0].input_tokens, Some(9));
}

#[test]
fn a_parent_in_a_later_request_repeating_a_counted_child_is_not_counted() {
    let processor = TokenProcessor::with_defaults();
    let cache = cache();
    let first = processor.traces(
        &request(vec![genai_chat(3, Some(2), 10, 1)]),
        Utc::now(),
        &cache,
        None,
    );
    assert_eq!(first.rows.len(), 1);
    // The chain span between them has no usage; the unmarked root repeats the sum.
    let chain = span(2, Some(1), vec![s("name", "chain")]);
    let second = processor.traces(&request(vec![chain]), Utc::now(), &cache, None);
    assert!(second.rows.is_empty());
    let root = span(
        1,
        None,
        vec![
            s("gen_ai.request.model", "gpt-4o"),
            i("gen_ai.usage.input_tokens", 10),
            i("gen_ai.usage.output_tokens", 1),
        ],
    );
    let third = processor.traces(&request(vec![root.clone()]), Utc::now(), &cache, None);
    assert!(third.rows.is_empty(), "already counted on its grandchild");
    // Another trace with the same span ids is unaffected.
    let mut other = root;
    other.trace_id = vec![8; 16];
    assert_eq!(
        processor
            .traces(&request(vec![other]), Utc::now(), &cache, None)
            .rows
            .len(),
        1
    );
}

#[test]
fn identity_from_the_trace_in_either_order() {
    let processor = TokenProcessor::with_defaults();
    let request_span = |id: u8| {
        span(
            id,
            None,
            vec![
                s("http.route", "/ask"),
                s("enduser.id", "alice"),
                s("tenant.id", "t1"),
                s("session.id", "sess"),
            ],
        )
    };
    // Same request, child listed first.
    let cache1 = cache();
    let out = processor.traces(
        &request(vec![genai_chat(2, Some(1), 5, 1), request_span(1)]),
        Utc::now(),
        &cache1,
        None,
    );
    let row = &out.rows[0];
    assert_eq!(row.attribution_source, AttributionSource::Trace);
    assert_eq!(row.user_id.as_deref(), Some("alice"));
    assert_eq!(row.tenant_id.as_deref(), Some("t1"));
    assert_eq!(row.session_id.as_deref(), Some("sess"));
    assert!(out.pending.is_empty());

    // Separate requests, child first: pending, then the parent's request asks for the update.
    let cache2 = cache();
    let first = processor.traces(
        &request(vec![genai_chat(2, Some(1), 5, 1)]),
        Utc::now(),
        &cache2,
        None,
    );
    assert_eq!(first.rows[0].attribution_source, AttributionSource::None);
    assert_eq!(first.pending.len(), 1);
    for (trace, ts) in &first.pending {
        cache2.mark_pending(*trace, *ts);
    }
    let second = processor.traces(&request(vec![request_span(1)]), Utc::now(), &cache2, None);
    assert!(second.rows.is_empty());
    assert_eq!(second.attribute.len(), 1);
    let (trace, identity, since) = &second.attribute[0];
    assert_eq!(*trace, T);
    assert_eq!(identity.user.as_deref(), Some("alice"));
    assert_eq!(*since, first.rows[0].ts);
}

#[test]
fn mapping_extensions_recognise_app_specific_names() {
    let mut config = TokensConfig::default();
    config.mapping.input = vec!["myapp.llm.in".into()];
    config.mapping.output = vec!["myapp.llm.out".into()];
    config.mapping.request_model = vec!["myapp.llm.model".into()];
    config.mapping.user = vec!["myapp.customer".into()];
    let processor = TokenProcessor::new(&config, &PricingConfig::default());
    let custom = span(
        1,
        None,
        vec![
            s("myapp.llm.model", "gpt-4.1"),
            i("myapp.llm.in", 1_000_000),
            i("myapp.llm.out", 0),
            s("myapp.customer", "c-1"),
        ],
    );
    let out = processor.traces(&request(vec![custom]), Utc::now(), &cache(), None);
    let row = &out.rows[0];
    assert_eq!(row.input_tokens, Some(1_000_000));
    assert_eq!(row.user_id.as_deref(), Some("c-1"));
    assert!((row.cost_usd.unwrap() - 2.0).abs() < 1e-9);
    // The built-in names still work.
    assert_eq!(
        processor
            .traces(
                &request(vec![genai_chat(2, None, 1, 1)]),
                Utc::now(),
                &cache(),
                None
            )
            .rows
            .len(),
        1
    );
}

#[test]
fn unknown_models_are_counted_unpriced() {
    let mut chat = genai_chat(1, None, 10, 10);
    for kv in &mut chat.attributes {
        if kv.key.ends_with(".model") {
            kv.value = Some(AnyValue {
                value: Some(Value::StringValue("my-own-llm".into())),
            });
        }
    }
    let out = run(vec![chat]);
    assert_eq!(out.rows[0].cost_usd, None);
    assert_eq!(out.unpriced, 1);
}

#[test]
fn log_records_with_model_and_usage_count() {
    let log = |attrs: Vec<KeyValue>| LogRecord {
        time_unix_nano: START,
        event_name: "llm.call".into(),
        trace_id: T.to_vec(),
        span_id: vec![1; 8],
        attributes: attrs,
        ..Default::default()
    };
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: None,
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    log(vec![
                        s("gen_ai.request.model", "gpt-4o-mini"),
                        i("gen_ai.usage.input_tokens", 8),
                        i("gen_ai.usage.output_tokens", 2),
                        s("user.id", "logger"),
                    ]),
                    log(vec![i("gen_ai.usage.input_tokens", 8)]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let processor = TokenProcessor::with_defaults();
    let out = processor.logs(&request, Utc::now(), &cache(), None);
    assert_eq!(out.rows.len(), 1);
    assert_eq!(out.rows[0].user_id.as_deref(), Some("logger"));
    assert_eq!(out.rows[0].attributes["event.name"], "llm.call");
    let off = TokensConfig {
        from_logs: false,
        ..Default::default()
    };
    let processor = TokenProcessor::new(&off, &PricingConfig::default());
    assert!(processor
        .logs(&request, Utc::now(), &cache(), None)
        .rows
        .is_empty());
}

#[test]
fn metadata_keys_follow_prefix_then_name_order() {
    let mut chat = genai_chat(1, None, 1, 1);
    chat.attributes.extend([
        s("ai.telemetry.metadata.user", "by-user"),
        s("ai.telemetry.metadata.userId", "by-userId"),
        s("ai.telemetry.metadata.tenantId", "vercel-tenant"),
        s(
            "traceloop.association.properties.tenant_id",
            "traceloop-tenant",
        ),
        s("ai.telemetry.metadata.sessionId", ""),
    ]);
    let row = &run(vec![chat]).rows[0];
    assert_eq!(row.user_id.as_deref(), Some("by-userId"));
    assert_eq!(row.tenant_id.as_deref(), Some("traceloop-tenant"));
    assert_eq!(row.session_id, None, "empty values are no identity");
}

#[test]
fn pending_is_one_entry_per_trace_with_its_earliest_start() {
    let mut late = genai_chat(2, None, 1, 1);
    late.start_time_unix_nano += 5_000_000_000;
    let mut other = genai_chat(3, None, 1, 1);
    other.trace_id = vec![9; 16];
    let out = run(vec![late, genai_chat(1, None, 1, 1), other]);
    assert_eq!(out.rows.len(), 3);
    let earliest = out.rows.iter().map(|r| r.ts).min().unwrap();
    let mut want = vec![(T, earliest), ([9; 16], earliest)];
    want.sort_unstable();
    assert_eq!(out.pending, want);
}

/// Found by the `flatten` fuzz target: counts near i64::MAX overflowed the sum that decides
/// whether an unmarked span with a model carries usage (a panic with overflow checks on).
#[test]
fn counts_near_i64_max_saturate_instead_of_overflowing() {
    let unmarked = span(
        1,
        None,
        vec![
            s("gen_ai.request.model", "gpt-4o"),
            i("gen_ai.usage.input_tokens", i64::MAX),
            i("gen_ai.usage.output_tokens", i64::MAX),
            i("gen_ai.usage.total_tokens", i64::MAX),
        ],
    );
    let batch = run(vec![unmarked]);
    assert_eq!(batch.rows.len(), 1);
    assert_eq!(batch.rows[0].total_tokens, Some(i64::MAX));

    let mut cached = genai_chat(2, None, 10, i64::MAX);
    cached
        .attributes
        .push(i("gen_ai.usage.cache_read_input_tokens", i64::MAX));
    cached
        .attributes
        .push(i("gen_ai.usage.cache_write.input_tokens", i64::MAX));
    let batch = run(vec![cached]);
    assert_eq!(batch.rows.len(), 1);
    assert!(batch.rows[0].cost_usd.is_some_and(f64::is_finite));
}

#[test]
fn a_negative_count_falls_through_to_the_next_spelling_like_a_non_numeric_one() {
    for bad in [
        i("gen_ai.usage.input_tokens", -5),
        s("gen_ai.usage.input_tokens", "abc"),
    ] {
        let chat = span(
            1,
            None,
            vec![
                s("gen_ai.operation.name", "chat"),
                s("gen_ai.request.model", "gpt-4o"),
                bad.clone(),
                i("gen_ai.usage.prompt_tokens", 40),
                d("gen_ai.usage.output_tokens", -1.0),
                s("gen_ai.usage.completion_tokens", "7"),
                i("gen_ai.usage.cache_read.input_tokens", -3),
            ],
        );
        let row = &run(vec![chat]).rows[0];
        assert_eq!(
            (row.input_tokens, row.output_tokens, row.total_tokens),
            (Some(40), Some(7), Some(47)),
            "{bad:?}"
        );
        assert_eq!(row.cache_read_tokens, None, "{bad:?}");
    }
}

#[test]
fn the_records_own_identity_wins_over_its_resources_whatever_the_spelling() {
    let run_with = |resource: Vec<KeyValue>, record: Vec<KeyValue>| {
        let mut chat = genai_chat(1, None, 10, 5);
        chat.attributes.extend(record);
        let mut req = request(vec![chat]);
        if let Some(r) = req.resource_spans[0].resource.as_mut() {
            r.attributes.extend(resource);
        }
        let out = TokenProcessor::with_defaults().traces(&req, Utc::now(), &cache(), None);
        let row = &out.rows[0];
        (
            row.user_id.clone(),
            row.tenant_id.clone(),
            row.session_id.clone(),
        )
    };
    let resource = vec![
        s("enduser.id", "resource-user"),
        s("tenant.id", "resource-tenant"),
        s("session.id", "resource-session"),
    ];
    // Another spelling on the record beats the preferred spelling on the resource.
    let got = run_with(
        resource.clone(),
        vec![
            s("user.id", "record-user"),
            s("company.id", "record-tenant"),
        ],
    );
    assert_eq!(
        got,
        (
            Some("record-user".into()),
            Some("record-tenant".into()),
            Some("resource-session".into())
        )
    );
    // So does a metadata spelling on the record.
    let got = run_with(
        resource.clone(),
        vec![s("ai.telemetry.metadata.userId", "record-meta-user")],
    );
    assert_eq!(got.0.as_deref(), Some("record-meta-user"));
    // Within one level the order of the mapping still holds.
    let got = run_with(
        Vec::new(),
        vec![s("user.id", "second"), s("enduser.id", "first")],
    );
    assert_eq!(got.0.as_deref(), Some("first"));
    // Nothing on the record: the resource's.
    let got = run_with(resource, Vec::new());
    assert_eq!(got.0.as_deref(), Some("resource-user"));
}

#[test]
fn a_bound_sender_attributes_only_within_its_tenant() {
    let processor = TokenProcessor::with_defaults();
    let cache = cache();
    let user = |id: u8, tenant: Option<&str>| {
        let mut attrs = vec![s("enduser.id", "alice")];
        if let Some(tenant) = tenant {
            attrs.push(s("tenant.id", tenant));
        }
        span(id, None, attrs)
    };
    // Tenant B's key: its request span names no tenant (B's is implied).
    let b = processor.traces(
        &request(vec![user(1, None), genai_chat(2, Some(1), 5, 1)]),
        Utc::now(),
        &cache,
        Some("tenant-b"),
    );
    assert_eq!(b.rows[0].attribution_source, AttributionSource::Trace);
    assert_eq!(b.rows[0].user_id.as_deref(), Some("alice"));
    // Tenant A's key, same trace id: B's identity is not A's to use.
    let a = processor.traces(
        &request(vec![genai_chat(3, Some(1), 5, 1)]),
        Utc::now(),
        &cache,
        Some("tenant-a"),
    );
    assert_eq!(a.rows[0].attribution_source, AttributionSource::None);
    assert_eq!(a.rows[0].user_id, None);
    assert_eq!(a.pending.len(), 1);
    // Nor is it an unbound sender's.
    let open = processor.traces(
        &request(vec![genai_chat(4, Some(1), 5, 1)]),
        Utc::now(),
        &cache,
        None,
    );
    assert_eq!(open.rows[0].user_id, None);
    // A record of B's key naming tenant A keeps that tenant (the pipeline
    // quarantines it) instead of taking B's identity from the trace...
    let mut foreign = genai_chat(5, Some(1), 5, 1);
    foreign.attributes.push(s("tenant.id", "tenant-a"));
    let b2 = processor.traces(
        &request(vec![foreign, user(6, Some("tenant-a"))]),
        Utc::now(),
        &cache,
        Some("tenant-b"),
    );
    assert_eq!(b2.rows[0].tenant_id.as_deref(), Some("tenant-a"));
    assert_eq!(b2.rows[0].user_id, None);
    // ...and identities naming another tenant are never learned.
    let later = processor.traces(
        &request(vec![genai_chat(7, Some(6), 5, 1)]),
        Utc::now(),
        &cache,
        Some("tenant-b"),
    );
    assert_eq!(
        later.rows[0].user_id.as_deref(),
        Some("alice"),
        "B's own identity"
    );
    assert_eq!(later.rows[0].tenant_id, None, "stamped by the pipeline");
}

fn request_in_scope(scope: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    let mut request = request(spans);
    request.resource_spans[0].scope_spans[0].scope = Some(
        opentelemetry_proto::tonic::common::v1::InstrumentationScope {
            name: scope.into(),
            ..Default::default()
        },
    );
    request
}

fn run_in_scope(scope: &str, spans: Vec<Span>) -> TokenBatch {
    TokenProcessor::with_defaults().traces(
        &request_in_scope(scope, spans),
        Utc::now(),
        &cache(),
        None,
    )
}

/// OpenLIT's Anthropic instrumentation reports Anthropic's raw `input_tokens`
/// (without cache reads and writes) under the convention's name.
fn openlit_anthropic(input: i64, cache_read: i64, cache_write: i64) -> Span {
    span(
        1,
        None,
        vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.system", "anthropic"),
            s("gen_ai.request.model", "claude-sonnet-4-5"),
            i("gen_ai.usage.input_tokens", input),
            i("gen_ai.usage.output_tokens", 100),
            i("gen_ai.usage.cache_read_input_tokens", cache_read),
            i("gen_ai.usage.cache_creation_input_tokens", cache_write),
        ],
    )
}

#[test]
fn openlit_anthropic_input_is_normalised_to_include_cached_tokens() {
    // Uncached 1000 is above the cached counts: the old guess (cache > input)
    // missed it and priced the uncached part at the cache rate.
    let out = run_in_scope(
        "openlit.otel.tracing",
        vec![openlit_anthropic(1000, 300, 200)],
    );
    let row = &out.rows[0];
    assert_eq!(row.input_tokens, Some(1500));
    assert_eq!(row.cache_read_tokens, Some(300));
    assert_eq!(row.cache_write_tokens, Some(200));
    assert_eq!(row.total_tokens, Some(1600));
    let price = TokenProcessor::with_defaults()
        .prices()
        .lookup("claude-sonnet-4-5", Some("anthropic"), row.ts.date_naive())
        .unwrap()
        .clone();
    let expected = (1000.0 * price.input
        + 300.0 * price.cache_read
        + 200.0 * price.cache_write
        + 100.0 * price.output)
        / 1e6;
    assert!((row.cost_usd.unwrap() - expected).abs() < 1e-12);

    // The same attributes from an instrumentation that follows the convention
    // (the official one): input already includes the cache, stored as sent.
    let out = run_in_scope(
        "opentelemetry.instrumentation.anthropic",
        vec![openlit_anthropic(1000, 300, 200)],
    );
    assert_eq!(out.rows[0].input_tokens, Some(1000));
    assert_eq!(out.rows[0].total_tokens, Some(1100));

    // OpenLIT told by its resource (`telemetry.sdk.name`), any scope name.
    let mut request = request_in_scope("custom", vec![openlit_anthropic(10, 5, 0)]);
    request.resource_spans[0]
        .resource
        .as_mut()
        .unwrap()
        .attributes
        .push(s("telemetry.sdk.name", "openlit"));
    let out = TokenProcessor::with_defaults().traces(&request, Utc::now(), &cache(), None);
    assert_eq!(out.rows[0].input_tokens, Some(15));

    // OpenLIT with another provider: left alone.
    let mut openai = openlit_anthropic(1000, 300, 0);
    openai.attributes[1] = s("gen_ai.system", "openai");
    let out = run_in_scope("openlit.otel.tracing", vec![openai]);
    assert_eq!(out.rows[0].input_tokens, Some(1000));
}

fn vercel_do_generate(provider: &str, extra: Vec<KeyValue>) -> Span {
    let mut attrs = vec![
        s("ai.operationId", "ai.generateText.doGenerate"),
        s("ai.model.provider", provider),
        s("ai.model.id", "claude-sonnet-4-5"),
        i("ai.usage.inputTokens", 1000),
        i("ai.usage.outputTokens", 100),
        i("ai.usage.totalTokens", 1100),
        i("ai.usage.cachedInputTokens", 400),
    ];
    attrs.extend(extra);
    span(1, None, attrs)
}

#[test]
fn vercel_ai_sdk_5_anthropic_input_is_normalised_but_sdk_6_is_not() {
    let out = run_in_scope("ai", vec![vercel_do_generate("anthropic.messages", vec![])]);
    let row = &out.rows[0];
    assert_eq!(row.input_tokens, Some(1400));
    assert_eq!(row.cache_read_tokens, Some(400));
    assert_eq!(
        row.total_tokens,
        Some(1500),
        "total = normalised input + output"
    );

    // SDK 6 sends the details and an input that already includes the cache.
    let sdk6 = vercel_do_generate(
        "anthropic.messages",
        vec![
            i("ai.usage.inputTokenDetails.noCacheTokens", 600),
            i("ai.usage.inputTokenDetails.cacheReadTokens", 400),
        ],
    );
    let out = run_in_scope("ai", vec![sdk6]);
    assert_eq!(out.rows[0].input_tokens, Some(1000));
    assert_eq!(out.rows[0].total_tokens, Some(1100));

    // A custom tracer (another scope name): told by `ai.operationId`.
    let out = run_in_scope(
        "my-tracer",
        vec![vercel_do_generate("anthropic.messages", vec![])],
    );
    assert_eq!(out.rows[0].input_tokens, Some(1400));

    // SDK 5 with OpenAI: cachedInputTokens is a subset of inputTokens already.
    let out = run_in_scope("ai", vec![vercel_do_generate("openai.chat", vec![])]);
    assert_eq!(out.rows[0].input_tokens, Some(1000));
}

#[test]
fn an_unknown_family_with_cache_above_input_is_normalised_too() {
    let mut chat = genai_chat(1, None, 10, 5);
    chat.attributes
        .push(i("gen_ai.usage.cache_read.input_tokens", 400));
    let row = &run(vec![chat]).rows[0];
    assert_eq!(row.input_tokens, Some(410));
    assert_eq!(row.total_tokens, Some(415));
}

#[test]
fn thinking_tokens_outside_output_are_output_tokens() {
    // OpenLLMetry's Google GenAI: output without thoughts, total with them.
    let gemini = span(
        1,
        None,
        vec![
            s("gen_ai.operation.name", "generate_content"),
            s("gen_ai.system", "gemini"),
            s("gen_ai.request.model", "gemini-2.5-flash"),
            i("gen_ai.usage.input_tokens", 100),
            i("gen_ai.usage.output_tokens", 50),
            i("gen_ai.usage.reasoning_tokens", 200),
            i("llm.usage.total_tokens", 350),
        ],
    );
    let row = &run(vec![gemini]).rows[0];
    assert_eq!(row.output_tokens, Some(250));
    assert_eq!(row.reasoning_tokens, Some(200));
    assert_eq!(row.total_tokens, Some(350));
    let price = TokenProcessor::with_defaults()
        .prices()
        .lookup("gemini-2.5-flash", Some("gemini"), row.ts.date_naive())
        .unwrap()
        .clone();
    let expected = (100.0 * price.input + 250.0 * price.output) / 1e6;
    assert!((row.cost_usd.unwrap() - expected).abs() < 1e-12);

    // Reasoning inside output (the convention): nothing changes.
    let mut openai = genai_chat(2, None, 100, 250);
    openai.attributes.extend([
        i("gen_ai.usage.reasoning.output_tokens", 200),
        i("gen_ai.usage.total_tokens", 350),
    ]);
    let row = &run(vec![openai]).rows[0];
    assert_eq!(
        (row.output_tokens, row.total_tokens),
        (Some(250), Some(350))
    );
}

/// A Gemini call as a family that counts only the candidates as output reports it.
fn gemini_candidates_only(extra: Vec<KeyValue>) -> Span {
    let mut attributes = vec![
        s("gen_ai.operation.name", "chat"),
        s("gen_ai.system", "gcp.gen_ai"),
        s("gen_ai.request.model", "gemini-2.5-flash"),
        i("gen_ai.usage.input_tokens", 600),
        i("gen_ai.usage.output_tokens", 200),
    ];
    attributes.extend(extra);
    span(1, None, attributes)
}

#[test]
fn gemini_thinking_left_out_of_output_by_openlit_and_openllmetry_is_output() {
    // OpenLIT: thoughts as reasoning tokens, total = input + candidates.
    let openlit = gemini_candidates_only(vec![
        i("gen_ai.usage.reasoning_tokens", 150),
        i("gen_ai.usage.total_tokens", 800),
    ]);
    let row = &run_in_scope("openlit.otel.tracing", vec![openlit]).rows[0];
    assert_eq!(
        (row.output_tokens, row.reasoning_tokens, row.total_tokens),
        (Some(350), Some(150), Some(950))
    );
    // OpenLLMetry's Google GenAI: no reasoning count, the total holds them.
    let openllmetry = gemini_candidates_only(vec![i("llm.usage.total_tokens", 950)]);
    let row = &run_in_scope(
        "opentelemetry.instrumentation.google_generativeai",
        vec![openllmetry],
    )
    .rows[0];
    assert_eq!(
        (row.output_tokens, row.reasoning_tokens, row.total_tokens),
        (Some(350), Some(150), Some(950))
    );
    let price = TokenProcessor::with_defaults()
        .prices()
        .lookup("gemini-2.5-flash", Some("gcp.gen_ai"), row.ts.date_naive())
        .unwrap()
        .clone();
    let expected = (600.0 * price.input + 350.0 * price.output) / 1e6;
    assert!((row.cost_usd.unwrap() - expected).abs() < 1e-12);
    // Another family's Gemini output is taken as the convention's.
    let other = gemini_candidates_only(vec![i("gen_ai.usage.total_tokens", 950)]);
    let row = &run_in_scope("some.other.instrumentation", vec![other]).rows[0];
    assert_eq!(row.output_tokens, Some(200));
}

#[test]
fn a_span_and_the_log_event_of_one_call_carry_the_same_call_keys() {
    let mut chat = genai_chat(1, None, 10, 2);
    chat.attributes.push(s("gen_ai.response.id", "chatcmpl-7"));
    let spans = TokenProcessor::with_defaults().traces(
        &request(vec![chat]),
        Utc::now(),
        &cache(),
        Some("acme"),
    );
    let event = LogRecord {
        time_unix_nano: START + 2_000_000_000,
        event_name: "gen_ai.client.inference.operation.details".into(),
        trace_id: T.to_vec(),
        span_id: vec![1; 8],
        attributes: vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.request.model", "gpt-4o"),
            s("gen_ai.response.id", "chatcmpl-7"),
            i("gen_ai.usage.input_tokens", 10),
            i("gen_ai.usage.output_tokens", 2),
        ],
        ..Default::default()
    };
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![event],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let logs = TokenProcessor::with_defaults().logs(&logs, Utc::now(), &cache(), Some("acme"));
    let (span, log) = (&spans.rows[0].report, &logs.rows[0].report);
    assert!(span.from_span && !log.from_span);
    assert_eq!(span.scope, "acme");
    assert_eq!(log.scope, "acme");
    let expected = format!("s{}{}", hex::encode(T), hex::encode([1u8; 8]));
    assert_eq!(span.span_key.as_deref(), Some(expected.as_str()));
    assert_eq!(log.span_key, span.span_key);
    assert_eq!(span.response_key.as_deref(), Some("rchatcmpl-7"));
    assert_eq!(log.response_key, span.response_key);
    // Different ids and times: only the keys tell the writer they are one call.
    assert_ne!(spans.rows[0].id, logs.rows[0].id);
    assert_ne!(spans.rows[0].ts, logs.rows[0].ts);
}

fn with_kind(mut span: Span, kind: opentelemetry_proto::tonic::trace::v1::span::SpanKind) -> Span {
    span.kind = kind as i32;
    span
}

fn agent(id: u8, parent: Option<u8>, usage: Option<(i64, i64)>) -> Span {
    let mut attrs = vec![
        s("gen_ai.operation.name", "invoke_agent"),
        s("gen_ai.provider.name", "openai"),
        s("gen_ai.request.model", "gpt-4o"),
    ];
    if let Some((input, output)) = usage {
        attrs.extend([
            i("gen_ai.usage.input_tokens", input),
            i("gen_ai.usage.output_tokens", output),
        ]);
    }
    span(id, parent, attrs)
}

fn span_ids(batch: &TokenBatch) -> Vec<String> {
    batch
        .rows
        .iter()
        .map(|r| r.span_id.clone().unwrap_or_default())
        .collect()
}

#[test]
fn an_agent_span_with_usage_and_no_model_call_below_counts() {
    // OpenInference's claude-agent-sdk: all usage on the AGENT span.
    let claude = span(
        1,
        None,
        vec![
            s("openinference.span.kind", "AGENT"),
            s("llm.provider", "anthropic"),
            i("llm.token_count.prompt", 500),
            i("llm.token_count.completion", 80),
        ],
    );
    let out = run(vec![claude]);
    assert_eq!(span_ids(&out), vec!["0101010101010101"]);
    assert_eq!(out.rows[0].input_tokens, Some(500));
    assert_eq!(
        out.agents.len(),
        1,
        "remembered, in case a call below comes late"
    );
    // An agent over a model call reporting usage: only the call counts.
    let out = run(vec![
        agent(1, None, Some((30, 6))),
        genai_chat(2, Some(1), 30, 6),
    ]);
    assert_eq!(span_ids(&out), vec!["0202020202020202"]);
    assert!(out.agents.is_empty());
}

#[test]
fn a_remote_agent_client_span_counts_even_without_usage() {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let out = run(vec![with_kind(
        agent(1, None, Some((40, 4))),
        SpanKind::Client,
    )]);
    assert_eq!(out.rows.len(), 1);
    assert_eq!(out.rows[0].input_tokens, Some(40));
    let out = run(vec![with_kind(agent(1, None, None), SpanKind::Client)]);
    assert_eq!(out.rows.len(), 1);
    assert!(!out.rows[0].usage_known, "counted, usage unknown");
    // An in-process agent without usage is not a call.
    assert!(
        run(vec![with_kind(agent(1, None, None), SpanKind::Internal)])
            .rows
            .is_empty()
    );
    // A remote agent with a model call below (same trace): the call counts.
    let out = run(vec![
        with_kind(agent(1, None, None), SpanKind::Client),
        genai_chat(2, Some(1), 5, 1),
    ]);
    assert_eq!(span_ids(&out), vec!["0202020202020202"]);
    // The remote agent's own service reports its call later (same trace, below
    // the CLIENT span): the remote agent's row stops counting.
    let cache = cache();
    let processor = TokenProcessor::with_defaults();
    let first = processor.traces(
        &request(vec![with_kind(agent(1, None, None), SpanKind::Client)]),
        Utc::now(),
        &cache,
        None,
    );
    let second = processor.traces(
        &request(vec![genai_chat(2, Some(1), 5, 1)]),
        Utc::now(),
        &cache,
        None,
    );
    let uncounted: Vec<RowKey> = second.uncount.iter().map(|u| u.2).collect();
    assert_eq!(uncounted, vec![(first.rows[0].ts, first.rows[0].id)]);
}

#[test]
fn a_late_model_call_below_a_counted_agent_uncounts_it() {
    let cache = cache();
    let processor = TokenProcessor::with_defaults();
    // Request 1: the agent (usage 30/6) and a chain span below it, no call yet.
    let chain = span(2, Some(1), vec![s("openinference.span.kind", "CHAIN")]);
    let first = processor.traces(
        &request(vec![agent(1, None, Some((30, 6))), chain]),
        Utc::now(),
        &cache,
        None,
    );
    assert_eq!(span_ids(&first), vec!["0101010101010101"]);
    let agent_row = (first.rows[0].ts, first.rows[0].id);
    assert!(first.uncount.is_empty());
    // Request 2: the model call, below the chain span, reports the usage.
    let second = processor.traces(
        &request(vec![genai_chat(3, Some(2), 30, 6)]),
        Utc::now(),
        &cache,
        None,
    );
    assert_eq!(span_ids(&second), vec!["0303030303030303"]);
    let uncounted: Vec<RowKey> = second.uncount.iter().map(|u| u.2).collect();
    assert_eq!(uncounted, vec![agent_row], "the agent row stops counting");
    // Once: a retry of the call does not uncount again.
    let third = processor.traces(
        &request(vec![genai_chat(3, Some(2), 30, 6)]),
        Utc::now(),
        &cache,
        None,
    );
    assert!(third.uncount.is_empty());
    // And the agent, retried, is not counted again.
    let again = processor.traces(
        &request(vec![agent(1, None, Some((30, 6)))]),
        Utc::now(),
        &cache,
        None,
    );
    assert!(again.rows.is_empty());
}

#[test]
fn calls_without_usage_under_an_agent() {
    let mut streamed = genai_chat(2, Some(1), 0, 0);
    streamed.attributes.truncate(4);
    // Alone under an agent reporting usage: the agent counts, the call does not.
    let out = run(vec![agent(1, None, Some((50, 5))), streamed.clone()]);
    assert_eq!(span_ids(&out), vec!["0101010101010101"]);
    // Next to a call reporting usage: both calls count (one with unknown usage),
    // the agent does not.
    let out = run(vec![
        agent(1, None, Some((50, 5))),
        streamed,
        genai_chat(3, Some(1), 20, 2),
    ]);
    let mut ids = span_ids(&out);
    ids.sort();
    assert_eq!(ids, vec!["0202020202020202", "0303030303030303"]);
}

#[test]
fn operation_names_of_workflows_tasks_steps_and_calls() {
    let op = |name: &str, usage: bool| {
        let mut attrs = vec![
            s("gen_ai.operation.name", name),
            s("gen_ai.request.model", "gpt-4o"),
        ];
        if usage {
            attrs.push(i("gen_ai.usage.input_tokens", 10));
        }
        span(1, None, attrs)
    };
    let role_of = |name: &str| {
        let attrs = [s("gen_ai.operation.name", name)];
        let mut a = Attrs::new();
        a.fill([&[], &[], &attrs]);
        role(&a, Some(name))
    };
    for agent_like in [
        "invoke_workflow",
        "execute_task",
        "agent_step",
        "invoke_agent",
    ] {
        assert_eq!(role_of(agent_like), Role::Agent, "{agent_like}");
        // With usage and nothing below: counted (the agent rule).
        assert_eq!(
            run(vec![op(agent_like, true)]).rows.len(),
            1,
            "{agent_like}"
        );
        assert!(
            run(vec![op(agent_like, false)]).rows.is_empty(),
            "{agent_like}"
        );
    }
    assert_eq!(role_of("llm_request"), Role::Inference);
    assert_eq!(run(vec![op("llm_request", false)]).rows.len(), 1);
    assert_eq!(role_of("retrieval"), Role::Wrapper);
    assert!(run(vec![op("retrieval", true)]).rows.is_empty());
}

#[test]
fn identities_are_shared_once_per_trace_unless_turned_off() {
    let user = |id: u8| {
        span(
            id,
            None,
            vec![s("enduser.id", "alice"), s("tenant.id", "t")],
        )
    };
    let cache = cache();
    let processor = TokenProcessor::with_defaults();
    assert!(processor.across_instances());
    // Two spans of one trace: one identity to share, merged.
    let out = processor.traces(&request(vec![user(1), user(2)]), Utc::now(), &cache, None);
    assert_eq!(out.share.len(), 1);
    assert_eq!(out.share[0].0, T);
    assert_eq!(out.share[0].1.user.as_deref(), Some("alice"));
    // Not written yet: the next request shares it again; once written, not.
    let again = processor.traces(&request(vec![user(3)]), Utc::now(), &cache, None);
    assert_eq!(again.share.len(), 1);
    cache.mark_shared(&T, &again.share[0].1);
    let after = processor.traces(&request(vec![user(4)]), Utc::now(), &cache, None);
    assert!(after.share.is_empty());

    let off = TokensConfig {
        attribution_across_instances: false,
        ..Default::default()
    };
    let processor = TokenProcessor::new(&off, &PricingConfig::default());
    assert!(!processor.across_instances());
    let out = processor.traces(
        &request(vec![user(1)]),
        Utc::now(),
        &TraceCache::new(Duration::from_secs(300), 10),
        None,
    );
    assert!(out.share.is_empty());
}

/// The table [`Attrs`] replaced, as a reference: every attribute with a value
/// inserted in order into a hash map (the last occurrence wins).
fn reference_table(lists: [&[KeyValue]; 3]) -> std::collections::HashMap<&str, (&AnyValue, u8)> {
    let mut map = std::collections::HashMap::new();
    for (level, list) in (0u8..).zip(lists) {
        for kv in list {
            if let Some(value) = kv.value.as_ref() {
                map.insert(kv.key.as_str(), (value, level));
            }
        }
    }
    map
}

#[test]
fn attribute_lookups_answer_as_the_hash_table_did() {
    let mapping = TokenMapping::builtin();
    let none = |key: &str| KeyValue {
        key: key.into(),
        value: None,
        ..Default::default()
    };
    let resource = vec![
        s("service.name", "svc"),
        s("traceloop.association.properties.user_id", "meta-resource"),
        s("ai.telemetry.metadata.tenantId", "meta-tenant-resource"),
    ];
    let scope = vec![s("tenant.id", "from-scope"), i("session.id", 7)];
    let mut record = vec![
        s("gen_ai.request.model", "first"),
        s("gen_ai.request.model", "second"),
        none("gen_ai.response.model"),
        s("traceloop.association.properties.user_id", "meta-record"),
        s("traceloop.association.properties.user_id", ""),
        i("gen_ai.usage.input_tokens", 12),
        none("gen_ai.usage.input_tokens"),
        s("", "empty key"),
    ];
    // Short lists (the list and its filter) and long ones (the table).
    for filler in [0, MAP_FROM] {
        record.extend((0..filler).map(|n| s(&format!("app.filler.{n}"), "x")));
        let lists: [&[KeyValue]; 3] = [&resource, &scope, &record];
        let reference = reference_table(lists);
        let mut attrs = Attrs::new();
        attrs.fill(lists);
        let m = &mapping;
        let mut asked: Vec<&str> = [
            &m.input,
            &m.output,
            &m.total,
            &m.cache_read,
            &m.cache_write,
            &m.reasoning,
            &m.request_model,
            &m.response_model,
            &m.provider,
            &m.operation,
            &m.user,
            &m.tenant,
            &m.session,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
        asked.extend(reference.keys().copied());
        asked.extend(["", "absent", "service.nam", "ervice.name"]);
        for key in asked {
            assert_eq!(
                attrs.entry(key).map(|(v, l)| (v.clone(), l)),
                reference.get(key).map(|(v, l)| ((*v).clone(), *l)),
                "{key:?} with {filler} more"
            );
        }
        // Metadata keys: the last occurrence of each, whatever the order.
        let mut distinct: Vec<(&str, AnyValue, u8)> = Vec::new();
        attrs.for_each_distinct(
            |key| key.contains("association") || key.contains("metadata"),
            |k, v, l| distinct.push((k, v.clone(), l)),
        );
        distinct.sort_by(|a, b| a.0.cmp(b.0));
        let mut expected: Vec<(&str, AnyValue, u8)> = reference
            .iter()
            .filter(|(key, _)| key.contains("association") || key.contains("metadata"))
            .map(|(k, (v, l))| (*k, (*v).clone(), *l))
            .collect();
        expected.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(distinct, expected, "with {filler} more");
        assert_eq!(
            attrs.identity_text(&m.user, &m.metadata_prefixes, &m.metadata_user),
            None,
            "the resource's metadata user is overridden by the record's empty one"
        );
        assert_eq!(
            attrs.identity_text(&m.tenant, &m.metadata_prefixes, &m.metadata_tenant),
            Some("from-scope".to_string())
        );
        assert_eq!(
            attrs.count(&m.input),
            Some(12),
            "a valueless duplicate does not hide the value"
        );
        assert_eq!(attrs.text(&m.request_model).as_deref(), Some("second"));
    }
}
