"""Documents: ingest, delete, search, show, list, and the index check; authorized and audited."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.access.accounts import Account
from appliance.access.labels import Labels, Principal
from appliance.app.acting import acting
from appliance.errors import KnowledgeError, NotPermittedError
from appliance.knowledge.base import IngestReport
from appliance.knowledge.catalog import ChunkRow, DocumentRow
from appliance.knowledge.retrieval import Hit
from appliance.services import Services

__all__ = ["principal_of", "ingest", "delete_document", "check_index", "search", "show_document", "list_documents"]


def principal_of(services: Services, account: Account, narrowed: Labels | None = None) -> Principal:
    """The account's reading principal; ``narrowed`` (officers, admins) previews a clearance within its own."""
    me = acting(services, account).account.principal()
    if narrowed is None:
        return me
    acting(services, account, "search.as_clearance")
    if not me.can_read(narrowed, services.scale):
        raise NotPermittedError(f"{narrowed} is not within your own clearance")
    return Principal(name=me.name, level=narrowed.level, compartments=narrowed.compartments)


def ingest(services: Services, account: Account, files: Sequence[Path], labels: Labels,
           progress: Callable[[str, int], None] | None = None, collection: str | None = None) -> IngestReport:
    """Ingest ``files`` under ``labels`` (within the officer's own clearance), never over a document the officer
    may not read; audited before (files, labels) and after (each outcome)."""
    act = acting(services, account, "documents.manage")
    me = act.account.principal()
    if not me.can_read(labels, services.scale):
        raise NotPermittedError(f"{act.name} is not cleared for {labels}: documents may only be labelled within "
                          "your own clearance")
    act.record("document.ingest", files=[str(f) for f in files][:1000], labels=str(labels), collection=collection)
    with services.writing(f"ingest by {act.name}") as kb:
        report = kb.ingest_files(list(files), labels, by=act.name, progress=progress, collection=collection,
                                 may_replace=lambda old: me.can_read(old.labels, services.scale))
    act.record("document.ingested", labels=str(labels),
               outcomes=[[o.source, o.status, o.doc_ids] for o in report.outcomes][:1000])
    return report


def delete_document(services: Services, account: Account, doc_id: str) -> None:
    act = acting(services, account, "documents.manage")
    with services.writing(f"delete by {act.name}") as kb:
        doc = kb.catalog.get(doc_id)
        if doc is None or not act.account.principal().can_read(doc.labels, kb.scale):
            raise KnowledgeError(f"no document {doc_id!r}")  # the same words whether absent or not readable
        act.record("document.delete", doc=doc_id, version=doc.version, labels=str(doc.labels))
        kb.delete(doc_id)


def check_index(services: Services, account: Account, repair: bool = False) -> list[str]:
    """Disagreements between the catalog, the full-text tables and the vectors (fixed if ``repair``)."""
    act = acting(services, account, "index.admin")
    if repair:
        act.record("index.repair")
    with services.writing(f"index {'repair' if repair else 'check'} by {act.name}") as kb:  # no write half-seen
        return kb.check(repair=repair)


def search(services: Services, account: Account, query: str, *, k: int = 10, mode: str = "hybrid",
           narrowed: Labels | None = None) -> list[Hit]:
    """Search what the account may read; the query and the chunk ids shown are audited first."""
    me = principal_of(services, account, narrowed)
    hits = services.retriever().retrieve(query, me, k=k, mode=mode)
    services.audit().record("search", me.name, query=query[:2000], mode=mode,
                            clearance=str(Labels(me.level, me.compartments)), chunks=[h.chunk.chunk_id for h in hits])
    return hits


def show_document(services: Services, account: Account, doc_id: str,
                  version: int | None = None) -> tuple[DocumentRow, list[ChunkRow]]:
    """A readable document's catalog row and chunks (of ``version``, if given); audited before it is shown."""
    me = principal_of(services, account)
    kb = services.knowledge()
    doc = kb.catalog.get(doc_id)
    if doc is None or not me.can_read(doc.labels, kb.scale) or (version is not None and doc.version != version):
        raise KnowledgeError(f"no document {doc_id!r}")  # the same words whether absent, unreadable or replaced
    chunks = [c for c in kb.catalog.chunks_of(doc_id) if c.version == doc.version]
    services.audit().record("document.show", me.name, doc=doc_id, version=doc.version, labels=str(doc.labels))
    return doc, chunks


def list_documents(services: Services, account: Account) -> list[DocumentRow]:
    me = principal_of(services, account)
    kb = services.knowledge()
    docs = [d for d in kb.catalog.documents() if me.can_read(d.labels, kb.scale)]
    services.audit().record("document.list", me.name, count=len(docs))
    return docs
