"""Extractors for the structured formats (HTML, PDF, DOCX) used by :mod:`.parsers`.

Each extractor takes the file name, its bytes (or decoded text for HTML) and the
limits, and returns an :class:`Extracted`: plain text with ``"\\n"`` newlines, the
title, raw sections ``(start, end, heading_path, page)`` and warnings. Sections are
cleaned (trimmed, empty ones dropped) by the caller. Every failure is a
:class:`~appliance.errors.ParseError` whose message is one line naming the file.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from html.parser import HTMLParser
from typing import TYPE_CHECKING, NamedTuple

from appliance.errors import ParseError

# pypdf logs every oddity of a damaged file; the one-line ParseError is what the user needs
logging.getLogger("pypdf").setLevel(logging.ERROR)

if TYPE_CHECKING:
    from appliance.knowledge.parsers import ParseLimits

__all__ = [
    "Extracted", "TextBuilder", "check_zip", "extract_docx", "extract_html", "extract_pdf",
    "normalise_newlines", "one_line", "push_heading", "short_reason",
]

RawSection = tuple[int, int, tuple[str, ...], "int | None"]
TITLE_MAX = 200
RATIO_MIN_BYTES = 1 << 20  # members smaller than this cannot be a bomb on their own


RawTable = tuple[int, int, tuple[str, ...], tuple[tuple[int, int], ...]]  # start, end, header, row spans


class Extracted(NamedTuple):
    title: str
    text: str
    sections: list[RawSection]
    warnings: list[str]
    tables: list[RawTable] = []


def one_line(s: str, limit: int = TITLE_MAX) -> str:
    """Collapse all whitespace runs to one space, trim, cut to ``limit`` characters."""
    return re.sub(r"\s+", " ", s).strip()[:limit]


def short_reason(exc: BaseException) -> str:
    msg = one_line(str(exc), 160)
    return msg or type(exc).__name__


def normalise_newlines(s: str) -> str:
    return s.replace("\r\n", "\n").replace("\r", "\n")


class TextBuilder:
    """Accumulates lines of text; headings open sections with a heading path."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._len = 0
        self._pending = 0  # newlines owed before the next line (0 = just one)
        self._stack: list[tuple[int, str]] = []
        self._start = 0
        self._path: tuple[str, ...] = ()
        self.sections: list[RawSection] = []

    @property
    def length(self) -> int:
        return self._len

    def paragraph_break(self) -> None:
        self._pending = 2

    def write(self, line: str, heading_level: int | None = None) -> None:
        if not line:
            return
        if self._len:
            self._add("\n" * max(self._pending, 1))
        self._pending = 0
        if heading_level is not None:
            self._close()
            self._start = self._len
            self._path = push_heading(self._stack, heading_level, one_line(line))
        self._add(line)

    def finish(self) -> tuple[str, list[RawSection]]:
        self._close()
        return "".join(self._parts), self.sections

    def _add(self, s: str) -> None:
        self._parts.append(s)
        self._len += len(s)

    def _close(self) -> None:
        if self._len > self._start:
            self.sections.append((self._start, self._len, self._path, None))


def push_heading(stack: list[tuple[int, str]], level: int, title: str) -> tuple[str, ...]:
    """Update a (level, title) stack for a new heading; return the new heading path."""
    while stack and stack[-1][0] >= level:
        stack.pop()
    stack.append((level, title))
    return tuple(t for _, t in stack)


# -- HTML ------------------------------------------------------------------------------

