"""Knowledge commands: ingest, docs, search, index check (registered on ``appliance``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich import box
from rich.table import Table

from appliance.access.labels import parse_labels
from appliance.cli._common import console, current_account, ingest_progress, services
from appliance.errors import KnowledgeError
from appliance.knowledge.parsers import SUPPORTED

__all__ = ["register"]

MAX_FILES = 100_000


def register(group: click.Group) -> None:
    """Add ``ingest``, ``docs``, ``search`` and ``index`` to ``group``."""
    for command in (ingest, docs, search, index):
        group.add_command(command)


def _expand(paths: tuple[Path, ...]) -> list[Path]:
    """Files as given, and the supported files under any directory given (sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED))
        else:
            out.append(p)
        if len(out) > MAX_FILES:
            raise KnowledgeError(f"more than {MAX_FILES} files in one ingest")
    return out


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--labels", "label_text", required=True, help="LEVEL[:COMPARTMENT,...] for every document.")
@click.option("--collection", help="The collection the documents belong to, e.g. facility-handbook.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-file report as JSON.")
@click.pass_context
def ingest(ctx: click.Context, paths: tuple[Path, ...], label_text: str, collection: str | None,
           as_json: bool) -> None:
    """Ingest documents (TXT, MD, HTML, PDF, DOCX, CSV, JSONL) under one label (officers, admins)."""
    from appliance.app import documents

    svc = services(ctx)
    acct = current_account(ctx)
    labels = parse_labels(label_text, svc.scale)
    files = _expand(paths)
    with ingest_progress("ingesting", len(files), quiet=as_json) as step:
        report = documents.ingest(svc, acct, files, labels, progress=step, collection=collection)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for o in report.outcomes:
            if o.status == "failed":
                console.print(f"[red]failed[/] {o.reason}", highlight=False)
            for w in o.warnings:
                console.print(f"[yellow]warning[/] {o.source}: {w}", highlight=False)
        console.print(f"{report.count('added')} added, {report.count('replaced')} replaced, "
                      f"{report.count('unchanged')} unchanged, {report.count('failed')} failed; "
                      f"{report.chunks} chunks under {labels}")
    if report.count("failed"):
        sys.exit(1)


@click.group()
def docs() -> None:
    """The document catalog: list, show, delete."""


@docs.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def docs_list(ctx: click.Context, as_json: bool) -> None:
    """List the catalogued documents you may read, with labels, versions and sources."""
    from appliance.app import documents

    rows = documents.list_documents(services(ctx), current_account(ctx))
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    table = Table(box=box.SIMPLE, pad_edge=False)
    for col in ("doc id", "v", "title", "labels", "collection", "chunks", "by"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.doc_id, str(r.version), r.title[:50], str(r.labels), r.collection or "", str(r.n_chunks),
                      r.ingested_by or "")
    console.print(table)


@docs.command("show")
@click.argument("doc_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def docs_show(ctx: click.Context, doc_id: str, as_json: bool) -> None:
    """Show one document's catalog entry and its chunks (page, heading, offsets)."""
    from appliance.app import documents

    doc, chunks = documents.show_document(services(ctx), current_account(ctx), doc_id)
    if as_json:
        click.echo(json.dumps(doc.as_dict() | {"chunks": [c.__dict__ for c in chunks]}, indent=2, default=list))
        return
    for key, value in doc.as_dict().items():
        console.print(f"[bold]{key}[/] {value}", highlight=False)
    for c in chunks:
        where = f"p.{c.page} " if c.page else ""
        head = " > ".join(c.heading)
        console.print(f"[dim]#{c.ordinal} {where}{head} [{c.start}:{c.end}][/] {c.text[:100]!r}", highlight=False)


@docs.command("delete")
@click.argument("doc_id")
@click.pass_context
def docs_delete(ctx: click.Context, doc_id: str) -> None:
    """Delete a document from the catalog, the full-text index and Chroma (officers, admins)."""
    from appliance.app import documents

    documents.delete_document(services(ctx), current_account(ctx), doc_id)
    console.print(f"deleted {doc_id}")


@click.command()
@click.argument("query")
@click.option("--labels", "label_text",
              help="Officers and admins: search with a clearance within their own, LEVEL[:COMPARTMENT,...].")
@click.option("-k", "--k", "k", default=10, show_default=True)
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25"]), default="hybrid", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def search(ctx: click.Context, query: str, label_text: str | None, k: int, mode: str, as_json: bool) -> None:
    """Search the documents you may read."""
    from appliance.app import documents

    svc = services(ctx)
    narrowed = parse_labels(label_text, svc.scale) if label_text else None
    hits = documents.search(svc, current_account(ctx), query, k=k, mode=mode, narrowed=narrowed)
    if as_json:
        click.echo(json.dumps([h.as_dict() for h in hits], indent=2))
        return
    if not hits:
        console.print("no readable document matches")
    for i, h in enumerate(hits, 1):
        c = h.chunk
        where = ", ".join(x for x in (f"p.{c.page}" if c.page else "", " > ".join(c.heading)) if x)
        console.print(f"[bold]{i}. {h.document.title}[/] [dim]({h.document.doc_id}{', ' + where if where else ''}; "
                      f"{h.labels}; {c.start}-{c.end})[/]", highlight=False)
        console.print(f"   {c.text[:240]}", highlight=False)


@click.group()
def index() -> None:
    """Index consistency: catalog vs full-text vs Chroma."""


@index.command("check")
@click.option("--repair", is_flag=True, help="Fix every disagreement from the catalog.")
@click.pass_context
def index_check(ctx: click.Context, repair: bool) -> None:
    """Find disagreements between the catalog, the full-text tables and Chroma (admins)."""
    from appliance.app import documents

    kb = services(ctx).knowledge()
    problems = documents.check_index(services(ctx), current_account(ctx), repair=repair)
    for p in problems:
        console.print(f"{'repaired' if repair else 'problem'}: {p}", highlight=False)
    if repair and problems:
        remaining = kb.check()
        for p in remaining:
            console.print(f"[red]still[/]: {p}", highlight=False)
        sys.exit(1 if remaining else 0)
    console.print(f"consistent: {kb.stats()}" if not problems else "")
    sys.exit(1 if problems and not repair else 0)
