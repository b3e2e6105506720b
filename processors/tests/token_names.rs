//! Attribute and operation names of current GenAI instrumentations (Vercel AI SDK
//! token details, pydantic-ai, OpenInference model names, the GenAI conversation id)
//! that the built-in mapping reads, at the processor level.

use std::time::Duration;

use chrono::Utc;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tally_model::TokenUsage;
use tally_processors::attribution::TraceCache;
use tally_processors::tokens::{TokenBatch, TokenProcessor};

const TRACE: [u8; 16] = [9; 16];
const START: u64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}
fn s(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}
fn i(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

fn span(id: u8, parent: Option<u8>, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: TRACE.to_vec(),
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: format!("span-{id}"),
        start_time_unix_nano: START,
        end_time_unix_nano: START + 1_000_000_000,
        attributes,
        ..Default::default()
    }
}

fn run(spans: Vec<Span>) -> TokenBatch {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let cache = TraceCache::new(Duration::from_secs(300), 100);
    TokenProcessor::with_defaults().traces(&request, Utc::now(), &cache, None)
}

fn only_row(batch: &TokenBatch) -> &TokenUsage {
    assert_eq!(batch.rows.len(), 1, "rows: {:#?}", batch.rows);
    &batch.rows[0]
}

#[test]
fn vercel_token_details_give_cache_and_reasoning_tokens() {
    let batch = run(vec![span(
        1,
        None,
        vec![
            s("ai.operationId", "ai.generateText.doGenerate"),
            s("ai.model.provider", "anthropic.messages"),
            s("ai.model.id", "claude-sonnet-4"),
            i("ai.usage.inputTokens", 1200),
            i("ai.usage.outputTokens", 300),
            i("ai.usage.inputTokenDetails.cacheReadTokens", 800),
            i("ai.usage.inputTokenDetails.cacheWriteTokens", 100),
            i("ai.usage.outputTokenDetails.reasoningTokens", 120),
        ],
    )]);
    let row = only_row(&batch);
    assert_eq!(row.cache_read_tokens, Some(800));
    assert_eq!(row.cache_write_tokens, Some(100));
    assert_eq!(row.reasoning_tokens, Some(120));
}

#[test]
fn pydantic_ai_detail_names_give_cache_tokens() {
    let batch = run(vec![span(
        1,
        None,
        vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.system", "openai"),
            s("gen_ai.request.model", "gpt-4o"),
            i("gen_ai.usage.input_tokens", 500),
            i("gen_ai.usage.output_tokens", 50),
            i("gen_ai.usage.details.cache_read_tokens", 200),
            i("gen_ai.usage.details.cache_write_tokens", 30),
        ],
    )]);
    let row = only_row(&batch);
    assert_eq!(row.cache_read_tokens, Some(200));
    assert_eq!(row.cache_write_tokens, Some(30));
}

#[test]
fn openinference_embedding_spans_get_their_model_and_a_price() {
    let batch = run(vec![span(
        1,
        None,
        vec![
            s("openinference.span.kind", "EMBEDDING"),
            s("llm.provider", "openai"),
            s("embedding.model_name", "text-embedding-3-small"),
            i("llm.token_count.prompt", 1000),
            i("llm.token_count.total", 1000),
        ],
    )]);
    let row = only_row(&batch);
    assert_eq!(row.model.as_deref(), Some("text-embedding-3-small"));
    assert!(
        row.cost_usd.is_some_and(|cost| cost > 0.0),
        "an embedding model of the price table is priced: {row:#?}"
    );
}

#[test]
fn openinference_request_and_response_model_names_are_read() {
    let batch = run(vec![span(
        1,
        None,
        vec![
            s("openinference.span.kind", "LLM"),
            s("llm.provider", "openai"),
            s("llm.request.model_name", "gpt-4o"),
            s("llm.response.model_name", "gpt-4o-2024-08-06"),
            i("llm.token_count.prompt", 100),
            i("llm.token_count.completion", 10),
            i("llm.token_count.prompt_details.cache_input", 40),
        ],
    )]);
    let row = only_row(&batch);
    assert_eq!(row.request_model.as_deref(), Some("gpt-4o"));
    assert_eq!(row.response_model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(row.cache_read_tokens, Some(40));
}

#[test]
fn the_conversation_id_is_the_session_when_none_is_named() {
    let batch = run(vec![span(
        1,
        None,
        vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.provider.name", "openai"),
            s("gen_ai.request.model", "gpt-4o"),
            s("gen_ai.conversation.id", "conv-42"),
            i("gen_ai.usage.input_tokens", 10),
            i("gen_ai.usage.output_tokens", 1),
        ],
    )]);
    assert_eq!(only_row(&batch).session_id.as_deref(), Some("conv-42"));
}