_DROP = frozenset({"script", "style", "noscript", "template", "iframe", "object"})
_LINE = frozenset({"br", "li", "tr", "dt", "dd", "option", "caption"})
_PARA = frozenset(
    {"p", "div", "ul", "ol", "dl", "table", "thead", "tbody", "tfoot", "section", "article",
     "header", "footer", "nav", "aside", "main", "blockquote", "pre", "hr", "form",
     "figure", "figcaption", "address", "fieldset", "details", "summary", "body"}
)
_HEADINGS = {f"h{i}": i for i in range(1, 7)}


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out = TextBuilder()
        self.title_parts: list[str] = []
        self.first_h1 = ""
        self._line: list[str] = []
        self._line_has_text = False
        self._skip = 0
        self._in_title = False
        self._pre = 0
        self._heading: int | None = None
        self._heading_parts: list[str] = []
        self._table = 0  # depth of <table> nesting; only outermost tables are recorded
        self._rows: list[tuple[int, int, bool, str]] = []  # this table's row lines: span, has <th>, text
        self._row: bool | None = None  # in a row: does it have a <th>?
        self._row_start, self._row_text = 0, ""
        self.tables: list[RawTable] = []

    def _flush(self, para: bool) -> None:
        if self._heading is not None:  # a block inside a heading: keep its words apart
            self._heading_parts.append(" ")
        text = one_line("".join(self._line), 10**9)
        self._line, self._line_has_text = [], False
        self.out.write(text)
        if text:
            self._row_start, self._row_text = self.out.length - len(text), text  # the line just written
        if para:
            self.out.paragraph_break()

    def end_heading(self) -> None:
        if self._heading is None:
            return
        text = one_line("".join(self._heading_parts), 10**9)
        if text:
            self.out.paragraph_break()
            self.out.write(text, self._heading)
            self.out.paragraph_break()
            if self._heading == 1 and not self.first_h1:
                self.first_h1 = text
        self._heading = None

    def finish(self) -> tuple[str, list[RawSection]]:
        self.end_heading()
        if self._table:
            self._end_table()  # an unclosed table ends with the document
        self._flush(True)
        return self.out.finish()

    def _end_row(self) -> None:
        """Close the open row (``</tr>``, or the next ``<tr>``/``</table>`` when it was left open)."""
        if self._row is None:
            return
        before = self.out.length
        self._flush(False)
        if self.out.length > before:  # the row wrote a line
            self._rows.append((self._row_start, self.out.length, self._row, self._row_text))
        self._row = None

    def _end_table(self) -> None:
        """A table of a header row (its ``<th>`` row, else its first row) and at least one data row."""
        self._end_row()
        rows, self._rows = self._rows, []
        if len(rows) < 2:
            return
        first = next((i for i, r in enumerate(rows) if r[2]), 0)
        header = tuple(one_line(x, 10**9) for x in rows[first][3].split(" | "))
        data = tuple((a, b) for i, (a, b, _, _) in enumerate(rows) if i > first)
        if data:
            self.tables.append((rows[0][0], rows[-1][1], header, data))

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _DROP:
            self._skip += 1
        if self._skip:
            return
        if tag == "body":  # an unclosed <title> ends here
            self._in_title = False
        if tag == "title":
            self._in_title = True
        elif tag in _HEADINGS:
            self.end_heading()  # an unclosed one before it
            self._flush(True)
            self._heading, self._heading_parts = _HEADINGS[tag], []
        elif tag in ("td", "th"):
            if self._line_has_text:
                self._line.append(" | ")
            if self._row is not None and tag == "th":
                self._row = True
        elif tag == "tr" and self._table == 1:
            self._end_row()
            self._flush(False)
            self._row = False
        elif tag == "table":
            self._flush(True)
            self._table += 1
            if self._table == 1:
                self._rows, self._row = [], None
        elif tag in _LINE or tag in _PARA:
            self._flush(tag in _PARA)
            self._pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP:
            self._skip = max(self._skip - 1, 0)
            return
        if self._skip:
            return
        if tag == "title":
            self._in_title = False
        elif tag in _HEADINGS:
            self.end_heading()
        elif tag == "tr" and self._table == 1:
            self._end_row()
        elif tag == "table" and self._table:
            if self._table == 1:
                self._end_table()
            self._table -= 1
            self._flush(True)
        elif tag in _LINE or tag in _PARA:
            self._flush(tag in _PARA)
            if tag == "pre":
                self._pre = max(self._pre - 1, 0)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title_parts.append(data)
        elif self._heading is not None:
            self._heading_parts.append(data)
        else:
            self._line_has_text = self._line_has_text or not data.isspace()
            if self._pre and "\n" in data:  # <pre> keeps its line breaks
                first, *rest = data.split("\n")
                self._line.append(first)
                for piece in rest:
                    self._flush(False)
                    self._line.append(piece)
            else:
                self._line.append(data)


def extract_html(name: str, text: str, stem: str) -> Extracted:
    parser = _HTMLText()
    try:
        parser.feed(text)
        parser.close()
    except Exception as exc:  # noqa: BLE001 - html.parser is lenient, but never let it escape raw
        raise ParseError(f"{name}: not valid HTML: {short_reason(exc)}") from exc
    body, sections = parser.finish()
    title = one_line("".join(parser.title_parts)) or parser.first_h1[:TITLE_MAX] or stem
    return Extracted(title, body, sections, [], parser.tables)


# -- PDF -------------------------------------------------------------------------------

_PLACEHOLDER_TITLES = frozenset({"untitled", "untitled document", "no title", "title", "document"})


