"""Turn a facility's files into plain text with sections that citations can point at.

:func:`parse_file` / :func:`parse_bytes` return one :class:`ParsedDocument` per document
(a JSONL or corpus-style CSV file holds many). ``ParsedDocument.text`` is the text the
rest of the appliance indexes and cites; every :class:`Section` is a ``[start, end)``
span of it carrying the heading path and, for PDFs, the 1-based page. For plain text
and Markdown the text *is* the file's text (newlines normalised to ``"\\n"``), so
offsets point at what the user wrote.

Inputs are hostile until proven otherwise: sizes are checked before reading, DOCX
archives are inspected for zip bombs before python-docx opens them, and every failure
(including any exception out of pypdf or python-docx) becomes a
:class:`~appliance.errors.ParseError` with one line naming the file and the reason.
HTML, PDF and DOCX extraction live in :mod:`appliance.knowledge.formats`.
"""

from __future__ import annotations

import csv
import io
import json
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from appliance.errors import ParseError
from appliance.knowledge.formats import (
    TITLE_MAX,
    RawSection,
    extract_docx,
    extract_html,
    extract_pdf,
    normalise_newlines,
    one_line,
    push_heading,
    short_reason,
)

__all__ = ["SUPPORTED", "ParseLimits", "ParsedDocument", "Section", "Table", "parse_bytes", "parse_file",
           "row_cells"]


@dataclass(frozen=True)
class Section:
    """A ``[start, end)`` span of :attr:`ParsedDocument.text`, trimmed of whitespace."""

    start: int
    end: int
    heading_path: tuple[str, ...]  # e.g. ("Procedures", "Media handling"); () when none
    page: int | None  # 1-based PDF page, else None


@dataclass(frozen=True)
class Table:
    """A table in :attr:`ParsedDocument.text`: its column names and the span of each data row.

    ``[start, end)`` covers the whole table (header and delimiter lines too); each row span
    is one line of the text, so a row can be cited and quoted on its own, and the chunker
    gives every row its header.
    """

    start: int
    end: int
    header: tuple[str, ...]
    rows: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ParsedDocument:
    source_name: str  # file name (no directories)
    doc_id: str | None  # a record's id (JSONL/CSV corpora; "<file>#<line>" if it has none), else None
    title: str
    text: str
    sections: tuple[Section, ...]  # in order, non-overlapping, inside [0, len(text)]
    format: str  # txt md html pdf docx csv jsonl
    warnings: tuple[str, ...] = field(default=())
    tables: tuple[Table, ...] = field(default=())  # Markdown and HTML tables, in order


@dataclass(frozen=True)
class ParseLimits:
    """Upper bounds; exceeding one raises ParseError."""

    max_file_bytes: int = 64 * 2**20
    max_pages: int = 2_000
    max_text_chars: int = 5_000_000
    max_records: int = 200_000
    max_zip_members: int = 10_000
    max_zip_uncompressed: int = 256 * 2**20
    max_zip_ratio: int = 200  # uncompressed/compressed for any one member


_FORMATS = {
    ".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".html": "html",
    ".htm": "html", ".pdf": "pdf", ".docx": "docx", ".csv": "csv", ".jsonl": "jsonl",
}
SUPPORTED = frozenset(_FORMATS)


