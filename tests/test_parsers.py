"""Document parsers: formats, headings, pages, offsets, and every kind of bad input."""

from __future__ import annotations

import csv
import io
import json
import pathlib
import zipfile
from pathlib import Path

import docx
import pypdf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reportlab.pdfgen import canvas

from appliance.errors import KnowledgeError, ParseError
from appliance.knowledge.parsers import (
    SUPPORTED,
    ParsedDocument,
    ParseLimits,
    parse_bytes,
    parse_file,
)

SCIFACT = Path("/work/shared/data/scifact/corpus.jsonl")
PAGES = ["Alpha page one text.", "Bravo page two text.", "Charlie page three text."]


def check_offsets(doc: ParsedDocument) -> None:
    """Sections are ordered, non-overlapping, inside the text and trimmed of blanks."""
    last_end = 0
    assert doc.sections
    for s in doc.sections:
        assert 0 <= s.start < s.end <= len(doc.text)
        assert s.start >= last_end
        span = doc.text[s.start : s.end]
        assert span == span.strip() and span
        last_end = s.end
    assert "\r" not in doc.text


def section_texts(doc: ParsedDocument) -> list[tuple[tuple[str, ...], str]]:
    return [(s.heading_path, doc.text[s.start : s.end]) for s in doc.sections]


def make_pdf(path: Path, pages: list[str], title: str | None = None) -> Path:
    c = canvas.Canvas(str(path))
    if title:
        c.setTitle(title)
    for text in pages:
        if text:
            c.drawString(72, 720, text)
        c.showPage()
    c.save()
    return path


