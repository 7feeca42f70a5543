"""The knowledge base: ingest, replace and delete documents across catalog, FTS and Chroma.

Order of a write (any number of documents at once):

1. parse and chunk (nothing stored yet); a document whose digest is unchanged is skipped;
2. embed every new chunk through the runtime engine;
3. journal the vector ids as ``pending`` in the catalog;
4. write the vectors to the partition's Chroma collection (new ids: ``doc@version#n``);
5. one catalog transaction: documents, chunks and full-text rows of the new version
   replace the old, old vector ids are journalled as ``retired``, ``pending`` cleared;
6. delete the retired vectors from Chroma and clear the journal.

Readers resolve every hit through the catalog, so they see the old version until step 5
commits and the new one after, never both or neither. A crash anywhere leaves journal
rows that :meth:`KnowledgeBase.recover` finishes.

Writers of one data directory take its writer lock (:mod:`appliance.locks`) through
:meth:`KnowledgeBase.writing`, which first recovers what a dead writer left: while the
lock is held no other process can have a write in flight, so every ``pending`` journal
row is a crashed one. Opening a knowledge base only reads; it never recovers.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from appliance.access.labels import Labels, LevelScale
from appliance.config import KnowledgeSettings
from appliance.errors import ApplianceError, KnowledgeError
from appliance.knowledge.catalog import Catalog, ChunkRow, DocumentRow, NewDocument, chunk_id
from appliance.knowledge.chunking import chunk_document
from appliance.knowledge.parsers import ParsedDocument, ParseLimits, parse_file
from appliance.locks import DEFAULT_WAIT_S, WriterLock
from appliance.runtime.vector_index import VectorIndex

__all__ = ["KnowledgeBase", "IngestReport", "FileOutcome"]

COLLECTION = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_DOC_ID = 256
Embedder = Callable[[Sequence[str]], list[list[float]]]


@dataclass
class FileOutcome:
    source: str
    status: str  # added | replaced | unchanged | failed
    doc_ids: list[str] = field(default_factory=list)
    reason: str = ""
    chunks: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class IngestReport:
    outcomes: list[FileOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def chunks(self) -> int:
        return sum(o.chunks for o in self.outcomes)

    def as_dict(self) -> dict:
        return {"added": self.count("added"), "replaced": self.count("replaced"),
                "unchanged": self.count("unchanged"), "failed": self.count("failed"), "chunks": self.chunks,
                "outcomes": [o.__dict__ for o in self.outcomes]}


def embedding_text(title: str, heading: Sequence[str], text: str) -> str:
    """What the embedder sees for a chunk: its document title and headings give context."""
    return "\n".join(part for part in (title, " > ".join(heading), text) if part)


def digest(doc: ParsedDocument, labels: Labels) -> str:
    h = hashlib.sha256()
    for part in (doc.title, doc.text, str(labels)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


class KnowledgeBase:
    def __init__(self, root: Path, embed: Embedder, *, scale: LevelScale, settings: KnowledgeSettings,
                 writer: WriterLock | None = None) -> None:
        """Open ``root`` for reading. ``writer`` is the data directory's writer lock, which every write must
        hold (:meth:`writing`); None for a private knowledge base no other process opens (an evaluation's
        scratch copy, a test)."""
        self.root = root
        self.catalog = Catalog(root / "catalog.db")
        self.vectors = VectorIndex(root / "chroma")
        self.embed = embed
        self.scale = scale
        self.settings = settings
        self.writer = writer
        self._retiring: list[tuple[float, dict]] = []

    @contextmanager
    def writing(self, what: str, wait_s: float = DEFAULT_WAIT_S) -> Iterator[KnowledgeBase]:
        """Hold the writer lock for ``what`` (BusyError after ``wait_s``), after finishing what a dead writer
        left; every ingest, delete and repair runs inside."""
        if self.writer is None:  # private: no other process has a write in flight
            self.recover()
            yield self
            return
        with self.writer.hold(what, wait_s):
            self.recover()
            yield self

    def _must_write(self) -> None:
        if self.writer is not None and not self.writer.held():
            raise KnowledgeError("the knowledge base is open for reading only: writes go through writing(), "
                                 "which holds the data directory's writer lock")

    def close(self) -> None:
        """Release the catalog's connection and Chroma's client (the object is not used after)."""
        self.catalog.close()
        self.vectors.close()

    @property
    def parse_limits(self) -> ParseLimits:
        s = self.settings
        return ParseLimits(max_file_bytes=s.max_file_bytes, max_pages=s.max_pages, max_text_chars=s.max_text_chars)

    # -- recovery -----------------------------------------------------------------------

    def recover(self) -> int:
        """Finish or undo vector writes a crash left behind; returns how many were fixed. Only under the
        writer lock: another process's write in flight has ``pending`` rows too."""
        self._must_write()
        self._retiring = []
        entries = self.catalog.journal()
        for e in entries:
            if e["chunk_ids"]:
                self.vectors.delete(e["partition"], e["chunk_ids"])
        self.catalog.clear_journal(entries)
        return len(entries)

    # -- ingest -------------------------------------------------------------------------

    def ingest_files(self, paths: Iterable[Path], labels: Labels, *, by: str | None = None,
                     progress: Callable[[str, int], None] | None = None,
                     collection: str | None = None,
                     may_replace: Callable[[DocumentRow], bool] | None = None) -> IngestReport:
        """Parse and ingest files; a bad file is reported and the rest go on."""
        self._must_write()
        report = IngestReport()
        for path in paths:
            try:
                docs = parse_file(path, self.parse_limits)
            except ApplianceError as exc:
                report.outcomes.append(FileOutcome(source=path.name, status="failed", reason=str(exc)))
                if progress:
                    progress(path.name, 0)
                continue
            self.ingest_documents(docs, labels, by=by, report=report, source=path.name, progress=progress,
                                  collection=collection, may_replace=may_replace)
        return report

    def ingest_documents(self, docs: Sequence[ParsedDocument], labels: Labels, *, by: str | None = None,
                         report: IngestReport | None = None, source: str | None = None,
                         progress: Callable[[str, int], None] | None = None, batch_docs: int = 64,
                         collection: str | None = None,
                         may_replace: Callable[[DocumentRow], bool] | None = None) -> IngestReport:
        if collection is not None and not COLLECTION.match(collection):
            raise KnowledgeError(f"bad collection name {collection[:70]!r}: 1-63 of a-z 0-9 . _ -, starting with a "
                                 "letter or digit")
        self._must_write()
        report = report if report is not None else IngestReport()
        seen: set[str] = set()
        for start in range(0, len(docs), batch_docs):
            batch: list[tuple[FileOutcome, NewDocument, list[str]]] = []
            for doc in docs[start : start + batch_docs]:
                outcome = FileOutcome(source=source or doc.source_name, status="failed", warnings=list(doc.warnings))
                report.outcomes.append(outcome)
                try:
                    prepared = self._prepare(doc, labels, by, seen, collection, may_replace)
                except KnowledgeError as exc:
                    outcome.reason = str(exc)
                    continue
                if prepared is None:
                    outcome.status = "unchanged"
                    outcome.doc_ids = [self._doc_id(doc)]
                    old = self.catalog.get(outcome.doc_ids[0])
                    if collection is not None and old is not None and old.collection != collection:
                        self.catalog.set_collection(old.doc_id, collection)
                    continue
                new, texts = prepared
                outcome.doc_ids = [new.doc_id]
                outcome.chunks = len(new.chunks)
                outcome.status = "replaced" if new.version > 1 else "added"
                batch.append((outcome, new, texts))
            if batch:
                try:
                    self._write([b[1] for b in batch], [t for b in batch for t in b[2]])
                except ApplianceError as exc:
                    for outcome, _, _ in batch:
                        outcome.status, outcome.reason, outcome.chunks = "failed", str(exc), 0
                    self.recover()
            if progress:
                progress(source or "documents", sum(len(b[1].chunks) for b in batch))
        return report

    @staticmethod
    def _doc_id(doc: ParsedDocument) -> str:
        return doc.doc_id if doc.doc_id else doc.source_name

    def _prepare(self, doc: ParsedDocument, labels: Labels, by: str | None, seen: set[str],
                 collection: str | None = None, may_replace: Callable[[DocumentRow], bool] | None = None,
                 ) -> tuple[NewDocument, list[str]] | None:
        doc_id = self._doc_id(doc)
        if not doc_id or len(doc_id) > MAX_DOC_ID or any(ord(c) < 32 for c in doc_id):
            raise KnowledgeError(f"{doc.source_name}: bad document id {doc_id[:40]!r}")
        if doc_id in seen:
            raise KnowledgeError(f"{doc.source_name}: document id {doc_id!r} appears twice in this ingest")
        seen.add(doc_id)
        sha = digest(doc, labels)
        old = self.catalog.get(doc_id)
        if old is not None and may_replace is not None and not may_replace(old):
            raise KnowledgeError(f"{doc.source_name}: document id {doc_id!r} cannot be used")
        if old is not None and old.sha256 == sha:
            return None
        version = self.catalog.next_version(doc_id)  # never one whose vectors may still be retiring
        s = self.settings
        pieces = chunk_document(doc, target_chars=s.chunk_chars, max_chars=s.chunk_max_chars,
                                overlap_sentences=s.chunk_overlap_sentences)
        if not pieces:
            raise KnowledgeError(f"{doc.source_name}: no text to index")
        chunks = [ChunkRow(chunk_id=chunk_id(doc_id, version, c.ordinal), doc_id=doc_id, version=version,
                           partition=labels.partition, ordinal=c.ordinal, text=c.text, start=c.start, end=c.end,
                           page=c.page, heading=tuple(c.heading_path), header=c.header, row=c.row)
                  for c in pieces]
        new = NewDocument(doc_id=doc_id, version=version, title=doc.title, source_name=doc.source_name,
                          format=doc.format, sha256=sha, labels=labels, ingested_by=by, chunks=chunks,
                          chars=len(doc.text), collection=collection or (old.collection if old else None))
        return new, [embedding_text(doc.title, c.heading, c.passage) for c in chunks]

    def _write(self, docs: Sequence[NewDocument], texts: Sequence[str]) -> None:
        vectors = self.embed(texts)
        if len(vectors) != len(texts):
            raise KnowledgeError(f"embedder returned {len(vectors)} vectors for {len(texts)} chunks")
        self.catalog.record_pending(docs)
        by_partition: dict[str, tuple[list[str], list[list[float]], list[dict]]] = {}
        i = 0
        for d in docs:
            ids, vecs, metas = by_partition.setdefault(d.labels.partition, ([], [], []))
            for c in d.chunks:
                ids.append(c.chunk_id)
                vecs.append(vectors[i])
                metas.append({"doc_id": d.doc_id, "version": d.version})
                i += 1
        for partition, (ids, vecs, metas) in by_partition.items():
            self.vectors.upsert(partition, ids, vecs, None, metas)
        retired = self.catalog.swap_in(docs)
        self._retire(retired)

    def _retire(self, retired: Sequence[dict], grace_s: float | None = None) -> None:
        """Delete retired vectors once no reader can still need them.

        A reader that took its catalog snapshot just before a swap still looks for the old
        version's vectors, so they stay for ``retire_grace_s`` seconds (journalled: a crash
        or restart deletes them at once, as nobody reads then).
        """
        now = time.monotonic()
        self._retiring.extend((now, e) for e in retired)
        grace = self.settings.retire_grace_s if grace_s is None else grace_s
        due = [e for t, e in self._retiring if now - t >= grace]
        self._retiring = [(t, e) for t, e in self._retiring if now - t < grace]
        for entry in due:
            if entry["chunk_ids"]:
                self.vectors.delete(entry["partition"], entry["chunk_ids"])
        self.catalog.clear_journal(due)

    # -- delete -------------------------------------------------------------------------

    def delete(self, doc_id: str) -> bool:
        self._must_write()
        entry = self.catalog.delete(doc_id)
        if entry is None:
            return False
        self._retire([entry])
        return True

    # -- consistency --------------------------------------------------------------------

    def check(self, repair: bool = False) -> list[str]:
        """Disagreements between catalog, full-text tables and Chroma; fixed from the catalog if asked
        (inside :meth:`writing`)."""
        if repair:
            self._must_write()
        problems: list[str] = []
        journal = self.catalog.journal()
        mine = {(e["doc_id"], e["version"]) for _, e in self._retiring}
        unfinished = [e for e in journal if e["kind"] == "pending" or (e["doc_id"], e["version"]) not in mine]
        if unfinished:
            problems.append(f"{len(unfinished)} unfinished write(s) in the journal")
            if repair:
                self.recover()
        retiring = {i for e in self.catalog.journal() if e["kind"] == "retired" for i in e["chunk_ids"]}
        partitions = self.catalog.partitions()
        for name in sorted(set(partitions) | set(self.vectors.names())):
            want = self.catalog.chunk_ids(name)
            have = self.vectors.ids(name) if name in self.vectors.names() else set()
            fts = self.catalog.fts_ids(name) if name in partitions else set()
            extra, missing = have - want - retiring, want - have
            if extra:
                problems.append(f"{name}: {len(extra)} vector(s) with no catalog chunk")
                if repair:
                    self.vectors.delete(name, sorted(extra))
            if missing:
                problems.append(f"{name}: {len(missing)} catalog chunk(s) with no vector")
                if repair:
                    self._reembed(name, sorted(missing))
            if fts != want:
                problems.append(f"{name}: full-text table differs from the catalog ({len(fts ^ want)} row(s))")
                if repair:
                    self.catalog.rebuild_fts(name)
        return problems

    def _reembed(self, partition: str, ids: list[str]) -> None:
        rows = self.catalog.chunks_by_id(ids)
        docs = self.catalog.documents_by_id(r.doc_id for r in rows.values())
        chunks = list(rows.values())
        texts = [embedding_text(docs[c.doc_id].title, c.heading, c.passage) for c in chunks]
        vecs = self.embed(texts)
        self.vectors.upsert(partition, [c.chunk_id for c in chunks], vecs, None,
                            [{"doc_id": c.doc_id, "version": c.version} for c in chunks])

    def stats(self) -> dict:
        counts = self.catalog.counts()
        counts["vectors"] = sum(self.vectors.count(n) for n in self.vectors.names())
        return counts


def dumps(obj: object) -> str:
    return json.dumps(obj, indent=2, default=str)
