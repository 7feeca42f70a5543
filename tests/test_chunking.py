"""Sentence splitting and chunking: exact offsets, section boundaries, sizes, overlap."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.knowledge.chunking import Chunk, chunk_document, split_sentences
from appliance.knowledge.parsers import ParsedDocument, Section, parse_bytes


def doc_of(text: str, sections: list[Section] | None = None) -> ParsedDocument:
    sections = sections if sections is not None else [Section(0, len(text), (), None)]
    return ParsedDocument("t.txt", None, "t", text, tuple(sections), "txt")


def sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text, 0, len(text))]


def check_chunks(doc: ParsedDocument, chunks: list[Chunk], max_chars: int) -> None:
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text == doc.text[c.start : c.end]
        assert c.text and c.text == c.text.strip()
        assert len(c.text) <= max_chars
        [home] = [s for s in doc.sections if s.start <= c.start and c.end <= s.end]
        assert (c.page, c.heading_path) == (home.page, home.heading_path)
    for prev, nxt in pairwise(chunks):
        assert prev.start <= nxt.start and prev.end < nxt.end
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    for s in doc.sections:  # every character of sentence text lands in some chunk
        assert all(i in covered for i in range(s.start, s.end) if not doc.text[i].isspace())


# -- sentences -------------------------------------------------------------------------


def test_abbreviations_initials_and_decimals_do_not_split() -> None:
    text = (
        "Dr. Smith et al. measured it, e.g. in Fig. 3 and i.e. Table 2. The value was 3.5 mm. "
        "See No. 5 vs. No. 6 approx. here. J. R. Tolkien wrote it. The answer is no. Next one!"
    )
    assert sentences(text) == [
        "Dr. Smith et al. measured it, e.g. in Fig. 3 and i.e. Table 2.",
        "The value was 3.5 mm.",
        "See No. 5 vs. No. 6 approx. here.",
        "J. R. Tolkien wrote it.",
        "The answer is no.",
        "Next one!",
    ]


def test_quotes_brackets_questions_and_blank_lines() -> None:
    text = (
        'He said "Stop." Then left. (It rained.) Why? "Is it?" she asked.\n\n'
        "Heading without stop\nBody line\n \t\nafter a blank line"
    )
    assert sentences(text) == [
        'He said "Stop."',
        "Then left.",
        "(It rained.)",
        "Why?",
        '"Is it?" she asked.',
        "Heading without stop\nBody line",
        "after a blank line",
    ]


def test_split_sentences_respects_the_span() -> None:
    text = "Outside. Inside one. Inside two.  Outside again."
    start = text.index("Inside")
    end = text.index("Outside again")
    assert [text[a:b] for a, b in split_sentences(text, start, end)] == ["Inside one.", "Inside two."]
    with pytest.raises(ValueError):
        split_sentences(text, 5, len(text) + 1)


# -- chunks ----------------------------------------------------------------------------


def test_packing_and_overlap() -> None:
    parts = [f"Sentence number {i} is here to fill some space nicely." for i in range(12)]
    text = " ".join(parts)
    doc = doc_of(text)
    chunks = chunk_document(doc, target_chars=200, max_chars=300, overlap_sentences=1)
    check_chunks(doc, chunks, 300)
    assert len(chunks) > 2
    for prev, nxt in pairwise(chunks):
        last = sentences(prev.text)[-1]
        assert nxt.text.startswith(last) and nxt.start == prev.end - len(last)
        assert len(prev.text) <= 200
    no_overlap = chunk_document(doc, target_chars=200, max_chars=300, overlap_sentences=0)
    for prev, nxt in pairwise(no_overlap):
        assert nxt.start > prev.end
    assert " ".join(c.text for c in no_overlap) == text


def test_overlap_dropped_when_it_cannot_fit() -> None:
    text = ("a" * 80 + ". ") + ("b" * 80 + ". ") + ("c" * 80 + ".")
    chunks = chunk_document(doc_of(text), target_chars=100, max_chars=120, overlap_sentences=1)
    assert [c.text[0] for c in chunks] == ["a", "b", "c"]  # overlap + next would pass max_chars


def test_long_sentence_is_hard_split_at_whitespace() -> None:
    words = " ".join(f"word{i:03d}" for i in range(300))  # one 2399-character "sentence"
    doc = doc_of(words + ". Short one.")
    chunks = chunk_document(doc, target_chars=100, max_chars=150, overlap_sentences=0)
    check_chunks(doc, chunks, 150)
    assert all(c.text.split()[0].startswith("word") or c.text == "Short one." for c in chunks)
    assert all(len(c.text) > 100 for c in chunks[:-2])  # pieces fill up to max_chars
    joined = " ".join(c.text for c in chunks)
    assert joined == doc.text


def test_long_run_without_whitespace_is_cut_anyway() -> None:
    doc = doc_of("x" * 1000)
    chunks = chunk_document(doc, target_chars=100, max_chars=300)
    check_chunks(doc, chunks, 300)
    assert [len(c.text) for c in chunks] == [300, 300, 300, 100]


def test_chunks_never_cross_sections_and_ordinals_run_over_the_document() -> None:
    md = "# A\n\n" + "Alpha sentence here. " * 20 + "\n\n## B\n\n" + "Bravo sentence here. " * 20
    md += "\n\n# C\n\nCharlie."
    [doc] = parse_bytes("m.md", md.encode())
    chunks = chunk_document(doc, target_chars=120, max_chars=200)
    check_chunks(doc, chunks, 200)
    paths = [c.heading_path for c in chunks]
    assert paths == sorted(paths, key=[("A",), ("A", "B"), ("C",)].index)
    assert {p for p in paths} == {("A",), ("A", "B"), ("C",)}
    assert not any("Alpha" in c.text and "Bravo" in c.text for c in chunks)
    assert chunks[-1].text == "# C\n\nCharlie."


def test_pages_and_empty_sections() -> None:
    text = "Page one text.\n\n   \n\nPage three text."
    sections = [Section(0, 14, (), 1), Section(16, 19, (), 2), Section(21, len(text), (), 3)]
    chunks = chunk_document(doc_of(text, sections))
    assert [(c.text, c.page, c.ordinal) for c in chunks] == [("Page one text.", 1, 0), ("Page three text.", 3, 1)]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        chunk_document(doc_of("x."), target_chars=500, max_chars=100)
    with pytest.raises(ValueError):
        chunk_document(doc_of("x."), overlap_sentences=-1)


def test_parsed_formats_chunk_to_exact_spans() -> None:
    html = b"<h1>T</h1><p>" + b"Some text here. " * 80 + b"</p><h2>U</h2><p>More e.g. this.</p>"
    inputs = [("a.html", html), ("b.txt", b"Hello there.\r\n\r\n" * 200), ("c.jsonl", b'{"text": "One. Two."}\n')]
    for name, data in inputs:
        for doc in parse_bytes(name, data):
            check_chunks(doc, chunk_document(doc, target_chars=300, max_chars=400), 400)


# -- properties ------------------------------------------------------------------------

TOKENS = st.sampled_from(
    ["word", "Alpha", "e.g.", "i.e.", "Dr.", "Fig.", "et al.", "3.5", ".", "?", "!", '"', ")", "(",
     " ", " ", " ", "\n", "\n\n", "\t", "Ünïcode", "x" * 40, "No.", "no.", "."]
)


@st.composite
def documents(draw: st.DrawFn) -> ParsedDocument:
    pieces = draw(st.lists(TOKENS, min_size=1, max_size=300))
    text = "".join(p if p in (" ", "\n", "\n\n", "\t") else p + draw(st.sampled_from(["", " "])) for p in pieces)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=8))) | {0, len(text)})
    sections = []
    for i, (a, b) in enumerate(pairwise(cuts)):
        if a < b and draw(st.booleans() | st.just(True)):
            sections.append(Section(a, b, (f"h{i}",), draw(st.none() | st.integers(1, 9))))
    return ParsedDocument("p.txt", None, "p", text, tuple(sections), "txt")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), target=st.integers(10, 200), extra=st.integers(0, 100), overlap=st.integers(0, 3))
def test_chunk_properties(doc: ParsedDocument, target: int, extra: int, overlap: int) -> None:
    chunks = chunk_document(doc, target_chars=target, max_chars=target + extra, overlap_sentences=overlap)
    check_chunks(doc, chunks, target + extra)


@settings(max_examples=200, deadline=None)
@given(doc=documents())
def test_sentence_properties(doc: ParsedDocument) -> None:
    for s in doc.sections:
        spans = split_sentences(doc.text, s.start, s.end)
        last = s.start
        for a, b in spans:
            assert last <= a < b <= s.end
            piece = doc.text[a:b]
            assert piece == piece.strip()
            assert "\n\n" not in piece.replace(" ", "").replace("\t", "")  # blank lines end sentences
            last = b
        inside = {i for a, b in spans for i in range(a, b)}
        assert all(i in inside for i in range(s.start, s.end) if not doc.text[i].isspace())
