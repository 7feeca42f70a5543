"""Route, plan and rewrite: rules first, the model second, every decision recorded.

* :func:`route` picks ``rag``, ``classify``, ``extract`` or ``both`` for a request.
* :func:`plan` splits a compound question into sub-questions (at most ``max_parts``).
* :func:`standalone` turns a follow-up into a self-contained query using the session.
* :func:`rewrites` proposes other queries when the evidence is weak (keywords; the
  model's hypothetical answer, HyDE-style, when a generator is given).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from appliance.agent.grounding import content_words
from appliance.agent.store import Turn
from appliance.knowledge.catalog import STOPWORDS

__all__ = ["Route", "route", "plan", "standalone", "rewrites", "ROUTES"]

ROUTES = ("rag", "classify", "extract", "both")
_CLASSIFY = re.compile(r"^\s*(classify|categori[sz]e|what (category|intent|class) )", re.IGNORECASE)
_EXTRACT = re.compile(r"^\s*(extract|list (all )?(the )?(entities|names|people|places|organi[sz]ations))",
                      re.IGNORECASE)
_WH = r"(?:what|who|whom|which|when|where|why|how|is|are|does|do|did|can|should|was|were)"
_SPLIT_AND = re.compile(rf",?\s+and\s+(?={_WH}\b)", re.IGNORECASE)
_FOLLOW_UP = re.compile(r"\b(it|its|they|them|their|this|that|these|those|he|she|his|her|there|such)\b",
                        re.IGNORECASE)


_HINT = re.compile(r"\b(categor\w*|classif\w*|intent|label|entit(y|ies)|named|names|people|persons?|"
                   r"organi[sz]ations?|places|locations?)\b", re.IGNORECASE)
_DOCS = re.compile(r"\b(document|report|according to|sources?|files?|records?)\b", re.IGNORECASE)
RouteModel = Callable[[str, Sequence[str]], str]


class Route(NamedTuple):
    route: str  # rag | classify | extract | both
    reason: str
    decided_by: str  # rule | model
    task: str | None = None  # the specialist task of classify, extract and both


def route(question: str, specialists: Sequence[str] = (), model: RouteModel | None = None) -> Route:
    """Rules first; the model only where the rules see a hint.

    Specialist routes need that specialist to be installed. The model (a grammar-constrained
    call choosing among the installed routes) is asked only when the question hints at a
    specialist task without naming it (``which category is ...``).
    """
    wants = "classify" if _CLASSIFY.search(question) else "extract" if _EXTRACT.search(question) else None
    if wants is None:
        hint = _HINT.search(question)
        if hint and specialists and model is not None:
            choices = ["rag", *[t for t in ("classify", "extract") if t in specialists]]
            picked = model(question, choices)
            if picked in choices and picked != "rag":
                both = bool(_DOCS.search(question))
                return Route("both" if both else picked, f"the model chose {picked} (hint {hint.group(0)!r})",
                             "model", picked)
            return Route("rag", f"the model chose rag (hint {hint.group(0)!r})", "model")
        return Route("rag", "no specialist task named: answer from the documents", "rule")
    if wants not in specialists:
        return Route("rag", f"asks to {wants}, but no {wants} specialist is installed: answer from the documents",
                     "rule")
    if _DOCS.search(question):
        return Route("both", f"{wants} task over retrieved documents", "rule", wants)
    return Route(wants, f"{wants} task", "rule", wants)


def plan(question: str, max_parts: int = 3) -> list[str]:
    """Sub-questions of a compound question, each retrieved for on its own."""
    parts = [p.strip() for p in re.split(r"(?<=\?)\s+", question.strip()) if p.strip()]
    out: list[str] = []
    for part in parts:
        pieces = [x.strip(" ,;") for x in _SPLIT_AND.split(part) if x.strip(" ,;")]
        out.extend(pieces if all(len(content_words(x)) >= 1 for x in pieces) else [part])
    out = [q if q.endswith("?") or len(out) == 1 else q + "?" for q in out]
    return out[:max_parts] or [question.strip()]


def standalone(question: str, history: Sequence[Turn]) -> tuple[str, bool]:
    """(query, rewritten?): a follow-up borrows the subject of the previous turn."""
    if not history:
        return question, False
    short = len(content_words(question)) <= 3
    if not (_FOLLOW_UP.search(question) or short):
        return question, False
    previous = history[-1].standalone
    carried = [w for w in re.findall(r"\w+", previous)
               if (w[0].isupper() or len(w) > 6) and not _FOLLOW_UP.fullmatch(w) and w.lower() not in STOPWORDS
               and not re.fullmatch(_WH, w, re.IGNORECASE)]
    topic = " ".join(dict.fromkeys(carried))[:300]
    return (f"{question} (about: {topic})" if topic else f"{question} (after: {previous[:300]})"), True


def rewrites(query: str, hypothesize: Callable[[str], str] | None = None) -> list[tuple[str, str]]:
    """Alternative queries with the reason for each."""
    out: list[tuple[str, str]] = []
    words = [w for w in re.findall(r"\w+", query) if w.lower() in content_words(w) or len(w) > 3]
    keywords = " ".join(dict.fromkeys(words))
    if keywords and keywords.lower() != query.lower():
        out.append((keywords, "keywords only"))
    if hypothesize is not None:
        guess = hypothesize(query).strip()
        if guess:
            out.append((guess, "hypothetical answer (HyDE)"))
    return out
