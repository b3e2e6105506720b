// OpenTelemetry for the example app, loaded before it (`node --import ./tracing.mjs app.mjs`).
// The OTLP endpoint and headers come from the standard OTEL_EXPORTER_OTLP_* variables.
import { register } from "node:module";
import { NodeSDK } from "@opentelemetry/sdk-node";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { HttpInstrumentation } from "@opentelemetry/instrumentation-http";
import { ExpressInstrumentation } from "@opentelemetry/instrumentation-express";
import { OpenAIInstrumentation } from "@opentelemetry/instrumentation-openai";

// The app is an ES module: the instrumentations patch its imports through this hook.
register("@opentelemetry/instrumentation/hook.mjs", import.meta.url);

const sdk = new NodeSDK({
  serviceName: "example-express",
  traceExporter: new OTLPTraceExporter(),
  instrumentations: [new HttpInstrumentation(), new ExpressInstrumentation(), new OpenAIInstrumentation()],
});
sdk.start();

// Flush on shutdown so the last requests' spans reach Tally.
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => sdk.shutdown().finally(() => process.exit(0)));
}
