"""The reranking stage: a cross-encoder scores the fused candidates against the question.

The cross-encoder (a BERT GGUF with rank pooling, run by the llama.cpp host) reads the
question and each candidate passage together, so it sees what the bi-encoder and BM25
cannot: whether the passage answers, not just whether it shares words or topic. Its logit
is combined with the candidate's place in the fused list (``rank_weight`` x log of the
fused rank, subtracted), because the first stage still knows something the cross-encoder,
cut to its token budget, may miss. Only the first ``candidates`` are scored; the rest
follow in fused order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from appliance.knowledge.retrieval import Hit

__all__ = ["CrossEncoderReranker", "Score"]

Score = Callable[[str, Sequence[str]], list[float]]


class CrossEncoderReranker:
    """A :data:`~appliance.knowledge.retrieval.Reranker`: call it with a query and hits."""

    def __init__(self, score: Score, *, candidates: int = 30, rank_weight: float = 0.0) -> None:
        if not 1 <= candidates <= 1000:
            raise ValueError(f"candidates must be from 1 to 1000, got {candidates}")
        self.score = score
        self.candidates = candidates
        self.rank_weight = rank_weight
        self.last_s = 0.0

    def __call__(self, query: str, hits: list[Hit]) -> list[Hit]:
        head, tail = hits[: self.candidates], hits[self.candidates :]
        if not head:
            return hits
        t0 = time.perf_counter()
        logits = self.score(query, [h.chunk.passage for h in head])
        self.last_s = time.perf_counter() - t0
        if len(logits) != len(head):
            raise ValueError(f"the reranker gave {len(logits)} scores for {len(head)} passages")
        scored = [replace(h, rerank=float(s)) for h, s in zip(head, logits, strict=True)]
        keyed = sorted(range(len(scored)),
                       key=lambda i: -(logits[i] - self.rank_weight * math.log(i + 1)))
        return [scored[i] for i in keyed] + tail
