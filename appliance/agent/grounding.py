"""Grounding: every answer sentence checked against the passage it cites.

Support of a sentence by a passage combines lexical evidence (how many of the
sentence's content words the passage contains) with semantic evidence (the best cosine
between the sentence and any sentence of the passage). A sentence with no valid
citation has no support. The extractive fallback picks passage sentences that answer
the question and quotes them verbatim.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from appliance.agent.contrast import Likelihoods, contrast
from appliance.errors import ContextOverflowError
from appliance.knowledge.catalog import STOPWORDS
from appliance.knowledge.chunking import split_sentences

__all__ = ["content_words", "lexical_support", "split_cited", "SentenceCheck", "Grounder", "Quote"]

Embed = Callable[[Sequence[str]], list[list[float]]]
Rank = Callable[[str, Sequence[str]], list[float]]  # a cross-encoder: (question, texts) -> logits
MAX_RANKED_SENTENCES = 64  # sentences the cross-encoder reads when choosing quotes (about 1 s on 2 cores)
_WORD = re.compile(r"\w+", re.UNICODE)
_CITE = re.compile(r"\[(\d{1,3})\]")
# Sentences in retrieved text that try to instruct the model: shown to it as data, never as orders.
INSTRUCTION = re.compile(
    r"(ignore|disregard|forget|override)\s+(all\s+|any\s+|the\s+)?(previous|prior|above|earlier|your)\s+"
    r"(instructions|directions|rules|prompts?)|you are now|new instructions|system prompt|<\|im_(start|end)\|>|"
    r"\b(system|assistant)\s*:", re.IGNORECASE)


def _stem(word: str) -> str:
    """A light English stemmer: drives, drive, driving -> driv; scanned, scans -> scan."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    if len(word) > 4 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]
    return word


def content_words(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in STOPWORDS}


def novel_specifics(sentence: str, passage: str) -> list[str]:
    """Numbers and names in ``sentence`` that ``passage`` does not contain: likely invented."""
    have = {w.lower() for w in _WORD.findall(passage)}
    words = _WORD.findall(sentence)
    out = []
    for i, w in enumerate(words):
        specific = any(ch.isdigit() for ch in w) or (i > 0 and w[0].isupper() and w.lower() not in STOPWORDS)
        if specific and w.lower() not in have and _stem(w.lower()) not in {_stem(h) for h in have}:
            out.append(w)
    return out


def lexical_support(sentence: str, passage: str) -> float:
    words = content_words(sentence)
    if not words:
        return 0.0
    return len(words & content_words(passage)) / len(words)


# A sentence about the passage instead of the world ("The passage is about the canteen opening
# times.") states nothing an analyst can use, however well its words match: never an answer.
# "The study found that ..." (a claim, attributed) is not caught: "that" after the verb lets it through.
DESCRIBES_PASSAGE = re.compile(
    r"^\W*(?:the|this|that)\s+(?:passage|abstract|document|text|excerpt|section|source|article|study|paper|"
    r"memo|table|handbook|extract)s?\s+(?:(?:is|are|was)\s+(?:about|concerned\s+with|on)|concerns?|deals?\s+with|"
    r"discuss(?:es)?|describes?|covers?|mentions?|talks?\s+about|welcomes?|relates?\s+to|refers?\s+to|"
    r"focus(?:es)?\s+on|address(?:es)?|summari[sz]es?|outlines?|explains?|introduces?|"
    r"reports?\s+(?:findings|results|data)\s+(?:about|on)|gives?\s+(?:information|details)\s+(?:about|on))\b"
    r"(?!\s+that\b)", re.IGNORECASE)
_QUESTION = re.compile(r"^\W*(question|q)\s*:|^\W*(what|who|whom|which|when|where|why|how)\b.*\?$", re.IGNORECASE)
_TRAILING_CITES = re.compile(r"([.?!])\s*((?:\[\d{1,3}\]\s*)+)")


def split_cited(answer: str) -> list[tuple[str, list[int]]]:
    """Answer sentences with the passage numbers they cite (``[n]`` markers removed).

    Citations written after a sentence's full stop ("noon. [1]") belong to that sentence.
    """
    text = _TRAILING_CITES.sub(lambda m: " " + m.group(2).strip() + m.group(1) + " ", answer)
    out = []
    for a, b in split_sentences(text, 0, len(text)):
        raw = text[a:b]
        cites = [int(n) for n in _CITE.findall(raw)]
        clean = re.sub(r"\s+([.?!,;:])", r"\1", " ".join(_CITE.sub("", raw).split()))
        if clean.strip(" .") or cites:
            out.append((clean, cites))
    return out