def parse_file(path: Path, limits: ParseLimits = ParseLimits()) -> list[ParsedDocument]:
    """Parse one file; its size is checked with ``stat()`` before a byte is read."""
    path = Path(path)
    label = _label(path.name)
    _format_of(path.name)
    try:
        st = path.stat()
    except OSError as exc:
        raise ParseError(f"{label}: cannot read: {exc.strerror or short_reason(exc)}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ParseError(f"{label}: not a regular file")
    if st.st_size > limits.max_file_bytes:
        raise ParseError(f"{label}: file is {st.st_size} bytes, over the limit of {limits.max_file_bytes}")
    try:
        with path.open("rb") as f:
            data = f.read(limits.max_file_bytes + 1)  # bounded even if the file grew
    except OSError as exc:
        raise ParseError(f"{label}: cannot read: {exc.strerror or short_reason(exc)}") from exc
    return parse_bytes(path.name, data, limits)


def parse_bytes(name: str, data: bytes, limits: ParseLimits = ParseLimits()) -> list[ParsedDocument]:
    """Parse the bytes of a file called ``name`` (its extension picks the format)."""
    source = PurePosixPath(name).name
    label = _label(source)
    fmt = _format_of(source)
    stem = PurePosixPath(source).stem or source
    if len(data) > limits.max_file_bytes:
        raise ParseError(f"{label}: file is {len(data)} bytes, over the limit of {limits.max_file_bytes}")
    if not data:
        raise ParseError(f"{label}: empty file")

    if fmt == "pdf":
        ex = extract_pdf(label, data, limits, stem)
        docs = [_document(label, source, None, ex.title, ex.text, ex.sections, fmt, ex.warnings)]
    elif fmt == "docx":
        ex = extract_docx(label, data, limits, stem)
        docs = [_document(label, source, None, ex.title, ex.text, ex.sections, fmt, ex.warnings)]
    else:
        text, warnings = _decode(label, data)
        if fmt == "csv":
            docs = _parse_csv(label, source, stem, text, warnings, limits)
        elif fmt == "jsonl":
            docs = _parse_jsonl(label, source, text, warnings, limits)
        else:
            tables: list[Table] = []
            if fmt == "html":
                ex = extract_html(label, text, stem)
                title, text, sections = ex.title, ex.text, ex.sections
                tables = [Table(*t) for t in ex.tables]
            elif fmt == "md":
                title, sections = _markdown_sections(text, stem)
                tables = _markdown_tables(text)
            else:
                title, sections = _first_line(text) or stem, [(0, len(text), (), None)]
            docs = [_document(label, source, None, title, text, sections, fmt, warnings, tables)]

    # per document: a corpus file of many records is bounded by max_file_bytes instead
    for d in docs:
        if len(d.text) > limits.max_text_chars:
            which = f" record {d.doc_id!r}" if d.doc_id else ""
            raise ParseError(f"{label}:{which} {len(d.text)} characters of text, over the limit of "
                             f"{limits.max_text_chars}")
    return docs


# -- helpers ---------------------------------------------------------------------------


def _label(name: str) -> str:
    """The file name as shown in a message: control characters cannot break the line."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", name) or "<unnamed>"


def _format_of(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in _FORMATS:
        kind = f"'{suffix}'" if suffix else "without an extension"
        raise ParseError(
            f"{_label(name)}: unsupported file type {kind} (supported: {', '.join(sorted(SUPPORTED))})"
        )
    return _FORMATS[suffix]


def _first_line(text: str) -> str:
    for line in text.split("\n"):
        if line.strip():
            return one_line(line, TITLE_MAX)
    return ""


def _document(
    label: str, source: str, doc_id: str | None, title: str, text: str,
    raw: list[RawSection], fmt: str, warnings: list[str], tables: list[Table] | None = None,
) -> ParsedDocument:
    """Trim sections to their non-blank text, drop empty ones, check the invariants."""
    if not text.strip():
        raise ParseError(f"{label}: no text")
    sections: list[Section] = []
    for start, end, path, page in raw:
        chunk = text[start:end]
        a = start + (len(chunk) - len(chunk.lstrip()))
        b = end - (len(chunk) - len(chunk.rstrip()))
        if a < b:
            if not (0 <= a < b <= len(text)) or (sections and a < sections[-1].end):
                raise AssertionError(f"{label}: section ({a}, {b}) out of order or bounds")
            sections.append(Section(a, b, tuple(path), page))
    if not sections:
        raise ParseError(f"{label}: no text")
    kept = []
    for t in tables or []:  # a table lies inside one section (a heading never sits inside a table)
        if t.rows and any(sec.start <= t.rows[0][0] and t.rows[-1][1] <= sec.end for sec in sections):
            kept.append(t)
    return ParsedDocument(source, doc_id, title or source, text, tuple(sections), fmt, tuple(warnings), tuple(kept))


_CONTROL = bytes(b for b in range(256) if b in (*range(9), 11, *range(14, 32), 127))
_NOT_CONTROL = bytes(b for b in range(256) if b not in _CONTROL)


def _decode(label: str, data: bytes) -> tuple[str, list[str]]:
    """UTF-8 (BOM stripped); failing that, line by line UTF-8, else cp1252, else latin-1."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a BOM (Windows "Unicode")
        try:
            return normalise_newlines(data.decode("utf-16")), []
        except UnicodeDecodeError as exc:
            raise ParseError(f"{label}: invalid UTF-16 text") from exc
    head = data[:8192]
    if b"\0" in head or len(head.translate(None, _NOT_CONTROL)) > 0.3 * len(head):
        raise ParseError(f"{label}: binary data, not text")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return normalise_newlines(data.decode("utf-8")), []
    except UnicodeDecodeError:
        pass
    lines, n_cp1252, n_latin1 = [], 0, 0
    for raw in data.splitlines(keepends=True):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            try:
                lines.append(raw.decode("cp1252"))
                n_cp1252 += 1
            except UnicodeDecodeError:
                lines.append(raw.decode("latin-1"))
                n_latin1 += 1
    warnings = [
        f"{n} {'line was' if n == 1 else 'lines were'} not UTF-8 (decoded as {codec})"
        for n, codec in ((n_cp1252, "cp1252"), (n_latin1, "latin-1"))
        if n
    ]
    return normalise_newlines("".join(lines)), warnings


# -- Markdown --------------------------------------------------------------------------

_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_NOT_PARAGRAPH = re.compile(r" {4}|\t| {0,3}([-+*>|]|\d+[.)])(\s|$)")


def _markdown_sections(text: str, stem: str) -> tuple[str, list[RawSection]]:
    """ATX and simple setext headings (outside code fences) open sections."""
    headings: list[tuple[int, int, str]] = []  # (offset of the heading's first line, level, title)
    fence = ""
    pos = 0
    last_kind = "blank"  # previous line: "blank", "para" or "other"
    last_line: tuple[int, str] = (0, "")
    last_starts_paragraph = False
    for line in text.split("\n"):
        start, pos = pos, pos + len(line) + 1
        kind = "other"
        stripped = line.strip()
        if fence:
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = ""
        elif m := _FENCE.match(line):
            fence = m.group(1)
        elif m := _ATX.match(line):
            headings.append((start, len(m.group(1)), one_line(m.group(2) or "", 10**9)))
        elif m := _SETEXT.match(line):
            if last_kind == "para" and last_starts_paragraph:  # a one-line paragraph, underlined
                headings.append((last_line[0], 1 if m.group(1)[0] == "=" else 2, one_line(last_line[1], 10**9)))
        elif not stripped:
            kind = "blank"
        elif not _NOT_PARAGRAPH.match(line):
            kind = "para"
            last_starts_paragraph = last_kind != "para"
        last_kind, last_line = kind, (start, line)
    sections: list[RawSection] = []
    stack: list[tuple[int, str]] = []
    cut, path = 0, tuple[str, ...]()
    title = ""
    for offset, level, heading in headings:
        if not heading:
            continue
        sections.append((cut, offset, path, None))
        cut, path = offset, push_heading(stack, level, heading)
        if level == 1 and not title:
            title = heading[:TITLE_MAX]
    sections.append((cut, len(text), path, None))
    return title or stem, sections


# -- Markdown tables -------------------------------------------------------------------

_DELIMITER = re.compile(r" {0,3}\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def row_cells(line: str) -> list[str]:
    """The cells of a table row line: ``| a | b |``, ``a | b`` (HTML rows as extracted), ``\\|`` kept."""
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    return [one_line(c.replace("\\|", "|"), 10**9) for c in _CELL_SPLIT.split(s)]


def _markdown_tables(text: str) -> list[Table]:
    """GitHub-style pipe tables: a header line, a delimiter line (``|---|:--:|``), then rows
    until a blank line or a line without a pipe. Tables inside code fences are code."""
    lines: list[tuple[int, str]] = []
    pos = 0
    for line in text.split("\n"):
        lines.append((pos, line))
        pos += len(line) + 1
    tables: list[Table] = []
    fence = ""
    i = 0
    while i < len(lines):
        start, line = lines[i]
        stripped = line.strip()
        if fence:
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = ""
            i += 1
            continue
        if m := _FENCE.match(line):
            fence = m.group(1)
            i += 1
            continue
        if "|" in line and i + 1 < len(lines) and _DELIMITER.match(lines[i + 1][1]):
            header = tuple(row_cells(line))
            if len(row_cells(lines[i + 1][1])) == len(header):
                rows = []
                j = i + 2
                while j < len(lines) and lines[j][1].strip() and "|" in lines[j][1]:
                    a, raw = lines[j]
                    lead = len(raw) - len(raw.lstrip())
                    rows.append((a + lead, a + len(raw.rstrip())))
                    j += 1
                if rows:
                    tables.append(Table(start, rows[-1][1], header, tuple(rows)))
                i = j
                continue
        i += 1
    return tables


# -- CSV -------------------------------------------------------------------------------


def _parse_csv(
    label: str, source: str, stem: str, text: str, warnings: list[str], limits: ParseLimits
) -> list[ParsedDocument]:
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []  # (line where the record starts, cells)
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, limits.max_text_chars))
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        while True:
            line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise ParseError(f"{label}: malformed CSV at line {line}: {short_reason(exc)}") from exc
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = row
            elif len(rows) >= limits.max_records:
                raise ParseError(f"{label}: more than {limits.max_records} rows")
            else:
                rows.append((line, row))
    finally:
        csv.field_size_limit(old_limit)
    if header is None:
        raise ParseError(f"{label}: no text")
    names = [one_line(h, 10**9) or f"column {i + 1}" for i, h in enumerate(header)]
    lower = [n.lower() for n in names]

    def column(*wanted: str) -> int | None:
        return next((lower.index(w) for w in wanted if w in lower), None)

    text_col = column("text")
    if text_col is None:  # a table: one document, one line and section per row
        parts: list[str] = []
        sections: list[RawSection] = []
        pos = 0
        for number, (_, row) in enumerate(rows, 1):
            rendered = "; ".join(
                f"{names[i] if i < len(names) else f'column {i + 1}'}: {one_line(v, 10**9)}"
                for i, v in enumerate(row)
                if v.strip()
            )
            if parts:
                parts.append("\n")
                pos += 1
            parts.append(rendered)
            sections.append((pos, pos + len(rendered), (f"row {number}",), None))
            pos += len(rendered)
        return [_document(label, source, None, stem, "".join(parts), sections, "csv", warnings)]

    id_col, title_col = column("doc_id", "id"), column("title")
    docs = []
    for line, row in rows:
        body, raw_id, raw_title = (
            row[i] if i is not None and i < len(row) else "" for i in (text_col, id_col, title_col)
        )
        if not body.strip():
            raise ParseError(f"{label}: line {line}: empty text")
        doc_id = raw_id.strip() or f"{source}#{line}"  # records need an id: fall back to the line
        title = one_line(raw_title) or _first_line(body) or doc_id or stem
        docs.append(_document(label, source, doc_id, title, body, [(0, len(body), (), None)], "csv", warnings))
    if not docs:
        raise ParseError(f"{label}: no text")
    return docs


