"""The seam between the agent and specialist models (classification, extraction).

A specialist is a fine-tuned adapter on the loaded base model; the agent only needs
this interface. The router sends a request to a specialist when it names the task
(``classify ...``, ``extract ...``), or to a specialist over retrieved passages when it
also names documents ("extract the people named in the report on ..."). Extracted
spans are checked against the text they were extracted from: a span the text does not
contain is dropped, as an unsupported sentence is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["TASKS", "Specialist", "SpecialistResult", "Span", "task_text", "topic_of", "grounded_spans"]

TASKS = ("classify", "extract")
MAX_SPECIALIST_INPUT_CHARS = 8000
_VERB = re.compile(r"^\s*(classify|categori[sz]e|extract|list)\b", re.IGNORECASE)
_OBJECT = re.compile(r"^\s*((this|these|the following|the)\s+)?((text|ticket|message|request|sentence|passage)s?\b)?"
                     r"\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Span:
    kind: str  # entity type, e.g. PERSON
    text: str
    start: int  # character offsets in the input
    end: int


@dataclass(frozen=True)
class SpecialistResult:
    task: str
    specialist: str
    labels: list[tuple[str, float]] = field(default_factory=list)  # classify: (label, probability), best first
    spans: list[Span] = field(default_factory=list)  # extract


class Specialist(Protocol):
    """One installed specialist: its name, its task, and a call on text."""

    name: str
    task: str  # one of TASKS

    def run(self, text: str) -> SpecialistResult: ...


def task_text(question: str) -> str:
    """The text a specialist task is about: what follows ``classify this:`` and the like."""
    m = _VERB.match(question)
    if not m:
        return question
    head, colon, tail = question.partition(":")
    if colon and len(head) <= 120 and tail.strip():
        rest = tail
    else:
        rest = question[m.end():]
        rest = rest[_OBJECT.match(rest).end():]  # type: ignore[union-attr]
    return rest.strip(" \"'\u201c\u201d") or question


_TOPIC = re.compile(r"\b(?:document|report|file|record|source)s?\s+(?:about|on|regarding|concerning|covering)\s+(.+)",
                    re.IGNORECASE)


def topic_of(question: str) -> str:
    """What to retrieve for a specialist task over documents: the subject of ``the report on ...``."""
    m = _TOPIC.search(question)
    return m.group(1).strip(" ?.") if m and m.group(1).strip(" ?.") else question


def grounded_spans(result: SpecialistResult, text: str) -> list[Span]:
    """Extracted spans the text really contains at the offsets given (or anywhere, re-anchored)."""
    out = []
    for s in result.spans:
        if not s.text.strip():
            continue
        if 0 <= s.start < s.end <= len(text) and text[s.start:s.end] == s.text:
            out.append(s)
            continue
        at = text.find(s.text)
        if at >= 0:
            out.append(Span(s.kind, s.text, at, at + len(s.text)))
    return out