_HEADING_LINE = re.compile(r"^\s*#{1,6}\s.*$", re.MULTILINE)


def passage_sentences(text: str) -> list[str]:
    """Sentences of a passage; Markdown heading lines are context, not sentences."""
    text = _HEADING_LINE.sub("", text)
    return [text[a:b] for a, b in split_sentences(text, 0, len(text))] or [text]


def safe_passage(text: str) -> tuple[str, int]:
    """The passage as the model sees it: instruction-like sentences and fake citations removed."""
    kept, dropped = [], 0
    for sentence in passage_sentences(text):
        if INSTRUCTION.search(sentence):
            dropped += 1
            continue
        kept.append(_CITE.sub("", sentence).replace("<|", "< |"))
    return " ".join(kept), dropped


@dataclass(frozen=True)
class SentenceCheck:
    text: str
    citations: list[int]
    support: float
    lexical: float
    semantic: float
    supported: bool
    reason: str
    entailment: float | None = None  # the entailment judge's best logit over the cited passages
    contrast: float | None = None  # the contrast check's margin: best alternate minus the sentence (log-prob)



@dataclass(frozen=True)
class Quote:
    text: str
    passage: int
    score: float


def _unit(vectors: list[list[float]]) -> np.ndarray:
    m = np.asarray(vectors, dtype=np.float32)
    n = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(n == 0, 1, n)


