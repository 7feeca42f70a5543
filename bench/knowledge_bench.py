"""Knowledge-base benchmarks for the knowledge issue.

1. SciFact: ingest the whole corpus through the appliance (chunks/s), then embed the very
   same chunk texts straight through the same engine: ingest time / raw embedding time.
2. SciFact retrieval quality on the training claims: nDCG@10, recall, MRR for dense,
   BM25 and hybrid side by side (published BM25 nDCG@10: 0.665).
3. Latency at 200,000 chunks in 8 partitions, principal cleared for 3, excluding the
   query embedding; beside it the unpartitioned design (one collection and one FTS
   table holding everything, filtered by partition).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import statistics
import time
from typing import Any

import numpy as np
from rich.console import Console

from appliance.access.labels import Labels, LevelScale, Principal
from appliance.config import KnowledgeSettings
from appliance.evaluation.retrieval import evaluate, ingest_corpus, load_queries
from appliance.knowledge.base import KnowledgeBase, embedding_text
from appliance.knowledge.catalog import Catalog, ChunkRow, NewDocument, fts_query
from appliance.knowledge.chunking import chunk_document
from appliance.knowledge.parsers import ParseLimits, parse_file
from appliance.knowledge.retrieval import Retriever
from appliance.runtime.client import EngineClient
from appliance.runtime.protocol import EngineSpec
from bench.runtime_bench import REPO, THREADS, _store

DATA = REPO.parent / "shared" / "data" / "scifact"
WORK = REPO / "bench" / "work"


def _engine() -> EngineClient:
    emb = _store().get("all-minilm-l6-v2")
    client = EngineClient(EngineSpec(embedder_path=str(emb.path), threads=THREADS))
    client.start()
    return client


def bench_scifact(engine: EngineClient, console: Console, limit_docs: int | None) -> dict[str, Any]:
    root = WORK / "scifact"
    shutil.rmtree(root, ignore_errors=True)
    corpus = DATA / "corpus.jsonl"
    if limit_docs:
        corpus = WORK / "corpus-head.jsonl"
        with open(DATA / "corpus.jsonl", encoding="utf-8") as src:
            corpus.write_text("".join(line for line, _ in zip(src, range(limit_docs), strict=False)))
    settings = KnowledgeSettings()
    # the exact chunk texts ingest will embed, for the raw baseline (measured before and after)
    texts = []
    for doc in parse_file(corpus, ParseLimits(max_file_bytes=2**31, max_text_chars=2**31, max_records=10**7)):
        texts += [embedding_text(doc.title, c.heading_path, c.text) for c in chunk_document(
            doc, target_chars=settings.chunk_chars, max_chars=settings.chunk_max_chars,
            overlap_sentences=settings.chunk_overlap_sentences)]

    def raw() -> float:
        t0 = time.perf_counter()
        for s in range(0, len(texts), 256 * 4):
            engine.embed(texts[s : s + 256 * 4], batch=256)
        return time.perf_counter() - t0

    with console.status("SciFact: raw embedding of the chunk texts (before)…"):
        raw_before = raw()
    kb = KnowledgeBase(root, lambda t: engine.embed(list(t), batch=256), scale=LevelScale(), settings=settings)
    with console.status("SciFact: ingesting the corpus through the appliance…"):
        ingest = ingest_corpus(kb, corpus)
    with console.status("SciFact: raw embedding of the chunk texts (after)…"):
        raw_after = raw()
    raw_s = (raw_before + raw_after) / 2
    docs = kb.catalog.documents()
    queries = load_queries(DATA / "claims_train.jsonl")
    if limit_docs:
        present = {d.doc_id for d in docs}
        queries = [q for q in queries if q.relevant <= present]
    with console.status(f"SciFact: {len(queries)} claims × 3 modes…"):
        quality = evaluate(kb, Retriever(kb, KnowledgeSettings()), queries)
    return {"ingest": ingest | {"raw_embed_seconds": raw_s, "raw_runs": [raw_before, raw_after],
                                "raw_chunks_per_s": len(texts) / raw_s,
                                "overhead_ratio": ingest["seconds"] / raw_s},
            "quality": quality}


def _random_unit(rng: np.random.Generator, n: int, dim: int = 384) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def bench_latency(engine: EngineClient, console: Console, total: int, queries: int) -> dict[str, Any]:
    """Synthetic vectors (the figure excludes embedding), real SciFact sentences for BM25."""
    root = WORK / f"latency-{total}"
    parts = [Labels("UNCLASSIFIED")] + [Labels("SECRET", frozenset({f"C{i}"})) for i in range(7)]
    scale = LevelScale()
    sentences: list[str] = []
    with open(DATA / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            sentences += row.get("sentences") or []
    rng = np.random.default_rng(7)
    flat_db = root / "flat.db"
    built = (root / "catalog.db").is_file() and Catalog(root / "catalog.db").counts()["chunks"] >= total
    if not built:
        shutil.rmtree(root, ignore_errors=True)
    kb = KnowledgeBase(root, lambda t: [], scale=scale, settings=KnowledgeSettings())
    if not built:
        flat = sqlite3.connect(flat_db)
        flat.execute("CREATE VIRTUAL TABLE fts USING fts5(chunk_id UNINDEXED, partition UNINDEXED, text)")
        per_doc, batch = 10, 2000
        with console.status(f"building {total} chunks in {len(parts)} partitions…") as status:
            for start in range(0, total, batch):
                vecs = _random_unit(rng, batch)
                docs, flat_rows = [], []
                for d in range(batch // per_doc):
                    n = (start // per_doc) + d
                    labels = parts[n % len(parts)]
                    doc_id = f"doc{n}"
                    chunks = []
                    for j in range(per_doc):
                        text = " ".join(sentences[i] for i in rng.integers(0, len(sentences), size=3))
                        chunks.append(ChunkRow(f"{doc_id}@1#{j}", doc_id, 1, labels.partition, j, text, 0,
                                               len(text), None, ()))
                        flat_rows.append((f"{doc_id}@1#{j}", labels.partition, text))
                    docs.append(NewDocument(doc_id, 1, f"Document {n}", doc_id, "txt", str(n), labels, "bench",
                                            chunks, 0))
                kb.catalog.record_pending(docs)
                i = 0
                by_part: dict[str, tuple[list, list, list]] = {}
                for doc in docs:
                    ids, vs, metas = by_part.setdefault(doc.labels.partition, ([], [], []))
                    for c in doc.chunks:
                        ids.append(c.chunk_id)
                        vs.append(vecs[i].tolist())
                        metas.append({"partition": doc.labels.partition})
                        i += 1
                for part, (ids, vs, metas) in by_part.items():
                    kb.vectors.upsert(part, ids, vs, None, metas)
                    kb.vectors.upsert("flat-all", ids, vs, None, metas)
                kb.catalog.swap_in(docs)
                flat.executemany("INSERT INTO fts VALUES (?, ?, ?)", flat_rows)
                flat.commit()
                status.update(f"building {total} chunks: {start + batch}")
        flat.close()
    cleared = Principal("bench", "SECRET", frozenset({"C0", "C1"}))  # UNCLASSIFIED + 2 compartments = 3 of 8
    retriever = Retriever(kb, KnowledgeSettings())
    readable = retriever.readable_partitions(cleared)
    claims = [q.text for q in load_queries(DATA / "claims_train.jsonl")][:queries]
    qvecs = engine.embed(claims)
    for c, v in zip(claims[:5], qvecs[:5], strict=True):
        retriever.retrieve(c, cleared, k=10, query_vector=v)  # warm caches
    part_lat = []
    for c, v in zip(claims, qvecs, strict=True):
        t0 = time.perf_counter()
        retriever.retrieve(c, cleared, k=10, query_vector=v)
        part_lat.append(time.perf_counter() - t0)
    flat = sqlite3.connect(flat_db)
    col = kb.vectors.collection("flat-all")
    marks = ",".join("?" * len(readable))
    flat_lat = []
    for c, v in zip(claims, qvecs, strict=True):
        t0 = time.perf_counter()
        col.query(query_embeddings=[v], n_results=50, where={"partition": {"$in": readable}}, include=["distances"])
        match = fts_query(c)
        flat.execute(f"SELECT chunk_id, bm25(fts) s FROM fts WHERE fts MATCH ? AND partition IN ({marks}) "
                     "ORDER BY s LIMIT 50", [match, *readable]).fetchall()
        flat_lat.append(time.perf_counter() - t0)
    flat.close()

    def pct(xs: list[float], q: float) -> float:
        return sorted(xs)[int(q * (len(xs) - 1))] * 1000

    return {"chunks": kb.catalog.counts()["chunks"], "partitions": len(parts), "readable": len(readable),
            "queries": len(claims),
            "partitioned_hybrid_ms": {"p50": pct(part_lat, 0.5), "p95": pct(part_lat, 0.95),
                                      "mean": statistics.fmean(part_lat) * 1000},
            "unpartitioned_filtered_ms": {"p50": pct(flat_lat, 0.5), "p95": pct(flat_lat, 0.95),
                                          "mean": statistics.fmean(flat_lat) * 1000,
                                          "note": "dense+BM25 candidate search only, no fusion"}}


def run(quick: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    WORK.mkdir(parents=True, exist_ok=True)
    engine = _engine()
    partial = REPO / "bench" / "results" / f"knowledge-partial{'-quick' if quick else ''}.json"
    try:
        out = {"scifact": bench_scifact(engine, console, limit_docs=600 if quick else None)}
        partial.write_text(json.dumps(out, indent=2))  # a long run keeps what it measured
        out["latency"] = bench_latency(engine, console, total=20_000 if quick else 200_000,
                                       queries=50 if quick else 300)
    finally:
        engine.close()
    sf, lat = out["scifact"], out["latency"]
    hyb = sf["quality"]["modes"]["hybrid"]
    out["rows"] = [
        {"name": "SciFact hybrid nDCG@10 (vs published BM25 0.665)", "appliance": f"{hyb['ndcg@10']:.3f}",
         "baseline": "0.665", "ratio": hyb["ndcg@10"] / 0.665, "target": ">= 0.70", "met": hyb["ndcg@10"] >= 0.70},
        {"name": "SciFact BM25 / dense nDCG@10 (ours)",
         "appliance": f"{sf['quality']['modes']['bm25']['ndcg@10']:.3f} / "
                      f"{sf['quality']['modes']['dense']['ndcg@10']:.3f}",
         "baseline": "-", "ratio": None, "target": "-", "met": True},
        {"name": "ingest time / raw embedding time (same chunks)",
         "appliance": f"{sf['ingest']['chunks_per_s']:.1f} chunks/s", "baseline":
         f"{sf['ingest']['raw_chunks_per_s']:.1f} chunks/s", "ratio": sf["ingest"]["overhead_ratio"],
         "target": "<= 1.25", "met": sf["ingest"]["overhead_ratio"] <= 1.25},
        {"name": f"hybrid latency ms p50/p95, {lat['chunks']} chunks, {lat['readable']}/{lat['partitions']} parts",
         "appliance": f"{lat['partitioned_hybrid_ms']['p50']:.1f} / {lat['partitioned_hybrid_ms']['p95']:.1f}",
         "baseline": f"{lat['unpartitioned_filtered_ms']['p50']:.1f} / {lat['unpartitioned_filtered_ms']['p95']:.1f}",
         "ratio": lat["partitioned_hybrid_ms"]["p50"] / lat["unpartitioned_filtered_ms"]["p50"],
         "target": "p50 <= 60, p95 <= 150",
         "met": lat["partitioned_hybrid_ms"]["p50"] <= 60 and lat["partitioned_hybrid_ms"]["p95"] <= 150},
    ]
    return out
