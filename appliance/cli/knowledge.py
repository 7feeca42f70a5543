"""Knowledge commands: ingest, docs, search, index check (registered on ``appliance``)."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from appliance.access.labels import Principal, parse_labels
from appliance.agent.loop import Agent
from appliance.cli import _services, console, main
from appliance.errors import KnowledgeError
from appliance.knowledge.base import KnowledgeBase
from appliance.knowledge.parsers import SUPPORTED
from appliance.knowledge.retrieval import Retriever
from appliance.services import Services

MAX_FILES = 100_000


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


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--labels", "label_text", required=True, help="LEVEL[:COMPARTMENT,...] for every document.")
@click.option("--collection", help="The collection the documents belong to, e.g. facility-handbook.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-file report as JSON.")
@click.pass_context
def ingest(ctx: click.Context, paths: tuple[Path, ...], label_text: str, collection: str | None,
           as_json: bool) -> None:
    """Ingest documents (TXT, MD, HTML, PDF, DOCX, CSV, JSONL) under one label (officers, admins)."""
    from appliance import operations
    from appliance.cli_access import current_account

    services = _services(ctx)
    acct = current_account(ctx)
    labels = parse_labels(label_text, services.scale)
    files = _expand(paths)
    with ingest_progress("ingesting", len(files), quiet=as_json) as step:
        report = operations.ingest(services, acct, files, labels, progress=step, collection=collection)
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


@main.group()
def docs() -> None:
    """The document catalog: list, show, delete."""


@docs.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def docs_list(ctx: click.Context, as_json: bool) -> None:
    """List the catalogued documents you may read, with labels, versions and sources."""
    from appliance import operations
    from appliance.cli_access import current_account

    rows = operations.list_documents(_services(ctx), current_account(ctx))
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
    from appliance import operations
    from appliance.cli_access import current_account

    doc, chunks = operations.show_document(_services(ctx), current_account(ctx), doc_id)
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
    from appliance import operations
    from appliance.cli_access import current_account

    operations.delete_document(_services(ctx), current_account(ctx), doc_id)
    console.print(f"deleted {doc_id}")


@contextmanager
def ingest_progress(what: str, files: int, quiet: bool) -> Iterator[Callable[[str, int], None]]:
    """The ingest progress display (files done, chunks so far); yields the knowledge base's progress callback."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[chunks]} chunks"), TimeElapsedColumn(), console=console,
                  disable=quiet) as progress:
        task = progress.add_task(what, total=files, chunks=0)
        done: set[str] = set()

        def step(source: str, chunks: int) -> None:
            fields = progress.tasks[0].fields
            progress.update(task, description=source[:40], chunks=fields["chunks"] + chunks)
            if source not in done:
                done.add(source)
                progress.advance(task)

        yield step


def principal_for(ctx: click.Context, label_text: str | None = None) -> Principal:
    """The logged-in account's principal; ``--labels`` narrows it (officers and admins only).

    A narrowed clearance must be one the account itself holds: it previews what a lower
    clearance sees, never more than the account may read.
    """
    from appliance import operations
    from appliance.cli_access import current_account

    services = _services(ctx)
    narrowed = parse_labels(label_text, services.scale) if label_text else None
    return operations.principal_of(services, current_account(ctx), narrowed)


@main.command()
@click.argument("query")
@click.option("--labels", "label_text",
              help="Officers and admins: search with a clearance within their own, LEVEL[:COMPARTMENT,...].")
@click.option("-k", "--k", "k", default=10, show_default=True)
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25"]), default="hybrid", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def search(ctx: click.Context, query: str, label_text: str | None, k: int, mode: str, as_json: bool) -> None:
    """Search the documents you may read."""
    from appliance import operations
    from appliance.cli_access import current_account

    services = _services(ctx)
    narrowed = parse_labels(label_text, services.scale) if label_text else None
    hits = operations.search(services, current_account(ctx), query, k=k, mode=mode, narrowed=narrowed)
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


@main.group()
def index() -> None:
    """Index consistency: catalog vs full-text vs Chroma."""


