"""Observability over real requests: spans with timings, local metrics, OpenTelemetry JSON export."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.agent.metrics import BUCKETS_MS, request_metrics
from appliance.agent.otel import otel_json
from appliance.agent.store import AgentStore, Step
from appliance.audit.log import AuditLog
from appliance.runtime.model_store import ModelStore
from tests.helpers import SAMPLE_DOCS as DOCS
from tests.helpers import make_accounts, run_cli


def _fake_trace(store: AgentStore, trace_id: str, outcome: str, *, seconds: float = 1.0) -> None:
    store.save_trace(trace_id=trace_id, user="ann", session_id=None, question="q?",
                     started_at="2026-11-24T10:00:00.000+00:00", seconds=seconds, outcome=outcome, answer="a",
                     cited_docs=["d"] if outcome == "answered" else [],
                     steps=[Step("route", decision={"route": "rag"}, ms=0.2),
                            Step("retrieve", ms=12.0, retrieval_ms=11.0, chunk_ids=["c1"], start_ms=1.0),
                            Step("assess", decision={"enough": outcome == "answered"}, ms=3.0, start_ms=13.0),
                            Step("synthesize", tokens=40, ms=400.0, model_ms=400.0, start_ms=16.0),
                            Step("verify", decision=[{"ok": True}, {"ok": False}], ms=20.0, start_ms=416.0)])


def test_metrics_from_traces(tmp_path: Path) -> None:
    store = AgentStore(tmp_path / "agent.db")
    _fake_trace(store, "t1", "answered", seconds=0.5)
    _fake_trace(store, "t2", "abstained", seconds=3.0)
    store.add_feedback("t1", "ann", "wrong", "something else")
    m = request_metrics(store)
    assert m["requests"] == 2 and m["outcomes"] == {"answered": 1, "abstained": 1}
    assert m["abstention_rate"] == 0.5 and m["analyst_flag_rate"] == 0.5 and m["verifier_flag_rate"] == 0.5
    assert m["retrieval"] == {"searches": 2, "hit_rate": 0.5, "evidence_rate": 0.5}
    assert m["tokens_per_s"] == 100.0  # 80 tokens in 800 ms of generation
    assert m["latency"]["histogram"]["le_500"] == 1 and m["latency"]["histogram"]["le_5000"] == 1
    assert sum(m["steps"]["synthesize"]["histogram"].values()) == m["steps"]["synthesize"]["count"] == 2
    assert m["buckets_ms"] == list(BUCKETS_MS)
    assert request_metrics(store, since="2027-01-01")["requests"] == 0
    assert request_metrics(store, user="bob")["abstention_rate"] is None


def test_otel_json_nests_one_span_per_step_inside_its_request(tmp_path: Path) -> None:
    store = AgentStore(tmp_path / "agent.db")
    _fake_trace(store, "t1", "answered")
    doc = otel_json([store.trace("t1")], version="1.0")
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    root, *children = spans
    assert root["name"] == "ask" and "parentSpanId" not in root and len(children) == 5
    assert all(len(s["traceId"]) == 32 and len(s["spanId"]) == 16 for s in spans)
    assert {c["parentSpanId"] for c in children} == {root["spanId"]}
    assert len({s["spanId"] for s in spans}) == 6
    synth = next(c for c in children if c["name"] == "agent.synthesize")
    assert int(synth["endTimeUnixNano"]) - int(synth["startTimeUnixNano"]) == 400_000_000
    assert int(synth["startTimeUnixNano"]) - int(root["startTimeUnixNano"]) == 16_000_000
    assert {"key": "appliance.tokens", "value": {"intValue": "40"}} in synth["attributes"]
    assert not any(a["key"] == "appliance.question" for a in root["attributes"])
    with_text = otel_json([store.trace("t1")], with_text=True)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert {"key": "appliance.question", "value": {"stringValue": "q?"}} in with_text["attributes"]


def test_real_requests_give_spans_metrics_and_an_export(tmp_path: Path, model_store: ModelStore) -> None:
    for name, text in DOCS.items():
        (tmp_path / name).write_text(text)
    tok = make_accounts(tmp_path, model_store, {"olga": ("officer", "SECRET"), "ann": ("analyst", "SECRET")})
    assert run_cli(["ingest", str(tmp_path / "kiosk.md"), str(tmp_path / "canteen.txt"), "--labels", "UNCLASSIFIED"],
                tmp_path, model_store, token=tok["olga"]).returncode == 0
    for question in ("Where are USB drives scanned?", "When does the canteen serve lunch?"):
        proc = run_cli(["ask", question, "--json"], tmp_path, model_store, token=tok["ann"])
        assert proc.returncode == 0, proc.stderr
    trace_id = json.loads(proc.stdout)["trace_id"]
    steps = AgentStore(tmp_path / "data" / "agent.db").trace(trace_id)["steps"]
    starts = [s["start_ms"] for s in steps]
    assert starts == sorted(starts) and starts[-1] > 0  # spans in the order they ran, at their own times

    refused = run_cli(["metrics", "--json"], tmp_path, model_store, token=tok["ann"])
    assert refused.returncode == 2 and "metrics.read needs the role" in refused.stderr
    m = json.loads(run_cli(["metrics", "--json"], tmp_path, model_store, token=tok["olga"]).stdout)
    assert m["requests"] == 2 and m["latency"]["p50_ms"] > 0
    assert m["steps"]["retrieve"]["count"] >= 2 and m["retrieval"]["searches"] >= 2
    assert m["tokens_per_s"] is None or m["tokens_per_s"] > 1
    shown = run_cli(["metrics"], tmp_path, model_store, token=tok["olga"])
    assert shown.returncode == 0 and "2 requests" in shown.stdout

    out = tmp_path / "traces.json"
    proc = run_cli(["trace", "export", str(out)], tmp_path, model_store, token=tok["olga"])
    assert proc.returncode == 0, proc.stderr
    spans = json.loads(out.read_text())["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert sum(s["name"] == "ask" for s in spans) == 2
    assert not any(a["key"] == "appliance.question" for s in spans for a in s["attributes"])
    entry = [e.value() for e in AuditLog(tmp_path / "data" / "audit").entries() if e.value()["kind"] == "traces.export"]
    assert entry and entry[0]["user"] == "olga" and entry[0]["traces"] == 2
