"""Training and evaluation data for the specialists, read with limits and checked before use.

Classification: CSV with a header naming ``text`` and ``label`` (``category`` is accepted
for ``label``, as Banking77 names it), or JSONL rows ``{"text": ..., "label": ...}``.
Extraction: CoNLL (``token<TAB>tag`` per line, BIO tags, a blank line between sentences)
or JSONL rows ``{"text": ..., "spans": [{"start": 0, "end": 5, "type": "person"}, ...]}``.

Every problem names the file and the line. Labels and entity types must be safe inside a
grammar and a JSON schema (printable; no quote, backslash or control character). A deterministic,
stratified train/validation split (a seed) holds data out for early stopping and for the
reported figures.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import DataError  # defined with every other error class

__all__ = ["DataError", "DataLimits", "Example", "Sentence", "Span", "ClassificationData", "ExtractionData",
           "load_classification", "load_extraction", "split", "file_digest", "SAFE_LABEL"]

# printable, no quote, backslash or control character (Banking77 has "reverted_card_payment?")
SAFE_LABEL = re.compile(r'^[^\x00-\x20\x7f"\\`]([^\x00-\x1f\x7f"\\`]{0,62}[^\x00-\x20\x7f"\\`])?$')



@dataclass(frozen=True)
class DataLimits:
    max_file_bytes: int = 256 * 2**20
    max_examples: int = 1_000_000
    max_text_chars: int = 4_000
    max_labels: int = 512
    max_sentence_tokens: int = 512


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class Span:
    start: int  # character offsets into the text
    end: int
    type: str

    def as_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "type": self.type}


@dataclass(frozen=True)
class Sentence:
    text: str
    spans: tuple[Span, ...]
    tokens: tuple[str, ...] = ()  # CoNLL only: the tokens, joined by single spaces into ``text``
    tags: tuple[str, ...] = ()


@dataclass
class ClassificationData:
    examples: list[Example]
    labels: list[str] = field(default_factory=list)
    digest: str = ""

    def __post_init__(self) -> None:
        self.labels = self.labels or sorted({e.label for e in self.examples})


@dataclass
class ExtractionData:
    sentences: list[Sentence]
    types: list[str] = field(default_factory=list)
    digest: str = ""

    def __post_init__(self) -> None:
        self.types = self.types or sorted({s.type for x in self.sentences for s in x.spans})


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read(path: Path, limits: DataLimits) -> str:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from exc
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if size > limits.max_file_bytes:
        raise DataError(f"{path}: {size} bytes, over the {limits.max_file_bytes} byte limit")
    if size == 0:
        raise DataError(f"{path}: empty file: no training data")
    try:
        return path.read_bytes()[: limits.max_file_bytes].decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _label(raw: object, where: str, what: str = "label") -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise DataError(f"{where}: missing {what}")
    label = raw.strip()
    if not SAFE_LABEL.fullmatch(label):
        raise DataError(f"{where}: {what} {label[:60]!r} has characters a grammar cannot carry safely (no quotes, "
                        "backslashes or control characters; 1-64 characters, no space at either end)")
    return label


def _text(raw: object, where: str, limits: DataLimits) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise DataError(f"{where}: missing text")
    if len(raw) > limits.max_text_chars:
        raise DataError(f"{where}: text of {len(raw)} characters, over the {limits.max_text_chars} limit")
    return raw


def _json_rows(path: Path, raw: str, expected: str) -> Iterator[tuple[str, dict]]:
    """Each non-blank JSONL line as an object, with its ``file:line`` for messages."""
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with {expected}")
        yield where, row


def load_classification(path: Path, limits: DataLimits = DataLimits(), *, min_labels: int = 2) -> ClassificationData:
    """Examples from CSV (``text,label``) or JSONL; DataError on anything unusable."""
    raw = _read(path, limits)
    examples: list[Example] = []
    if path.suffix.lower() == ".jsonl":
        for where, record in _json_rows(path, raw, "text and label"):
            examples.append(Example(_text(record.get("text"), where, limits), _label(record.get("label"), where)))
            if len(examples) > limits.max_examples:
                raise DataError(f"{path}: over {limits.max_examples} examples")
    elif path.suffix.lower() == ".csv":
        reader = csv.reader(io.StringIO(raw))
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration as exc:
            raise DataError(f"{path}: empty file: no training data") from exc
        except csv.Error as exc:
            raise DataError(f"{path}:1: bad CSV: {exc}") from exc
        if "text" not in header or not ({"label", "category"} & set(header)):
            raise DataError(f"{path}:1: the header must name the columns text and label (or category), got {header}")
        ti, li = header.index("text"), header.index("label" if "label" in header else "category")
        try:
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{where}: {len(row)} columns, the header has {len(header)}")
                examples.append(Example(_text(row[ti], where, limits), _label(row[li], where)))
                if len(examples) > limits.max_examples:
                    raise DataError(f"{path}: over {limits.max_examples} examples")
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: bad CSV: {exc}") from exc
    else:
        raise DataError(f"{path}: classification data must be .csv (text,label) or .jsonl")
    if not examples:
        raise DataError(f"{path}: no examples")
    data = ClassificationData(examples, digest=file_digest(path))
    if len(data.labels) < min_labels:
        raise DataError(f"{path}: every example has the label {data.labels[0]!r}: a classifier needs at least "
                        f"{min_labels} classes")
    if len(data.labels) > limits.max_labels:
        raise DataError(f"{path}: {len(data.labels)} labels, over the {limits.max_labels} limit")
    return data


def _conll(path: Path, raw: str, limits: DataLimits) -> list[Sentence]:
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start_line = 1

    def flush() -> None:
        if tokens:
            sentences.append(_from_bio(tokens, tags, f"{path}:{start_line}"))
        tokens.clear()
        tags.clear()

    for n, line in enumerate(raw.splitlines(), 1):
        line = line.replace("\ufeff", "")  # a stray byte-order mark (WNUT17's dev file ends with one)
        if not line.strip():
            flush()
            start_line = n + 1
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise DataError(f"{path}:{n}: expected 'token<TAB>tag', got {line[:80]!r}")
        token, tag = parts[0], parts[1].strip()
        if tag != "O" and not re.match(r"^[BI]-.+$", tag):
            raise DataError(f"{path}:{n}: tag {tag[:40]!r} is not O, B-TYPE or I-TYPE")
        if tag != "O":
            _label(tag[2:], f"{path}:{n}", "entity type")
        if not tokens:
            start_line = n
        tokens.append(token)
        tags.append(tag)
        if len(tokens) > limits.max_sentence_tokens:
            raise DataError(f"{path}:{n}: a sentence of over {limits.max_sentence_tokens} tokens (a missing blank "
                            "line?)")
        if len(sentences) > limits.max_examples:
            raise DataError(f"{path}: over {limits.max_examples} sentences")
    flush()
    return sentences


def _from_bio(tokens: list[str], tags: list[str], where: str) -> Sentence:
    """Tokens joined by single spaces; each B-/I- run becomes a character span (a stray I- starts one)."""
    text_parts: list[str] = []
    offsets: list[tuple[int, int]] = []
    pos = 0
    for tok in tokens:
        offsets.append((pos, pos + len(tok)))
        text_parts.append(tok)
        pos += len(tok) + 1
    text = " ".join(text_parts)
    spans: list[Span] = []
    current: list[int] | None = None  # [start, end, type index]
    kind = ""
    for (s, e), tag in zip(offsets, tags, strict=True):
        if tag.startswith("I-") and current is not None and tag[2:] == kind:
            current[1] = e
            continue
        if current is not None:
            spans.append(Span(current[0], current[1], kind))
            current = None
        if tag != "O":
            current, kind = [s, e], tag[2:]
    if current is not None:
        spans.append(Span(current[0], current[1], kind))
    return Sentence(text, tuple(spans), tuple(tokens), tuple(tags))


def load_extraction(path: Path, limits: DataLimits = DataLimits()) -> ExtractionData:
    """Sentences with typed character spans, from CoNLL or JSONL; DataError on anything unusable."""
    raw = _read(path, limits)
    if path.suffix.lower() in (".conll", ".txt", ".bio"):
        sentences = _conll(path, raw, limits)
    elif path.suffix.lower() == ".jsonl":
        sentences = []
        for where, row in _json_rows(path, raw, "text and spans: [...]"):
            if not isinstance(row.get("spans", []), list):
                raise DataError(f"{where}: expected an object with text and spans: [...]")
            text = _text(row.get("text"), where, limits)
            spans = []
            for i, sp in enumerate(row.get("spans", [])):
                if not isinstance(sp, dict) or not all(isinstance(sp.get(k), int) for k in ("start", "end")):
                    raise DataError(f"{where}: span {i + 1} needs integer start and end")
                start, end = sp["start"], sp["end"]
                if not 0 <= start < end <= len(text):
                    raise DataError(f"{where}: span {i + 1} ({start}, {end}) is outside the text of {len(text)} "
                                    "characters")
                spans.append(Span(start, end, _label(sp.get("type"), where, "entity type")))
            sentences.append(Sentence(text, tuple(sorted(spans, key=lambda s: (s.start, s.end)))))
            if len(sentences) > limits.max_examples:
                raise DataError(f"{path}: over {limits.max_examples} sentences")
    else:
        raise DataError(f"{path}: extraction data must be .conll (token<TAB>tag) or .jsonl")
    if not sentences:
        raise DataError(f"{path}: no sentences")
    data = ExtractionData(sentences, digest=file_digest(path))
    if not data.types:
        raise DataError(f"{path}: no entity in any sentence: nothing to learn to extract")
    return data


def split(items: list, validation: float, seed: int, key: object = None) -> tuple[list, list]:
    """A deterministic train/validation split; stratified by ``key(item)`` when given."""
    if not 0 < validation < 1:
        raise DataError(f"the validation share must be between 0 and 1, got {validation}")
    rng = random.Random(seed)
    groups: dict[object, list] = defaultdict(list)
    for item in items:
        groups[key(item) if callable(key) else None].append(item)
    train, held = [], []
    for g in sorted(groups, key=str):
        members = groups[g][:]
        rng.shuffle(members)
        n_val = round(len(members) * validation) if len(members) > 1 else 0
        held += members[:n_val]
        train += members[n_val:]
    rng.shuffle(train)
    if not held or not train:
        raise DataError(f"too little data for a {validation:.0%} validation split ({len(items)} examples)")
    return train, held



def write_held_out(items: list, path: Path) -> Path:
    """The held-out split in a format the loaders read back (``eval classify|extract --data``):
    classification as CSV ``text,label``; extraction as JSONL ``{text, spans}``."""
    if items and isinstance(items[0], Example):
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows([e.text, e.label] for e in items)
        path.write_text(out.getvalue(), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps({"text": s.text, "spans": [x.as_dict() for x in s.spans]},
                                           ensure_ascii=False) + "\n" for s in items), encoding="utf-8")
    return path
