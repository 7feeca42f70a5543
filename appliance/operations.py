"""Operations done on behalf of an account: each authorizes, audits, then acts.

The CLI and the TUI call these with the logged-in :class:`Account`; neither makes an
access decision of its own. An operation whose audit entry cannot be written does not
happen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.access.accounts import Account
from appliance.access.authz import authorize
from appliance.access.labels import Labels, Principal
from appliance.audit.export import ExportFilter, export_log
from appliance.errors import AccessError, KnowledgeError, SessionExpiredError
from appliance.knowledge.base import IngestReport
from appliance.services import Services

__all__ = ["principal_of", "ingest", "delete_document", "check_index", "export_audit", "check_audit",
           "record_feedback", "search", "show_document", "list_documents"]


def _fresh(services: Services, account: Account, action: str | None = None) -> Account:
    current = services.accounts().get(account.name)  # as stored now: a revoke takes effect at once
    if current.disabled:
        raise SessionExpiredError(f"{current.name} is disabled")
    return authorize(current, action) if action else current


def principal_of(services: Services, account: Account, narrowed: Labels | None = None) -> Principal:
    """The account's reading principal; ``narrowed`` (officers, admins) previews a clearance within its own."""
    me = _fresh(services, account).principal()
    if narrowed is None:
        return me
    authorize(_fresh(services, account), "search.as_clearance")
    if not me.can_read(narrowed, services.scale):
        raise AccessError(f"{narrowed} is not within your own clearance")
    return Principal(name=me.name, level=narrowed.level, compartments=narrowed.compartments)


def ingest(services: Services, account: Account, files: Sequence[Path], labels: Labels,
           progress: Callable[[str, int], None] | None = None, collection: str | None = None) -> IngestReport:
    by = _fresh(services, account, "documents.manage")
    if not by.principal().can_read(labels, services.scale):
        raise AccessError(f"{by.name} is not cleared for {labels}: documents may only be labelled within "
                          "your own clearance")
    audit = services.audit()
    audit.record("document.ingest", by.name, files=[str(f) for f in files][:1000], labels=str(labels),
                 collection=collection)
    me = by.principal()
    with services.writing(f"ingest by {by.name}") as kb:
        report = kb.ingest_files(  # never over a document the officer may not read
            list(files), labels, by=by.name, progress=progress, collection=collection,
            may_replace=lambda old: me.can_read(old.labels, services.scale))
    audit.record("document.ingested", by.name, labels=str(labels),
                 outcomes=[[o.source, o.status, o.doc_ids] for o in report.outcomes][:1000])
    return report


def delete_document(services: Services, account: Account, doc_id: str) -> None:
    by = _fresh(services, account, "documents.manage")
    with services.writing(f"delete by {by.name}") as kb:
        doc = kb.catalog.get(doc_id)
        if doc is None or not by.principal().can_read(doc.labels, kb.scale):
            raise KnowledgeError(f"no document {doc_id!r}")  # the same words whether absent or not readable
        services.audit().record("document.delete", by.name, doc=doc_id, version=doc.version,
                                labels=str(doc.labels))
        kb.delete(doc_id)


def check_index(services: Services, account: Account, repair: bool = False) -> list[str]:
    by = _fresh(services, account, "index.admin")
    if repair:
        services.audit().record("index.repair", by.name)
    with services.writing(f"index {'repair' if repair else 'check'} by {by.name}") as kb:  # no write half-seen
        return kb.check(repair=repair)


def export_audit(services: Services, account: Account, out: Path, *, since_checkpoint: bytes | None = None,
                 filt: ExportFilter = ExportFilter(), progress: Callable[[int, int], None] | None = None) -> dict:
    by = _fresh(services, account, "audit.export")
    return export_log(services.audit(), out, by=by.name, since_checkpoint=since_checkpoint, filt=filt,
                      progress=progress)


def record_feedback(services: Services, account: Account, trace_id: str, verdict: str,
                    correct_answer: str | None = None, correct_source: str | None = None) -> None:
    """An analyst marks one of their answers right or wrong (kept for evaluation, and audited)."""
    by = _fresh(services, account)
    services.agent_store().check_feedback(trace_id, by.name, verdict, correct_answer, correct_source)
    services.audit().record("answer.feedback", by.name, trace=trace_id, verdict=verdict,
                            correct_answer=correct_answer or None, correct_source=correct_source or None)
    services.agent_store().add_feedback(trace_id, by.name, verdict, correct_answer, correct_source)


def check_audit(services: Services, account: Account) -> dict:
    _fresh(services, account, "audit.check")
    return services.audit().check()


def search(services: Services, account: Account, query: str, *, k: int = 10, mode: str = "hybrid",
           narrowed: Labels | None = None) -> list:
    """Search what the account may read; the query and the chunk ids shown are audited first."""

    me = principal_of(services, account, narrowed)
    hits = services.retriever().retrieve(query, me, k=k, mode=mode)
    services.audit().record("search", me.name, query=query[:2000], mode=mode, clearance=str(Labels(me.level,
                            me.compartments)), chunks=[h.chunk.chunk_id for h in hits])
    return hits


def show_document(services: Services, account: Account, doc_id: str, version: int | None = None) -> tuple:
    """A readable document's catalog row and chunks (of ``version``, if given); audited before it is shown."""
    me = principal_of(services, account)
    kb = services.knowledge()
    doc = kb.catalog.get(doc_id)
    if doc is None or not me.can_read(doc.labels, kb.scale) or (version is not None and doc.version != version):
        raise KnowledgeError(f"no document {doc_id!r}")  # the same words whether absent, unreadable or replaced
    chunks = [c for c in kb.catalog.chunks_of(doc_id) if c.version == doc.version]
    services.audit().record("document.show", me.name, doc=doc_id, version=doc.version, labels=str(doc.labels))
    return doc, chunks


def list_documents(services: Services, account: Account) -> list:
    me = principal_of(services, account)
    kb = services.knowledge()
    docs = [d for d in kb.catalog.documents() if me.can_read(d.labels, kb.scale)]
    services.audit().record("document.list", me.name, count=len(docs))
    return docs


def run_specialist(services: Services, account: Account, name: str, task: str, texts: list[str]) -> list:
    """Classify or extract ``texts`` with the specialist ``name``; audited (digests of the texts, the outputs)."""
    import hashlib

    from appliance.specialists.serve import SpecialistError

    by = authorize(services.accounts().get(account.name), "specialists.use")
    available = services.specialists()
    spec = available.get(name)
    if spec is None:
        known = ", ".join(f"{n} ({s.task})" for n, s in available.items()) or "none installed"
        raise SpecialistError(f"no specialist {name!r} on this appliance (known: {known})")
    if spec.task != task:
        raise SpecialistError(f"{name} is a {spec.task} specialist: use `appliance {spec.task}`")
    limit = services.settings.specialists.max_texts
    if len(texts) > limit:
        raise SpecialistError(f"{len(texts)} texts, over the [specialists] max_texts limit of {limit}")
    results = [spec.classify(t) if task == "classify" else spec.extract(t) for t in texts]
    summary = ([r.label for r in results] if task == "classify"
               else [[(s.kind, s.start, s.end) for s in r.spans] for r in results])
    services.audit().record(f"specialist.{task}", by.name, adapter=name, texts=len(texts),
                            text_sha256=[hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts[:100]],
                            results=summary[:100])
    return results
