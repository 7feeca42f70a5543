"""Evaluation commands: ``eval retrieval|claims|qa`` on scratch indexes and ``eval run|report|runs`` on the stored
sets (registered on ``appliance``; the specialists' evaluations join the same ``eval`` group)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich import box
from rich.table import Table

from appliance.agent.loop import Agent
from appliance.cli._common import console, current_account, eval_group, eval_progress, phase_progress, services
from appliance.errors import KnowledgeError
from appliance.evaluation.compare import ARCHITECTURES
from appliance.knowledge.base import KnowledgeBase
from appliance.knowledge.retrieval import Retriever
from appliance.services import Services

__all__ = ["register", "scratch_agent", "scratch_knowledge"]


def register(group: click.Group) -> None:
    """Add ``eval retrieval``, ``claims``, ``qa``, ``run``, ``report`` and ``runs`` to ``group``."""
    evaluations = eval_group(group)
    for command in (eval_retrieval, eval_claims, eval_qa, eval_run, eval_report, eval_runs):
        evaluations.add_command(command)


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


def scratch_agent(services: Services, kb: KnowledgeBase) -> Agent:
    """An agent over an evaluation's scratch knowledge base."""
    return Agent(services.retriever(kb), services.engine(), services.agent_store(),
                 services.scale, settings=services.settings.agent)


