"""A local stand-in for the OpenAI, Anthropic and Gemini HTTP APIs.

It answers every call with a fixed, known `usage` (cached, cache-creation and
reasoning tokens included) and records what it served, so a test can compare
Tally's ledger with what the provider would have billed. Standard library only.
"""

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The usage each endpoint reports, in the provider's own spelling.
OPENAI_CHAT_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 400},
    "completion_tokens_details": {"reasoning_tokens": 100},
}
OPENAI_EMBEDDING_USAGE = {"prompt_tokens": 80, "total_tokens": 80}
# Anthropic's raw input excludes cache reads and writes.
ANTHROPIC_USAGE = {
    "input_tokens": 500,
    "output_tokens": 250,
    "cache_read_input_tokens": 2000,
    "cache_creation_input_tokens": 1000,
}
# Gemini's candidates exclude thinking ("thoughts") tokens; the total includes them.
GEMINI_USAGE = {
    "promptTokenCount": 600,
    "candidatesTokenCount": 200,
    "thoughtsTokenCount": 150,
    "totalTokenCount": 950,
}


def convention(provider, usage):
    """The provider's usage in the OpenTelemetry GenAI convention's terms.

    `input` counts every input token (cache reads and writes included); `output`
    every output token (reasoning or thinking included).
    """
    if provider == "openai":
        return {
            "input": usage["prompt_tokens"],
            "output": usage.get("completion_tokens", 0),
            "cache_read": usage.get("prompt_tokens_details", {}).get("cached_tokens", 0),
            "cache_write": 0,
            "reasoning": usage.get("completion_tokens_details", {}).get("reasoning_tokens", 0),
        }
    if provider == "anthropic":
        cache_read = usage["cache_read_input_tokens"]
        cache_write = usage["cache_creation_input_tokens"]
        return {
            "input": usage["input_tokens"] + cache_read + cache_write,
            "output": usage["output_tokens"],
            "cache_read": cache_read,
            "cache_write": cache_write,
            "reasoning": 0,
        }
    if provider == "gemini":
        return {
            "input": usage["promptTokenCount"],
            "output": usage["candidatesTokenCount"] + usage["thoughtsTokenCount"],
            "cache_read": usage.get("cachedContentTokenCount", 0),
            "cache_write": 0,
            "reasoning": usage["thoughtsTokenCount"],
        }
    raise ValueError(provider)


class FakeProvider:
    """Serves on 127.0.0.1 (a free port) until `close()`; `served` lists the calls.

    Every answer has its own response id, as a real provider's has (a ledger may
    tell one call's reports apart by it).
    """

    def __init__(self):
        self.served = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                # The calls served so far (then forgotten): for apps in other
                # languages, which run this server as a separate process.
                if self.path == "/_served":
                    with owner._lock:
                        served, owner.served = owner.served, []
                    _json(self, 200, served)
                else:
                    _json(self, 404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                owner._route(self, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def close(self):
        self._server.shutdown()
        self._server.server_close()

    def _record(self, provider, model, usage, reported=True):
        with self._lock:
            self.served.append(
                {
                    "provider": provider,
                    "model": model,
                    "reported": reported,
                    "usage": convention(provider, usage),
                }
            )

    def _route(self, handler, body):
        path = handler.path.split("?")[0]
        if path.endswith("/chat/completions"):
            self._openai_chat(handler, body)
        elif path.endswith("/embeddings"):
            self._openai_embeddings(handler, body)
        elif path.endswith("/messages"):
            self._anthropic(handler, body)
        elif ":generateContent" in path:
            self._gemini(handler, path)
        else:
            _json(handler, 404, {"error": {"message": f"no route {path}"}})

    def _openai_chat(self, handler, body):
        model = body.get("model", "gpt-4o-mini")
        served_model = model + "-2024-07-18" if model == "gpt-4o-mini" else model
        created = int(time.time())
        if not body.get("stream"):
            self._record("openai", served_model, OPENAI_CHAT_USAGE)
            _json(
                handler,
                200,
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex}",
                    "object": "chat.completion",
                    "created": created,
                    "model": served_model,
                    "system_fingerprint": "fp_fake",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "Hello there."},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": OPENAI_CHAT_USAGE,
                },
            )
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._record("openai", served_model, OPENAI_CHAT_USAGE, reported=include_usage)
        chunk = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": served_model,
            "system_fingerprint": "fp_fake",
        }
        events = [
            dict(chunk, choices=[{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}]),
            dict(chunk, choices=[{"index": 0, "delta": {"content": "lo."}, "finish_reason": None}]),
            dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        ]
        if include_usage:
            events.append(dict(chunk, choices=[], usage=OPENAI_CHAT_USAGE))
        payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        data = payload.encode()
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _openai_embeddings(self, handler, body):
        model = body.get("model", "text-embedding-3-small")
        self._record("openai", model, OPENAI_EMBEDDING_USAGE)
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) and inputs and isinstance(inputs[0], str) else 1
        _json(
            handler,
            200,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                    for i in range(count)
                ],
                "model": model,
                "usage": OPENAI_EMBEDDING_USAGE,
            },
        )

    def _anthropic(self, handler, body):
        model = body.get("model", "claude-sonnet-4-5")
        served_model = model if model[-8:].isdigit() else model + "-20250929"
        self._record("anthropic", served_model, ANTHROPIC_USAGE)
        _json(
            handler,
            200,
            {
                "id": f"msg_{uuid.uuid4().hex}",
                "type": "message",
                "role": "assistant",
                "model": served_model,
                "content": [{"type": "text", "text": "Hello there."}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": ANTHROPIC_USAGE,
            },
        )

    def _gemini(self, handler, path):
        model = path.split("/models/")[-1].split(":")[0]
        self._record("gemini", model, GEMINI_USAGE)
        _json(
            handler,
            200,
            {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": "Hello there."}]},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": GEMINI_USAGE,
                "modelVersion": model,
                "responseId": uuid.uuid4().hex,
            },
        )


def _json(handler, status, value):
    data = json.dumps(value).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


if __name__ == "__main__":
    # Standalone: print the base URL, serve until stdin closes.
    import sys

    provider = FakeProvider()
    print(provider.url, flush=True)
    sys.stdin.read()
    provider.close()