# -- JSONL -----------------------------------------------------------------------------


def _parse_jsonl(
    label: str, source: str, text: str, warnings: list[str], limits: ParseLimits
) -> list[ParsedDocument]:
    docs: list[ParsedDocument] = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if len(docs) >= limits.max_records:
            raise ParseError(f"{label}: more than {limits.max_records} records")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ParseError(f"{label}: line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"{label}: line {number}: not valid JSON ({short_reason(exc)})") from exc
        if not isinstance(record, dict):
            raise ParseError(f"{label}: line {number}: not a JSON object")
        body = record.get("text")
        if body is None and isinstance(record.get("sentences"), list):
            sentences = record["sentences"]
            if all(isinstance(s, str) for s in sentences):
                body = " ".join(s.strip() for s in sentences if s.strip())
        if not isinstance(body, str) or not body.strip():
            raise ParseError(f"{label}: line {number}: no text (need a 'text' string or 'sentences' list)")
        body = normalise_newlines(body)
        raw_id = record.get("doc_id", record.get("id"))
        doc_id = str(raw_id).strip() if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else ""
        doc_id = doc_id or f"{source}#{number}"  # records need an id: fall back to the line
        raw_title = record.get("title")
        title = (one_line(raw_title) if isinstance(raw_title, str) else "") or _first_line(body)
        docs.append(_document(label, source, doc_id, title, body, [(0, len(body), (), None)], "jsonl", warnings))
    if not docs:
        raise ParseError(f"{label}: no text")
    return docs