def extract_pdf(name: str, data: bytes, limits: ParseLimits, stem: str) -> Extracted:
    import pypdf  # imported lazily: only PDF ingestion pays for it

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
    except Exception as exc:  # noqa: BLE001 - pypdf raises anything on hostile input
        raise ParseError(f"{name}: not a valid PDF: {short_reason(exc)}") from exc
    if encrypted:
        try:
            ok = reader.decrypt("")
        except Exception as exc:  # noqa: BLE001 - e.g. an unsupported cipher
            raise ParseError(f"{name}: encrypted PDF ({short_reason(exc)})") from exc
        if not ok:
            raise ParseError(f"{name}: encrypted PDF (no password available)")
    try:
        n_pages = len(reader.pages)
    except Exception as exc:  # noqa: BLE001 - pypdf raises anything on hostile input
        raise ParseError(f"{name}: not a valid PDF: {short_reason(exc)}") from exc
    if n_pages > limits.max_pages:
        raise ParseError(f"{name}: {n_pages} pages, over the limit of {limits.max_pages}")

    parts: list[str] = []
    sections: list[RawSection] = []
    warnings: list[str] = []
    pos = 0
    for number in range(1, n_pages + 1):
        try:
            page_text = reader.pages[number - 1].extract_text() or ""
        except Exception as exc:  # noqa: BLE001 - one bad page does not sink the rest
            warnings.append(f"page {number}: text extraction failed ({short_reason(exc)})")
            continue
        page_text = normalise_newlines(page_text).strip()
        if not page_text:
            continue
        if parts:
            parts.append("\n\n")
            pos += 2
        parts.append(page_text)
        sections.append((pos, pos + len(page_text), (), number))
        pos += len(page_text)
        if pos > limits.max_text_chars:
            raise ParseError(f"{name}: over {limits.max_text_chars} characters of text")
    text = "".join(parts)

    title = ""
    try:
        meta = reader.metadata
        if meta is not None and meta.title:
            title = one_line(str(meta.title))
            if title.lower() in _PLACEHOLDER_TITLES:  # what generators write when none was set
                title = ""
    except Exception:  # noqa: BLE001, S110 - a broken /Info dictionary only costs the title
        pass
    if not title:
        title = one_line(text.lstrip().split("\n", 1)[0]) if text.strip() else ""
    return Extracted(title or stem, text, sections, warnings)


# -- DOCX ------------------------------------------------------------------------------


def check_zip(name: str, data: bytes, limits: ParseLimits) -> None:
    """Refuse archives that are not zips or could expand into too much memory."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except Exception as exc:  # noqa: BLE001 - BadZipFile, but also ValueError/OSError/... on odd archives
        raise ParseError(f"{name}: not a DOCX file (not a zip archive)") from exc
    if len(infos) > limits.max_zip_members:
        raise ParseError(f"{name}: zip bomb suspected: {len(infos)} members (limit {limits.max_zip_members})")
    total = 0
    for info in infos:
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_MIN_BYTES and ratio > limits.max_zip_ratio:
            raise ParseError(
                f"{name}: zip bomb suspected: member {info.filename!r} expands {ratio:.0f}x"
                f" (limit {limits.max_zip_ratio}x)"
            )
        if total > limits.max_zip_uncompressed:
            raise ParseError(
                f"{name}: zip bomb suspected: over {limits.max_zip_uncompressed} bytes uncompressed"
            )


_HEADING_STYLE = re.compile(r"heading (\d)$", re.IGNORECASE)


def _heading_level(paragraph) -> int | None:
    style = paragraph.style
    style_name = (style.name or "") if style is not None else ""
    if style_name.lower() == "title":
        return 0
    m = _HEADING_STYLE.match(style_name)
    return int(m.group(1)) if m else None


def _blocks(container, document):  # python-docx objects
    """Body paragraphs and tables in order, including those inside content controls."""
    from docx.oxml.ns import qn
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    for child in container.iterchildren():
        if child.tag == qn("w:p"):
            yield Paragraph(child, document)
        elif child.tag == qn("w:tbl"):
            yield Table(child, document)
        elif child.tag == qn("w:sdt"):  # a content control (cover page, template field...)
            content = child.find(qn("w:sdtContent"))
            if content is not None:
                yield from _blocks(content, document)


def extract_docx(name: str, data: bytes, limits: ParseLimits, stem: str) -> Extracted:
    check_zip(name, data, limits)
    import docx  # imported lazily: only DOCX ingestion pays for it
    from docx.table import Table, _Cell

    try:
        document = docx.Document(io.BytesIO(data))
        out = TextBuilder()
        first_heading = ""
        for block in _blocks(document.element.body, document):
            if isinstance(block, Table):
                out.paragraph_break()
                for row in block.rows:
                    # The row's own <w:tc> elements, not row.cells: that repeats a cell per
                    # grid column it spans (a hostile gridSpan of 2**31 would never end) and
                    # walks up vertical merges. A merged cell's text is written once.
                    cells = (_Cell(tc, block).text for tc in row._tr.tc_lst if tc.vMerge != "continue")
                    out.write(" | ".join(t for t in (one_line(c, 10**9) for c in cells) if t))
                out.paragraph_break()
                continue
            level = _heading_level(block)
            if level is None:
                out.write(normalise_newlines(block.text).strip())
            else:
                heading = one_line(block.text, 10**9)
                out.write(heading, level if heading else None)
                if heading and level <= 1 and not first_heading:
                    first_heading = heading[:TITLE_MAX]
            out.paragraph_break()
            if out.length > limits.max_text_chars:
                raise ParseError(f"{name}: over {limits.max_text_chars} characters of text")
        text, sections = out.finish()
        core_title = one_line(document.core_properties.title or "")
    except ParseError:
        raise
    except Exception as exc:  # noqa: BLE001 - python-docx raises anything on hostile input
        raise ParseError(f"{name}: not a valid DOCX: {short_reason(exc)}") from exc
    return Extracted(core_title or first_heading or stem, text, sections, [])
