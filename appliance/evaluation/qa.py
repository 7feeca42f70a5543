"""Question answering on SQuAD v1/v2 files: contexts become the corpus, questions are asked.

Reported: exact match and token F1 (SQuAD normalisation, best over gold answers),
groundedness (answer sentences verified as supported), citation precision (cited chunks
from the context that holds the gold answer), abstention rate (and, for SQuAD v2, how
often the agent abstained on unanswerable questions), latency p50/p95.
"""

from __future__ import annotations

import collections
import json
import re
import statistics
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.access.labels import Principal
from appliance.agent.loop import Agent
from appliance.errors import KnowledgeError
from appliance.knowledge.parsers import ParsedDocument, Section

__all__ = ["load_squad", "evaluate_qa", "exact_match", "token_f1", "QAItem"]

MAX_SQUAD_BYTES = 256 * 2**20


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    answers: tuple[str, ...]
    doc_id: str
    impossible: bool


def _normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def states_fact(prediction: str, golds: tuple[str, ...]) -> float:
    """1.0 if the answer states one of the expected facts (its normalised words appear in order,
    as a whole-word run, in the normalised answer), else 0.0. Unlike token F1 it does not
    reward a long quote that merely shares words, and unlike exact match it does not punish a
    full sentence around the fact."""
    text = f" {_normalize(prediction)} "
    return float(any(_normalize(g) and f" {_normalize(g)} " in text for g in golds))


def exact_match(prediction: str, golds: tuple[str, ...]) -> float:
    return float(any(_normalize(prediction) == _normalize(g) for g in golds)) if golds else 0.0


def token_f1(prediction: str, golds: tuple[str, ...]) -> float:
    best = 0.0
    pred = _normalize(prediction).split()
    for gold in golds:
        ref = _normalize(gold).split()
        common = collections.Counter(pred) & collections.Counter(ref)
        same = sum(common.values())
        if same:
            p, r = same / len(pred), same / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


def load_squad(path: Path) -> tuple[list[ParsedDocument], list[QAItem]]:
    if path.stat().st_size > MAX_SQUAD_BYTES:
        raise KnowledgeError(f"{path.name}: over the {MAX_SQUAD_BYTES} byte limit")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise KnowledgeError(f"{path.name}: not a SQuAD file (expected {{\"data\": [...]}})") from exc
    docs: list[ParsedDocument] = []
    items: list[QAItem] = []
    for a, article in enumerate(data):
        title = str(article.get("title") or f"article {a}")
        for p, para in enumerate(article.get("paragraphs", [])):
            context = para.get("context")
            if not isinstance(context, str) or not context.strip():
                raise KnowledgeError(f"{path.name}: article {a} paragraph {p} has no context")
            doc_id = f"{title}#{p}"
            docs.append(ParsedDocument(source_name=path.name, doc_id=doc_id, title=title, text=context,
                                       sections=(Section(0, len(context), (), None),), format="squad"))
            for qa in para.get("qas", []):
                answers = tuple(x["text"] for x in qa.get("answers", []) if isinstance(x.get("text"), str))
                items.append(QAItem(str(qa.get("id", len(items))), str(qa["question"]), answers, doc_id,
                                    bool(qa.get("is_impossible")) or not answers))
    return docs, items


def evaluate_qa(agent: Agent, items: list[QAItem], principal: Principal,
                progress: Callable[[int], None] | None = None) -> dict:
    em, f1, lat = [], [], []
    ok_sentences = sentences = cited = cited_gold = abstained = impossible = abstained_impossible = 0
    for item in items:
        t0 = time.perf_counter()
        answer = agent.ask(item.question, principal)
        lat.append(time.perf_counter() - t0)
        if answer.outcome == "abstained":
            abstained += 1
        if item.impossible:
            impossible += 1
            abstained_impossible += answer.outcome == "abstained"
        else:
            text = " ".join(s.text for s in answer.sentences) if answer.outcome != "abstained" else ""
            em.append(exact_match(text, item.answers))
            f1.append(token_f1(text, item.answers))
        sentences += len(answer.sentences)
        ok_sentences += sum(s.supported for s in answer.sentences)
        cited += len(answer.citations)
        cited_gold += sum(c.doc_id == item.doc_id for c in answer.citations)
        if progress:
            progress(1)
    lat.sort()
    n = len(items)
    return {
        "questions": n,
        "exact_match": statistics.fmean(em) if em else 0.0,
        "token_f1": statistics.fmean(f1) if f1 else 0.0,
        "groundedness": ok_sentences / sentences if sentences else 0.0,
        "citation_precision": cited_gold / cited if cited else 0.0,
        "abstention_rate": abstained / n if n else 0.0,
        "abstained_when_unanswerable": abstained_impossible / impossible if impossible else None,
        "latency_s_p50": statistics.median(lat) if lat else 0.0,
        "latency_s_p95": lat[min(len(lat) - 1, int(0.95 * (len(lat) - 1) + 0.5))] if lat else 0.0,
    }
