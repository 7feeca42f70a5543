"""Table-aware chunking: every Markdown and HTML table row is a chunk of its own that carries
its header, is cited by its exact line, and is found by retrieval over the real engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.access.labels import Labels, LevelScale, Principal
from appliance.config import KnowledgeSettings
from appliance.knowledge.base import KnowledgeBase
from appliance.knowledge.chunking import chunk_document, row_passage
from appliance.knowledge.parsers import parse_bytes, row_cells
from appliance.knowledge.retrieval import Retriever
from appliance.runtime.client import EngineClient

REPO = Path(__file__).resolve().parent.parent
KEYS = REPO / "bundles" / "demo" / "documents" / "crypto-key-rotation-schedule.md"

CANTEEN_MD = """# Canteen

Opening times are below.

| Service | Days | Hours |
|---------|:----:|-------|
| Breakfast | Mon-Fri | 07:00-09:00 |
| Lunch | Mon-Fri | 12:00-14:00 |
| Dinner | Mon-Fri | 17:30-19:30 |

After the table comes prose. It is chunked as before.
"""


def _chunks(name: str, data: str | bytes) -> tuple[str, list]:
    doc = parse_bytes(name, data.encode() if isinstance(data, str) else data)[0]
    chunks = chunk_document(doc)
    for c in chunks:
        assert c.text == doc.text[c.start:c.end]  # a citation still points at the exact characters
    return doc.text, chunks


def test_a_markdown_table_is_chunked_a_row_at_a_time_with_its_header() -> None:
    text, chunks = _chunks("canteen.md", CANTEEN_MD)
    rows = [c for c in chunks if c.row]
    assert [c.row for c in rows] == [1, 2, 3]
    assert [c.text for c in rows] == ["| Breakfast | Mon-Fri | 07:00-09:00 |", "| Lunch | Mon-Fri | 12:00-14:00 |",
                                      "| Dinner | Mon-Fri | 17:30-19:30 |"]
    assert rows[2].header == ("Service", "Days", "Hours")
    assert rows[2].passage == "Service: Dinner; Days: Mon-Fri; Hours: 17:30-19:30"
    prose = [c.text for c in chunks if not c.row]
    assert prose == ["# Canteen\n\nOpening times are below.", "After the table comes prose. It is chunked as before."]
    assert not any("---" in c.text or "| Service |" in c.text for c in chunks)  # header and delimiter: no chunk


def test_an_html_table_uses_its_th_row_as_header_and_keeps_every_row() -> None:
    html = ("<html><body><h1>Keys</h1><p>Rotation follows.</p><table>"
            "<tr><th>Item</th><th>Frequency</th></tr>"
            "<tr><td>LE-400 traffic keys</td><td>Monthly, first Tuesday</td></tr>"
            "<tr><td>Badge PINs<td>Yearly</tr>"  # an unclosed cell and row, as real pages have
            "</table><p>After.</p></body></html>")
    text, chunks = _chunks("keys.html", html)
    rows = [c for c in chunks if c.row]
    assert [c.passage for c in rows] == ["Item: LE-400 traffic keys; Frequency: Monthly, first Tuesday",
                                         "Item: Badge PINs; Frequency: Yearly"]
    assert rows[0].heading_path == ("Keys",)
    assert [c.text for c in chunks if not c.row] == ["Keys\n\nRotation follows.", "After."]


def test_an_html_table_without_th_takes_its_first_row_as_header() -> None:
    html = "<table><tr><td>Room</td><td>Use</td></tr><tr><td>A-017</td><td>Media kiosk</td></tr></table>"
    _, chunks = _chunks("rooms.html", html)
    assert [c.passage for c in chunks] == ["Room: A-017; Use: Media kiosk"]


def test_nothing_inside_a_table_span_is_lost() -> None:
    """A nested table breaks the outer row into pieces: the pieces are still indexed as prose."""
    html = ("<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr>"
            "<tr><td>three<table><tr><td>inner</td></tr></table></td><td>4</td></tr></table>")
    text, chunks = _chunks("nested.html", html)
    covered = "".join(c.text for c in chunks)
    for word in ("1", "2", "three", "inner", "4"):
        assert word in covered


def test_markdown_tables_in_code_fences_and_lookalikes_are_not_tables() -> None:
    md = "```\n| a | b |\n|---|---|\n| 1 | 2 |\n```\n\nA | B\n---\n\nx | y | z\n|---|---|\n| 1 | 2 |\n"
    doc = parse_bytes("fence.md", md.encode())[0]
    assert doc.tables == ()  # fenced; a setext heading; a delimiter with the wrong number of cells


def test_row_cells_and_passage_edge_cases() -> None:
    assert row_cells("| a \\| b | c |") == ["a | b", "c"]  # an escaped pipe is part of the cell
    assert row_cells("x | y") == ["x", "y"]
    assert row_passage(("A", "B"), "| 1 | | 3 |") == "A: 1; column 3: 3"  # empty cell left out; extra named
    assert row_passage((), "plain") == "plain"


def test_a_row_longer_than_a_chunk_is_split_like_prose() -> None:
    long = " ".join(["word"] * 600)
    md = f"| k | v |\n|---|---|\n| key | {long} |\n"
    _, chunks = _chunks("long.md", md)
    assert len(chunks) > 1 and all(len(c.text) <= 1500 for c in chunks) and not any(c.row for c in chunks)


def test_a_table_row_is_retrieved_cited_and_stored_with_its_header(engine: EngineClient, tmp_path: Path) -> None:
    """The question from the field: the answer is a table row, not the 'Upcoming rotations' list."""
    kb = KnowledgeBase(tmp_path / "kb", lambda t: engine.embed(list(t)), scale=LevelScale(),
                       settings=KnowledgeSettings())
    kb.ingest_files([KEYS], Labels("SECRET", frozenset({"CRYPTO"})))
    reader = Principal("c", "SECRET", frozenset({"CRYPTO"}))
    hits = Retriever(kb, kb.settings).retrieve("How often are the LE-400 link encryptor traffic keys rotated?",
                                               reader, k=3)
    top = hits[0].chunk
    assert top.row == 1 and top.header[2] == "Rotation period"
    assert "Rotation period: Monthly, first Tuesday of the month, 02:00-04:00" in top.passage
    doc_text = KEYS.read_text()
    assert doc_text[top.start:top.end] == top.text and top.text.startswith("| LE-400 link encryptor traffic keys")
    # the full-text index holds the header words too, and survives a rebuild from the catalog
    bm25 = Retriever(kb, kb.settings).retrieve("rotation period HSM master key", reader, k=1, mode="bm25")
    assert bm25[0].chunk.row == 8
    kb.catalog.rebuild_fts(hits[0].chunk.partition)
    again = Retriever(kb, kb.settings).retrieve("rotation period HSM master key", reader, k=1, mode="bm25")
    assert again[0].chunk.chunk_id == bm25[0].chunk.chunk_id
    assert kb.check() == []


@pytest.mark.parametrize("name", ["emergency-evacuation-plan.md", "welcome-handbook.md"])
def test_demo_documents_with_tables_lose_no_text(name: str) -> None:
    path = REPO / "bundles" / "demo" / "documents" / name
    doc = parse_bytes(name, path.read_bytes())[0]
    assert doc.tables, "the demo document has tables"
    chunks = chunk_document(doc)
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    header_lines = set()
    for t in doc.tables:
        header_lines.update(range(t.start, t.rows[0][0]))
    missing = [i for i in range(len(doc.text)) if i not in covered and i not in header_lines
               and not doc.text[i].isspace()]
    assert missing == []
