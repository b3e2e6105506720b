#!/usr/bin/env python3
"""Writes the conformance corpus: OTLP requests as google.protobuf.json_format writes
them (the reference protobuf-JSON encoder) beside their protobuf encoding (`.binpb`).

The only change made to json_format's output is the one OTLP/JSON prescribes over
proto3 JSON: trace and span ids are hex, not base64. Everything else (64-bit integers
as strings, "NaN"/"Infinity", empty lists as `{}`, enum names in one file) is as the
encoder writes it.

Run (needs `pip install protobuf opentelemetry-proto`):
    python3 tests/conformance/generate.py
"""

import base64
import json
import math
import os
import time

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
# A fixed time (2026-12-01T12:00:00Z) keeps the corpus stable; Tally stores any time.
T0 = 1_764_590_400_000_000_000
ID_FIELDS = {"traceId", "spanId", "parentSpanId"}


def value(v):
    out = common_pb2.AnyValue()
    if v is None:
        return out
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int):
        out.int_value = v
    elif isinstance(v, float):
        out.double_value = v
    elif isinstance(v, str):
        out.string_value = v
    elif isinstance(v, bytes):
        out.bytes_value = v
    elif isinstance(v, list):
        out.array_value.SetInParent()
        for item in v:
            out.array_value.values.append(value(item))
    elif isinstance(v, dict):
        out.kvlist_value.SetInParent()
        for k, item in v.items():
            out.kvlist_value.values.add(key=k, value=value(item))
    return out


def attrs(target, pairs):
    for k, v in pairs.items():
        target.add(key=k, value=value(v))


EVERY_KIND = {
    "s": "héllo wörld ✓ 日本語 🎉",
    "empty.string": "",
    "b": True,
    "i.min": -(2**63),
    "i.max": 2**63 - 1,
    "i.2pow53p1": 2**53 + 1,
    "d": 0.1,
    "d.nan": math.nan,
    "d.inf": math.inf,
    "d.neg_inf": -math.inf,
    "d.max": 1.7976931348623157e308,
    "d.tiny": 5e-324,
    "d.neg_zero": -0.0,
    "bytes": b"\x00\xffbin",
    "empty.array": [],
    "empty.kvlist": {},
    "nested": [1, [2.5, [], {}], {"k": {"deeper": ["x", None]}}],
    "unset": None,
}


def traces():
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    attrs(rs.resource.attributes, {"service.name": "corpus", "enduser.id": "resource-user"})
    ss = rs.scope_spans.add()
    ss.scope.name = "corpus-scope"
    ss.scope.version = "1.0"
    for n, extra in enumerate([
        {"activity.action": "doc.read", "user.id": "record-user", **EVERY_KIND},
        {"activity.action": "auth.login.success", "company.id": "acme",
         "gen_ai.request.model": "gpt-4o", "gen_ai.operation.name": "chat",
         "gen_ai.usage.input_tokens": -5, "gen_ai.usage.prompt_tokens": 40,
         "gen_ai.usage.output_tokens": 7.0},
        {"activity.action": "x" * 300},
        {"no.action": "telemetry only"},
    ]):
        span = ss.spans.add()
        span.trace_id = bytes([0x5B, 0x8E] + [n] * 14)
        span.span_id = bytes([0xEE, 0xE1, 0x9B, 0x7E, 0xC3, 0xC1, 0xB1, n])
        if n:
            span.parent_span_id = bytes([0xEE, 0xE1, 0x9B, 0x7E, 0xC3, 0xC1, 0xB1, 0])
        span.name = f"op-{n}"
        span.kind = 2
        span.start_time_unix_nano = T0 + n * 1_000_000
        span.end_time_unix_nano = T0 + n * 1_000_000 + 1_500_000_000
        span.status.code = 2 if n == 1 else 0
        attrs(span.attributes, extra)
        ev = span.events.add()
        ev.name = "event"
        ev.time_unix_nano = T0
    # A span without ids (absent ids are valid).
    span = ss.spans.add()
    span.name = "no-ids"
    span.start_time_unix_nano = T0
    attrs(span.attributes, {"activity.action": "file.upload", "tenant.id": "t1"})
    return req


def logs():
    req = logs_service_pb2.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    attrs(rl.resource.attributes, {"service.name": "corpus-logs", "tenant.id": "resource-tenant"})
    sl = rl.scope_logs.add()
    for n, (extra, body) in enumerate([
        ({"activity.action": "doc.read", "organization.id": "record-org", **EVERY_KIND}, "body"),
        ({"enduser.id": "u1"}, {"k": [1, 2.5, None]}),
        ({"activity.action": "Bad Action"}, None),
    ]):
        rec = sl.log_records.add()
        rec.time_unix_nano = T0 + n
        rec.observed_time_unix_nano = T0 + n + 5
        rec.severity_number = 17 if n == 1 else 9
        rec.severity_text = "ERROR" if n == 1 else "INFO"
        if body is not None:
            rec.body.CopyFrom(value(body))
        attrs(rec.attributes, extra)
        if n == 1:
            rec.event_name = "auth.logout.success"
            rec.trace_id = bytes(range(16))
            rec.span_id = bytes(range(8))
    return req


def hex_ids(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ID_FIELDS and isinstance(v, str):
                node[k] = base64.b64decode(v).hex()
            else:
                hex_ids(v)
    elif isinstance(node, list):
        for item in node:
            hex_ids(item)


def write(name, message, **options):
    text = json_format.MessageToJson(message, **options)
    tree = json.loads(text)
    hex_ids(tree)
    with open(os.path.join(HERE, name + ".json"), "w", encoding="utf-8") as f:
        json.dump(tree, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(HERE, name + ".binpb"), "wb") as f:
        f.write(message.SerializeToString())


if __name__ == "__main__":
    write("traces", traces(), use_integers_for_enums=True)
    write("traces_enum_names", traces())
    write("logs", logs(), use_integers_for_enums=True)
