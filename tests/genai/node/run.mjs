// Drive the Vercel AI SDK (its OpenTelemetry integration) against the fake
// provider and Tally. Usage: node run.mjs SCENARIO (environment: FAKE_URL,
// TALLY_OTLP_HTTP, TALLY_TENANT, TALLY_USER). Prints one JSON object like
// ../run.py: the request span's trace id and the calls the fake served.
import { trace } from "@opentelemetry/api";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { generateText, streamText, embed } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { createAnthropic } from "@ai-sdk/anthropic";

const scenario = process.argv[2];
const fake = process.env.FAKE_URL;
const endpoint = process.env.TALLY_OTLP_HTTP.replace(/\/$/, "");

const provider = new NodeTracerProvider({
  resource: resourceFromAttributes({ "service.name": "genai-vercel-ai" }),
  spanProcessors: [new SimpleSpanProcessor(new OTLPTraceExporter({ url: `${endpoint}/v1/traces` }))],
});
provider.register();

const openai = createOpenAI({ baseURL: `${fake}/v1`, apiKey: "sk-fake" });
const anthropic = createAnthropic({ baseURL: `${fake}/v1`, apiKey: "sk-ant-fake" });
const telemetry = { isEnabled: true, functionId: "corpus" };

async function run() {
  switch (scenario) {
    case "chat":
      await generateText({ model: openai.chat("gpt-4o-mini"), prompt: "Say hello.", experimental_telemetry: telemetry });
      break;
    case "stream_usage": {
      const result = streamText({ model: openai.chat("gpt-4o-mini"), prompt: "Say hello.", experimental_telemetry: telemetry });
      for await (const _ of result.textStream) {
        // drain
      }
      await result.usage;
      break;
    }
    case "embeddings":
      await embed({ model: openai.embedding("text-embedding-3-small"), value: "hello world", experimental_telemetry: telemetry });
      break;
    case "anthropic":
      await generateText({ model: anthropic("claude-sonnet-4-5"), prompt: "Say hello.", experimental_telemetry: telemetry });
      break;
    default:
      throw new Error(`unknown scenario ${scenario}`);
  }
}

const tracer = trace.getTracer("genai-corpus-app");
let traceId;
await tracer.startActiveSpan("POST /chat", async (span) => {
  span.setAttribute("enduser.id", process.env.TALLY_USER);
  span.setAttribute("tenant.id", process.env.TALLY_TENANT);
  span.setAttribute("activity.action", "ai.chat");
  traceId = span.spanContext().traceId;
  try {
    await run();
  } finally {
    span.end();
  }
});
await provider.forceFlush();
await provider.shutdown();
const served = await (await fetch(`${fake}/_served`)).json();
console.log(JSON.stringify({ trace_id: traceId, served }));
