"""Answers after the fact: an analyst's feedback, request metrics, and traces for the facility's tools."""

from __future__ import annotations

import json
import os
from pathlib import Path

from appliance.access.accounts import Account
from appliance.app.acting import acting
from appliance.errors import AgentError
from appliance.services import Services

__all__ = ["record_feedback", "request_metrics", "export_traces", "MAX_EXPORT_TRACES"]

MAX_EXPORT_TRACES = 100_000


def record_feedback(services: Services, account: Account, trace_id: str, verdict: str,
                    correct_answer: str | None = None, correct_source: str | None = None) -> None:
    """An analyst marks one of their answers right or wrong (kept for evaluation, and audited)."""
    act = acting(services, account)
    store = services.agent_store()
    store.check_feedback(trace_id, act.name, verdict, correct_answer, correct_source)
    act.record("answer.feedback", trace=trace_id, verdict=verdict, correct_answer=correct_answer or None,
               correct_source=correct_source or None)
    store.add_feedback(trace_id, act.name, verdict, correct_answer, correct_source)


def request_metrics(services: Services, account: Account, *, since: str | None = None,
                    user: str | None = None) -> dict:
    """Latency per step, tokens/s, hit, abstention and flag rates of the requests kept (since ``since``)."""
    from appliance.agent.metrics import request_metrics as metrics

    acting(services, account, "metrics.read")
    return metrics(services.agent_store(), since=since, user=user)


def export_traces(services: Services, account: Account, out: Path, *, since: str | None = None,
                  user: str | None = None, with_text: bool = False, hours: float | None = None) -> tuple[int, int]:
    """Write the requests' traces as OpenTelemetry JSON (OTLP) to ``out``; audited. Returns (traces, spans)."""
    from importlib.metadata import version

    from appliance.agent.otel import otel_json

    act = acting(services, account, "traces.export")
    store = services.agent_store()
    ids = store.trace_ids(since=since, user=user, limit=MAX_EXPORT_TRACES + 1)
    if len(ids) > MAX_EXPORT_TRACES:
        raise AgentError(f"over {MAX_EXPORT_TRACES} traces: narrow it with --hours or --user")
    act.record("traces.export", file=out.name, traces=len(ids), with_text=with_text, of_user=user, hours=hours)
    doc = otel_json([store.trace(i) for i in ids], with_text=with_text, version=version("appliance"))
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, out)
    return len(ids), sum(len(s["spans"]) for r in doc["resourceSpans"] for s in r["scopeSpans"])
