"""The contrast check: does the passage back this sentence over the same sentence changed?

A sentence whose words are all in its passage can still say something the passage does
not: "The kiosk is in room A-014" when the passage says the kiosk "is in room A-017 ...,
next to the Badge Office (A-014)". Lexical and semantic support cannot see that; the
generator can, read as a judge. The check builds the sentence's alternates, each the same
sentence with one thing changed to what the passage could have meant instead:

- ``value``: a number, clock time, date, month, weekday or code (A-017, FW-CORE-1)
  replaced by another of the same kind that the passage contains;
- ``exchange``: two values of the same kind in the sentence swapped with each other;
- ``negation``: a "not" put in or taken out ("never" <-> "always");
- ``opposite``: a word replaced by its opposite (before/after, higher/lower, open/closed)
  when the passage has that opposite.

The generator then scores the sentence and each alternate as what follows the passage
(:meth:`Engine.likelihoods`). If some alternate is likelier than the sentence by more
than a margin, the passage backs the alternate, so the sentence is refused, naming the
alternate. Nothing here decides a label; a sentence with no alternates passes unchanged.

The margin is calibrated on generated pairs, never on the test set (see
``appliance.rerank.nli`` and ``bench/verification_bench.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Alternate", "ContrastVerdict", "alternates", "contrast", "CONTRAST_PROMPT", "MAX_ALTERNATES"]

Likelihoods = Callable[[str, Sequence[str]], list[float]]  # (prefix, continuations) -> log-probabilities

MAX_ALTERNATES = 16  # one generator decode each: about 140 ms apiece for SmolLM2-135M on 2 cores
MAX_PASSAGE_CHARS = 4_000  # the passage as the judge reads it (a chunk is smaller)
CONTRAST_PROMPT = "Passage:\n{passage}\n\nA sentence that says exactly what the passage says:"

_VALUE_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("time", re.compile(r"(?<![\w:])\d{1,2}:\d{2}(?:\s?[-\u2013]\s?\d{1,2}:\d{2})?(?![\w:])")),
    ("code", re.compile(r"\b[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+\b")),
    ("month", re.compile(r"\b(?:January|February|March|April|May|June|July|August|September|October|November|"
                         r"December)\b")),
    ("weekday", re.compile(r"\b(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)s?\b")),
    ("number", re.compile(r"(?<![\w.,:-])\d+(?:[.,]\d+)*%?(?![\w:-]|[.,]\d)")),
)
_AUX = re.compile(r"\b(is|are|was|were|can|could|will|would|should|may|might|must|has|have|had|does|did|do)\b"
                  r"(?!\s+not\b)")
_NEGATION = re.compile(r"\b(not|never)\s+")
_OPPOSITES = {"before": "after", "higher": "lower", "more": "less", "increased": "decreased",
              "increase": "decrease", "increases": "decreases", "greater": "smaller", "larger": "smaller",
              "above": "below", "inside": "outside", "open": "closed", "opens": "closes", "first": "last",
              "earliest": "latest", "earlier": "later", "early": "late", "maximum": "minimum", "always": "never",
              "allowed": "forbidden", "permitted": "prohibited", "with": "without", "positive": "negative",
              "enhanced": "reduced", "improved": "worsened", "promotes": "inhibits", "north": "south",
              "east": "west", "upper": "lower", "inbound": "outbound",
              "required": "optional", "minimum": "maximum"}
_OPPOSITES.update({v: k for k, v in list(_OPPOSITES.items()) if v not in _OPPOSITES})


@dataclass(frozen=True)
class Alternate:
    kind: str  # value, exchange, negation, opposite
    text: str
    changed: str  # what was changed, for the reason shown: "A-014 -> A-017"


@dataclass(frozen=True)
class ContrastVerdict:
    ok: bool
    margin: float  # the best alternate's log-probability minus the sentence's (-inf: no alternates)
    alternate: Alternate | None  # the likeliest alternate
    alternates: int


def _values(text: str) -> list[tuple[str, int, int, str]]:
    """(kind, start, end, value) for every value in ``text``, no two overlapping."""
    found: list[tuple[str, int, int, str]] = []
    for kind, rx in _VALUE_KINDS:
        for m in rx.finditer(text):
            if not any(m.start() < e and s < m.end() for _, s, e, _ in found):
                found.append((kind, m.start(), m.end(), m.group(0)))
    return sorted(found, key=lambda v: v[1])


def _norm(value: str) -> str:
    return value.rstrip("s") if value[:1].isalpha() else value.replace("\u2013", "-").replace(" ", "")


def alternates(sentence: str, passage: str, limit: int = MAX_ALTERNATES) -> list[Alternate]:
    """The sentence's alternates against ``passage`` (see the module), at most ``limit``,
    values first."""
    out: list[Alternate] = []
    seen = {sentence}

    def add(kind: str, text: str, changed: str) -> None:
        if text not in seen and text.strip():
            seen.add(text)
            out.append(Alternate(kind, text, changed))

    mine = _values(sentence)
    theirs = _values(passage)
    own = {_norm(v) for _, _, _, v in mine}
    for kind, start, end, value in mine:
        pool: list[str] = []
        for k, _, _, v in theirs:
            if k == kind and _norm(v) not in own and v not in pool:
                pool.append(v)
        for other in pool:
            add("value", sentence[:start] + other + sentence[end:], f"{value} -> {other}")
    by_kind: dict[str, list[tuple[str, int, int, str]]] = {}
    for found in mine:
        by_kind.setdefault(found[0], []).append(found)
    for items in by_kind.values():
        for (_, s1, e1, v1), (_, s2, e2, v2) in zip(items, items[1:]):
            if _norm(v1) != _norm(v2):
                add("exchange", sentence[:s1] + v2 + sentence[e1:s2] + v1 + sentence[e2:], f"{v1} <-> {v2}")
    m = _NEGATION.search(sentence)
    if m:
        instead = "always " if m.group(1) == "never" else ""
        add("negation", sentence[: m.start()] + instead + sentence[m.end():], f"without '{m.group(1)}'")
    else:
        m = _AUX.search(sentence)
        if m:
            add("negation", sentence[: m.end()] + " not" + sentence[m.end():], f"'{m.group(1)} not'")
    passage_words = {w.lower() for w in re.findall(r"[A-Za-z-]+", passage)}
    for m in re.finditer(r"[A-Za-z-]+", sentence):
        word = m.group(0)
        opposite = _OPPOSITES.get(word.lower())
        if opposite and opposite in passage_words and word.lower() not in passage_words:
            if word[:1].isupper():
                opposite = opposite[:1].upper() + opposite[1:]
            add("opposite", sentence[: m.start()] + opposite + sentence[m.end():], f"{word} -> {opposite}")
    return out[:limit]


def contrast(sentence: str, passage: str, likelihoods: Likelihoods, margin: float,
             limit: int = MAX_ALTERNATES) -> ContrastVerdict:
    """Score ``sentence`` and its alternates as what follows ``passage``; refuse the sentence
    if an alternate is likelier by more than ``margin`` (natural log)."""
    alts = alternates(sentence, passage, limit)
    if not alts:
        return ContrastVerdict(True, float("-inf"), None, 0)
    prefix = CONTRAST_PROMPT.format(passage=passage[:MAX_PASSAGE_CHARS].strip())
    scores = likelihoods(prefix, [" " + sentence.strip()] + [" " + a.text.strip() for a in alts])
    if len(scores) != len(alts) + 1:
        raise ValueError(f"the generator gave {len(scores)} likelihoods for {len(alts) + 1} sentences")
    best = max(range(len(alts)), key=lambda i: scores[i + 1])
    gap = scores[best + 1] - scores[0]
    return ContrastVerdict(gap <= margin, gap, alts[best], len(alts))