@click.command("retrieval")
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

    svc = services(ctx)
    qs = load_queries(queries)[:limit] if limit else load_queries(queries)
    with scratch_knowledge(svc, index_dir, generator=False) as kb:
        reranked = svc.retriever(kb)
        modes = [mode] if mode else ["dense", "bm25", "hybrid"] + ([RERANKED] if reranked.reranker else [])
        with eval_progress(as_json) as progress:
            task = progress.add_task("ingesting corpus", total=None)
            ingest = ingest_corpus(kb, corpus, progress=lambda _s, n: progress.advance(task, n))
            progress.update(task, description="searching", completed=0, total=len(qs) * len(modes))
            result = evaluate(kb, Retriever(kb, svc.settings.knowledge), qs, k=k, modes=modes,
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


@click.command("claims")
@click.option("--corpus", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="JSONL {doc_id, title, sentences|text}.")
@click.option("--claims", "claims_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              required=True, help="JSONL {id, claim, cited_doc_ids, evidence_doc_id, label}.")
@click.option("--limit", type=int, help="Only the first N claims.")
@click.option("--index-dir", type=click.Path(path_type=Path, file_okay=False), help="Keep and reuse the index here.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_claims(ctx: click.Context, corpus: Path, claims_file: Path, limit: int | None, index_dir: Path | None,
                as_json: bool) -> None:
    """Label claims SUPPORT/CONTRADICT/NOT_ENOUGH_INFO: agent loop vs single-shot RAG."""
    from appliance.access.labels import Principal
    from appliance.evaluation.claims import evaluate_claims, load_claims
    from appliance.evaluation.retrieval import EVAL_LABELS, ingest_corpus

    svc = services(ctx)
    claims = load_claims(claims_file)[:limit] if limit else load_claims(claims_file)
    with scratch_knowledge(svc, index_dir) as kb:
        agent = scratch_agent(svc, kb)
        with eval_progress(as_json) as progress:
            task = progress.add_task("ingesting corpus", total=None)
            ingest_corpus(kb, corpus, progress=lambda _s, n: progress.advance(task, n))
            progress.update(task, description="claims", completed=0, total=len(claims))
            result = evaluate_claims(agent, claims, Principal("eval", EVAL_LABELS.level),
                                     progress=lambda n: progress.advance(task, n))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"{result['claims']} claims", box=box.SIMPLE)
    systems = result["systems"]
    metrics = [m for m, v in next(iter(systems.values())).items() if isinstance(v, float)]
    table.add_column("metric")
    for name in systems:
        table.add_column(name)
    for m in metrics:
        table.add_row(m, *(f"{systems[s][m]:.3f}" for s in systems))
    for label in systems["agent"]["citation_precision_by_label"]:
        table.add_row(f"citation_precision ({label})",
                      *(f"{v:.3f}" if (v := systems[s]["citation_precision_by_label"].get(label)) is not None
                        else "-" for s in systems))
    console.print(table)
    if split := systems["agent"].get("time_split"):
        console.print(f"agent time: model {split['model']:.1%}, retrieval {split['retrieval']:.1%}, "
                      f"orchestration {split['orchestration']:.1%} (per request p50 "
                      f"{split['orchestration_share_p50']:.1%}, p95 {split['orchestration_share_p95']:.1%})",
                      highlight=False)


@click.command("qa")
@click.option("--squad", "squad_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="A SQuAD v1 or v2 JSON file.")
@click.option("--limit", type=int, help="Only the first N questions.")
@click.option("--index-dir", type=click.Path(path_type=Path, file_okay=False), help="Keep and reuse the index here.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_qa(ctx: click.Context, squad_file: Path, limit: int | None, index_dir: Path | None, as_json: bool) -> None:
    """Ask SQuAD questions over their contexts: EM, F1, groundedness, citations, abstention."""
    from appliance.access.labels import Principal
    from appliance.evaluation.qa import evaluate_qa, load_squad
    from appliance.evaluation.retrieval import EVAL_LABELS

    svc = services(ctx)
    docs, items = load_squad(squad_file)
    items = items[:limit] if limit else items
    with scratch_knowledge(svc, index_dir) as kb:
        agent = scratch_agent(svc, kb)
        with eval_progress(as_json) as progress:
            task = progress.add_task("ingesting contexts", total=None)
            report = kb.ingest_documents(docs, EVAL_LABELS, by="eval", source=squad_file.name)
            if report.count("failed"):
                console.print(f"[yellow]{report.count('failed')} context(s) could not be ingested[/]")
            progress.update(task, description="questions", completed=0, total=len(items))
            result = evaluate_qa(agent, items, Principal("eval", EVAL_LABELS.level),
                                 progress=lambda n: progress.advance(task, n))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        console.print(f"{key:>28}  {value if not isinstance(value, float) else f'{value:.3f}'}", highlight=False)


@click.command("run")
@click.option("--set", "set_name", required=True, help="The evaluation set (see `appliance evalset list`).")
@click.option("--arch", "archs", multiple=True, type=click.Choice(ARCHITECTURES),
              help="Only these architectures (repeat; default: every applicable one).")
@click.option("--limit", type=int, help="Only the first N items of each kind.")
@click.option("--generator", "generators", multiple=True, metavar="MODEL",
              help="Run the set with each of these generators in turn (repeat), side by side.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Write report.md, report.json and a PNG chart per kind here.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_run(ctx: click.Context, set_name: str, archs: tuple[str, ...], limit: int | None,
             generators: tuple[str, ...], out: Path | None, as_json: bool) -> None:
    """Every applicable architecture on a set, side by side, with a recommendation per task type."""
    from appliance.app.evaluation import run_set
    from appliance.evaluation.report import write_report

    svc = services(ctx)
    account = current_account(ctx)
    with phase_progress() as step:
        report = run_set(svc, account, set_name, architectures=archs or ARCHITECTURES, limit=limit,
                         progress=lambda done, total: step("evaluating", done, total), generators=generators)
    written = write_report(report, out) if out else []
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    _print_report(report)
    for path in written:
        console.print(f"wrote {path}", highlight=False)


def _print_report(report: dict) -> None:
    from appliance.evaluation.report import rich_report

    console.print(rich_report(report))


@click.command("report")
@click.argument("run_id")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Write report.md, report.json and a PNG chart per kind here.")
@click.pass_context
def eval_report(ctx: click.Context, run_id: str, out: Path) -> None:
    """Write the report of a past run (see `appliance eval runs`) for the officer to take away."""
    from appliance.app.evaluation import get_run
    from appliance.evaluation.report import write_report

    for path in write_report(get_run(services(ctx), current_account(ctx), run_id)["report"], out):
        console.print(f"wrote {path}", highlight=False)


@click.command("runs")
@click.option("--set", "set_name", help="Only this set's runs.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_runs(ctx: click.Context, set_name: str | None, as_json: bool) -> None:
    """Past evaluation runs: when, on which generation, why (manual or a drift gate), the recommendations."""
    from appliance.app.evaluation import runs as past_runs

    runs = past_runs(services(ctx), current_account(ctx), set_name)
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    table = Table("run", "set", "at", "generation", "trigger", "s", "recommended", box=box.SIMPLE)
    for r in runs:
        recs = ", ".join(f"{k}: {v['recommendation']['architecture']}" for k, v in r["report"]["by_kind"].items())
        table.add_row(r["id"], r["set_name"], r["at"][:19], str(r["generation"]), r["trigger"], f"{r['seconds']:.0f}",
                      recs)
    console.print(table if runs else "no evaluation runs yet")
