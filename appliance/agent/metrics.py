"""Request metrics from the traces kept on this appliance (nothing leaves it).

Over a window of requests: latency histograms per step and for whole requests, tokens per
second of generation, retrieval hit rate (searches that found a passage) and evidence rate
(questions answered from a cited source), abstention rate, the verifier's flag rate
(answer sentences its source does not support) and the analysts' flag rate (answers
marked wrong). A search "hits" when a passage it found passes the evidence check.
Histograms use fixed upper bounds in milliseconds, as Prometheus and OpenTelemetry do, so
figures from different windows add up.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections import Counter
from typing import Any

from appliance.agent.store import AgentStore

__all__ = ["BUCKETS_MS", "request_metrics", "since_iso"]

BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
GENERATING = ("synthesize", "route", "hypothesize", "rewrite")  # steps whose tokens come from the generator


def since_iso(hours: float | None) -> str | None:
    if hours is None:
        return None
    return (dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)).isoformat(timespec="milliseconds")


def _histogram(values_ms: list[float]) -> dict[str, int]:
    out = {f"le_{b}": 0 for b in BUCKETS_MS}
    out["le_inf"] = 0
    for v in values_ms:
        key = next((f"le_{b}" for b in BUCKETS_MS if v <= b), "le_inf")
        out[key] += 1
    return out


def _summary(values_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(values_ms)
    if not ordered:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "max_ms": None, "histogram": _histogram([])}
    return {"count": len(ordered), "p50_ms": round(statistics.median(ordered), 3),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * (len(ordered) - 1) + 0.5))], 3),
            "max_ms": round(ordered[-1], 3), "histogram": _histogram(ordered)}


def request_metrics(store: AgentStore, *, since: str | None = None, user: str | None = None) -> dict[str, Any]:
    """The metrics of the requests started at or after ``since`` (ISO time; None: all kept)."""
    where, args = store.window(since, user, table="t")
    with store._lock:
        traces = list(store.db.query(f"SELECT t.id, t.seconds, t.outcome, t.cited_docs FROM traces t {where}", args))
        steps = list(store.db.query(
            f"SELECT s.trace_id, s.name, s.ms, s.tokens, s.model_ms, s.chunk_ids, s.decision FROM trace_steps s "
            f"JOIN traces t ON t.id = s.trace_id {where}", args))
        flagged = store.db.execute(
            f"SELECT COUNT(DISTINCT f.trace_id) FROM feedback f JOIN traces t ON t.id = f.trace_id {where} "
            "AND f.verdict = 'wrong'", args).fetchone()[0]
    n = len(traces)
    outcomes = Counter(t["outcome"] or "unknown" for t in traces)
    by_step: dict[str, list[float]] = {}
    tokens: Counter[str] = Counter()
    gen_tokens = gen_ms = 0.0
    searches = hits = sentences = unsupported = 0
    routes: dict[str, str] = {}
    for s in steps:
        by_step.setdefault(s["name"], []).append(float(s["ms"] or 0.0))
        tokens[s["name"]] += int(s["tokens"] or 0)
        if s["name"] in GENERATING and s["tokens"]:
            gen_tokens += s["tokens"]
            gen_ms += float(s["model_ms"] or 0.0)
        if s["name"] == "assess":  # one per search: did its passages hold evidence?
            searches += 1
            decision = json.loads(s["decision"] or "{}")
            hits += bool(isinstance(decision, dict) and decision.get("enough"))
        elif s["name"] == "verify":
            checks = json.loads(s["decision"] or "[]")
            if isinstance(checks, list):
                sentences += len(checks)
                unsupported += sum(1 for c in checks if isinstance(c, dict) and not c.get("ok"))
        elif s["name"] == "route":
            decision = json.loads(s["decision"] or "{}")
            routes[s["trace_id"]] = decision.get("route", "rag") if isinstance(decision, dict) else "rag"
    asked = [t for t in traces if routes.get(t["id"], "rag") != "specialist" and t["outcome"] != "specialist"]
    evidenced = sum(1 for t in asked if json.loads(t["cited_docs"] or "[]"))
    return {
        "since": since,
        "user": user,
        "requests": n,
        "outcomes": dict(outcomes),
        "abstention_rate": outcomes.get("abstained", 0) / n if n else None,
        "analyst_flag_rate": flagged / n if n else None,
        "verifier_flag_rate": unsupported / sentences if sentences else None,
        "tokens_per_s": gen_tokens / (gen_ms / 1000) if gen_ms else None,
        "tokens": dict(tokens),
        "retrieval": {"searches": searches, "hit_rate": hits / searches if searches else None,
                      "evidence_rate": evidenced / len(asked) if asked else None},
        "latency": _summary([float(t["seconds"] or 0.0) * 1000 for t in traces]),
        "steps": {name: _summary(v) for name, v in sorted(by_step.items())},
        "buckets_ms": list(BUCKETS_MS),
    }
