"""Domain evaluation sets: the facility's own questions and labelled texts, stored locally.

A set is a named list of items, each of one kind:

- ``qa``: a question, the answers accepted (may be empty for "the documents do not say")
  and the documents that hold the answer;
- ``claim``: a claim with SUPPORT / CONTRADICT / NOT_ENOUGH_INFO and its documents;
- ``classify``: a text and its label;
- ``extract``: a text and its typed character spans.

Sets come from analysts' verdicts on answers (:func:`items_from_feedback`), from files in
the formats the eval commands read (SQuAD JSON, claims JSONL, classification CSV/JSONL,
CoNLL or span JSONL, and this module's own export), and from bundles. They are stored in
``<data dir>/evaluation.db`` with every run of them, and exported as JSONL that imports
back unchanged.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from appliance.db import open_db
from appliance.errors import ApplianceError, EvaluationError
from appliance.migrations import Migrations

__all__ = ["KINDS", "EvalItem", "EvalSet", "EvalStore", "SetLimits", "load_items", "items_from_feedback",
           "set_digest"]

KINDS = ("qa", "claim", "classify", "extract")
CLAIM_LABELS = ("SUPPORT", "CONTRADICT", "NOT_ENOUGH_INFO")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MIGRATIONS = Migrations("evaluation")


@dataclass(frozen=True)
class SetLimits:
    max_file_bytes: int = 64 * 2**20
    max_items: int = 10_000
    max_text_chars: int = 4_000
    max_answers: int = 32
    max_description_chars: int = 500


@dataclass(frozen=True)
class EvalItem:
    kind: str
    input: str  # the question, the claim, or the text to classify / extract from
    expected: dict[str, Any]
    note: str = ""  # where it came from: a file line, a trace id

    def as_dict(self) -> dict:
        return {"kind": self.kind, "input": self.input, "expected": self.expected, "note": self.note}


@dataclass(frozen=True)
class EvalSet:
    name: str
    items: tuple[EvalItem, ...]
    description: str = ""
    origin: str = ""
    created_at: str = ""
    created_by: str = ""
    digest: str = field(default="")

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            out[item.kind] = out.get(item.kind, 0) + 1
        return out


@MIGRATIONS
def m001_sets_runs(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE sets (name TEXT PRIMARY KEY, description TEXT NOT NULL, origin TEXT NOT NULL,
        created_at TEXT NOT NULL, created_by TEXT NOT NULL, digest TEXT NOT NULL, n_items INTEGER NOT NULL)""")
    db.execute("""CREATE TABLE items (set_name TEXT NOT NULL, n INTEGER NOT NULL, kind TEXT NOT NULL,
        input TEXT NOT NULL, expected TEXT NOT NULL, note TEXT NOT NULL, PRIMARY KEY (set_name, n))""")
    db.execute("""CREATE TABLE runs (id TEXT PRIMARY KEY, set_name TEXT NOT NULL, set_digest TEXT NOT NULL,
        at TEXT NOT NULL, by TEXT NOT NULL, generation TEXT, trigger TEXT NOT NULL, seconds REAL NOT NULL,
        report TEXT NOT NULL)""")
    db.execute("CREATE INDEX runs_by_set ON runs (set_name, at)")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def set_digest(items: Iterable[EvalItem]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item.as_dict(), sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


# -- checking one item ------------------------------------------------------------------


def _text(raw: object, where: str, what: str, limits: SetLimits) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise EvaluationError(f"{where}: {what} must be non-empty text")
    if len(raw) > limits.max_text_chars:
        raise EvaluationError(f"{where}: {what} is {len(raw)} characters, over the {limits.max_text_chars} limit")
    return raw


def _strings(raw: object, where: str, what: str, limits: SetLimits) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise EvaluationError(f"{where}: {what} must be a list of strings")
    if len(raw) > limits.max_answers:
        raise EvaluationError(f"{where}: {len(raw)} {what}, over the {limits.max_answers} limit")
    return [_text(x, where, what, limits) for x in raw]


def check_item(kind: object, input_: object, expected: object, where: str,
               limits: SetLimits = SetLimits(), note: str = "") -> EvalItem:
    """One item, checked: EvaluationError naming the place and the field on anything wrong."""
    if kind not in KINDS:
        raise EvaluationError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not isinstance(expected, dict):
        raise EvaluationError(f"{where}: expected must be an object")
    what = {"qa": "the question", "claim": "the claim"}.get(str(kind), "the text")
    text = _text(input_, where, what, limits)
    out: dict[str, Any]
    if kind == "qa":
        out = {"answers": _strings(expected.get("answers"), where, "answers", limits),
               "sources": _strings(expected.get("sources"), where, "sources", limits)}
        if not out["answers"] and not out["sources"] and not expected.get("unanswerable"):
            raise EvaluationError(f"{where}: a question needs answers, sources, or unanswerable: true")
        out["unanswerable"] = bool(expected.get("unanswerable")) and not out["answers"]
    elif kind == "claim":
        label = expected.get("label")
        if label not in CLAIM_LABELS:
            raise EvaluationError(f"{where}: a claim's label is one of {', '.join(CLAIM_LABELS)}, not {label!r}")
        out = {"label": label, "sources": _strings(expected.get("sources"), where, "sources", limits)}
    elif kind == "classify":
        label = expected.get("label")
        if not isinstance(label, str) or not label.strip() or len(label) > 64:
            raise EvaluationError(f"{where}: a label must be non-empty text of at most 64 characters")
        out = {"label": label}
    else:
        spans = expected.get("spans")
        if not isinstance(spans, list):
            raise EvaluationError(f"{where}: spans must be a list of {{start, end, type}}")
        checked = []
        for i, sp in enumerate(spans, 1):
            if not isinstance(sp, dict) or not all(isinstance(sp.get(k), int) for k in ("start", "end")):
                raise EvaluationError(f"{where}: span {i} needs integer start and end")
            if not 0 <= sp["start"] < sp["end"] <= len(text):
                raise EvaluationError(f"{where}: span {i} ({sp['start']}, {sp['end']}) is outside the text of "
                                      f"{len(text)} characters")
            kind_ = sp.get("type")
            if not isinstance(kind_, str) or not kind_.strip() or len(kind_) > 64:
                raise EvaluationError(f"{where}: span {i} needs a type")
            checked.append({"start": sp["start"], "end": sp["end"], "type": kind_})
        out = {"spans": sorted(checked, key=lambda s: (s["start"], s["end"]))}
    return EvalItem(str(kind), text, out, note)


# -- reading files ----------------------------------------------------------------------


def _jsonl(path: Path, limits: SetLimits) -> list[tuple[int, dict]]:
    from appliance.evaluation.retrieval import read_jsonl

    rows = []
    try:
        for n, row in read_jsonl(path, limits.max_file_bytes):
            rows.append((n, row))
            if len(rows) > limits.max_items:
                break
    except ApplianceError as exc:
        raise EvaluationError(str(exc)) from exc
    if len(rows) > limits.max_items:
        raise EvaluationError(f"{path.name}: over the {limits.max_items} item limit")
    return rows


def _from_jsonl(path: Path, limits: SetLimits) -> list[EvalItem]:
    rows = _jsonl(path, limits)
    if not rows:
        raise EvaluationError(f"{path.name}: no items")
    first = rows[0][1]
    if "kind" in first:  # this module's own export
        return [check_item(r.get("kind"), r.get("input"), r.get("expected"), f"{path.name}:{n}", limits,
                           str(r.get("note") or "")[:200]) for n, r in rows]
    if "claim" in first:  # SciFact: one row per evidence set, merged by claim id
        from appliance.evaluation.claims import load_claims

        try:
            claims = load_claims(path)
        except ApplianceError as exc:
            raise EvaluationError(str(exc)) from exc
        return [check_item("claim", c.text, {"label": c.label, "sources": sorted(c.gold_docs)},
                           f"{path.name}: claim {c.id}", limits, f"claim {c.id}") for c in claims]
    if "question" in first:
        return [check_item("qa", r.get("question"), {"answers": r.get("answers"), "sources": r.get("sources"),
                                                     "unanswerable": r.get("unanswerable")},
                           f"{path.name}:{n}", limits, f"line {n}") for n, r in rows]
    if "spans" in first:
        return _specialist_file(path, "extract", limits)
    if "label" in first:
        return _specialist_file(path, "classify", limits)
    raise EvaluationError(f"{path.name}: line {rows[0][0]} is none of the known kinds (kind/input/expected, claim, "
                          "question, text+label, text+spans)")


def _specialist_file(path: Path, kind: str, limits: SetLimits) -> list[EvalItem]:
    from appliance.specialists.data import DataLimits, load_classification, load_extraction

    data_limits = DataLimits(max_file_bytes=limits.max_file_bytes, max_examples=limits.max_items,
                             max_text_chars=limits.max_text_chars)
    try:
        if kind == "classify":
            data = load_classification(path, data_limits, min_labels=1)
            return [check_item("classify", e.text, {"label": e.label}, f"{path.name}: example {i}", limits,
                               f"example {i}") for i, e in enumerate(data.examples, 1)]
        extraction = load_extraction(path, data_limits)
    except ApplianceError as exc:
        raise EvaluationError(str(exc)) from exc
    return [check_item("extract", s.text, {"spans": [sp.as_dict() for sp in s.spans]}, f"{path.name}: sentence {i}",
                       limits, f"sentence {i}") for i, s in enumerate(extraction.sentences, 1)]


def load_items(path: Path, limits: SetLimits = SetLimits()) -> list[EvalItem]:
    """Items from a file, by its format; EvaluationError naming the file and line on anything unusable."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot read ({exc.strerror})") from exc
    if size > limits.max_file_bytes:
        raise EvaluationError(f"{path.name}: {size} bytes, over the {limits.max_file_bytes} byte limit")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            from appliance.evaluation.qa import load_squad

            try:
                _, questions = load_squad(path)
            except ApplianceError as exc:
                raise EvaluationError(str(exc)) from exc
            items = [check_item("qa", q.question, {"answers": list(dict.fromkeys(q.answers)), "sources": [q.doc_id],
                                                   "unanswerable": q.impossible},
                                f"{path.name}: question {q.id}", limits, f"squad {q.id}") for q in questions]
        elif suffix == ".jsonl":
            items = _from_jsonl(path, limits)
        elif suffix == ".csv":
            items = _specialist_file(path, "classify", limits)
        elif suffix in (".conll", ".bio", ".txt"):
            items = _specialist_file(path, "extract", limits)
        else:
            raise EvaluationError(f"{path.name}: an evaluation set is .json (SQuAD), .jsonl, .csv or .conll")
    except UnicodeDecodeError as exc:
        raise EvaluationError(f"{path.name}: not UTF-8 text") from exc
    if not items:
        raise EvaluationError(f"{path.name}: no items")
    if len(items) > limits.max_items:
        raise EvaluationError(f"{path.name}: {len(items)} items, over the {limits.max_items} limit")
    return items


def items_from_feedback(rows: Iterable[dict], limits: SetLimits = SetLimits()) -> tuple[list[EvalItem], list[str]]:
    """Analysts' verdicts as questions: an answer marked right is expected again (with the documents it
    cited); one marked wrong with the correct answer (or source) given expects that. Returns the items
    and why the others were left out."""
    items: list[EvalItem] = []
    skipped: list[str] = []
    latest: dict[str, dict] = {}
    for row in rows:  # several analysts on the same question: the latest verdict counts
        latest[" ".join(str(row["question"]).lower().split())] = row
    for row in latest.values():
        where = f"trace {row['trace_id']}"
        sources = [s for s in json.loads(row.get("cited_docs") or "[]") if isinstance(s, str)]
        if row["verdict"] == "right":
            if row.get("outcome") == "abstained":
                expected = {"answers": [], "sources": [], "unanswerable": True}
            else:
                expected = {"answers": [row["answer"]], "sources": sources}
        elif row.get("correct_answer") or row.get("correct_source"):
            expected = {"answers": [row["correct_answer"]] if row.get("correct_answer") else [],
                        "sources": [row["correct_source"]] if row.get("correct_source") else []}
        else:
            skipped.append(f"{where}: marked wrong with no correct answer or source")
            continue
        try:
            items.append(check_item("qa", row["question"], expected, where, limits, where))
        except EvaluationError as exc:
            skipped.append(str(exc))
    return items, skipped


# -- the store --------------------------------------------------------------------------


class EvalStore:
    """Sets and their runs in SQLite; a set is replaced whole or not at all."""

    def __init__(self, path: Path, limits: SetLimits = SetLimits()) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        self._lock = threading.RLock()
        self.db = open_db(path, MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def save(self, name: str, items: list[EvalItem], *, by: str, origin: str, description: str = "",
             replace: bool = False) -> EvalSet:
        if not NAME.match(name):
            raise EvaluationError(f"set name {name!r}: use 1-64 of a-z 0-9 . _ - (starting with a letter or digit)")
        if not items:
            raise EvaluationError(f"set {name!r}: no items")
        if len(items) > self.limits.max_items:
            raise EvaluationError(f"set {name!r}: {len(items)} items, over the {self.limits.max_items} limit")
        if len(description) > self.limits.max_description_chars:
            raise EvaluationError(f"set {name!r}: the description is over {self.limits.max_description_chars} "
                                  "characters")
        digest = set_digest(items)
        at = _now()
        with self._lock, self.db.atomic():
            exists = self.db.execute("SELECT 1 FROM sets WHERE name = ?", [name]).fetchone()
            if exists and not replace:
                raise EvaluationError(f"set {name!r} exists (replace it with --replace)")
            self.db.execute("DELETE FROM items WHERE set_name = ?", [name])
            self.db.execute("INSERT OR REPLACE INTO sets VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [name, description, origin, at, by, digest, len(items)])
            self.db.table("items").insert_all(
                {"set_name": name, "n": i, "kind": it.kind, "input": it.input,
                 "expected": json.dumps(it.expected, ensure_ascii=False), "note": it.note}
                for i, it in enumerate(items))
        return EvalSet(name, tuple(items), description, origin, at, by, digest)

    def get(self, name: str) -> EvalSet:
        with self._lock:
            row = self.db.execute("SELECT description, origin, created_at, created_by, digest FROM sets "
                                  "WHERE name = ?", [name]).fetchone()
            if row is None:
                known = ", ".join(s["name"] for s in self.list()) or "none"
                raise EvaluationError(f"no evaluation set {name!r} (sets: {known})")
            items = tuple(EvalItem(r["kind"], r["input"], json.loads(r["expected"]), r["note"]) for r in self.db.query(
                "SELECT kind, input, expected, note FROM items WHERE set_name = ? ORDER BY n", [name]))
        return EvalSet(name, items, *row)

    def list(self) -> list[dict]:
        with self._lock:
            sets = list(self.db.query("SELECT * FROM sets ORDER BY name"))
            for s in sets:
                s["kinds"] = {r["kind"]: r["c"] for r in self.db.query(
                    "SELECT kind, COUNT(*) AS c FROM items WHERE set_name = ? GROUP BY kind", [s["name"]])}
                last = self.last_run(s["name"])
                s["last_run"] = last["at"] if last else None
        return sets

    def delete(self, name: str) -> None:
        self.get(name)
        with self._lock, self.db.atomic():
            self.db.execute("DELETE FROM items WHERE set_name = ?", [name])
            self.db.execute("DELETE FROM sets WHERE name = ?", [name])

    def export(self, name: str, out: Path) -> int:
        """The set as JSONL (one item per line), written whole or not at all."""
        s = self.get(name)
        tmp = out.with_name(out.name + ".part")
        with open(tmp, "w", encoding="utf-8") as fh:
            for item in s.items:
                fh.write(json.dumps(item.as_dict(), ensure_ascii=False) + "\n")
        tmp.replace(out)
        return len(s.items)

    # -- runs ---------------------------------------------------------------------------

    def add_run(self, run_id: str, set_name: str, set_digest_: str, *, by: str, generation: str | None,
                trigger: str, seconds: float, report: dict, at: str | None = None) -> None:
        with self._lock, self.db.atomic():
            self.db.table("runs").insert({"id": run_id, "set_name": set_name, "set_digest": set_digest_,
                                          "at": at or _now(), "by": by, "generation": generation,
                                          "trigger": trigger, "seconds": seconds,
                                          "report": json.dumps(report, ensure_ascii=False)})

    def runs(self, set_name: str | None = None, limit: int = 50) -> builtins.list[dict]:
        with self._lock:
            sql = "SELECT * FROM runs" + (" WHERE set_name = ?" if set_name else "") + " ORDER BY at DESC LIMIT ?"
            rows = list(self.db.query(sql, [set_name, limit] if set_name else [limit]))
        for r in rows:
            r["report"] = json.loads(r["report"])
        return rows

    def run(self, run_id: str) -> dict:
        with self._lock:
            rows = list(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
        if not rows:
            raise EvaluationError(f"no evaluation run {run_id!r} (see `appliance eval runs`)")
        rows[0]["report"] = json.loads(rows[0]["report"])
        return rows[0]

    def last_run(self, set_name: str, *, generation: str | None = None, digest: str | None = None) -> dict | None:
        with self._lock:
            sql, args = "SELECT * FROM runs WHERE set_name = ?", [set_name]
            if generation is not None:
                sql, args = sql + " AND generation = ?", [*args, generation]
            if digest is not None:
                sql, args = sql + " AND set_digest = ?", [*args, digest]
            row = self.db.execute(sql + " ORDER BY at DESC LIMIT 1", args).fetchone()
            if row is None:
                return None
            cols = [d[0] for d in self.db.execute(sql + " LIMIT 0", args).description]
        out = dict(zip(cols, row, strict=True))
        out["report"] = json.loads(out["report"])
        return out
