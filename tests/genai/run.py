"""Drive one real GenAI instrumentation against the fake provider and Tally.

Usage: run.py FAMILY SCENARIO  (environment: TALLY_OTLP_HTTP, TALLY_TENANT,
TALLY_USER, optional TALLY_INGEST_KEY). Each scenario wraps its model calls in a
request span that carries the user and tenant, as an app would, exports spans and
log records over OTLP/HTTP, and prints one JSON object: the calls the fake
provider served (`served`), each with its usage in the convention's terms.
"""

import json
import os
import sys

from fake_provider import FakeProvider

FAMILY, SCENARIO = sys.argv[1], sys.argv[2]
ENDPOINT = os.environ["TALLY_OTLP_HTTP"].rstrip("/")
TENANT = os.environ["TALLY_TENANT"]
USER = os.environ["TALLY_USER"]
KEY = os.environ.get("TALLY_INGEST_KEY")
HEADERS = {"authorization": f"Bearer {KEY}"} if KEY else {}

fake = FakeProvider()
os.environ["OPENAI_API_KEY"] = "sk-fake"
os.environ["ANTHROPIC_API_KEY"] = "sk-ant-fake"
os.environ["GEMINI_API_KEY"] = "fake"
os.environ["GOOGLE_API_KEY"] = "fake"


def otel_providers():
    """Global tracer and logger providers exporting to Tally (synchronously flushed)."""
    from opentelemetry import trace, _logs
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    resource = Resource.create({"service.name": f"genai-{FAMILY}"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{ENDPOINT}/v1/traces", headers=HEADERS))
    )
    if os.environ.get("GENAI_DUMP"):
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    trace.set_tracer_provider(tracer_provider)
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{ENDPOINT}/v1/logs", headers=HEADERS))
    )
    _logs.set_logger_provider(logger_provider)
    return tracer_provider, logger_provider


def instrument():
    """Installs FAMILY's instrumentation; returns the providers to flush."""
    if FAMILY == "openai-v2":
        os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
        providers = otel_providers()
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        OpenAIInstrumentor().instrument()
        return providers
    if FAMILY == "openinference":
        providers = otel_providers()
        from openinference.instrumentation.openai import OpenAIInstrumentor

        OpenAIInstrumentor().instrument()
        return providers
    if FAMILY == "openlit":
        providers = otel_providers()
        import openlit

        # openlit reuses the SDK providers set above (spans and its log events).
        openlit.init(
            disable_metrics=True,
            disable_batch=True,
            # A local (empty) price file: openlit would otherwise fetch one.
            pricing_json=os.path.join(os.path.dirname(__file__), "openlit_prices.json"),
            application_name=f"genai-{FAMILY}",
        )
        return providers
    if FAMILY == "traceloop":
        providers = otel_providers()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from traceloop.sdk import Traceloop

        Traceloop.init(
            app_name=f"genai-{FAMILY}",
            exporter=OTLPSpanExporter(endpoint=f"{ENDPOINT}/v1/traces", headers=HEADERS),
            disable_batch=True,
            telemetry_enabled=False,
            should_enrich_metrics=False,
        )
        return providers
    if FAMILY == "pydantic-ai":
        providers = otel_providers()
        return providers
    raise SystemExit(f"unknown family {FAMILY}")


def openai_client():
    import openai

    return openai.OpenAI(base_url=f"{fake.url}/v1", api_key="sk-fake", max_retries=0)


def chat(client):
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello."}]
    )


def stream(client, include_usage):
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    for _ in client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello."}],
        stream=True,
        **extra,
    ):
        pass


def embeddings(client):
    client.embeddings.create(model="text-embedding-3-small", input=["hello world"])


def anthropic_call():
    import anthropic

    client = anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-fake", max_retries=0)
    client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "Say hello."}],
    )


def gemini_call():
    from google import genai
    from google.genai import types

    client = genai.Client(
        api_key="fake", http_options=types.HttpOptions(base_url=fake.url, api_version="v1beta")
    )
    client.models.generate_content(model="gemini-2.5-flash", contents="Say hello.")


def pydantic_agent():
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(
        "gpt-4o-mini", provider=OpenAIProvider(base_url=f"{fake.url}/v1", api_key="sk-fake")
    )
    Agent.instrument_all()
    agent = Agent(model)
    agent.run_sync("Say hello.")


def run_scenario():
    if SCENARIO == "chat":
        chat(openai_client())
    elif SCENARIO == "stream_usage":
        stream(openai_client(), True)
    elif SCENARIO == "stream_no_usage":
        stream(openai_client(), False)
    elif SCENARIO == "embeddings":
        embeddings(openai_client())
    elif SCENARIO == "anthropic":
        anthropic_call()
    elif SCENARIO == "gemini":
        gemini_call()
    elif SCENARIO == "agent":
        pydantic_agent()
    else:
        raise SystemExit(f"unknown scenario {SCENARIO}")


def main():
    tracer_provider, logger_provider = instrument()
    from opentelemetry import trace

    tracer = trace.get_tracer("genai-corpus-app")
    with tracer.start_as_current_span("POST /chat") as span:
        span.set_attribute("enduser.id", USER)
        span.set_attribute("tenant.id", TENANT)
        span.set_attribute("activity.action", "ai.chat")
        trace_id = format(span.get_span_context().trace_id, "032x")
        run_scenario()
    tracer_provider.force_flush()
    logger_provider.force_flush()
    tracer_provider.shutdown()
    logger_provider.shutdown()
    fake.close()
    print(json.dumps({"trace_id": trace_id, "served": fake.served}))


if __name__ == "__main__":
    main()