def make_docx() -> bytes:
    d = docx.Document()
    d.add_paragraph("Site Manual", style="Title")
    d.add_paragraph("Front matter.")
    d.add_heading("Procedures", level=1)
    d.add_paragraph("Follow the procedures.")
    d.add_heading("Media handling", level=2)
    d.add_paragraph("Media must be logged.")
    table = d.add_table(rows=2, cols=2)
    for r, row in enumerate([("Item", "Owner"), ("USB drive", "Security office")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    d.add_heading("Contacts", level=1)
    d.add_paragraph("Call the desk.")
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


# -- formats ---------------------------------------------------------------------------


def test_supported_extensions() -> None:
    assert SUPPORTED == {".txt", ".text", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".csv", ".jsonl"}


def test_txt_title_paragraphs_and_crlf(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_bytes(b"\xef\xbb\xbf\r\n  Shift log  \r\n\r\nFirst paragraph.\r\n\r\nSecond one.\r\n")
    [doc] = parse_file(p)
    assert (doc.source_name, doc.format, doc.doc_id, doc.title) == ("notes.txt", "txt", None, "Shift log")
    assert doc.text == "\n  Shift log  \n\nFirst paragraph.\n\nSecond one.\n"
    assert section_texts(doc) == [((), "Shift log  \n\nFirst paragraph.\n\nSecond one.")]
    check_offsets(doc)


def test_txt_title_falls_back_to_stem_and_is_capped() -> None:
    [doc] = parse_bytes("dir/sub/long.text", ("x" * 300 + "\nbody").encode())
    assert doc.source_name == "long.text" and doc.title == "x" * 200


def test_markdown_nested_headings() -> None:
    md = (
        "Preamble line.\n\n# Manual\n\nIntro.\n\n## Procedures\nDo things.\n\n```\n# not a heading\n```\n\n"
        "Media handling\n--------------\nKeep media safe.\n\n### Deep ###\nDeep text.\n\n# Annex\nLast.\n"
    )
    [doc] = parse_bytes("guide.md", md.encode())
    assert doc.text == md and doc.title == "Manual" and doc.format == "md"
    assert section_texts(doc) == [
        ((), "Preamble line."),
        (("Manual",), "# Manual\n\nIntro."),
        (("Manual", "Procedures"), "## Procedures\nDo things.\n\n```\n# not a heading\n```"),
        (("Manual", "Media handling"), "Media handling\n--------------\nKeep media safe."),
        (("Manual", "Media handling", "Deep"), "### Deep ###\nDeep text."),
        (("Annex",), "# Annex\nLast."),
    ]
    check_offsets(doc)


def test_markdown_title_is_stem_without_h1() -> None:
    [doc] = parse_bytes("readme.markdown", b"## Only level two\ntext\n")
    assert doc.title == "readme" and doc.sections[0].heading_path == ("Only level two",)


def test_html_drops_scripts_styles_comments_and_unescapes(tmp_path: Path) -> None:
    html = """<!DOCTYPE html><html><head><title>Ops &amp; Safety</title>
    <style>p { color: red } .secret-style {}</style>
    <script>var secret = "SCRIPT-SECRET"; if (a < b) { alert('x') }</script></head>
    <body><!-- COMMENT-SECRET --><noscript>NOSCRIPT-SECRET</noscript>
    <template><p>TEMPLATE-SECRET</p></template><iframe>IFRAME-SECRET</iframe>
    <h1>Main</h1><p>Hello&nbsp;&amp;   <b>world</b>
       &eacute;t&eacute; &#8212; &lt;ok&gt;.</p>
    <h2>Sub</h2><ul><li>one</li><li>two</li></ul>
    <table><tr><td>a</td><td>b</td></tr></table>
    <h3>Deeper</h3><div>Deep<br>text</div>
    <h2>Other</h2><p>Last.</p><script>SCRIPT2-SECRET</script></body></html>"""
    p = tmp_path / "page.htm"
    p.write_text(html, encoding="utf-8")
    [doc] = parse_file(p)
    assert doc.format == "html" and doc.title == "Ops & Safety"
    assert "SECRET" not in doc.text and "color" not in doc.text and "alert" not in doc.text
    assert "Hello & world été — <ok>." in doc.text
    assert section_texts(doc) == [
        (("Main",), "Main\n\nHello & world été — <ok>."),
        (("Main", "Sub"), "Sub\n\none\ntwo\n\na | b"),
        (("Main", "Sub", "Deeper"), "Deeper\n\nDeep\ntext"),
        (("Main", "Other"), "Other\n\nLast."),
    ]
    check_offsets(doc)


def test_html_title_from_first_h1_then_stem() -> None:
    assert parse_bytes("a.html", b"<p>x</p><h1>Head</h1><h1>Second</h1>")[0].title == "Head"
    assert parse_bytes("b.html", b"<p>just text</p>")[0].title == "b"


def test_pdf_pages_sections_and_title(tmp_path: Path) -> None:
    p = make_pdf(tmp_path / "report.pdf", [PAGES[0], "", PAGES[1], PAGES[2]], title="Quarterly report")
    [doc] = parse_file(p)
    assert doc.format == "pdf" and doc.title == "Quarterly report"
    assert [s.page for s in doc.sections] == [1, 3, 4]  # the blank page 2 makes no section
    assert [doc.text[s.start : s.end] for s in doc.sections] == PAGES
    assert doc.text == "\n\n".join(PAGES)
    check_offsets(doc)


def test_pdf_title_falls_back_to_first_line(tmp_path: Path) -> None:
    [doc] = parse_file(make_pdf(tmp_path / "untitled.pdf", PAGES[:2]))
    assert doc.title == PAGES[0]


def test_pdf_encrypted_with_empty_user_password_is_read(tmp_path: Path) -> None:
    writer = pypdf.PdfWriter(clone_from=str(make_pdf(tmp_path / "plain.pdf", PAGES[:2])))
    writer.encrypt(user_password="", owner_password="owner-secret")
    out = tmp_path / "open.pdf"
    with out.open("wb") as f:
        writer.write(f)
    [doc] = parse_file(out)
    assert [doc.text[s.start : s.end] for s in doc.sections] == PAGES[:2]


def test_docx_headings_table_and_title() -> None:
    [doc] = parse_bytes("manual.docx", make_docx())
    assert doc.format == "docx" and doc.title == "Site Manual"
    assert section_texts(doc) == [
        (("Site Manual",), "Site Manual\n\nFront matter."),
        (("Site Manual", "Procedures"), "Procedures\n\nFollow the procedures."),
        (
            ("Site Manual", "Procedures", "Media handling"),
            "Media handling\n\nMedia must be logged.\n\nItem | Owner\nUSB drive | Security office",
        ),
        (("Site Manual", "Contacts"), "Contacts\n\nCall the desk."),
    ]
    check_offsets(doc)


def test_docx_core_title_wins() -> None:
    d = docx.Document()
    d.core_properties.title = "From properties"
    d.add_heading("A heading", level=1)
    d.add_paragraph("Body.")
    buf = io.BytesIO()
    d.save(buf)
    [doc] = parse_bytes("p.docx", buf.getvalue())
    assert doc.title == "From properties"


def test_docx_merged_cells_once_and_hostile_grid_span() -> None:
    d = docx.Document()
    t = d.add_table(rows=3, cols=3)
    for r in range(3):
        for c in range(3):
            t.cell(r, c).text = f"r{r}c{c}"
    t.cell(0, 0).merge(t.cell(0, 1))  # horizontal
    t.cell(1, 2).merge(t.cell(2, 2))  # vertical
    buf = io.BytesIO()
    d.save(buf)
    expected = "r0c0 r0c1 | r0c2\nr1c0 | r1c1 | r1c2 r2c2\nr2c0 | r2c1"
    assert parse_bytes("m.docx", buf.getvalue())[0].text == expected
    hostile = io.BytesIO()  # the same table claiming a 2**31-column span: must not loop over it
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(hostile, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "word/document.xml":
                data = data.replace(b'<w:gridSpan w:val="2"/>', b'<w:gridSpan w:val="2147483647"/>')
            dst.writestr(info, data)
    assert parse_bytes("g.docx", hostile.getvalue())[0].text == expected


def test_docx_text_inside_content_controls() -> None:
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    d = docx.Document()
    d.add_paragraph("Before.")
    sdt = parse_xml(
        f"<w:sdt {nsdecls('w')}><w:sdtPr/><w:sdtContent>"
        "<w:p><w:r><w:t>Inside a control.</w:t></w:r></w:p></w:sdtContent></w:sdt>"
    )
    d.element.body.insert(1, sdt)
    d.add_paragraph("After.")
    buf = io.BytesIO()
    d.save(buf)
    assert parse_bytes("c.docx", buf.getvalue())[0].text == "Before.\n\nInside a control.\n\nAfter."


def test_html_unclosed_and_nested_headings() -> None:
    [doc] = parse_bytes("u.html", b"<title>T<body><h1>Open<p>still heading</p><h2>Two</h2>text")
    assert doc.title == "T"
    assert section_texts(doc) == [
        (("Open still heading",), "Open still heading"),
        (("Open still heading", "Two"), "Two\n\ntext"),
    ]


def test_csv_corpus_rows_are_documents() -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["ID", "Title", "Text", "extra"])
    w.writerow(["d1", "First", "Line one.\nLine two, with comma.", "x"])
    w.writerow(["d2", "", "Untitled body", "y"])
    w.writerow(["", "No id", "Anonymous body"])  # ragged and without an id
    docs = parse_bytes("export.csv", buf.getvalue().encode())
    assert [(d.doc_id, d.title, d.text) for d in docs] == [
        ("d1", "First", "Line one.\nLine two, with comma."),
        ("d2", "Untitled body", "Untitled body"),
        ("export.csv#5", "No id", "Anonymous body"),  # d1 spans lines 2-3
    ]
    for d in docs:
        check_offsets(d)
        assert d.format == "csv" and d.sections[0].heading_path == ()


def test_csv_table_rows_are_sections() -> None:
    data = b"name,room,phone\nAda,101,555\n\nBob,,556,extra\nCy,\"2\n02\"\n"
    [doc] = parse_bytes("staff.csv", data)
    assert doc.title == "staff" and doc.doc_id is None
    assert section_texts(doc) == [
        (("row 1",), "name: Ada; room: 101; phone: 555"),
        (("row 2",), "name: Bob; phone: 556; column 4: extra"),
        (("row 3",), "name: Cy; room: 2 02"),
    ]
    check_offsets(doc)


def test_jsonl_records(tmp_path: Path) -> None:
    lines = [
        {"doc_id": 7, "title": "Seven", "text": "Body seven.\r\nMore."},
        {},
        {"id": "x-1", "sentences": ["First sentence.", "Second sentence."]},
        {"text": "No id or title here."},
    ]
    p = tmp_path / "records.jsonl"
    p.write_text("\n".join(json.dumps(r) if r else "   " for r in lines) + "\n", encoding="utf-8")
    docs = parse_file(p)
    assert [(d.doc_id, d.title, d.text) for d in docs] == [
        ("7", "Seven", "Body seven.\nMore."),
        ("x-1", "First sentence. Second sentence.", "First sentence. Second sentence."),
        ("records.jsonl#4", "No id or title here.", "No id or title here."),
    ]
    for d in docs:
        check_offsets(d)


def test_scifact_corpus_head_parses(tmp_path: Path) -> None:
    with SCIFACT.open("rb") as f:
        head = b"".join(next(f) for _ in range(50))
    p = tmp_path / "corpus.jsonl"
    p.write_bytes(head)
    docs = parse_file(p)
    assert len(docs) == 50
    first = json.loads(head.split(b"\n", 1)[0])
    assert docs[0].doc_id == str(first["doc_id"]) and docs[0].title == first["title"]
    assert docs[0].text == " ".join(first["sentences"])
    assert len({d.doc_id for d in docs}) == 50
    for d in docs:
        check_offsets(d)
        assert d.format == "jsonl" and d.text.strip()


# -- bad inputs ------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    with pytest.raises(ParseError, match=r"^empty\.txt: empty file$"):
        parse_file(p)


def test_whitespace_only_is_no_text() -> None:
    with pytest.raises(ParseError, match=r"^blank\.md: no text$"):
        parse_bytes("blank.md", b" \n\n\t\n")


def test_binary_junk_named_pdf(tmp_path: Path) -> None:
    p = tmp_path / "report.pdf"
    p.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(ParseError, match=r"^report\.pdf: not a valid PDF: "):
        parse_file(p)


def test_binary_junk_named_txt() -> None:
    with pytest.raises(ParseError, match=r"^blob\.txt: binary data, not text$"):
        parse_bytes("blob.txt", b"MZ\x90\x00\x03" + bytes(range(256)) * 8)
    with pytest.raises(ParseError, match="binary data"):  # no NUL, but mostly control characters
        parse_bytes("ctl.csv", bytes(range(1, 9)) * 200 + b"a,b\n")


def test_junk_docx_not_a_zip() -> None:
    with pytest.raises(ParseError, match=r"^junk\.docx: not a DOCX file \(not a zip archive\)$"):
        parse_bytes("junk.docx", b"this is not a zip file at all")


def test_zip_that_is_not_a_docx() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(ParseError, match=r"^other\.docx: not a valid DOCX: "):
        parse_bytes("other.docx", buf.getvalue())


def test_zip_bomb_inside_docx() -> None:
    buf = io.BytesIO(make_docx())
    with (
        zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as zf,
        zf.open("word/media/bomb.bin", "w") as member,
    ):
        block = bytes(2**20)
        for _ in range(50):  # 50 MiB of zeros deflate to about 50 KiB
            member.write(block)
    data = buf.getvalue()
    assert len(data) < 2**20
    with pytest.raises(ParseError, match=r"^bomb\.docx: zip bomb suspected: member 'word/media/bomb\.bin' expands"):
        parse_bytes("bomb.docx", data)


def test_zip_bomb_by_total_size_and_member_count() -> None:
    data = make_docx()
    with pytest.raises(ParseError, match="zip bomb suspected: over 1000 bytes uncompressed"):
        parse_bytes("a.docx", data, ParseLimits(max_zip_uncompressed=1000))
    with pytest.raises(ParseError, match=r"zip bomb suspected: \d+ members \(limit 3\)"):
        parse_bytes("a.docx", data, ParseLimits(max_zip_members=3))


def test_two_gigabyte_file_refused_by_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "huge.txt"
    with p.open("wb") as f:
        f.truncate(2 * 2**30)  # sparse: no disk used

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened for reading")

    monkeypatch.setattr(pathlib.Path, "open", no_reading)
    monkeypatch.setattr(pathlib.Path, "read_bytes", no_reading)
    with pytest.raises(ParseError, match=rf"^huge\.txt: file is {2 * 2**30} bytes, over the limit of {64 * 2**20}$"):
        parse_file(p)


def test_bytes_over_size_limit() -> None:
    with pytest.raises(ParseError, match="over the limit of 10"):
        parse_bytes("a.txt", b"x" * 11, ParseLimits(max_file_bytes=10))


def test_not_a_regular_file(tmp_path: Path) -> None:
    d = tmp_path / "folder.txt"
    d.mkdir()
    with pytest.raises(ParseError, match=r"^folder\.txt: not a regular file$"):
        parse_file(d)


def test_html_with_scripts_only_has_no_text() -> None:
    html = b"<html><head><script>document.write('x')</script></head><body><script>evil()</script></body></html>"
    with pytest.raises(ParseError, match=r"^s\.html: no text$"):
        parse_bytes("s.html", html)


def test_mixed_encodings(tmp_path: Path) -> None:
    p = tmp_path / "mixed.txt"
    p.write_bytes("Grüße aus Köln.\n".encode() + "Un café naïve.\r\n".encode("cp1252") + b"Plain.\n")
    [doc] = parse_file(p)
    assert doc.text == "Grüße aus Köln.\nUn café naïve.\nPlain.\n"
    assert doc.warnings == ("1 line was not UTF-8 (decoded as cp1252)",)


def test_mixed_encodings_latin1_fallback() -> None:
    data = "naïve\n".encode("cp1252") * 2 + b"\x81 odd\n"  # 0x81 is undefined in cp1252
    [doc] = parse_bytes("m.md", data)
    assert doc.text == "naïve\nnaïve\n\x81 odd\n"
    assert doc.warnings == (
        "2 lines were not UTF-8 (decoded as cp1252)",
        "1 line was not UTF-8 (decoded as latin-1)",
    )


def test_utf16_with_bom() -> None:
    [doc] = parse_bytes("win.txt", "Unicode text from Windows.\r\n".encode("utf-16"))
    assert doc.text == "Unicode text from Windows.\n"


def test_encrypted_pdf(tmp_path: Path) -> None:
    writer = pypdf.PdfWriter(clone_from=str(make_pdf(tmp_path / "plain.pdf", PAGES[:2])))
    writer.encrypt(user_password="s3cret", owner_password="owner", algorithm="AES-128")
    p = tmp_path / "locked.pdf"
    with p.open("wb") as f:
        writer.write(f)
    with pytest.raises(ParseError, match=r"^locked\.pdf: encrypted PDF \(no password available\)$"):
        parse_file(p)


def test_unknown_extension() -> None:
    with pytest.raises(ParseError, match=r"^data\.xlsx: unsupported file type '\.xlsx' \(supported: .*\.docx.*\)$"):
        parse_bytes("data.xlsx", b"whatever")
    with pytest.raises(ParseError, match="without an extension"):
        parse_bytes("README", b"whatever")


def test_jsonl_bad_line_names_line_number() -> None:
    data = b'{"id": 1, "text": "ok"}\n\n{"id": 2, "text": "broken"\n'
    with pytest.raises(ParseError, match=r"^bad\.jsonl: line 3: not valid JSON \("):
        parse_bytes("bad.jsonl", data)


def test_jsonl_record_without_text_names_line_number() -> None:
    with pytest.raises(ParseError, match=r"^t\.jsonl: line 2: no text"):
        parse_bytes("t.jsonl", b'{"text": "fine"}\n{"id": 3, "title": "no body"}\n')
    with pytest.raises(ParseError, match=r"^t\.jsonl: line 1: not a JSON object$"):
        parse_bytes("t.jsonl", b'["a list"]\n')


def test_csv_broken_quote_names_line() -> None:
    data = b'id,text\n1,"fine"\n2,"broken"quote\n3,after\n'
    with pytest.raises(ParseError, match=r"^q\.csv: malformed CSV at line 3: "):
        parse_bytes("q.csv", data)


def test_csv_unterminated_quote_names_line_where_record_starts() -> None:
    data = b'id,text\n1,ok\n2,"never closed\n3,more\n4,rows\n'
    with pytest.raises(ParseError, match=r"^u\.csv: malformed CSV at line 3: "):
        parse_bytes("u.csv", data)


def test_csv_corpus_row_without_text() -> None:
    with pytest.raises(ParseError, match=r"^c\.csv: line 3: empty text$"):
        parse_bytes("c.csv", b"id,text\n1,hello\n2,\n")


def test_too_many_pages(tmp_path: Path) -> None:
    p = make_pdf(tmp_path / "long.pdf", PAGES)
    with pytest.raises(ParseError, match=r"^long\.pdf: 3 pages, over the limit of 2$"):
        parse_file(p, ParseLimits(max_pages=2))


def test_too_many_records() -> None:
    data = b"".join(json.dumps({"id": i, "text": f"t{i}"}).encode() + b"\n" for i in range(4))
    with pytest.raises(ParseError, match=r"more than 3 records"):
        parse_bytes("r.jsonl", data, ParseLimits(max_records=3))
    with pytest.raises(ParseError, match=r"more than 1 rows"):
        parse_bytes("r.csv", b"a,b\n1,2\n3,4\n", ParseLimits(max_records=1))


def test_too_much_text() -> None:
    with pytest.raises(ParseError, match=r"^big\.txt: 101 characters of text, over the limit of 100$"):
        parse_bytes("big.txt", b"y" * 101, ParseLimits(max_text_chars=100))


def test_errors_are_one_line_and_knowledge_errors() -> None:
    with pytest.raises(KnowledgeError) as info:
        parse_bytes("evil\nname.txt", b"")
    assert "\n" not in str(info.value) and str(info.value).startswith("evil?name.txt:")


# -- robustness ------------------------------------------------------------------------

MARKUP = st.sampled_from(
    ["# ", "## ", "\n", "\n\n", "===", "---", "```", "<h1>", "</h1>", "<h2>", "<p>", "</p>", "<script>",
     "</script>", "<!--", "-->", "&amp;", "&#0;", "\r\n", '"', ",", "text", "{", "}", '{"text": "x"}', "é", " "]
)


@settings(max_examples=150, deadline=None)
@given(
    ext=st.sampled_from([".txt", ".md", ".html", ".csv", ".jsonl"]),
    body=st.lists(MARKUP, max_size=60).map("".join) | st.text(max_size=300),
    junk=st.binary(max_size=64),
)
def test_text_formats_never_fail_unexpectedly(ext: str, body: str, junk: bytes) -> None:
    for data in (body.encode(), junk + body.encode()):
        try:
            docs = parse_bytes("fuzz" + ext, data)
        except ParseError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("fuzz" + ext + ": ")
            continue
        for doc in docs:
            check_offsets(doc)
