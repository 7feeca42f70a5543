"""Traces as OpenTelemetry JSON (OTLP/JSON ``ExportTraceServiceRequest``), written to a file.

For the tools a facility already runs (a collector's file receiver, Jaeger or Tempo import):
nothing is sent anywhere. Each request becomes a root span ``ask`` with a child span per
step (route, plan, retrieve, assess, synthesize, verify, ...) at its own start and length.
Attributes carry the user, outcome, tokens, model and retrieval time, chunk ids and scores;
the question and answer text only when asked for (``with_text``), since they may be
classified.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

__all__ = ["otel_json"]

SCOPE = "appliance.agent"
_OK, _ERROR = 1, 2  # STATUS_CODE_OK, STATUS_CODE_ERROR
_INTERNAL = 1  # SPAN_KIND_INTERNAL


def _value(v: Any) -> dict:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [_value(x) for x in v]}}
    return {"stringValue": str(v)}


def _attrs(d: dict[str, Any]) -> list[dict]:
    return [{"key": k, "value": _value(v)} for k, v in d.items() if v is not None]


def _nanos(iso: str) -> int:
    t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return int(t.timestamp() * 1_000_000) * 1000


def _span_id(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16]


def _trace_spans(trace: dict, with_text: bool) -> list[dict]:
    trace_id = hashlib.sha256(trace["id"].encode()).hexdigest()[:32]  # the appliance's id is an attribute
    start = _nanos(trace["started_at"])
    end = start + int((trace["seconds"] or 0.0) * 1e9)
    root_id = _span_id(trace["id"])
    root = {"traceId": trace_id, "spanId": root_id, "name": "ask", "kind": _INTERNAL,
            "startTimeUnixNano": str(start), "endTimeUnixNano": str(end),
            "attributes": _attrs({"enduser.id": trace["user"], "appliance.trace_id": trace["id"],
                                  "appliance.session_id": trace.get("session_id"),
                                  "appliance.outcome": trace["outcome"],
                                  "appliance.tokens": sum(int(s.get("tokens") or 0) for s in trace["steps"]),
                                  "appliance.question": trace["question"] if with_text else None,
                                  "appliance.answer": trace["answer"] if with_text else None}),
            "status": {"code": _OK if trace["outcome"] not in ("cancelled",) else _ERROR}}
    spans = [root]
    for s in trace["steps"]:
        s_start = start + int(float(s.get("start_ms") or 0.0) * 1e6)
        s_end = min(max(s_start + int(float(s.get("ms") or 0.0) * 1e6), s_start), max(end, s_start))
        spans.append({"traceId": trace_id, "spanId": _span_id(trace["id"], s["n"]), "parentSpanId": root_id,
                      "name": f"agent.{s['name']}", "kind": _INTERNAL, "startTimeUnixNano": str(s_start),
                      "endTimeUnixNano": str(s_end),
                      "attributes": _attrs({"appliance.step": s["n"], "appliance.tokens": int(s.get("tokens") or 0),
                                            "appliance.model_ms": float(s.get("model_ms") or 0.0),
                                            "appliance.retrieval_ms": float(s.get("retrieval_ms") or 0.0),
                                            "appliance.chunk_ids": list(s.get("chunk_ids") or []) or None,
                                            "appliance.scores": [float(x) for x in s.get("scores") or []] or None}),
                      "status": {"code": _ERROR if s["name"] == "budget" else _OK}})
    return spans


def otel_json(traces: list[dict], *, with_text: bool = False, version: str = "") -> dict:
    """One OTLP/JSON document holding ``traces`` (as :meth:`AgentStore.trace` returns them)."""
    spans = [span for t in traces for span in _trace_spans(t, with_text)]
    return {"resourceSpans": [{
        "resource": {"attributes": _attrs({"service.name": "appliance", "service.version": version or None})},
        "scopeSpans": [{"scope": {"name": SCOPE}, "spans": spans}],
    }]}
