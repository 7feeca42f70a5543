"""Specialist commands: ``classify``, ``extract``, ``specialists``, ``finetune`` and ``eval classify|extract``
(registered on ``appliance``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
from rich.table import Table

from appliance.cli._common import console, current_account, eval_group, eval_progress, phase_progress, services

__all__ = ["register"]

MAX_FILE_BYTES = 16 * 2**20


def register(group: click.Group) -> None:
    """Add ``classify``, ``extract``, ``specialists``, ``finetune`` and ``eval classify|extract`` to ``group``."""
    for command in (classify, extract, specialists, finetune_command):
        group.add_command(command)
    evaluations = eval_group(group)
    for command in (eval_classify, eval_extract):
        evaluations.add_command(command)


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
    except UnicodeDecodeError as exc:
        raise click.UsageError(f"{file}: not UTF-8 text") from exc
    if not lines:
        raise click.UsageError(f"{file}: no texts (one per line)")
    return lines


def _run(ctx: click.Context, task: str, adapter: str, text: str | None, file: Path | None) -> tuple[list[str], list]:
    from appliance.app.specialists import run_specialist

    texts = _texts(text, file)
    svc = services(ctx)
    return texts, run_specialist(svc, current_account(ctx), adapter, task, texts)


@click.command("classify")
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


@click.command("extract")
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


@click.command("specialists")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def specialists(ctx: click.Context, as_json: bool) -> None:
    """The installed specialists: name, task, labels or entity types, and the figures they were trained to."""

    svc = services(ctx)
    current_account(ctx)
    found = svc.specialists()
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
    from appliance.app.specialists import specialist_for

    svc = services(ctx)
    return svc, specialist_for(svc, current_account(ctx), adapter, task)


def _report(result: dict, as_json: bool, rows: list[tuple[str, str, str]]) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    table = Table("metric", "adapter", "few-shot, no adapter")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _evaluate(ctx: click.Context, adapter: str, task: str, data_file: Path, as_json: bool,
              run: Callable[..., dict], **options: object) -> dict:
    """Load the data for ``task`` and run the evaluation with a progress display."""
    from appliance.specialists.data import load_classification, load_extraction

    svc, spec = _specialist(ctx, adapter, task)
    data = (load_classification if task == "classify" else load_extraction)(data_file)
    with eval_progress(as_json) as bar:
        bar_task = bar.add_task(f"{task} (adapter, then few-shot)", total=None)
        return run(spec, svc.engine(), data, **options,
                   progress=lambda done, total: bar.update(bar_task, completed=done, total=total))


def _latency_row(a: dict, b: dict) -> tuple[str, str, str]:
    return ("latency p50 / p95 ms", f"{a['p50_ms']:.0f} / {a['p95_ms']:.0f}", f"{b['p50_ms']:.0f} / {b['p95_ms']:.0f}")


@click.command("classify")
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
    from appliance.evaluation.specialists import evaluate_classification

    result = _evaluate(ctx, adapter, "classify", data_file, as_json, evaluate_classification, limit=limit,
                       shots=shots)
    a, b = result["adapter"], result["few_shot_no_adapter"]
    _report(result, as_json, [
        ("accuracy", f"{a['accuracy']:.3f}", f"{b['accuracy']:.3f}"),
        ("macro-F1", f"{a['macro_f1']:.3f}", f"{b['macro_f1']:.3f}"),
        ("abstained", f"{a['abstained']:.3f}", "-"), _latency_row(a, b)])


@click.command("extract")
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
    from appliance.evaluation.specialists import evaluate_extraction

    result = _evaluate(ctx, adapter, "extract", data_file, as_json, evaluate_extraction, limit=limit, shots=shots)
    a, b = result["adapter"], result["few_shot_no_adapter"]
    _report(result, as_json, [(m, f"{a[m]:.3f}", f"{b[m]:.3f}") for m in ("precision", "recall", "f1")]
            + [_latency_row(a, b)])


@click.command("finetune")
@click.option("--task", type=click.Choice(["classify", "extract"]), required=True)
@click.option("--data", "data_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="classify: CSV text,label (or category) or JSONL; extract: CoNLL or JSONL spans.")
@click.option("--base", required=True, help="The base model: a name in the model store, or a GGUF file.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="A new directory for the adapter.")
@click.option("--name", help="The specialist's name (default: the --out directory's name).")
@click.option("--epochs", default=3, show_default=True)
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps.")
@click.option("--rank", default=16, show_default=True)
@click.option("--learning-rate", default=3e-4, show_default=True)
@click.option("--batch-size", default=12, show_default=True)
@click.option("--validation", default=0.1, show_default=True, help="Share of the data held out.")
@click.option("--eval-every", default=50, show_default=True)
@click.option("--patience", default=3, show_default=True)
@click.option("--seed", default=1234, show_default=True)
@click.option("--limit-train", type=int, help="Train on the first N training examples only.")
@click.option("--eval-limit", default=1000, show_default=True, help="Held-out items measured through llama.cpp.")
@click.option("--eval-data", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Measure on this file (e.g. a dev set) instead of the held-out split.")
@click.option("--select-on", type=click.Choice(["loss", "exact"]),
              help="Keep the weights with the lowest validation loss, or with the most validation completions "
                   "exactly right [default: exact for classify, loss for extract].")
@click.option("--resume", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Continue training the adapter of this earlier finetune output (same data, base, seed) "
                   "for --epochs more.")
@click.pass_context
def finetune_command(ctx: click.Context, task: str, data_file: Path, base: str, out: Path, name: str | None,
                     epochs: int, max_steps: int | None, rank: int, learning_rate: float, batch_size: int,
                     validation: float, eval_every: int, patience: int, seed: int, limit_train: int | None,
                     eval_limit: int, eval_data: Path | None, select_on: str | None, resume: Path | None) -> None:
    """Build station: fine-tune a LoRA specialist and convert it to a llama.cpp adapter (GGUF)."""
    import re

    from appliance.specialists.finetune import FinetuneJob, finetune
    from appliance.specialists.train import TrainConfig

    base_path = Path(base)
    if not base_path.is_file():
        base_path = services(ctx).store.get(base).path
    name = name or out.name
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", name):
        raise click.UsageError(f"bad specialist name {name!r}: 1-63 of a-z 0-9 . _ -")
    config = TrainConfig(rank=rank, alpha=2.0 * rank, learning_rate=learning_rate, batch_size=batch_size,
                         max_epochs=epochs, max_steps=max_steps, eval_every=eval_every, patience=patience,
                         seed=seed, validation=validation,
                         select_on=select_on or ("exact" if task == "classify" else "loss"))
    job = FinetuneJob(task, data_file, base_path, out, name, config, eval_limit=eval_limit, limit_train=limit_train,
                      eval_data=eval_data, resume=resume)
    with phase_progress() as step:
        summary = finetune(job, step)
    held = summary["metrics"]["held_out"]
    figures = ", ".join(f"{k} {v:.3f}" for k, v in held.items() if isinstance(v, float) and k != "p50_ms")
    console.print(f"{name}: {summary['task']} specialist in {summary['seconds']:.0f} s "
                  f"({summary['training']['steps']} steps, best validation loss "
                  f"{summary['training']['best_val_loss']:.3f}); held out through llama.cpp: {figures}; "
                  f"p50 {held['p50_ms']:.0f} ms -> {out}", highlight=False)