class Grounder:
    """Checks answer sentences against their cited passages.

    Lexical and semantic support are the fast first filter. With ``entail`` (the entailment
    judge, a cross-encoder reading the sentence and a passage together), a sentence that
    passes it must also be entailed by one of its cited passages: its logit at least
    ``entail_threshold``. That catches the sentence whose words are all in the passage but
    whose claim is not (a room number moved to the wrong subject, a "not" added).

    With ``likelihoods`` (the generator's log-probability of continuations), a sentence that
    passes must also survive the contrast check against the cited passage it is best
    supported by (:mod:`appliance.agent.contrast`): no alternate of it (a value, "not" or
    opposite changed) likelier by more than ``contrast_margin``.
    """

    def __init__(self, embed: Embed, threshold: float = 0.55, lexical_weight: float = 0.5,
                 relevance_threshold: float = 0.4, entail: Rank | None = None,
                 entail_threshold: float = 0.0, likelihoods: Likelihoods | None = None,
                 contrast_margin: float = 1.0) -> None:
        self.embed = embed
        self.threshold = threshold
        self.relevance_threshold = relevance_threshold
        self.lexical_weight = lexical_weight
        self.entail = entail
        self.entail_threshold = entail_threshold
        self.likelihoods = likelihoods
        self.contrast_margin = contrast_margin

    def check(self, sentences: list[tuple[str, list[int]]], passages: Sequence[str],
              question: str | None = None) -> list[SentenceCheck]:
        """Score each (sentence, citations) against the cited passages (numbered from 1).

        With ``question``, a sentence must also address it: share its content words or be
        close to it in meaning; a true but unrelated sentence is not an answer.
        """
        if not sentences:
            return []
        per_passage = [passage_sentences(p) for p in passages]
        flat = [s for ps in per_passage for s in ps]
        vecs = _unit(self.embed([s for s, _ in sentences] + flat + ([question] if question else [])))
        qvec = vecs[-1] if question else None
        qwords = content_words(question) if question else set()
        offsets, pos = [], len(sentences)
        for ps in per_passage:
            offsets.append((pos, pos + len(ps)))
            pos += len(ps)
        out = []
        for i, (text, cites) in enumerate(sentences):
            valid = [c for c in cites if 1 <= c <= len(passages)]
            if INSTRUCTION.search(text):  # an answer that repeats an injected order is not an answer
                out.append(SentenceCheck(text, valid, 0.0, 0.0, 0.0, False, "reads like an instruction"))
                continue
            if _QUESTION.match(text):
                out.append(SentenceCheck(text, valid, 0.0, 0.0, 0.0, False, "a question, not an answer"))
                continue
            if DESCRIBES_PASSAGE.search(text):
                out.append(SentenceCheck(text, valid, 0.0, 0.0, 0.0, False,
                                         "describes the passage instead of answering"))
                continue
            if not valid:
                reason = "no citation" if not cites else f"cites a passage that does not exist ({cites})"
                out.append(SentenceCheck(text, cites, 0.0, 0.0, 0.0, False, reason))
                continue
            best = (0.0, 0.0, 0.0)
            grounded_on = valid[0]
            invented: list[str] = []
            for c in valid:
                lex = lexical_support(text, passages[c - 1])
                lo, hi = offsets[c - 1]
                sem = float(np.max(vecs[lo:hi] @ vecs[i])) if vecs is not None and hi > lo else 0.0
                score = self.lexical_weight * lex + (1 - self.lexical_weight) * max(sem, 0.0)
                novel = novel_specifics(text, passages[c - 1])
                if novel:
                    score = min(score, self.threshold * 0.9)
                    invented = novel
                if (score, lex, sem) > best:
                    best, grounded_on = (score, lex, sem), c
            ok = best[0] >= self.threshold
            reason = ("supported" if ok else f"names or numbers not in the cited passage: {', '.join(invented)}"
                      if invented else f"support {best[0]:.2f} below {self.threshold}")
            if ok and qvec is not None:
                cover = len(qwords & content_words(text)) / len(qwords) if qwords else 0.0
                relevance = max(cover, float(vecs[i] @ qvec))
                if relevance < self.relevance_threshold:
                    ok, reason = False, f"does not address the question (relevance {relevance:.2f})"
            entailment = None
            if ok and self.entail is not None:
                logits = self.entail(text, [passages[c - 1] for c in valid])
                entailment = max(logits) if logits else float("-inf")
                if entailment < self.entail_threshold:
                    ok, reason = False, f"the cited passage does not state it (entailment {entailment:.1f})"
            gap = None
            if ok and self.likelihoods is not None:
                try:
                    verdict = contrast(text, passages[grounded_on - 1], self.likelihoods, self.contrast_margin)
                except ContextOverflowError:  # fail closed: a sentence that cannot be checked is not verified
                    ok, reason = False, "its passage is too long for the generator to check it against"
                else:
                    gap = verdict.margin if verdict.alternate is not None else None
                    if not verdict.ok and verdict.alternate is not None:
                        ok, reason = False, (f"the passage backs a different claim ({verdict.alternate.changed}, "
                                             f"likelier by {verdict.margin:.1f})")
            out.append(SentenceCheck(text, valid, best[0], best[1], best[2], ok, reason, entailment, gap))
        return out

    def quotes(self, question: str, passages: Sequence[str], limit: int = 2,
               min_score: float = 0.45, rank: Rank | None = None, min_rank: float = 0.0) -> list[Quote]:
        """Passage sentences (a table row is one) that best answer ``question``, for the
        extractive fallback.

        With ``rank`` (the cross-encoder: question and sentence read together), the sentence
        it scores highest is quoted, with the next best of the same passage, each only if its
        logit reaches ``min_rank``. Without it, a sentence's score mixes how many of the
        question's words it has and its cosine to the question.
        """
        candidates = [(i + 1, s) for i, p in enumerate(passages) for s in passage_sentences(p)
                      if len(s) > 20 and not INSTRUCTION.search(s) and not _QUESTION.match(s.strip())]
        if not candidates:
            return []
        if rank is not None:
            candidates = candidates[:MAX_RANKED_SENTENCES]  # passages come best first; this bounds the cost
            logits = rank(question, [s.strip() for _, s in candidates])
            if len(logits) != len(candidates):
                raise ValueError(f"the reranker gave {len(logits)} scores for {len(candidates)} sentences")
            ranked = sorted((Quote(s.strip(), n, float(x)) for (n, s), x in zip(candidates, logits, strict=True)),
                            key=lambda q: -q.score)
            if ranked[0].score < min_rank:
                return []
            best = ranked[0].passage
            return [q for q in ranked if q.passage == best and q.score >= min_rank][:limit]
        vecs = _unit(self.embed([question] + [s for _, s in candidates]))
        sims = vecs[1:] @ vecs[0]
        qwords = content_words(question)
        scored = []
        for (n, s), sim in zip(candidates, sims, strict=True):
            coverage = len(qwords & content_words(s)) / len(qwords) if qwords else 0.0
            scored.append(Quote(s.strip(), n, 0.5 * coverage + 0.5 * float(sim)))
        scored.sort(key=lambda q: -q.score)
        if not scored or scored[0].score < min_score:
            return []
        # quote from the single best passage: one source read closely beats fragments of several
        best = scored[0].passage
        return [q for q in scored if q.passage == best and q.score >= min_score][:limit]
