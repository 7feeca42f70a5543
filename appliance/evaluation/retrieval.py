"""Retrieval evaluation on a corpus and queries in the SciFact format.

Corpus: JSONL ``{doc_id, title, sentences|text}``. Queries: JSONL
``{id, claim|query, cited_doc_ids}``; queries without cited documents are skipped.
Everything is ingested into a scratch knowledge base (or ``index_dir``, reused across
runs: unchanged documents are not re-ingested) under one label and searched by a
principal cleared for it. Metrics are document-level: nDCG@10, recall@10, recall@100,
MRR@10, and latency percentiles.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.access.labels import Labels, Principal
from appliance.errors import KnowledgeError
from appliance.knowledge.base import KnowledgeBase
from appliance.knowledge.parsers import ParseLimits, parse_file
from appliance.knowledge.retrieval import MODES, Retriever

__all__ = ["RERANKED", "Query", "load_queries", "ndcg_at_k", "recall_at_k", "mrr_at_k", "evaluate", "ingest_corpus"]

MAX_QUERIES_BYTES = 64 * 2**20
MAX_QUERIES = 100_000
EVAL_LABELS = Labels("UNCLASSIFIED")


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    relevant: frozenset[str]


def read_jsonl(path: Path, max_bytes: int) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line; one clear error for anything else."""
    if path.stat().st_size > max_bytes:
        raise KnowledgeError(f"{path.name}: over the {max_bytes} byte limit")
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise KnowledgeError(f"{path.name}: line {n} is not JSON") from exc
            if not isinstance(row, dict):
                raise KnowledgeError(f"{path.name}: line {n} is not a JSON object")
            yield n, row


def load_queries(path: Path) -> list[Query]:
    merged: dict[str, Query] = {}
    for n, row in read_jsonl(path, MAX_QUERIES_BYTES):
        text = row.get("claim") or row.get("query") or row.get("question")
        if not isinstance(text, str) or not text.strip():
            raise KnowledgeError(f"{path.name}: line {n} has no claim or query")
        cited = row.get("cited_doc_ids") or row.get("relevant_doc_ids") or []
        if not cited:
            continue
        qid = str(row.get("id", n))
        # one row per evidence set (SciFact): rows of the same id are one query
        old = merged.get(qid)
        relevant = frozenset(str(c) for c in cited) | (old.relevant if old else frozenset())
        merged[qid] = Query(qid, text, relevant)
        if len(merged) > MAX_QUERIES:
            raise KnowledgeError(f"{path.name}: more than {MAX_QUERIES} queries")
    return list(merged.values())


def ndcg_at_k(ranked: Sequence[str], relevant: frozenset[str], k: int = 10) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if d in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def recall_at_k(ranked: Sequence[str], relevant: frozenset[str], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: Sequence[str], relevant: frozenset[str], k: int = 10) -> float:
    for i, d in enumerate(ranked[:k]):
        if d in relevant:
            return 1.0 / (i + 1)
    return 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def ingest_corpus(kb: KnowledgeBase, corpus: Path, progress: Callable[[str, int], None] | None = None) -> dict:
    limits = ParseLimits(max_file_bytes=2 * 2**30, max_text_chars=2_000_000_000, max_records=10_000_000)
    docs = parse_file(corpus, limits)
    t0 = time.perf_counter()
    report = kb.ingest_documents(docs, EVAL_LABELS, by="eval", source=corpus.name, progress=progress,
                                 batch_docs=128)
    seconds = time.perf_counter() - t0
    failed = report.count("failed")
    if failed:
        first = next(o for o in report.outcomes if o.status == "failed")
        raise KnowledgeError(f"{failed} corpus document(s) failed to ingest, first: {first.reason}")
    return {"documents": len(docs), "new_chunks": report.chunks, "seconds": seconds,
            "chunks_per_s": report.chunks / seconds if report.chunks else None,
            "unchanged": report.count("unchanged")}


RERANKED = "hybrid+rerank"


def evaluate(kb: KnowledgeBase, retriever: Retriever, queries: Sequence[Query], *, k: int = 10,
             modes: Sequence[str] = MODES, progress: Callable[[int], None] | None = None,
             reranked: Retriever | None = None) -> dict:
    """Retrieval quality and latency per mode; ``hybrid+rerank`` runs ``reranked`` (a retriever
    with the cross-encoder stage), its latency including the reranking."""
    principal = Principal("eval", EVAL_LABELS.level)
    depth = max(100, k)
    results: dict[str, dict] = {}
    vectors = kb.embed([q.text for q in queries]) if any(m != "bm25" for m in modes) else None
    for mode in modes:
        if mode not in MODES and mode != RERANKED:
            raise KnowledgeError(f"unknown mode {mode!r}")
        if mode == RERANKED and (reranked is None or reranked.reranker is None):
            raise KnowledgeError("no reranker is provisioned: hybrid+rerank cannot run")
        engine, search = (reranked, "hybrid") if mode == RERANKED else (retriever, mode)
        assert engine is not None  # hybrid+rerank without a reranked retriever was refused above
        ndcg, r10, r100, mrr, lat = [], [], [], [], []
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            hits = engine.retrieve(q.text, principal, k=depth, mode=search,
                                   query_vector=vectors[i] if vectors is not None else None)
            lat.append(time.perf_counter() - t0)
            ranked = [h.chunk.doc_id for h in hits]
            ndcg.append(ndcg_at_k(ranked, q.relevant, k))
            r10.append(recall_at_k(ranked, q.relevant, 10))
            r100.append(recall_at_k(ranked, q.relevant, 100))
            mrr.append(mrr_at_k(ranked, q.relevant, k))
            if progress:
                progress(1)
        results[mode] = {
            f"ndcg@{k}": statistics.fmean(ndcg), "recall@10": statistics.fmean(r10),
            "recall@100": statistics.fmean(r100), f"mrr@{k}": statistics.fmean(mrr),
            "latency_ms_p50": _pct(lat, 0.5) * 1000, "latency_ms_p95": _pct(lat, 0.95) * 1000,
        }
    return {"queries": len(queries), "k": k, "modes": results,
            "note": "latency excludes the query embedding (embedded once, in one batch, before timing)"}
