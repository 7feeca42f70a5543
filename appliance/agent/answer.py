"""What an answer is: its citations, its marking, and when a passage counts as evidence."""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.access.labels import Labels, LevelScale
from appliance.agent.grounding import SentenceCheck
from appliance.config import AgentSettings

__all__ = ["Answer", "Citation", "evidence_reason", "marking_of"]


@dataclass(frozen=True)
class Citation:
    n: int
    chunk_id: str
    doc_id: str
    title: str
    page: int | None
    heading: tuple[str, ...]
    start: int
    end: int
    labels: Labels
    text: str


@dataclass
class Answer:
    question: str
    text: str
    outcome: str  # answered | quoted | specialist | abstained | cancelled
    sentences: list[SentenceCheck] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)
    marking: str = ""
    searched: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)  # parts of the question no evidence was found for
    specialist: dict | None = None
    trace_id: str = ""
    session_id: str | None = None
    route: str = "rag"
    seconds: float = 0.0
    tokens_per_s: float | None = None  # of the written answer, when the model wrote one

    def as_dict(self) -> dict:
        return {"question": self.question, "answer": self.text, "outcome": self.outcome, "marking": self.marking,
                "route": self.route, "trace_id": self.trace_id, "session_id": self.session_id,
                "searched": self.searched, "unanswered": self.unanswered, "specialist": self.specialist,
                "seconds": round(self.seconds, 3),
                "sentences": [s.__dict__ for s in self.sentences],
                "citations": [dict(c.__dict__, labels=str(c.labels), heading=list(c.heading))
                              for c in self.citations]}


def evidence_reason(dense_rank: int | None, bm25_rank: int | None, relevance: float,
                    settings: AgentSettings, rerank: float | None = None) -> str | None:
    """Why a passage counts as evidence, or None.

    Evidence is corroborated (semantic and keyword search both rank it first) and relevant,
    or ranked first by one of them and strongly relevant. With ``evidence_by_rerank``, a
    passage the cross-encoder scores at least ``evidence_rerank`` counts too (off by default:
    see the README's benchmark section for why). On SciFact training
    claims the fused top passage is a gold document 55% of the time; passages passing this
    rule were gold 86% of the time (claims 0-299, used to set the two thresholds).
    """
    if rerank is not None and settings.evidence_by_rerank and rerank >= settings.evidence_rerank:
        return f"the reranker scores it {rerank:.1f}"
    first = [name for name, rank in (("semantic", dense_rank), ("keyword", bm25_rank)) if rank == 1]
    if len(first) == 2 and relevance >= settings.evidence_corroborated:
        return "first in keyword and semantic search"
    if first and relevance >= settings.evidence_single:
        return f"first in {first[0]} search and strongly relevant"
    return None


def marking_of(labels: list[Labels], scale: LevelScale) -> str:
    """The highest level and the union of compartments of the sources an answer cites."""
    if not labels:
        return ""
    top = max(labels, key=lambda lab: scale.rank(lab.level)).level
    comps = sorted(set().union(*(lab.compartments for lab in labels)))
    return top + ("//" + "/".join(comps) if comps else "")
