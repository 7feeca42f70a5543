"""Split a parsed document into overlapping, sentence-aligned chunks for retrieval.

A chunk never crosses a section boundary, so it has one page and one heading path, and
``chunk.text == doc.text[chunk.start:chunk.end]`` always holds: a citation of a chunk
(or of a sentence span inside it) points at the exact characters of the document.

A table (Markdown or HTML, as the parser found it) is chunked a row at a time: each data
row is a chunk of its own, and carries the table's column names (``Chunk.header``), so
it is indexed, shown and quoted as ``Service: Dinner; Hours: 17:30-19:30`` (see
:func:`row_passage`) while its citation is the row's exact line. The header and delimiter
lines are not chunks (every row carries them); any other text inside a table's span is
chunked like prose, so nothing of the document goes unindexed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.knowledge.parsers import ParsedDocument, Section, row_cells

__all__ = ["Chunk", "chunk_document", "row_passage", "split_sentences"]


@dataclass(frozen=True)
class Chunk:
    ordinal: int  # 0..n-1 over the document
    text: str  # == doc.text[start:end]
    start: int
    end: int
    page: int | None
    heading_path: tuple[str, ...]
    header: tuple[str, ...] = ()  # a table row's column names; () for prose
    row: int | None = None  # a table row's 1-based number among the table's data rows

    @property
    def passage(self) -> str:
        """What is indexed and shown: the text, or a table row with its column names."""
        return row_passage(self.header, self.text)


def row_passage(header: tuple[str, ...] | list[str], text: str) -> str:
    """``Service: Dinner; Days: Mon-Fri; Hours: 17:30-19:30`` for a row under its header
    (text itself when there is no header). Cells beyond the header keep their position as
    the name (``column 4``); empty cells are left out."""
    if not header:
        return text
    cells = row_cells(text)
    pairs = [f"{header[i] if i < len(header) and header[i] else f'column {i + 1}'}: {c}"
             for i, c in enumerate(cells) if c]
    return "; ".join(pairs) or text


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
        space = _SPACE.match(text, a + cut, b)
        assert space is not None  # \s* matches everywhere, if only the empty string
        a = space.end()
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
    tables = sorted(doc.tables, key=lambda t: t.start)
    for section in doc.sections:
        inside = [t for t in tables if section.start <= t.rows[0][0] and t.rows[-1][1] <= section.end]
        cut = section.start
        for table in inside:
            _pack(chunks, text, cut, max(min(table.start, table.rows[0][0]), cut), section, target_chars, max_chars,
                  overlap_sentences)
            cut = table.rows[0][0]  # the header and delimiter lines: every row carries them
            for number, (a, b) in enumerate(table.rows, 1):
                _pack(chunks, text, cut, a, section, target_chars, max_chars, overlap_sentences)  # text between rows
                if b - a > max_chars:  # a row too long to be one chunk is prose, split at whitespace
                    _pack(chunks, text, a, b, section, target_chars, max_chars, overlap_sentences)
                else:
                    chunks.append(Chunk(len(chunks), text[a:b], a, b, section.page, section.heading_path,
                                        table.header, number))
                cut = b
        _pack(chunks, text, cut, section.end, section, target_chars, max_chars, overlap_sentences)
    return chunks


def _pack(chunks: list[Chunk], text: str, start: int, end: int, section: Section, target_chars: int,
          max_chars: int, overlap_sentences: int) -> None:
    """Sentence-packed chunks of ``text[start:end]`` (part of ``section``), appended to ``chunks``."""
    if start >= end:
        return
    sentences: list[tuple[int, int]] = []
    for a, b in split_sentences(text, start, end):
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
