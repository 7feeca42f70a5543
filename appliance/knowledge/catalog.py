"""The document catalog: documents, chunks and the full-text index in one SQLite file.

The catalog is the source of truth. Full-text (FTS5, BM25) tables live in the same
database, one per label partition, so a document's catalog rows and its full-text rows
change in one transaction. Vectors live in Chroma; a journal table records vector
writes that are not yet matched by the catalog (``pending``) and vectors the catalog
no longer wants (``retired``), so a crash between the two stores is repaired on the
next start and readers, who resolve every hit through the catalog, never see it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from appliance.access.labels import Labels
from appliance.db import open_db
from appliance.errors import KnowledgeError
from appliance.knowledge.chunking import row_passage
from appliance.migrations import Migrations

__all__ = ["Catalog", "DocumentRow", "ChunkRow", "fts_query", "unfinished_writes"]

MIGRATIONS = Migrations("knowledge")


@MIGRATIONS
def m001_catalog(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE documents (
        doc_id TEXT PRIMARY KEY, version INTEGER NOT NULL, title TEXT, source_name TEXT, format TEXT,
        sha256 TEXT NOT NULL, level TEXT NOT NULL, compartments TEXT NOT NULL, partition TEXT NOT NULL,
        ingested_at TEXT NOT NULL, ingested_by TEXT, n_chunks INTEGER NOT NULL, chars INTEGER NOT NULL)""")
    db.execute("""CREATE TABLE chunks (
        chunk_id TEXT PRIMARY KEY, doc_id TEXT NOT NULL, version INTEGER NOT NULL, partition TEXT NOT NULL,
        ordinal INTEGER NOT NULL, text TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
        page INTEGER, heading TEXT NOT NULL)""")
    db.execute("CREATE INDEX chunks_doc ON chunks(doc_id)")
    db.execute("""CREATE TABLE partitions (
        partition TEXT PRIMARY KEY, level TEXT NOT NULL, compartments TEXT NOT NULL, fts_table TEXT NOT NULL)""")
    db.execute("""CREATE TABLE journal (
        kind TEXT NOT NULL, doc_id TEXT NOT NULL, version INTEGER NOT NULL, partition TEXT NOT NULL,
        chunk_ids TEXT NOT NULL, PRIMARY KEY (kind, doc_id, version))""")


@MIGRATIONS
def m002_collections(db: sqlite_utils.Database) -> None:
    """Documents belong to a named collection (a handbook, a research corpus, a bundle's set)."""
    db.execute("ALTER TABLE documents ADD COLUMN collection TEXT")


@MIGRATIONS
def m003_table_rows(db: sqlite_utils.Database) -> None:
    """A chunk that is a table row keeps its table's column names and its row number."""
    db.execute("ALTER TABLE chunks ADD COLUMN table_header TEXT")  # JSON list of column names, NULL for prose
    db.execute("ALTER TABLE chunks ADD COLUMN table_row INTEGER")


@dataclass(frozen=True)
class DocumentRow:
    doc_id: str
    version: int
    title: str
    source_name: str
    format: str
    sha256: str
    labels: Labels
    partition: str
    ingested_at: str
    ingested_by: str | None
    n_chunks: int
    chars: int
    collection: str | None = None

    def as_dict(self) -> dict:
        return {"collection": self.collection, "doc_id": self.doc_id, "version": self.version, "title": self.title,
                "source_name": self.source_name, "format": self.format, "sha256": self.sha256,
                "labels": str(self.labels), "partition": self.partition, "ingested_at": self.ingested_at,
                "ingested_by": self.ingested_by, "n_chunks": self.n_chunks, "chars": self.chars}


@dataclass(frozen=True)
class ChunkRow:
    chunk_id: str
    doc_id: str
    version: int
    partition: str
    ordinal: int
    text: str
    start: int
    end: int
    page: int | None
    heading: tuple[str, ...]
    header: tuple[str, ...] = ()  # a table row's column names; () for prose
    row: int | None = None  # a table row's 1-based number

    @property
    def passage(self) -> str:
        """What is indexed, shown to the model and quoted: the text, or a row with its column names."""
        return row_passage(self.header, self.text)


def chunk_id(doc_id: str, version: int, ordinal: int) -> str:
    return f"{doc_id}@{version}#{ordinal}"


