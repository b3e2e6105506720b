// A small Express app whose user activity and LLM token usage reach Tally.
// Nothing in it knows Tally: three attributes on the request's span say who,
// which tenant and what they did. Run: node --import ./tracing.mjs app.mjs
import express from "express";
import OpenAI from "openai";
import { trace } from "@opentelemetry/api";

const app = express();
app.use(express.json());
app.use(express.raw({ type: "application/octet-stream", limit: "10mb" }));
const llm = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, maxRetries: 0 });

// Names the activity on the current request's span.
function record(req, action, extra = {}) {
  const span = trace.getActiveSpan();
  span?.setAttributes({
    "activity.action": action,
    "enduser.id": req.get("x-user"),
    "tenant.id": req.get("x-tenant"),
    ...extra,
  });
}

app.post("/login", (req, res) => {
  record(req, "auth.login.success");
  res.json({ ok: true });
});

app.post("/upload/:name", (req, res) => {
  record(req, "file.upload", { "activity.resource.type": "file", "activity.resource.id": req.params.name });
  res.json({ bytes: req.body?.length ?? 0 });
});

app.post("/chat", async (req, res) => {
  record(req, "ai.chat");
  const answer = await llm.chat.completions.create({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: req.body?.prompt ?? "" }],
  });
  res.json({ answer: answer.choices[0].message.content });
});

const port = Number(process.env.PORT ?? 3000);
app.listen(port, "127.0.0.1", () => console.log(`listening on ${port}`));
