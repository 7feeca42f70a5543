"""The reranker on SciFact: retrieval quality, its cost per question, and its calibration.

1. The whole SciFact corpus in one index (kept under bench/work between runs).
2. For every training claim: hybrid retrieval (100 deep), then the cross-encoder scores the
   first ``rerank_candidates`` (30) fused candidates, timed (the p50 the issue's target is
   about), beside the hybrid retrieval of the same question (the baseline).
3. Calibration on claims 0-299 only (the development split; the reranker was trained on
   them too): the rank weight that maximises nDCG@10 there, and the evidence threshold (the
   lowest logit at which a returned passage is a cited document at least as often as
   under today's rule, 86%).
4. Reported on the held-out claims 300-808 (never seen in training or calibration), and on
   all 809 training claims as the issue's target names them: hybrid vs hybrid + rerank.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from appliance.access.labels import LevelScale, Principal
from appliance.config import KnowledgeSettings
from appliance.evaluation.retrieval import EVAL_LABELS, ingest_corpus, load_queries, ndcg_at_k, recall_at_k
from appliance.knowledge.base import KnowledgeBase
from appliance.knowledge.rerank import CrossEncoderReranker
from appliance.knowledge.retrieval import Retriever
from appliance.runtime.client import EngineClient
from appliance.runtime.protocol import EngineSpec
from bench.agent_bench import DEV_CLAIMS
from bench.runtime_bench import REPO, THREADS, _store

DATA = REPO.parent / "shared" / "data" / "scifact"
WORK = REPO / "bench" / "work"
RANK_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
TODAY_PRECISION = 0.86  # gold share of passages passing today's evidence rule (claims 0-299)
AGENT_K = 4


def _engine() -> EngineClient:
    store = _store()
    client = EngineClient(EngineSpec(embedder_path=str(store.get("all-minilm-l6-v2").path),
                                     reranker_path=str(store.get("scifact-minilm-reranker").path), threads=THREADS))
    client.start()
    return client


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    WORK.mkdir(parents=True, exist_ok=True)
    engine = _engine()
    settings = KnowledgeSettings()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    try:
        kb = KnowledgeBase(WORK / "rerank-scifact", lambda t: engine.embed(list(t), batch=256), scale=LevelScale(),
                           settings=settings)
        with progress:
            task = progress.add_task("SciFact corpus", total=None)
            ingest = ingest_corpus(kb, DATA / "corpus.jsonl", progress=lambda _s, n: progress.advance(task, n))
            queries = load_queries(DATA / "claims_train.jsonl")
            if quick:
                queries = queries[:60] + queries[DEV_CLAIMS : DEV_CLAIMS + 60]
            retriever = Retriever(kb, settings)
            principal = Principal("eval", EVAL_LABELS.level)
            vectors = kb.embed([q.text for q in queries])
            rows = []
            task = progress.add_task("hybrid, then rerank 30", total=len(queries))
            for i, q in enumerate(queries):
                t0 = time.perf_counter()
                hits = retriever.retrieve(q.text, principal, k=100, mode="hybrid", query_vector=vectors[i])
                hybrid_s = time.perf_counter() - t0
                head = hits[: settings.rerank_candidates]
                t0 = time.perf_counter()
                logits = engine.rerank(q.text, [h.chunk.passage for h in head])
                rerank_s = time.perf_counter() - t0
                rows.append({"query": q, "hits": hits, "logits": logits, "hybrid_s": hybrid_s, "rerank_s": rerank_s,
                             "chars": statistics.fmean(len(h.chunk.passage) for h in head) if head else 0.0})
                progress.advance(task)
    finally:
        engine.close()

    def reranked(row: dict, weight: float) -> list:
        stage = CrossEncoderReranker(lambda _q, _t: row["logits"], candidates=settings.rerank_candidates,
                                     rank_weight=weight)
        return stage(row["query"].text, row["hits"])

    def quality(subset: list[dict], weight: float | None) -> dict[str, float]:
        ndcg, r10 = [], []
        for row in subset:
            hits = row["hits"] if weight is None else reranked(row, weight)
            ranked = [h.chunk.doc_id for h in hits]
            ndcg.append(ndcg_at_k(ranked, row["query"].relevant, 10))
            r10.append(recall_at_k(ranked, row["query"].relevant, 10))
        return {"ndcg@10": statistics.fmean(ndcg), "recall@10": statistics.fmean(r10)}

    dev = rows[:DEV_CLAIMS] if not quick else rows[:60]
    held = rows[DEV_CLAIMS:] if not quick else rows[60:]
    by_weight = {w: quality(dev, w)["ndcg@10"] for w in RANK_WEIGHTS}
    weight = max(by_weight, key=lambda w: (by_weight[w], -w))

    # evidence threshold: among the passages the agent would get (top 4), the lowest logit
    # above which at least TODAY_PRECISION of them are cited documents (claims 0-299 only)
    scored = sorted(((h.rerank, h.chunk.doc_id in row["query"].relevant) for row in dev
                     for h in reranked(row, weight)[:AGENT_K] if h.rerank is not None), key=lambda x: -x[0])
    threshold, gold, passed = None, 0, 0
    for logit, is_gold in scored:
        passed += 1
        gold += is_gold
        if gold / passed >= TODAY_PRECISION:
            threshold = logit
    total_gold = sum(g for _, g in scored)
    at = [g for s, g in scored if threshold is not None and s >= threshold]

    def held_recall(th: float | None) -> dict[str, float]:
        got = [(h.rerank, h.chunk.doc_id in row["query"].relevant) for row in held
               for h in reranked(row, weight)[:AGENT_K] if h.rerank is not None]
        kept = [g for s, g in got if th is not None and s >= th]
        return {"precision": sum(kept) / len(kept) if kept else 0.0,
                "recall": sum(kept) / max(1, sum(g for _, g in got)), "passed": len(kept)}

    result = {
        "ingest": ingest, "queries": len(queries), "dev_claims": len(dev), "held_out_claims": len(held),
        "rank_weight_dev_ndcg": by_weight, "rank_weight": weight,
        "held_out": {"hybrid": quality(held, None), "hybrid+rerank": quality(held, weight)},
        "all": {"hybrid": quality(rows, None), "hybrid+rerank": quality(rows, weight)},
        "evidence": {"threshold": threshold, "dev_precision": sum(at) / len(at) if at else None,
                     "dev_recall": sum(at) / max(1, total_gold), "held_out": held_recall(threshold)},
        "latency_ms": {"hybrid_p50": _pct([r["hybrid_s"] for r in rows], 0.5) * 1000,
                       "rerank_p50": _pct([r["rerank_s"] for r in rows], 0.5) * 1000,
                       "rerank_p95": _pct([r["rerank_s"] for r in rows], 0.95) * 1000,
                       "candidates": settings.rerank_candidates,
                       "mean_chars_per_passage": statistics.fmean(r["chars"] for r in rows)},
    }
    h, a, lat = result["held_out"], result["all"], result["latency_ms"]
    result["rows"] = [
        {"name": f"SciFact nDCG@10, held-out claims ({len(held)}): hybrid+rerank vs hybrid",
         "appliance": f"{h['hybrid+rerank']['ndcg@10']:.3f}", "baseline": f"{h['hybrid']['ndcg@10']:.3f}",
         "ratio": h["hybrid+rerank"]["ndcg@10"] / h["hybrid"]["ndcg@10"], "target": ">= 0.74",
         "met": h["hybrid+rerank"]["ndcg@10"] >= 0.74},
        {"name": f"SciFact nDCG@10, all {len(rows)} training claims: hybrid+rerank vs hybrid",
         "appliance": f"{a['hybrid+rerank']['ndcg@10']:.3f}", "baseline": f"{a['hybrid']['ndcg@10']:.3f}",
         "ratio": a["hybrid+rerank"]["ndcg@10"] / a["hybrid"]["ndcg@10"], "target": ">= 0.74",
         "met": a["hybrid+rerank"]["ndcg@10"] >= 0.74},
        {"name": f"rerank step ms p50 ({lat['candidates']} candidates) vs hybrid retrieval p50",
         "appliance": f"{lat['rerank_p50']:.0f}", "baseline": f"{lat['hybrid_p50']:.0f}",
         "ratio": lat["rerank_p50"] / lat["hybrid_p50"], "target": "p50 <= 150 ms", "met": lat["rerank_p50"] <= 150},
    ]
    return result
