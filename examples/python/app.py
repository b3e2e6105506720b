"""A small FastAPI app whose user activity and LLM token usage reach Tally.

Nothing in it knows Tally: it uses the OpenTelemetry SDK, the FastAPI and
official OpenAI instrumentations, and sets three attributes on the request's
span (who, which tenant, what they did). Run it with Tally running:

    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OPENAI_BASE_URL=... \
        uvicorn app:app --port 8000
"""

import os

from fastapi import FastAPI, Header, UploadFile
from openai import OpenAI
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# One tracer provider, exporting OTLP/HTTP to Tally (endpoint and headers from
# the standard OTEL_EXPORTER_OTLP_* variables).
provider = TracerProvider(resource=Resource.create({"service.name": "example-fastapi"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
OpenAIInstrumentor().instrument()

app = FastAPI()
FastAPIInstrumentor.instrument_app(app)
llm = OpenAI(base_url=os.environ.get("OPENAI_BASE_URL"), max_retries=0)


def record(action: str, user: str, tenant: str, **extra: str) -> None:
    """Names the activity on the current request's span."""
    span = trace.get_current_span()
    span.set_attribute("activity.action", action)
    span.set_attribute("enduser.id", user)
    span.set_attribute("tenant.id", tenant)
    for key, value in extra.items():
        span.set_attribute(key, value)


@app.post("/login")
def login(x_user: str = Header(), x_tenant: str = Header()):
    record("auth.login.success", x_user, x_tenant)
    return {"ok": True}


@app.post("/upload")
async def upload(file: UploadFile, x_user: str = Header(), x_tenant: str = Header()):
    size = len(await file.read())
    record(
        "file.upload",
        x_user,
        x_tenant,
        **{"activity.resource.type": "file", "activity.resource.id": file.filename or ""},
    )
    return {"bytes": size}


@app.post("/chat")
def chat(body: dict, x_user: str = Header(), x_tenant: str = Header()):
    record("ai.chat", x_user, x_tenant)
    answer = llm.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": body.get("prompt", "")}]
    )
    return {"answer": answer.choices[0].message.content}


@app.on_event("shutdown")
def flush() -> None:
    provider.shutdown()
