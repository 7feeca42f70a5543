"""Split a parsed document into overlapping, sentence-aligned chunks for retrieval.

A chunk never crosses a section boundary, so it has one page and one heading path, and
``chunk.text == doc.text[chunk.start:chunk.end]`` always holds: a citation of a chunk
(or of a sentence span inside it) points at the exact characters of the document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.knowledge.parsers import ParsedDocument

__all__ = ["Chunk", "chunk_document", "split_sentences"]


@dataclass(frozen=True)
class Chunk:
    ordinal: int  # 0..n-1 over the document
    text: str  # == doc.text[start:end]
    start: int
    end: int
    page: int | None
    heading_path: tuple[str, ...]


# A sentence ends after . ? ! (possibly several, then closing quotes/brackets) followed
# by whitespace, or at a blank line.
_BOUNDARY = re.compile(r"""[.?!]+["'\u201d\u2019)\]]*(?=\s)|\n[^\S\n]*\n""")
_ABBREVIATIONS = frozenset(
    {"e.g", "i.e", "dr", "mr", "mrs", "ms", "prof", "fig", "figs", "eq", "eqs", "cf", "vs", "approx",
     "ref", "refs", "sec", "vol", "pp", "st", "jr", "sr", "inc", "ltd", "ca", "ed", "eds", "resp", "viz"}
)  # plus "no"/"nos" before a number and "al" after "et", handled in _is_abbreviation
_LAST_TOKEN = re.compile(r"""[(\["'\u201c\u2018]*([^\s(\["'\u201c\u2018]+)$""")
_SPACE = re.compile(r"\s*")
_NEXT = re.compile(r"\s+(\S)")


def _is_abbreviation(text: str, lo: int, dot: int) -> bool:
    """Is the '.' at ``dot`` the end of an abbreviation or an initial ("J. Smith")?"""
    m = _LAST_TOKEN.search(text, max(lo, dot - 32), dot)  # bounded look-back: no quadratic scans
    if m is None:
        return False
    token = m.group(1).lower()
    if token in ("no", "nos"):  # "No. 5" but not "the answer is no."
        return bool(re.match(r"\s+\d", text[dot + 1 : dot + 4]))
    if token == "al":
        return text[max(lo, m.start() - 3) : m.start()].lower() == "et "
    return token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha())


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    piece = text[a:b]
    return a + len(piece) - len(piece.lstrip()), b - (len(piece) - len(piece.rstrip()))


def split_sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentence spans inside ``text[start:end]``, trimmed of surrounding whitespace."""
    if not 0 <= start <= end <= len(text):
        raise ValueError(f"span ({start}, {end}) is outside a text of {len(text)} characters")
    spans: list[tuple[int, int]] = []
    cut = start
    for m in _BOUNDARY.finditer(text, start, end):
        if m.group().startswith("\n"):
            at = m.start()
        else:
            following = _NEXT.match(text, m.end(), end)
            if following and following.group(1).islower():  # '"Is it?" she asked', 'etc. and'
                continue
            if m.group().rstrip("\"'\u201d\u2019)]") == "." and _is_abbreviation(text, cut, m.start()):
                continue
            at = m.end()
        a, b = _trim(text, cut, at)
        if a < b:
            spans.append((a, b))
        cut = at
    a, b = _trim(text, cut, end)
    if a < b:
        spans.append((a, b))
    return spans


def _hard_split(text: str, a: int, b: int, max_chars: int) -> list[tuple[int, int]]:
    """Split a span longer than ``max_chars`` at whitespace (or anywhere, if it has none)."""
    pieces = []
    while b - a > max_chars:
        window = text[a : a + max_chars + 1]
        cut = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
        if cut <= 0:
            cut = max_chars
        piece = _trim(text, a, a + cut)
        if piece[0] < piece[1]:
            pieces.append(piece)
        a = _SPACE.match(text, a + cut, b).end()
    if a < b:
        pieces.append((a, b))
    return pieces


def chunk_document(
    doc: ParsedDocument, *, target_chars: int = 900, max_chars: int = 1500, overlap_sentences: int = 1
) -> list[Chunk]:
    """Pack each section's sentences into chunks of about ``target_chars`` characters.

    A chunk holds whole sentences until adding the next one would pass ``target_chars``;
    the next chunk of the same section starts with the last ``overlap_sentences`` of it
    (when they fit within ``max_chars`` with the first new sentence). A sentence longer
    than ``max_chars`` is split at whitespace, so no chunk is longer than ``max_chars``.
    """
    if target_chars < 1 or max_chars < target_chars or overlap_sentences < 0:
        raise ValueError("need 1 <= target_chars <= max_chars and overlap_sentences >= 0")
    text = doc.text
    chunks: list[Chunk] = []
    for section in doc.sections:
        sentences: list[tuple[int, int]] = []
        for a, b in split_sentences(text, section.start, section.end):
            sentences.extend(_hard_split(text, a, b, max_chars) if b - a > max_chars else [(a, b)])
        pos = 0  # first sentence not yet in a chunk
        while pos < len(sentences):
            first = pos
            if pos and overlap_sentences:
                first = max(pos - overlap_sentences, 0)
                while first < pos and sentences[pos][1] - sentences[first][0] > max_chars:
                    first += 1
            last = pos + 1  # exclusive; the first new sentence always goes in
            while last < len(sentences) and sentences[last][1] - sentences[first][0] <= target_chars:
                last += 1
            a, b = sentences[first][0], sentences[last - 1][1]
            chunks.append(Chunk(len(chunks), text[a:b], a, b, section.page, section.heading_path))
            pos = last
    return chunks
