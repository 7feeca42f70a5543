"""Hybrid retrieval over the partitions a principal may read.

Dense (Chroma, cosine) and BM25 (SQLite FTS5) candidates are gathered from each readable
partition only — never filtered out afterwards — fused by reciprocal rank fusion, resolved
through the catalog (which drops anything the catalog does not hold, such as vectors of
an unfinished write), limited to a few chunks per document, optionally reranked, and
returned with their provenance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from appliance.access.labels import Labels, Principal
from appliance.config import KnowledgeSettings
from appliance.errors import KnowledgeError
from appliance.knowledge.base import KnowledgeBase
from appliance.knowledge.catalog import ChunkRow, DocumentRow

__all__ = ["Retriever", "Hit", "MODES", "MAX_QUERY_CHARS"]

MODES = ("hybrid", "dense", "bm25")
MAX_QUERY_CHARS = 4000


@dataclass(frozen=True)
class Hit:
    chunk: ChunkRow
    document: DocumentRow
    score: float
    dense_rank: int | None
    bm25_rank: int | None
    similarity: float | None = None  # cosine of query and chunk, when the semantic search found it
    rerank: float | None = None  # the cross-encoder's logit, when a reranker scored it

    @property
    def labels(self) -> Labels:
        return self.document.labels

    def as_dict(self) -> dict:
        c, d = self.chunk, self.document
        return {"chunk_id": c.chunk_id, "doc_id": c.doc_id, "version": c.version, "title": d.title,
                "source_name": d.source_name, "labels": str(d.labels), "page": c.page, "heading": list(c.heading),
                "start": c.start, "end": c.end, "score": round(self.score, 6), "dense_rank": self.dense_rank,
                "bm25_rank": self.bm25_rank, "rerank": None if self.rerank is None else round(self.rerank, 4),
                "text": c.text, "passage": c.passage}


Reranker = Callable[[str, list[Hit]], list[Hit]]


@dataclass
class RetrievalTiming:
    embed_s: float = 0.0
    dense_s: float = 0.0
    bm25_s: float = 0.0
    fuse_s: float = 0.0
    rerank_s: float = 0.0
    partitions: list[str] = field(default_factory=list)


class Retriever:
    def __init__(self, kb: KnowledgeBase, settings: KnowledgeSettings, reranker: Reranker | None = None) -> None:
        self.kb = kb
        self.settings = settings
        self.reranker = reranker
        self.last = RetrievalTiming()

    def stored_vectors(self, hits: Sequence[Hit]) -> list[list[float] | None]:
        """The embeddings the index holds for ``hits`` (None where a vector is missing)."""
        by_part: dict[str, list[str]] = {}
        for h in hits:
            by_part.setdefault(h.chunk.partition, []).append(h.chunk.chunk_id)
        found: dict[str, list[float]] = {}
        for part, ids in by_part.items():
            found.update(self.kb.vectors.vectors(part, ids))
        return [found.get(h.chunk.chunk_id) for h in hits]

    def readable_partitions(self, principal: Principal) -> list[str]:
        return [name for name, labels in self.kb.catalog.partitions().items()
                if principal.can_read(labels, self.kb.scale)]

    def retrieve(self, query: str, principal: Principal, k: int = 10, mode: str = "hybrid",
                 query_vector: Sequence[float] | None = None) -> list[Hit]:
        if mode not in MODES:
            raise KnowledgeError(f"unknown retrieval mode {mode!r} (one of {', '.join(MODES)})")
        query = query.strip() if isinstance(query, str) else ""
        if not query:
            raise KnowledgeError("empty query")
        if len(query) > MAX_QUERY_CHARS:
            raise KnowledgeError(f"query is {len(query)} characters, over the {MAX_QUERY_CHARS} limit")
        if not 1 <= k <= 1000:
            raise KnowledgeError(f"k must be from 1 to 1000, got {k}")
        t0 = time.perf_counter()
        vec = None
        if mode in ("hybrid", "dense"):
            vec = list(query_vector) if query_vector is not None else self.kb.embed([query])[0]
        embed_s = time.perf_counter() - t0
        # One catalog snapshot, taken before the vector search, for the whole search: vectors
        # of a version swapped in later are not in it and are dropped; the vectors of the
        # snapshot's own version are kept in Chroma for a grace period after a swap.
        with self.kb.catalog.snapshot():
            hits = self._search(query, principal, k, mode, vec)
        self.last.embed_s = embed_s
        return hits

    def _search(self, query: str, principal: Principal, k: int, mode: str,
                vec: list[float] | None) -> list[Hit]:
        timing = RetrievalTiming(partitions=self.readable_partitions(principal))
        self.last = timing
        if not timing.partitions:
            return []
        s = self.settings
        n = max(s.candidates, k * s.max_chunks_per_doc * 2)
        fused: dict[str, float] = {}
        dense_rank: dict[str, int] = {}
        similarity: dict[str, float] = {}
        bm25_rank: dict[str, int] = {}
        if vec is not None:
            t1 = time.perf_counter()
            hits: list[tuple[str, float]] = []
            vectors = self.kb.vectors
            for part in timing.partitions:
                count = vectors.count(part)
                if count:
                    hits.extend(vectors.nearest(part, vec, min(n, count)))
            hits.sort(key=lambda h: h[1])
            for rank, (cid, distance) in enumerate(hits[:n]):
                dense_rank[cid] = rank + 1
                similarity[cid] = 1.0 - distance
                fused[cid] = fused.get(cid, 0.0) + s.dense_weight / (s.rrf_k + rank + 1)
            timing.dense_s = time.perf_counter() - t1
        if mode in ("hybrid", "bm25"):
            t0 = time.perf_counter()
            # BM25 weighs a word by how rare it is in its own partition, so raw scores from a
            # small partition and a large one are not comparable: the partitions' lists are
            # merged by rank (each partition's best first, then each one's second, ...), and
            # within a rank by score relative to the partition's best, then by raw score.
            scored: list[tuple[str, int, float, float]] = []
            for part in timing.partitions:
                found = self.kb.catalog.bm25(part, query, n)
                top = max((sc for _, sc in found), default=0.0)
                scored.extend((cid, i, -(sc / top if top > 0 else 0.0), -sc) for i, (cid, sc) in enumerate(found))
            scored.sort(key=lambda h: h[1:])
            for rank, (cid, *_) in enumerate(scored[:n]):
                bm25_rank[cid] = rank + 1
                fused[cid] = fused.get(cid, 0.0) + s.bm25_weight / (s.rrf_k + rank + 1)
            timing.bm25_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        order = sorted(fused, key=lambda c: -fused[c])
        chunks = self.kb.catalog.chunks_by_id(order)
        allowed = set(timing.partitions)
        docs = self.kb.catalog.documents_by_id(c.doc_id for c in chunks.values())
        out: list[Hit] = []
        per_doc: dict[str, int] = {}
        for cid in order:
            chunk = chunks.get(cid)
            if chunk is None or chunk.partition not in allowed or chunk.doc_id not in docs:
                continue  # not (or no longer) in the catalog, or not readable: never shown
            if per_doc.get(chunk.doc_id, 0) >= s.max_chunks_per_doc:
                continue
            per_doc[chunk.doc_id] = per_doc.get(chunk.doc_id, 0) + 1
            out.append(Hit(chunk=chunk, document=docs[chunk.doc_id], score=fused[cid],
                           dense_rank=dense_rank.get(cid), bm25_rank=bm25_rank.get(cid),
                           similarity=similarity.get(cid)))
            if len(out) >= (k if self.reranker is None else max(k, self.settings.rerank_candidates)):
                break
        timing.fuse_s = time.perf_counter() - t0
        if self.reranker is not None:
            t0 = time.perf_counter()
            out = self.reranker(query, out)[:k]
            timing.rerank_s = time.perf_counter() - t0
        return out