@index.command("check")
@click.option("--repair", is_flag=True, help="Fix every disagreement from the catalog.")
@click.pass_context
def index_check(ctx: click.Context, repair: bool) -> None:
    """Find disagreements between the catalog, the full-text tables and Chroma (admins)."""
    from appliance import operations
    from appliance.cli_access import current_account

    kb = _services(ctx).knowledge()
    problems = operations.check_index(_services(ctx), current_account(ctx), repair=repair)
    for p in problems:
        console.print(f"{'repaired' if repair else 'problem'}: {p}", highlight=False)
    if repair and problems:
        remaining = kb.check()
        for p in remaining:
            console.print(f"[red]still[/]: {p}", highlight=False)
        sys.exit(1 if remaining else 0)
    console.print(f"consistent: {kb.stats()}" if not problems else "")
    sys.exit(1 if problems and not repair else 0)


@contextmanager
def scratch_knowledge(services: Services, index_dir: Path | None, generator: bool = True) -> Iterator[KnowledgeBase]:
    """A knowledge base for an evaluation: in ``index_dir`` (kept) or a temporary directory."""
    if index_dir is not None:
        data = services.settings.data_dir.resolve()
        if index_dir.resolve() == data or data in index_dir.resolve().parents:
            raise KnowledgeError(f"--index-dir {index_dir} is inside the appliance's data; evaluations use their "
                                 "own index")
    with tempfile.TemporaryDirectory(prefix="eval-", dir=services.settings.data_dir) as tmp:
        engine = services.engine(generator=generator)
        yield KnowledgeBase(index_dir or Path(tmp), lambda texts: engine.embed(list(texts), batch=256),
                            scale=services.scale, settings=services.settings.knowledge)


def eval_progress(quiet: bool) -> Progress:
    """The progress display of the evaluation commands (silent under --json)."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=quiet)


def scratch_agent(services: Services, kb: KnowledgeBase) -> Agent:
    """An agent over an evaluation's scratch knowledge base."""
    return Agent(services.retriever(kb), services.engine(), services.agent_store(),
                 services.scale, settings=services.settings.agent)


@main.group("eval")
def eval_group() -> None:
    """Evaluations on your own data (retrieval first; more arrive with later issues)."""


@eval_group.command("retrieval")
@click.option("--corpus", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="JSONL {doc_id, title, sentences|text}.")
@click.option("--queries", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="JSONL {id, claim|query, cited_doc_ids}.")
@click.option("--k", default=10, show_default=True)
@click.option("--mode", type=click.Choice(["dense", "bm25", "hybrid", "hybrid+rerank"]),
              help="One mode (default: all, hybrid+rerank when a reranker is provisioned).")
@click.option("--limit", type=int, help="Evaluate only the first N queries that cite documents.")
@click.option("--index-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Keep the scratch index here and reuse it next time (default: a temporary directory).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_retrieval(ctx: click.Context, corpus: Path, queries: Path, k: int, mode: str | None, limit: int | None,
                   index_dir: Path | None, as_json: bool) -> None:
    """Ingest a corpus into a scratch index and report nDCG@10, recall, MRR and latency."""
    from appliance.evaluation.retrieval import RERANKED, evaluate, ingest_corpus, load_queries

    services = _services(ctx)
    qs = load_queries(queries)[:limit] if limit else load_queries(queries)
    with scratch_knowledge(services, index_dir, generator=False) as kb:
        reranked = services.retriever(kb)
        modes = [mode] if mode else ["dense", "bm25", "hybrid"] + ([RERANKED] if reranked.reranker else [])
        with eval_progress(as_json) as progress:
            task = progress.add_task("ingesting corpus", total=None)
            ingest = ingest_corpus(kb, corpus, progress=lambda _s, n: progress.advance(task, n))
            progress.update(task, description="searching", completed=0, total=len(qs) * len(modes))
            result = evaluate(kb, Retriever(kb, services.settings.knowledge), qs, k=k, modes=modes,
                              progress=lambda n: progress.advance(task, n), reranked=reranked)
    result["ingest"] = ingest
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"{len(qs)} queries, {ingest['documents']} documents", box=box.SIMPLE)
    for col in ("mode", f"nDCG@{k}", "R@10", "R@100", f"MRR@{k}", "p50 ms", "p95 ms"):
        table.add_column(col)
    for m, r in result["modes"].items():
        table.add_row(m, f"{r[f'ndcg@{k}']:.3f}", f"{r['recall@10']:.3f}", f"{r['recall@100']:.3f}",
                      f"{r[f'mrr@{k}']:.3f}", f"{r['latency_ms_p50']:.1f}", f"{r['latency_ms_p95']:.1f}")
    console.print(table)
