"""Specialist commands: ``classify``, ``extract`` and ``specialists`` (registered on ``appliance``)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from appliance.cli import _services, console, main
from appliance.cli_knowledge import eval_group

__all__: list[str] = []

MAX_FILE_BYTES = 16 * 2**20


def _texts(text: str | None, file: Path | None) -> list[str]:
    if (text is None) == (file is None):
        raise click.UsageError("give a TEXT or --file F (one text per line), not both")
    if text is not None:
        return [text]
    assert file is not None
    if file.stat().st_size > MAX_FILE_BYTES:
        raise click.UsageError(f"{file}: over {MAX_FILE_BYTES} bytes")
    try:
        lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise click.UsageError(f"{file}: not UTF-8 text") from None
    if not lines:
        raise click.UsageError(f"{file}: no texts (one per line)")
    return lines


def _run(ctx: click.Context, task: str, adapter: str, text: str | None, file: Path | None) -> tuple[list[str], list]:
    from appliance import operations
    from appliance.cli_access import current_account

    texts = _texts(text, file)
    services = _services(ctx)
    return texts, operations.run_specialist(services, current_account(ctx), adapter, task, texts)


@main.command("classify")
@click.option("--adapter", required=True, help="The classification specialist (see `appliance specialists`).")
@click.argument("text", required=False)
@click.option("--file", "file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Classify every line of this file.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def classify(ctx: click.Context, adapter: str, text: str | None, file: Path | None, as_json: bool) -> None:
    """Classify TEXT (or each line of --file) with a fine-tuned specialist: a label and its confidence."""
    texts, results = _run(ctx, "classify", adapter, text, file)
    if as_json:
        click.echo(json.dumps([{"text": t, **r.as_dict()} for t, r in zip(texts, results, strict=True)], indent=2))
        return
    table = Table("text", "label", "confidence", "ms")
    for t, r in zip(texts, results, strict=True):
        label = r.label if r.label is not None else f"[dim](abstained; best {r.best})[/]"
        table.add_row(t[:80], label, f"{r.confidence:.2f}", f"{r.seconds * 1000:.0f}")
    console.print(table)


@main.command("extract")
@click.option("--adapter", required=True, help="The extraction specialist (see `appliance specialists`).")
@click.argument("text", required=False)
@click.option("--file", "file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Extract from every line of this file.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def extract(ctx: click.Context, adapter: str, text: str | None, file: Path | None, as_json: bool) -> None:
    """Extract typed entities from TEXT (or each line of --file); every span is checked against the text."""
    texts, results = _run(ctx, "extract", adapter, text, file)
    if as_json:
        click.echo(json.dumps([{"text": t, **r.as_dict()} for t, r in zip(texts, results, strict=True)], indent=2))
        return
    table = Table("text", "entities", "ms")
    for t, r in zip(texts, results, strict=True):
        spans = ", ".join(f"{s.text} [{s.kind}] @{s.start}" for s in r.spans) or "[dim]none[/]"
        table.add_row(t[:80], spans, f"{r.seconds * 1000:.0f}")
    console.print(table)


@main.command("specialists")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def specialists(ctx: click.Context, as_json: bool) -> None:
    """The installed specialists: name, task, labels or entity types, and the figures they were trained to."""
    from appliance.cli_access import current_account

    services = _services(ctx)
    current_account(ctx)
    found = services.specialists()
    if as_json:
        click.echo(json.dumps([s.info.as_dict() for s in found.values()], indent=2))
        return
    table = Table("name", "task", "labels / types", "metrics")
    for s in found.values():
        labels = ", ".join(s.info.labels[:6]) + (f" … ({len(s.info.labels)})" if len(s.info.labels) > 6 else "")
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in s.info.metrics.items() if isinstance(v, float))
        table.add_row(s.name, s.task, labels, metrics)
    console.print(table if found else "no specialists installed (they arrive in signed bundles)")


def _specialist(ctx: click.Context, adapter: str, task: str):  # noqa: ANN202
    from appliance.access.authz import authorize
    from appliance.cli_access import current_account
    from appliance.specialists.serve import SpecialistError

    services = _services(ctx)
    authorize(services.accounts().get(current_account(ctx).name), "specialists.use")
    found = services.specialists()
    spec = found.get(adapter)
    if spec is None or spec.task != task:
        known = ", ".join(f"{n} ({s.task})" for n, s in found.items()) or "none installed"
        raise SpecialistError(f"no {task} specialist {adapter!r} on this appliance (known: {known})")
    return services, spec


def _report(result: dict, as_json: bool, rows: list[tuple[str, str, str]]) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    table = Table("metric", "adapter", "few-shot, no adapter")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@eval_group.command("classify")
@click.option("--adapter", required=True)
@click.option("--data", "data_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="CSV text,label (or category) or JSONL {text, label}.")
@click.option("--limit", type=int, help="Evaluate only the first N items.")
@click.option("--shots", default=16, show_default=True, help="Labelled examples in the few-shot prompt.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_classify(ctx: click.Context, adapter: str, data_file: Path, limit: int | None, shots: int,
                  as_json: bool) -> None:
    """Accuracy, macro-F1, latency of a classifier, beside the base model with a few-shot prompt."""
    from appliance.cli_knowledge import eval_progress
    from appliance.evaluation.specialists import evaluate_classification
    from appliance.specialists.data import load_classification

    services, spec = _specialist(ctx, adapter, "classify")
    data = load_classification(data_file)
    with eval_progress(as_json) as bar:
        task = bar.add_task("classifying (adapter, then few-shot)", total=None)
        result = evaluate_classification(spec, services.engine(), data, limit=limit, shots=shots,
                                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    a, b = result["adapter"], result["few_shot_no_adapter"]
    _report(result, as_json, [
        ("accuracy", f"{a['accuracy']:.3f}", f"{b['accuracy']:.3f}"),
        ("macro-F1", f"{a['macro_f1']:.3f}", f"{b['macro_f1']:.3f}"),
        ("abstained", f"{a['abstained']:.3f}", "-"),
        ("latency p50 / p95 ms", f"{a['p50_ms']:.0f} / {a['p95_ms']:.0f}", f"{b['p50_ms']:.0f} / {b['p95_ms']:.0f}")])


@eval_group.command("extract")
@click.option("--adapter", required=True)
@click.option("--data", "data_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="CoNLL (token<TAB>BIO tag) or JSONL {text, spans}.")
@click.option("--limit", type=int, help="Evaluate only the first N sentences.")
@click.option("--shots", default=3, show_default=True, help="Examples in the few-shot prompt.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_extract(ctx: click.Context, adapter: str, data_file: Path, limit: int | None, shots: int,
                 as_json: bool) -> None:
    """Entity-level precision, recall, F1 and latency of an extractor, beside the base model few-shot."""
    from appliance.cli_knowledge import eval_progress
    from appliance.evaluation.specialists import evaluate_extraction
    from appliance.specialists.data import load_extraction

    services, spec = _specialist(ctx, adapter, "extract")
    data = load_extraction(data_file)
    with eval_progress(as_json) as bar:
        task = bar.add_task("extracting (adapter, then few-shot)", total=None)
        result = evaluate_extraction(spec, services.engine(), data, limit=limit, shots=shots,
                                     progress=lambda done, total: bar.update(task, completed=done, total=total))
    a, b = result["adapter"], result["few_shot_no_adapter"]
    _report(result, as_json, [(m, f"{a[m]:.3f}", f"{b[m]:.3f}") for m in ("precision", "recall", "f1")]
            + [("latency p50 / p95 ms", f"{a['p50_ms']:.0f} / {a['p95_ms']:.0f}",
                f"{b['p50_ms']:.0f} / {b['p95_ms']:.0f}")])