_WORD = re.compile(r"\w+", re.UNICODE)
# Function words carry no evidence for BM25 and let unrelated passages match a question.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
him his how i if in into is it its itself just me more most my no nor not of off on once only or other our ours
out over own same she should so some such than that the their theirs them then there these they this those
through to too under until up very was we were what when where which while who whom why will with would you
your yours yourself
""".split())


def fts_query(text: str, max_terms: int = 64) -> str | None:
    """A safe FTS5 query: every word of ``text`` quoted, OR-ed (BM25 ranks the rest)."""
    terms: list[str] = []
    for word in _WORD.findall(text.lower()):
        if len(word) > 1 and word not in STOPWORDS and word not in terms:
            terms.append(word)
    return " OR ".join(f'"{t}"' for t in terms[:max_terms]) or None


def _doc(row: dict) -> DocumentRow:
    return DocumentRow(
        doc_id=row["doc_id"], version=row["version"], title=row["title"] or "", source_name=row["source_name"] or "",
        format=row["format"] or "", sha256=row["sha256"],
        labels=Labels(row["level"], frozenset(json.loads(row["compartments"]))), partition=row["partition"],
        ingested_at=row["ingested_at"], ingested_by=row["ingested_by"], n_chunks=row["n_chunks"], chars=row["chars"],
        collection=row.get("collection"),
    )


def _chunk(row: dict) -> ChunkRow:
    return ChunkRow(chunk_id=row["chunk_id"], doc_id=row["doc_id"], version=row["version"],
                    partition=row["partition"], ordinal=row["ordinal"], text=row["text"], start=row["start"],
                    end=row["end"], page=row["page"], heading=tuple(json.loads(row["heading"])),
                    header=tuple(json.loads(row.get("table_header") or "[]")), row=row.get("table_row"))


@dataclass(frozen=True)
class NewDocument:
    """One document version ready to be swapped in (its vectors already written)."""

    doc_id: str
    version: int
    title: str
    source_name: str
    format: str
    sha256: str
    labels: Labels
    ingested_by: str | None
    chunks: Sequence[ChunkRow]
    chars: int
    collection: str | None = None


def unfinished_writes(path: Path) -> int:
    """How many journal rows the catalog at ``path`` holds (a cheap read-only look, without migrations)."""
    if not path.is_file():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return int(conn.execute("SELECT count(*) FROM journal").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # no journal table yet: nothing was ever written
    finally:
        conn.close()


F = TypeVar("F", bound=Callable[..., Any])


def _locked(fn: F) -> F:
    @wraps(fn)
    def wrapper(self: Catalog, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Catalog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # one connection shared by the threads of this process (TUI workers): every public
        # method holds the lock, so no thread sees another's transaction half done
        self._lock = threading.RLock()
        self.db = open_db(path, MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- reads --------------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees the catalog as of one moment (SQLite WAL read transaction)."""
        with self._lock:
            if self.db.conn.in_transaction:
                yield
                return
            self.db.conn.execute("BEGIN")
            try:
                self.db.conn.execute("SELECT count(*) FROM documents").fetchone()  # pins the snapshot
                yield
            finally:
                self.db.conn.execute("COMMIT")

    @_locked
    def get(self, doc_id: str) -> DocumentRow | None:
        rows = list(self.db.query("SELECT * FROM documents WHERE doc_id = ?", [doc_id]))
        return _doc(rows[0]) if rows else None

    @_locked
    def documents(self, partitions: Iterable[str] | None = None) -> list[DocumentRow]:
        if partitions is None:
            return [_doc(r) for r in self.db.query("SELECT * FROM documents ORDER BY doc_id")]
        parts = list(partitions)
        if not parts:
            return []
        marks = ",".join("?" * len(parts))
        return [_doc(r) for r in self.db.query(
            f"SELECT * FROM documents WHERE partition IN ({marks}) ORDER BY doc_id", parts)]

    @_locked
    def documents_by_id(self, ids: Iterable[str]) -> dict[str, DocumentRow]:
        wanted = list(dict.fromkeys(ids))
        out: dict[str, DocumentRow] = {}
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            for r in self.db.query(f"SELECT * FROM documents WHERE doc_id IN ({','.join('?' * len(part))})", part):
                out[r["doc_id"]] = _doc(r)
        return out

    @_locked
    def chunks_of(self, doc_id: str) -> list[ChunkRow]:
        return [_chunk(r) for r in self.db.query("SELECT * FROM chunks WHERE doc_id = ? ORDER BY ordinal", [doc_id])]

    @_locked
    def chunks_by_id(self, ids: Sequence[str]) -> dict[str, ChunkRow]:
        out: dict[str, ChunkRow] = {}
        for start in range(0, len(ids), 500):
            part = list(ids[start : start + 500])
            marks = ",".join("?" * len(part))
            for r in self.db.query(f"SELECT * FROM chunks WHERE chunk_id IN ({marks})", part):
                out[r["chunk_id"]] = _chunk(r)
        return out

    @_locked
    def chunk_ids(self, partition: str) -> set[str]:
        return {r["chunk_id"] for r in self.db.query("SELECT chunk_id FROM chunks WHERE partition = ?", [partition])}

    @_locked
    def partitions(self) -> dict[str, Labels]:
        return {r["partition"]: Labels(r["level"], frozenset(json.loads(r["compartments"])))
                for r in self.db.query("SELECT * FROM partitions ORDER BY partition")}

    def fts_table(self, partition: str) -> str:
        return "fts_" + hashlib.sha256(partition.encode()).hexdigest()[:16]

    @_locked
    def bm25(self, partition: str, query: str, limit: int) -> list[tuple[str, float]]:
        match = fts_query(query)
        if match is None:
            return []
        table = self.fts_table(partition)
        sql = f"SELECT chunk_id, bm25({table}) AS score FROM {table} WHERE {table} MATCH ? ORDER BY score LIMIT ?"
        try:
            return [(r["chunk_id"], -float(r["score"])) for r in self.db.query(sql, [match, limit])]
        except sqlite3.OperationalError as exc:  # a partition with no table yet: nothing to find
            if "no such table" in str(exc):
                return []
            raise

    @_locked
    def fts_ids(self, partition: str) -> set[str]:
        table = self.fts_table(partition)
        if not self.db[table].exists():
            return set()
        return {r["chunk_id"] for r in self.db.query(f"SELECT chunk_id FROM {table}")}

    @_locked
    def journal(self) -> list[dict]:
        return [dict(r, chunk_ids=json.loads(r["chunk_ids"])) for r in self.db.query("SELECT * FROM journal")]

    @_locked
    def next_version(self, doc_id: str) -> int:
        """A version number ``doc_id`` has never had while its vectors may still exist: past the stored one
        and past any journalled (pending or retiring) one, so a deleted document ingested again never
        shares vector ids with its own retiring ones."""
        row = self.db.execute(
            "SELECT max(v) FROM (SELECT version AS v FROM documents WHERE doc_id = ?"
            " UNION ALL SELECT version FROM journal WHERE doc_id = ?)", [doc_id, doc_id]).fetchone()
        return int(row[0] or 0) + 1

    @_locked
    def counts(self) -> dict[str, int]:
        return {"documents": self.db["documents"].count, "chunks": self.db["chunks"].count,
                "partitions": self.db["partitions"].count}

    # -- writes -------------------------------------------------------------------------

    def _ensure_partition(self, labels: Labels) -> str:
        part = labels.partition
        table = self.fts_table(part)
        self.db.execute(
            "INSERT OR IGNORE INTO partitions (partition, level, compartments, fts_table) VALUES (?, ?, ?, ?)",
            [part, labels.level, json.dumps(sorted(labels.compartments)), table])
        self.db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING fts5("
                        "chunk_id UNINDEXED, title, text, tokenize='unicode61 remove_diacritics 2')")
        return part

    @_locked
    def record_pending(self, docs: Sequence[NewDocument]) -> None:
        """Before vectors are written: note them, so a crash can be cleaned up."""
        with self.db.atomic():
            for d in docs:
                self._ensure_partition(d.labels)
                self.db.execute(
                    "INSERT OR REPLACE INTO journal (kind, doc_id, version, partition, chunk_ids) VALUES (?,?,?,?,?)",
                    ["pending", d.doc_id, d.version, d.labels.partition, json.dumps([c.chunk_id for c in d.chunks])])

    @_locked
    def set_collection(self, doc_id: str, collection: str | None) -> None:
        with self.db.atomic():
            self.db.execute("UPDATE documents SET collection = ? WHERE doc_id = ?", [collection, doc_id])

    @_locked
    def swap_in(self, docs: Sequence[NewDocument]) -> list[dict]:
        """One transaction: new versions replace old ones; returns the retired vector sets."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        retired: list[dict] = []
        with self.db.atomic():
            for d in docs:
                part = self._ensure_partition(d.labels)
                old = self.get(d.doc_id)  # read inside the write transaction: no writer can change it now
                if old is not None and old.version >= d.version:
                    raise KnowledgeError(f"{d.doc_id!r} was stored as version {old.version} by another writer "
                                         f"while version {d.version} was prepared; nothing was changed")
                if old is not None:
                    retired.append(self._remove_rows(old))
                self.db.execute(
                    "INSERT INTO documents (doc_id, version, title, source_name, format, sha256, level, compartments,"
                    " partition, ingested_at, ingested_by, n_chunks, chars, collection)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [d.doc_id, d.version, d.title, d.source_name, d.format, d.sha256, d.labels.level,
                     json.dumps(sorted(d.labels.compartments)), part, now, d.ingested_by, len(d.chunks), d.chars,
                     d.collection])
                self.db.conn.executemany(
                    'INSERT INTO chunks (chunk_id, doc_id, version, partition, ordinal, text, start, "end", page,'
                    " heading, table_header, table_row) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(c.chunk_id, c.doc_id, c.version, part, c.ordinal, c.text, c.start, c.end, c.page,
                      json.dumps(list(c.heading)), json.dumps(list(c.header)) if c.header else None, c.row)
                     for c in d.chunks])
                self.db.conn.executemany(
                    f"INSERT INTO {self.fts_table(part)} (chunk_id, title, text) VALUES (?, ?, ?)",
                    [(c.chunk_id, " ".join([d.title, *c.heading]), c.passage) for c in d.chunks])
                self.db.execute("DELETE FROM journal WHERE kind = 'pending' AND doc_id = ? AND version = ?",
                                [d.doc_id, d.version])
        return retired

    def _remove_rows(self, old: DocumentRow) -> dict:
        ids = [r["chunk_id"] for r in self.db.query("SELECT chunk_id FROM chunks WHERE doc_id = ?", [old.doc_id])]
        table = self.fts_table(old.partition)
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            self.db.execute(f"DELETE FROM {table} WHERE chunk_id IN ({','.join('?' * len(part))})", part)
        self.db.execute("DELETE FROM chunks WHERE doc_id = ?", [old.doc_id])
        self.db.execute("DELETE FROM documents WHERE doc_id = ?", [old.doc_id])
        entry = {"kind": "retired", "doc_id": old.doc_id, "version": old.version, "partition": old.partition,
                 "chunk_ids": ids}
        self.db.execute(
            "INSERT OR REPLACE INTO journal (kind, doc_id, version, partition, chunk_ids) VALUES (?,?,?,?,?)",
            ["retired", old.doc_id, old.version, old.partition, json.dumps(ids)])
        return entry

    @_locked
    def delete(self, doc_id: str) -> dict | None:
        old = self.get(doc_id)
        if old is None:
            return None
        with self.db.atomic():
            return self._remove_rows(old)

    @_locked
    def clear_journal(self, entries: Iterable[dict]) -> None:
        with self.db.atomic():
            for e in entries:
                self.db.execute("DELETE FROM journal WHERE kind = ? AND doc_id = ? AND version = ?",
                                [e["kind"], e["doc_id"], e["version"]])

    @_locked
    def rebuild_fts(self, partition: str) -> None:
        """Rewrite one partition's full-text table from the chunks table."""
        table = self.fts_table(partition)
        with self.db.atomic():
            self.db.execute(f"DELETE FROM {table}")
            rows = self.db.query("SELECT c.*, coalesce(d.title, '') AS doc_title FROM chunks c JOIN documents d "
                                 "ON d.doc_id = c.doc_id WHERE c.partition = ?", [partition])
            self.db.conn.executemany(  # the same title and text as swap_in writes (a row with its header)
                f"INSERT INTO {table} (chunk_id, title, text) VALUES (?, ?, ?)",
                ((r["chunk_id"], " ".join([r["doc_title"], *json.loads(r["heading"])]), _chunk(r).passage)
                 for r in rows))
